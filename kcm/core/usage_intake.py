"""Usage reports from the gateways into the store (:mod:`kcm.core.usage`), and the state
sweeper woken when one of them brings a service key to its usage cap.

Reports arrive on the reactor from every link (USAGE_REPORT, docs/link-protocol.md); they are
added up in memory and written in one transaction at most every ``delay`` seconds (one
transaction at a time), so many gateways reporting often cost the store little. When a
write finds the current version of a service at its cap (its policy's, or the built-in
one: :func:`kcm.core.auto_rotation.cap_reached`), ``on_cap_reached`` is called: kcm-core asks
its state sweeper to sweep now rather than at its next tick.

A write that fails loses its counts (counts fall short, never double). While the store
is unavailable every write fails, one each ``delay``: the first failure is logged (one
line, as every component logs the store's unavailability; a traceback for any other
error), the others are only counted, and the first write that succeeds again logs how
many writes and counts were lost meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from twisted.logger import Logger

from kcm.core.auto_rotation import cap_reached
from kcm.core.store.engine import Store
from kcm.core.store.schema import LEVEL_SERVICE_KEY, ManagedObject
from kcm.core.store.unavailable import log_failure
from kcm.core.usage import add_uses

__all__ = ["UsageIntake", "UsageScope"]

log = Logger()

#: Whose report, and the tenants it may count for: (gateway's id, tenants) for a gateway
#: scoped to some tenants (kcm.core.gateway_scopes); None for one that may act for any.
UsageScope = tuple[str, frozenset[str]]


class UsageIntake:
    """Adds up reported counts and writes them, batched."""

    def __init__(self, store: Store, clock: Any, *, on_cap_reached: Callable[[], None],
                 delay: float = 0.05, wall_clock: Callable[[], float] | None = None) -> None:
        """``clock``: the reactor its writes wait on; ``wall_clock``: the time the counts
        are recorded at (a date; ``clock.seconds`` when not given)."""
        self._store = store
        self._clock = clock
        self._wall_clock = wall_clock if wall_clock is not None else clock.seconds
        self._on_cap_reached = on_cap_reached
        self.delay = delay
        self._pending: dict[str, int] = {}
        #: Counts of scoped gateways, kept apart until their L3s' tenants are read.
        self._scoped: dict[UsageScope, dict[str, int]] = {}
        self._scheduled: Any = None
        self._writing = False
        #: Writes failed, and the counts they lost, since the last that succeeded.
        self._failed_writes = 0
        self._lost_counts = 0

    def add(self, counts: Mapping[str, int], scope: UsageScope | None = None) -> None:
        """Counts one gateway reported (L3 uid -> encryptions since its last report).
        With ``scope``, only the counts of its tenants' L3s are recorded; the others are
        dropped and logged (the gateway may not act for their tenants)."""
        pending = self._pending if scope is None else self._scoped.setdefault(scope, {})
        for uid, count in counts.items():
            if count > 0:
                pending[uid] = pending.get(uid, 0) + count
        self._schedule()

    def _schedule(self) -> None:
        if (self._pending or self._scoped) and self._scheduled is None \
                and not self._writing:
            self._scheduled = self._clock.callLater(self.delay, self._write)

    def _write(self) -> Any:
        self._scheduled = None
        counts, self._pending = self._pending, {}
        scoped, self._scoped = self._scoped, {}
        self._writing = True
        now = int(self._wall_clock())
        refused: list[tuple[str, str, str]] = []  # (gateway, uid, its tenant)

        def work(session: Session) -> bool:
            merged = counts
            if scoped:  # (a transaction tried again starts over from the same counts)
                refused.clear()
                merged = _with_scoped(session, counts, scoped, refused)
            return cap_reached(session, add_uses(session, merged, now=now))

        def done(reached: bool) -> None:
            for gateway, uid, tenant in refused:
                log.warn("gateway {gateway} reported usage of service key {uid} of tenant "
                         "{tenant}, outside its scope: not counted", gateway=gateway,
                         uid=uid, tenant=tenant)
            if self._failed_writes:
                log.warn("usage counts are recorded again; {writes} writes failed before, "
                         "losing {lost} counts", writes=self._failed_writes,
                         lost=self._lost_counts)
                self._failed_writes = self._lost_counts = 0
            if reached:
                self._on_cap_reached()

        def failed(failure: Any) -> None:
            lost = len(counts) + sum(len(report) for report in scoped.values())
            if not self._failed_writes:
                log_failure(log, failure, f"recording {lost} usage counts (lost)")
            self._failed_writes += 1
            self._lost_counts += lost

        def next_batch(_: object) -> None:
            self._writing = False
            self._schedule()

        d = self._store.run(work)
        d.addCallbacks(done, failed)
        d.addBoth(next_batch)
        return d

    def stop(self) -> None:
        """Forget what is pending (the core stops)."""
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._scheduled = None
        self._pending, self._scoped = {}, {}


def _with_scoped(session: Session, counts: Mapping[str, int],
                 scoped: Mapping[UsageScope, Mapping[str, int]],
                 refused: list[tuple[str, str, str]]) -> dict[str, int]:
    """``counts`` and those of ``scoped`` whose L3 is of a tenant of its report's scope;
    the others are noted in ``refused``. (Uids that name no L3 are dropped by ``add_uses``.)"""
    counts = dict(counts)
    uids = {uid for report in scoped.values() for uid in report}
    tenants = dict(session.execute(select(ManagedObject.uid, ManagedObject.tenant).where(
        ManagedObject.uid.in_(uids), ManagedObject.level == LEVEL_SERVICE_KEY)).all())
    for (gateway, allowed), report in scoped.items():
        for uid, count in report.items():
            tenant = tenants.get(uid)
            if tenant is not None and tenant not in allowed:
                refused.append((gateway, uid, tenant))
                continue
            counts[uid] = counts.get(uid, 0) + count
    return counts
