"""The metrics and health listener (kcm.metrics) is bounded: connections at once, time to
send a request, size of its head; it answers GET and HEAD without a body only, refusing
anything else before reading a body. Driven over StringTransport with task.Clock. And the
merged exposition of a gateway with workers (kcm.gateway.worker_metrics) has one HELP and
one TYPE per family, the supervisor's process metrics in the workers' families."""

from __future__ import annotations

from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client import Counter as PromCounter
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher

from kcm.gateway.worker_metrics import WorkerMetrics, merged_exposition
from kcm.metrics import Readiness
from kcm.metrics_http import MAX_CONNECTIONS, MAX_HEAD, REQUEST_TIMEOUT, metrics_site

ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)


def site(clock: Clock, **kwargs: Any) -> Any:
    registry = CollectorRegistry()
    PromCounter("kcm_test", "a counter", registry=registry).inc()
    made = metrics_site(registry, lambda: Readiness(True), reactor=clock, **kwargs)
    made.startFactory()
    return made


def connect(made: Any) -> tuple[Any, StringTransport]:
    channel = made.buildProtocol(ADDRESS)
    assert channel is not None
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def close(channel: Any, transport: StringTransport) -> None:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    channel.connectionLost(Failure(ConnectionDone()))


def test_get_and_head_are_answered_as_before() -> None:
    clock = Clock()
    made = site(clock)
    channel, transport = connect(made)
    channel.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 OK")
    assert b"kcm_test_total 1.0" in transport.value()
    assert b"twisted" not in transport.value().lower()  # no Server header naming a version
    close(channel, transport)
    channel, transport = connect(made)
    channel.dataReceived(b"HEAD /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 OK")
    assert not transport.value().endswith(b"}")  # no body for HEAD
    close(channel, transport)


