"""Issue 11 ("No tenant can hurt another"), defects 3 and 5, against real `twistd` processes:
2,000 connections that never finish the TLS handshake exhaust neither a kcm-core nor a
kcm-gateway started with ``ulimit -n`` 1024 and are closed at the handshake deadline, and
clients that send requests and never read the answers neither grow a kcm-gateway's or a
kcm-core's memory without bound nor outlive the write timeout — while a normal client keeps
working, its p99 latency measured against the same idle server in the same test.

Hostile connections come from other loopback addresses (127.0.0.2, ...) than the normal
client (127.0.0.1), the way hostile clients on a network come from their own addresses;
every connection goes to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kcm.conformance.client import KmipClient
from kcm.kmip.enums import ResultStatus
from kcm.testing.processes import running
from kcm.testing.requests import create_l4, create_managed, encrypt, get, request, response
from tests.e2e_support import CoreProcess, GatewayProcess, deploy, last_seq, wait_until

#: Asserts timings: run alone, after the parallel part of `make test`.
pytestmark = pytest.mark.serial

#: Connections the hostile clients open.
HOSTILE = 2000
#: Requests of the normal client in each measurement.
SAMPLES = 300
#: ... of the half-open floods: enough that their p99 (the 10th slowest) is not decided by
#: one scheduler stall on a shared 2-core machine, as the 3rd slowest of 300 was.
FLOOD_SAMPLES = 1000
#: The handshake deadline of the servers under test, in seconds.
HANDSHAKE = 3.0
#: How long unsent answers may stay above the limit, in seconds.
WRITE_TIMEOUT = 2.0
#: The bound asserted on the normal client's p99 under attack, as a multiple of its p99
#: against the idle server (see docs/benchmarks.md, "Hostile connections").
P99_FACTOR = 2.0
#: Absolute slack added to that bound: sub-millisecond p99s jitter by more than 2x on a
#: loaded 2-core machine without anything being wrong.
P99_SLACK = 0.005


def p99(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100)[98]


def p95(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100)[94]


#: One stall of a core's own (an fsync of its database), in seconds.
STALL = 0.015


def measure(make_client: Callable[[], KmipClient], wire: bytes,
            samples: int = SAMPLES) -> list[float]:
    """``samples`` requests of the normal client (a new connection every 50), each answered
    Success; the latency of each request, in seconds."""
    latencies = []
    client = None
    try:
        for i in range(samples):
            if i % 50 == 0:
                if client is not None:
                    client.close()
                client = make_client()
                client.connect()
            started = time.perf_counter()
            answer = response(client.send(wire))
            latencies.append(time.perf_counter() - started)
            assert {b.result_status for b in answer.batch_items} == {ResultStatus.SUCCESS}
    finally:
        if client is not None:
            client.close()
    return latencies


def half_open(port: int, count: int, sources: list[str]) -> list[socket.socket]:
    """``count`` TCP connections to 127.0.0.1:``port`` from ``sources`` in turn, which never
    send a byte (no TLS handshake); the connects are started, not awaited."""
    sockets = []
    for i in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((sources[i % len(sources)], 0))
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        sockets.append(sock)
    return sockets


_ESTABLISHED, _SYN_SENT = 1, 2


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed or aborted ``sock``, read from the kernel's TCP state
    (without reading: a never-reading client must stay one)."""
    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)[0]
    return state not in (_ESTABLISHED, _SYN_SENT)


def all_closed_by_server(sockets: list[socket.socket]) -> bool:
    return all(closed_by_server(sock) for sock in sockets)


def open_fds(process) -> int:
    return len(list(Path(f"/proc/{process.pid}/fd").iterdir()))


def rss(process) -> int:
    """Resident memory of ``process``, in bytes."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@contextlib.contextmanager
def closing_all(sockets: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


# Defect 3: connections that never finish the TLS handshake ---------------------------------

@pytest.fixture
def small_core(tmp_path: Path) -> Iterator[CoreProcess]:
    """A kcm-core with ``ulimit -n`` 1024 and the default caps, a short handshake deadline."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}",
                  handshake_timeout=HANDSHAKE)
    core.nofile = 1024
    core.start()
    try:
        yield core
    finally:
        core.stop()


