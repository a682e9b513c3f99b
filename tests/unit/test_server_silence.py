"""kcm.core.store.server_silence: a connection waiting for its server ``limit`` seconds has
its socket shut down (its waiting reader sees the end), one waiting less is left alone,
and a wait that ended is never cut afterwards."""

from __future__ import annotations

import socket

from kcm.core.store.server_silence import SilenceWatch


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_wait_reaching_the_limit_has_its_socket_shut_down() -> None:
    clock = Clock()
    watch = SilenceWatch(4.0, clock)
    ours, server = socket.socketpair()
    try:
        connection = object()
        watch.begin(connection, ours.fileno())
        clock.now += 3.9
        assert watch.cut_overdue() == 0
        clock.now += 0.1
        assert watch.cut_overdue() == 1
        ours.settimeout(1)
        assert ours.recv(1) == b""  # what the blocked reader sees: the connection's end
        assert ours.fileno() != -1  # the descriptor stays its owner's to close
        assert watch.cut_overdue() == 0  # cut once
        watch.end(connection)  # the wait ends (with an error) afterwards
    finally:
        ours.close()
        server.close()


def test_a_wait_that_ended_is_not_cut() -> None:
    clock = Clock()
    watch = SilenceWatch(4.0, clock)
    ours, server = socket.socketpair()
    try:
        connection = object()
        watch.begin(connection, ours.fileno())
        clock.now += 3.0
        watch.end(connection)
        watch.begin(connection, ours.fileno())  # the next statement's wait starts afresh
        clock.now += 3.0
        assert watch.cut_overdue() == 0
        server.sendall(b"x")
        ours.settimeout(1)
        assert ours.recv(1) == b"x"
    finally:
        ours.close()
        server.close()
