"""The shared KMIP-over-TLS server protocol, driven through StringTransport and a Clock."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from kcm.identity import Principal, Role
from kcm.kmip_protocol import (
    IDENTITY_REFUSED,
    RESULT_REASON_GENERAL_FAILURE,
    RESULT_REASON_INVALID_MESSAGE,
    RESULT_REASON_PERMISSION_DENIED,
    ConnectionInfo,
    ConnectionLimits,
    KmipServerFactory,
)
from kcm.ttlv import Item, ItemType, encode
from kcm.ttlv.types import structure

#: A principal of no tenant (not counted against ``max_connections_per_tenant``).
PRINCIPAL = Principal(Role.OPERATOR, "kcm.test", name="ops",
                      uri="spiffe://kcm.test/operator/ops")


def message(n: int) -> bytes:
    return encode(structure(0x420078, Item(0x420020, ItemType.INTEGER, n)))


class EchoHandler:
    """Answers each request with itself, synchronously or later when told."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, ConnectionInfo]] = []
        self.deferreds: list[Deferred[bytes]] = []
        self.defer = False
        self.explode = False

    def handle_request(self, wire: bytes, connection: ConnectionInfo):
        self.seen.append((wire, connection))
        if self.explode:
            raise RuntimeError("boom")
        if self.defer:
            d: Deferred[bytes] = Deferred()
            self.deferreds.append(d)
            return d
        return wire

    def failure_response(self, reason: int, message: str) -> bytes:
        return f"FAIL {reason} {message}".encode()


def connect(handler=None, limits=None, principal=PRINCIPAL):
    handler = handler or EchoHandler()
    clock = Clock()
    factory = KmipServerFactory(handler, limits or ConnectionLimits(), lambda t: principal, clock)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.handshakeCompleted()
    return protocol, transport, handler, clock


def test_requests_are_answered_in_order_with_the_connection_identity() -> None:
    protocol, transport, handler, _ = connect()
    wire = message(1) + message(2)
    for i in range(0, len(wire), 5):
        protocol.dataReceived(wire[i:i + 5])
    assert transport.value() == wire
    assert handler.seen[0][1].principal is PRINCIPAL
    assert handler.seen[0][1].peer.startswith("192.168.1.1:")


def test_deferred_answers_keep_request_order() -> None:
    handler = EchoHandler()
    handler.defer = True
    protocol, transport, handler, _ = connect(handler)
    protocol.dataReceived(message(1) + message(2))
    assert len(handler.deferreds) == 1  # the second waits for the first
    handler.deferreds[0].callback(b"A")
    assert len(handler.deferreds) == 2
    handler.deferreds[1].callback(b"B")
    assert transport.value() == b"AB"


def test_no_identity_no_service_but_an_answer_that_says_why() -> None:
    protocol, transport, handler, _ = connect(principal=None)
    wire = message(1)
    protocol.dataReceived(wire[:5])
    assert transport.value() == b"" and not transport.disconnecting
    protocol.dataReceived(wire[5:] + message(2))
    assert transport.value() == (
        f"FAIL {RESULT_REASON_PERMISSION_DENIED} {IDENTITY_REFUSED}".encode())
    assert handler.seen == [] and transport.disconnecting
    assert IDENTITY_REFUSED.isascii() and len(IDENTITY_REFUSED) <= 240


def test_no_identity_and_no_kmip_closes_at_once() -> None:
    protocol, transport, handler, _ = connect(principal=None)
    protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
    assert transport.value() == b"" and handler.seen == []
    assert transport.disconnecting or transport.disconnected


def test_data_before_the_handshake_closes_at_once() -> None:
    handler = EchoHandler()
    factory = KmipServerFactory(handler, ConnectionLimits(), lambda t: PRINCIPAL, Clock())
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(message(1))
    assert transport.value() == b"" and handler.seen == []
    assert transport.disconnecting or transport.disconnected


def test_oversized_request_refused_from_its_header() -> None:
    protocol, transport, handler, _ = connect(limits=ConnectionLimits(max_message_size=64))
    big = encode(structure(0x420078, Item(0x420020, ItemType.BYTE_STRING, bytes(100))))
    protocol.dataReceived(big[:8])
    assert transport.value().startswith(f"FAIL {RESULT_REASON_INVALID_MESSAGE}".encode())
    assert transport.disconnecting and handler.seen == []


