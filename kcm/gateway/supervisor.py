"""kcm-gateway on every core: with ``workers`` other than 1, the twistd process started is a
supervisor and the gateways are its worker processes.

* :class:`SharedListener` binds the KMIP address once, in the supervisor: a port in use
  stops the supervisor when it starts. On a TCP or Unix stream listener (``tcp:``,
  ``tcp6:``, ``unix:``, or an ``fd:`` socket of those) the supervisor accepts every
  connection itself and hands it to the worker pinned to the CPU it arrives on, if any
  (:mod:`kcm.gateway.placement`; TCP only), or the worker with the fewest open connections
  (:mod:`kcm.gateway.acceptor`), over a
  Unix socket pair of that worker's (a new one each time it is started) that the worker
  inherits as descriptor :data:`WORKER_LISTEN_FD` and listens on as ``handoff:3``
  (:mod:`kcm.handoff`); the worker reports its open connections and whether it can serve
  back over it, every 0.2 s (:data:`kcm.handoff.REPORT_INTERVAL`). A listener of any
  other kind (an endpoint plugin's) is listened on once and never accepted on in the
  supervisor; each worker inherits that socket as descriptor :data:`WORKER_LISTEN_FD` and
  adopts it (``fd:3``, see :func:`kcm.tls.plain_server_endpoint`), and each new
  connection goes to whichever worker accepts it first. Everything else in a worker is one
  kcm-gateway as with ``workers = 1``: its TLS listener and connection guard, its link to
  the core, its L3 cache and the full event stream.
* :class:`WorkerPool` starts the workers (``reactor.spawnProcess`` of ``twistd -n
  kcm-gateway --worker I``), restarts one that exits after a back-off that grows while it
  keeps failing (:data:`RESTART_BACKOFF`: 0.2 s doubling up to 30 s, back to 0.2 s once a
  worker has run :data:`STABLE_AFTER` seconds), restarts them one at a time on SIGHUP
  (:meth:`WorkerPool.reload`: the others serve meanwhile, and a new worker that cannot
  start stops the restart), and stops them (SIGTERM, then SIGKILL after a grace period)
  when it stops. twistd turns SIGTERM and SIGINT to the supervisor into that stop.
* A hung worker (stopped, deadlocked, in a busy loop) stops reporting on its channel: after
  :data:`kcm.gateway.balance.SILENT_AFTER` seconds it gets no new connections, and after
  ``hung_after`` seconds (the ``hung_worker_timeout`` setting, 10 by default; before its
  first report: :data:`UP_TIMEOUT`, the start's allowance, if longer) the pool kills it
  (SIGKILL) and restarts it
  as any worker that died. Workers on a shared socket say nothing: no such watch.
* A worker ignores SIGHUP (:class:`SighupIgnored`): ``systemctl kill -s HUP`` signals
  every process of the unit, and a reload is the supervisor's alone.
* A worker's standard input is a pipe from the supervisor that nobody writes to;
  :class:`SupervisorLifeline` stops the worker when it reads end-of-file there, so a
  supervisor that dies without stopping its workers (SIGKILL) does not leave them serving.
"""

from __future__ import annotations

import math
import os
import signal
import socket
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReadDescriptor
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kcm.gateway.acceptor import Acceptor
from kcm.gateway.balance import LeastConnections
from kcm.gateway.config import GatewayConfig
from kcm.gateway.placement import usable_cpus
from kcm.handoff import handoff_description
from kcm.logging import printable
from kcm.process import ProcessService
from kcm.tls import plain_server_endpoint

__all__ = ["RESTART_BACKOFF", "STABLE_AFTER", "WORKER_LISTEN_FD",
           "GatewaySupervisor", "SharedListener", "SighupIgnored", "StartCheck",
           "SupervisorLifeline", "WorkerPool", "worker_count"]

log = Logger()

#: The descriptor a worker finds its channel (or the shared listening socket) on.
WORKER_LISTEN_FD = 3
#: Seconds before restarting a worker that exited, by how many times in a row it failed
#: (0: the first time).
RESTART_BACKOFF: Callable[[int], float] = backoffPolicy(initialDelay=0.2, maxDelay=30.0,
                                                         factor=2.0, jitter=lambda: 0.0)
