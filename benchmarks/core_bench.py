"""kcm-core's durable control operations against PyKMIP 0.11's server, same machine, same load.

Deploys kcm-core exactly as the end-to-end tests do (``tests/e2e_support.deploy``: a development
PKI, ``kcm core init``, a tenant with service ``app``, ``twistd -n kcm-core``) on a real SQLite
file (WAL, ``synchronous=FULL``) in a temporary directory, and starts PyKMIP's ``KmipServer`` as
``tests/integration/test_conformance_runner.py`` does (TLS 1.2, the same PKI, its SQLite file
in the same directory). Both get the very same KMIP 1.2 request bytes (PyKMIP speaks 1.x only):

* Create: an AES-256 symmetric key;
* Revoke: reason Key Compromise, of keys created beforehand (not timed).

Each scenario runs with 1 and with 8 concurrent clients. Every client is its own process
(multiprocessing, fork) holding one persistent mutual-TLS connection, so client-side Python
never shares a GIL with another client. Every response is decoded and checked for Result Status
Success (and the right identifier); afterwards a sample of keys is read back with Get
Attributes (State) on each server. Latency is per request, client side, in an HDR histogram.

    .venv/bin/python benchmarks/core_bench.py [--requests N] [--clients 1,8] [--keep]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hdrh.histogram import HdrHistogram  # noqa: E402

from kcm.conformance.client import KmipClient, KmipClientError  # noqa: E402
from kcm.kmip.attributes import Attribute, AttributeReference  # noqa: E402
from kcm.kmip.enums import (  # noqa: E402
    CryptographicAlgorithm,
    CryptographicUsageMask,
    ObjectType,
    Operation,
    ResultStatus,
    RevocationReasonCode,
    State,
)
from kcm.kmip.messages import (  # noqa: E402
    ProtocolVersion,
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    decode_response,
    encode_request,
)
from kcm.kmip.payloads import (  # noqa: E402
    CreateRequest,
    DiscoverVersionsRequest,
    GetAttributesRequest,
    RevokeRequest,
)
from kcm.kmip.payloads.lifecycle import RevocationReason  # noqa: E402
from kcm.kmip.tags import Tag  # noqa: E402
from kcm.pki import PkiPaths  # noqa: E402
from kcm.ttlv import decode, encode  # noqa: E402
from tests.e2e_support import PYKMIP_SERVER, CoreProcess, deploy  # noqa: E402

KMIP_1_2 = ProtocolVersion.of((1, 2))
START_TIMEOUT = 30.0
#: Keys read back with Get Attributes after each scenario, per server.
VERIFY_SAMPLE = 50



# --- the requests: KMIP 1.2, identical bytes for both servers ---------------------------------

def request(operation: Operation, payload: object) -> bytes:
    header = RequestHeader(protocol_version=KMIP_1_2, batch_count=1)
    item = RequestBatchItem(operation=operation, request_payload=payload)
    return encode(encode_request(RequestMessage(header, [item])))


CREATE = request(Operation.CREATE, CreateRequest(
    object_type=ObjectType.SYMMETRIC_KEY,
    attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
                Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256),
                # PyKMIP's server refuses a Create without a usage mask (Invalid Field).
                Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK,
                             CryptographicUsageMask.ENCRYPT | CryptographicUsageMask.DECRYPT)]))

DISCOVER_VERSIONS = request(Operation.DISCOVER_VERSIONS,
                            DiscoverVersionsRequest(protocol_versions=[KMIP_1_2]))


def revoke(unique_identifier: str) -> bytes:
    """Revoke for Key Compromise; the spec asks for the Compromise Occurrence Date then."""
    return request(Operation.REVOKE, RevokeRequest(
        unique_identifier=unique_identifier,
        revocation_reason=RevocationReason(code=RevocationReasonCode.KEY_COMPROMISE),
        compromise_occurrence_date=1_700_000_000))


def get_state(unique_identifier: str) -> bytes:
    return request(Operation.GET_ATTRIBUTES, GetAttributesRequest(
        unique_identifier=unique_identifier,
        attribute_references=[AttributeReference(Tag.STATE)]))


# --- the two servers ---------------------------------------------------------------------------

@dataclass
class Server:
    """A running KMIP server on loopback and how a client reaches it."""

    name: str
    port: int
    pki: PkiPaths
    pid: int

    def client(self) -> KmipClient:
        return KmipClient("127.0.0.1", self.port, cert=self.pki.app.cert, key=self.pki.app.key,
                          ca=self.pki.ca.cert)

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_pykmip(pki: PkiPaths, work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", PYKMIP_SERVER, str(pki.directory), str(port), str(work)],
        stdout=subprocess.DEVNULL, stderr=open(work / "pykmip.stderr", "wb"),  # noqa: SIM115
    )
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError("PyKMIP server exited:\n"
                               + (work / "pykmip.stderr").read_text()[-2000:])
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("PyKMIP server did not start listening") from None
            time.sleep(0.1)


# --- driving the load ---------------------------------------------------------------------------

@dataclass
class ClientRun:
    """What one client process measured and found."""

    latencies_ns: list[int] = field(default_factory=list)
    started_ns: int = 0
    finished_ns: int = 0
    unique_identifiers: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0


def check(operation: Operation, wire_request: bytes, wire_response: bytes) -> str:
    """The Unique Identifier of a successful answer; raise ValueError for anything else."""
    response = decode_response(decode(wire_response))
    if len(response.batch_items) != 1:
        raise ValueError(f"{len(response.batch_items)} batch items")
    item = response.batch_items[0]
    if item.result_status != ResultStatus.SUCCESS:
        status = getattr(item.result_status, "name", item.result_status)
        reason = getattr(item.result_reason, "name", item.result_reason)
        raise ValueError(f"{status} {reason}: {item.result_message}")
    if item.operation != operation:
        raise ValueError(f"answer for {item.operation!r}, not {operation!r}")
    unique_identifier = getattr(item.response_payload, "unique_identifier", None)
    if operation in (Operation.CREATE, Operation.REVOKE) and not unique_identifier:
        raise ValueError("no Unique Identifier in the answer")
    if operation == Operation.REVOKE and revoke(unique_identifier) != wire_request:
        raise ValueError(f"answer names {unique_identifier}, not the revoked key")
    return unique_identifier or ""


def drive(server: Server, operation: Operation, requests: list[bytes],
          start: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue) -> None:
    """One client process: connect, wait for the others, send ``requests`` back to back, then
    (untimed) check every answer."""
    run = ClientRun()
    answers: list[bytes] = []
    client = server.client()
    try:
        client.connect()  # the TLS handshake is not part of any request's latency
        start.wait()
        clock = time.monotonic_ns
        run.started_ns = clock()
        for wire in requests:
            sent = clock()
            answers.append(client.send(wire))
            run.latencies_ns.append(clock() - sent)
        run.finished_ns = clock()
    except (KmipClientError, threading.BrokenBarrierError) as e:
        start.abort()  # a client that cannot connect must not leave the others waiting
        run.finished_ns = time.monotonic_ns()
        run.failures.append(f"connection: {e!r}")
        run.failures.extend(["not sent"] * (len(requests) - len(answers) - 1))
    finally:
        client.close()
    for wire_request, wire_response in zip(requests, answers, strict=False):
        try:
            run.unique_identifiers.append(check(operation, wire_request, wire_response))
        except Exception as e:  # noqa: BLE001 - a failure to count, whatever it is
            run.failures.append(str(e))
    run.cpu_seconds = time.process_time()  # a forked child's counters start at zero
    results.put(run)


@dataclass
class Outcome:
    """One scenario on one server."""

    server: str
    scenario: str
    clients: int
    requests: int
    ok: int
    failures: list[str]
    seconds: float
    histogram: HdrHistogram
    cpu_seconds: float
    unique_identifiers: list[str]
    #: CPU the rest of the machine used meanwhile (other work on it), in cores.
    foreign_cores: float

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile_ms(self, percent: float) -> float:
        return self.histogram.get_value_at_percentile(percent) / 1000  # recorded in µs


def load(server: Server, operation: Operation, requests: list[bytes], clients: int,
         scenario: str) -> Outcome:
    """Split ``requests`` over ``clients`` processes, run them together, gather the figures."""
    context = multiprocessing.get_context("fork")
    start = context.Barrier(clients, timeout=START_TIMEOUT)
    results = context.Queue()
    shares = [requests[i::clients] for i in range(clients)]
    workers = [context.Process(target=drive, args=(server, operation, share, start, results))
               for share in shares]
    cpu_before, busy_before, wall_before = server.cpu_seconds(), machine_busy(), time.monotonic()
    for worker in workers:
        worker.start()
    runs = [results.get(timeout=1800) for _ in workers]
    cpu_after, busy_after, wall_after = server.cpu_seconds(), machine_busy(), time.monotonic()
    for worker in workers:
        worker.join()
    histogram = HdrHistogram(1, 60_000_000, 3)  # 1 µs .. 60 s, 3 significant digits
    for run in runs:
        for latency in run.latencies_ns:
            histogram.record_value(max(1, latency // 1000))
    failures = [failure for run in runs for failure in run.failures]
    identifiers = [uid for run in runs for uid in run.unique_identifiers]
    started = min((run.started_ns for run in runs if run.started_ns), default=0)
    finished = max(run.finished_ns for run in runs) if started else 0
    foreign = (busy_after - busy_before) - (cpu_after - cpu_before) - sum(
        run.cpu_seconds for run in runs)
    return Outcome(server.name, scenario, clients, len(requests), len(requests) - len(failures),
                   failures, (finished - started) / 1e9, histogram, cpu_after - cpu_before,
                   identifiers, max(0.0, foreign) / (wall_after - wall_before))


def machine_busy() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, stat.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def verify_states(server: Server, identifiers: list[str], expected: State | None) -> list[str]:
    """Read back a sample of keys' State: present (and ``expected``, when given)."""
    problems = []
    with server.client() as client:
        for uid in random.Random(0).sample(identifiers, min(VERIFY_SAMPLE, len(identifiers))):
            try:
                check(Operation.GET_ATTRIBUTES, b"", answer := client.send(get_state(uid)))
                payload = decode_response(decode(answer)).batch_items[0].response_payload
                states = [a.value.value for a in payload.attributes or [] if a.tag == Tag.STATE]
                if not states or (expected is not None and states[0] != expected):
                    problems.append(f"{uid}: State {states}, expected {expected!r}")
            except (ValueError, KmipClientError) as e:
                problems.append(f"{uid}: {e}")
    return problems