def test_unreadable_header_closes_the_connection() -> None:
    protocol, transport, handler, _ = connect()
    protocol.dataReceived(bytes.fromhex("4200780200000004"))
    assert transport.value() == b"" and transport.disconnected


#: A header declaring a message of 4 MiB (over the default maximum), and one that is no
#: TTLV header at all.
OVERSIZED_HEADER = bytes.fromhex("4200780100400000")
UNREADABLE_HEADER = bytes(8)


def test_requests_before_an_oversized_header_are_answered_then_it_is_refused() -> None:
    protocol, transport, handler, _ = connect()
    protocol.dataReceived(message(1) + message(2) + OVERSIZED_HEADER)
    refusal = transport.value()[len(message(1) + message(2)):]
    assert transport.value().startswith(message(1) + message(2))
    assert refusal.startswith(f"FAIL {RESULT_REASON_INVALID_MESSAGE} request too large".encode())
    assert [wire for wire, _ in handler.seen] == [message(1), message(2)]
    assert transport.disconnecting and not transport.disconnected  # the answers are sent


def test_requests_before_an_unreadable_header_are_answered_then_it_closes() -> None:
    protocol, transport, handler, _ = connect()
    protocol.dataReceived(message(1) + UNREADABLE_HEADER)
    assert transport.value() == message(1)
    assert transport.disconnecting and not transport.disconnected
    protocol.dataReceived(message(2))  # nothing after the unreadable header is read
    assert [wire for wire, _ in handler.seen] == [message(1)]


def test_the_refusal_waits_for_answers_given_later() -> None:
    for bad, last in ((OVERSIZED_HEADER, f"FAIL {RESULT_REASON_INVALID_MESSAGE}".encode()),
                      (UNREADABLE_HEADER, b"")):
        handler = EchoHandler()
        handler.defer = True
        protocol, transport, handler, clock = connect(handler)
        protocol.dataReceived(message(1))
        protocol.dataReceived(message(2) + bad)  # a read later, the first still unanswered
        assert transport.value() == b"" and not transport.disconnecting
        clock.advance(60)  # (the message timer does not run: no message is begun)
        assert not transport.disconnecting
        handler.deferreds[0].callback(b"A")
        assert transport.value() == b"A" and not transport.disconnecting
        handler.deferreds[1].callback(b"B")
        assert transport.value().startswith(b"AB" + last) and transport.disconnecting
        assert len(handler.seen) == 2


def test_the_refusal_waits_for_unsent_answers_to_drain() -> None:
    protocol, transport, handler, _ = connect()
    protocol.pause("output")  # as the transport does when its buffer is over the limit
    protocol.dataReceived(message(1) + OVERSIZED_HEADER)
    assert transport.value() == b"" and not transport.disconnecting
    protocol._output_drained()
    assert transport.value().startswith(message(1) + b"FAIL")
    assert transport.disconnecting


def test_handler_bug_is_a_general_failure_and_the_connection_lives() -> None:
    handler = EchoHandler()
    handler.explode = True
    protocol, transport, handler, _ = connect(handler)
    protocol.dataReceived(message(1))
    assert transport.value().startswith(f"FAIL {RESULT_REASON_GENERAL_FAILURE}".encode())
    handler.explode = False
    transport.clear()
    protocol.dataReceived(message(2))
    assert transport.value() == message(2)


def test_idle_and_slow_clients_are_closed() -> None:
    protocol, transport, _, clock = connect(
        limits=ConnectionLimits(idle_timeout=10, message_timeout=3))
    protocol.dataReceived(message(1)[:4])
    clock.advance(2)
    protocol.dataReceived(message(1)[4:6])  # still trickling
    clock.advance(1.5)
    assert transport.disconnected  # aborted: begun 3.5 s ago, not finished

    protocol, transport, _, clock = connect(limits=ConnectionLimits(idle_timeout=10))
    protocol.dataReceived(message(1))
    clock.advance(9)
    assert not transport.disconnecting
    clock.advance(1.5)
    assert transport.disconnecting