def half_open_flood(server: CoreProcess | GatewayProcess, wire: bytes) -> None:
    """Flood ``server`` (started with ``ulimit -n`` 1024 and a HANDSHAKE deadline) with
    HOSTILE half-open connections while a normal client sends ``wire``: the server's
    descriptors stay bounded, it closes every one of them, and the client's p99 stays
    within P99_FACTOR of its p99 against the idle server."""
    name = type(server).__name__
    idle = measure(server.client, wire, FLOOD_SAMPLES)

    # 2,000 half-open connections from four addresses: more than the 1,024 descriptors the
    # server has; at most max_connections_per_address (100) of each address are held.
    sources = [f"127.0.0.{n}" for n in range(2, 6)]
    with closing_all(half_open(server.port, HOSTILE, sources)) as hostile:
        started = time.monotonic()
        time.sleep(0.5)  # let the listener take the flood in
        attacked = measure(server.client, wire, FLOOD_SAMPLES)
        assert open_fds(server.process) < 1024 - 100
        # The listen backlog (1,024) takes the flood in at once or after one SYN retry; the
        # server refuses every connection over the per-address cap as it accepts it, and
        # aborts the 400 it held (4 addresses x 100) at the handshake deadline: every one of
        # the 2,000 is closed by the server within seconds.
        wait_until(lambda: all_closed_by_server(hostile),
                   f"the {name} closing every half-open connection",
                   timeout=HANDSHAKE + 10)
        closed_after = time.monotonic() - started
        assert open_fds(server.process) < 1024 - 100
    assert server.process.poll() is None
    print(f"\nhalf-open ({name}): p99 idle {p99(idle) * 1e3:.2f} ms, with {HOSTILE} "
          f"half-open {p99(attacked) * 1e3:.2f} ms; all closed after {closed_after:.1f} s")
    assert p99(attacked) <= P99_FACTOR * p99(idle) + P99_SLACK
    log = server.log.read_text()
    assert "over limits.max_connections_per_address (100)" in log
    assert "without a TLS handshake within limits.handshake_timeout" in log


def test_half_open_connections_neither_exhaust_the_core_nor_slow_a_client(
        small_core: CoreProcess) -> None:
    with small_core.client() as client:
        [created] = response(client.send(request(create_managed()))).batch_items
    half_open_flood(small_core, request(get(created.response_payload.unique_identifier)))


@pytest.fixture
def small_gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    """A kcm-gateway with ``ulimit -n`` 1024 and the default caps, a short handshake
    deadline, linked to a core."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(tmp_path / "gateway", core)
    gateway.limits.update(handshake_timeout=HANDSHAKE)
    gateway.nofile = 1024
    with running(core, gateway):
        yield gateway


def test_half_open_connections_neither_exhaust_the_gateway_nor_slow_a_client(
        small_gateway: GatewayProcess) -> None:
    with small_gateway.client() as client:
        [created] = response(client.send(request(create_l4()))).batch_items
    token = created.response_payload.unique_identifier
    half_open_flood(small_gateway, request(encrypt(token, b"r" * 64)))


# Defect 5: clients that never read their answers ------------------------------------------

#: Each never-reading client's requests: Encrypts of this many bytes, whose answers are
#: about as long.
RECORD = 32 << 10


def never_reading(port: int, pki, count: int, sources: list[str], wire: bytes,
                  seconds: float) -> tuple[list[ssl.SSLSocket], int]:
    """``count`` TLS connections that send ``wire`` again and again and never read an
    answer, until the server has stopped reading from every one of them for a second, or
    for ``seconds`` at most; the connections, and the bytes they sent."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(pki.ca.cert))
    context.load_cert_chain(certfile=str(pki.app.cert), keyfile=str(pki.app.key))
    clients = []
    for i in range(count):
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
        raw.bind((sources[i % len(sources)], 0))
        raw.settimeout(10)
        raw.connect(("127.0.0.1", port))
        tls = context.wrap_socket(raw)
        tls.setblocking(False)
        clients.append(tls)
    pending = {tls: memoryview(wire) for tls in clients}
    selector = selectors.DefaultSelector()
    for tls in clients:
        selector.register(tls, selectors.EVENT_WRITE)
    total = 0
    deadline = time.monotonic() + seconds
    progress = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - progress < 1.0:
        for key, _ in selector.select(timeout=0.1):
            tls = key.fileobj
            try:
                sent = tls.send(pending[tls])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                continue
            except OSError:
                selector.unregister(tls)
                continue
            total += sent
            progress = time.monotonic()
            rest = pending[tls][sent:]
            pending[tls] = rest if len(rest) else memoryview(wire)
    selector.close()
    return clients, total


