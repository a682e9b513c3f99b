"""kcm-gateway's supervisor (kcm.gateway.supervisor): starting, restarting with a back-off,
forwarding signals to and stopping its workers, driven by task.Clock and a fake spawner; the
listener it serves the workers from (connections handed over channels, or a shared socket);
the worker's lifeline; how many workers ``workers = 0`` means."""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet import error, reactor
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from kcm.gateway import supervisor
from kcm.gateway.supervisor import (
    RESTART_BACKOFF,
    WORKER_LISTEN_FD,
    SharedListener,
    SupervisorLifeline,
    WorkerPool,
    worker_count,
)
from kcm.handoff import READY
from kcm.tls import plain_server_endpoint
from tests.unit.test_gateway_acceptor import received


@dataclass
class FakeProcess:
    pid: int
    protocol: Any
    signals: list[int] = field(default_factory=list)
    ended: bool = False

    def signalProcess(self, signum: int) -> None:
        if self.ended:
            raise error.ProcessExitedAlready()
        self.signals.append(signum)

    def end(self, *, code: int | None = 1, signum: int | None = None) -> None:
        """The process exits: with status ``code``, or killed by ``signum``."""
        self.ended = True
        reason = error.ProcessDone(0) if code == 0 and signum is None \
            else error.ProcessTerminated(exitCode=code, signal=signum)
        self.protocol.processEnded(Failure(reason))


class FakeSpawner:
    """reactor.spawnProcess's stand-in: records every spawn, hands out pids 100, 101..."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.processes: list[FakeProcess] = []
        self.fail_next = 0

    def __call__(self, protocol: Any, executable: str, args: list[str], *, env: dict,
                 path: str | None, childFDs: dict) -> FakeProcess:
        self.calls.append({"executable": executable, "args": args, "env": env,
                           "childFDs": childFDs})
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("no more processes")
        process = FakeProcess(100 + len(self.processes), protocol)
        self.processes.append(process)
        return process

    def latest(self, index: int) -> FakeProcess:
        """The process last spawned for worker ``index``."""
        return [p for p in self.processes if p.protocol.index == index][-1]


class FakeListener:
    """SharedListener's stand-in: descriptor 7 for every worker; records the calls. Like a
    TCP listener's, it tells when a worker is up (the test calls ``worker_up``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.tells_when_up = True

    def worker_starting(self, index: int) -> int:
        self.calls.append(("starting", index))
        return 7

    def worker_spawned(self, index: int) -> None:
        self.calls.append(("spawned", index))

    def worker_gone(self, index: int) -> None:
        self.calls.append(("gone", index))


def pool(count: int = 2, **kwargs: Any) -> tuple[WorkerPool, Clock, FakeSpawner]:
    clock, spawner = Clock(), FakeSpawner()
    workers = WorkerPool(count, lambda index: ["python", "worker", str(index)], FakeListener(),
                         reactor=clock, spawn=spawner, forwarded_signals=(),
                         env=lambda: {"PATH": "/bin"}, **kwargs)
    return workers, clock, spawner


def test_it_starts_each_worker_on_the_shared_socket_and_a_pipe() -> None:
    workers, _, spawner = pool(3)
    workers.startService()
    assert [call["args"] for call in spawner.calls] == [
        ["python", "worker", "1"], ["python", "worker", "2"], ["python", "worker", "3"]]
    assert spawner.calls[0]["executable"] == "python"
    assert spawner.calls[0]["env"] == {"PATH": "/bin"}
    # stdin: a pipe from the supervisor; stdout: the supervisor's; stderr: a pipe to it
    # (logged); the socket as fd 3.
    assert spawner.calls[0]["childFDs"] == {0: "w", 1: 1, 2: "r", WORKER_LISTEN_FD: 7}
    assert workers.pids() == {1: 100, 2: 101, 3: 102}
    assert workers.listener.calls == [(call, index) for index in (1, 2, 3)
                                      for call in ("starting", "spawned")]