# --- context: what a request costs without the database ---------------------------------------

def fsync_ms(directory: Path, rounds: int = 200) -> float:
    """Median time of a 4 KiB write + fsync on the benchmark's file system."""
    path = directory / "fsync.probe"
    samples = []
    with open(path, "wb") as probe:
        for _ in range(rounds):
            probe.write(os.urandom(4096))
            probe.flush()
            started = time.perf_counter_ns()
            os.fsync(probe.fileno())
            samples.append(time.perf_counter_ns() - started)
    path.unlink()
    return sorted(samples)[len(samples) // 2] / 1e6


def round_trip_ms(server: Server, rounds: int = 500) -> float:
    """Median latency of Discover Versions on one connection: TLS, framing and dispatch, and on
    kcm-core also the audit record every request gets (one durable commit)."""
    samples = []
    with server.client() as client:
        for _ in range(rounds):
            started = time.perf_counter_ns()
            answer = client.send(DISCOVER_VERSIONS)
            samples.append(time.perf_counter_ns() - started)
            check(Operation.DISCOVER_VERSIONS, DISCOVER_VERSIONS, answer)
    return sorted(samples)[len(samples) // 2] / 1e6


# --- the run -----------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000,
                        help="requests per scenario, all clients together (default 2000)")
    parser.add_argument("--clients", default="1,8", help="client counts (default 1,8)")
    parser.add_argument("--warmup", type=int, default=100, help="untimed Creates per server")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    client_counts = [int(count) for count in args.clients.split(",")]

    work = Path(tempfile.mkdtemp(prefix="kcm-core-bench-"))
    core: CoreProcess | None = None
    pykmip: subprocess.Popen | None = None
    try:
        core = deploy(work / "core", f"sqlite:///{work / 'core' / 'kcm.db'}")
        core.start()
        pykmip, pykmip_port = start_pykmip(core.pki, work)
        assert core.process is not None
        servers = [Server("kcm-core", core.port, core.pki, core.process.pid),
                   Server("PyKMIP", pykmip_port, core.pki, pykmip.pid)]

        print(f"# kcm-core vs PyKMIP 0.11 server — Python {platform.python_version()}, "
              f"{os.cpu_count()} CPUs, {platform.machine()}; work directory {work}")
        print(f"# KMIP 1.2 over mutual TLS on 127.0.0.1; {args.requests} requests per scenario; "
              "each client a process with one persistent connection")
        print(f"# fsync of 4 KiB on this file system: p50 {fsync_ms(work):.2f} ms")
        for server in servers:
            warmup = load(server, Operation.CREATE, [CREATE] * args.warmup, 1, "warm-up")
            if warmup.failures:
                raise RuntimeError(f"{server.name} fails Create: {warmup.failures[0]}")
            what = ("audited: one durable commit" if server.name == "kcm-core"
                    else "no storage at all")
            print(f"# {server.name}: Discover Versions, 1 client: "
                  f"p50 {round_trip_ms(server):.2f} ms ({what})")

        outcomes: list[Outcome] = []
        problems: list[str] = []

        def scenario(name: str, operation: Operation, clients: int,
                     requests_for: dict[str, list[bytes]], expected: State | None) -> None:
            # Alternate the servers scenario by scenario, so neither gets a quieter machine.
            for server in servers:
                outcome = load(server, operation, requests_for[server.name], clients, name)
                outcomes.append(outcome)
                found = verify_states(server, outcome.unique_identifiers, expected)
                problems.extend(f"{server.name} {name}/{clients}: {p}" for p in found)
                print(f"  {server.name:<9}{name:<8}{clients:>3} clients: "
                      f"{outcome.throughput:8.1f} ops/s  p50 {outcome.percentile_ms(50):7.2f} ms"
                      f"  failures {len(outcome.failures)}", flush=True)

        for clients in client_counts:
            scenario("Create", Operation.CREATE, clients,
                     {server.name: [CREATE] * args.requests for server in servers}, None)
        for clients in client_counts:
            # Fresh keys for every Revoke scenario, created untimed with 8 clients.
            revocations = {}
            for server in servers:
                created = load(server, Operation.CREATE, [CREATE] * args.requests, 8, "setup")
                if created.failures:
                    raise RuntimeError(f"{server.name}: setup Creates failed: "
                                       f"{created.failures[:3]}")
                revocations[server.name] = [revoke(uid) for uid in created.unique_identifiers]
            scenario("Revoke", Operation.REVOKE, clients, revocations, State.COMPROMISED)

        report(outcomes, problems)
        return 1 if problems or any(outcome.failures for outcome in outcomes) else 0
    finally:
        if pykmip is not None:
            pykmip.send_signal(signal.SIGTERM)
            try:
                pykmip.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pykmip.kill()
                pykmip.wait()
        if core is not None:
            core.stop()
        if args.keep:
            print(f"# kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(outcomes: list[Outcome], problems: list[str]) -> None:
    """The table: per scenario and server, then kcm-core / PyKMIP ratios."""
    print()
    print(f"{'scenario':<12}{'server':<10}{'ok/sent':>11}{'ops/s':>9}{'p50 ms':>9}{'p90 ms':>9}"
          f"{'p99 ms':>9}{'srv CPU ms/op':>15}{'other load':>12}{'thr ratio':>11}"
          f"{'p50 ratio':>11}")
    by_key = {(o.scenario, o.clients, o.server): o for o in outcomes}
    for o in outcomes:
        line = (f"{o.scenario + ' x' + str(o.clients):<12}{o.server:<10}"
                f"{f'{o.ok}/{o.requests}':>11}{o.throughput:9.1f}{o.percentile_ms(50):9.2f}"
                f"{o.percentile_ms(90):9.2f}{o.percentile_ms(99):9.2f}"
                f"{1000 * o.cpu_seconds / max(1, o.ok):15.2f}{o.foreign_cores:12.2f}")
        baseline = by_key.get((o.scenario, o.clients, "PyKMIP"))
        if o.server == "kcm-core" and baseline and baseline.throughput:
            line += (f"{o.throughput / baseline.throughput:10.2f}x"
                     f"{o.percentile_ms(50) / baseline.percentile_ms(50):10.2f}x")
        print(line)
    print("(ratios are kcm-core / PyKMIP: throughput above 1 and p50 below 1 favour kcm-core;")
    print(" other load: cores busy with work other than this benchmark's server and clients —")
    print(" figures from a scenario where it is above ~0.1 were disturbed)")
    for o in outcomes:
        if o.failures:
            print(f"FAILURES {o.server} {o.scenario} x{o.clients}: {len(o.failures)}, "
                  f"e.g. {o.failures[0]}")
    for problem in problems[:20]:
        print(f"VERIFY {problem}")
    total = sum(len(o.failures) for o in outcomes)
    print(f"{total} failed requests, {len(problems)} failed read-backs")


if __name__ == "__main__":
    raise SystemExit(main())
