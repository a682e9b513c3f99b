"""kcm-gateway's supervisor on a TCP or Unix listener: it accepts every connection itself
and hands each one to the worker pinned to the CPU it arrives on (TCP) or the worker holding
the fewest (:class:`kcm.gateway.balance.LeastConnections`), over that worker's channel
(:mod:`kcm.handoff`), then closes its own copy.

A handful of long-lived connections (databases and storage arrays keep a few) is what
kcm-gateway mostly serves; spread by a hash (SO_REUSEPORT) or by whichever worker wakes
first (one shared accepting socket), eight of them often fall 6/2 on two workers, and two
workers then serve little more than one. Handed out by count they fall 4/4.

* The listening socket is read by :class:`Acceptor` itself (not a Twisted port): at most
  :data:`ACCEPTS_PER_TURN` connections each time it is readable. When the process is out
  of descriptors (or accepting fails otherwise) it logs once and stops reading for
  :data:`EXHAUSTED_PAUSE` seconds rather than spin; while no worker has a channel it does
  not read, and connections wait in the listen backlog.
* A connection goes to the least loaded worker, or, when the workers are pinned to CPUs
  (:mod:`kcm.gateway.placement`), to the one on the CPU its packets arrive on while that
  worker is not more than :data:`~kcm.gateway.balance.NEAR_SLACK` connections above the
  least loaded; if sending fails there (the worker is gone, its channel is full) the next
  is tried, and if none takes it, it is closed. :attr:`Acceptor.handoffs` counts what was
  handed to each worker, and whether by CPU or by count; :attr:`Acceptor.unplaced` the
  connections closed so.
* Each channel is read for the worker's reports (open connections, connections received)
  and closes when the worker exits: from then on the worker is not chosen.
"""

from __future__ import annotations

import errno
import socket
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReadDescriptor
from twisted.internet.main import CONNECTION_DONE
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kcm.gateway.balance import LeastConnections
from kcm.gateway.placement import incoming_cpu
from kcm.handoff import HANDOFF_BYTE, READY, REPORT, channel_pair

__all__ = ["ACCEPTS_PER_TURN", "EXHAUSTED_PAUSE", "Acceptor"]

log = Logger()

#: Connections accepted at most each time the listening socket is readable.
ACCEPTS_PER_TURN = 64
#: Seconds the listening socket is left unread after accepting failed (no descriptors).
EXHAUSTED_PAUSE = 0.5
#: Reports read from one channel at most each time it is readable.
_REPORTS_PER_TURN = 16
#: accept() errors that concern only the connection being accepted.
_SKIPPED = (errno.ECONNABORTED, errno.EINTR, errno.EPROTO)


