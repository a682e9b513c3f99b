"""kcm.reactor_dispatch: an epoll reactor hands its events to connections directly, and
what escapes a connection is logged under its log prefix while the others are served."""

from __future__ import annotations

import contextlib
import socket
import time
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


def test_calls_before_the_poll_run_after_the_turn_before_the_kernel_is_asked(
        reactor: Any) -> None:
    reactor_dispatch.install(reactor)
    order: list[str] = []
    left, right = _pair()

    class _Recording(_Reader):
        def doRead(self) -> Any:  # noqa: N802
            order.append("event")
            # A call given during the turn runs at its end, before the next poll.
            reactor_dispatch.call_before_poll(reactor, lambda: order.append("end of turn"))
            return super().doRead()

    reactor.addReader(_Recording(left, "one"))
    right.sendall(b"x")
    reactor.doIteration(1)
    assert order == ["event"]
    reactor.doIteration(0)  # the next poll: the call first, then (no) events
    assert order == ["event", "end of turn"]
    left.close()
    right.close()


def test_a_call_before_the_poll_made_there_waits_for_the_next_and_errors_are_logged(
        reactor: Any) -> None:
    reactor_dispatch.install(reactor)
    ran: list[str] = []
    logged: list[dict[str, Any]] = []

    def first() -> None:
        ran.append("first")
        reactor_dispatch.call_before_poll(reactor, lambda: ran.append("made there"))
        raise RuntimeError("boom")

    reactor_dispatch.call_before_poll(reactor, first)
    reactor_dispatch.call_before_poll(reactor, lambda: ran.append("second"))
    log.addObserver(logged.append)
    try:
        reactor.doIteration(0)
    finally:
        log.removeObserver(logged.append)
    assert ran == ["first", "second"]
    assert any(event.get("isError") for event in logged)
    reactor.doIteration(0)
    assert ran == ["first", "second", "made there"]


def test_the_poll_does_not_sleep_past_what_a_call_before_it_made_due(reactor: Any) -> None:
    reactor_dispatch.install(reactor)
    reactor_dispatch.call_before_poll(reactor, lambda: reactor.callLater(0, lambda: None))
    started = time.monotonic()
    reactor.doIteration(5)  # asked to wait up to 5 s: the timed call is due now
    assert time.monotonic() - started < 1


def test_another_reactor_gets_the_call_at_the_start_of_its_next_turn() -> None:
    clock = Clock()
    ran: list[bool] = []
    reactor_dispatch.call_before_poll(clock, lambda: ran.append(True))
    assert ran == []
    clock.advance(0)
    assert ran == [True]


class _RecordingPoller:
    """An epoll object that records each poll's timeout."""

    def __init__(self, poller: Any) -> None:
        self._poller = poller
        self.timeouts: list[float] = []

    def poll(self, timeout: float, count: int) -> Any:
        self.timeouts.append(timeout)
        return self._poller.poll(timeout, count)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._poller, name)


@pytest.mark.serial  # counts polls within 2 ms and 50 ms: a busy machine's scheduler decides
def test_with_a_busy_poll_window_the_poll_after_events_spins_then_sleeps(reactor: Any) -> None:
    assert reactor_dispatch.install(reactor, busy_poll=0.002) is True
    recording = reactor._poller = _RecordingPoller(reactor._poller)
    left, right = _pair()
    reader = _Reader(left, "one")
    reactor.addReader(reader)
    right.sendall(b"first")
    reactor.doIteration(1)  # slept (nothing had come before), then the event
    assert reader.read == [b"first"]
    assert recording.timeouts == [1]
    recording.timeouts.clear()
    started = time.monotonic()
    reactor.doIteration(0.05)  # nothing comes: asked without sleeping, then slept
    assert time.monotonic() - started >= 0.045
    # Polled without sleeping (as often as 2 ms allow: once, on a machine busy enough to
    # take the CPU away that long), then slept the rest.
    assert len(recording.timeouts) >= 2 and set(recording.timeouts[:-1]) == {0}
    assert 0 < recording.timeouts[-1] < 0.05
    recording.timeouts.clear()
    reactor.doIteration(0.01)  # the last poll found nothing: it sleeps at once
    assert recording.timeouts == [0.01]
    left.close()
    right.close()


def test_without_a_window_the_poll_sleeps_at_once(reactor: Any) -> None:
    reactor_dispatch.install(reactor)
    recording = reactor._poller = _RecordingPoller(reactor._poller)
    left, right = _pair()
    reactor.addReader(_Reader(left, "one"))
    right.sendall(b"x")
    reactor.doIteration(1)
    reactor.doIteration(0.01)
    assert recording.timeouts == [1, 0.01]
    left.close()
    right.close()


def test_the_waker_writes_its_byte_without_twisteds_module_proxy() -> None:
    """Every callFromThread wakes the reactor (kcm-core's writer thread, once per group
    commit): the installed waker writes one byte to the pipe as Twisted's does, without
    looking up os.write through twisted.python.util (a deprecation proxy, about 1.5 µs a
    wake); a full pipe is already awake; a closed waker writes nothing."""
    import os

    from twisted.python import util

    reactor = EPollReactor()
    try:
        waker = reactor.waker
        assert reactor_dispatch.install(reactor)
        proxy_lookups: list[str] = []
        real = type(util).__getattribute__

        def counted(module: Any, name: str) -> Any:
            proxy_lookups.append(name)
            return real(module, name)

        type(util).__getattribute__ = counted  # type: ignore[method-assign]
        try:
            reactor.callFromThread(lambda: None)
            reactor.wakeUp()
        finally:
            type(util).__getattribute__ = real  # type: ignore[method-assign]
        assert proxy_lookups == []
        assert os.read(waker.i, 100) == b"xx"
        os.set_blocking(waker.o, False)
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(waker.o, b"y" * 65536)
        reactor.wakeUp()  # (EAGAIN: nothing raised)
        while True:
            try:
                os.read(waker.i, 1 << 20)
            except BlockingIOError:
                break
        reactor.wakeUp()
        assert os.read(waker.i, 100) == b"x"
        o, waker.o = waker.o, None
        reactor.wakeUp()
        waker.o = o
        with pytest.raises(BlockingIOError):
            os.read(waker.i, 100)
    finally:
        reactor.waker.connectionLost(None)