def test_a_message_begun_is_timed_only_while_the_server_reads() -> None:
    handler = EchoHandler()
    handler.defer = True
    protocol, transport, handler, clock = connect(
        handler, ConnectionLimits(max_pending=4, message_timeout=3))
    # Four requests pause reading; the fifth, begun, cannot be finished while we do not read.
    protocol.dataReceived(b"".join(message(i) for i in range(4)) + message(4)[:6])
    assert transport.producerState == "paused"
    clock.advance(60)  # a slow request, not a slow client
    assert not transport.disconnecting
    for i in range(3):
        handler.deferreds[i].callback(b"x")
    assert transport.producerState == "producing"
    clock.advance(2)
    protocol.dataReceived(message(4)[6:])  # finished within 3 s of reading again
    assert not transport.disconnecting and len(handler.seen) == 4
    protocol.dataReceived(message(5)[:6])
    clock.advance(3.5)
    assert transport.disconnected  # a client that stops mid-message while we read


def test_backpressure_pauses_reading_until_answers_drain() -> None:
    handler = EchoHandler()
    handler.defer = True
    protocol, transport, handler, _ = connect(handler, ConnectionLimits(max_pending=4))
    protocol.dataReceived(b"".join(message(i) for i in range(6)))
    assert transport.producerState == "paused"
    for i in range(6):
        handler.deferreds[i].callback(b"x")
    assert transport.producerState == "producing"
    assert transport.value() == b"x" * 6


def test_reading_resumes_only_when_no_reason_to_pause_holds() -> None:
    protocol, transport, _, _ = connect()
    protocol.pause("a")
    protocol.pause("b")
    protocol.pause("a")  # idempotent per reason
    assert transport.producerState == "paused" and protocol.paused_by == {"a", "b"}
    protocol.resume("a")
    assert transport.producerState == "paused"
    protocol.resume("b")
    protocol.resume("b")
    assert transport.producerState == "producing" and protocol.paused_by == frozenset()