#: A worker that ran this many seconds before exiting starts the back-off afresh.
STABLE_AFTER = 30.0
#: Seconds stopping workers have to exit after SIGTERM before they are killed, by default
#: (kcm-gateway gives its pool the ``drain_timeout`` setting plus :data:`kcm.drain.STOP_MARGIN`).
STOP_TIMEOUT = 10.0
#: At the supervisor's start: seconds new connections wait (in the backlog) for every worker
#: to be ready, so that they spread over all of them (kcm.gateway.acceptor).
START_HOLD = 5.0
#: In a rolling restart (SIGHUP): seconds a restarted worker has to say it is ready on its
#: channel; past them the restart stops there.
UP_TIMEOUT = 30.0
#: In a rolling restart of workers on a shared socket (which say nothing): seconds after a
#: worker is started again before the next is restarted.
SETTLE = 2.0
#: Seconds between the pool's looks at its workers' reports.
WATCH_INTERVAL = 0.5

#: ``reactor.spawnProcess``'s signature: (protocol, executable, args, env=, path=, childFDs=).
Spawn = Callable[..., Any]


def worker_count(workers: int, cpus: Callable[[], int] | None = None) -> int:
    """How many worker processes the ``workers`` setting means: itself, or for 0 the number
    of CPUs this process may run on (``cpus``; by default its CPU affinity, else the
    machine's CPU count)."""
    if workers > 0:
        return workers
    return max(1, (cpus or (lambda: len(usable_cpus())))())


class StartCheck(Service):
    """Runs ``check`` when it starts; its error fails the start. The supervisor checks what
    its workers will read (the TLS files, the gateway name the certificate must carry) so
    that a configuration no worker could start with stops it at once, as it would stop one
    gateway process, instead of a restart loop."""

    def __init__(self, check: Callable[[], object], *, name: str) -> None:
        self.check = check
        self.name = name  # type: ignore[assignment]

    def startService(self) -> None:
        self.check()
        super().startService()


