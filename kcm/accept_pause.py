"""A listening port that stops accepting for a moment when the process is out of file
descriptors (or kernel memory), rather than spin.

Twisted's port, when ``accept()`` fails so, returns and is called again at once: the
listening socket stays readable while connections wait in its backlog. With its reserved
descriptor lost (taken by another file as soon as it was let go) it logged ``Could not
accept new connection (EMFILE)`` on each turn of the reactor: 1.4 million lines in a few
seconds, and a CPU busy. :class:`PausedWhenExhausted` wraps an endpoint whose port then
leaves its socket unread for :data:`PAUSE` seconds after such a failure (new connections
wait in the backlog; those already open are served meanwhile) and says so in one line at
most every :data:`LOG_INTERVAL` seconds (:class:`kcm.throttled_line.ThrottledLine`), as
kcm-gateway's supervisor does for its own listener (:mod:`kcm.gateway.acceptor`)."""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.logger import Logger

from kcm.throttled_line import ThrottledLine

__all__ = ["EXHAUSTED", "LOG_INTERVAL", "PAUSE", "PausedWhenExhausted"]

log = Logger()

#: Seconds the listening socket is left unread after accepting failed for want of
#: descriptors or memory.
PAUSE = 0.5
#: Seconds between two of its log lines at most.
LOG_INTERVAL = 30.0
#: accept() errors that say the process (or the system) has no room for a connection now.
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

_MESSAGE = ("cannot accept connections on {listener}: {error}; new connections wait in "
            "the listen backlog, tried again every {pause} s until descriptors are free "
            "(raise ulimit -n or lower limits.max_connections; {count} time(s) in "
            "{interval} s)")


class _WatchedSocket:
    """A port's listening socket, whose ``accept()`` notes the last failure for want of
    room; everything else is the socket's."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.exhausted: OSError | None = None

    def accept(self) -> tuple[socket.socket, Any]:
        try:
            return self._sock.accept()
        except OSError as e:
            if e.errno in EXHAUSTED:
                self.exhausted = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class PausedWhenExhausted:
    """An endpoint whose listening port pauses ``pause`` seconds after ``accept()`` failed
    for want of descriptors or memory (see the module); ``listener`` names it in the log."""

    def __init__(self, inner: IStreamServerEndpoint, reactor: Any, listener: str, *,
                 pause: float = PAUSE, interval: float = LOG_INTERVAL) -> None:
        self.inner = inner
        self._reactor = reactor
        self._listener = listener
        self._pause = pause
        self._line = ThrottledLine(reactor, _MESSAGE, interval=interval, logger=log)

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:  # noqa: N803
        return self.inner.listen(protocolFactory).addCallback(self._watch)

    def _watch(self, port: IListeningPort) -> IListeningPort:
        sock = getattr(port, "socket", None)
        if sock is None or not hasattr(port, "doRead"):
            return port  # not a socket port: nothing to watch
        watched = port.socket = _WatchedSocket(sock)  # type: ignore[attr-defined]
        read = port.doRead  # type: ignore[attr-defined]
        resume: list[IDelayedCall] = []

        def reopen() -> None:
            resume.clear()
            if getattr(port, "connected", False) and not getattr(port, "disconnecting", False):
                port.startReading()  # type: ignore[attr-defined]

        def read_or_pause() -> object:
            watched.exhausted = None
            result = read()
            failed = watched.exhausted
            if failed is not None and not resume:
                port.stopReading()  # type: ignore[attr-defined]
                resume.append(self._reactor.callLater(self._pause, reopen))
                self._line.note(listener=self._listener, pause=f"{self._pause:g}",
                                error=failed.strerror or os.strerror(failed.errno or 0))
            return result

        port.doRead = read_or_pause  # type: ignore[attr-defined]
        return port
