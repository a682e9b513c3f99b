"""One core at a time for work that must not run twice: a PostgreSQL session-level advisory
lock held on a connection of its own.

:meth:`AdvisoryLease.hold` says whether this process holds the lease now, taking it if it is
free. The lock lives as long as its connection: when the holding core stops, dies or loses
its database connection, PostgreSQL drops the lock with the session and the next core to ask
takes it (a core that is killed is noticed at once, since its socket closes; a host that
vanishes, when TCP keepalive gives up on it). Work done under the lease must still be safe
to repeat: for a moment after a network partition two cores may both believe they hold it
(the old holder learns it lost the lease at its next :meth:`hold`).

A holder that stops without dying (a process stopped, a VM paused) keeps its session: the
kernel answers TCP keepalives for it. So the holder proves it is alive at every
:meth:`hold` (one statement on the lease's connection), and a core asking for a lease
whose holder's session has sent nothing for ``silence_s`` ends that session
(``pg_terminate_backend``) and takes the lease at its next ask.

On SQLite there is one core per database file (:mod:`kcm.core.sqlite_owner`), which always
holds the lease.

Blocking: call :meth:`hold` and :meth:`release` on a worker thread, one at a time.
"""

from __future__ import annotations

import contextlib
from typing import Any

from twisted.logger import Logger

from kcm.core.store.engine import Store
from kcm.core.store.migrate import HEAD_REVISION
from kcm.core.store.pg_session import is_postgresql, own_connection

log = Logger()


def sweeper_lease_key(revision: str = HEAD_REVISION) -> int:
    """The advisory lock key of the state sweeper of cores at schema revision ``revision``
    (the writers' and migrations' locks are 0x4B434D0001 and 0x4B434D0002): one of its own
    per revision. The releases up to schema 0015 used 0x4B434D0003 whatever their revision:
    a core of such a release left running on a database upgraded under it writes nothing
    (its sweeps fail), but it kept the lease, and no core of the new release swept."""
    return (0x4B434D03 << 32) | int(revision)


#: The state sweeper's lease key of this release's cores.
SWEEPER_LEASE_KEY = sweeper_lease_key()


class AdvisoryLease:
    """The lease named ``key`` on ``store``'s database, for the work called ``what``."""

    def __init__(self, store: Store, key: int, what: str,
                 silence_s: float | None = None) -> None:
        self._store = store
        self.key = key
        self.what = what
        #: Seconds of silence after which the holder's session is ended by a core asking
        #: for the lease (None: never); well above the holder's interval between asks.
        self.silence_s = silence_s
        self._connection: Any = None
        #: Given up for good (the core stops): never asked for again.
        self._closed = False
        #: Whether the last :meth:`hold` could not ask (the database failed it), rather
        #: than finding the lease another's.
        self.ask_failed = False

    @property
    def held(self) -> bool:
        """Whether this process held the lease at its last :meth:`hold`."""
        return self._connection is not None

    def hold(self) -> bool:
        """Whether this process holds the lease now (taking it if it is free); when not,
        :attr:`ask_failed` says whether the database failed the ask."""
        self.ask_failed = False
        if not is_postgresql(self._store.engine):
            return not self._closed
        if self._closed:
            return False
        if self._connection is not None:
            try:
                self._connection.execute("SELECT 1")
                return True
            except Exception as e:
                log.warn("lost the {what} lease with its database connection ({error})",
                         what=self.what, error=_first_line(e))
                self._close()
        try:
            # Watched: a silent server cuts the lease's statements as a request's (it held
            # a stopping core's thread pool, and so its stop, for as long as it was silent).
            connection = own_connection(self._store.engine, watched=True)
        except Exception as e:
            log.warn("cannot ask for the {what} lease ({error})", what=self.what,
                     error=_first_line(e))
            self.ask_failed = True
            return False
        try:
            taken = connection.execute("SELECT pg_try_advisory_lock(%s)",
                                       (self.key,)).fetchone()[0]
        except Exception as e:
            connection.close()
            log.warn("cannot ask for the {what} lease ({error})", what=self.what,
                     error=_first_line(e))
            self.ask_failed = True
            return False
        if not taken:
            if self.silence_s is not None:
                self._end_silent_holder(connection)
            connection.close()
            return False
        self._connection = connection
        if self._closed:  # closed while this ask ran (on another thread): not kept
            self._close()
            return False
        log.info("this core now holds the {what} lease", what=self.what)
        return True

    def close(self) -> None:
        """Give the lease up for good (the core stops): released if held, and never asked
        for again, by an ask running now either (it held the lease past the stop)."""
        self._closed = True
        self.release()

    def release(self) -> None:
        """Give the lease up (if held), so that another core takes it at once."""
        if self._connection is not None:
            self._close()
            log.info("released the {what} lease", what=self.what)

    def _end_silent_holder(self, connection: Any) -> None:
        """End the session holding the lease if it has sent nothing for :attr:`silence_s`:
        its core is stopped (the next ask takes the lease). Never fails."""
        try:
            ended = connection.execute(
                _END_SILENT_HOLDER, (self.key >> 32, self.key & 0xFFFFFFFF,
                                     f"{self.silence_s} seconds")).fetchall()
        except Exception as e:
            log.warn("cannot end the silent holder of the {what} lease ({error})",
                     what=self.what, error=_first_line(e))
            return
        for pid, application, address, silent, _ in ended:
            log.warn("ended the database session {pid} ({application} at {address}) that "
                     "held the {what} lease and had sent nothing for {seconds:.1f} s: a core "
                     "stopped or cut off", pid=pid, application=application or "?",
                     address=address, what=self.what, seconds=float(silent))

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        with contextlib.suppress(Exception):  # already broken: the lock went with it
            connection.close()


#: Ends the sessions of this database holding the advisory lock (a bigint key: its halves,
#: objsubid 1) that are idle, waiting for their client, and have been for longer than the
#: interval given; only sessions of roles the asking one is a member of.
_END_SILENT_HOLDER = (
    "SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local'), "
    "extract(epoch FROM clock_timestamp() - a.state_change), pg_terminate_backend(a.pid) "
    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.classid = %s AND l.objid = %s "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND a.pid <> pg_backend_pid() AND a.state = 'idle' AND a.wait_event_type = 'Client' "
    "AND pg_has_role(a.usesysid, 'MEMBER') "
    "AND a.state_change < clock_timestamp() - %s::interval")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
