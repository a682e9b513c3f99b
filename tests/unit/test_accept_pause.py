"""kcm.accept_pause: a listening port out of descriptors stops reading for a moment and
says so once, rather than spin."""

from __future__ import annotations

import contextlib
import errno

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from kcm.accept_pause import PAUSE, PausedWhenExhausted


class Listening:
    def __init__(self) -> None:
        self.error = errno.EMFILE
        self.accepts = 0

    def accept(self):
        self.accepts += 1
        raise OSError(self.error, "Too many open files")

    def getsockname(self):
        return ("127.0.0.1", 5696)


class Port:
    """Twisted's port as far as the wrapper sees it: doRead accepts from its socket and
    swallows the error, as tcp.Port does."""

    def __init__(self) -> None:
        self.socket = Listening()
        self.connected = True
        self.disconnecting = False
        self.reading = True

    def doRead(self) -> None:
        with contextlib.suppress(OSError):
            self.socket.accept()

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


class Endpoint:
    def __init__(self, port: Port) -> None:
        self.port = port

    def listen(self, factory):
        return succeed(self.port)


def listening(port: Port, clock: Clock) -> Port:
    results = []
    PausedWhenExhausted(Endpoint(port), clock, "tcp:5696").listen(None).addCallback(
        results.append)
    assert results == [port]
    return port


def test_out_of_descriptors_the_port_pauses_then_reads_again_and_logs_once() -> None:
    clock, events = Clock(), []
    globalLogPublisher.addObserver(events.append)
    try:
        port = listening(Port(), clock)
        port.doRead()
        assert not port.reading and port.socket.accepts == 1
        clock.advance(PAUSE)
        assert port.reading
        for _ in range(10):
            port.doRead()
            clock.advance(PAUSE)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [e for e in events if e.get("log_namespace") == "kcm.accept_pause"]
    assert len(lines) == 1
    assert lines[0]["listener"] == "tcp:5696" and lines[0]["error"] == "Too many open files"
    assert port.socket.getsockname() == ("127.0.0.1", 5696)  # the rest is the socket's


def test_other_accept_errors_and_a_closed_port_are_left_alone() -> None:
    clock = Clock()
    port = listening(Port(), clock)
    port.socket._sock.error = errno.ECONNABORTED
    port.doRead()
    assert port.reading and not clock.getDelayedCalls()
    port.socket._sock.error = errno.EMFILE
    port.doRead()
    port.connected = False  # stopped listening meanwhile
    clock.advance(PAUSE)
    assert not port.reading
