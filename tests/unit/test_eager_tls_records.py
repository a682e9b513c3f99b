"""kcm.eager_tls delivers exactly the bytes sent, however the TLS records are cut on the way.

Two EagerTLSProtocol ends over StringTransports, in memory: one writes messages of any
size, the records it makes reach the other end cut at arbitrary points (a partial record,
several records in one read, a close_notify at the end), and the other end's application
must receive exactly the bytes written, then see the close. Each example runs with the
OpenSSL calls made by the compiled kcm._tls_calls and through cffi, both ways (client to
server, server to client)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import protocol
from twisted.internet.testing import StringTransport

from kcm import eager_tls
from kcm.eager_tls import EagerTLSFactory
from kcm.pki import PkiPaths, init_pki
from kcm.tls import client_tls_options, server_tls_options


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(Path(tmp_path_factory.mktemp("pki")))


class Received(protocol.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: object) -> None:
        self.lost = True


@contextmanager
def calls(compiled: bool) -> Iterator[None]:
    """Connections made inside call OpenSSL through kcm._tls_calls, or through cffi."""
    assert eager_tls._calls is not None, "kcm._tls_calls is not built (make .venv/.installed)"
    kept = eager_tls._calls
    if not compiled:
        eager_tls._calls = None
    try:
        yield
    finally:
        eager_tls._calls = kept


def connected(pki: PkiPaths):
    """A client and a server end, handshake done; (client, server, their transports)."""
    ends = []
    for is_client, options in (
            (True, client_tls_options(pki.app.cert, pki.app.key, pki.ca.cert, "localhost")),
            (False, server_tls_options(pki.core.cert, pki.core.key, pki.ca.cert))):
        factory = EagerTLSFactory(options, is_client, protocol.Factory.forProtocol(Received))
        end, transport = factory.buildProtocol(None), StringTransport()
        end.makeConnection(transport)
        ends.append((end, transport))
    (client, to_server), (server, to_client) = ends
    for _ in range(10):  # the handshake's flights
        out, back = to_server.value(), to_client.value()
        to_server.clear()
        to_client.clear()
        if out:
            server.dataReceived(out)
        if back:
            client.dataReceived(back)
    assert client._handshakeDone and server._handshakeDone
    return client, server, to_server, to_client


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` in pieces, cut at ``points`` (taken modulo its length)."""
    if not data:
        return []
    marks = sorted({0, len(data), *(point % len(data) for point in points)})
    return [data[a:b] for a, b in zip(marks, marks[1:], strict=False)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.one_of(st.integers(0, 600), st.integers(16000, 40000)),
                      min_size=1, max_size=6),
       seed=st.integers(0, 2**32),
       points=st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=12),
       from_server=st.booleans(), close=st.booleans())
def test_what_is_written_arrives_whole_however_records_are_cut(
        pki: PkiPaths, sizes: list[int], seed: int, points: list[int], from_server: bool,
        close: bool) -> None:
    source = random.Random(seed)
    messages = [source.randbytes(size) for size in sizes]  # (records up to 16 KiB: several)
    for compiled in (True, False):
        with calls(compiled):
            client, server, to_server, to_client = connected(pki)
            assert bool(client._c_ssl) is compiled and bool(server._c_ssl) is compiled
            sender, receiver, wire = ((server, client, to_client) if from_server
                                      else (client, server, to_server))
            for message in messages:
                sender.write(message)
            if close:
                sender.loseConnection()
            records = wire.value()
            for piece in cut(records, points):
                receiver.dataReceived(piece)
            got = receiver.wrappedProtocol
            assert bytes(got.data) == b"".join(messages)
            # a close_notify read ends the receiving side's TLS: it closes its transport too
            receiving_transport = to_server if from_server else to_client
            assert receiver._lostTLSConnection is close
            assert receiving_transport.disconnecting is close

