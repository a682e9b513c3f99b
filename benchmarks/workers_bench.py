"""kcm-gateway with ``workers = 1`` and ``workers = 2`` side by side, in one run, under 8 clients.

Issue 9 asks that two worker processes on a 2-core machine serve at least 1.6 times what one
does with 8 clients. The clients share the machine with the gateway, so what they cost decides
what a second worker can show: 8 Python client processes spend about 85 µs of CPU per
request, which caps the machine before the gateway does. So the clients here are
``benchmarks/loadgen.c`` (one C process, OpenSSL; built on first use, see
:mod:`benchmarks.native_client`), each with one persistent mutual-TLS connection sending L4
Encrypts of a 256-byte record back to back; every answer is checked. Two of its threads
share the 8 connections and wait for answers with epoll (``--event-threads``), which costs
the clients less CPU per request than a blocked thread per connection. The Python clients of
``benchmarks/harness.py`` run the same scenario too, for comparison.

Deploys kcm-core, two kcm-gateways linked to it (one with ``workers = 1``, one with
``workers = 2``, both pre-warmed for demo/app) and the bare Twisted TLS echo server of
``gateway_bench.py``. Rounds alternate between the servers so none gets a quieter machine.
The ``workers = 2`` gateway has ``pin_workers = auto`` (the default: on 2 CPUs each worker
is pinned to one, and gets the connections arriving there); ``--also-unpinned`` adds a
third gateway, ``workers = 2`` with ``pin_workers = never``, to the same rounds.

    .venv/bin/python benchmarks/workers_bench.py [--requests N] [--rounds R] [--clients C]
        [--event-threads T] [--no-python-clients] [--busy-poll-us N] [--also-unpinned]
        [--keep] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from pathlib import Path

# Run as a script: the repository root, for this tree's kcm and the benchmarks' harness.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.gateway_bench import CREATE_L4, echo_check, start_echo  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    CPU_SOURCE,
    LATENCY_METHOD,
    OTHER_LOAD_LIMIT,
    Outcome,
    Server,
    kmip_check,
    load,
    merge,
    parse_args,
    payload_of,
    send,
    split,
    verdict,
    work_directory,
)
from benchmarks.native_client import native_load  # noqa: E402
from kcm.kmip.enums import Operation  # noqa: E402
from kcm.testing.processes import CoreProcess, GatewayProcess, deploy, stop_process  # noqa: E402
from kcm.testing.requests import encrypt, request  # noqa: E402

#: Issue 9: ``workers = 2`` with 8 clients against ``workers = 1``.
WORKERS_TARGET = 1.6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int,
                        help="timed requests per client per round (default 3000; 200 with "
                             "--quick)")
    parser.add_argument("--rounds", type=int, help="rounds (default 3; 1 with --quick)")
    parser.add_argument("--clients", type=int, default=8, help="clients (default 8)")
    parser.add_argument("--event-threads", type=int, default=2,
                        help="threads of the C load generator, sharing the connections with "
                             "epoll (default 2; 0: a thread per connection)")
    parser.add_argument("--python-clients", action=argparse.BooleanOptionalAction,
                        default=True, help="also run the scenario with Python clients")
    parser.add_argument("--busy-poll-us", type=int, default=0, metavar="N",
                        help="both gateways' busy_poll_us, and the echo's (default 0)")
    parser.add_argument("--also-unpinned", action="store_true",
                        help="also a workers = 2 gateway with pin_workers = never")
    parser.add_argument("--unix", action="store_true",
                        help="the gateways listen on a Unix socket (TLS over it, as over TCP), "
                             "the C load generator connects there: clients that cost less "
                             "CPU a request than over TCP loopback (no echo, no Python "
                             "clients; informational, the target is judged over TCP)")
    args = parse_args(parser, requests=(3000, 200), rounds=(3, 1))
    with work_directory("kcm-workers-bench-", args.keep) as work:
        return measure(args, work)


def measure(args: argparse.Namespace, work: Path) -> int:
    warmup = 20 if args.quick else 200
    core: CoreProcess | None = None
    gateways: dict[int, GatewayProcess] = {}
    echo_process = None
    try:
        core = deploy(work / "core", f"sqlite:///{work / 'core' / 'kcm.db'}")
        core.start()
        variants = [(1, 1, "auto"), (2, 2, "auto")] + (
            [(UNPINNED, 2, "never")] if args.also_unpinned else [])
        for key, workers, pin_workers in variants:
            gateways[key] = GatewayProcess(work / f"gateway-{key}", core, workers=workers,
                                           settings={"busy_poll_us": args.busy_poll_us,
                                                     "pin_workers": pin_workers})
            if args.unix:
                _listen_on_unix(gateways[key], _socket_path(work, key))
                gateways[key].spawn()
            else:
                gateways[key].start()
            gateways[key].wait_linked()
            if args.unix:
                _wait_for_socket(_socket_path(work, key))
        if args.busy_poll_us:
            os.environ["KCM_BENCH_BUSY_POLL_US"] = str(args.busy_poll_us)  # (the echo script)
            print(f"# busy_poll_us = {args.busy_poll_us}: the gateways and the echo poll that "
                  f"long before they sleep")
        servers = {
            _name(key): Server(_name(key), process.port, core.pki, process.process.pid,
                               with_children=key != 1,
                               path=_socket_path(work, key) if args.unix else None)
            for key, process in gateways.items() if process.process is not None}
        echo: Server | None = None
        if not args.unix:
            echo_process, echo_port = start_echo(core.pki, work)
            echo = Server("echo", echo_port, core.pki, echo_process.pid)
        else:
            args.python_clients = False
            print("# --unix: the gateways listen on Unix sockets; no echo, no Python clients "
                  "(informational: issue 9's target is judged over TCP)")
        watched = [*servers.values(), *([echo] if echo else [])]

        one = servers["workers = 1"]
        token = payload_of(Operation.CREATE, send(one, CREATE_L4)).unique_identifier
        wire = request(encrypt(token, os.urandom(256)))
        encrypted = kmip_check(Operation.ENCRYPT, lambda _, p: None if
                               p.unique_identifier == token else "another key's answer")
        print(f"# kcm-gateway workers = 1 and workers = 2, {args.clients} clients each with one "
              f"connection — Python {platform.python_version()}, {os.cpu_count()} CPUs, "
              f"{platform.machine()}; work directory {work}")
        print(f"# L4 Encrypt of a 256-byte record ({len(wire)} bytes), {args.requests} "
              f"requests per client per round, {args.rounds} rounds"
              + (" (--quick: figures mean little)" if args.quick else ""), flush=True)
        print(f"# {LATENCY_METHOD}")
        print(f"# {CPU_SOURCE}")

        targets = [*servers.values(), *([echo] if echo else [])]
        native: dict[str, list[Outcome]] = {server.name: [] for server in targets}
        python: dict[str, list[Outcome]] = {server.name: [] for server in targets}
        for round_number in range(args.rounds):
            for server in targets:
                is_echo = server is echo
                native[server.name].append(native_load(
                    server.name, server, wire, connections=args.clients,
                    requests=args.requests, warmup=warmup, watched=watched, echo=is_echo,
                    event_threads=args.event_threads))
                if args.python_clients:
                    python[server.name].append(load(
                        server.name, [server],
                        split(0, [wire] * (args.requests * args.clients), args.clients),
                        [echo_check if is_echo else encrypted], watched, [wire],
                        warmup_requests=warmup))
            print(f"  round {round_number + 1}/{args.rounds}: " + ", ".join(
                f"{name} {outcomes[-1].throughput:,.0f}/s" for name, outcomes in
                native.items()), flush=True)

        failed = 0
        for label, results in (("C load generator", native), ("Python clients", python)):
            if not results[one.name]:
                continue
            merged = {name: merge(outcomes) for name, outcomes in results.items()}
            failed += sum(len(outcome.failures) for outcome in merged.values())
            report(label, merged, watched, unix=args.unix)
        print("# gateway CPU over the whole run, workers = 2 by process: " + ", ".join(
            f"worker {index} {Server('', 0, core.pki, pid).cpu_seconds():.1f} s"
            for index, pid in sorted(gateways[2].worker_pids().items())))
        print(f"{failed} failed requests" + (" — FAILED: bad answers or broken connections, "
                                               "the figures above do not count" if failed else ""))
        return 1 if failed else 0
    finally:
        stop_process(echo_process, timeout=10)
        for process in gateways.values():
            process.stop()
        if core is not None:
            core.stop()


#: The key of the ``--also-unpinned`` gateway.
UNPINNED = -2


def _socket_path(work: Path, key: int) -> str:
    return str(work / f"gateway{key}.sock")


def _wait_for_socket(path: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no gateway listens on {path}")
        time.sleep(0.02)


def _listen_on_unix(gateway: GatewayProcess, path: str) -> None:
    """Write ``gateway``'s configuration with its KMIP listener on the Unix socket
    ``path`` (mode 0600) instead of TCP."""
    gateway.write_config()
    gateway.config.write_text(re.sub(r"^listen = .*$", f'listen = "unix:{path}:mode=600"',
                                     gateway.config.read_text(), flags=re.M))


def _name(key: int) -> str:
    return "2, unpinned" if key == UNPINNED else f"workers = {key}"


def report(label: str, merged: dict[str, Outcome], watched: list[Server], *,
           unix: bool = False) -> None:
    one, two = merged["workers = 1"], merged["workers = 2"]
    print()
    print(f"{label}: {one.clients} clients")
    print(f"{'server':<14}{'ok/sent':>15}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'server µs/req':>15}{'client µs/req':>15}{'other load':>12}")
    for name, outcome in merged.items():
        cpu = outcome.server_cpu_seconds[name]
        print(f"{name:<14}{f'{outcome.ok}/{outcome.requests}':>15}"
              f"{outcome.throughput:10,.0f}{outcome.ms(50):9.3f}{outcome.ms(99):9.3f}"
              f"{1e6 * cpu / max(1, outcome.ok):15.1f}"
              f"{1e6 * outcome.client_cpu_seconds / max(1, outcome.ok):15.1f}"
              f"{outcome.foreign_cores:12.2f}")
    print(f"(other load: cores busy with anything but these servers and clients; above "
          f"{OTHER_LOAD_LIMIT} a row was disturbed and a target judged from it is UNDECIDED)")
    ratio = two.throughput / one.throughput if one.throughput else 0.0
    if unix:
        print(f"workers = 2 / workers = 1 over Unix sockets: {ratio:.2f}x (informational: "
              f"issue 9's {WORKERS_TARGET}x is judged over TCP)")
    else:
        print(f"workers = 2 / workers = 1: {ratio:.2f}x (target {WORKERS_TARGET}x: "
              f"{verdict(ratio >= WORKERS_TARGET, one, two)})")
    unpinned = merged.get(_name(UNPINNED))
    if unpinned is not None and one.throughput:
        print(f"workers = 2 with pin_workers = never / workers = 1: "
              f"{unpinned.throughput / one.throughput:.2f}x")
    for name, outcome in merged.items():
        if outcome.failures:
            print(f"FAILURES {name}: {len(outcome.failures)}, e.g. {outcome.failures[0]}")


if __name__ == "__main__":
    raise SystemExit(main())