def test_the_listener_hears_of_a_worker_that_exits_or_cannot_be_spawned() -> None:
    workers, clock, spawner = pool(1)
    workers.startService()
    spawner.latest(1).end(code=1)
    assert workers.listener.calls[-1] == ("gone", 1)
    spawner.fail_next = 1
    clock.advance(RESTART_BACKOFF(0))
    assert workers.listener.calls[-3:] == [("starting", 1), ("gone", 1), ("spawned", 1)]


def test_a_dead_worker_is_restarted_after_the_backoff_and_the_others_are_left_alone() -> None:
    workers, clock, spawner = pool(2)
    workers.startService()
    clock.advance(60)
    spawner.latest(1).end(signum=signal.SIGKILL)
    assert workers.pids() == {2: 101}
    [restart] = clock.getDelayedCalls()
    assert restart.getTime() - clock.seconds() == pytest.approx(RESTART_BACKOFF(0)) == 0.2
    clock.advance(0.15)
    assert len(spawner.processes) == 2  # not yet
    clock.advance(0.1)
    assert workers.pids() == {1: 102, 2: 101}
    assert spawner.latest(2).signals == []
    assert spawner.calls[-1]["args"] == ["python", "worker", "1"]


def test_a_crash_loop_backs_off_exponentially_up_to_30s() -> None:
    workers, clock, spawner = pool(1)
    workers.startService()
    delays = []
    for attempt in range(10):
        spawner.latest(1).end(code=1)  # dies at once, every time
        [restart] = clock.getDelayedCalls()
        delays.append(round(restart.getTime() - clock.seconds(), 6))
        clock.advance(delays[-1])
        assert len(spawner.processes) == attempt + 2
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]
    assert workers.failures[1] == 10


def test_the_backoff_starts_afresh_after_a_worker_ran_long_enough() -> None:
    workers, clock, spawner = pool(1, stable_after=30.0)
    workers.startService()
    for _ in range(3):
        spawner.latest(1).end(code=1)
        clock.advance(30)  # past any of these delays: restarted
    assert workers.failures[1] == 3
    clock.advance(30)  # the fourth worker has now run 30 s
    spawner.latest(1).end(code=1)
    assert workers.failures[1] == 1
    clock.advance(RESTART_BACKOFF(0))
    assert len(spawner.processes) == 5


def test_a_worker_that_cannot_be_spawned_is_tried_again_with_the_backoff() -> None:
    workers, clock, spawner = pool(1)
    spawner.fail_next = 2
    workers.startService()
    assert workers.pids() == {}
    clock.advance(RESTART_BACKOFF(0))
    assert workers.pids() == {}  # second failure
    clock.advance(RESTART_BACKOFF(1))
    assert workers.pids() == {1: 100}


def test_stopping_terminates_every_worker_and_waits_for_them() -> None:
    workers, clock, spawner = pool(2)
    workers.startService()
    spawner.latest(1).end(code=1)  # a restart is pending...
    stopped = workers.stopService()
    clock.advance(5)
    assert len(spawner.processes) == 2  # ...and cancelled
    assert spawner.latest(2).signals == [signal.SIGTERM]
    assert not stopped.called
    spawner.latest(2).end(signum=signal.SIGTERM)
    assert stopped.called
    clock.advance(60)
    assert len(spawner.processes) == 2  # a worker that stops is not restarted


def test_a_worker_that_ignores_sigterm_is_killed_after_the_stop_timeout() -> None:
    workers, clock, spawner = pool(2, stop_timeout=10.0)
    workers.startService()
    stopped = workers.stopService()
    spawner.latest(1).end(signum=signal.SIGTERM)
    clock.advance(9.9)
    assert spawner.latest(2).signals == [signal.SIGTERM]
    clock.advance(0.1)
    assert spawner.latest(2).signals == [signal.SIGTERM, signal.SIGKILL]
    assert not stopped.called
    spawner.latest(2).end(signum=signal.SIGKILL)
    assert stopped.called


def test_stopping_without_running_workers_is_immediate() -> None:
    workers, _, spawner = pool(1)
    spawner.fail_next = 1
    workers.startService()
    assert workers.stopService().called


