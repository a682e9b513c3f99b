"""The connection guard every KCM listener has (issue 11, defect 3): caps on connections in
total and per address, the handshake deadline, the send-buffer size, and a log that a flood
does not flood — over StringTransport and a Clock, with real TLS options."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from kcm.connection_guard import LOG_INTERVAL, ConnectionGuard
from kcm.kmip_protocol import ConnectionLimits
from kcm.pki import init_pki
from kcm.tls import server_tls_options


class App(Protocol):
    identified = False


@pytest.fixture(scope="module")
def tls_options(tmp_path_factory: pytest.TempPathFactory):
    pki = init_pki(tmp_path_factory.mktemp("pki"))
    return server_tls_options(pki.core.cert, pki.core.key, pki.ca.cert)


def guarded(tls_options, **limits):
    clock = Clock()
    guard = ConnectionGuard(ConnectionLimits(**limits), clock)
    factory = guard.tls_factory(tls_options, Factory.forProtocol(App))
    return guard, factory, clock


def accept(factory, host="10.0.0.1", port=40000):
    """What a listening port does: build, then connect (None: the socket is closed)."""
    address = IPv4Address("TCP", host, port)
    protocol = factory.buildProtocol(address)
    if protocol is None:
        return None, None
    transport = StringTransport(peerAddress=address)
    transport.bufferSize = 65536
    protocol.makeConnection(transport)
    return protocol, transport


@pytest.fixture
def warnings():
    seen: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "kcm.connection_guard":
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def test_connections_over_the_total_cap_are_closed_before_tls(tls_options) -> None:
    guard, factory, _ = guarded(tls_options, max_connections=3)
    opened = [accept(factory, host=f"10.0.0.{i}") for i in range(5)]
    assert [p is not None for p, _ in opened] == [True, True, True, False, False]
    assert guard.connections == 3
    opened[0][0].connectionLost(None)  # one leaves: one more may come
    assert guard.connections == 2
    assert accept(factory, host="10.0.0.9")[0] is not None
    assert accept(factory, host="10.0.0.10")[0] is None


def test_connections_over_the_per_address_cap_are_closed(tls_options) -> None:
    guard, factory, _ = guarded(tls_options, max_connections_per_address=2)
    assert [accept(factory, port=40000 + i)[0] is not None for i in range(4)] == [
        True, True, False, False]
    assert accept(factory, host="10.0.0.2")[0] is not None  # another client is not held up
    assert dict(guard.by_address) == {"10.0.0.1": 2, "10.0.0.2": 1}


def test_a_connection_without_a_handshake_is_aborted_at_the_deadline(tls_options) -> None:
    guard, factory, clock = guarded(tls_options, handshake_timeout=10)
    protocol, transport = accept(factory)
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnected  # aborted, not a polite close that could wait
    protocol.connectionLost(None)
    assert guard.connections == 0 and not guard.by_address and not clock.getDelayedCalls()


def test_an_identified_connection_outlives_the_deadline(tls_options) -> None:
    guard, factory, clock = guarded(tls_options, handshake_timeout=10)
    protocol, transport = accept(factory)
    protocol.wrappedProtocol.identified = True  # TLS named the client
    clock.advance(60)
    assert not transport.disconnecting and guard.connections == 1


def test_a_connection_that_left_leaves_no_timer(tls_options) -> None:
    guard, factory, clock = guarded(tls_options)
    protocol, _ = accept(factory)
    protocol.connectionLost(None)
    assert not clock.getDelayedCalls() and guard.connections == 0


def test_the_send_buffer_is_max_unsent_output(tls_options) -> None:
    _, factory, _ = guarded(tls_options, max_unsent_output=12345)
    _, transport = accept(factory)
    assert transport.bufferSize == 12345


def test_the_link_listener_keeps_twisteds_send_buffer(tls_options) -> None:
    guard = ConnectionGuard(ConnectionLimits(max_unsent_output=12345), Clock())
    factory = guard.tls_factory(tls_options, Factory.forProtocol(App), bound_output=False)
    _, transport = accept(factory)
    assert transport.bufferSize == 65536 and guard.connections == 1


def test_a_cap_above_the_descriptor_limit_is_warned_about_once(monkeypatch, warnings) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda kind: (1024, 4096))
    ConnectionGuard(ConnectionLimits(max_connections=924), Clock()).check_descriptors()
    assert warnings == []
    guard = ConnectionGuard(ConnectionLimits(max_connections=1000), Clock())
    guard.check_descriptors()
    guard.check_descriptors()  # the core's second listener
    assert [event["soft"] for event in warnings] == [1024]


def test_a_flood_of_refusals_is_logged_once_per_interval(tls_options, warnings) -> None:
    _, factory, clock = guarded(tls_options, max_connections_per_address=1)
    accept(factory)
    for i in range(1000):
        accept(factory, port=41000 + i)
        clock.advance(0.001)
    # One line at the first refusal, one at the end of its interval for the rest.
    clock.advance(LOG_INTERVAL)
    refusals = [event for event in warnings if "refused" in event["log_format"]]
    assert [event["count"] for event in refusals] == [1, 999]
    assert "max_connections_per_address" in refusals[0]["log_format"]
    assert refusals[1]["host"] == "10.0.0.1"


def test_expired_handshakes_are_logged_in_summary(tls_options, warnings) -> None:
    _, factory, clock = guarded(tls_options, handshake_timeout=1)
    for i in range(50):
        accept(factory, host=f"10.0.1.{i}")
    clock.advance(1)
    clock.advance(LOG_INTERVAL)
    assert [event["count"] for event in warnings] == [1, 49]
