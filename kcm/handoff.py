"""Connections handed from one process to another over a Unix socket pair: kcm-gateway's
supervisor accepts on the KMIP TCP listener and hands each connection to a worker
(:mod:`kcm.gateway.acceptor`); this module is the channel between them and the worker's
side of it.

* :func:`channel_pair` makes the channel: a ``SOCK_SEQPACKET`` socket pair, so that every
  message arrives whole. The supervisor sends each connection as one message of one byte
  carrying the descriptor (``SCM_RIGHTS``); the worker sends :data:`REPORT`: how many
  connections it holds open (with :data:`NOT_READY` set while it cannot serve) and how
  many it has received in all (:func:`pack_report`, :func:`read_open`).
* ``handoff:N`` (:func:`parse_handoff`) is a listener description: the channel inherited
  as descriptor N. :class:`HandoffServerEndpoint` listens on it: each descriptor received
  is adopted by the reactor as a connection of the factory given to ``listen``
  (``adoptStreamConnection``), and every :data:`REPORT_INTERVAL` seconds the worker
  reports, whether or not its counts changed: the report is also its heartbeat, and a
  supervisor that hears nothing from a worker for long takes it as hung
  (:mod:`kcm.gateway.supervisor`). The open connections are the factory's ``protocols``
  (a Twisted ``WrappingFactory``'s, such as the TLS factory of
  :class:`kcm.tls.TLSListener`); a factory without them reports none open.
* The worker sends :data:`READY` as soon as it listens and its ``ready()`` says it can
  serve (checked every :data:`REPORT_INTERVAL`; without one, at once), and again each
  time it can serve after a time it could not (its link down past ``max_stale``), which
  its reports say meanwhile (:data:`NOT_READY`): the supervisor hands new connections to
  the ready workers (:mod:`kcm.gateway.balance`), and a rolling restart waits for READY.
  A supervisor of an older release ignores READY after the first (it is not the size of
  a report) and reads a report with :data:`NOT_READY` as a worker holding 2**31
  connections more: it ranks that worker last.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReadDescriptor,
    IStreamServerEndpoint,
)
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kcm.accept_pause import EXHAUSTED, LOG_INTERVAL
from kcm.throttled_line import ThrottledLine

__all__ = ["HANDOFF_BYTE", "HANDOFF_PREFIX", "NOT_READY", "READY", "REPORT", "REPORT_INTERVAL",
           "HandoffServerEndpoint", "channel_pair", "handoff_description", "pack_report",
           "parse_handoff", "read_open"]

log = Logger()

#: The kind of listener description a worker is given.
HANDOFF_PREFIX = "handoff"
#: A worker's report: open connections (and :data:`NOT_READY`), connections received in all
#: (big-endian).
REPORT = struct.Struct("!II")
#: The bit of a report's first field set while the worker cannot serve.
NOT_READY = 1 << 31
#: A worker's message: it listens and can serve (sent again after a time it could not).
READY = b"ready"
#: The line of connections handed to a worker that has no descriptor for them.
_UNSERVED = ("kcm-gateway worker cannot take the connections handed to it: {error}; "
             "{count} closed unserved in {interval} s (raise ulimit -n or lower "
             "limits.max_connections)")
#: Seconds between a worker's reports (sent whether or not its counts changed).
REPORT_INTERVAL = 0.2
#: What a handed connection's message carries besides its descriptor.
HANDOFF_BYTE = b"\0"
#: Descriptors received per reactor turn at most (the rest wait for the next).
_RECEIVED_PER_TURN = 64
_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(the supervisor's end, the worker's end) of a new channel; the supervisor's end is
    non-blocking, the worker's is for a child process to inherit."""
    supervisor_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    supervisor_end.setblocking(False)
    return supervisor_end, worker_end


def pack_report(open_connections: int, received: int, ready: bool) -> bytes:
    """A worker's :data:`REPORT` (the counts wrap rather than overflow the fields)."""
    first = open_connections % NOT_READY | (0 if ready else NOT_READY)
    return REPORT.pack(first, received % (1 << 32))


def read_open(first: int) -> tuple[int, bool]:
    """(open connections, ready) from a report's first field."""
    return first & ~NOT_READY, not first & NOT_READY


def handoff_description(fileno: int) -> str:
    """The listener description of the channel inherited as descriptor ``fileno``."""
    return f"{HANDOFF_PREFIX}:{fileno}"


def parse_handoff(description: str) -> int | None:
    """The descriptor of a ``handoff:N`` description; None for any other kind."""
    kind, _, rest = description.partition(":")
    if kind.strip().lower() != HANDOFF_PREFIX:
        return None
    if not rest.strip().isdigit():
        raise ValueError(f"{description!r}: handoff: takes a descriptor number (handoff:3)")
    return int(rest)


