"""Backpressure from the link to the gateway's clients: at ``max_in_flight`` calls in flight
every client connection stops reading until half have been answered, without undoing a pause
a connection decided itself (too many of its own requests unanswered). StringTransports, a
Clock, a LinkClient welcomed by hand."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from kcm.gateway.link_client import LinkClient, LinkClientProtocol
from kcm.kmip_protocol import (
    PAUSED_BY_PENDING,
    PAUSED_BY_UPSTREAM,
    ConnectionInfo,
    ConnectionLimits,
    KmipServerFactory,
    KmipServerProtocol,
)
from kcm.link.frames import Frame, FrameType, encode_frame
from tests.core_support import service_principal
from tests.gateway_support import core_welcome, locate, request

APP = service_principal()


class ForwardingHandler:
    """Forwards every request over the link, as the gateway does for control operations."""

    def __init__(self, link: LinkClient) -> None:
        self.link = link

    def handle_request(self, wire: bytes, connection: ConnectionInfo) -> Deferred[bytes]:
        return self.link.forward(wire, connection.principal, connection.peer)

    def failure_response(self, reason: int, message: str) -> bytes:
        return b"FAIL"


class Gateway:
    def __init__(self, max_in_flight: int = 4, max_pending: int = 32) -> None:
        self.clock = Clock()
        self.link = LinkClient(None, clock=self.clock,  # type: ignore[arg-type]
                               max_in_flight=max_in_flight)
        self.core_end = LinkClientProtocol(self.link)
        self.core_end.makeConnection(StringTransport())
        self.core_end.dataReceived(core_welcome())
        assert self.link.connected
        self.factory = KmipServerFactory(ForwardingHandler(self.link),
                                         ConnectionLimits(max_pending=max_pending),
                                         lambda transport: APP, self.clock, upstream=self.link)

    def client(self) -> tuple[KmipServerProtocol, StringTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.handshakeCompleted()
        return protocol, transport

    def answer(self, count: int) -> None:
        """The core answers the ``count`` oldest open streams."""
        for stream_id in sorted(self.core_end.streams)[:count]:
            self.answer_stream(stream_id)

    def answer_stream(self, stream_id: int) -> None:
        self.core_end.dataReceived(encode_frame(Frame(
            FrameType.RESPONSE, stream_id=stream_id, message=b"answer")))


def test_a_saturated_link_pauses_every_client_until_half_are_answered() -> None:
    gateway = Gateway(max_in_flight=4)
    (busy, busy_transport), (idle, idle_transport) = gateway.client(), gateway.client()
    for _ in range(3):
        # Each connection answers in order, so one forwarded request at a time per client:
        # a client per request fills the link.
        protocol, _ = gateway.client()
        protocol.dataReceived(request(locate()))
    assert gateway.link.in_flight == 3 and busy_transport.producerState == "producing"
    busy.dataReceived(request(locate()))
    assert gateway.link.in_flight == 4
    assert busy_transport.producerState == idle_transport.producerState == "paused"
    assert idle.paused_by == {PAUSED_BY_UPSTREAM}
    late, late_transport = gateway.client()  # connected while saturated: paused at once
    assert late_transport.producerState == "paused"
    gateway.answer(1)
    assert gateway.link.in_flight == 3 and idle_transport.producerState == "paused"
    gateway.answer(1)  # 2 = half of 4
    assert gateway.link.in_flight == 2
    for transport in (busy_transport, idle_transport, late_transport):
        assert transport.producerState == "producing"


def test_a_connections_own_pause_outlasts_the_links() -> None:
    gateway = Gateway(max_in_flight=2, max_pending=2)
    protocol, transport = gateway.client()
    protocol.dataReceived(request(locate()) * 2)  # its own bound: reading paused
    assert protocol.paused_by == {PAUSED_BY_PENDING} and gateway.link.in_flight == 1
    other, _ = gateway.client()
    other.dataReceived(request(locate()))  # and the link's bound
    assert protocol.paused_by == {PAUSED_BY_PENDING, PAUSED_BY_UPSTREAM}
    gateway.answer_stream(2)  # the other client's: the link drains, the connection is full
    assert gateway.link.in_flight == 1
    assert protocol.paused_by == {PAUSED_BY_PENDING} and transport.producerState == "paused"
    gateway.answer_stream(1)  # its first answer: its second request goes out, reading resumes
    assert gateway.link.in_flight == 1
    assert protocol.paused_by == frozenset() and transport.producerState == "producing"
    gateway.answer(1)
    assert transport.value() == b"answer" * 2


def test_the_link_pauses_its_own_reason_only() -> None:
    gateway = Gateway(max_in_flight=1, max_pending=2)
    protocol, transport = gateway.client()
    protocol.pause(PAUSED_BY_PENDING)
    other, _ = gateway.client()
    other.dataReceived(request(locate()))
    assert protocol.paused_by == {PAUSED_BY_PENDING, PAUSED_BY_UPSTREAM}
    gateway.answer(1)
    assert protocol.paused_by == {PAUSED_BY_PENDING} and transport.producerState == "paused"


def test_a_closed_connection_is_no_longer_paused_by_the_link() -> None:
    gateway = Gateway(max_in_flight=1)
    protocol, transport = gateway.client()
    assert len(gateway.link._producers) == 1
    transport.loseConnection()
    protocol.connectionLost(None)  # type: ignore[arg-type]
    assert gateway.link._producers == set()
    other, _ = gateway.client()
    other.dataReceived(request(locate()))  # saturates: nothing touches the closed transport
    gateway.answer(1)
