"""kcm.handoff: a worker's ``handoff:N`` listener receives connections over a real socket
pair and adopts them (a fake reactor records the adoptions; one test on the real reactor
talks over an adopted connection), and reports its counts."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.policies import WrappingFactory

from kcm.handoff import (
    HANDOFF_BYTE,
    READY,
    REPORT,
    REPORT_INTERVAL,
    HandoffServerEndpoint,
    channel_pair,
    parse_handoff,
    read_open,
)
from kcm.tls import plain_server_endpoint


class FakeReactor(Clock):
    """Records readers and adopted connections (each a socket on a copy of the descriptor,
    as the real reactor keeps a copy)."""

    def __init__(self) -> None:
        super().__init__()
        self.readers: list[Any] = []
        self.adopted: list[tuple[socket.socket, int, Any]] = []

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.remove(reader)

    def adoptStreamConnection(self, fileno: int, family: int, factory: Any) -> None:
        self.adopted.append((socket.socket(fileno=os.dup(fileno)), family, factory))


@pytest.fixture
def server() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        sock.listen()
        yield sock


def hand_over(server: socket.socket, supervisor_end: socket.socket) -> socket.socket:
    """A client connection to ``server``; its server side is sent over the channel (and
    closed here, as the supervisor does)."""
    client = socket.create_connection(server.getsockname()[:2], timeout=5)
    accepted, _ = server.accept()
    with accepted:
        socket.send_fds(supervisor_end, [HANDOFF_BYTE], [accepted.fileno()])
    return client


def test_the_description_names_the_inherited_channel() -> None:
    assert parse_handoff("handoff:3") == 3
    assert parse_handoff("fd:3") is None and parse_handoff("tcp:5696") is None
    assert isinstance(plain_server_endpoint(Clock(), "handoff:3"), HandoffServerEndpoint)
    with pytest.raises(ValueError):
        parse_handoff("handoff:three")


def test_descriptors_received_are_adopted_with_their_family_and_counted(server) -> None:
    reactor = FakeReactor()
    supervisor_end, worker_end = channel_pair()
    factory = WrappingFactory(Factory.forProtocol(Protocol))
    listening: list[Any] = []
    HandoffServerEndpoint(reactor, worker_end.detach()).listen(factory).addCallback(
        listening.append)
    [port] = listening
    assert reactor.readers == [port]
    # Without a readiness check it is ready as soon as it listens, and says so.
    assert supervisor_end.recv(64) == READY
    assert REPORT.unpack(supervisor_end.recv(64)) == (0, 0)
    clients = [hand_over(server, supervisor_end) for _ in range(3)]
    assert port.doRead() is None  # all three, then nothing more to read
    assert [(family, f) for _, family, f in reactor.adopted] == [
        (socket.AF_INET6, factory)] * 3
    assert sorted(s.getpeername() for s, _, _ in reactor.adopted) == sorted(
        c.getsockname() for c in clients)
    assert not any(os.get_blocking(s.fileno()) for s, _, _ in reactor.adopted)
    assert port.received == 3
    # The worker reports every REPORT_INTERVAL seconds, its counts changed or not (a
    # report is its heartbeat too).
    factory.protocols = {object(): 1, object(): 1}  # (what two open connections look like)
    supervisor_end.setblocking(False)
    reactor.advance(REPORT_INTERVAL)
    assert REPORT.unpack(supervisor_end.recv(64)) == (2, 3)
    reactor.advance(REPORT_INTERVAL)
    assert REPORT.unpack(supervisor_end.recv(64)) == (2, 3)
    with pytest.raises(BlockingIOError):  # one per interval
        supervisor_end.recv(64)
    # The supervisor closes its end: no more connections here.
    supervisor_end.close()
    assert port.doRead() is CONNECTION_DONE
    reactor.readers.remove(port)  # (what the reactor does before connectionLost)
    port.connectionLost(None)
    assert reactor.getDelayedCalls() == []
    port.stopListening()  # (and later, stopping the service)
    for sock in clients + [s for s, _, _ in reactor.adopted]:
        sock.close()


def test_stopping_closes_the_channel_and_the_reports() -> None:
    reactor = FakeReactor()
    supervisor_end, worker_end = channel_pair()
    listening: list[Any] = []
    HandoffServerEndpoint(reactor, worker_end.detach()).listen(
        Factory.forProtocol(Protocol)).addCallback(listening.append)
    [port] = listening
    port.stopListening()
    assert reactor.readers == [] and reactor.getDelayedCalls() == []
    assert supervisor_end.recv(64) == READY
    assert REPORT.unpack(supervisor_end.recv(64)) == (0, 0)
    assert supervisor_end.recv(1) == b""  # the worker's end is closed
    supervisor_end.close()


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


@pytest_twisted.ensureDeferred
async def test_an_adopted_connection_is_served_on_the_real_reactor(server) -> None:
    from twisted.internet import reactor, threads

    supervisor_end, worker_end = channel_pair()
    port = await HandoffServerEndpoint(reactor, worker_end.detach()).listen(
        Factory.forProtocol(Echo))
    try:
        client = hand_over(server, supervisor_end)

        def talk() -> bytes:
            with client:
                client.sendall(b"over the handoff")
                return client.recv(64)

        assert await threads.deferToThread(talk) == b"over the handoff"
    finally:
        stopped: Deferred[None] = port.stopListening()
        await stopped
        supervisor_end.close()


def test_ready_is_said_when_the_worker_can_serve_and_again_after_it_could_not() -> None:
    reactor = FakeReactor()
    supervisor_end, worker_end = channel_pair()
    supervisor_end.setblocking(False)
    linked = [False]
    listening: list[Any] = []
    HandoffServerEndpoint(reactor, worker_end.detach(), ready=lambda: linked[0]).listen(
        Factory.forProtocol(Protocol)).addCallback(listening.append)
    [port] = listening

    def said() -> list[Any]:
        """What the worker sent since: READY, or each report as (open, ready)."""
        messages: list[Any] = []
        while True:
            try:
                message = supervisor_end.recv(64)
            except BlockingIOError:
                return messages
            messages.append(message if message == READY else read_open(
                REPORT.unpack(message)[0]))

    reactor.advance(REPORT_INTERVAL)
    assert said() == [(0, False)] * 2  # not linked yet: not ready, in each report
    linked[0] = True
    reactor.advance(REPORT_INTERVAL)
    assert said() == [READY, (0, True)]
    for _ in range(3):
        reactor.advance(REPORT_INTERVAL)
    assert said() == [(0, True)] * 3  # READY once while it stays ready
    linked[0] = False  # its link down past max_stale
    reactor.advance(REPORT_INTERVAL)
    assert said() == [(0, False)]
    linked[0] = True
    reactor.advance(REPORT_INTERVAL)
    assert said() == [READY, (0, True)]  # ready again: said again
    port.stopListening()
    supervisor_end.close()
