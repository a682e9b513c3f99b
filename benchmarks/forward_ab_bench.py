"""Two kcm-gateways of two source trees in front of one kcm-core: which forwards cheaper.

The machine's speed and load move from one run to the next by more than a change to the
forward path is worth, so this compares two gateways in one run: one of this tree and one
of ``--base-tree`` (another checkout, e.g. ``git worktree add /tmp/base main``), both
linked to the same kcm-core (this tree's). One client sends the same Get Attributes
through each gateway and to the core directly, one request at a time, each path alone for
a block of ``--requests``, the three in another of their six orders each round (a path
measured between requests of the others is not in its steady state: docs/benchmarks.md,
sixteenth sitting). Per round: each path's p50 and p99, what each gateway adds over the
core directly, and each gateway's CPU per forwarded request.

The processes started first serve a little slower (3-23 µs a forward in an A/A run on the
machine of docs/benchmarks.md): ``--both-orders`` runs it twice, the base tree's processes
started first the second time, and averages what this tree saves over both orders.

With ``--with-cores`` each tree runs its own kcm-core too (a change to the core's end of the
link shows then): the base gateway is linked to the base core, and each gateway's figures
are against its own core, which the client also asks directly (four paths a round).

    .venv/bin/python benchmarks/forward_ab_bench.py --base-tree PATH [--with-cores]
        [--both-orders] [--requests N] [--rounds R] [--keep]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import (  # noqa: E402
    Server,
    add_cpu_latency_option,
    hold_cpu_latency,
    payload_of,
    send,
    work_directory,
)
from kcm.kmip.enums import Operation  # noqa: E402
from kcm.kmip.tags import Tag  # noqa: E402
from kcm.testing import processes  # noqa: E402
from kcm.testing.requests import create_managed, get_attributes, request  # noqa: E402


def percentile(values: list[int], fraction: float) -> float:
    """The ``fraction`` percentile of ``values`` (ns), in ms."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] / 1e6


def _started_core(directory: Path, tree: Path) -> processes.CoreProcess:
    """A kcm-core of the source tree ``tree``, started, its SQLite file in ``directory``."""
    # process_env puts the tree named here first on its PYTHONPATH, and twistd finds that
    # tree's plugin: the process runs that tree's code.
    with mock.patch.object(processes, "REPO_ROOT", tree):
        core = processes.deploy(directory, f"sqlite:///{directory / 'kcm.db'}")
        core.start()
    return core


def measure(args: argparse.Namespace, work: Path, *, base_first: bool = False
            ) -> dict[str, list[float]]:
    """One run, every round's figures printed; what each gateway added at p50 (ms), by tree,
    one figure a round. ``base_first``: the base tree's processes are started first."""
    cores: dict[str, processes.CoreProcess] = {}
    gateways: dict[str, processes.GatewayProcess] = {}
    tree = {"this": processes.REPO_ROOT, "base": args.base_tree.resolve()}
    prefix = "second-" if base_first else ""
    try:
        if not args.with_cores:  # one core, this tree's, for both gateways
            cores["this"] = _started_core(work / f"{prefix}core", tree["this"])
        for name in ("base", "this") if base_first else ("this", "base"):
            if args.with_cores:
                cores[name] = _started_core(work / f"{prefix}core-{name}", tree[name])
            with mock.patch.object(processes, "REPO_ROOT", tree[name]):
                gateways[name] = processes.GatewayProcess(
                    work / f"{prefix}gateway-{name}",
                    cores[name if args.with_cores else "this"])
                gateways[name].start()
        gateways = {name: gateways[name] for name in ("this", "base")}
        for gateway in gateways.values():
            gateway.wait_linked()
        servers = {name: Server(name, gateway.port, gateway.core.pki, gateway.process.pid)
                   for name, gateway in gateways.items() if gateway.process is not None}
        direct = {name: f"core-{name}" if args.with_cores else "core" for name in gateways}
        for name, each in cores.items():
            assert each.process is not None
            servers[direct[name]] = Server(direct[name], each.port, each.pki,
                                           each.process.pid)
        wires = {}
        for name in cores:
            managed = payload_of(Operation.CREATE, send(servers[direct[name]], request(
                create_managed()))).unique_identifier
            wires[direct[name]] = request(get_attributes(managed, Tag.STATE))
        for name in gateways:
            wires[name] = wires[direct[name]]
        clients = {name: server.client() for name, server in servers.items()}
        for client in clients.values():
            client.connect()
        for _ in range(200):  # warm-up, untimed
            for name, client in clients.items():
                client.send(wires[name])
        orders = list(itertools.permutations(clients))
        print(f"# base tree {args.base_tree}{' with its own core' if args.with_cores else ''}"
              f"{', started first' if base_first else ''}; {args.requests} Get Attributes per "
              f"path a round")
        added: dict[str, list[float]] = {name: [] for name in gateways}
        for round_number in range(args.rounds):
            latencies: dict[str, list[int]] = {name: [] for name in clients}
            cpu = {name: servers[name].cpu_seconds() for name in gateways}
            for name in orders[round_number * (len(orders) - 1) % len(orders)]:  # each alone
                client, wire, block = clients[name], wires[name], latencies[name]
                for _ in range(args.requests):
                    sent = time.perf_counter_ns()
                    client.send(wire)
                    block.append(time.perf_counter_ns() - sent)
            cpu = {name: servers[name].cpu_seconds() - cpu[name] for name in gateways}
            p50 = {name: percentile(values, 0.5) for name, values in latencies.items()}
            p99 = {name: percentile(values, 0.99) for name, values in latencies.items()}
            for name in gateways:
                added[name].append(p50[name] - p50[direct[name]])
            print(f"round {round_number + 1}: " + "; ".join(
                f"{core_name} p50 {p50[core_name]:.3f} p99 {p99[core_name]:.3f} ms"
                for core_name in dict.fromkeys(direct.values())) + "".join(
                f"; {name} adds p50 {p50[name] - p50[direct[name]]:+.3f} p99 "
                f"{p99[name] - p99[direct[name]]:+.3f} ms, CPU "
                f"{1e6 * cpu[name] / args.requests:.0f} µs/request"
                for name in gateways), flush=True)
        for client in clients.values():
            client.close()
        return added
    finally:
        for gateway in gateways.values():
            gateway.stop()
        for each in cores.values():
            each.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-tree", type=Path, required=True,
                        help="the other source tree (its kcm and twisted/plugins)")
    parser.add_argument("--with-cores", action="store_true",
                        help="run the base tree's kcm-core too, behind the base gateway")
    parser.add_argument("--both-orders", action="store_true",
                        help="run twice, the base tree's processes started first the second "
                             "time (the processes started first serve slower), and sum up")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    add_cpu_latency_option(parser)
    args = parser.parse_args()
    hold_cpu_latency(args.cpu_latency_us)
    with work_directory("kcm-forward-ab-", args.keep) as work:
        runs = [measure(args, work)]
        if args.both_orders:
            runs.append(measure(args, work, base_first=True))
    if args.both_orders:
        differences = [statistics.median(run["this"]) - statistics.median(run["base"])
                       for run in runs]
        print("# median p50 added, this tree started first / base tree started first: "
              + "; ".join(f"{name} " + " / ".join(
                  f"{statistics.median(run[name]):+.3f}" for run in runs) + " ms"
                  for name in ("this", "base"))
              + f"; this minus base, both orders averaged: "
                f"{1000 * statistics.fmean(differences):+.0f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
