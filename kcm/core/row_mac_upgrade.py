"""Rows of earlier releases given their row MAC, in the background
(:mod:`kcm.core.store.row_seal`, migration 0017).

A database written by an earlier release holds rows without a ``row_mac``.
:meth:`RowMacUpgrade.step`, a step of the state sweeper, walks the objects in the order
they were made (``created_seq``), :data:`WINDOW` of them at most per sweep transaction,
and MACs those without one (at most :data:`BATCH`), as they are, with one UPDATE each
(:func:`kcm.core.store.repository.update_columns`: the revision goes up, so no object
cache serves the row as read before); a full batch makes the next sweep come at once.
Where the walk is is kept in memory: a core that restarts, or takes the sweeper's lease
over, walks again from the start, which only reads; each window's writes commit with their
sweep or not at all, and a row MACed twice (two cores meeting on one row) gets the same
MAC, the second UPDATE refused by the row's revision. Once a walk reaches the end, the
next starts :data:`PAUSE` seconds later (a row without a MAC may come back: a core of the
previous release still running, or a row put back from a backup).

With ``accept_rows_without_mac`` false nothing is MACed: a row without a MAC is refused
when read, since MACing it would authenticate whatever a database writer put there.

:meth:`RowMacUpgrade.refresh`, every :data:`COUNT_INTERVAL` seconds on a store worker,
counts the rows left, for the gauge ``kcm_core_objects_without_row_mac``; a walk that
reaches the end sets it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from twisted.logger import Logger

from kcm.core.keyring import Keyring
from kcm.core.store import repository
from kcm.core.store.engine import Store
from kcm.core.store.schema import ManagedObject

__all__ = ["BATCH", "COUNT_INTERVAL", "PAUSE", "WINDOW", "RowMacUpgrade", "Sealed",
           "rows_without_mac", "seal_step"]

#: Objects whose ``created_seq`` one sweep looks at, at most.
WINDOW = 20_000
#: Rows MACed in one sweep, at most.
BATCH = 500
#: Seconds between the end of a walk and the start of the next.
PAUSE = 3600.0
#: Seconds between counts of the rows left.
COUNT_INTERVAL = 300.0

_log = Logger()


def rows_without_mac(session: Session) -> int:
    """How many managed objects have no row MAC."""
    return session.scalar(select(func.count()).select_from(ManagedObject).where(
        ManagedObject.row_mac.is_(None))) or 0


@dataclass(frozen=True, slots=True)
class Sealed:
    """What one sweep's step did: ``count`` rows MACed; ``more``: the walk goes on at
    once."""

    count: int
    more: bool

    def __str__(self) -> str:
        return f"{self.count} rows of an earlier release given their row MAC" + (
            " (more to do)" if self.more else "")


class RowMacUpgrade:
    """The walk (:meth:`step`) and the count of rows without a MAC (:attr:`left`, None until
    first read)."""

    def __init__(self, keyring: Keyring, *, window: int = WINDOW, batch: int = BATCH,
                 pause: float = PAUSE) -> None:
        self._keyring = keyring
        self._window, self._batch, self._pause = window, batch, pause
        #: The ``created_seq`` the walk has looked at up to; None: none since the start.
        self._cursor: int | None = None
        #: When the walk may start again.
        self._next_walk = float("-inf")
        #: Rows this walk left (held by a request of the group, or not MACed at all).
        self._left_in_walk = 0
        #: Rows without a MAC, as last counted (None: not yet).
        self.left: int | None = None
        #: Walks ended (a count read meanwhile is older than the walk's own count).
        self._walks = 0

    def step(self, session: Session, now: float) -> list[Sealed]:
        """One window of the walk (a step of the state sweeper)."""
        if not self._keyring.accept_unsealed or self._keyring.row_seal is None:
            return []  # (refused when read instead: see the module's doc)
        if self._cursor is None:
            if now < self._next_walk:
                return []
            self._cursor, self._left_in_walk = -1, 0
        start = self._cursor
        end = start + self._window
        rows = [repository.ObjectColumns(*row) for row in session.execute(
            select(*ManagedObject.__table__.columns).where(
                ManagedObject.created_seq > start, ManagedObject.created_seq <= end,
                ManagedObject.row_mac.is_(None))
            .order_by(ManagedObject.created_seq).limit(self._batch + 1))]
        if len(rows) > self._batch:
            end = rows[self._batch - 1].created_seq
            rows = rows[:self._batch]
        count = left = 0
        for row in rows:
            if repository.in_session(session, row.uid):
                left += 1  # (a row a request of the group holds: the next walk's)
                continue
            repository.update_columns(session, row)  # (MACed as it is)
            count += 1
        newest = session.scalar(select(func.max(ManagedObject.created_seq))) or 0
        left += self._left_in_walk
        if end < newest:
            self._cursor, self._left_in_walk = end, left
        else:
            self._cursor, self._next_walk, self.left = None, now + self._pause, left
            self._walks += 1
        more = self._cursor is not None and len(rows) == self._batch
        return [Sealed(count, more)] if count else []

    def refresh(self, store: Store) -> Any:
        """Count the rows without a MAC again (a Deferred; a failure is logged, the last
        count kept)."""
        def failed(failure: Any) -> None:
            _log.warn("rows without a row MAC not counted for the metrics: {why}",
                      why=failure.getErrorMessage())

        walks = self._walks

        def keep(count: int) -> None:
            if walks == self._walks:  # (else a walk ended meanwhile: its count is newer)
                self.left = count

        done = store.run(rows_without_mac, write=False)
        done.addCallbacks(keep, failed)
        return done


def seal_step(session: Session, now: float, *, upgrade: RowMacUpgrade) -> list[Sealed]:
    """``upgrade``'s :meth:`RowMacUpgrade.step`, as the state sweeper names its steps."""
    return upgrade.step(session, now)
