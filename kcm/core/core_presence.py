"""How many cores serve the database: each tenant's request rate is shared between them.

Each core announces itself every :data:`ANNOUNCE_INTERVAL` seconds in the ``core_presence``
table (migration 0016: one row a core, its id and when it was last seen, by the database's
clock, so the hosts' clocks need not agree), counts the cores seen within
:data:`LIVE_S` seconds (itself included) and gives that count to
:meth:`kcm.core.request_rates.TenantRates.set_cores`, which divides each tenant's rate and
burst by it: N cores each allow a tenant 1/N of its rate, so together they allow it its
rate, not N times it. A request never reads the table (the announcement runs off the
reactor, in an autocommit statement of its own outside the writers' lock).

A core that stops cleanly deletes its row, so the others count it out at their next
announcement (within :data:`ANNOUNCE_INTERVAL`); one killed, frozen or cut off, once its
row is :data:`LIVE_S` old (within ``LIVE_S + ANNOUNCE_INTERVAL``). A core that starts
counts itself and those already there before it listens; they count it within an interval.
Rows older than :data:`PRUNE_S` (cores gone long ago) are deleted by whichever core
announces, and so are rows as far ahead of its clock (the database's clock set back); a row
is counted only within :data:`LIVE_S` of it either way. An announcement that fails (the
database out of reach) keeps the last count, with a warning at most once a minute.

On SQLite there is one core per database file (:mod:`kcm.core.sqlite_owner`): nothing is
announced and the count is 1.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, delete, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel

from kcm.core.store.pg_session import is_postgresql
from kcm.core.store.schema import CorePresenceRow
from kcm.throttled_line import ThrottledLine

__all__ = ["ANNOUNCE_INTERVAL", "LIVE_S", "PRUNE_S", "CorePresence", "announce",
           "core_id", "leave"]

#: Seconds between two announcements of a core.
ANNOUNCE_INTERVAL = 5.0
#: A core last seen this many seconds ago, or less, is counted (three announcements).
LIVE_S = 3 * ANNOUNCE_INTERVAL
#: A core's row not renewed for this many seconds is deleted.
PRUNE_S = 600.0
#: Seconds: a failed announcement makes at most one log line each.
LOG_INTERVAL = 60.0

_log = Logger()


def core_id() -> str:
    """This process's id in ``core_presence``: host, process id and a random part (a core
    restarted is a new one)."""
    return f"{socket.gethostname()[:100]}:{os.getpid()}:{secrets.token_hex(4)}"


def database_now(connection: Connection) -> float:
    """The database's time, in seconds since the epoch (PostgreSQL's ``clock_timestamp``)."""
    return float(connection.execute(
        text("SELECT extract(epoch FROM clock_timestamp())")).scalar_one())


def announce(connection: Connection, core: str, now: float, *, live_s: float = LIVE_S,
             prune_s: float = PRUNE_S) -> int:
    """Record ``core`` seen at ``now``, delete the rows of cores unseen for ``prune_s`` (or
    as far ahead of ``now``), and return how many cores were seen within ``live_s`` of
    ``now``, before or after (``core`` among them: at least 1)."""
    insert = pg_insert if connection.dialect.name == "postgresql" else sqlite_insert
    seen = round(now * 1000)
    connection.execute(insert(CorePresenceRow).values(core=core, last_seen=seen)
                       .on_conflict_do_update(index_elements=["core"],
                                              set_={"last_seen": seen}))
    # (a row ahead of the clock: written before the database's clock was set back, or on
    # a server whose clock was ahead; counted, it would stay live until the clock caught up)
    prune, live_ms = round(prune_s * 1000), round(live_s * 1000)
    connection.execute(delete(CorePresenceRow).where(
        (CorePresenceRow.last_seen < seen - prune) | (CorePresenceRow.last_seen > seen + prune)))
    live = connection.execute(select(func.count()).select_from(CorePresenceRow).where(
        CorePresenceRow.last_seen.between(seen - live_ms, seen + live_ms))).scalar_one()
    return max(int(live), 1)


def leave(connection: Connection, core: str) -> None:
    """Delete ``core``'s row (it stops): the other cores count it out at once."""
    connection.execute(delete(CorePresenceRow).where(CorePresenceRow.core == core))


class CorePresence(Service):
    """Announces this core every ``interval`` seconds of ``reactor`` on ``store``'s
    PostgreSQL database (off the reactor: ``store.defer``) and gives the live cores counted
    to ``set_cores`` (on the reactor thread). Nothing on SQLite."""

    name = "kcm-core-presence"

    def __init__(self, store: Any, reactor: IReactorTime, set_cores: Callable[[int], None],
                 *, interval: float = ANNOUNCE_INTERVAL, live_s: float = LIVE_S,
                 core: str | None = None) -> None:
        self._store = store
        self._set_cores = set_cores
        self._interval = interval
        self._live_s = live_s
        self.core = core if core is not None else core_id()
        self._loop = LoopingCall(self.announce)
        self._loop.clock = reactor
        self._on = False
        #: The live cores counted at the last announcement that succeeded.
        self.cores = 1
        #: Announcements that failed since the start.
        self.failed = 0
        #: Whether the last announcement failed.
        self._unreached = False
        self._unannounced = ThrottledLine(
            reactor, "cores not counted ({count} in {interval} s), each tenant's rate kept "
            "shared by the {cores} core(s) last counted: {why}", interval=LOG_INTERVAL,
            level=LogLevel.warn, logger=_log)

    def startService(self) -> None:
        super().startService()
        self._on = is_postgresql(self._store.engine)
        if not self._on:
            return
        try:  # before the listeners (the reactor does not run yet): blocking
            self._counted(self._announce_sync())
        except Exception as e:
            self._failed_with(str(e).splitlines()[0] if str(e) else type(e).__name__)
        self._loop.start(self._interval, now=False)

    def announce(self) -> Any:
        """One announcement off the reactor; its Deferred never fails (else the loop
        stopped): a failure keeps the last count and is logged (once a minute at most)."""
        return self._store.defer(self._announce_sync).addCallbacks(
            self._counted, lambda failure: self._failed_with(failure.getErrorMessage()))

    def _announce_sync(self) -> int:
        with self._store.engine.connect() as connection, connection.begin():
            return announce(connection, self.core, database_now(connection),
                            live_s=self._live_s)

    def _leave_sync(self) -> None:
        with self._store.engine.connect() as connection, connection.begin():
            leave(connection, self.core)

    def _counted(self, cores: int) -> None:
        if cores != self.cores:
            _log.info("{cores} core(s) serve the database: each tenant's request rate is "
                      "shared between them", cores=cores)
        self.cores = cores
        self._unreached = False
        self._set_cores(cores)

    def _failed_with(self, why: str) -> None:
        self.failed += 1
        self._unreached = True
        self._unannounced.note(cores=self.cores, why=(why.splitlines() or [""])[0][:200])

    def stopService(self) -> Any:
        if self._loop.running:
            self._loop.stop()
        super().stopService()
        self._unannounced.flush()
        if not self._on:
            return None
        self._on = False
        if self._unreached:
            # (its last announcement failed: the database is likely out of reach, and a
            # delete would hold the stop; the others count this core out within LIVE_S)
            return None
        return self._store.defer(self._leave_sync).addErrback(
            lambda failure: _log.warn("could not delete this core's presence row ({why}): "
                                      "the other cores count it for {live:g} s more",
                                      why=failure.getErrorMessage(), live=self._live_s))