class SharedListener(Service):
    """Binds the listener ``description`` when it starts and serves the workers from it
    (see the module docstring): a TCP or Unix listener through an :class:`Acceptor` that
    hands connections to the workers' channels (:attr:`acceptor`), any other as the
    listening socket the workers inherit; closes it when it stops.

    The worker pool asks, for each worker it starts, for the descriptor to give it
    (:meth:`worker_starting`), says when the spawn is done (:meth:`worker_spawned`) and when
    the worker is gone (:meth:`worker_gone`)."""

    name = "kcm-kmip-socket"

    def __init__(self, reactor: Any, description: str, *,
                 near: Mapping[int, Collection[int]] | None = None) -> None:
        """``near``: the workers pinned to each CPU, which a TCP listener's connections
        arriving on that CPU go to first (:mod:`kcm.gateway.placement`)."""
        self.reactor = reactor
        self.description = description
        self.near = dict(near or {})
        self.port: IListeningPort | None = None
        #: Set while running on a TCP or Unix listener.
        self.acceptor: Acceptor | None = None
        #: The workers' ends of their channels, until they are spawned.
        self._worker_ends: dict[int, socket.socket] = {}
        #: Called with a worker's index once it says on its channel that it is ready (TCP
        #: and Unix listeners only: :attr:`tells_when_up`).
        self.on_worker_up: Callable[[int], object] | None = None

    @property
    def tells_when_up(self) -> bool:
        """Whether :attr:`on_worker_up` will be called (a worker on a shared socket says
        nothing)."""
        return self.acceptor is not None

    @property
    def worker_listen(self) -> str:
        """The ``listen`` description of a worker while running."""
        if self.acceptor is not None:
            return handoff_description(WORKER_LISTEN_FD)
        return f"fd:{WORKER_LISTEN_FD}"

    def worker_starting(self, index: int) -> int:
        """The descriptor worker ``index``, about to be spawned, inherits as
        :data:`WORKER_LISTEN_FD`."""
        if self.port is None:
            raise RuntimeError("the KMIP listener is not bound")
        if self.acceptor is None:
            return self.port.fileno()  # type: ignore[attr-defined, no-any-return]
        worker_end = self._worker_ends[index] = self.acceptor.open_channel(index)
        return worker_end.fileno()

    def worker_spawned(self, index: int) -> None:
        """Worker ``index`` was spawned, or failed to be: the supervisor's copy of the
        worker's end of its channel is closed."""
        worker_end = self._worker_ends.pop(index, None)
        if worker_end is not None:
            worker_end.close()

    def worker_gone(self, index: int) -> None:
        """Worker ``index`` exited or could not be started: it is given no connections."""
        if self.acceptor is not None:
            self.acceptor.close_channel(index)

    def _worker_up(self, index: int) -> None:
        if self.on_worker_up is not None:
            self.on_worker_up(index)

    def last_heard(self, index: int) -> float | None:
        """When worker ``index`` last reported on its channel (reactor time); None if it
        has not since the channel was opened, has no channel, or says nothing (a shared
        socket)."""
        return None if self.acceptor is None else self.acceptor.balance.last_heard(index)

    def silent(self, index: int) -> bool:
        """Whether worker ``index`` gets no new connections for its silence
        (:meth:`kcm.gateway.balance.LeastConnections.silent`)."""
        return self.acceptor is not None and self.acceptor.balance.silent(index)

    def startService(self) -> None:
        outcome: list[Any] = []
        never_used = Factory.forProtocol(Protocol)
        never_used.noisy = False  # no "Starting factory" lines for a factory never called
        listening = plain_server_endpoint(self.reactor, self.description).listen(never_used)
        listening.addBoth(outcome.append)
        if not outcome:  # stream endpoints that bind (tcp, unix, fd) answer at once
            listening.cancel()
            raise RuntimeError(f"{self.description}: the listener did not bind at once")
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        port = self.port = outcome[0]
        # The Twisted port only binds: the workers accept, or the acceptor for them (nothing
        # has accepted yet: the reactor has not run since the bind).
        port.stopReading()  # type: ignore[attr-defined]
        address = port.getHost()
        # Unix ones too: shared, connections fell unevenly and workers said nothing.
        if isinstance(address, (IPv4Address, IPv6Address, UNIXAddress)):
            self.acceptor = Acceptor(self.reactor, port.socket,  # type: ignore[attr-defined]
                                     worker_up=self._worker_up, near=self.near)
            # Timed on the reactor, so that silent (hung) workers are ranked out; no
            # channel is open yet.
            self.acceptor.balance = LeastConnections(clock=self.reactor.seconds)
            self.acceptor.start(hold=START_HOLD)
            how = ("handing each connection to the worker on the CPU it arrives on, or the "
                   "one with the fewest" if self.near else
                   "handing each connection to the worker with the fewest")
        else:
            how = "shared by the workers"
        log.info("kcm-gateway supervisor: KMIP listener on {address}, {how}",
                 address=str(address), how=how)
        super().startService()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        acceptor, self.acceptor = self.acceptor, None
        if acceptor is not None:
            acceptor.stop()
        for index in list(self._worker_ends):
            self.worker_spawned(index)
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()  # type: ignore[return-value]
        return None


@dataclass
class _Worker:
    index: int
    process: Any  # IProcessTransport
    #: Its process id (the transport forgets it once the process is reaped).
    pid: int
    started: float
    #: Until when an exit is one we asked for (a forwarded signal), not a failure.
    expected_until: float = -1.0
    #: Whether its silence on the channel was logged (it gets no new connections).
    silence_logged: bool = False
    #: Whether it was killed as hung.
    killed: bool = False
    #: When it last reported on its channel (None: never yet).
    heard: float | None = None
    #: When its channel was found closed after it had reported: it is stopping (a SIGTERM
    #: of its own, its drain under way).
    closed_at: float | None = None


@dataclass
class _Reload:
    """A rolling restart under way."""

    #: The workers still to restart, in order.
    left: list[int]
    #: The one being restarted, and where it is: ``stopping`` (asked to stop) or
    #: ``starting`` (started again, not yet up).
    current: int | None = None
    stage: str = ""
    timer: IDelayedCall | None = None


#: The longest line of a worker's standard error logged (characters; cut beyond), and
#: the most bytes of an unfinished one kept.
STDERR_LINE = 240
STDERR_KEPT = 4096