class CancellableHandler(EchoHandler):
    """An :class:`EchoHandler` told which connections were lost with a request in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.defer = True
        self.lost: list[ConnectionInfo] = []

    def connection_lost(self, connection: ConnectionInfo) -> None:
        self.lost.append(connection)


def test_the_idle_timeout_does_not_close_a_connection_waiting_for_its_answer() -> None:
    """Issue 11, defect 10: a request still being answered is not idleness."""
    handler = CancellableHandler()
    protocol, transport, handler, clock = connect(handler, ConnectionLimits(idle_timeout=10))
    protocol.dataReceived(message(1))
    clock.advance(25)  # the request runs for longer than the idle timeout
    assert not transport.disconnecting and handler.lost == []
    handler.deferreds[0].callback(b"A")
    assert transport.value() == b"A"
    clock.advance(9)  # idle counts from the answer
    assert not transport.disconnecting
    clock.advance(1.5)
    assert transport.disconnecting


def test_a_request_pipelined_after_the_idle_timeout_passed_while_busy_is_taken() -> None:
    """The idle timer fired while a request was being answered (and did nothing): a request
    the client pipelines after that is queued and answered in turn, and idleness counts
    again from the last answer (resetting the spent timer used to raise AlreadyCalled)."""
    handler = CancellableHandler()
    protocol, transport, handler, clock = connect(handler, ConnectionLimits(idle_timeout=10))
    protocol.dataReceived(message(1))
    clock.advance(25)
    protocol.dataReceived(message(2))  # while the first is still being answered
    assert len(handler.seen) == 1 and not transport.disconnecting
    handler.deferreds[0].callback(b"A")
    handler.deferreds[1].callback(b"B")
    assert transport.value() == b"AB"
    clock.advance(9)
    assert not transport.disconnecting
    clock.advance(1.5)
    assert transport.disconnecting


def test_the_handler_is_told_when_a_connection_with_a_request_in_flight_is_lost() -> None:
    handler = CancellableHandler()
    protocol, transport, handler, _ = connect(handler)
    protocol.dataReceived(message(1) + message(2))
    protocol.connectionLost(Failure(ConnectionDone()))
    assert handler.lost == [handler.seen[0][1]]  # the second request was never handed over
    handler.deferreds[0].callback(b"late")  # its answer, when it comes, is dropped
    assert transport.value() == b"" and len(handler.seen) == 1


def test_a_lost_connection_forgets_the_message_it_had_begun() -> None:
    protocol, _, _, _ = connect()
    protocol.dataReceived(message(1)[:12])
    assert protocol._framer.buffered == 12
    protocol.connectionLost(Failure(ConnectionDone()))
    assert protocol._framer.buffered == 0


def test_a_connection_lost_between_requests_tells_nobody() -> None:
    handler = CancellableHandler()
    protocol, _, handler, _ = connect(handler)
    protocol.dataReceived(message(1))
    handler.deferreds[0].callback(b"A")
    protocol.connectionLost(Failure(ConnectionDone()))
    assert handler.lost == []
    # A handler without connection_lost is simply not told.
    protocol, _, echo, _ = connect()
    echo.defer = True
    protocol.dataReceived(message(1))
    protocol.connectionLost(Failure(ConnectionDone()))


# Unsent output (issue 11, defect 5) ---------------------------------------------------------

def test_answers_piling_up_unsent_stop_the_next_requests_and_reading() -> None:
    protocol, transport, handler, clock = connect()
    assert transport.producer is not None and transport.streaming  # told when it is full
    transport.producer.pauseProducing()  # the transport holds more than max_unsent_output
    assert transport.producerState == "paused"  # no more bytes read from this client
    protocol.dataReceived(message(1) + message(2))  # already on their way when it filled
    assert handler.seen == []  # read, but not handled while answers wait unsent
    transport.producer.resumeProducing()  # the client took its answers
    assert transport.producerState == "producing"
    assert transport.value() == message(1) + message(2)
    clock.advance(3600)  # the write timer was cancelled; only the idle timeout is left
    assert not transport.disconnected


def test_a_client_that_never_reads_is_aborted_after_the_write_timeout() -> None:
    protocol, transport, _, clock = connect(limits=ConnectionLimits(write_timeout=30))
    protocol.dataReceived(message(1))
    transport.producer.pauseProducing()
    clock.advance(29)
    assert not transport.disconnecting
    transport.producer.pauseProducing()  # still full: the timer does not start again
    clock.advance(1.5)
    assert transport.disconnected  # aborted: a flush would never end


def test_a_client_that_reads_slowly_but_drains_is_kept() -> None:
    protocol, transport, _, clock = connect(limits=ConnectionLimits(write_timeout=30))
    for _ in range(5):
        transport.producer.pauseProducing()
        clock.advance(20)
        transport.producer.resumeProducing()
    assert not transport.disconnecting


def test_closing_a_connection_unregisters_its_producer_so_tls_can_close() -> None:
    # A TLS transport with a producer registered does not close until it is unregistered.
    protocol, transport, _, clock = connect(limits=ConnectionLimits(idle_timeout=10))
    clock.advance(11)
    assert transport.disconnecting and transport.producer is None


def test_the_new_limits_are_checked() -> None:
    import pytest

    for name, value in (("handshake_timeout", 0), ("write_timeout", -1),
                        ("max_connections", 0), ("max_connections_per_address", 1.5),
                        ("max_unsent_output", True)):
        with pytest.raises(ValueError, match=f"limits.{name}"):
            ConnectionLimits(**{name: value})
    limits = ConnectionLimits()
    assert (limits.handshake_timeout, limits.max_connections, limits.max_connections_per_address,
            limits.max_unsent_output, limits.write_timeout) == (10.0, 900, 100, 4 << 20, 30.0)


@pytest.mark.parametrize("value", [31, 129, 0, 64.0, True, "64"])
def test_the_ipv6_address_prefix_is_a_whole_number_from_32_to_128(value) -> None:
    with pytest.raises(ValueError, match="^limits.ipv6_address_prefix must be a whole number "
                                         "from 32 to 128$"):
        ConnectionLimits(ipv6_address_prefix=value)
    assert ConnectionLimits().ipv6_address_prefix == 128  # each IPv6 address, as before
    assert ConnectionLimits(ipv6_address_prefix=32).ipv6_address_prefix == 32
    assert ConnectionLimits(ipv6_address_prefix=64).ipv6_address_prefix == 64


def test_unread_answers_are_the_write_timeouts_not_the_idle_timeouts() -> None:
    protocol, transport, _, clock = connect(
        limits=ConnectionLimits(idle_timeout=10, write_timeout=60))
    transport.producer.pauseProducing()
    clock.advance(15)
    assert not transport.disconnecting  # not idle: its answers wait for it
    transport.producer.resumeProducing()  # taken at last: idle counts from now
    clock.advance(9)
    assert not transport.disconnecting
    clock.advance(1.5)
    assert transport.disconnecting

    protocol, transport, _, clock = connect(
        limits=ConnectionLimits(idle_timeout=10, write_timeout=60))
    transport.producer.pauseProducing()
    clock.advance(61)
    assert transport.disconnected  # never taken: aborted at the write timeout


def test_part_of_a_message_is_acknowledged_at_once_a_whole_one_is_not() -> None:
    """A client without TCP_NODELAY holds the rest of a large message until its first part
    is acknowledged; the protocol asks its transport to acknowledge at once (TCP_QUICKACK)
    whenever a read leaves part of a message, and only then."""
    protocol, transport, _, _ = connect()
    acknowledged: list[int] = []
    transport.acknowledge_now = lambda: acknowledged.append(1)
    wire = message(1)
    protocol.dataReceived(wire)
    assert acknowledged == []
    protocol.dataReceived(wire[:10])
    assert acknowledged == [1]
    protocol.dataReceived(wire[10:] + wire)
    assert acknowledged == [1]
    assert transport.value() == wire * 3


def test_draining_closes_each_connection_once_idle_for_the_grace_answering_first() -> None:
    """A stopping gateway (kcm.gateway.service): the idle connection closes after the grace;
    the one whose request is being answered gets its answer, then closes at once (a client
    that keeps sending never idles); one made while draining gets its first request served;
    the drain fires once none is left."""
    handler = EchoHandler()
    handler.defer = True
    clock = Clock()
    factory = KmipServerFactory(handler, ConnectionLimits(idle_timeout=300),
                                lambda t: PRINCIPAL, clock)

    def connected():
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.handshakeCompleted()
        return protocol, transport

    (idle, idle_transport), (busy, busy_transport) = connected(), connected()
    busy.dataReceived(message(1))
    assert factory.connections == {idle, busy}
    drained = factory.drain(0.5)
    late, late_transport = connected()  # (handed over just before the listener stopped)
    late.dataReceived(message(2))
    clock.advance(0.5)
    assert idle_transport.disconnecting and not busy_transport.disconnecting
    assert not late_transport.disconnecting  # its request is being answered
    idle.connectionLost(Failure(ConnectionDone()))
    handler.deferreds[0].callback(b"A")
    handler.deferreds[1].callback(b"B")
    assert busy_transport.value() == b"A" and late_transport.value() == b"B"
    assert busy_transport.disconnecting and late_transport.disconnecting
    assert not drained.called
    busy.connectionLost(Failure(ConnectionDone()))
    late.connectionLost(Failure(ConnectionDone()))
    assert drained.called and factory.connections == set()


def test_a_draining_connection_that_keeps_sending_closes_between_two_requests() -> None:
    """Every request read is answered, a message begun is read to its end and answered,
    and the connection closes once nothing read is left unanswered: a client sending back
    to back (a database's connection) would never be idle for the grace, and was cut at
    the drain's timeout, its request in flight."""
    handler = EchoHandler()
    handler.defer = True
    clock = Clock()
    factory = KmipServerFactory(handler, ConnectionLimits(idle_timeout=300),
                                lambda t: PRINCIPAL, clock)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.handshakeCompleted()
    protocol.dataReceived(message(1) + message(2))  # one answered now, one waiting
    factory.drain(0.5)
    third = message(3)
    protocol.dataReceived(third[:10])  # a third begun
    handler.deferreds[0].callback(b"A")
    handler.deferreds[1].callback(b"B")
    assert transport.value() == b"AB" and not transport.disconnecting
    protocol.dataReceived(third[10:])
    assert not transport.disconnecting  # the third is being answered
    handler.deferreds[2].callback(b"C")
    assert transport.value() == b"ABC" and transport.disconnecting


def test_draining_with_no_connection_is_done_at_once() -> None:
    factory = KmipServerFactory(EchoHandler(), ConnectionLimits(), lambda t: PRINCIPAL, Clock())
    assert factory.drain(0.5).called


def test_a_polite_close_waits_for_the_clients_close_notify_a_bounded_time() -> None:
    """Closed politely (idle here), a connection sends its answers and close_notify and
    waits for the client's, reading what it still sends: cutting it at once would send a
    reset that loses the answer a client sending a large request reads after it. A client
    that holds the connection without reading never answers: the connection is cut
    CLOSE_LINGER seconds after its answers have gone (it stayed open and counted, and
    every stop with one waited its whole drain_timeout)."""
    from kcm.kmip_protocol import CLOSE_LINGER

    protocol, transport, _, clock = connect(
        limits=ConnectionLimits(idle_timeout=10, write_timeout=30))
    protocol.dataReceived(message(1))
    clock.advance(10.1)
    assert transport.disconnecting and not transport.disconnected  # polite, waiting
    clock.advance(CLOSE_LINGER - 0.2)
    assert not transport.disconnected
    clock.advance(0.2)
    assert transport.disconnected  # cut

    # answers still going out (a slow reader): waited for, within the write timeout
    protocol, transport, _, clock = connect(
        limits=ConnectionLimits(idle_timeout=10, write_timeout=30))
    protocol.dataReceived(message(1))
    transport._appSendBuffer = [b"an answer not yet sent"]  # (the TLS layer's)
    clock.pump([0.1] * int((10.1 + 5 * CLOSE_LINGER) * 10))
    assert not transport.disconnected
    transport._appSendBuffer = []
    clock.pump([0.1] * int(CLOSE_LINGER * 10 + 1))
    assert transport.disconnected
    protocol, transport, _, clock = connect(
        limits=ConnectionLimits(idle_timeout=10, write_timeout=30))
    protocol.dataReceived(message(1))
    transport._appSendBuffer = [b"never taken"]
    clock.pump([0.1] * int((10.1 + 30) * 10 + 5))
    assert transport.disconnected  # no longer than the write timeout

    # the client answers (or goes): nothing is cut, no timer is left
    protocol, transport, _, clock = connect(limits=ConnectionLimits(idle_timeout=10))
    protocol.dataReceived(message(1))
    clock.advance(10.1)
    protocol.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []


def test_refused_identities_are_logged_at_most_once_an_interval() -> None:
    """A client whose certificate names no acceptable identity may reconnect in a loop: the
    warning was one line a connection (200 connections, 112 KB of log in 0.8 s). Now the
    first at once, then one line an interval with how many it stands for."""
    from collections.abc import Callable

    from twisted.logger import globalLogPublisher

    import kcm.kmip_protocol
    from kcm.connection_guard import LOG_INTERVAL

    clock = Clock()
    factory = KmipServerFactory(EchoHandler(), ConnectionLimits(), lambda t: None, clock)

    def counts(connections: int, then: Callable[[], object]) -> list[int]:
        """The counts of the lines written while ``connections`` are refused, then."""
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        try:
            for _ in range(connections):
                protocol = factory.buildProtocol(None)
                protocol.makeConnection(StringTransport())
                protocol.handshakeCompleted()
            then()
        finally:
            globalLogPublisher.removeObserver(events.append)
        return [e["count"] for e in events
                if e.get("log_namespace") == kcm.kmip_protocol.__name__
                and "no acceptable identity" in e.get("log_format", "")]

    assert counts(5, lambda: clock.advance(LOG_INTERVAL)) == [1, 4]
    # The listener stopping writes what is counted within the interval (its timer would
    # not fire any more).
    assert counts(3, factory.stopFactory) == [3]


def test_refused_connections_are_counted_by_reason() -> None:
    """identity (a certificate that names nobody), too_large and unreadable (headers), each
    once per connection, in the factory's refusals (the process's, for the metrics)."""
    from kcm.connection_refusals import ConnectionRefusals

    refusals = ConnectionRefusals()

    def opened(principal: object = PRINCIPAL) -> tuple:
        factory = KmipServerFactory(EchoHandler(), ConnectionLimits(), lambda t: principal,
                                    Clock(), refusals=refusals)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.handshakeCompleted()
        return protocol, transport

    refused, _ = opened(principal=None)
    refused.dataReceived(message(1))  # answered Permission Denied: not counted again
    protocol, transport = opened()
    protocol.dataReceived(message(1) + OVERSIZED_HEADER)
    assert transport.disconnecting
    protocol, transport = opened()
    protocol.dataReceived(UNREADABLE_HEADER)
    assert transport.disconnected
    opened()[0].dataReceived(message(2))  # served: not counted
    counts = dict(refusals)
    assert {reason: counts[reason] for reason in ("identity", "too_large", "unreadable")} == {
        "identity": 1, "too_large": 1, "unreadable": 1}
    assert sum(counts.values()) == 3


# A certificate OpenSSL verified that cryptography cannot load --------------------------------

def _openssl_certificate(name, issuer=None):
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from OpenSSL import crypto

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
            .public_key(key.public_key()).serial_number(0xABC).not_valid_before(now)
            .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    return crypto.X509.from_cryptography(cert)


def test_an_unreadable_peer_certificate_is_described_without_pyopenssls_deprecated_names(
        monkeypatch) -> None:
    import warnings

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    import kcm.kmip_protocol
    from kcm.kmip_protocol import describe_peer_certificate

    def unreadable(transport):
        raise ValueError("cryptography cannot load it")

    monkeypatch.setattr(kcm.kmip_protocol, "peer_certificate", unreadable)

    class Transport:
        def __init__(self, cert):
            self.cert = cert

        def getPeerCertificate(self):  # noqa: N802 - Twisted's
            return self.cert

    named = _openssl_certificate(x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "app"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "d\u00e9mo")]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # X509.get_subject, X509Name
        described = describe_peer_certificate(Transport(named))
        empty = describe_peer_certificate(Transport(_openssl_certificate(x509.Name([]))))
    assert described == r"unreadable certificate, subject CN=app, O=d\xC3\xA9mo, serial abc"
    assert empty == "unreadable certificate, subject (empty), serial abc"
    issued = _openssl_certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "app")]),
                                  x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA")]))
    assert describe_peer_certificate(Transport(issued)) == (  # the subject, not the issuer
        "unreadable certificate, subject CN=app, serial abc")


