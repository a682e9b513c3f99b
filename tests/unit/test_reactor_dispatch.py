"""kcm.reactor_dispatch: an epoll reactor hands its events to connections directly, and
what escapes a connection is logged under its log prefix while the others are served."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import pytest
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.task import Clock
from twisted.python import log

from kcm import reactor_dispatch


class _Reader:
    """A readable end of a socket pair: what it read, or a failure on the way out."""

    def __init__(self, sock: socket.socket, prefix: str, *, fail_on_close: bool = False
                 ) -> None:
        self.sock = sock
        self.prefix = prefix
        self.fail_on_close = fail_on_close
        self.read: list[bytes] = []
        self.lost: list[Any] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:  # noqa: N802 (Twisted's name)
        return self.prefix

    def doRead(self) -> Any:  # noqa: N802
        data = self.sock.recv(100)
        self.read.append(data)
        return None if data else ConnectionError("closed")

    def connectionLost(self, reason: Any) -> None:  # noqa: N802
        self.lost.append(reason)
        if self.fail_on_close:
            raise RuntimeError("connectionLost failed")


@pytest.fixture
def reactor() -> Any:
    made = EPollReactor()
    yield made
    for reader in list(made.getReaders()):
        with contextlib.suppress(OSError):  # (a test closed its socket)
            made.removeReader(reader)
    made._poller.close()


def _pair() -> tuple[socket.socket, socket.socket]:
    left, right = socket.socketpair()
    left.setblocking(False)
    return left, right


def test_an_epoll_reactor_dispatches_without_the_log_context(reactor: Any,
                                                             monkeypatch: Any) -> None:
    assert reactor_dispatch.install(reactor) is True
    # The legacy wrapper is not on the way any more.
    monkeypatch.setattr(log, "callWithLogger", lambda *a, **k: pytest.fail("wrapped"))
    left, right = _pair()
    reader = _Reader(left, "one")
    reactor.addReader(reader)
    right.sendall(b"hello")
    reactor.doIteration(1)
    assert reader.read == [b"hello"]
    left.close()
    right.close()


def test_an_escaping_error_is_logged_as_the_connections_and_the_rest_are_served(
        reactor: Any) -> None:
    reactor_dispatch.install(reactor)
    logged: list[dict[str, Any]] = []
    log.addObserver(logged.append)
    try:
        failing_end, failing_peer = _pair()
        failing = _Reader(failing_end, "failing-connection", fail_on_close=True)
        fine_end, fine_peer = _pair()
        fine = _Reader(fine_end, "fine")
        reactor.addReader(failing)
        reactor.addReader(fine)
        failing_peer.close()  # its doRead finds the end: connectionLost raises
        fine_peer.sendall(b"still served")
        reactor.doIteration(1)
        reactor.doIteration(0)
    finally:
        log.removeObserver(logged.append)
    assert fine.read == [b"still served"]
    assert len(failing.lost) == 1
    errors = [event for event in logged if event.get("isError")]
    assert errors, "the escaping error was not logged"
    assert errors[-1]["system"] == "failing-connection"
    assert "connectionLost failed" in str(errors[-1]["failure"].value)
    for end in (failing_end, fine_end, fine_peer):
        end.close()


def test_another_reactor_is_left_alone() -> None:
    clock = Clock()
    assert reactor_dispatch.install(clock) is False
    assert not hasattr(clock, "doIteration")