class _WorkerProtocol(ProcessProtocol):
    """Tells the pool when its worker exits, and logs what the worker writes on its standard
    error (a usage error before its log starts, an interpreter's fatal error), one event a
    line: a daemonized supervisor's standard error, which the workers' was, is /dev/null.
    The worker's log goes straight to the supervisor's standard output, inherited."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self._partial = b""

    def errReceived(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        self._partial = self._partial[-STDERR_KEPT:]
        for line in lines:
            self._log(line)

    def _log(self, line: bytes) -> None:
        text = printable(line.decode("utf-8", "replace").rstrip(), STDERR_LINE)
        if text:
            log.warn("kcm-gateway worker {index} (standard error): {line}",
                     index=self.index, line=text)

    def processEnded(self, reason: Failure) -> None:
        if self._partial:
            self._log(self._partial)
            self._partial = b""
        self.pool.worker_ended(self.index, reason)


class WorkerPool(Service):
    """Runs ``count`` workers, each the process ``command(index)`` (an argv list, the
    executable first) with the descriptor the ``listener`` gives it as
    :data:`WORKER_LISTEN_FD` (:meth:`SharedListener.worker_starting`), a pipe from the
    supervisor as standard input, the supervisor's standard output, and a pipe to the
    supervisor as standard error (logged by the supervisor, a line an event). A worker
    that exits while the pool runs is started again after ``backoff(failures in a row)``
    seconds (the count restarts once a worker has run
    ``stable_after`` seconds; an exit after a forwarded signal is no failure and restarts at
    once). ``reload_signals`` (SIGHUP) received by this process restart the workers one at
    a time (:meth:`reload`); ``forwarded_signals`` are sent on to every worker.
    Stopping sends SIGTERM to every worker and SIGKILL to those still running after
    ``stop_timeout`` seconds; the Deferred it returns fires once all have exited.

    With ``hung_after`` (and a listener that tells when workers are up: channels), a
    worker that has not reported on its channel for ``hung_after`` seconds (before its
    first report: ``max(hung_after, up_timeout)`` from its start) is killed (SIGKILL) and
    restarted as a worker that failed; one silent for
    :data:`~kcm.gateway.balance.SILENT_AFTER` seconds is logged (it gets no new
    connections meanwhile), and again when it reports again.

    Time and process creation come from ``reactor`` (``callLater``, ``seconds``,
    ``callFromThread``) and ``spawn`` (``reactor.spawnProcess`` by default)."""

    name = "kcm-gateway-workers"

    def __init__(self, count: int, command: Callable[[int], Sequence[str]],
                 listener: SharedListener, *, reactor: Any, spawn: Spawn | None = None,
                 backoff: Callable[[int], float] = RESTART_BACKOFF,
                 stable_after: float = STABLE_AFTER, stop_timeout: float = STOP_TIMEOUT,
                 up_timeout: float = UP_TIMEOUT, settle: float = SETTLE,
                 hung_after: float | None = None,
                 reload_signals: Collection[int] = (signal.SIGHUP,),
                 forwarded_signals: Collection[int] = (),
                 env: Callable[[], Mapping[str, str]] = lambda: dict(os.environ)) -> None:
        if count < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.count = count
        self.command = command
        self.listener = listener
        self.reactor = reactor
        self._spawn = spawn
        self.backoff = backoff
        self.stable_after = stable_after
        self.stop_timeout = stop_timeout
        self.up_timeout = up_timeout
        self.settle = settle
        self.hung_after = hung_after
        self._watch = LoopingCall(self.watch)
        self._watch.clock = reactor
        #: When the watch last looked, and when it found the supervisor had not run for
        #: long (stopped itself, a paused VM): silence before then is not the workers'.
        self._watched_at: float | None = None
        self._resumed_at = -math.inf
        self.reload_signals = tuple(reload_signals)
        self.forwarded_signals = tuple(forwarded_signals)
        self._env = env
        #: The running workers by index.
        self.workers: dict[int, _Worker] = {}
        #: Failures in a row, by index (what the back-off counts).
        self.failures: dict[int, int] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._previous_handlers: dict[int, Any] = {}
        self._stopped: Deferred[None] | None = None
        self._kill: IDelayedCall | None = None
        #: The rolling restart under way, if any.
        self._reload: _Reload | None = None
        #: How many times each worker was started again (after an exit, for any reason).
        self._starts: dict[int, int] = {}

    def pids(self) -> dict[int, int]:
        """The running workers' process ids, by index."""
        return {index: worker.pid for index, worker in self.workers.items()}

    def restarts(self) -> dict[int, int]:
        """How many times each worker was started again since the supervisor started."""
        return {index: max(0, starts - 1) for index, starts in self._starts.items()}

    def startService(self) -> None:
        super().startService()
        for signum in self.reload_signals:
            self._previous_handlers[signum] = signal.signal(
                signum, lambda number, frame: self.reactor.callFromThread(self.reload))
        for signum in self.forwarded_signals:
            self._previous_handlers[signum] = signal.signal(
                signum, lambda number, frame: self.reactor.callFromThread(self.forward, number))
        for index in range(1, self.count + 1):
            self.failures[index] = 0
            self._start(index)
        if self.hung_after is not None:
            self._watch.start(WATCH_INTERVAL, now=False)

    def watch(self) -> None:
        """Log workers that fell silent on their channel (or reported again), and kill
        those silent past ``hung_after`` (see the class docstring)."""
        if self.hung_after is None or not getattr(self.listener, "tells_when_up", False):
            return
        now = self.reactor.seconds()
        if self._watched_at is not None and now - self._watched_at > self.hung_after / 2:
            # The supervisor itself did not run meanwhile: the reports wait unread.
            self._resumed_at = now
        self._watched_at = now
        for worker in list(self.workers.values()):
            if worker.killed or now <= worker.expected_until:  # asked to stop: its exit
                continue
            heard = self.listener.last_heard(worker.index)
            if heard is not None:
                worker.heard, worker.closed_at = heard, None
                since, limit = heard, self.hung_after
                self._log_silence(worker, now - heard)
            elif worker.heard is not None:
                # It reported, then closed its channel: it is stopping (and draining), not
                # hung; it has ``stop_timeout`` to exit, as when we stop it.
                if worker.closed_at is None:
                    worker.closed_at = now
                since, limit = worker.closed_at, self.stop_timeout
            else:
                since, limit = worker.started, max(self.hung_after, self.up_timeout)
            since = max(since, self._resumed_at)
            if now - since > limit:
                self._kill_hung(worker, now - since)

    def _log_silence(self, worker: _Worker, silent_for: float) -> None:
        silent = self.listener.silent(worker.index)
        if silent and not worker.silence_logged:
            log.warn("kcm-gateway worker {index} (pid {pid}) has not reported for {t:.1f} s; "
                     "no new connections go to it", index=worker.index, pid=worker.pid,
                     t=silent_for)
        elif worker.silence_logged and not silent:
            log.info("kcm-gateway worker {index} (pid {pid}) reports again", index=worker.index,
                     pid=worker.pid)
        worker.silence_logged = silent

    def _kill_hung(self, worker: _Worker, silent_for: float) -> None:
        worker.killed = True
        log.error("kcm-gateway worker {index} (pid {pid}) has not reported for {t:.1f} s: "
                  "hung; killing it", index=worker.index, pid=worker.pid, t=silent_for)
        self.listener.worker_gone(worker.index)
        self._signal(worker, signal.SIGKILL)

    def forward(self, signum: int) -> None:
        """Send ``signum`` to every running worker (what a forwarded signal does)."""
        log.info("forwarding signal {signal} to {count} worker(s)",
                 signal=signal.Signals(signum).name, count=len(self.workers))
        until = self.reactor.seconds() + self.stop_timeout
        for worker in list(self.workers.values()):
            worker.expected_until = until
            self._signal(worker, signum)

    def reload(self) -> None:
        """Restart the running workers one at a time, so that the others serve meanwhile
        (what SIGHUP does): SIGTERM to one (SIGKILL after ``stop_timeout``), start it again
        once it has exited, and go on to the next once the new one is up: it has said on
        its channel that it is ready, linked to the core (:meth:`worker_up`), or, on a
        shared socket (where workers say nothing), ``settle`` seconds after it started. A
        new worker that exits before it is up, or is not ready within ``up_timeout``, stops
        the restart: the workers not restarted yet keep running as they were (a
        configuration they cannot start with, or a core they cannot reach, takes one
        worker out of service, not all). A SIGHUP during a restart is ignored."""
        if not self.running:
            return
        if self._reload is not None:
            log.info("a restart of the kcm-gateway workers is under way; SIGHUP ignored")
            return
        self._reload = _Reload(sorted(self.workers))
        log.info("restarting {count} kcm-gateway worker(s) one at a time",
                 count=len(self._reload.left))
        self._reload_next()

    def worker_up(self, index: int) -> None:
        """Worker ``index``, as last started, said it is ready (:data:`kcm.handoff.READY`)."""
        reload = self._reload
        if (reload is not None and reload.current == index and reload.stage == "starting"
                and index in self.workers):
            log.info("kcm-gateway worker {index} is up again", index=index)
            self._reload_next()

    def _reload_next(self) -> None:
        reload = self._reload
        assert reload is not None
        self._reload_timer(None)
        while reload.left:
            index = reload.left.pop(0)
            worker = self.workers.get(index)
            if worker is None:  # waiting for its restart after a failure: it starts anew
                continue
            reload.current, reload.stage = index, "stopping"
            worker.expected_until = math.inf  # its exit is the one asked for
            log.info("restarting kcm-gateway worker {index} (pid {pid})", index=index,
                     pid=worker.pid)
            self._signal(worker, signal.SIGTERM)
            # New connections go to the others from now on: one handed to a worker that
            # is stopping could be lost with it.
            self.listener.worker_gone(index)
            self._reload_timer(self.reactor.callLater(self.stop_timeout, self._reload_kill,
                                                      worker))
            return
        self._reload = None
        log.info("every kcm-gateway worker was restarted")

    def _reload_timer(self, timer: IDelayedCall | None) -> None:
        reload = self._reload
        if reload is None:
            return
        if reload.timer is not None and reload.timer.active():
            reload.timer.cancel()
        reload.timer = timer

    def _reload_kill(self, worker: _Worker) -> None:
        if self.workers.get(worker.index) is worker:
            log.warn("kcm-gateway worker {index} (pid {pid}) did not stop within {t:g} s; "
                     "killing it", index=worker.index, pid=worker.pid, t=self.stop_timeout)
            self._signal(worker, signal.SIGKILL)

    def _reload_started(self, index: int) -> None:
        """Worker ``index`` was started again in a rolling restart: wait for it to be up."""
        if getattr(self.listener, "tells_when_up", False):
            self._reload_timer(self.reactor.callLater(self.up_timeout, self._reload_late,
                                                      index))
        else:
            self._reload_timer(self.reactor.callLater(self.settle, self._reload_next))

    def _reload_late(self, index: int) -> None:
        self._reload_failed(index, f"not ready within {self.up_timeout:g} s")

    def _reload_failed(self, index: int, why: str) -> None:
        reload = self._reload
        if reload is None:
            return
        self._reload_timer(None)
        self._reload = None
        log.error("the restart of the kcm-gateway workers stops: worker {index} failed to "
                  "start again ({why}); {left} worker(s) not restarted keep running as they "
                  "were", index=index, why=why, left=len(reload.left))

    def _start(self, index: int) -> None:
        self._restarts.pop(index, None)
        argv = list(self.command(index))
        spawn = self._spawn or self.reactor.spawnProcess
        try:
            child_fds: dict[int, Any] = {0: "w", 1: 1, 2: "r",
                                         WORKER_LISTEN_FD: self.listener.worker_starting(index)}
            process = spawn(_WorkerProtocol(self, index), argv[0], argv, env=dict(self._env()),
                            path=None, childFDs=child_fds)
        except Exception as e:
            self.listener.worker_gone(index)
            why = str(e) or type(e).__name__
            if self._reloading(index):
                self._reload_failed(index, why)
            self._restart_later(index, failed=True, why=why, pid=None, ran=0.0)
            return
        finally:
            self.listener.worker_spawned(index)
        self.workers[index] = _Worker(index, process, process.pid, self.reactor.seconds())
        self._starts[index] = self._starts.get(index, 0) + 1
        log.info("kcm-gateway worker {index} started: pid {pid}", index=index, pid=process.pid)
        if self._reloading(index):
            self._reload_started(index)

    def _reloading(self, index: int) -> bool:
        """Whether worker ``index`` is being started again in a rolling restart."""
        reload = self._reload
        return reload is not None and reload.current == index and reload.stage == "starting"

    def worker_ended(self, index: int, reason: Failure) -> None:
        """Worker ``index`` exited (``reason``: ProcessDone or ProcessTerminated)."""
        worker = self.workers.pop(index, None)
        if worker is None:
            return
        self.listener.worker_gone(index)
        how = _exit_description(reason)
        if not self.running:
            log.info("kcm-gateway worker {index} (pid {pid}) stopped: {how}", index=index,
                     pid=worker.pid, how=how)
            if not self.workers and self._stopped is not None:
                self._all_stopped()
            return
        now = self.reactor.seconds()
        expected = now <= worker.expected_until
        ran = now - worker.started
        if ran >= self.stable_after:
            self.failures[index] = 0
        reload = self._reload
        if reload is not None and reload.current == index:
            if reload.stage == "stopping":  # the old one: started again at once, below
                self._reload_timer(None)
                reload.stage = "starting"
            else:  # the new one, before it was up
                self._reload_failed(index, how)
        self._restart_later(index, failed=not expected, why=how, pid=worker.pid,
                            ran=ran)

    def _restart_later(self, index: int, *, failed: bool, why: str, pid: int | None,
                       ran: float) -> None:
        if failed:
            delay = self.backoff(self.failures[index])
            self.failures[index] += 1
            if pid is None:
                log.error("kcm-gateway worker {index} could not be started: {why}; trying "
                          "again in {delay:.1f} s (failure {failures} in a row)", index=index,
                          why=why, delay=delay, failures=self.failures[index])
            else:
                log.error("kcm-gateway worker {index} (pid {pid}) exited: {why} after "
                          "{ran:.1f} s; restarting it in {delay:.1f} s (failure {failures} "
                          "in a row)", index=index, pid=pid, why=why, ran=ran, delay=delay,
                          failures=self.failures[index])
        else:
            delay = 0.0
            self.failures[index] = 0
            log.info("kcm-gateway worker {index} (pid {pid}) exited as asked ({why}); "
                     "starting it again", index=index, pid=pid, why=why)
        self._restarts[index] = self.reactor.callLater(delay, self._start, index)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._watch.running:
            self._watch.stop()
        self._reload_timer(None)
        self._reload = None
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()
        for signum, previous in self._previous_handlers.items():
            signal.signal(signum, previous)
        self._previous_handlers.clear()
        if not self.workers:
            return succeed(None)
        self._stopped = Deferred()
        log.info("stopping {count} kcm-gateway worker(s)", count=len(self.workers))
        for worker in list(self.workers.values()):
            self._signal(worker, signal.SIGTERM)
        self._kill = self.reactor.callLater(self.stop_timeout, self._kill_remaining)
        return self._stopped

    def when_stopped(self) -> Deferred[None]:
        """Fires once the workers a stop signalled have all exited (at once if none is
        left to wait for)."""
        if self._stopped is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._stopped.addBoth(lambda result: (done.callback(None), result)[1])
        return done

    def _kill_remaining(self) -> None:
        self._kill = None
        for worker in list(self.workers.values()):
            log.warn("kcm-gateway worker {index} (pid {pid}) did not stop within {t:g} s; "
                     "killing it", index=worker.index, pid=worker.pid,
                     t=self.stop_timeout)
            self._signal(worker, signal.SIGKILL)

    def _all_stopped(self) -> None:
        if self._kill is not None and self._kill.active():
            self._kill.cancel()
        self._kill = None
        stopped, self._stopped = self._stopped, None
        assert stopped is not None
        stopped.callback(None)

    @staticmethod
    def _signal(worker: _Worker, signum: int) -> None:
        with suppress(error.ProcessExitedAlready):  # its processEnded is on its way
            worker.process.signalProcess(signum)


