"""A long run of kcm-core and kcm-gateway under a mixed load: does anything grow without bound?

Deploys as the other process benchmarks do (``kcm.testing.processes``: a development PKI,
tenants ``demo`` and ``other``, ``twistd -n kcm-core`` on SQLite, ``twistd -n kcm-gateway``
with ``workers = 2`` linked to it). The core keeps outbox events and destroyed objects
``--retention`` seconds (``outbox_retention``, ``destroyed_retention``), so that both are
pruned within the run; the gateway keeps ``dek_cache_size = 256`` opened data keys, a
bound the run goes past. The metrics listeners of both are on, and a few of their gauges
sampled (open connections, the gateway's tombstones, overflowed service keys, opened data
keys and service keys held, per worker).

The load, from client processes (each its own process, fork), until the time is up:

* ``l4``: L4 Create, Encrypt, Decrypt and Get through the gateway (a new token every 50
  requests, the last 400 tokens reused), a new TLS connection every 200 requests;
* ``managed``: forwarded Create, Get Attributes, Activate, Locate (at most 5 items),
  Revoke and Destroy of managed keys; Register and Destroy; Revoke of L4 tokens (a
  tombstone each); a new connection every 100 requests;
* ``errors``: Get of a missing object, Destroy of an Active key (wrong state), malformed
  TTLV, Get of a key of tenant demo by tenant other's application, at the gateway and at
  the core directly in turn; clients that vanish mid-request (half a request, or a whole
  one and no reading of its answer); a new connection every 20 requests.

Every answer is checked (the result expected, success or the error); a connection cut by
a worker kill or restart is counted and made again. Every ``--event-interval`` seconds
one event, in turn: SIGHUP to kcm-core, the TLS files rewritten (the same bytes, renamed
over) with SIGHUP to kcm-core, ``kcm core service rotate demo app``, SIGKILL to gateway
worker 1 (the supervisor restarts it), SIGHUP to the gateway supervisor (it restarts the
workers one at a time).

Every ``--sample`` seconds, from /proc and the database (no hook in the product): RSS,
anonymous RSS, open fds and threads of the core, the supervisor and each worker; the
SQLite file and its WAL; the row counts of every table; the log files. The table, then,
over the samples after ``--warmup`` seconds, each series' slope per hour and per 10^6
requests, and a flag on each series that keeps growing (its last quarter's least above
its first quarter's most, by more than a floor) and that is not stored by design
(objects, audit records, tombstones and what they take on disk grow with the load).

    .venv/bin/python benchmarks/soak_bench.py [--minutes M] [--clients N] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import os
import platform
import random
import signal
import socket
import sqlite3
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as a script: the repository root, for this tree's kcm and the benchmarks' harness.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import work_directory  # noqa: E402
from kcm.conformance.client import KmipClient, KmipClientError  # noqa: E402
from kcm.kmip.enums import (  # noqa: E402
    CryptographicAlgorithm,
    KeyFormatType,
    ObjectType,
    Operation,
    ResultStatus,
    RevocationReasonCode,
)
from kcm.kmip.objects import KeyBlock, KeyValue, SymmetricKey  # noqa: E402
from kcm.kmip.payloads.crypto import DecryptRequest  # noqa: E402
from kcm.kmip.payloads.lifecycle import (  # noqa: E402
    DestroyRequest,
    RegisterRequest,
    RevocationReason,
    RevokeRequest,
)
from kcm.kmip.payloads.service import LocateRequest  # noqa: E402
from kcm.kmip.tags import Tag  # noqa: E402
from kcm.testing.processes import (  # noqa: E402
    CoreProcess,
    GatewayProcess,
    deploy,
    free_port,
    scrape,
)
from kcm.testing.requests import (  # noqa: E402
    activate,
    create_l4,
    create_managed,
    encrypt,
    get,
    get_attributes,
    item,
    request,
    response,
)

#: Series that grow with what is stored, by design: reported per request, never flagged.
STORED = ("db MB", "objects", "names", "attr keys", "audit", "tombstones", "l3 usage",
          "core log KB", "gw log KB", "l3 keys w1", "l3 keys w2", "tombs w1", "tombs w2",
          "overflowed w1", "overflowed w2")
#: Below these, growth over the run is noise: (series prefix, floor).
FLOORS = (("rss", 3.0), ("anon", 3.0), ("fds", 4), ("thr", 2), ("wal", 2.0), ("outbox", 200),
          ("spent", 200), ("meta", 5), ("groups", 100), ("policies", 2), ("conns", 4),
          ("queued", 4), ("deks", 50))

MALFORMED = bytes.fromhex("42007801000000100000000000000000") + b"\x00" * 8


# --- the clients -----------------------------------------------------------------------------

@dataclass
class Target:
    """Where a client connects, with which identity."""

    port: int
    cert: str
    key: str
    ca: str

    def client(self) -> KmipClient:
        return KmipClient("127.0.0.1", self.port, cert=self.cert, key=self.key, ca=self.ca,
                          timeout=15.0)


def first(wire: bytes) -> Any:
    """The one batch item of an answer."""
    return response(wire).batch_items[0]


def succeeded(wire: bytes, operation: int) -> Any:
    """The payload of a successful answer for ``operation``; ValueError otherwise."""
    answer = first(wire)
    if answer.result_status != ResultStatus.SUCCESS or answer.operation != operation:
        raise ValueError(f"{operation!r}: {answer.result_status!r} {answer.result_reason!r} "
                         f"{answer.result_message}")
    return answer.response_payload


def failed(wire: bytes) -> None:
    """An answer that must be an error (whichever): ValueError if it succeeded."""
    if first(wire).result_status == ResultStatus.SUCCESS:
        raise ValueError("an error expected, success answered")


class Session:
    """A client's connection to one target, made again every ``every`` requests and after a
    cut; counts what it sent (``counters[slot]``), its cuts and its wrong answers."""

    def __init__(self, target: Target, every: int, counters: Any, slot: int) -> None:
        self.target, self.every, self.counters, self.slot = target, every, counters, slot
        self.connection: KmipClient | None = None
        self.sent = 0

    def send(self, wire: bytes) -> bytes | None:
        """The answer, or None if the connection was cut (counted, and made again next)."""
        if self.connection is None or self.sent % self.every == 0:
            self.close()
            self.connection = self.target.client()
        self.sent += 1
        self.counters[3 * self.slot] += 1
        try:
            return self.connection.send(wire)
        except (KmipClientError, OSError):
            self.counters[3 * self.slot + 1] += 1
            self.close()
            return None

    def check(self, wire: bytes, expect: Callable[[bytes], Any]) -> Any:
        """Send ``wire`` and apply ``expect`` to its answer: what it returns, or None when the
        connection was cut or the answer was wrong (counted)."""
        answer = self.send(wire)
        if answer is None:
            return None
        try:
            return expect(answer)
        except Exception as e:  # noqa: BLE001 - a wrong answer to count, whatever it is
            self.counters[3 * self.slot + 2] += 1
            print(f"  wrong answer ({self.target.port}): {e}", flush=True)
            return None

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def l4_client(gateway: Target, deadline: float, counters: Any, slot: int, seed: int) -> None:
    rng = random.Random(seed)
    session = Session(gateway, 200, counters, slot)
    tokens: list[str] = []
    record = os.urandom(256)
    while time.time() < deadline:
        if not tokens or rng.random() < 0.02:
            payload = session.check(request(create_l4()),
                                    lambda w: succeeded(w, Operation.CREATE))
            if payload is not None:
                tokens.append(payload.unique_identifier)
                del tokens[:-400]
            continue
        token = rng.choice(tokens)
        sealed = session.check(request(encrypt(token, record)),
                               lambda w: succeeded(w, Operation.ENCRYPT))
        if sealed is None:
            continue
        session.check(request(item(Operation.DECRYPT, DecryptRequest(
            unique_identifier=token, data=sealed.data, iv_counter_nonce=sealed.iv_counter_nonce,
            authenticated_encryption_tag=sealed.authenticated_encryption_tag))),
            lambda w: _same(succeeded(w, Operation.DECRYPT).data, record))
        if rng.random() < 0.3:
            session.check(request(get(token)), lambda w: succeeded(w, Operation.GET))
    session.close()


def _same(got: bytes, expected: bytes) -> None:
    if got != expected:
        raise ValueError("the record did not come back")


def revoke(uid: str, code: int = RevocationReasonCode.CESSATION_OF_OPERATION) -> bytes:
    return request(item(Operation.REVOKE, RevokeRequest(
        unique_identifier=uid, revocation_reason=RevocationReason(code=code))))


def destroy(uid: str) -> bytes:
    return request(item(Operation.DESTROY, DestroyRequest(unique_identifier=uid)))


def register() -> bytes:
    key = SymmetricKey(key_block=KeyBlock(
        key_format_type=KeyFormatType.RAW, key_value=KeyValue(key_material=os.urandom(32)),
        cryptographic_algorithm=CryptographicAlgorithm.AES, cryptographic_length=256))
    return request(item(Operation.REGISTER, RegisterRequest(
        object_type=ObjectType.SYMMETRIC_KEY, attributes=[], object=key)))


def managed_client(gateway: Target, deadline: float, counters: Any, slot: int,
                   seed: int) -> None:
    rng = random.Random(seed)
    session = Session(gateway, 100, counters, slot)
    while time.time() < deadline:
        created = session.check(request(create_managed()),
                                lambda w: succeeded(w, Operation.CREATE))
        if created is None:
            continue
        uid = created.unique_identifier
        # Each step after the one before it; a cut (its change made or not) ends the key's
        # turn, so that no step meets a state it did not expect.
        steps = [(request(get_attributes(uid, Tag.STATE)), Operation.GET_ATTRIBUTES),
                 (request(activate(uid)), Operation.ACTIVATE),
                 (request(item(Operation.LOCATE, LocateRequest(maximum_items=5))),
                  Operation.LOCATE),
                 (revoke(uid), Operation.REVOKE), (destroy(uid), Operation.DESTROY)]
        for wire, operation in steps:
            if session.check(wire, lambda w, op=operation: succeeded(w, op)) is None:
                break
        if rng.random() < 0.5:
            registered = session.check(register(), lambda w: succeeded(w, Operation.REGISTER))
            if registered is not None:
                session.check(destroy(registered.unique_identifier),
                              lambda w: succeeded(w, Operation.DESTROY))
        if rng.random() < 0.5:  # an L4 revoked: a tombstone at the core and the gateways
            token = session.check(request(create_l4()), lambda w: succeeded(w, Operation.CREATE))
            if token is not None:
                session.check(revoke(token.unique_identifier, RevocationReasonCode.KEY_COMPROMISE),
                              lambda w: succeeded(w, Operation.REVOKE))
    session.close()


def vanish(target: Target, wire: bytes, half: bool) -> None:
    """A client that connects, sends half of ``wire`` (or all of it) and goes away without
    reading an answer."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=target.ca)
    context.load_cert_chain(target.cert, target.key)
    with contextlib.suppress(OSError), socket.create_connection(
            ("127.0.0.1", target.port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        tls.sendall(wire[:len(wire) // 2] if half else wire)


def errors_client(targets: list[Target], intruders: list[Target], deadline: float,
                  counters: Any, slot: int, seed: int) -> None:
    rng = random.Random(seed)
    sessions = [Session(target, 20, counters, slot) for target in targets]
    strangers = [Session(target, 20, counters, slot) for target in intruders]
    owned: list[str | None] = [None] * len(targets)
    for turn in itertools.count():
        if time.time() >= deadline:
            break
        index = turn % len(targets)
        session, stranger = sessions[index], strangers[index]
        if owned[index] is None:  # an Active key of demo's, made once per target
            created = session.check(request(create_managed()),
                                    lambda w: succeeded(w, Operation.CREATE))
            if created is not None and session.check(
                    request(activate(created.unique_identifier)),
                    lambda w: succeeded(w, Operation.ACTIVATE)) is not None:
                owned[index] = created.unique_identifier
            continue
        uid = owned[index]
        choice = rng.randrange(6)
        if choice == 0:
            session.check(request(get(f"{rng.randrange(10**9, 10**10)}")), failed)
        elif choice == 1:
            session.check(destroy(uid), failed)  # an Active key: wrong state
        elif choice == 2:
            session.send(MALFORMED)  # answered with an error or cut: both are fine
            session.close()
        elif choice == 3:
            stranger.check(request(get(uid)), failed)  # another tenant's key
        else:
            counters[3 * slot] += 1
            vanish(targets[index], request(encrypt(uid, b"x" * 64)), half=choice == 4)
    for each in sessions + strangers:
        each.close()


# --- the events ------------------------------------------------------------------------------

def rewrite(path: Path) -> None:
    """Write ``path`` again, the same bytes, renamed over it (as a renewal hook does)."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_bytes(path.read_bytes())
    os.chmod(fresh, path.stat().st_mode & 0o777)
    os.replace(fresh, path)


def event(number: int, core: CoreProcess, gateway: GatewayProcess) -> str:
    """The ``number``-th event of the cycle; what it was."""
    assert core.process is not None and gateway.process is not None
    kind = number % 5
    if kind == 0:
        core.process.send_signal(signal.SIGHUP)
        return "SIGHUP to kcm-core"
    if kind == 1:
        for pair in (core.pki.core, core.pki.gateway):
            rewrite(Path(pair.cert))
            rewrite(Path(pair.key))
        core.process.send_signal(signal.SIGHUP)
        return "TLS files rewritten, SIGHUP to kcm-core"
    if kind == 2:
        done = core.kcm("core", "service", "rotate", "demo", "app", check=False)
        return f"kcm core service rotate demo app: exit {done.returncode}"
    if kind == 3:
        pid = gateway.worker_pids().get(1)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return f"SIGKILL to gateway worker 1 (pid {pid})"
    gateway.process.send_signal(signal.SIGHUP)
    return "SIGHUP to the gateway supervisor"


# --- the samples -----------------------------------------------------------------------------

def proc(pid: int | None) -> tuple[float, float, int, int]:
    """RSS and anonymous RSS (MB), open fds and threads of ``pid`` (zeros once it is gone)."""
    if pid is None:
        return 0.0, 0.0, 0, 0
    try:
        status = dict(line.split(":", 1) for line in
                      Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return 0.0, 0.0, 0, 0
    kb = lambda name: int(status.get(name, "0 kB").split()[0])  # noqa: E731
    return kb("VmRSS") / 1024, kb("RssAnon") / 1024, fds, int(status["Threads"])


TABLES = {"objects": "managed_objects", "names": "object_names", "groups": "object_groups",
          "attr keys": "object_attribute_keys", "tombstones": "l4_tombstones",
          "audit": "audit_log", "outbox": "outbox", "meta": "meta",
          "policies": "rotation_policies", "l3 usage": "l3_usage",
          "spent": "spent_stream_parts"}


def rows(database: Path) -> dict[str, float]:
    """Row counts, on a connection of their own closed at once (a reader kept open would
    hold the WAL's checkpoints back)."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        counts = {name: float(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
                  for name, table in TABLES.items()}
        counts["destroyed"] = float(connection.execute(
            "SELECT count(*) FROM managed_objects WHERE destroy_date IS NOT NULL").fetchone()[0])
    finally:
        connection.close()
    return counts


#: Gauges of the planes' metrics listeners sampled with the rest: (column, metric name);
#: a gateway gauge is per worker (its ``worker`` label), a column each.
CORE_GAUGES = (("conns core", "kcm_core_open_connections"),
               ("queued core", "kcm_core_queued_requests"))
WORKER_GAUGES = (("conns", "kcm_gateway_open_connections"),
                 ("tombs", "kcm_gateway_l4_tombstones"),
                 ("overflowed", "kcm_gateway_l3_tombstones_overflowed"),
                 ("l3 keys", "kcm_gateway_l3_cache_keys"),
                 ("deks", "kcm_gateway_opened_deks"))


def gauges(port: int | None) -> list[tuple[str, dict[str, str], float]]:
    """The samples of a metrics listener: (name, labels, value); none if it does not
    answer."""
    if port is None:
        return []
    try:
        status, body = scrape(port)
    except OSError:
        return []
    found = []
    for line in body.decode().splitlines() if status == 200 else []:
        if line.startswith("#") or " " not in line:
            continue
        key, value = line.rsplit(" ", 1)
        name, _, labels = key.partition("{")
        pairs = dict(part.split("=", 1) for part in labels.rstrip("}").split(",") if "=" in part)
        found.append((name, {k: v.strip('"') for k, v in pairs.items()}, float(value)))
    return found


def gauge_columns(core_port: int | None, gateway_port: int | None) -> dict[str, float]:
    """The columns of :data:`CORE_GAUGES` and :data:`WORKER_GAUGES` (summed over labels
    other than ``worker``)."""
    columns: dict[str, float] = {}
    for column, metric in CORE_GAUGES:
        columns[column] = sum(v for n, _, v in gauges(core_port) if n == metric)
    found = gauges(gateway_port)
    for column, metric in WORKER_GAUGES:
        for worker in ("1", "2"):
            columns[f"{column} w{worker}"] = sum(
                v for n, labels, v in found if n == metric and labels.get("worker") == worker)
    return columns


@dataclass
class Sampler:
    core: CoreProcess
    gateway: GatewayProcess
    database: Path
    counters: Any
    clients: int
    samples: list[dict[str, float]] = field(default_factory=list)
    pids: list[dict[str, int | None]] = field(default_factory=list)

    def totals(self) -> tuple[int, int, int]:
        values = list(self.counters)
        return (sum(values[0::3]), sum(values[1::3]), sum(values[2::3]))

    def take(self, started: float) -> dict[str, float]:
        assert self.core.process is not None and self.gateway.process is not None
        workers = self.gateway.worker_pids()
        processes = {"core": self.core.process.pid, "sup": self.gateway.process.pid,
                     "w1": workers.get(1), "w2": workers.get(2)}
        sample: dict[str, float] = {"t": time.monotonic() - started}
        sample["requests"] = float(self.totals()[0])
        for name, pid in processes.items():
            rss, anon, fds, threads = proc(pid)
            sample.update({f"rss {name}": rss, f"anon {name}": anon, f"fds {name}": fds,
                           f"thr {name}": threads})
        size = lambda path: path.stat().st_size if path.exists() else 0  # noqa: E731
        sample["db MB"] = size(self.database) / 2**20
        sample["wal MB"] = size(self.database.with_name(self.database.name + "-wal")) / 2**20
        sample.update(rows(self.database))
        sample["core log KB"] = size(self.core.log) / 1024
        sample["gw log KB"] = size(self.gateway.log) / 1024
        sample.update(gauge_columns(self.core.metrics_port, self.gateway.metrics_port))
        self.samples.append(sample)
        self.pids.append(processes)
        return sample


COLUMNS = ["t", "requests", "rss core", "anon core", "fds core", "thr core", "rss sup",
           "fds sup", "thr sup", "rss w1", "fds w1", "thr w1", "rss w2", "fds w2", "thr w2",
           "db MB", "wal MB", "objects", "destroyed", "audit", "tombstones", "outbox", "spent",
           "core log KB", "gw log KB", "conns core", "tombs w1", "overflowed w1", "deks w1",
           "l3 keys w1"]


def print_header() -> None:
    print(" ".join(f"{name:>10}" for name in COLUMNS), flush=True)


def print_row(sample: dict[str, float]) -> None:
    cells = []
    for name in COLUMNS:
        value = sample[name]
        cells.append(f"{value:10.1f}" if isinstance(value, float) and not value.is_integer()
                     or name.endswith(("MB", "KB")) or name.startswith(("rss", "anon"))
                     else f"{int(value):10d}")
    print(" ".join(cells), flush=True)


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs``."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def floor_of(name: str) -> float:
    for prefix, floor in FLOORS:
        if name.startswith(prefix):
            return floor
    return 0.0


def segments(sampler: Sampler, name: str, after: float) -> list[list[int]]:
    """The indexes of the samples after ``after`` seconds, in runs of one process (a worker
    restarted starts a new run); the core's and the database's series are one run."""
    who = name.rsplit(" ", 1)[-1]
    runs: list[list[int]] = []
    last: object = object()
    process = who in ("core", "sup", "w1", "w2")
    for index, sample in enumerate(sampler.samples):
        if sample["t"] < after or process and not sample[f"rss {who}"]:
            continue  # (a worker killed and not started again yet)
        pid = sampler.pids[index].get(who, 0) if process else 0
        if pid != last or not runs:
            runs.append([])
            last = pid
        runs[-1].append(index)
    return runs


def report(sampler: Sampler, warmup: float) -> list[str]:
    """The slopes after the warm-up; the series flagged as growing."""
    names = [name for name in sampler.samples[0] if name not in ("t", "requests")]
    print()
    print(f"slopes over the samples after {warmup:.0f} s (worker series: over the longest "
          f"life of one worker process; a worker is restarted by every gateway SIGHUP and "
          f"worker 1 by its kills)")
    print(f"{'series':<14}{'first':>10}{'last':>10}{'per hour':>12}{'per 1e6 req':>13}"
          f"{'samples':>9}  verdict")
    flagged = []
    for name in names:
        runs = segments(sampler, name, warmup)
        run = max(runs, key=len) if runs else []
        if len(run) < 4:
            print(f"{name:<14}{'':>10}{'':>10}{'':>12}{'':>13}{len(run):>9}  too few samples")
            continue
        xs = [sampler.samples[i]["t"] for i in run]
        ys = [sampler.samples[i][name] for i in run]
        reqs = [sampler.samples[i]["requests"] for i in run]
        per_hour = slope(xs, ys) * 3600
        per_mreq = slope(reqs, ys) * 1e6
        quarter = max(1, len(ys) // 4)
        grows = min(ys[-quarter:]) - max(ys[:quarter]) > floor_of(name)
        if name in STORED or name == "destroyed":
            verdict = "stored: grows with the load by design"
        elif grows:
            verdict = "GROWS"
            flagged.append(name)
        else:
            verdict = "flat"
        print(f"{name:<14}{ys[0]:10.1f}{ys[-1]:10.1f}{per_hour:12.1f}{per_mreq:13.1f}"
              f"{len(run):9d}  {verdict}")
    return flagged


# --- the run ---------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=28.0,
                        help="how long the load runs (default 28)")
    parser.add_argument("--clients", type=int, default=2,
                        help="l4 client processes (default 2); one managed and one errors "
                             "client besides")
    parser.add_argument("--sample", type=float, default=12.0,
                        help="seconds between samples (default 12)")
    parser.add_argument("--event-interval", type=float, default=60.0,
                        help="seconds between events (default 60)")
    parser.add_argument("--warmup", type=float,
                        help="seconds of samples left out of the slopes (default: a fifth "
                             "of the run, at most 300)")
    parser.add_argument("--retention", type=float, default=120.0,
                        help="the core's outbox_retention and destroyed_retention (default "
                             "120 s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    seconds = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else min(300.0, seconds / 5)
    with work_directory("kcm-soak-bench-", args.keep) as work:
        return soak(args, work, seconds, warmup)


def soak(args: argparse.Namespace, work: Path, seconds: float, warmup: float) -> int:
    database = work / "core" / "kcm.db"
    core = deploy(work / "core", f"sqlite:///{database}")
    core.metrics_port = free_port()
    core.write_config()
    config = core.config.read_text()
    core.config.write_text(config.replace(
        "[core]\n", f"[core]\noutbox_retention = {args.retention}\n"
                    f"destroyed_retention = {args.retention}\n", 1))
    gateway = GatewayProcess(work / "gateway", core, workers=2,
                             settings={"dek_cache_size": 256},
                             metrics_port=free_port())
    clients: list[multiprocessing.Process] = []
    try:
        core.start()
        gateway.start()
        gateway.wait_linked()
        pki = core.pki
        app = lambda port: Target(port, str(pki.app.cert), str(pki.app.key),  # noqa: E731
                                  str(pki.ca.cert))
        other = lambda port: Target(port, str(pki.other_app.cert),  # noqa: E731
                                    str(pki.other_app.key), str(pki.ca.cert))
        total_clients = args.clients + 2
        counters = multiprocessing.get_context("fork").Array("q", 3 * total_clients,
                                                              lock=False)
        deadline = time.time() + seconds
        context = multiprocessing.get_context("fork")
        for slot in range(args.clients):
            clients.append(context.Process(target=l4_client, args=(
                app(gateway.port), deadline, counters, slot, slot)))
        clients.append(context.Process(target=managed_client, args=(
            app(gateway.port), deadline, counters, args.clients, 100)))
        clients.append(context.Process(target=errors_client, args=(
            [app(gateway.port), app(core.port)], [other(gateway.port), other(core.port)],
            deadline, counters, args.clients + 1, 200)))
        print(f"# soak: kcm-core (SQLite) and kcm-gateway (workers = 2), Python "
              f"{platform.python_version()}, {os.cpu_count()} CPUs; {args.minutes:g} minutes; "
              f"{args.clients} l4 clients, 1 managed, 1 errors; an event every "
              f"{args.event_interval:g} s; retention {args.retention:g} s; a sample every "
              f"{args.sample:g} s; work directory {work}", flush=True)
        sampler = Sampler(core, gateway, database, counters, total_clients)
        started = time.monotonic()
        for client in clients:
            client.start()
        print_header()
        print_row(sampler.take(started))
        next_sample = started + args.sample
        next_event = started + args.event_interval
        events = itertools.count()
        while time.time() < deadline:
            now = time.monotonic()
            if now >= next_event:
                what = event(next(events), core, gateway)
                print(f"  {now - started:7.0f} s: {what}", flush=True)
                next_event += args.event_interval
            if now >= next_sample:
                print_row(sampler.take(started))
                next_sample += args.sample
            time.sleep(max(0.05, min(next_event, next_sample, started + seconds)
                           - time.monotonic()))
        for client in clients:
            client.join(timeout=60)
        print_row(sampler.take(started))
        sent, cut, wrong = sampler.totals()
        flagged = report(sampler, warmup)
        last = sampler.samples[-1]
        print()
        print(f"{sent} requests in {last['t']:.0f} s ({sent / last['t']:.0f}/s), {cut} cut "
              f"by worker kills and restarts (made again), {wrong} wrong answers")
        if last["requests"]:
            first_after = next(s for s in sampler.samples if s["t"] >= warmup)
            done = last["requests"] - first_after["requests"]
            for name in ("objects", "audit", "tombstones", "db MB"):
                growth = last[name] - first_after[name]
                print(f"  {name}: {growth:+.1f} over {done:.0f} requests after the warm-up "
                      f"({growth / max(1, done):.4f} per request)")
        print("growing series (not stored by design): " + (", ".join(flagged) or "none"))
        return 1 if wrong or any(c.exitcode != 0 for c in clients) else 0
    finally:
        for client in clients:
            if client.is_alive():
                client.kill()
        gateway.stop()
        core.stop()


if __name__ == "__main__":
    raise SystemExit(main())
