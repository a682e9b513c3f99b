"""Version 1 blobs wrapped again as version 2, in the background (:mod:`kcm.core.keys`).

A database written by an earlier release holds version 1 blobs, bound to their tenant and
uid only. :meth:`WrapUpgrade.step`, a step of the state sweeper, walks the objects in the
order they were made (``created_seq``), :data:`WINDOW` of them at most per sweep
transaction, and re-wraps the version 1 blobs among them (at most :data:`BATCH`) under the
key that wraps them now, bound to their row as read (:meth:`kcm.core.keyring.Keyring.rewrap`);
a full batch makes the next sweep come at once, in a transaction of its own (else the
walk goes on at the next sweep).
Where the walk is is kept in memory: a core that restarts, or takes the sweeper's lease
over, walks again from the start, which only reads (a version 2 blob is left as it is),
and each window's writes commit with their sweep or not at all. Once a walk reaches the
end, the next starts :data:`PAUSE` seconds later (a version 1 blob may come back: a core of
the previous release still running, or a row put back from a backup).

With ``accept_v1_wrapping`` false a version 1 blob is left as it is (and refused when
read): re-wrapping it would bind whatever its row says now.

:meth:`WrapUpgrade.refresh`, every :data:`COUNT_INTERVAL` seconds on a store worker, counts
the version 1 blobs left (a read of every object's first byte of material), for the gauge
``kcm_core_v1_wrapped_objects``; a walk that reaches the end sets it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from twisted.logger import Logger

from kcm.core import keys
from kcm.core.keyring import Keyring
from kcm.core.store import repository
from kcm.core.store.engine import Store
from kcm.core.store.schema import ManagedObject
from kcm.kmip.errors import KmipError

__all__ = ["BATCH", "COUNT_INTERVAL", "PAUSE", "WINDOW", "Upgraded", "WrapUpgrade",
           "upgrade_step", "v1_blobs"]

#: Objects whose ``created_seq`` one sweep looks at, at most.
WINDOW = 20_000
#: Version 1 blobs re-wrapped in one sweep, at most.
BATCH = 200
#: Seconds between the end of a walk and the start of the next.
PAUSE = 3600.0
#: Seconds between counts of the version 1 blobs left.
COUNT_INTERVAL = 300.0

_log = Logger()
_V1 = bytes([keys.WRAP_VERSION_V1])


def _is_v1() -> Any:
    return func.substr(ManagedObject.material, 1, 1) == _V1


def v1_blobs(session: Session) -> int:
    """How many objects' key material is wrapped in the version 1 format (a read of every
    object's first byte of material)."""
    return session.scalar(select(func.count()).select_from(ManagedObject).where(
        ManagedObject.material.is_not(None), _is_v1())) or 0


@dataclass(frozen=True, slots=True)
class Upgraded:
    """What one sweep's step did: ``count`` blobs re-wrapped, ``refused`` left version 1
    (they did not open); ``more``: the walk goes on at once."""

    count: int
    refused: int
    more: bool

    def __str__(self) -> str:
        refused = f", {self.refused} refused" if self.refused else ""
        return (f"{self.count} version 1 blobs wrapped again as version 2{refused}"
                + (" (more to do)" if self.more else ""))


class WrapUpgrade:
    """The walk (:meth:`step`) and the count of version 1 blobs left (:attr:`left`, None
    until first read)."""

    def __init__(self, keyring: Keyring, *, window: int = WINDOW, batch: int = BATCH,
                 pause: float = PAUSE) -> None:
        self._keyring = keyring
        self._window, self._batch, self._pause = window, batch, pause
        #: The ``created_seq`` the walk has looked at up to; None: none since the start.
        self._cursor: int | None = None
        #: When the walk may start again (the time of the sweep that ended the last).
        self._next_walk = float("-inf")
        #: Version 1 blobs this walk left (refused, or ``accept_v1`` false).
        self._left_in_walk = 0
        #: Version 1 blobs left, as last counted (None: not yet).
        self.left: int | None = None
        #: Walks ended (a count read meanwhile is older than the walk's own count).
        self._walks = 0

    def step(self, session: Session, now: float) -> list[Upgraded]:
        """One window of the walk (a step of the state sweeper)."""
        if self._cursor is None:
            if now < self._next_walk:
                return []
            self._cursor, self._left_in_walk = -1, 0
        start = self._cursor
        end = start + self._window
        rows = [repository.ObjectColumns(*row) for row in session.execute(
            select(*ManagedObject.__table__.columns).where(
                ManagedObject.created_seq > start, ManagedObject.created_seq <= end,
                ManagedObject.material.is_not(None), _is_v1())
            .order_by(ManagedObject.created_seq).limit(self._batch + 1))]
        if len(rows) > self._batch:
            end = rows[self._batch - 1].created_seq
            rows = rows[:self._batch]
        count = refused = 0
        for row in rows:
            if not self._keyring.accept_v1:
                refused += 1  # (left as it is: refused when read)
                continue
            if repository.in_session(session, row.uid):
                continue  # (a row a request of the group holds: the next walk's)
            try:
                blob = self._keyring.rewrap(session, row)
            except KmipError:
                # A row that does not match its wrapping (WrappingMismatch: logged and
                # counted by the keyring), or whose tenant key is gone (a tenant being
                # removed): left as it is, the walk goes on.
                refused += 1
                continue
            repository.update_columns(session, row, material=blob)
            count += 1
        # (Where the walk is moves on now; should the sweep's transaction not commit, what
        # this window re-wrapped is the next walk's, and the count corrects the gauge.)
        newest = session.scalar(select(func.max(ManagedObject.created_seq))) or 0
        left = self._left_in_walk + refused
        if end < newest:
            self._cursor, self._left_in_walk = end, left
        else:
            self._cursor, self._next_walk, self.left = None, now + self._pause, left
            self._walks += 1
        # (the next window at once after a full batch; else at the next sweep)
        more = self._cursor is not None and len(rows) == self._batch
        return [Upgraded(count, refused, more)] if count or refused else []

    def _count(self, session: Session) -> int:
        return v1_blobs(session)

    def refresh(self, store: Store) -> Any:
        """Count the version 1 blobs left again (a Deferred; a failure is logged, the last
        count kept)."""
        def failed(failure: Any) -> None:
            _log.warn("version 1 blobs not counted for the metrics: {why}",
                      why=failure.getErrorMessage())

        walks = self._walks

        def keep(count: int) -> None:
            if walks == self._walks:  # (else a walk ended meanwhile: its count is newer)
                self.left = count

        done = store.run(self._count, write=False)
        done.addCallbacks(keep, failed)
        return done


def upgrade_step(session: Session, now: float, *, upgrade: WrapUpgrade) -> list[Upgraded]:
    """``upgrade``'s :meth:`WrapUpgrade.step`, as the state sweeper names its steps."""
    return upgrade.step(session, now)
