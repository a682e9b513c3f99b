"""kcm.tcp_reads over real loopback and Unix sockets: a transport whose ``bufferSize`` is
large reads at most READ_SIZE bytes at a time, loses and reorders nothing (two connections
sharing the buffer), sees the peer's close, and keeps ``bufferSize`` for flow control; so
does a connection on a Unix socket, bound here or adopted as ``fd:N`` (a socket systemd
or kcm-gateway's supervisor bound), unless its protocol takes descriptors."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, tcp, threads, unix
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from kcm.tcp_reads import READ_SIZE, read_into_shared_buffer
from kcm.tls import plain_server_endpoint

BIG = 4 << 20


class Recorder(protocol.Protocol):
    """Keeps every read's bytes; ``done`` fires with them when the peer closes."""

    def __init__(self) -> None:
        self.reads: list[bytes] = []
        self.done: defer.Deferred[list[bytes]] = defer.Deferred()
        self.adopted = False

    def connectionMade(self) -> None:
        self.transport.bufferSize = BIG
        self.adopted = read_into_shared_buffer(self.transport)

    def dataReceived(self, data: bytes) -> None:
        assert type(data) is bytes
        self.reads.append(data)

    def connectionLost(self, reason: Failure) -> None:
        self.done.callback(self.reads)


def _send(address: int | str, payload: bytes) -> None:
    if isinstance(address, str):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(address)
    else:
        client = socket.create_connection(("127.0.0.1", address))
    with client:
        client.sendall(payload)


@contextmanager
def _tcp() -> Iterator[tuple[object, Callable[[object], int | str]]]:
    yield (TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
           lambda port: port.getHost().port)


@contextmanager
def _unix() -> Iterator[tuple[object, Callable[[object], int | str]]]:
    with tempfile.TemporaryDirectory() as scratch:
        path = str(Path(scratch) / "s")
        yield plain_server_endpoint(reactor, f"unix:{path}"), lambda port: path


@contextmanager
def _inherited_unix() -> Iterator[tuple[object, Callable[[object], int | str]]]:
    """``fd:N`` of a listening Unix socket, as a kcm-gateway worker adopts its
    supervisor's."""
    with tempfile.TemporaryDirectory() as scratch, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        path = str(Path(scratch) / "s")
        bound.bind(path)
        bound.listen(8)
        # (the endpoint closes the descriptor it is given once it has adopted a copy)
        yield plain_server_endpoint(reactor, f"fd:{os.dup(bound.fileno())}"), lambda p: path


@pytest.mark.parametrize("listener", [_tcp, _unix, _inherited_unix],
                         ids=["tcp", "unix", "inherited-unix"])
@pytest_twisted.inlineCallbacks
def test_reads_are_bounded_whole_and_in_order_across_connections(listener):
    payloads = [os.urandom(3 * READ_SIZE + 17), os.urandom(5 * READ_SIZE + 1)]
    # One Deferred per connection the listener will accept, fired with its protocol.
    accepted: list[defer.Deferred[Recorder]] = [defer.Deferred() for _ in payloads]
    recorders: list[Recorder] = []

    def build(_address):
        recorders.append(Recorder())
        accepted[len(recorders) - 1].callback(recorders[-1])
        return recorders[-1]

    factory = protocol.Factory()
    factory.buildProtocol = build
    with listener() as (endpoint, address_of):
        port = yield endpoint.listen(factory)
        try:
            address = address_of(port)
            # Two clients at once from threads, so the two connections' reads interleave.
            yield defer.gatherResults([threads.deferToThread(_send, address, payload)
                                       for payload in payloads])
            both = yield defer.gatherResults(accepted)
            reads = yield defer.gatherResults([r.done for r in both])
        finally:
            yield port.stopListening()
    assert len(recorders) == 2 and all(r.adopted for r in recorders)
    assert sorted(b"".join(chunks) for chunks in reads) == sorted(payloads)
    assert all(len(chunk) <= READ_SIZE for chunks in reads for chunk in chunks)
    assert all(r.transport.bufferSize == BIG for r in recorders)


def test_only_twisteds_tcp_connections_are_changed():
    assert read_into_shared_buffer(StringTransport()) is False


def test_a_changed_transport_stays_a_tcp_server_and_is_changed_once():
    left, right = socket.socketpair()
    transport = tcp.Server(left, protocol.Protocol(), ("127.0.0.1", 1), _FakePort(), 1,
                           reactor)
    try:
        assert read_into_shared_buffer(transport) is True
        changed = type(transport)
        assert isinstance(transport, tcp.Server) and changed is not tcp.Server
        assert read_into_shared_buffer(transport) is True
        assert type(transport) is changed
    finally:
        transport.stopReading()
        left.close()
        right.close()


@implementer(IFileDescriptorReceiver)
class _TakesDescriptors(protocol.Protocol):
    def fileDescriptorReceived(self, descriptor: int) -> None:
        os.close(descriptor)


def test_a_unix_connection_is_changed_unless_its_protocol_takes_descriptors():
    for proto, changed in ((protocol.Protocol(), True), (_TakesDescriptors(), False)):
        left, right = socket.socketpair()
        transport = unix.Server(left, proto, None, _FakePort(), 1, reactor)
        try:
            assert read_into_shared_buffer(transport) is changed
            assert (type(transport) is not unix.Server) is changed
            assert isinstance(transport, unix.Server)
        finally:
            transport.stopReading()
            left.close()
            right.close()


class _FakePort:
    """What tcp.Server asks of its port when built."""

    _realPortNumber = 1

    def getHost(self):
        return None