@implementer(IReadDescriptor)
class Acceptor:
    """Accepts on the non-blocking listening socket ``listening`` (while started) and
    hands the connections to the workers that have a channel (:meth:`open_channel`)."""

    def __init__(self, reactor: Any, listening: socket.socket, *,
                 pause: float = EXHAUSTED_PAUSE,
                 worker_up: Callable[[int], object] | None = None,
                 near: Mapping[int, Collection[int]] | None = None,
                 incoming_cpu: Callable[[socket.socket], int | None] = incoming_cpu) -> None:
        """``near``: the workers pinned to each CPU (:func:`kcm.gateway.placement.
        workers_by_cpu`; none: connections go by count only); ``incoming_cpu``: the CPU a
        connection's packets arrive on."""
        self.reactor = reactor
        self.listening = listening
        self.pause = pause
        self.near = dict(near or {})
        self.incoming_cpu = incoming_cpu
        #: Connections handed, by (worker, ``"cpu"`` when it went to a worker on the CPU
        #: its packets arrive on, else ``"count"``).
        self.handoffs: Counter[tuple[int, str]] = Counter()
        #: Connections closed because no worker could take them.
        self.unplaced = 0
        #: Called with a worker's index when it says it is ready on its channel
        #: (:data:`~kcm.handoff.READY`).
        self.worker_up = worker_up
        self.balance = LeastConnections()
        #: Each worker's channel, by index.
        self.channels: dict[int, _Channel] = {}
        self._started = False
        self._reading = False
        self._paused: IDelayedCall | None = None
        #: Set while the start holds the first connections back (:meth:`start`).
        self._holding: IDelayedCall | None = None
        self._logged_accept_error = False
        self._logged_unplaced = False

    # Channels -----------------------------------------------------------------------------
    def open_channel(self, worker: int) -> socket.socket:
        """A new channel to ``worker`` (in place of any it had); returns the worker's end,
        for the worker process to inherit (and the caller to close once it is spawned)."""
        self.close_channel(worker)
        supervisor_end, worker_end = channel_pair()
        channel = self.channels[worker] = _Channel(self, worker, supervisor_end)
        self.balance.add(worker)
        self.reactor.addReader(channel)
        self._update_reading()
        return worker_end

    def close_channel(self, worker: int, channel: _Channel | None = None) -> None:
        """Close ``worker``'s channel (only if it is ``channel``, when given): it is chosen
        no more."""
        current = self.channels.get(worker)
        if current is None or (channel is not None and current is not channel):
            return
        del self.channels[worker]
        self.balance.remove(worker)
        self.reactor.removeReader(current)
        current.sock.close()
        self._release_if_all_ready()  # a worker gone at the start holds nothing back
        self._update_reading()

    def ready(self, worker: int) -> None:
        """``worker`` said it is ready on its channel."""
        self.balance.mark_ready(worker)
        self._release_if_all_ready()
        if self.worker_up is not None:
            self.worker_up(worker)

    # Reading the listening socket ---------------------------------------------------------
    def start(self, hold: float = 0.0) -> None:
        """Accept from now on; with ``hold``, only once every worker with a channel has
        said it is ready, or ``hold`` seconds from now: the first connections (a pool's,
        made as the gateway starts) spread over all the workers rather than going to the
        first one ready, and they are long-lived."""
        self._started = True
        if hold > 0:
            self._holding = self.reactor.callLater(hold, self._release)
        self._update_reading()

    def _release_if_all_ready(self) -> None:
        """End the start's hold once every worker with a channel (one at least) is ready."""
        if (self._holding is not None and self.channels
                and all(w in self.balance.ready for w in self.channels)):
            self._release()

    def _release(self) -> None:
        if self._holding is not None and self._holding.active():
            self._holding.cancel()
        self._holding = None
        self._update_reading()

    def stop(self) -> None:
        self._started = False
        if self._holding is not None:
            self._release()
        if self._paused is not None and self._paused.active():
            self._paused.cancel()
        self._paused = None
        for worker in list(self.channels):
            self.close_channel(worker)
        self._update_reading()

    def _update_reading(self) -> None:
        wanted = (self._started and self._paused is None and self._holding is None
                  and len(self.balance) > 0)
        if wanted and not self._reading:
            self.reactor.addReader(self)
        elif self._reading and not wanted:
            self.reactor.removeReader(self)
        self._reading = wanted

    def fileno(self) -> int:
        return self.listening.fileno()

    def doRead(self) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                connection, _address = self.listening.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in _SKIPPED:
                    continue
                self._accept_failed(e)
                return
            self._logged_accept_error = False
            self.hand(connection)
            if not self._reading:  # no worker left
                return

    def _accept_failed(self, e: OSError) -> None:
        if not self._logged_accept_error:
            self._logged_accept_error = True
            log.error("kcm-gateway supervisor: accept failed ({error}); pausing new "
                      "connections {pause:g} s at a time until it works again",
                      error=e.strerror or str(e), pause=self.pause)
        self._paused = self.reactor.callLater(self.pause, self._resume)
        self._update_reading()

    def _resume(self) -> None:
        self._paused = None
        self._update_reading()

    def hand(self, connection: socket.socket) -> None:
        """Send ``connection`` to the first worker that takes it (those near the CPU its
        packets arrive on first, then the least loaded), else drop it; the supervisor's
        copy is closed either way."""
        with connection:
            near: Collection[int] = ()
            if self.near:
                cpu = self.incoming_cpu(connection)
                near = self.near.get(cpu, ()) if cpu is not None else ()
            for worker in self.balance.ranked(near):
                try:
                    socket.send_fds(self.channels[worker].sock, [HANDOFF_BYTE],
                                    [connection.fileno()], socket.MSG_NOSIGNAL)
                except OSError:
                    continue
                self.balance.handed(worker)
                self.handoffs[worker, "cpu" if worker in near else "count"] += 1
                self._logged_unplaced = False
                return
            self.unplaced += 1
            if not self._logged_unplaced:
                self._logged_unplaced = True
                log.warn("kcm-gateway supervisor: no worker could take a connection; "
                         "closing it (and any more until one can)")

    def connectionLost(self, reason: Failure) -> None:
        self._reading = False  # the listening socket is closed by its owner

    def logPrefix(self) -> str:
        return "kcm-acceptor"


@implementer(IReadDescriptor)
class _Channel:
    """The supervisor's end of one worker's channel: reads the worker's reports."""

    def __init__(self, acceptor: Acceptor, worker: int, sock: socket.socket) -> None:
        self.acceptor = acceptor
        self.worker = worker
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> object:
        for _ in range(_REPORTS_PER_TURN):
            try:
                report = self.sock.recv(REPORT.size)
            except BlockingIOError:
                return None
            except OSError:
                return CONNECTION_DONE
            if not report:
                return CONNECTION_DONE
            if len(report) == REPORT.size:
                self.acceptor.balance.reported(self.worker, *REPORT.unpack(report))
            elif report == READY and self.worker not in self.acceptor.balance.ready:
                self.acceptor.ready(self.worker)
        return None

    def connectionLost(self, reason: Failure) -> None:
        self.acceptor.close_channel(self.worker, self)

    def logPrefix(self) -> str:
        return "kcm-handoff-channel"