def tenant_app(tenant: str, service: str = "app") -> Principal:
    return Principal(Role.SERVICE, "kcm.test", tenant=tenant, service=service,
                     uri=f"spiffe://kcm.test/tenant/{tenant}/service/{service}")


def test_one_tenant_cannot_take_every_connection() -> None:
    """A tenant's principals hold at most max_connections_per_tenant connections at once,
    whatever their addresses: one more is cut as soon as TLS names it (counted ``limit``,
    logged once an interval), another tenant's and a principal of no tenant are served,
    and a slot its tenant gives back is taken again."""
    from twisted.logger import globalLogPublisher

    from kcm.connection_refusals import ConnectionRefusals

    clock = Clock()
    refusals = ConnectionRefusals()
    who: list[Principal] = []
    factory = KmipServerFactory(EchoHandler(), ConnectionLimits(max_connections_per_tenant=2),
                                lambda t: who[-1], clock, refusals=refusals)

    def opened(principal: Principal) -> tuple:
        who.append(principal)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.handshakeCompleted()
        return protocol, transport

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        demo = [opened(tenant_app("demo", service)) for service in ("app", "batch")]
        third, third_transport = opened(tenant_app("demo"))
        other, other_transport = opened(tenant_app("other"))
        operator, _ = opened(PRINCIPAL)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert third.connection is None and third_transport.disconnected
    assert dict(refusals)["limit"] == 1
    third.connectionLost(Failure(ConnectionDone()))
    lines = [e for e in events if "max_connections_per_tenant" in e.get("log_format", "")]
    assert [(e["tenant"], e["limit"], e["count"]) for e in lines] == [("demo", 2, 1)]
    other.dataReceived(message(1))
    assert other_transport.value() == message(1)
    assert operator.connection is not None
    assert all(p.connection is not None and not t.disconnected for p, t in demo)
    # One of demo's connections goes: its slot is demo's again.
    demo[0][0].connectionLost(Failure(ConnectionDone()))
    again, again_transport = opened(tenant_app("demo"))
    assert again.connection is not None and not again_transport.disconnected
    assert dict(refusals)["limit"] == 1