@pytest.fixture
def gateway_deployment(tmp_path: Path) -> Iterator[tuple[CoreProcess, GatewayProcess]]:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(tmp_path / "gateway", core)
    gateway.limits.update(write_timeout=WRITE_TIMEOUT, max_unsent_output=256 << 10)
    with running(core, gateway) as pair:
        yield pair


def test_clients_that_never_read_are_closed_and_their_answers_freed_at_the_gateway(
        gateway_deployment: tuple[CoreProcess, GatewayProcess]) -> None:
    _, gateway = gateway_deployment
    with gateway.client() as client:
        [token] = response(client.send(request(create_l4()))).batch_items
    token = token.response_payload.unique_identifier
    wire = request(encrypt(token, b"r" * 64))
    idle = measure(gateway.client, wire)
    hostile_wire = request(*[encrypt(token, b"x" * RECORD)] * 4)
    sources = [f"127.0.1.{n}" for n in range(1, 21)]  # 5 connections from each
    before = rss(gateway.process)
    filling: list[float] = []  # while the never-reading clients send as fast as they can
    held: list[float] = []  # while the gateway holds them, reading from them no more
    peaks, settled, sent = [], [], 0
    for _wave in range(WAVES):
        with ThreadPoolExecutor(1) as pool:
            normal = pool.submit(measure, gateway.client, wire)
            hostile, wave_sent = never_reading(gateway.port, gateway.pki, NEVER_READING,
                                               sources, hostile_wire, seconds=20.0)
            filling += normal.result()
        sent += wave_sent
        with closing_all(hostile):
            held_from = time.monotonic()
            held += measure(gateway.client, wire)
            held_for = time.monotonic() - held_from
            peaks.append(rss(gateway.process))
            wait_until(lambda hostile=hostile: all_closed_by_server(hostile),
                       "the gateway closing every never-reading connection",
                       timeout=WRITE_TIMEOUT + 15)
        time.sleep(0.5)
        settled.append(rss(gateway.process))
    print(f"\nnever-reading: {WAVES} waves of {NEVER_READING}, {sent >> 20} MiB sent; rss "
          f"before {before >> 20} MiB, at each wave's end {[p >> 20 for p in peaks]} MiB, "
          f"after each {[p >> 20 for p in settled]} MiB; p99 idle {p99(idle) * 1e3:.2f} ms, "
          f"while they send {p99(filling) * 1e3:.2f} ms, while held {p99(held) * 1e3:.2f} ms "
          f"(last measured in {held_for:.2f} s)")
    # Bounded: what a connection may hold is max_pending requests read and max_unsent_output
    # of answers (and one answer past it).
    per_connection = 32 * len(hostile_wire) + 2 * (256 << 10)
    assert max(peaks) - before <= NEVER_READING * per_connection
    # Released: a wave leaves nothing behind. The allocator keeps its working set, so RSS is
    # a high-water mark that one unlucky wave may raise once (the wave that happened to hold
    # the most at once); a leak raises it every wave. So of the last two waves, one ends no
    # higher than the high-water mark of the ones before; the old code kept every
    # never-reading connection, and its answers, for good.
    assert min(settled[-2:]) <= max(settled[:-2]) + (16 << 20)
    # Clients the gateway no longer reads from cost the others nothing.
    assert p99(held) <= P99_FACTOR * p99(idle) + P99_SLACK
    # While 100 connections push requests at full speed, the normal one gets its share of
    # two busy cores (the test's own process included): every request succeeds, the bound
    # is looser (docs/benchmarks.md, "Hostile connections").
    assert p99(filling) <= FILLING_P99
    assert "were not read within" in gateway.log.read_text()


#: The normal client's p99 while never-reading clients send, in seconds.
FILLING_P99 = 1.0
#: Never-reading connections in each wave, and waves.
NEVER_READING = 100
WAVES = 5


#: The core's limits.max_pending in the never-reading test: what one connection can make it
#: hold is about that many requests, so a smaller value bounds the test's work and memory.
CORE_PENDING = 8
#: Never-reading connections against the core, and the size of each of their requests (an
#: Encrypt of that many bytes, whose answer is as long). Fewer, larger ones than at the
#: gateway: each request the core answers is also an audit record in its database.
CORE_NEVER_READING = 16
CORE_RECORD = 256 << 10
#: The normal client's requests in each measurement against the core (each is an audit
#: record too).
CORE_SAMPLES = 150


