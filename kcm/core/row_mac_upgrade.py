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
reaches the end sets it too. The walk and the count are :mod:`kcm.core.upgrade_walk`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from twisted.logger import Logger

from kcm.core.keyring import Keyring
from kcm.core.store import repository
from kcm.core.store.schema import ManagedObject
from kcm.core.upgrade_walk import UpgradeWalk

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


class RowMacUpgrade(UpgradeWalk[Sealed]):
    """The walk (:meth:`step`) and the count of rows without a MAC (:attr:`left`, None until
    first read)."""

    def __init__(self, keyring: Keyring, *, window: int = WINDOW, batch: int = BATCH,
                 pause: float = PAUSE) -> None:
        super().__init__(
            window=window, batch=batch, pause=pause, log=_log,
            uncounted="rows without a row MAC not counted for the metrics: {why}")
        self._keyring = keyring

    def _enabled(self) -> bool:
        # (refused when read instead: see the module's doc)
        return self._keyring.accept_unsealed and self._keyring.row_seal is not None

    def _where(self) -> tuple[Any, ...]:
        return (ManagedObject.row_mac.is_(None),)

    def _act(self, session: Session, rows: list[repository.ObjectColumns]
             ) -> tuple[int, Callable[[bool], Sealed] | None]:
        count = left = 0
        for row in rows:
            if repository.in_session(session, row.uid):
                left += 1  # (a row a request of the group holds: the next walk's)
                continue
            repository.update_columns(session, row)  # (MACed as it is)
            count += 1
        return left, partial(Sealed, count) if count else None

    def _count(self, session: Session) -> int:
        return rows_without_mac(session)


def seal_step(session: Session, now: float, *, upgrade: RowMacUpgrade) -> list[Sealed]:
    """``upgrade``'s :meth:`RowMacUpgrade.step`, as the state sweeper names its steps."""
    return upgrade.step(session, now)
