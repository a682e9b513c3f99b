"""Ending a PostgreSQL connection whose server leaves it waiting too long.

A thread blocked in libpq on a server that stopped answering (its processes stopped: a VM
paused, a ``SIGSTOP``, storage hung under it) has no bound of its own: the server's kernel
still acknowledges TCP, so neither keepalives nor ``tcp_user_timeout`` ever fire, and every
request queued behind that thread waits with it, for as long as the server stays silent
(and a core being stopped waits for it too).

So every connection of a kcm-core's pool is a :class:`WatchedConnection`: each of
psycopg's waits for the server (a statement, a commit, a ping: all go through
``Connection.wait``) is noted with its start, and :class:`SilenceWatch` shuts down the
socket of a connection that has waited ``limit`` seconds (``limits.request_deadline``
plus :data:`kcm.core.store.engine.SILENCE_GRACE_S`), from a thread of its own
(:class:`SilenceWatchThread`, not the reactor, which a stopping core blocks on its
writer). The blocked wait then ends with psycopg's "server closed the connection
unexpectedly", its transaction fails as any lost connection does (its requests are
answered General Failure "the key store is unavailable; try again"), and the pool
replaces the connection: a new one waits at most ``connect_timeout`` (10 s) for the
server. Nothing is lost: the server, thawed, finds the connection gone and rolls its
transaction back. A COMMIT's wait is never cut (:meth:`WatchedConnection.commit`): once
sent, the server may complete it whatever the client does, and a cut one would tell its
requests "try again" for work that was done; a server that stops answering during a
COMMIT holds that group commit until it answers.

A connection taken out of the pool for a session of its own (:mod:`kcm.core.store.pg_session`)
is watched if it asks (the sweeper's lease: short statements); a LISTEN waits as long as it
likes, on a daemon thread no stop waits for.
KCM's statements are short by design (sweeps and pruning work in batches), so the limit
is reached only by a server that has stopped answering.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import Engine, event
from twisted.logger import Logger

__all__ = ["SilenceWatch", "SilenceWatchThread", "WatchedConnection",
           "watch_connections"]

#: Seconds between two looks of :class:`SilenceWatchThread`.
LOOK_INTERVAL_S = 0.5

log = Logger()


class SilenceWatch:
    """The connections waiting for their server now, and since when (``clock``, seconds);
    :meth:`cut_overdue` shuts down those waiting ``limit`` seconds or more."""

    def __init__(self, limit: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        #: connection -> (when its wait began, its socket's file descriptor)
        self._waiting: dict[Any, tuple[float, int]] = {}
        #: Held while a socket is shut down, and by a wait that ends: a descriptor is shut
        #: down only while its connection is still waiting on it (so still open).
        self._lock = threading.Lock()

    def begin(self, connection: Any, fd: int) -> None:
        self._waiting[connection] = (self._clock(), fd)

    def end(self, connection: Any) -> None:
        with self._lock:
            self._waiting.pop(connection, None)

    def cut_overdue(self) -> int:
        """Shut down the socket of every connection waiting ``limit`` seconds or more; how
        many were."""
        now = self._clock()
        cut = 0
        with self._lock:
            for connection, (since, fd) in list(self._waiting.items()):
                if now - since < self.limit:
                    continue
                del self._waiting[connection]
                _shut_down(fd)
                cut += 1
                log.error("the PostgreSQL server left a statement unanswered for {seconds:.0f}"
                          " s: its connection was shut down (requests on it are answered "
                          "\"the key store is unavailable\")", seconds=now - since)
        return cut


def _shut_down(fd: int) -> None:
    """Shut down both directions of the socket ``fd`` (its waiting reader sees its end);
    the descriptor stays open, for its owner to close."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()


class WatchedConnection(psycopg.Connection):  # type: ignore[type-arg]
    """A psycopg connection whose waits for the server its :class:`SilenceWatch` sees
    (none while ``kcm_watch`` is None)."""

    kcm_watch: SilenceWatch | None = None
    kcm_fd: int = -1
    #: Whether a COMMIT is under way: its waits are not watched.
    kcm_committing = False

    def commit(self) -> None:
        # A COMMIT sent is the server's to complete, whatever the watch would say: cut, it
        # may commit all the same (a frozen server resuming, a wait for a synchronous
        # standby), and its requests would be told "try again" for work that was done.
        self.kcm_committing = True
        try:
            super().commit()
        finally:
            self.kcm_committing = False

    def wait(self, *args: Any, **kwargs: Any) -> Any:
        watch = self.kcm_watch
        if watch is None or self.kcm_committing:
            return super().wait(*args, **kwargs)
        watch.begin(self, self.kcm_fd)
        try:
            return super().wait(*args, **kwargs)
        finally:
            watch.end(self)


def watch_connections(engine: Engine, watch: SilenceWatch) -> None:
    """Have ``engine`` (PostgreSQL, psycopg 3) open :class:`WatchedConnection` s seen by
    ``watch``; a connection detached from the pool is no longer seen."""

    def connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        connection = WatchedConnection.connect(*cargs, **cparams)
        connection.kcm_fd = connection.fileno()
        connection.kcm_watch = watch
        return connection

    def detach(dbapi_connection: Any, _record: Any) -> None:
        if isinstance(dbapi_connection, WatchedConnection):
            dbapi_connection.kcm_watch = None

    event.listen(engine, "do_connect", connect)
    event.listen(engine, "detach", detach)


class SilenceWatchThread:
    """Runs ``watch.cut_overdue()`` every :data:`LOOK_INTERVAL_S` on a daemon thread of its
    own, from :meth:`start` to :meth:`stop`."""

    def __init__(self, watch: SilenceWatch, name: str) -> None:
        self._watch = watch
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(LOOK_INTERVAL_S):
            try:
                self._watch.cut_overdue()
            except Exception:
                log.failure("watching the PostgreSQL connections' waits")
