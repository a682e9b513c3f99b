"""kcm-gateway on loopback: L4 operations against a bare Twisted TLS echo server, and a forwarded
control operation against the same request sent to kcm-core directly, all in one run.

Deploys kcm-core and kcm-gateway as the end-to-end tests do (``tests/e2e_support``: a
development PKI, ``kcm core init``, tenant ``demo`` with service ``app``, ``twistd -n
kcm-core`` on SQLite, ``twistd -n kcm-gateway`` linked to it and pre-warmed for demo/app), and
starts the baseline: a bare Twisted TLS echo server (``kcm.tls.server_tls_options``, the
gateway's own certificate, key and CA) answering each whole TTLV message with itself.

Measured, client side, over persistent mutual-TLS connections (KMIP 1.4 requests, the blocking
``kcm.conformance.client.KmipClient``; every client is its own process):

1. sequential L4 Create, Get, Encrypt and Decrypt (AES-GCM, a 256-byte record, one L4 token
   created beforehand) at the gateway, and the echo server with the Encrypt request's bytes;
   the scenarios alternate round by round so none gets a quieter machine;
2. Encrypt and echo with several concurrent client processes (throughput under load);
3. Get Attributes (repeatable) and Activate (fresh Pre-Active keys, created untimed) of
   managed keys, through the gateway and to the core directly, interleaved request by request
   on two connections of one client.

Every answer is decoded and checked (Result Status Success, the operation, the identifier; the
echo must return the request byte for byte; Decrypt must return the record). Latencies go to
HDR histograms (ns, 3 significant digits).

    .venv/bin/python benchmarks/gateway_bench.py [--requests N] [--rounds R]
        [--concurrent-clients C] [--control-requests N] [--keep]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hdrh.histogram import HdrHistogram  # noqa: E402

from benchmarks.core_bench import Server, free_port, machine_busy  # noqa: E402
from kcm.conformance.client import KmipClientError  # noqa: E402
from kcm.kmip.attributes import Attribute, AttributeReference  # noqa: E402
from kcm.kmip.enums import (  # noqa: E402
    CryptographicAlgorithm,
    ObjectType,
    Operation,
    ResultStatus,
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
from kcm.kmip.payloads import GetAttributesRequest  # noqa: E402
from kcm.kmip.payloads.crypto import DecryptRequest, EncryptRequest  # noqa: E402
from kcm.kmip.payloads.lifecycle import ActivateRequest, CreateRequest, GetRequest  # noqa: E402
from kcm.kmip.tags import Tag  # noqa: E402
from kcm.pki import PkiPaths  # noqa: E402
from kcm.ttlv import Item, ItemType, decode, encode  # noqa: E402
from tests.e2e_support import CoreProcess, GatewayProcess, deploy  # noqa: E402

KMIP_1_4 = ProtocolVersion.of((1, 4))
START_TIMEOUT = 30.0
#: Untimed requests each client sends on its connection before the clock starts.
WARMUP = 200
#: ARCHITECTURE §10 / ADR-604, in ms.
L4_TARGETS = {50: 0.2, 99: 1.0, 99.9: 5.0}
THROUGHPUT_TARGET = 0.70
FORWARD_OVERHEAD_TARGET_MS = 0.2
DURABLE_P99_TARGET_MS = 20.0

# The baseline: Twisted, the same TLS options and certificates as the gateway, no KMIP at all.
_ECHO_SERVER = """
import sys
from twisted.internet import protocol, reactor
from twisted.internet.endpoints import SSL4ServerEndpoint
from kcm.tls import server_tls_options

cert, key, ca, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

class Echo(protocol.Protocol):
    # Frames like a KMIP server (8-byte TTLV header, then the value) and answers each whole
    # message with itself: the least a Python TLS server can do per request.
    def connectionMade(self):
        self.buffer = b""

    def dataReceived(self, data):
        self.buffer += data
        while len(self.buffer) >= 8:
            size = 8 + int.from_bytes(self.buffer[4:8], "big")
            if len(self.buffer) < size:
                return
            message, self.buffer = self.buffer[:size], self.buffer[size:]
            self.transport.write(message)