def test_a_forwarded_signal_reaches_every_worker_and_its_exit_restarts_at_once() -> None:
    workers, clock, spawner = pool(2)
    workers.startService()
    spawner.latest(1).end(code=1)
    clock.advance(RESTART_BACKOFF(0))  # one failure on record for worker 1
    workers.forward(signal.SIGUSR1)
    assert [spawner.latest(i).signals for i in (1, 2)] == [[signal.SIGUSR1]] * 2
    spawner.latest(1).end(signum=signal.SIGUSR1)  # a worker exits on it...
    clock.advance(0)
    assert 1 in workers.pids() and workers.failures[1] == 0  # ...and is back at once
    assert spawner.latest(2).signals == [signal.SIGUSR1]  # the other kept running


def test_a_reload_restarts_one_worker_at_a_time_each_once_the_last_is_up() -> None:
    workers, clock, spawner = pool(3)
    workers.startService()
    old = {i: spawner.latest(i) for i in (1, 2, 3)}
    workers.reload()
    assert [old[i].signals for i in (1, 2, 3)] == [[signal.SIGTERM], [], []]
    assert workers.listener.calls[-1] == ("gone", 1)  # no new connections for it
    old[1].end(code=0)  # twistd stops on SIGTERM
    clock.advance(0)
    new1 = spawner.latest(1)
    assert new1 is not old[1] and workers.failures[1] == 0
    clock.advance(5)  # not up yet: worker 2 waits
    assert old[2].signals == []
    workers.worker_up(2)  # (not the one awaited: nothing happens)
    assert old[2].signals == []
    workers.worker_up(1)
    assert old[2].signals == [signal.SIGTERM]
    old[2].end(code=0)
    clock.advance(0)
    workers.worker_up(2)
    assert old[3].signals == [signal.SIGTERM]
    old[3].end(code=0)
    clock.advance(0)
    workers.worker_up(3)
    assert workers.pids() == {i: spawner.latest(i).pid for i in (1, 2, 3)}
    assert len(spawner.processes) == 6
    assert workers.restarts() == {1: 1, 2: 1, 3: 1}
    workers.reload()  # another reload may start now
    assert spawner.latest(1).signals == [signal.SIGTERM]


def test_a_reload_stops_when_a_new_worker_cannot_start_and_leaves_the_rest_running() -> None:
    workers, clock, spawner = pool(3)
    workers.startService()
    old = {i: spawner.latest(i) for i in (1, 2, 3)}
    workers.reload()
    old[1].end(code=0)
    clock.advance(0)
    spawner.latest(1).end(code=1)  # the new configuration does not start
    clock.advance(60)
    assert old[2].signals == [] and old[3].signals == []  # still serving, as they were
    assert workers.pids()[2] == old[2].pid and workers.pids()[3] == old[3].pid
    # Worker 1 is restarted with the back-off, as any failing worker; a new SIGHUP (the
    # configuration fixed) starts a new reload.
    assert workers.failures[1] >= 1
    workers.reload()
    assert spawner.latest(1).signals == [signal.SIGTERM]


def test_a_reload_kills_a_worker_that_does_not_stop_and_stops_at_one_not_ready_in_time(
        ) -> None:
    """A new worker that never says it is ready (it cannot reach the core) stops the
    restart: the workers not yet restarted keep their keys and serve."""
    workers, clock, spawner = pool(2, stop_timeout=10.0, up_timeout=30.0)
    workers.startService()
    old = {i: spawner.latest(i) for i in (1, 2)}
    workers.reload()
    workers.reload()  # a second SIGHUP meanwhile is ignored
    assert old[1].signals == [signal.SIGTERM]
    clock.advance(10)
    assert old[1].signals == [signal.SIGTERM, signal.SIGKILL]
    old[1].end(signum=signal.SIGKILL)
    clock.advance(0)
    assert spawner.latest(1) is not old[1]
    clock.advance(30)
    clock.advance(60)
    assert old[2].signals == [] and workers.pids()[2] == old[2].pid
    workers.worker_up(1)  # ready at last: nothing more happens (the restart was given up)
    assert old[2].signals == []


