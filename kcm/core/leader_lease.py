"""One core at a time for work that must not run twice: a PostgreSQL session-level advisory
lock held on a connection of its own.

:meth:`AdvisoryLease.hold` says whether this process holds the lease now, taking it if it is
free. The lock lives as long as its connection: when the holding core stops, dies or loses
its database connection, PostgreSQL drops the lock with the session and the next core to ask
takes it (a core that is killed is noticed at once, since its socket closes; a host that
vanishes, when TCP keepalive gives up on it). Work done under the lease must still be safe
to repeat: for a moment after a network partition two cores may both believe they hold it
(the old holder learns it lost the lease at its next :meth:`hold`).

On SQLite there is one core per database file, which always holds the lease.

Blocking: call :meth:`hold` and :meth:`release` on a worker thread, one at a time.
"""

from __future__ import annotations

import contextlib
from typing import Any

from twisted.logger import Logger

from kcm.core.store.engine import Store
from kcm.core.store.pg_session import is_postgresql, own_connection

log = Logger()

#: The advisory lock key of the state sweeper (the writers' and migrations' locks are
#: 0x4B434D0001 and 0x4B434D0002).
SWEEPER_LEASE_KEY = 0x4B434D0003


class AdvisoryLease:
    """The lease named ``key`` on ``store``'s database, for the work called ``what``."""

    def __init__(self, store: Store, key: int, what: str) -> None:
        self._store = store
        self.key = key
        self.what = what
        self._connection: Any = None

    @property
    def held(self) -> bool:
        """Whether this process held the lease at its last :meth:`hold`."""
        return self._connection is not None

    def hold(self) -> bool:
        """Whether this process holds the lease now (taking it if it is free)."""
        if not is_postgresql(self._store.engine):
            return True
        if self._connection is not None:
            try:
                self._connection.execute("SELECT 1")
                return True
            except Exception as e:
                log.warn("lost the {what} lease with its database connection ({error})",
                         what=self.what, error=_first_line(e))
                self._close()
        try:
            connection = own_connection(self._store.engine)
        except Exception as e:
            log.warn("cannot ask for the {what} lease ({error})", what=self.what,
                     error=_first_line(e))
            return False
        try:
            taken = connection.execute("SELECT pg_try_advisory_lock(%s)",
                                       (self.key,)).fetchone()[0]
        except Exception as e:
            connection.close()
            log.warn("cannot ask for the {what} lease ({error})", what=self.what,
                     error=_first_line(e))
            return False
        if not taken:
            connection.close()
            return False
        self._connection = connection
        log.info("this core now holds the {what} lease", what=self.what)
        return True

    def release(self) -> None:
        """Give the lease up (if held), so that another core takes it at once."""
        if self._connection is not None:
            self._close()
            log.info("released the {what} lease", what=self.what)

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        with contextlib.suppress(Exception):  # already broken: the lock went with it
            connection.close()


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
