"""A kcm-gateway worker that hangs, or can serve no more, takes no new connections, and a
hung one is killed and restarted (kcm.gateway.balance, kcm.handoff, kcm.gateway.supervisor),
driven by task.Clock; workers ignore SIGHUP, one gateway process logs it.

* A worker reports on its channel every REPORT_INTERVAL, whether or not its counts changed:
  one silent SILENT_AFTER seconds is ranked out until it reports again.
* A worker's report says whether it can serve: one that cannot (its link down past
  max_stale) is ready no more, and is again once it says READY.
* The pool kills (SIGKILL) a worker silent past ``hung_after`` (before its first report:
  past ``up_timeout`` from its start) and restarts it after the back-off.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import reactor as real_reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock

from kcm.gateway.acceptor import Acceptor
from kcm.gateway.balance import SILENT_AFTER, LeastConnections
from kcm.gateway.supervisor import (
    RESTART_BACKOFF,
    UP_TIMEOUT,
    WATCH_INTERVAL,
    SharedListener,
    SighupIgnored,
    WorkerPool,
)
from kcm.handoff import NOT_READY, REPORT_INTERVAL, HandoffServerEndpoint, pack_report
from tests.unit.test_gateway_acceptor import FakeReactor
from tests.unit.test_gateway_supervisor import FakeSpawner

HUNG = 10.0


# The balance ---------------------------------------------------------------------------------
def test_a_worker_silent_past_silent_after_is_ranked_out_until_it_reports_again() -> None:
    clock = Clock()
    chosen = LeastConnections(clock=clock.seconds)
    for worker in (1, 2):
        chosen.add(worker)
        chosen.mark_ready(worker)
    clock.advance(1.0)
    chosen.reported(1, 0, 0)
    chosen.reported(2, 0, 0)
    assert chosen.ranked() == [1, 2] and chosen.last_heard(1) == 1.0
    clock.advance(SILENT_AFTER - 0.1)
    chosen.reported(2, 0, 0)  # worker 2 goes on reporting, worker 1 stopped (SIGSTOP)
    assert chosen.ranked() == [1, 2]  # not yet
    clock.advance(0.2)
    assert chosen.silent(1) and not chosen.silent(2)
    assert chosen.ranked() == [2]  # however few connections worker 1 holds
    chosen.handed(2)
    assert chosen.ranked() == [2]
    chosen.reported(1, 0, 0)  # it runs again
    assert chosen.ranked() == [1, 2]


def test_when_every_worker_is_silent_or_unready_connections_still_go_somewhere() -> None:
    clock = Clock()
    chosen = LeastConnections(clock=clock.seconds)
    chosen.add(1)
    chosen.add(2)
    clock.advance(SILENT_AFTER + 1)
    assert chosen.ranked() == [1, 2]  # all silent (starting): all, as before
    chosen.reported(2, NOT_READY, 0)
    assert chosen.ranked() == [2]  # none ready: the one that reports
    assert chosen.last_heard(1) is None and chosen.last_heard(9) is None


def test_without_a_clock_no_worker_is_ever_silent() -> None:
    chosen = LeastConnections()
    chosen.add(1)
    assert not chosen.silent(1) and chosen.ranked() == [1]


def test_a_worker_that_reports_it_cannot_serve_takes_no_new_connections() -> None:
    chosen = LeastConnections(clock=Clock().seconds)
    for worker in (1, 2):
        chosen.add(worker)
        chosen.mark_ready(worker)
    chosen.reported(1, 3 | NOT_READY, 3)  # its link down past max_stale
    assert chosen.ready == {2} and chosen.load(1) == 3  # (the flag is no connection)
    assert chosen.ranked() == [2]
    chosen.reported(1, 0, 0)  # a report that says ready does not make it ready...
    assert chosen.ready == {2}
    chosen.mark_ready(1)  # ...READY does (the acceptor hears it)
    assert chosen.ranked() == [1, 2]


# Worker and supervisor over a real channel ---------------------------------------------------
def handed(worker_end: socket.socket) -> int:
    """How many connections wait on a worker's end of its channel (taken off it)."""
    count = 0
    while True:
        try:
            _, fds, _, _ = socket.recv_fds(worker_end, 1, 1, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return count
        for fd in fds:
            os.close(fd)
        count += len(fds)


def test_a_worker_whose_link_drops_gets_no_new_connections_until_it_serves_again(
        listening) -> None:
    """The worker's side (kcm.handoff) reports through the acceptor's channel to the
    balance: readiness follows the worker's ready() both ways, not only at its start."""
    reactor = FakeReactor()
    acceptor = Acceptor(reactor, listening)
    acceptor.balance = LeastConnections(clock=reactor.seconds)
    acceptor.start()
    linked = {1: True, 2: True}
    ends = {index: acceptor.open_channel(index) for index in (1, 2)}
    ports = {}
    for index, end in ends.items():
        # (the worker's end is a handoff port: it only reads with this test's fake reactor)
        HandoffServerEndpoint(reactor, os.dup(end.fileno()),
                              ready=lambda index=index: linked[index]).listen(
            Factory.forProtocol(Protocol)).addCallback(
                lambda port, index=index: ports.update({index: port}))

    def tick() -> None:
        reactor.advance(REPORT_INTERVAL)  # each worker reports...
        for channel in list(acceptor.channels.values()):
            channel.doRead()  # ...and the supervisor reads them

    def new_connections(count: int) -> dict[int, int]:
        clients = [socket.create_connection(listening.getsockname(), timeout=5)
                   for _ in range(count)]
        acceptor.doRead()
        for client in clients:
            client.close()
        return {index: handed(end) for index, end in ends.items()}

    tick()
    assert acceptor.balance.ready == {1, 2}
    assert new_connections(4) == {1: 2, 2: 2}
    linked[1] = False  # worker 1's link is down, its keys past max_stale
    tick()
    assert acceptor.balance.ready == {2}
    assert new_connections(4) == {1: 0, 2: 4}
    linked[1] = True  # linked again
    tick()
    assert acceptor.balance.ready == {1, 2}
    assert new_connections(2)[1] > 0
    for port in ports.values():
        port.stopListening()
    acceptor.stop()
    for end in ends.values():
        end.close()


def test_the_shared_listener_times_the_workers_reports_on_its_reactor() -> None:
    listener = SharedListener(real_reactor, "tcp:0:interface=127.0.0.1")
    listener.startService()
    try:
        assert listener.acceptor is not None
        assert listener.acceptor.balance.clock == real_reactor.seconds
        fileno = listener.worker_starting(1)
        with socket.socket(fileno=os.dup(fileno)) as worker_end:
            listener.worker_spawned(1)
            assert listener.last_heard(1) is None and not listener.silent(1)
            worker_end.send(pack_report(0, 0, True))
            listener.acceptor.channels[1].doRead()
            assert listener.last_heard(1) == pytest.approx(real_reactor.seconds(), abs=5)
            listener.worker_gone(1)
            assert listener.last_heard(1) is None
    finally:
        listener.stopService()
    assert listener.last_heard(1) is None and not listener.silent(1)


# The pool's watch -------------------------------------------------------------------------
class ReportingListener:
    """SharedListener's stand-in with channels that report: ``report(index)`` is a report
    from the worker, heard now."""

    tells_when_up = True

    def __init__(self, clock: Clock) -> None:
        self.balance = LeastConnections(clock=clock.seconds)
        self.calls: list[tuple[str, int]] = []

    def worker_starting(self, index: int) -> int:
        self.balance.add(index)
        return 7

    def worker_spawned(self, index: int) -> None:
        pass

    def worker_gone(self, index: int) -> None:
        self.calls.append(("gone", index))
        self.balance.remove(index)

    def last_heard(self, index: int) -> float | None:
        return self.balance.last_heard(index)

    def silent(self, index: int) -> bool:
        return self.balance.silent(index)

    def report(self, *indices: int) -> None:
        for index in indices:
            self.balance.reported(index, 0, 0)


def watched_pool(**kwargs: Any) -> tuple[WorkerPool, Clock, FakeSpawner, ReportingListener]:
    clock, spawner = Clock(), FakeSpawner()
    listener = ReportingListener(clock)
    workers = WorkerPool(2, lambda index: ["w", str(index)], listener, reactor=clock,
                         spawn=spawner, env=dict, **kwargs)
    return workers, clock, spawner, listener


def run_for(clock: Clock, seconds: float, listener: ReportingListener, *reporting: int) -> None:
    """Let ``seconds`` pass, the workers ``reporting`` reporting every REPORT_INTERVAL."""
    steps = round(seconds / REPORT_INTERVAL)
    for _ in range(steps):
        clock.advance(REPORT_INTERVAL)
        listener.report(*reporting)


def test_a_worker_silent_past_hung_after_is_killed_and_restarted(caplog_events) -> None:
    workers, clock, spawner, listener = watched_pool(hung_after=HUNG)
    workers.startService()
    run_for(clock, 5.0, listener, 1, 2)
    stopped = spawner.latest(1)  # SIGSTOP: worker 1 says nothing from now on
    run_for(clock, SILENT_AFTER + 2 * WATCH_INTERVAL, listener, 2)
    assert listener.balance.ranked() == [2]
    assert any("kcm-gateway worker 1 (pid 100) has not reported for" in line
               and "no new connections go to it" in line for line in caplog_events)
    assert stopped.signals == []
    run_for(clock, HUNG - SILENT_AFTER - 3 * WATCH_INTERVAL, listener, 2)
    assert stopped.signals == []  # not yet: silent less than hung_after
    run_for(clock, 2 * WATCH_INTERVAL, listener, 2)
    assert stopped.signals == [signal.SIGKILL]
    assert ("gone", 1) in listener.calls  # no connection is handed to it meanwhile
    assert spawner.latest(2).signals == []
    assert any("kcm-gateway worker 1 (pid 100) has not reported for" in line
               and "hung; killing it" in line for line in caplog_events)
    run_for(clock, 1.0, listener, 2)
    assert spawner.latest(1).signals == [signal.SIGKILL]  # once
    stopped.end(signum=signal.SIGKILL)  # it dies: restarted as a failed worker is
    assert workers.failures[1] == 1
    clock.advance(RESTART_BACKOFF(0))
    assert workers.pids() == {1: 102, 2: 101}
    workers.stopService()
    for process in spawner.processes[1:]:
        process.end(signum=signal.SIGTERM)


def test_a_worker_that_reports_again_in_time_is_left_alone(caplog_events) -> None:
    workers, clock, spawner, listener = watched_pool(hung_after=HUNG)
    workers.startService()
    run_for(clock, 1.0, listener, 1, 2)
    run_for(clock, HUNG - 1, listener, 2)  # worker 1 busy for 9 s...
    run_for(clock, 20.0, listener, 1, 2)  # ...then it reports again
    assert [spawner.latest(i).signals for i in (1, 2)] == [[], []]
    assert any("kcm-gateway worker 1 (pid 100) reports again" in line
               for line in caplog_events)
    workers.stopService()


def test_before_its_first_report_a_worker_has_the_starts_allowance() -> None:
    workers, clock, spawner, listener = watched_pool(hung_after=HUNG)
    workers.startService()
    run_for(clock, UP_TIMEOUT - 1, listener, 2)  # worker 1 slow to start: not killed yet
    assert spawner.latest(1).signals == []
    run_for(clock, 2.0, listener, 2)
    assert spawner.latest(1).signals == [signal.SIGKILL]
    workers.stopService()


def test_a_worker_asked_to_stop_is_not_taken_for_hung() -> None:
    workers, clock, spawner, listener = watched_pool(hung_after=HUNG, stop_timeout=60.0)
    workers.startService()
    run_for(clock, 1.0, listener, 1, 2)
    workers.reload()  # worker 1 stops (draining): its channel is closed, it reports no more
    assert spawner.latest(1).signals == [signal.SIGTERM]
    run_for(clock, 40.0, listener, 2)
    assert spawner.latest(1).signals == [signal.SIGTERM]
    workers.stopService()


def test_a_worker_that_closes_its_channel_itself_has_the_stop_timeout_to_exit() -> None:
    """A worker sent SIGTERM by someone else (systemctl kill, an operator) closes its
    channel as it begins draining: it was killed as hung at once (its silence counted from
    its start, 30 s before), its busy connections cut. It has stop_timeout to exit."""
    workers, clock, spawner, listener = watched_pool(hung_after=HUNG, stop_timeout=STOP)
    workers.startService()
    run_for(clock, 30.0, listener, 1, 2)
    listener.balance.remove(1)  # its channel closed: the acceptor's close_channel
    run_for(clock, STOP - 2 * WATCH_INTERVAL, listener, 2)
    assert spawner.latest(1).signals == []
    run_for(clock, 3 * WATCH_INTERVAL, listener, 2)  # it did not exit: stuck stopping
    assert spawner.latest(1).signals == [signal.SIGKILL]
    workers.stopService()


STOP = 10.0


def test_a_supervisor_that_did_not_run_itself_does_not_take_its_workers_for_hung() -> None:
    """A supervisor stopped (or its VM paused) for longer than hung_after finds every
    report unread when it runs again: that silence is its own, not the workers'."""
    workers, clock, spawner, listener = watched_pool(hung_after=HUNG)
    workers.startService()
    run_for(clock, 1.0, listener, 1, 2)
    clock.advance(3 * HUNG)  # (one turn: the watch runs once, late)
    assert [spawner.latest(i).signals for i in (1, 2)] == [[], []]
    run_for(clock, 1.0, listener, 2)  # worker 2's reports read; worker 1 really silent...
    run_for(clock, HUNG, listener, 2)  # ...is killed once hung_after has passed since
    assert [spawner.latest(i).signals for i in (1, 2)] == [[signal.SIGKILL], []]
    workers.stopService()


def test_without_hung_after_there_is_no_watch() -> None:
    workers, clock, spawner, listener = watched_pool()
    workers.startService()
    run_for(clock, 60.0, listener)
    assert [spawner.latest(i).signals for i in (1, 2)] == [[], []]
    workers.stopService()


@pytest.fixture
def caplog_events() -> Iterator[list[str]]:
    """The lines logged meanwhile (twisted.logger), formatted."""
    from twisted.logger import formatEvent, globalLogPublisher

    lines: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


# SIGHUP -------------------------------------------------------------------------------------
def test_a_worker_ignores_sighup_and_one_gateway_process_logs_it(caplog_events) -> None:
    previous = signal.getsignal(signal.SIGHUP)
    try:
        worker = SighupIgnored(Clock())
        worker.startService()
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGHUP)  # (this process would end without it)
        worker.stopService()
        # Still ignored while the process stops: a SIGHUP must not end a drain.
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN

        clock = Clock()
        clock.callFromThread = lambda f, *args: f(*args)  # type: ignore[attr-defined]
        single = SighupIgnored(clock, "kcm-gateway: SIGHUP ignored: nothing to reload")
        single.startService()
        os.kill(os.getpid(), signal.SIGHUP)
        single.stopService()
        assert "kcm-gateway: SIGHUP ignored: nothing to reload" in caplog_events

        # One gateway process with its TLS files' look: the note, then the look.
        looks: list[str] = []
        single = SighupIgnored(clock, "kcm-gateway: SIGHUP: looking at the TLS files",
                               reload=lambda: looks.append("look"))
        single.startService()
        os.kill(os.getpid(), signal.SIGHUP)
        single.stopService()
        assert looks == ["look"]
        assert "kcm-gateway: SIGHUP: looking at the TLS files" in caplog_events
    finally:
        signal.signal(signal.SIGHUP, previous)