def test_the_tenant_cap_is_a_whole_number_of_at_least_one() -> None:
    assert ConnectionLimits().tenant_connections == 450
    for wrong in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_connections_per_tenant"):
            ConnectionLimits(max_connections_per_tenant=wrong)


def test_an_unset_tenant_cap_is_half_of_max_connections_and_a_set_one_is_kept() -> None:
    """max_connections lowered, max_connections_per_tenant unset: one tenant may hold half
    of the connections, not a fixed 450 that a max_connections below it made void (one
    tenant could then take every slot). A number set is the bound as set, whatever
    max_connections (a deployment of one tenant may raise it to max_connections)."""
    assert ConnectionLimits().max_connections_per_tenant is None
    assert ConnectionLimits(max_connections=100).tenant_connections == 50
    assert ConnectionLimits(max_connections=1).tenant_connections == 1
    assert ConnectionLimits(max_connections=100,
                            max_connections_per_tenant=100).tenant_connections == 100
    assert ConnectionLimits(max_connections=100,
                            max_connections_per_tenant=20).tenant_connections == 20
    factory = KmipServerFactory(EchoHandler(), ConnectionLimits(max_connections=4),
                                lambda t: tenant_app("demo"), Clock())
    opened = []
    for _ in range(3):
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        protocol.handshakeCompleted()
        opened.append(protocol.connection is not None)
    assert opened == [True, True, False]