def _exit_description(reason: Failure) -> str:
    value = reason.value
    signum = getattr(value, "signal", None)
    if signum:
        try:
            return f"signal {signal.Signals(signum).name}"
        except ValueError:
            return f"signal {signum}"
    return f"exit status {getattr(value, 'exitCode', None)}"


@implementer(IReadDescriptor)
class _PipeEnd:
    """The read end of the supervisor's pipe: ``gone()`` once it reads end-of-file."""

    def __init__(self, fileno: int, gone: Callable[[], None]) -> None:
        self._fileno = fileno
        self._gone = gone

    def fileno(self) -> int:
        return self._fileno

    def doRead(self) -> Any:
        try:
            data = os.read(self._fileno, 4096)
        except BlockingIOError:
            return None
        except OSError:
            return CONNECTION_DONE
        return None if data else CONNECTION_DONE

    def connectionLost(self, reason: Failure) -> None:
        self._gone()

    def logPrefix(self) -> str:
        return "kcm-supervisor-pipe"


class SupervisorLifeline(Service):
    """In a worker: watches the pipe the supervisor gave it as descriptor ``fileno`` and
    stops the reactor when it closes (the supervisor exited without stopping the worker)."""

    name = "kcm-supervisor-lifeline"

    def __init__(self, reactor: Any, fileno: int = 0) -> None:
        self.reactor = reactor
        self.fileno = fileno
        self._reader: _PipeEnd | None = None

    def startService(self) -> None:
        self._reader = _PipeEnd(self.fileno, self._supervisor_gone)
        self.reactor.addReader(self._reader)
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        reader, self._reader = self._reader, None
        if reader is not None:
            self.reactor.removeReader(reader)

    def _supervisor_gone(self) -> None:
        if self._reader is None:
            return
        self._reader = None
        log.warn("the kcm-gateway supervisor is gone (its pipe closed); stopping this worker")
        with suppress(error.ReactorNotRunning):
            self.reactor.stop()