@pytest.fixture
def core_with_write_timeout(tmp_path: Path) -> Iterator[CoreProcess]:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}",
                  write_timeout=WRITE_TIMEOUT, max_unsent_output=256 << 10,
                  max_pending=CORE_PENDING)
    core.start()
    try:
        yield core
    finally:
        core.stop()


def quiescent(core: CoreProcess, still: float = 0.5) -> Callable[[], bool]:
    """A condition that holds once ``core`` has written no audit record for ``still``
    seconds (it answers nothing)."""
    seen = {"seq": -1, "since": time.monotonic()}

    def condition() -> bool:
        seq = last_seq(core)
        if seq != seen["seq"]:
            seen.update(seq=seq, since=time.monotonic())
        return time.monotonic() - seen["since"] >= still

    return condition


def test_clients_that_never_read_are_closed_and_their_answers_freed_at_the_core(
        core_with_write_timeout: CoreProcess) -> None:
    core = core_with_write_timeout
    with core.client() as client:
        [token] = response(client.send(request(create_l4()))).batch_items
    token = token.response_payload.unique_identifier
    wire = request(encrypt(token, b"r" * 64))
    idle = measure(core.client, wire, CORE_SAMPLES)
    hostile_wire = request(encrypt(token, b"x" * CORE_RECORD))
    sources = [f"127.0.2.{n}" for n in range(1, 5)]  # 4 connections from each
    before, fds_before = rss(core.process), open_fds(core.process)
    with ThreadPoolExecutor(1) as pool:
        normal = pool.submit(measure, core.client, wire, CORE_SAMPLES)
        hostile, sent = never_reading(core.port, core.pki, CORE_NEVER_READING, sources,
                                      hostile_wire, seconds=10.0)
        filling = normal.result()
    with closing_all(hostile):
        # The core answers what it read until their answers fill its buffers, then holds
        # them: measure from then on (its audit log stops growing).
        wait_until(quiescent(core), "the core to stop answering the never-reading clients")
        fds_held = open_fds(core.process)
        held_from = time.monotonic()
        held = measure(core.client, wire, CORE_SAMPLES)
        peak = rss(core.process)
        wait_until(lambda: all_closed_by_server(hostile),
                   "the core closing every never-reading connection",
                   timeout=WRITE_TIMEOUT + 15)
        closed_after = time.monotonic() - held_from
    fds_after = open_fds(core.process)
    # The idle server, before and after: the core is a little slower once it has answered
    # the attack (a larger database, a grown heap) whether or not anything is held.
    idle += measure(core.client, wire, CORE_SAMPLES)
    print(f"\nnever-reading (core): {CORE_NEVER_READING} connections, {sent >> 20} MiB sent; "
          f"rss before {before >> 20} MiB, held {peak >> 20} MiB; descriptors before "
          f"{fds_before}, held {fds_held}, after {fds_after}; all closed {closed_after:.1f} s "
          f"after they stopped; p99 idle (before and after) {p99(idle) * 1e3:.2f} ms, while "
          f"they send {p99(filling) * 1e3:.2f} ms, while held {p99(held) * 1e3:.2f} ms")
    # One descriptor per connection while held, each closed by the core at the write
    # timeout (the client never closed them: closed_by_server reads the kernel's state).
    assert fds_held <= fds_before + CORE_NEVER_READING + 4 and fds_after <= fds_before + 2
    # Bounded: a connection holds max_pending requests read and one begun, the answer being
    # written and max_unsent_output of answers; plus the copies of the requests the core's
    # database threads are working on.
    per_connection = (CORE_PENDING + 2) * len(hostile_wire) + (256 << 10)
    assert peak - before <= CORE_NEVER_READING * per_connection + (32 << 20)
    # Clients the core no longer reads from cost the others nothing; while they send, the
    # normal one gets its share (the bound of the gateway's test). The held window is as
    # long as the write timeout, so it takes 150 requests: their p99 is the second slowest,
    # which one stall of the core's own (a WAL checkpoint's fsync, 10-15 ms) decides, held
    # connections or not. So the bound is on the p95 (the 8th slowest), and the p99 may
    # take one such stall more.
    assert p95(held) <= P99_FACTOR * p95(idle) + P99_SLACK
    assert p99(held) <= P99_FACTOR * p99(idle) + P99_SLACK + STALL
    assert p99(filling) <= FILLING_P99
    assert "were not read within" in core.log.read_text()
