"""The background walk of :mod:`kcm.core.wrap_upgrade` and :mod:`kcm.core.row_mac_upgrade`.

:meth:`UpgradeWalk.step`, a step of the state sweeper, walks the objects in the order they
were made (``created_seq``), ``window`` of them at most per sweep transaction, and hands
those its filter selects (at most ``batch``) to the step's action; a full batch makes the
next sweep come at once. Where the walk is is kept in memory: a core that restarts, or
takes the sweeper's lease over, walks again from the start. Once a walk reaches the end,
the next starts ``pause`` seconds later, and the rows it left set :attr:`UpgradeWalk.left`.

:meth:`UpgradeWalk.refresh` counts the rows left again, on a store worker, for a gauge.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from twisted.logger import Logger

from kcm.core.store import repository
from kcm.core.store.engine import Store
from kcm.core.store.schema import ManagedObject

__all__ = ["UpgradeWalk"]

R = TypeVar("R")


class UpgradeWalk(Generic[R]):
    """The walk (:meth:`step`) and the count of rows left (:attr:`left`, None until first
    read). A step gives its filter (:meth:`_where`), its action on a window's rows
    (:meth:`_act`), its count (:meth:`_count`), its logger and the warning it logs when a
    count fails (``uncounted``, ``{why}``: the failure's message)."""

    def __init__(self, *, window: int, batch: int, pause: float, log: Logger,
                 uncounted: str) -> None:
        self._logger, self._uncounted = log, uncounted
        self._window, self._batch, self._pause = window, batch, pause
        #: The ``created_seq`` the walk has looked at up to; None: none since the start.
        self._cursor: int | None = None
        #: When the walk may start again.
        self._next_walk = float("-inf")
        #: Rows this walk left (the step's action says which).
        self._left_in_walk = 0
        #: Rows left, as last counted (None: not yet).
        self.left: int | None = None
        #: Walks ended (a count read meanwhile is older than the walk's own count).
        self._walks = 0

    def _enabled(self) -> bool:
        """Whether the step walks at all."""
        return True

    def _where(self) -> Sequence[Any]:
        """The rows the step acts on (clauses on :class:`ManagedObject`)."""
        raise NotImplementedError

    def _act(self, session: Session, rows: list[repository.ObjectColumns]
             ) -> tuple[int, Callable[[bool], R] | None]:
        """Act on one window's rows: the rows left (the next walk's), and what the sweep
        reports given whether the walk goes on at once (None: nothing to report)."""
        raise NotImplementedError

    def _count(self, session: Session) -> int:
        """How many rows are left (for the gauge)."""
        raise NotImplementedError

    def step(self, session: Session, now: float) -> list[R]:
        """One window of the walk (a step of the state sweeper)."""
        if not self._enabled():
            return []
        if self._cursor is None:
            if now < self._next_walk:
                return []
            self._cursor, self._left_in_walk = -1, 0
        start = self._cursor
        end = start + self._window
        rows = [repository.ObjectColumns(*row) for row in session.execute(
            select(*ManagedObject.__table__.columns).where(
                ManagedObject.created_seq > start, ManagedObject.created_seq <= end,
                *self._where())
            .order_by(ManagedObject.created_seq).limit(self._batch + 1))]
        if len(rows) > self._batch:
            end = rows[self._batch - 1].created_seq
            rows = rows[:self._batch]
        left, report = self._act(session, rows)
        # (Where the walk is moves on now; should the sweep's transaction not commit, what
        # this window did is the next walk's, and the count corrects the gauge.)
        newest = session.scalar(select(func.max(ManagedObject.created_seq))) or 0
        left += self._left_in_walk
        if end < newest:
            self._cursor, self._left_in_walk = end, left
        else:
            self._cursor, self._next_walk, self.left = None, now + self._pause, left
            self._walks += 1
        # (the next window at once after a full batch; else at the next sweep)
        more = self._cursor is not None and len(rows) == self._batch
        return [report(more)] if report is not None else []

    def refresh(self, store: Store) -> Any:
        """Count the rows left again (a Deferred; a failure is logged, the last count
        kept)."""
        def failed(failure: Any) -> None:
            self._logger.warn(self._uncounted, why=failure.getErrorMessage())

        walks = self._walks

        def keep(count: int) -> None:
            if walks == self._walks:  # (else a walk ended meanwhile: its count is newer)
                self.left = count

        done = store.run(self._count, write=False)
        done.addCallbacks(keep, failed)
        return done
