"""Several kcm-cores on one PostgreSQL: durable Create throughput with 1, 2 and 3 cores, and
event delivery latency from commit to the last gateway.

Starts a PostgreSQL cluster of Debian's binaries (``kcm.testing.postgres``: fsync and
synchronous commit on) in a temporary directory, and for each core count a fresh database
with cores deployed as the end-to-end tests do (``deploy`` and ``CoreProcess.replica``).

* Throughput: ``--clients`` client processes (default 8), each with one persistent mutual-TLS
  connection to one core (dealt round-robin over the cores), send KMIP 1.2 Creates of an
  AES-256 key (each one durable commit with its audit record). The baseline is one core, in
  the same run; the ratios say how the cores scale and the CPU columns where the time goes
  (the cores, PostgreSQL, the clients). Every answer is checked.
* Event delivery: three cores and three gateways, each gateway linked to its own core.
  One client destroys L4 tokens at core 1, one at a time (each commit adds one
  ``l4.tombstone`` event); for each event, the time from its outbox row's timestamp
  (written in the committing transaction) to the moment the last gateway applied it (the
  gateways' logs): p50, p99 and max.

    .venv/bin/python benchmarks/cluster_bench.py [--requests N] [--clients N] [--events N]
        [--cores 1,2,3] [--keep] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import sys
import time
from datetime import datetime
from pathlib import Path

# Run as a script: the repository root, for this tree's kcm and the benchmarks' harness.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.core_bench import CHECKS, CREATE  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    Outcome,
    Server,
    load,
    new_histogram,
    parse_args,
    work_directory,
)
from kcm.kmip.enums import Operation, ResultStatus  # noqa: E402
from kcm.testing.postgres import Cluster, find_pg_bin, fresh_database, running_cluster  # noqa: E402
from kcm.testing.processes import CoreProcess, GatewayProcess, deploy  # noqa: E402
from kcm.testing.requests import create_l4, item, request, response  # noqa: E402

_databases = itertools.count()
_APPLIED = re.compile(r"applied event (\d+): ")


def postmaster_pid(cluster: Cluster) -> int:
    return int((cluster.data / "postmaster.pid").read_text().split()[0])


def start_cores(work: Path, url: str, count: int) -> list[CoreProcess]:
    first = deploy(work / "core1", url)
    cores = [first] + [first.replica(work / f"core{i + 1}") for i in range(1, count)]
    for core in cores:
        core.start()
    return cores


def throughput(args: argparse.Namespace, work: Path, cluster: Cluster,
               count: int) -> Outcome:
    url = fresh_database(cluster.url, f"kcm_bench_{next(_databases)}")
    cores = start_cores(work / f"cores{count}", url, count)
    try:
        servers = [Server(f"core {i + 1}", core.port, core.pki, core.process.pid)
                   for i, core in enumerate(cores)]
        database = Server("PostgreSQL", cluster.port, cores[0].pki, postmaster_pid(cluster),
                          with_children=True)
        requests = [CREATE] * args.requests
        plans = [[(c % count, wire) for wire in requests[c::args.clients]]
                 for c in range(args.clients)]
        return load(f"Create x{args.clients}, {count} cores", servers, plans,
                    [CHECKS[Operation.CREATE]] * count, [*servers, database],
                    warmup=[CREATE] * count, warmup_requests=args.warmup)
    finally:
        for core in cores:
            core.stop()


def overall(outcome: Outcome, percent: float) -> float:
    histogram = new_histogram()
    for part in outcome.histograms:
        histogram.add(part)
    return histogram.get_value_at_percentile(percent) / 1e6


def event_latency(args: argparse.Namespace, work: Path, cluster: Cluster) -> list[float]:
    url = fresh_database(cluster.url, f"kcm_bench_{next(_databases)}")
    cores = start_cores(work / "events", url, 3)
    gateways = [GatewayProcess(work / "events" / f"gateway{i + 1}", cores[i]) for i in range(3)]
    try:
        for gateway in gateways:
            gateway.start()
        for gateway in gateways:
            gateway.wait_linked()
        from kcm.kmip.payloads.lifecycle import DestroyRequest

        with gateways[0].client("app") as app:
            tokens = []
            for _ in range(args.events):
                [created] = response(app.send(request(create_l4()))).batch_items
                tokens.append(created.response_payload.unique_identifier)
        with cores[0].client("app") as app:
            for token in tokens:
                [done] = response(app.send(request(item(
                    Operation.DESTROY, DestroyRequest(unique_identifier=token))))).batch_items
                if done.result_status != ResultStatus.SUCCESS:
                    raise RuntimeError(f"Destroy failed: {done.result_message}")
                time.sleep(0.01)
        committed = outbox_times(url)
        deadline = time.monotonic() + 10
        while True:
            applied = [applied_times(g) for g in gateways]
            if all(max(a, default=0) >= max(committed) for a in applied):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the gateways did not apply every event")
            time.sleep(0.1)
        return sorted(max(a[seq] for a in applied) - at for seq, at in committed.items()
                      if all(seq in a for a in applied))
    finally:
        for process in (*gateways, *cores):
            process.stop()


def outbox_times(url: str) -> dict[int, float]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text(
                "SELECT seq, at FROM outbox WHERE kind = 'l4.tombstone'")).all()
    finally:
        engine.dispose()
    return {seq: at / 1e6 for seq, at in rows}


def applied_times(gateway: GatewayProcess) -> dict[int, float]:
    times = {}
    for line in gateway.log.read_text().splitlines():
        if "applied event" not in line:
            continue
        entry = json.loads(line)
        match = _APPLIED.search(entry.get("text", ""))
        if match:
            when = datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
            times[int(match.group(1))] = when.timestamp()
    return times


def percentile(sorted_values: list[float], percent: float) -> float:
    index = min(len(sorted_values) - 1, int(len(sorted_values) * percent / 100))
    return sorted_values[index]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, help="Creates per core count")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup", type=int, help="untimed Creates per client first")
    parser.add_argument("--events", type=int, help="events timed for delivery")
    parser.add_argument("--cores", default="1,2,3")
    args = parse_args(parser, requests=(8000, 800), warmup=(50, 10), events=(300, 50))
    bin_dir = find_pg_bin()
    if bin_dir is None:
        print("no PostgreSQL binaries (apt-get install postgresql-15, or set KCM_PG_BIN)")
        return 2
    with (work_directory("kcm-cluster-bench-", args.keep) as work,
          running_cluster(bin_dir) as cluster):
        return measure(args, work, cluster)


def measure(args: argparse.Namespace, work: Path, cluster: Cluster) -> int:
    print(f"# kcm-core x N on one PostgreSQL 15 (fsync, synchronous_commit on) — Python "
          f"{platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}")
    print(f"# KMIP 1.2 Create (AES-256), {args.requests} per row, {args.clients} client "
          "processes dealt round-robin over the cores, one connection each"
          + (" (--quick: figures mean little)" if args.quick else ""))
    print(f"{'cores':>5} {'Creates/s':>10} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'cores CPU ms/op':>15} {'PG CPU ms/op':>12} {'clients CPU ms/op':>17}")
    baseline = None
    problems = []
    for count in (int(c) for c in args.cores.split(",")):
        outcome = throughput(args, work, cluster, count)
        if outcome.failures:
            problems.append(f"{count} cores: {len(outcome.failures)} failures, first: "
                            f"{outcome.failures[0]}")
        rate = outcome.throughput
        baseline = baseline or rate
        core_cpu = sum(v for k, v in outcome.server_cpu_seconds.items() if k != "PostgreSQL")
        ok = max(outcome.ok, 1)
        print(f"{count:>5} {rate:>10.0f} {rate / baseline:>6.2f} {overall(outcome, 50):>7.2f} "
              f"{overall(outcome, 99):>7.2f} {core_cpu / ok * 1000:>15.2f} "
              f"{outcome.server_cpu_seconds['PostgreSQL'] / ok * 1000:>12.2f} "
              f"{outcome.client_cpu_seconds / ok * 1000:>17.2f}")
    delays = event_latency(args, work, cluster)
    print(f"# event delivery, commit to the last of 3 gateways (each on its own core), "
          f"{len(delays)} events: p50 {percentile(delays, 50) * 1000:.1f} ms, "
          f"p99 {percentile(delays, 99) * 1000:.1f} ms, max {delays[-1] * 1000:.1f} ms")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
