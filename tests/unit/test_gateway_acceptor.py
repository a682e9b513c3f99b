"""kcm.gateway.acceptor: the supervisor accepts on a real listening socket and hands each
connection over real channels (socket pairs) to the worker with the fewest; a fake reactor
records what it reads, task.Clock drives the pause after accept fails."""

from __future__ import annotations

import errno
import socket
from typing import Any

from twisted.internet.task import Clock

from kcm.gateway.acceptor import Acceptor
from kcm.handoff import READY, REPORT


class FakeReactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.readers: set[Any] = set()

    def addReader(self, reader: Any) -> None:
        self.readers.add(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.discard(reader)


def received(worker_end: socket.socket) -> list[socket.socket]:
    """The connections waiting on a worker's end of its channel."""
    worker_end.setblocking(False)
    got = []
    while True:
        try:
            _, fds, _, _ = socket.recv_fds(worker_end, 1, 1)
        except BlockingIOError:
            return got
        got += [socket.socket(fileno=fd) for fd in fds]


def connect(sock: socket.socket, count: int) -> list[socket.socket]:
    return [socket.create_connection(sock.getsockname(), timeout=5) for _ in range(count)]


def test_connections_are_handed_to_the_worker_with_the_fewest(listening) -> None:
    reactor = FakeReactor()
    acceptor = Acceptor(reactor, listening)
    acceptor.start()
    assert acceptor not in reactor.readers  # no worker yet: connections wait in the backlog
    ends = {index: acceptor.open_channel(index) for index in (1, 2)}
    assert acceptor in reactor.readers and set(acceptor.channels.values()) <= reactor.readers
    clients = connect(listening, 8)
    acceptor.doRead()
    got = {index: received(end) for index, end in ends.items()}
    assert [len(got[1]), len(got[2])] == [4, 4]
    # The worker's side of each is the server side of a client's connection.
    assert sorted(c.getpeername() for c in got[1] + got[2]) == sorted(
        c.getsockname() for c in clients)
    # Worker 1's clients leave; it says so; the next four go to it.
    ends[1].send(REPORT.pack(0, 4))
    acceptor.channels[1].doRead()
    assert acceptor.balance.load(1) == 0
    clients += connect(listening, 4)
    acceptor.doRead()
    assert [len(received(ends[1])), len(received(ends[2]))] == [4, 0]
    for sock in clients + got[1] + got[2] + list(ends.values()):
        sock.close()
    acceptor.stop()
    assert reactor.readers == set()


def test_a_worker_whose_channel_is_gone_is_skipped_and_then_dropped(listening) -> None:
    reactor = FakeReactor()
    acceptor = Acceptor(reactor, listening)
    acceptor.start()
    first, second = acceptor.open_channel(1), acceptor.open_channel(2)
    first.close()  # worker 1 exited
    clients = connect(listening, 2)
    acceptor.doRead()
    assert len(received(second)) == 2
    channel = acceptor.channels[1]
    assert channel.doRead() is not None  # end-of-file: the reactor calls connectionLost
    channel.connectionLost(None)  # type: ignore[arg-type]
    assert list(acceptor.channels) == [2] and channel not in reactor.readers
    for sock in clients + [second]:
        sock.close()
    acceptor.stop()


def test_a_connection_no_worker_takes_is_closed(listening) -> None:
    reactor = FakeReactor()
    acceptor = Acceptor(reactor, listening)
    acceptor.start()
    acceptor.open_channel(1).close()
    [client] = connect(listening, 1)
    acceptor.doRead()
    assert client.recv(1) == b""  # closed by the supervisor
    client.close()
    assert acceptor.unplaced == 1  # (the metrics' refused connections, no_worker)
    acceptor.close_channel(1)
    assert acceptor not in reactor.readers  # no worker: not reading
    acceptor.stop()


class Exhausted:
    """A listening socket whose accept fails as in a process out of descriptors."""

    def __init__(self) -> None:
        self.accepts = 0

    def fileno(self) -> int:
        return 99

    def accept(self) -> tuple[socket.socket, Any]:
        self.accepts += 1
        raise OSError(errno.EMFILE, "Too many open files")


def test_running_out_of_descriptors_pauses_reading_instead_of_spinning() -> None:
    reactor, listening = FakeReactor(), Exhausted()
    acceptor = Acceptor(reactor, listening, pause=0.5)  # type: ignore[arg-type]
    acceptor.start()
    worker_end = acceptor.open_channel(1)
    acceptor.doRead()
    assert listening.accepts == 1 and acceptor not in reactor.readers
    reactor.advance(0.4)
    assert acceptor not in reactor.readers
    reactor.advance(0.1)
    assert acceptor in reactor.readers
    acceptor.stop()
    worker_end.close()
    assert reactor.readers == set() and reactor.getDelayedCalls() == []


def test_a_worker_that_says_it_is_ready_is_preferred_and_heard_of(listening) -> None:
    """What a rolling restart waits for, and where connections go meanwhile: a worker that
    has said READY on its channel (once per channel) is preferred over one that has not."""
    up: list[int] = []
    reactor = FakeReactor()
    acceptor = Acceptor(reactor, listening, worker_up=up.append)
    acceptor.start()
    ends = {index: acceptor.open_channel(index) for index in (1, 2)}
    clients = connect(listening, 2)
    acceptor.doRead()  # neither is ready: both get one
    assert [len(received(ends[1])), len(received(ends[2]))] == [1, 1]
    ends[2].send(READY)
    acceptor.channels[2].doRead()
    ends[2].send(READY)  # (said again: heard once)
    acceptor.channels[2].doRead()
    assert up == [2]
    clients += connect(listening, 3)
    acceptor.doRead()  # worker 2 is ready, 1 is not: all three go to 2
    assert [len(received(ends[1])), len(received(ends[2]))] == [0, 3]
    again = acceptor.open_channel(2)  # worker 2 started again: not ready on its new channel
    assert 2 not in acceptor.balance.ready
    again.send(READY)
    acceptor.channels[2].doRead()
    assert up == [2, 2]
    for sock in [*clients, *ends.values(), again]:
        sock.close()
    acceptor.stop()


def test_at_the_start_connections_wait_for_every_worker_to_be_ready(listening) -> None:
    """A pool's connections, made as the gateway starts, spread over all the workers: the
    listening socket is read once every worker with a channel is ready, or after the hold."""
    reactor = FakeReactor()
    acceptor = Acceptor(reactor, listening)
    acceptor.start(hold=5.0)
    ends = {index: acceptor.open_channel(index) for index in (1, 2)}
    assert acceptor not in reactor.readers
    ends[1].send(READY)
    acceptor.channels[1].doRead()
    assert acceptor not in reactor.readers  # worker 2 is not ready yet
    ends[2].send(READY)
    acceptor.channels[2].doRead()
    assert acceptor in reactor.readers
    clients = connect(listening, 4)
    acceptor.doRead()
    assert [len(received(ends[1])), len(received(ends[2]))] == [2, 2]
    for sock in [*clients, *ends.values()]:
        sock.close()
    acceptor.stop()

    held = Acceptor(reactor, listening)
    held.start(hold=5.0)
    end = held.open_channel(1)  # a worker that never says it is ready
    reactor.advance(4.9)
    assert held not in reactor.readers
    reactor.advance(0.1)
    assert held in reactor.readers  # the hold is bounded
    end.close()
    held.stop()


def test_a_worker_that_exits_during_the_start_holds_nothing_back(listening) -> None:
    """The others being ready ends the hold as soon as the worker that was not is gone."""
    reactor = FakeReactor()
    acceptor = Acceptor(reactor, listening)
    acceptor.start(hold=5.0)
    ends = {index: acceptor.open_channel(index) for index in (1, 2)}
    ends[1].send(READY)
    acceptor.channels[1].doRead()
    assert acceptor not in reactor.readers
    acceptor.close_channel(2)  # worker 2 exited before it was ready
    assert acceptor in reactor.readers
    for sock in ends.values():
        sock.close()
    acceptor.stop()

    alone = Acceptor(reactor, listening)
    alone.start(hold=5.0)
    end = alone.open_channel(1)
    alone.close_channel(1)  # no worker left: nothing to hand connections to, still held
    assert alone not in reactor.readers
    end.close()
    alone.stop()


def test_pinned_workers_get_the_connections_that_arrive_on_their_cpu(listening) -> None:
    reactor = FakeReactor()
    arrived_on: dict[int, int] = {}  # the client's port: the CPU its packets came in on

    def incoming_cpu(connection: socket.socket) -> int | None:
        return arrived_on.get(connection.getpeername()[1])

    acceptor = Acceptor(reactor, listening, near={0: {1}, 1: {2}, 5: {3}},
                        incoming_cpu=incoming_cpu)
    acceptor.start()
    ends = {index: acceptor.open_channel(index) for index in (1, 2)}
    clients = connect(listening, 6)
    for client, cpu in zip(clients, [1, 1, 1, None, 0, 7], strict=True):
        if cpu is not None:
            arrived_on[client.getsockname()[1]] = cpu
    acceptor.doRead()
    got = {index: sorted(c.getpeername()[1] for c in received(end))
           for index, end in ends.items()}
    ports = [client.getsockname()[1] for client in clients]
    # CPU 1's three go to worker 2, CPU 0's one to worker 1; a connection whose CPU is not
    # known, or one with no worker pinned to it (7), goes by count.
    assert got == {1: sorted([ports[3], ports[4], ports[5]]), 2: sorted(ports[:3])}
    assert acceptor.handoffs == {(2, "cpu"): 3, (1, "count"): 2, (1, "cpu"): 1}
    for sock in clients + list(ends.values()):
        sock.close()
    acceptor.stop()


def test_without_pinned_workers_the_cpu_is_not_asked(listening) -> None:
    reactor = FakeReactor()

    def incoming_cpu(connection: socket.socket) -> int | None:
        raise AssertionError("asked")

    acceptor = Acceptor(reactor, listening, incoming_cpu=incoming_cpu)
    acceptor.start()
    end = acceptor.open_channel(1)
    clients = connect(listening, 2)
    acceptor.doRead()
    assert len(received(end)) == 2 and acceptor.handoffs == {(1, "count"): 2}
    for sock in clients + [end]:
        sock.close()
    acceptor.stop()