def test_a_request_with_a_body_is_refused_before_the_body_is_read() -> None:
    """What a 300 MB POST did: its body was read whole (to a temporary file) before the
    GET-only resource refused it."""
    clock = Clock()
    made = site(clock)
    for head in (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 314572800\r\n\r\n",
                 b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
                 b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: x\r\n\r\n"):
        channel, transport = connect(made)
        channel.dataReceived(head)
        status = transport.value().split(b"\r\n")[0]
        assert status in (b"HTTP/1.1 405 Method Not Allowed", b"HTTP/1.1 413 Content Too Large")
        assert transport.disconnecting
        channel.dataReceived(b"\0" * 65536)  # the body that follows is not read
        assert all(request.content is None for request in channel.requests)
        assert transport.value().count(b"HTTP/1.1") == 1  # and nothing else is answered
        close(channel, transport)


def test_a_method_other_than_get_or_head_is_refused() -> None:
    made = site(Clock())
    for method in (b"POST", b"DELETE", b"PUT", b"OPTIONS"):
        channel, transport = connect(made)
        channel.dataReceived(method + b" /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert transport.value() == (b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\n"
                                     b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        assert transport.disconnecting
        close(channel, transport)


def test_a_head_over_the_bound_is_refused() -> None:
    made = site(Clock())
    channel, transport = connect(made)
    channel.dataReceived(b"GET /metrics HTTP/1.1\r\n")
    for _ in range(MAX_HEAD // 1000 + 1):
        channel.dataReceived(b"X-Filler: " + b"a" * 990 + b"\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400 Bad Request")
    assert transport.disconnecting
    close(channel, transport)


def test_connections_past_the_cap_are_closed_as_they_come() -> None:
    made = site(Clock(), max_connections=MAX_CONNECTIONS)
    held = [connect(made) for _ in range(MAX_CONNECTIONS)]
    assert made.open_connections == MAX_CONNECTIONS
    assert made.buildProtocol(ADDRESS) is None  # (Twisted closes the socket at once)
    close(*held.pop())
    extra = connect(made)  # room again
    for channel, transport in [*held, extra]:
        close(channel, transport)
    assert made.open_connections == 0


def test_a_request_must_arrive_whole_within_the_timeout_however_slowly_it_trickles() -> None:
    """Twisted's idle timeout (60 s) was reset by each byte: one byte every 50 s held a
    connection forever."""
    clock = Clock()
    made = site(clock)
    channel, transport = connect(made)
    for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n":
        clock.advance(1.0)  # a byte a second, never idle long
        if transport.disconnecting:
            break
        channel.dataReceived(bytes([byte]))
    assert transport.disconnecting and transport.value() == b""
    assert clock.seconds() == REQUEST_TIMEOUT
    clock.advance(60)  # and aborted if the peer never closes
    assert transport.disconnecting
    close(channel, transport)
    assert clock.getDelayedCalls() == [] or all(
        "updateLogDateTime" in repr(call) for call in clock.getDelayedCalls())


def test_one_request_a_connection_and_the_ones_pipelined_behind_it_are_not_answered() -> None:
    """What 2,000 GETs in one write did: all answered back to back in one reactor turn
    (10-20 KB each, unread), stalling the process's KMIP service for 15-18 s."""
    clock = Clock()
    made = site(clock)
    for path in (b"/metrics", b"/healthz"):
        channel, transport = connect(made)
        channel.dataReceived(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n" * 2000)
        assert transport.value().count(b"HTTP/1.1 ") == 1
        assert transport.value().startswith(b"HTTP/1.1 200 OK")
        assert b"\r\nConnection: close\r\n" in transport.value()
        assert transport.disconnecting
        channel.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # nor later ones
        assert transport.value().count(b"HTTP/1.1 ") == 1
        close(channel, transport)


def test_a_connection_that_does_not_read_its_answer_is_aborted_after_the_timeout() -> None:
    clock = Clock()
    made = site(clock)
    channel, transport = connect(made)
    clock.advance(REQUEST_TIMEOUT - 1)
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 OK") and transport.disconnecting
    clock.advance(REQUEST_TIMEOUT - 0.1)  # the answer's own deadline, from its sending
    assert not transport.disconnected
    clock.advance(0.2)
    assert transport.disconnected  # aborted: the peer never read it
    close(channel, transport)
    assert made.open_connections == 0


# The merged exposition ------------------------------------------------------------------
def worker_exposition() -> str:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PromCounter("kcm_gateway_requests", "requests", registry=registry).inc()
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def test_every_family_has_one_help_and_one_type_with_the_supervisors_process_metrics_in_it(
        ) -> None:
    own_registry = CollectorRegistry()
    ProcessCollector(registry=own_registry)
    own = WorkerMetrics(Clock(), running=lambda: [1, 2])
    text = merged_exposition({"1": worker_exposition(), "2": worker_exposition()},
                             own._own()).decode()
    helps = Counter(line.split()[2] for line in text.splitlines() if line.startswith("# HELP"))
    types = Counter(line.split()[2] for line in text.splitlines() if line.startswith("# TYPE"))
    assert helps and set(helps.values()) == {1} and set(types.values()) == {1}, (helps, types)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert len(families) == len(types)
    if "process_cpu_seconds" in families:  # (ProcessCollector has it on Linux)
        workers = {sample.labels["worker"]
                   for sample in families["process_cpu_seconds"].samples}
        assert workers == {"1", "2", "supervisor"}
    assert "kcm_gateway_worker_restarts" in families


def test_a_supervisor_family_of_another_type_than_the_workers_is_left_out() -> None:
    from prometheus_client.core import GaugeMetricFamily

    clash = GaugeMetricFamily("kcm_gateway_requests", "not a counter",
                              labels=["worker"])
    clash.add_metric(["supervisor"], 1.0)
    text = merged_exposition({"1": worker_exposition()}, [clash]).decode()
    [family] = [f for f in text_string_to_metric_families(text)
                if f.name == "kcm_gateway_requests"]
    assert family.type == "counter"
    assert {s.labels["worker"] for s in family.samples} == {"1"}


def test_a_tls_client_is_closed_at_its_first_byte_and_an_http_one_is_not() -> None:
    """A TLS hello (0x16) as the first byte: closed at once and logged, an IPv6 peer in
    brackets; a plain request sent one byte at a time, or with 0x16 later, is answered."""
    clock = Clock()
    made = site(clock)
    lines: list[dict] = []
    globalLogPublisher.addObserver(lines.append)
    try:
        channel = made.buildProtocol(ADDRESS)
        transport = StringTransport(peerAddress=IPv6Address("TCP", "2001:db8::7", 40001))
        channel.makeConnection(transport)
        channel.dataReceived(b"\x16\x03\x01\x00\xc8")
        assert transport.disconnecting and transport.value() == b""
        close(channel, transport)
    finally:
        globalLogPublisher.removeObserver(lines.append)
    [line] = [formatEvent(e) for e in lines if "TLS client" in e.get("log_format", "")]
    assert line.startswith("metrics listener: a TLS client from [2001:db8::7]:40001 ("), line
    channel, transport = connect(made)
    for byte in b"GET /readyz HTTP/1.1\r\nX-A: \x16\r\nHost: x\r\n\r\n":
        channel.dataReceived(bytes([byte]))
    assert transport.value().startswith(b"HTTP/1.1 200 OK")
    close(channel, transport)