factory = protocol.Factory.forProtocol(Echo)
SSL4ServerEndpoint(reactor, port, server_tls_options(cert, key, ca),
                   interface="127.0.0.1").listen(factory)
reactor.run()
"""


# --- the requests (KMIP 1.4, as an application would send them) -------------------------------

def request(operation: Operation, payload: object) -> bytes:
    header = RequestHeader(protocol_version=KMIP_1_4, batch_count=1)
    item = RequestBatchItem(operation=operation, request_payload=payload)
    return encode(encode_request(RequestMessage(header, [item])))


def _aes256(*extra: Attribute) -> list[Attribute]:
    return [Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
            Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256), *extra]


#: An L4 (a DEK the gateway mints as a token): an AES key marked x-kcm-level = L4.
CREATE_L4 = request(Operation.CREATE, CreateRequest(
    object_type=ObjectType.SYMMETRIC_KEY, attributes=_aes256(Attribute.vendor(
        "x", "kcm-level", Item(Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING, "L4")))))

#: A managed key, stored by the core (Pre-Active: no Activation Date given).
CREATE_MANAGED = request(Operation.CREATE, CreateRequest(
    object_type=ObjectType.SYMMETRIC_KEY, attributes=_aes256()))


def get_state(unique_identifier: str) -> bytes:
    return request(Operation.GET_ATTRIBUTES, GetAttributesRequest(
        unique_identifier=unique_identifier, attribute_references=[AttributeReference(Tag.STATE)]))


def activate(unique_identifier: str) -> bytes:
    return request(Operation.ACTIVATE, ActivateRequest(unique_identifier=unique_identifier))


# --- checking answers ---------------------------------------------------------------------------

#: Checks one answer to one request; returns None when it is right, else what is wrong.
Check = Callable[[bytes, bytes], "str | None"]


def payload_of(operation: Operation, wire_response: bytes):
    """The response payload of a one-item answer for ``operation``; ValueError otherwise."""
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
    return item.response_payload


def kmip_check(operation: Operation, expect: Callable[[bytes, object], str | None]) -> Check:
    def check(wire_request: bytes, wire_response: bytes) -> str | None:
        try:
            return expect(wire_request, payload_of(operation, wire_response))
        except Exception as e:  # noqa: BLE001 - a failure to count, whatever it is
            return str(e) or repr(e)
    return check


def echo_check(wire_request: bytes, wire_response: bytes) -> str | None:
    return None if wire_response == wire_request else "the echo is not the request"


# --- driving the load ---------------------------------------------------------------------------

@dataclass
class ClientRun:
    """What one client process measured: latencies (ns) per connection, failures, CPU."""

    latencies_ns: dict[int, list[int]] = field(default_factory=dict)
    started_ns: int = 0
    finished_ns: int = 0
    failures: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0
    identifiers: list[str] = field(default_factory=list)
    #: Machine-wide busy CPU and each watched server's CPU, read when the timed part began
    #: and when it ended (all clients together: see :func:`drive`).
    before: tuple[float, dict[str, float]] | None = None
    after: tuple[float, dict[str, float]] | None = None


def cpu_snapshot(watched: list[Server]) -> tuple[float, dict[str, float]]:
    return machine_busy(), {server.name: server.cpu_seconds() for server in watched}


def drive(servers: list[Server], plan: list[tuple[int, bytes]], check: list[Check],
          start: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue,
          warmup: list[bytes | None], watched: list[Server]) -> None:
    """One client process: one persistent connection per server; untimed warm-up; then
    ``plan`` (server index, request) back to back, timing each; then, untimed, every answer
    checked with ``check[server index]``. All clients start the timed part together and wait
    for each other at its end, so CPU read between the two barriers is the timed load only."""
    run = ClientRun(latencies_ns={index: [] for index in range(len(servers))})
    answers: list[bytes] = []
    clients = [server.client() for server in servers]
    try:
        for client, warm in zip(clients, warmup, strict=True):
            client.connect()  # the TLS handshake is not part of any request's latency
            for _ in range(WARMUP if warm else 0):
                client.send(warm)
        start.wait()
        run.before = cpu_snapshot(watched)
        clock = time.perf_counter_ns
        cpu_before = time.process_time()
        run.started_ns = time.monotonic_ns()
        for index, wire in plan:
            sent = clock()
            answers.append(clients[index].send(wire))
            run.latencies_ns[index].append(clock() - sent)
        run.finished_ns = time.monotonic_ns()
        run.cpu_seconds = time.process_time() - cpu_before
        start.wait()
        run.after = cpu_snapshot(watched)
    except (KmipClientError, threading.BrokenBarrierError) as e:
        start.abort()  # a client that cannot connect must not leave the others waiting
        run.finished_ns = time.monotonic_ns()
        run.failures.append(f"connection: {e!r}")
        run.failures.extend(["not sent"] * (len(plan) - len(answers) - 1))
    finally:
        for client in clients:
            client.close()
    for (index, wire_request), wire_response in zip(plan, answers, strict=False):
        problem = check[index](wire_request, wire_response)
        if problem:
            run.failures.append(problem)
        elif wire_request == CREATE_MANAGED:
            run.identifiers.append(payload_of(Operation.CREATE, wire_response).unique_identifier)
    results.put(run)


@dataclass
class Outcome:
    """One scenario: per server, a histogram; overall, the wall time and CPU spent."""

    name: str
    clients: int
    requests: int
    failures: list[str]
    seconds: float
    histograms: list[HdrHistogram]
    client_cpu_seconds: float
    #: CPU each watched server process used meanwhile, by name.
    server_cpu_seconds: dict[str, float]
    foreign_cores: float
    identifiers: list[str]

    @property
    def ok(self) -> int:
        return self.requests - len(self.failures)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def ms(self, percent: float, server: int = 0) -> float:
        return self.histograms[server].get_value_at_percentile(percent) / 1e6


def load(name: str, servers: list[Server], plans: list[list[tuple[int, bytes]]],
         check: list[Check], watched: list[Server], warmup: list[bytes | None]) -> Outcome:
    """Run one client process per plan, all together; gather the figures. ``warmup`` is a
    repeatable request per server (or None) each client sends untimed first."""
    context = multiprocessing.get_context("fork")
    start = context.Barrier(len(plans), timeout=START_TIMEOUT)
    results = context.Queue()
    workers = [context.Process(target=drive,
                               args=(servers, plan, check, start, results, warmup, watched))
               for plan in plans]
    for worker in workers:
        worker.start()
    runs = [results.get(timeout=1800) for _ in workers]
    for worker in workers:
        worker.join()
    # Counters only grow: the earliest reading at the start, the latest at the end.
    befores = [run.before for run in runs if run.before and run.after]
    afters = [run.after for run in runs if run.before and run.after]
    if befores:
        busy_before = min(busy for busy, _ in befores)
        busy_after = max(busy for busy, _ in afters)
        server_cpu = {server.name: max(cpu[server.name] for _, cpu in afters)
                      - min(cpu[server.name] for _, cpu in befores) for server in watched}
    else:  # a client failed to connect: no figures worth having
        busy_before = busy_after = 0.0
        server_cpu = {server.name: 0.0 for server in watched}
    histograms = []
    for index in range(len(servers)):
        histogram = HdrHistogram(1_000, 60_000_000_000, 3)  # 1 µs .. 60 s, in ns
        for run in runs:
            for latency in run.latencies_ns[index]:
                histogram.record_value(max(1_000, latency))
        histograms.append(histogram)
    started = min((run.started_ns for run in runs if run.started_ns), default=0)
    finished = max(run.finished_ns for run in runs) if started else 0
    client_cpu = sum(run.cpu_seconds for run in runs)
    seconds = (finished - started) / 1e9
    foreign = (busy_after - busy_before) - sum(server_cpu.values()) - client_cpu
    return Outcome(name, len(plans), sum(len(plan) for plan in plans),
                   [failure for run in runs for failure in run.failures],
                   seconds, histograms, client_cpu, server_cpu,
                   max(0.0, foreign) / seconds if seconds else 0.0,
                   [uid for run in runs for uid in run.identifiers])


def merge(outcomes: list[Outcome]) -> Outcome:
    """Several rounds of one scenario as one outcome (histograms added, times summed)."""
    first = outcomes[0]
    histograms = []
    for index in range(len(first.histograms)):
        histogram = HdrHistogram(1_000, 60_000_000_000, 3)
        for outcome in outcomes:
            histogram.add(outcome.histograms[index])
        histograms.append(histogram)
    server_cpu = {name: sum(o.server_cpu_seconds[name] for o in outcomes)
                  for name in first.server_cpu_seconds}
    seconds = sum(o.seconds for o in outcomes)
    return Outcome(first.name, first.clients, sum(o.requests for o in outcomes),
                   [f for o in outcomes for f in o.failures], seconds, histograms,
                   sum(o.client_cpu_seconds for o in outcomes), server_cpu,
                   sum(o.foreign_cores * o.seconds for o in outcomes) / seconds if seconds
                   else 0.0, [uid for o in outcomes for uid in o.identifiers])


# --- the servers ---------------------------------------------------------------------------------

def start_echo(pki: PkiPaths, work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    stderr = open(work / "echo.stderr", "wb")  # noqa: SIM115 - owned by the child process
    process = subprocess.Popen(
        [sys.executable, "-c", _ECHO_SERVER, str(pki.gateway.cert), str(pki.gateway.key),
         str(pki.ca.cert), str(port)], stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    stderr.close()
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError("echo server exited:\n"
                               + (work / "echo.stderr").read_text()[-2000:])
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, port
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("echo server did not start listening") from None
            time.sleep(0.05)


def stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the run -------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000,
                        help="timed requests per sequential scenario (default 20000)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds the sequential and concurrent scenarios alternate in")
    parser.add_argument("--concurrent-clients", type=int, default=4,
                        help="client processes for the throughput scenarios (default 4)")
    parser.add_argument("--control-requests", type=int, default=1000,
                        help="Get Attributes and Activates per path (default 1000)")
    parser.add_argument("--record-size", type=int, default=256)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kcm-gateway-bench-"))
    core: CoreProcess | None = None
    gateway_process: GatewayProcess | None = None
    echo_process: subprocess.Popen | None = None
    outcomes: dict[str, Outcome] = {}
    try:
        core = deploy(work / "core", f"sqlite:///{work / 'core' / 'kcm.db'}")
        core.start()
        gateway_process = GatewayProcess(work / "gateway", core)
        gateway_process.start()
        gateway_process.wait_linked()
        echo_process, echo_port = start_echo(core.pki, work)
        assert core.process is not None and gateway_process.process is not None
        gateway = Server("gateway", gateway_process.port, core.pki, gateway_process.process.pid)
        direct = Server("core", core.port, core.pki, core.process.pid)
        echo = Server("echo", echo_port, core.pki, echo_process.pid)
        watched = [gateway, direct, echo]

        # What kcm-core burns while nobody asks it anything (its background timers), so the
        # L4 rows can show that the core does no work for them.
        idle_before, idle_wall = direct.cpu_seconds(), time.monotonic()
        time.sleep(3)
        core_idle = (direct.cpu_seconds() - idle_before) / (time.monotonic() - idle_wall)

        # The L4 token and one sealed record, made beforehand (untimed).
        record = os.urandom(args.record_size)
        with gateway.client() as client:
            token = payload_of(Operation.CREATE, client.send(CREATE_L4)).unique_identifier
            encrypt = request(Operation.ENCRYPT, EncryptRequest(unique_identifier=token,
                                                                data=record))
            sealed = payload_of(Operation.ENCRYPT, client.send(encrypt))
        decrypt = request(Operation.DECRYPT, DecryptRequest(
            unique_identifier=token, data=sealed.data, iv_counter_nonce=sealed.iv_counter_nonce,
            authenticated_encryption_tag=sealed.authenticated_encryption_tag))
        get = request(Operation.GET, GetRequest(unique_identifier=token))

        def encrypted(_, payload) -> str | None:
            if payload.unique_identifier != token:
                return f"answer names {payload.unique_identifier}"
            if (len(payload.data or b"") != len(record) or not payload.iv_counter_nonce
                    or not payload.authenticated_encryption_tag):
                return "not an AES-GCM encryption of the record"
            return None

        def decrypted(_, payload) -> str | None:
            return None if payload.data == record else "the record did not come back"

        def created_l4(_, payload) -> str | None:
            uid = payload.unique_identifier
            return None if uid.startswith("l4.") else f"{uid} is not an L4 token"

        def got_dek(_, payload) -> str | None:
            if payload.unique_identifier != token:
                return f"answer names {payload.unique_identifier}"
            return None if payload.object_type == ObjectType.SYMMETRIC_KEY else "not a key"

        sequential = {
            "echo": (echo, encrypt, echo_check),
            "L4 Encrypt": (gateway, encrypt, kmip_check(Operation.ENCRYPT, encrypted)),
            "L4 Decrypt": (gateway, decrypt, kmip_check(Operation.DECRYPT, decrypted)),
            "L4 Get": (gateway, get, kmip_check(Operation.GET, got_dek)),
            "L4 Create": (gateway, CREATE_L4, kmip_check(Operation.CREATE, created_l4)),
        }
        print(f"# kcm-gateway vs a bare Twisted TLS echo server — Python "
              f"{platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}; "
              f"work directory {work}")
        print(f"# KMIP 1.4 over mutual TLS on 127.0.0.1; Encrypt request {len(encrypt)} bytes, "
              f"its answer {len(client_answer(gateway, encrypt))} bytes; "
              f"{args.requests} requests per sequential scenario in {args.rounds} rounds",
              flush=True)

        per_round = max(1, args.requests // args.rounds)
        rounds: dict[str, list[Outcome]] = {name: [] for name in sequential}
        concurrent: dict[str, list[Outcome]] = {"echo": [], "L4 Encrypt": []}
        share = max(1, args.requests // args.concurrent_clients // args.rounds)
        for round_number in range(args.rounds):
            for name, (server, wire, check) in sequential.items():
                rounds[name].append(load(name, [server], [[(0, wire)] * per_round], [check],
                                         watched, [wire]))
            for name in concurrent:
                server, wire, check = sequential[name]
                concurrent[name].append(load(name, [server],
                                             [[(0, wire)] * share] * args.concurrent_clients,
                                             [check], watched, [wire]))
            print(f"  round {round_number + 1}/{args.rounds}: " + ", ".join(
                f"{name} p50 {rounds[name][-1].ms(50):.3f} ms" for name in sequential), flush=True)
        for name in sequential:
            outcomes[name] = merge(rounds[name])
        for name in concurrent:
            outcomes[f"{name} x{args.concurrent_clients}"] = merge(concurrent[name])

        # Forwarded control operations: the same request through the gateway (connection 0)
        # and to the core directly (connection 1), interleaved, the order flipping every pair.
        with direct.client() as client:
            managed = payload_of(Operation.CREATE, client.send(CREATE_MANAGED)).unique_identifier

        def state_is(expected: State) -> Callable[[bytes, object], str | None]:
            def check(_, payload) -> str | None:
                states = [a.value.value for a in payload.attributes or [] if a.tag == Tag.STATE]
                return None if states == [expected] else f"State {states}"
            return check

        def paired(wires_gateway: list[bytes], wires_direct: list[bytes]) -> list[tuple[int,
                                                                                      bytes]]:
            plan: list[tuple[int, bytes]] = []
            for i, pair in enumerate(zip(wires_gateway, wires_direct, strict=True)):
                plan.extend([(0, pair[0]), (1, pair[1])] if i % 2 == 0
                            else [(1, pair[1]), (0, pair[0])])
            return plan

        n = args.control_requests
        get_attributes = get_state(managed)
        state_check = kmip_check(Operation.GET_ATTRIBUTES, state_is(State.PRE_ACTIVE))
        outcomes["Get Attributes"] = load(
            "Get Attributes", [gateway, direct],
            [paired([get_attributes] * n, [get_attributes] * n)], [state_check, state_check],
            watched, [get_attributes] * 2)
        print(f"  Get Attributes: gateway p50 {outcomes['Get Attributes'].ms(50, 0):.3f} ms, "
              f"core p50 {outcomes['Get Attributes'].ms(50, 1):.3f} ms", flush=True)

        # Fresh Pre-Active keys for Activate, created untimed (2 clients, at the core).
        created = load("setup", [direct], [[(0, CREATE_MANAGED)] * n] * 2,
                       [kmip_check(Operation.CREATE, lambda *_: None)], watched, [None])
        if created.failures or len(created.identifiers) != 2 * n:
            raise RuntimeError(f"setup Creates failed: {created.failures[:3]}")
        keys = created.identifiers
        activations = paired([activate(uid) for uid in keys[0::2]],
                             [activate(uid) for uid in keys[1::2]])
        activated = kmip_check(Operation.ACTIVATE, lambda wire, payload: (
            None if activate(payload.unique_identifier) == wire else "another key"))
        outcomes["Activate"] = load("Activate", [gateway, direct], [activations],
                                    [activated, activated], watched,
                                    [get_attributes] * 2)
        print(f"  Activate: gateway p50 {outcomes['Activate'].ms(50, 0):.3f} ms, "
              f"core p50 {outcomes['Activate'].ms(50, 1):.3f} ms", flush=True)
        # Read back a sample: the core must hold them Active, whichever way they were sent.
        problems = []
        check_active = kmip_check(Operation.GET_ATTRIBUTES, state_is(State.ACTIVE))
        with direct.client() as client:
            for uid in keys[:: max(1, len(keys) // 50)]:
                wire = get_state(uid)
                problem = check_active(wire, client.send(wire))
                if problem:
                    problems.append(f"{uid}: {problem}")

        report(outcomes, args, problems, gateway_process, core_idle)
        failed = sum(len(o.failures) for o in outcomes.values())
        return 1 if failed or problems else 0
    finally:
        stop(echo_process)
        if gateway_process is not None:
            gateway_process.stop()
        if core is not None:
            core.stop()
        if args.keep:
            print(f"# kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def client_answer(server: Server, wire: bytes) -> bytes:
    with server.client() as client:
        return client.send(wire)


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def report(outcomes: dict[str, Outcome], args: argparse.Namespace, problems: list[str],
           gateway_process: GatewayProcess, core_idle: float) -> None:
    """The tables: L4 against the echo; concurrent throughput; forwarded vs direct."""
    print()
    print(f"{'scenario':<16}{'ok/sent':>13}{'ops/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
          f"{'p99.9 ms':>10}{'max ms':>9}{'client µs/op':>14}{'server µs/op':>14}"
          f"{'core %':>8}{'other load':>12}{'p50/echo':>10}{'ops/echo':>10}")
    names = ["echo", "L4 Encrypt", "L4 Decrypt", "L4 Get", "L4 Create",
             f"echo x{args.concurrent_clients}", f"L4 Encrypt x{args.concurrent_clients}"]
    for name in names:
        o = outcomes[name]
        server = "echo" if name.startswith("echo") else "gateway"
        baseline = outcomes["echo" if o.clients == 1 else f"echo x{args.concurrent_clients}"]
        print(f"{name:<16}{f'{o.ok}/{o.requests}':>13}{o.throughput:9.0f}{o.ms(50):9.3f}"
              f"{o.ms(90):9.3f}{o.ms(99):9.3f}{o.ms(99.9):10.3f}{o.ms(100):9.2f}"
              f"{1e6 * o.client_cpu_seconds / max(1, o.ok):14.1f}"
              f"{1e6 * o.server_cpu_seconds[server] / max(1, o.ok):14.1f}"
              f"{100 * o.server_cpu_seconds['core'] / o.seconds:8.1f}"
              f"{o.foreign_cores:12.2f}{o.ms(50) / baseline.ms(50):9.2f}x"
              f"{o.throughput / baseline.throughput:9.2f}x")
    print("(client µs/op: the client processes' CPU per request, all of them together;")
    print(" server µs/op: the gateway's (echo's) CPU per request; core %: kcm-core's CPU")
    print(f" meanwhile, in % of a core ({100 * core_idle:.1f}% when idle: about that means the")
    print(" core did no work for these requests);")
    print(" other load: cores busy with anything else, above ~0.1 means that row was disturbed)")
    print()
    print(f"L4 targets (ARCHITECTURE §10): p50 ≤ {L4_TARGETS[50]} ms, p99 ≤ {L4_TARGETS[99]} ms,"
          f" p99.9 ≤ {L4_TARGETS[99.9]} ms, one client:")
    for name in ["L4 Encrypt", "L4 Decrypt", "L4 Get", "L4 Create"]:
        o = outcomes[name]
        print(f"  {name:<11}" + ", ".join(
            f"p{percent:g} {o.ms(percent):.3f} ms {verdict(o.ms(percent) <= limit)}"
            for percent, limit in L4_TARGETS.items()))
    for clients in (1, args.concurrent_clients):
        suffix = "" if clients == 1 else f" x{clients}"
        ratio = outcomes[f"L4 Encrypt{suffix}"].throughput / outcomes[f"echo{suffix}"].throughput
        print(f"  throughput, Encrypt / echo, {clients} client(s): {ratio:.2f} "
              f"(≥ {THROUGHPUT_TARGET:.2f}: {verdict(ratio >= THROUGHPUT_TARGET)})")
    print()
    print(f"{'forwarded':<16}{'path':<9}{'ok/sent':>11}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
          f"{'p99.9 ms':>10}{'p50 diff':>10}{'p99 diff':>10}")
    for name in ("Get Attributes", "Activate"):
        o = outcomes[name]
        for index, path in enumerate(("gateway", "core")):
            line = (f"{name if index == 0 else '':<16}{path:<9}"
                    f"{f'{o.histograms[index].get_total_count()}/{o.requests // 2}':>11}"
                    f"{o.ms(50, index):9.3f}{o.ms(90, index):9.3f}{o.ms(99, index):9.3f}"
                    f"{o.ms(99.9, index):10.3f}")
            if index == 0:
                line += (f"{o.ms(50, 0) - o.ms(50, 1):+10.3f}{o.ms(99, 0) - o.ms(99, 1):+10.3f}")
            print(line)
        overhead = o.ms(50, 0) - o.ms(50, 1)
        print(f"  {name}: the gateway adds {overhead:+.3f} ms at p50 "
              f"(≤ {FORWARD_OVERHEAD_TARGET_MS} ms: "
              f"{verdict(overhead <= FORWARD_OVERHEAD_TARGET_MS)}); "
              f"core CPU {1e3 * o.server_cpu_seconds['core'] / max(1, o.ok):.2f} ms/op, "
              f"gateway CPU {1e3 * o.server_cpu_seconds['gateway'] / max(1, o.ok // 2):.3f} ms "
              f"per forwarded request; other load {o.foreign_cores:.2f}")
    activate_p99 = max(outcomes["Activate"].ms(99, 0), outcomes["Activate"].ms(99, 1))
    print(f"  durable Activate p99 ≤ {DURABLE_P99_TARGET_MS} ms on SQLite: "
          f"{verdict(activate_p99 <= DURABLE_P99_TARGET_MS)} ({activate_p99:.2f} ms)")
    print()
    for o in outcomes.values():
        if o.failures:
            print(f"FAILURES {o.name} x{o.clients}: {len(o.failures)}, e.g. {o.failures[0]}")
    for problem in problems[:20]:
        print(f"VERIFY {problem}")
    log_size = gateway_process.log.stat().st_size
    print(f"gateway log: {log_size} bytes over the run")
    total = sum(len(o.failures) for o in outcomes.values())
    print(f"{total} failed requests, {len(problems)} failed read-backs")


if __name__ == "__main__":
    raise SystemExit(main())