def test_a_reload_on_a_shared_socket_goes_on_after_the_settle_time() -> None:
    workers, clock, spawner = pool(2, settle=2.0)
    workers.listener.tells_when_up = False  # as a shared (unix:) socket's
    workers.startService()
    old = {i: spawner.latest(i) for i in (1, 2)}
    workers.reload()
    old[1].end(code=0)
    clock.advance(0)
    clock.advance(1.9)
    assert old[2].signals == []
    clock.advance(0.1)
    assert old[2].signals == [signal.SIGTERM]


def test_stopping_ends_a_reload() -> None:
    workers, clock, spawner = pool(2)
    workers.startService()
    workers.reload()
    stopped = workers.stopService()
    for process in spawner.processes:
        if not process.ended:
            process.end(signum=signal.SIGTERM)
    assert stopped.called
    clock.advance(60)
    assert len(spawner.processes) == 2 and clock.getDelayedCalls() == []


def test_sighup_to_the_supervisor_restarts_the_workers_one_at_a_time(monkeypatch) -> None:
    clock, spawner = Clock(), FakeSpawner()
    clock.callFromThread = lambda f, *args: f(*args)  # type: ignore[attr-defined]
    previous = signal.getsignal(signal.SIGHUP)
    workers = WorkerPool(2, lambda index: ["w"], FakeListener(), reactor=clock, spawn=spawner,
                         env=dict)
    workers.startService()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        assert [spawner.latest(i).signals for i in (1, 2)] == [[signal.SIGTERM], []]
    finally:
        workers.stopService()
    assert signal.getsignal(signal.SIGHUP) == previous


@pytest.mark.parametrize(("setting", "expected"), [(1, 1), (2, 2), (7, 7), (0, 3)])
def test_workers_zero_means_one_per_usable_cpu(setting: int, expected: int) -> None:
    assert worker_count(setting, cpus=lambda: 3) == expected


def test_workers_zero_counts_the_cpus_this_process_may_use() -> None:
    assert worker_count(0) == len(os.sched_getaffinity(0))


def test_a_unix_listener_is_accepted_on_by_the_supervisor_and_balanced(tmp_path) -> None:
    # Shared by the workers, a Unix socket's connections went to whichever woke first
    # (unevenly), and the workers said nothing: no readiness, no hung watch.
    path = str(tmp_path / "kmip.sock")
    listener = SharedListener(reactor, f"unix:{path}:mode=600")
    listener.startService()
    clients: list[socket.socket] = []
    try:
        acceptor = listener.acceptor
        assert acceptor is not None and listener.worker_listen == f"handoff:{WORKER_LISTEN_FD}"
        assert listener.tells_when_up and listener.port not in reactor.getReaders()
        ends = {}
        for index in (1, 2):
            ends[index] = socket.socket(fileno=os.dup(listener.worker_starting(index)))
            listener.worker_spawned(index)
            ends[index].send(READY)
            acceptor.channels[index].doRead()
        assert acceptor in reactor.getReaders()
        for _ in range(8):
            clients.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            clients[-1].connect(path)
        acceptor.doRead()
        got = {index: received(end) for index, end in ends.items()}
        assert [len(got[1]), len(got[2])] == [4, 4]
        assert all(c.family == socket.AF_UNIX for c in got[1] + got[2])
        for sock in [*got[1], *got[2], *ends.values()]:
            sock.close()
    finally:
        for client in clients:
            client.close()
        listener.stopService()
    assert listener.acceptor is None


def test_a_listener_of_another_kind_is_shared_and_never_accepted_on(tmp_path,
                                                                    monkeypatch) -> None:
    # (its address neither IP nor Unix: an endpoint plugin's)
    monkeypatch.setattr(supervisor, "UNIXAddress", type("OtherAddress", (), {}))
    listener = SharedListener(reactor, f"unix:{tmp_path / 'kmip.sock'}")
    listener.startService()
    try:
        assert listener.worker_listen == f"fd:{WORKER_LISTEN_FD}" and listener.acceptor is None
        port = listener.port
        assert port is not None and port not in reactor.getReaders()
        fileno = listener.worker_starting(1)
        listener.worker_spawned(1)
        assert fileno == port.fileno()
        with socket.socket(fileno=os.dup(fileno)) as sock:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    finally:
        listener.stopService()