class SighupIgnored(Service):
    """SIGHUP does not end this process: in a worker (``note`` None) it is ignored, since
    ``systemctl kill -s HUP`` and a terminal's hang-up reach every process of the unit or
    group, and a reload is the supervisor's alone (its rolling restart: each new worker
    reads the files as it starts); in one gateway process (workers = 1) ``note`` is logged
    instead, and ``reload`` called (its TLS files' look,
    :meth:`kcm.tls_refresh.TlsRefresher.look_now`; without one the note is a warning).
    Stopping leaves it so: a SIGHUP while the process drains must not end it either (the
    process exits soon after)."""

    name = "kcm-sighup"

    def __init__(self, reactor: Any, note: str | None = None,
                 reload: Callable[[], object] | None = None) -> None:
        self.reactor = reactor
        self.note = note
        self.reload = reload

    def startService(self) -> None:
        handler: Any = signal.SIG_IGN
        if self.note is not None:
            def handler(number: int, frame: Any) -> None:
                self.reactor.callFromThread(self._noted)
        signal.signal(signal.SIGHUP, handler)
        super().startService()

    def _noted(self) -> None:
        if self.reload is None:
            log.warn("{note}", note=self.note)
            return
        log.info("{note}", note=self.note)
        self.reload()


class GatewaySupervisor(ProcessService):
    """The root of a supervisor process: the shared KMIP listener, then the worker pool.
    Assembled by :func:`kcm.gateway.tap.makeService`; it logs (without a worker field) to
    the configured log, which its workers append to as well."""

    def __init__(self, config: GatewayConfig, *, workers: int,
                 pinned: Mapping[int, int] | None = None) -> None:
        """``pinned``: the CPU each worker runs on only (:mod:`kcm.gateway.placement`)."""
        super().__init__("kcm-gateway", log_format=config.log_format,
                         log_level=config.log_level, log_path=config.log_file,
                         log_fields={"worker": "supervisor"})
        self.config = config
        self.workers = workers
        self.pinned = dict(pinned or {})

    def startService(self) -> None:
        log.info("kcm-gateway supervisor: {workers} workers sharing {listen}, each linked to "
                 "{core}; {placement}", workers=self.workers, listen=self.config.listen,
                 core=", ".join(self.config.core), placement=", ".join(
                     f"worker {index} on CPU {cpu}" for index, cpu in sorted(self.pinned.items()))
                 if self.pinned else "workers placed by the kernel")
        super().startService()

    def stopService(self) -> Deferred[None]:
        self.stopping = True  # its /readyz answers 503 while the workers stop
        return super().stopService()