@implementer(IStreamServerEndpoint)
class HandoffServerEndpoint:
    """Listens on the channel inherited as descriptor ``fileno`` (see the module
    docstring); the descriptor is the port's, closed when it stops listening."""

    def __init__(self, reactor: Any, fileno: int,
                 ready: Callable[[], bool] | None = None) -> None:
        self.reactor = reactor
        self.fileno = fileno
        self.ready = ready

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        port = HandoffPort(self.reactor, socket.socket(fileno=self.fileno), protocolFactory,
                           self.ready)
        port.startListening()
        return succeed(port)


@implementer(IListeningPort, IReadDescriptor)
class HandoffPort:
    """A worker's end of the channel, read by the reactor; the connections it receives
    are ``factory``'s."""

    def __init__(self, reactor: Any, channel: socket.socket, factory: IProtocolFactory,
                 ready: Callable[[], bool] | None = None) -> None:
        self.reactor = reactor
        self.channel = channel
        self.factory = factory
        #: Whether the worker can serve (None: as soon as it listens).
        self._ready: Callable[[], bool] | None = ready
        #: Whether the supervisor was last told READY (and not NOT_READY since).
        self._told_ready = False
        #: Connections received in all.
        self.received = 0
        self._exhausted = ThrottledLine(reactor, _UNSERVED, interval=LOG_INTERVAL, logger=log)
        self._reporter = LoopingCall(self.report)
        self._reporter.clock = reactor
        self._listening = False

    # IListeningPort ---------------------------------------------------------------------
    def startListening(self) -> None:
        self.channel.setblocking(False)
        self.factory.doStart()
        self._listening = True
        self.reactor.addReader(self)
        self._reporter.start(REPORT_INTERVAL, now=True)

    def stopListening(self) -> Deferred[None]:
        if self._listening:
            self.reactor.removeReader(self)
            self._stop()
        return succeed(None)

    def getHost(self) -> UNIXAddress:
        """The channel's address (unnamed): the listening address is the supervisor's."""
        return UNIXAddress(None)

    def _stop(self) -> None:
        self._listening = False
        if self._reporter.running:
            self._reporter.stop()
        self.channel.close()
        self.factory.doStop()

    # IReadDescriptor --------------------------------------------------------------------
    def fileno(self) -> int:
        return self.channel.fileno() if self._listening else -1

    def doRead(self) -> object:
        for _ in range(_RECEIVED_PER_TURN):
            try:
                data, fds, _flags, _address = socket.recv_fds(
                    self.channel, len(HANDOFF_BYTE), 1, _CLOEXEC)
            except BlockingIOError:
                return None
            except OSError:
                return CONNECTION_DONE
            if not data and not fds:
                return CONNECTION_DONE
            if _flags & socket.MSG_CTRUNC:  # no room for it here: the kernel closed it
                self._unserved(errno.EMFILE)
            for fd in fds:
                self.received += 1
                self._adopt(fd)
        return None

    def _adopt(self, fd: int) -> None:
        try:
            with socket.socket(fileno=fd) as connection:
                connection.setblocking(False)
                # The reactor adopts a copy of the descriptor; ours closes with `connection`.
                self.reactor.adoptStreamConnection(connection.fileno(), connection.family,
                                                   self.factory)
        except OSError as e:  # reset by the client before it arrived here
            if e.errno in EXHAUSTED:
                self._unserved(e.errno)
                return
            log.debug("a handed connection could not be adopted: {error}", error=e)

    def _unserved(self, error: int) -> None:
        """A connection handed here was closed unserved for want of descriptors (or
        memory): said once every :data:`~kcm.accept_pause.LOG_INTERVAL` at most."""
        self._exhausted.note(error=os.strerror(error))

    def connectionLost(self, reason: Failure) -> None:
        if self._listening:
            log.info("the supervisor closed the handoff channel; no new connections here")
            self._stop()

    def logPrefix(self) -> str:
        return "kcm-handoff"

    # Reports ----------------------------------------------------------------------------
    def report(self) -> None:
        """Send :data:`READY` when the worker can serve and had not said so since it could
        not, then the report: the counts and whether it can serve (sent every time, as a
        heartbeat)."""
        ready = self._ready is None or self._ready()
        if not ready:
            self._told_ready = False
        elif not self._told_ready and self._send(READY):
            self._told_ready = True
        counts = len(getattr(self.factory, "protocols", ())), self.received
        self._send(pack_report(*counts, ready))

    def _send(self, message: bytes) -> bool:
        try:
            self.channel.send(message, socket.MSG_NOSIGNAL)
        except OSError:  # full (next time) or closed (the reader hears of it)
            return False
        return True