def test_a_port_in_use_fails_the_shared_listeners_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listener = SharedListener(reactor, f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1")
        with pytest.raises(error.CannotListenError, match="Address already in use"):
            listener.startService()
    assert listener.port is None and listener.acceptor is None and not listener.running


def test_a_tcp_listener_is_accepted_on_by_the_supervisor_and_handed_over_channels() -> None:
    listener = SharedListener(reactor, "tcp:0:interface=127.0.0.1")
    listener.startService()
    try:
        acceptor = listener.acceptor
        assert acceptor is not None and listener.worker_listen == f"handoff:{WORKER_LISTEN_FD}"
        # Listening, with Twisted's port not reading it: the acceptor reads it once a
        # worker has a channel.
        assert listener.port not in reactor.getReaders()
        assert acceptor.listening.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert acceptor not in reactor.getReaders()
        fileno = listener.worker_starting(1)
        with socket.socket(fileno=os.dup(fileno)) as worker_end:
            assert worker_end.type == socket.SOCK_SEQPACKET
            listener.worker_spawned(1)  # the supervisor's copy of the worker's end is closed
            with pytest.raises(OSError):
                os.fstat(fileno)
            # At the start it waits for every worker to be ready (or START_HOLD seconds).
            assert acceptor not in reactor.getReaders() and list(acceptor.channels) == [1]
            worker_end.send(READY)
            acceptor.channels[1].doRead()
            assert acceptor in reactor.getReaders()
            listener.worker_gone(1)
            assert acceptor not in reactor.getReaders() and acceptor.channels == {}
    finally:
        listener.stopService()
    assert listener.acceptor is None


def test_an_inherited_socket_is_adopted_with_its_family() -> None:
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        sock.listen()
        endpoint = plain_server_endpoint(reactor, f"fd:{sock.fileno()}").inner.inner
        assert (endpoint.fileno, endpoint.addressFamily) == (sock.fileno(), socket.AF_INET6)
    for bad in ("fd:", "fd:three", "ssl:5696"):
        with pytest.raises(ValueError):
            plain_server_endpoint(reactor, bad)


class FakeReactor:
    def __init__(self) -> None:
        self.readers: list[Any] = []
        self.stopped = 0

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.remove(reader)

    def stop(self) -> None:
        self.stopped += 1


def test_a_worker_stops_when_its_supervisors_pipe_closes() -> None:
    read_end, write_end = os.pipe()
    fake = FakeReactor()
    lifeline = SupervisorLifeline(fake, read_end)
    lifeline.startService()
    try:
        [reader] = fake.readers
        assert reader.fileno() == read_end
        os.close(write_end)  # the supervisor is gone
        assert reader.doRead() is CONNECTION_DONE
        reader.connectionLost(Failure(CONNECTION_DONE))  # what the reactor does next
        assert fake.stopped == 1
    finally:
        lifeline.stopService()
        os.close(read_end)


def test_what_a_worker_writes_on_standard_error_is_logged_a_line_an_event() -> None:
    """A daemonized supervisor's standard error, which its workers' was, is /dev/null: a
    worker's usage error before its log starts was lost (it only "exited: exit status 1")."""
    from twisted.logger import formatEvent, globalLogPublisher

    lines: list[str] = []

    def observer(event: dict) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    try:
        workers, _, spawner = pool(1)
        workers.startService()
        worker = spawner.latest(1)
        worker.protocol.errReceived(b"Usage: twistd [options]\nerror: cannot read /etc/kcm/g")
        worker.protocol.errReceived(b"w.toml\n" + b"\x1b[31m" + b"x" * 500 + b"\ntail")
        worker.end(code=1)
    finally:
        globalLogPublisher.removeObserver(observer)
    said = [line for line in lines if "(standard error)" in line]
    assert said[:2] == ["kcm-gateway worker 1 (standard error): Usage: twistd [options]",
                        "kcm-gateway worker 1 (standard error): error: cannot read "
                        "/etc/kcm/gw.toml"]
    assert said[2].startswith("kcm-gateway worker 1 (standard error): \\x1b[31mxxx")
    assert said[2].endswith("... (505 characters)")
    assert said[3] == "kcm-gateway worker 1 (standard error): tail"  # the end, at its exit
    workers.stopService()
