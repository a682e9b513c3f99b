"""kcm.core.store.server_silence: a connection waiting for its server ``limit`` seconds has
its socket shut down (its waiting reader sees the end), one waiting less is left alone,
and a wait that ended is never cut afterwards."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kcm.core.store.server_silence import SilenceWatch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Waiting:
    """A watch with a limit of 4 s, and a connection of ours (``ours``, its socket; the
    server's end ``server``) that begins to wait."""

    clock: Clock
    watch: SilenceWatch
    ours: socket.socket
    server: socket.socket
    connection: object


@pytest.fixture
def waiting() -> Iterator[Waiting]:
    clock = Clock()
    watch = SilenceWatch(4.0, clock)
    ours, server = socket.socketpair()
    ours.settimeout(1)
    connection = object()
    watch.begin(connection, ours.fileno())
    try:
        yield Waiting(clock, watch, ours, server, connection)
    finally:
        ours.close()
        server.close()


def test_a_wait_reaching_the_limit_has_its_socket_shut_down(waiting: Waiting) -> None:
    waiting.clock.now += 3.9
    assert waiting.watch.cut_overdue() == 0
    waiting.clock.now += 0.1
    assert waiting.watch.cut_overdue() == 1
    assert waiting.ours.recv(1) == b""  # what the blocked reader sees: the connection's end
    assert waiting.ours.fileno() != -1  # the descriptor stays its owner's to close
    assert waiting.watch.cut_overdue() == 0  # cut once
    waiting.watch.end(waiting.connection)  # the wait ends (with an error) afterwards


def test_a_wait_that_ended_is_not_cut(waiting: Waiting) -> None:
    waiting.clock.now += 3.0
    waiting.watch.end(waiting.connection)
    waiting.watch.begin(waiting.connection, waiting.ours.fileno())  # the next one, afresh
    waiting.clock.now += 3.0
    assert waiting.watch.cut_overdue() == 0
    waiting.server.sendall(b"x")
    assert waiting.ours.recv(1) == b"x"