def test_a_tenant_cap_above_max_connections_is_warned_about_as_the_listener_starts() -> None:
    from twisted.logger import capturedLogs, formatEvent

    for limits, warned in ((ConnectionLimits(max_connections=100,
                                             max_connections_per_tenant=450), True),
                           (ConnectionLimits(max_connections=100), False),
                           (ConnectionLimits(max_connections=100,
                                             max_connections_per_tenant=100), False)):
        factory = KmipServerFactory(EchoHandler(), limits, lambda t: PRINCIPAL, Clock())
        with capturedLogs() as logged:
            factory.doStart()
        said = [formatEvent(e) for e in logged if "bounds nothing" in formatEvent(e)]
        assert len(said) == warned, said
        factory.doStop()


@pytest.mark.parametrize("kind", ["unreadable", "too_large", "slow_message", "not_reading"])
def test_connections_closed_for_what_their_clients_send_are_logged_at_most_once_an_interval(
        kind: str) -> None:
    """A client with an accepted certificate may reconnect in a loop and send an unreadable
    header, a message over ``max_message_size``, a message it never finishes, or requests
    whose answers it never reads: each close was one info line a connection (a walk with
    four client threads wrote 180 lines a second at kcm-core, 140 at kcm-gateway). Now the
    first at once, then one line an interval with how many it stands for and the last
    peer."""
    from twisted.logger import globalLogPublisher

    import kcm.kmip_protocol
    from kcm.connection_guard import LOG_INTERVAL
    from kcm.kmip_protocol import CLOSED_LINES

    clock = Clock()
    limits = ConnectionLimits(message_timeout=3, write_timeout=5)
    factory = KmipServerFactory(EchoHandler(), limits, lambda t: PRINCIPAL, clock)

    def closed(connections: int) -> None:
        """``connections`` clients at once, each closed for ``kind``."""
        transports = []
        for _ in range(connections):
            protocol = factory.buildProtocol(None)
            transport = StringTransport()
            protocol.makeConnection(transport)
            protocol.handshakeCompleted()
            if kind == "unreadable":
                protocol.dataReceived(UNREADABLE_HEADER)
            elif kind == "too_large":
                protocol.dataReceived(OVERSIZED_HEADER)
            elif kind == "slow_message":
                protocol.dataReceived(message(1)[:4])
            else:
                protocol.dataReceived(message(1))
                transport.producer.pauseProducing()
            transports.append(transport)
        clock.advance(5.1)  # past the message and write timeouts
        assert all(t.disconnecting or t.disconnected for t in transports)

    def counts(connections: int, then) -> list[tuple[int, str]]:
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        try:
            closed(connections)
            then()
        finally:
            globalLogPublisher.removeObserver(events.append)
        return [(e["count"], e["peer"]) for e in events
                if e.get("log_namespace") == kcm.kmip_protocol.__name__
                and e.get("log_format") == CLOSED_LINES[kind]]

    lines = counts(50, lambda: clock.advance(LOG_INTERVAL))
    assert [count for count, _ in lines] == [1, 49]
    assert all(peer.startswith("192.168.1.1:") for _, peer in lines)
    # The listener stopping writes what is counted within the interval.
    assert [count for count, _ in counts(3, factory.stopFactory)] == [3]
    for message_format in CLOSED_LINES.values():
        assert message_format.isascii() and "{count}" in message_format
