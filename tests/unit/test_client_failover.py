"""The blocking client's failover connection: a connection the server closed while idle is
found before anything is sent on it; a request whose connection breaks after it was sent is
sent again only when it may run twice, and its server gives way to the next."""

from __future__ import annotations

import pytest

from kcm.client import Session
from kcm.client.endpoints import Endpoint, FailoverConnection, TlsFiles
from kcm.client.errors import KmipClientError


class FakeServerConnection:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[bytes] = []
        self.idle_closed = False
        self.break_next = False
        self.down = False
        self.connected = False

    def connect(self, deadline: float | None = None) -> None:
        if self.down:
            raise KmipClientError(f"cannot connect to {self.name}")
        self.connected = True

    def closed_by_peer(self) -> bool:
        if self.idle_closed:
            self.idle_closed = self.connected = False
            return True
        return False

    def send(self, request: bytes, deadline: float | None = None) -> bytes:
        self.connect()
        self.sent.append(request)
        if self.break_next:
            self.break_next = self.connected = False
            raise KmipClientError(f"connection to {self.name} failed")
        return b"answer from " + self.name.encode()

    def close(self) -> None:
        self.connected = False


@pytest.fixture
def connection(monkeypatch) -> tuple[FailoverConnection, list[FakeServerConnection]]:
    servers = [FakeServerConnection("a"), FakeServerConnection("b")]
    made = iter(servers)
    monkeypatch.setattr("kcm.client.endpoints.KmipClient", lambda *a, **k: next(made))
    return FailoverConnection(["a:1", "b:1"], TlsFiles("c", "k", "ca")), servers


def test_a_connection_closed_while_idle_is_replaced_before_sending(connection) -> None:
    failover, (a, _) = connection
    assert failover.send(b"create") == b"answer from a"
    a.idle_closed = True
    assert failover.send(b"create") == b"answer from a"
    assert a.sent == [b"create", b"create"]  # each sent once


def test_a_request_that_may_not_run_twice_is_not_sent_again(connection) -> None:
    failover, (a, b) = connection
    failover.send(b"query")
    a.break_next = True
    with pytest.raises(KmipClientError):
        failover.send(b"create")
    assert a.sent == [b"query", b"create"] and b.sent == []


def test_a_repeatable_request_is_sent_again_once_at_the_next_server(connection) -> None:
    failover, (a, b) = connection
    failover.send(b"get")
    a.break_next = True
    a.down = True  # it died with the request
    assert failover.send(b"get", repeatable=True) == b"answer from b"
    assert b.sent == [b"get"] and failover.endpoint.host == "b"


def test_a_server_that_failed_a_request_gives_way_to_the_next(connection) -> None:
    failover, (a, b) = connection
    failover.send(b"query")
    a.break_next = True  # no answer (a hung server: it still takes connections)
    assert failover.send(b"get", repeatable=True) == b"answer from b"
    assert a.sent == [b"query", b"get"] and b.sent == [b"get"]
    assert failover.send(b"create") == b"answer from b"


def test_after_a_failed_create_the_next_request_goes_to_the_next_server(connection) -> None:
    failover, (a, b) = connection
    failover.send(b"query")
    a.break_next = True
    with pytest.raises(KmipClientError):
        failover.send(b"create")
    assert failover.send(b"query") == b"answer from b" and a.sent == [b"query", b"create"]


@pytest.mark.parametrize(("host", "port", "endpoint"), [
    ("127.0.0.1:5698", None, Endpoint("127.0.0.1", 5698)),
    ("127.0.0.1", 5698, Endpoint("127.0.0.1", 5698)),
    ("gateway", None, Endpoint("gateway", 5696)),
    ("[::1]:5698", None, Endpoint("::1", 5698)),
    ("::1", 5698, Endpoint("::1", 5698)),
])
def test_connect_takes_host_and_port_in_one_string_too(monkeypatch, host, port, endpoint
                                                       ) -> None:
    monkeypatch.setattr("kcm.client.endpoints.KmipClient", lambda *a, **k: None)
    session = Session.connect(host, port, cert="c", key="k", ca="ca")
    assert session.transport.endpoints == [endpoint]


def test_a_repeatable_request_is_not_sent_again_once_the_calls_deadline_passed(
        monkeypatch) -> None:
    servers = [FakeServerConnection("a"), FakeServerConnection("b")]
    made = iter(servers)
    monkeypatch.setattr("kcm.client.endpoints.KmipClient", lambda *a, **k: next(made))
    now = [0.0]
    failover = FailoverConnection(["a:1", "b:1"], TlsFiles("c", "k", "ca"), timeout=5.0,
                                  clock=lambda: now[0])
    a, b = servers
    a.break_next = True
    real_send = a.send

    def slow_send(request: bytes, deadline: float | None = None) -> bytes:
        now[0] += 5.0  # the whole timeout went by before the connection broke
        return real_send(request, deadline)

    a.send = slow_send
    with pytest.raises(KmipClientError, match="no answer within 5 s .the call's timeout."):
        failover.send(b"get", repeatable=True)
    assert b.sent == [] and failover.endpoint == Endpoint("b", 1)
