"""kcm.eager_tls over real loopback sockets (both ends in this reactor): records leave in the
turn that wrote them, in order, whole, however large, and with the TCP transport's flow
control; over a StringTransport it writes to the transport as Twisted's own TLS does. Every
test runs twice: with OpenSSL's calls made by the compiled kcm._tls_calls (as deployed),
and through cffi (a checkout whose extension is not built)."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.testing import StringTransport

from kcm import eager_tls
from kcm.eager_tls import MAX_GATHERED, EagerTLSClientEndpoint, EagerTLSFactory, EagerTLSProtocol
from kcm.pki import PkiPaths, init_pki
from kcm.tls import client_tls_options, server_tls_options


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(Path(tmp_path_factory.mktemp("pki")))


@pytest.fixture(autouse=True, params=["compiled", "cffi"])
def calls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which way the connections made in the test call OpenSSL."""
    if request.param == "compiled":
        assert eager_tls._calls is not None, "kcm._tls_calls is not built (make .venv/.installed)"
    else:
        monkeypatch.setattr(eager_tls, "_calls", None)
    return request.param


class Lines(protocol.Protocol):
    """Server side: answers every line with ``answer(line)``; b"close" closes after it."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.transport.write(self.answer(line))
            if line == b"close":
                self.transport.loseConnection()
                return


class Collector(protocol.Protocol):
    """Client side: keeps what arrives; ``done`` fires with it when the connection ends."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.done: defer.Deferred[bytes] = defer.Deferred()
        self.waiters: list[tuple[int, defer.Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        ready = [w for w in self.waiters if len(self.received) >= w[0]]
        for waiter in ready:
            self.waiters.remove(waiter)
            waiter[1].callback(None)

    def until(self, size: int) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if len(self.received) >= size:
            d.callback(None)
        else:
            self.waiters.append((size, d))
        return d

    def connectionLost(self, reason) -> None:
        self.done.callback(bytes(self.received))


@defer.inlineCallbacks
def serve(pki: PkiPaths, answer):
    """A server of ``Lines(answer)`` and one client connected to it; (client, port, server)."""
    servers: list[Lines] = []

    def build() -> Lines:
        server = Lines(answer)
        servers.append(server)
        return server

    factory = EagerTLSFactory(server_tls_options(pki.core.cert, pki.core.key, pki.ca.cert),
                              False, protocol.Factory.forProtocol(build))
    port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    options = client_tls_options(pki.app.cert, pki.app.key, pki.ca.cert, "localhost")
    client = yield EagerTLSClientEndpoint(
        options, TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)).connect(
        protocol.Factory.forProtocol(Collector))
    return client, port, servers


@defer.inlineCallbacks
def exchange(pki: PkiPaths, answer, sent: bytes, expected: bytes, check=None):
    """Send ``sent`` to a server of ``Lines(answer)``, see ``expected`` come back whole, and
    run ``check(client, servers)`` before the client closes."""
    client, port, servers = yield serve(pki, answer)
    try:
        client.transport.write(sent)
        yield client.until(len(expected))
        assert bytes(client.received) == expected
        if check is not None:
            check(client, servers)
    finally:
        client.transport.loseConnection()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_pipelined_answers_arrive_in_order_and_whole(pki: PkiPaths, calls: str) -> None:
    def check(client, servers) -> None:
        assert servers[0].transport._gathered is None  # nothing left gathered after the turn
        # (both ends made OpenSSL's calls themselves once the handshake was done, in C or not)
        assert servers[0].transport._ssl is not None and client.transport._ssl is not None
        compiled = calls == "compiled"
        assert bool(servers[0].transport._c_ssl) is compiled
        assert bool(client.transport._c_ssl) is compiled

    lines = [b"%05d" % i for i in range(2000)]  # answered in one turn: gathered records
    yield exchange(pki, lambda line: line[::-1] + b";", b"\n".join(lines) + b"\n",
                   b"".join(line[::-1] + b";" for line in lines), check)


@pytest_twisted.inlineCallbacks
def test_large_answers_are_sent_whole_and_in_order_past_a_full_socket(pki: PkiPaths) -> None:
    # Several MiB in one turn: more than the socket takes at once, so part of every record
    # goes through the TCP transport's buffer and what follows must queue behind it.
    yield exchange(pki, lambda line: line * (1 << 20) + b"|", b"a\nb\nc\nd\n",
                   b"".join(x * (1 << 20) + b"|" for x in (b"a", b"b", b"c", b"d")))


@pytest_twisted.inlineCallbacks
def test_a_write_after_the_turn_is_sent_at_once(pki: PkiPaths) -> None:
    client, port, servers = yield serve(pki, lambda line: b"")
    try:
        client.transport.write(b"hello\n")
        while not servers:  # the server side exists once the handshake is under way
            yield deferLater(0.01)
        yield deferLater(0.05)
        server_tcp = servers[0].transport.transport
        servers[0].transport.write(b"late answer")  # as a Deferred firing later would
        # Eager: the record is on the socket already, nothing waits in the TCP transport.
        assert server_tcp._tempDataLen == 0 and not server_tcp.dataBuffer
        yield client.until(len(b"late answer"))
        assert bytes(client.received) == b"late answer"
    finally:
        client.transport.loseConnection()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_an_answer_written_before_closing_arrives_before_the_close(pki: PkiPaths) -> None:
    client, port, _ = yield serve(pki, lambda line: b"bye:" + line)
    try:
        client.transport.write(b"one\nclose\nnever\n")
        received = yield client.done
        assert received == b"bye:onebye:close"
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_request_of_many_records_is_read_whole(pki: PkiPaths) -> None:
    # 3 MiB in: many TLS records received in reads of any size, each decrypted on its way.
    big = bytes(range(97, 123)) * ((3 << 20) // 26)
    yield exchange(pki, lambda line: b"%d;" % len(line), big + b"\nsmall\n",
                   b"%d;5;" % len(big))


@pytest_twisted.inlineCallbacks
def test_a_damaged_record_ends_the_connection_and_nothing_else(pki: PkiPaths) -> None:
    # Bytes that are no TLS record, after the handshake: OpenSSL refuses them, the server
    # ends that connection, and a second client is served all the same.
    lost: list[object] = []

    class Watched(Lines):
        def connectionLost(self, reason) -> None:
            lost.append(reason)

    client, port, servers = yield serve(pki, lambda line: b"ok:" + line)
    try:
        client.transport.write(b"first\n")
        yield client.until(len(b"ok:first"))
        servers[0].__class__ = Watched
        client.transport.transport.write(b"\x17\x03\x03\x00\x20" + bytes(32))  # raw, no TLS
        received = yield client.done
        assert received == b"ok:first"
        while not lost:
            yield deferLater(0.01)
        options = client_tls_options(pki.app.cert, pki.app.key, pki.ca.cert, "localhost")
        second = yield EagerTLSClientEndpoint(
            options, TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)).connect(
            protocol.Factory.forProtocol(Collector))
        second.transport.write(b"second\n")
        yield second.until(len(b"ok:second"))
        assert bytes(second.received) == b"ok:second"
        second.transport.loseConnection()
    finally:
        yield port.stopListening()


def deferLater(seconds: float) -> defer.Deferred[None]:
    from twisted.internet.task import deferLater as later
    return later(reactor, seconds, lambda: None)


def test_over_a_string_transport_records_go_to_the_transport(pki: PkiPaths) -> None:
    factory = EagerTLSFactory(server_tls_options(pki.core.cert, pki.core.key, pki.ca.cert),
                              False, protocol.Factory.forProtocol(protocol.Protocol))
    tls = factory.buildProtocol(None)
    assert isinstance(tls, EagerTLSProtocol)
    transport = StringTransport()
    tls.makeConnection(transport)
    assert tls._eager is False
    assert transport.value() == b""  # a server waits for the ClientHello


def test_gathered_writes_past_the_bound_go_out_at_once() -> None:
    written: list[bytes] = []
    tls = EagerTLSProtocol.__new__(EagerTLSProtocol)
    tls.disconnecting = False
    tls._producer = None
    tls._write_now = written.append  # type: ignore[method-assign]
    tls._gathered, tls._gathered_size = [], 0
    tls.write(b"x" * 1000)
    assert written == []
    tls.write(b"y" * MAX_GATHERED)
    assert written == [b"x" * 1000 + b"y" * MAX_GATHERED]
    assert tls._gathered == [] and tls._gathered_size == 0


@pytest_twisted.inlineCallbacks
def test_acknowledge_now_sets_quickack_on_the_socket(pki: PkiPaths) -> None:
    import socket
    client, port, servers = yield serve(pki, lambda line: b"")
    try:
        client.transport.write(b"x\n")
        while not servers:
            yield deferLater(0.01)
        tls = servers[0].transport
        tls.acknowledge_now()  # Linux re-arms delayed ACKs later; set now, it reads 1
        assert tls.transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
        assert tls.transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        client.transport.loseConnection()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_answers_a_peer_never_took_are_released_when_the_connection_goes(pki: PkiPaths) -> None:
    """Not when the garbage collector finds the protocols (they refer to each other): a
    server closing clients that never read would otherwise hold their answers for a while."""
    client, port, servers = yield serve(pki, lambda line: b"ok" if line == b"hi" else
                                        line * (32 << 20))
    try:
        client.transport.write(b"hi\n")
        yield client.until(2)  # the handshake is done
        client.transport.transport.pauseProducing()  # the client reads no more
        client.transport.write(b"a\n")
        tls = servers[0].transport
        server_tcp = tls.transport
        for _ in range(200):
            if server_tcp._tempDataLen or len(server_tcp.dataBuffer) > server_tcp.offset:
                break
            yield deferLater(0.01)
        else:
            raise AssertionError("the answer did not back up in the server's TCP transport")
        tls.abortConnection()
        for _ in range(200):
            if not server_tcp.connected:
                break
            yield deferLater(0.01)
        yield deferLater(0.01)
        assert server_tcp.dataBuffer == b"" and server_tcp.offset == 0
        assert server_tcp._tempDataLen == 0 and server_tcp._tempDataBuffer == []
    finally:
        client.transport.loseConnection()
        yield port.stopListening()
