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
``kcm_core_v1_wrapped_objects``; a walk that reaches the end sets it too. The walk and the
count are :mod:`kcm.core.upgrade_walk`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from twisted.logger import Logger

from kcm.core import keys
from kcm.core.keyring import Keyring
from kcm.core.store import repository
from kcm.core.store.schema import ManagedObject
from kcm.core.upgrade_walk import UpgradeWalk
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


class WrapUpgrade(UpgradeWalk[Upgraded]):
    """The walk (:meth:`step`) and the count of version 1 blobs left (:attr:`left`, None
    until first read)."""

    def __init__(self, keyring: Keyring, *, window: int = WINDOW, batch: int = BATCH,
                 pause: float = PAUSE) -> None:
        super().__init__(window=window, batch=batch, pause=pause, log=_log,
                         uncounted="version 1 blobs not counted for the metrics: {why}")
        self._keyring = keyring

    def _where(self) -> tuple[Any, ...]:
        return (ManagedObject.material.is_not(None), _is_v1())

    def _act(self, session: Session, rows: list[repository.ObjectColumns]
             ) -> tuple[int, Callable[[bool], Upgraded] | None]:
        # (the rows left: those refused, or all while ``accept_v1`` is false)
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
        return refused, partial(Upgraded, count, refused) if count or refused else None

    def _count(self, session: Session) -> int:
        return v1_blobs(session)


def upgrade_step(session: Session, now: float, *, upgrade: WrapUpgrade) -> list[Upgraded]:
    """``upgrade``'s :meth:`WrapUpgrade.step`, as the state sweeper names its steps."""
    return upgrade.step(session, now)
