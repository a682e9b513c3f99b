"""Apply date-driven state changes to hierarchy keys as their dates pass.

An object's state also moves with time (an Activation or Deactivation Date that has
passed, KMIP 1.4 §3.22). For ordinary objects it is applied when they are next loaded;
for tenant and service keys that is not enough, because gateways learn of an L3's state
only from events: without a sweep, an L3 whose Deactivation Date passed would keep
protecting new data at the gateways until someone touched it at the core. The sweep
saves such keys (``managed.save`` emits ``l3.state`` in the same transaction), and audits
each move in that transaction: a record :data:`AUDIT_OPERATION` by :data:`SWEEPER`, its
``detail`` the states ``from`` and ``to`` (as the Re-key or Activate that a person would have
run is audited). A sweep moves at most :data:`SWEEP_BATCH` keys; when it moved that many,
the next sweep runs at once.

With several cores on one PostgreSQL database the sweep runs on one of them at a time: the
one holding the sweeper's lease (:class:`kcm.core.leader_lease.AdvisoryLease`); the others
ask for it at every interval and take over within one interval of the holder's death, or
once a holder stopped without dying has been silent for :data:`LEASE_SILENCE_INTERVALS`
intervals (at least :data:`LEASE_SILENCE_MIN_S`). The
sweep is safe to repeat (it moves only keys whose dates say so), so the short overlap a
network partition may cause does no harm.

What an operator alerts on (kcm.core.metrics reads it when scraped): whether this core
held the lease at its last ask (:attr:`StateSweeper.lease_held`), when its last sweep
committed (:attr:`StateSweeper.last_sweep`, ``wall_clock`` seconds) and how many sweeps
failed (:attr:`StateSweeper.failed`: the database failed the ask for the lease, or the
sweep's transaction raised; a step
that failed alone does not fail its sweep).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, union
from sqlalchemy.orm import Session
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from kcm.core import managed, sweep_steps
from kcm.core.attribute_blob import decode_attributes
from kcm.core.audit import AuditEvent, append_audit
from kcm.core.leader_lease import SWEEPER_LEASE_KEY, AdvisoryLease
from kcm.core.store.engine import Store
from kcm.core.store.row_seal import seal_of
from kcm.core.store.schema import (
    LEVEL_SERVICE_KEY,
    LEVEL_TENANT_KEY,
    STATE_ACTIVE,
    STATE_PRE_ACTIVE,
    ManagedObject,
)
from kcm.core.store.unavailable import log_failure
from kcm.kernel import lifecycle
from kcm.kernel.correlation import new_correlation_id
from kcm.kmip.enums import State
from kcm.kmip.tags import Tag

log = Logger()

#: Seconds between sweeps: how late, at most, a passed date reaches the gateways.
DEFAULT_INTERVAL = 5.0
#: A core holding the sweeper's lease that has not asked for it again in this many
#: intervals (and at least :data:`LEASE_SILENCE_MIN_S`) is taken to be stopped: another
#: core ends its lease's session and sweeps in its place.
LEASE_SILENCE_INTERVALS = 6
LEASE_SILENCE_MIN_S = 30.0
#: The most keys one sweep (one transaction) moves; the rest, in the sweeps that follow it
#: at once.
SWEEP_BATCH = 256
#: The operation of the audit record of a key moved by its dates.
AUDIT_OPERATION = "DateStateChange"
#: The principal date-driven state changes are audited as.
SWEEPER = "kcm-core/state-sweeper"
_LEVELS = {LEVEL_TENANT_KEY: "L2", LEVEL_SERVICE_KEY: "L3"}


@dataclass(slots=True)
class _SweepContext:
    """What :func:`kcm.core.managed.save` needs of an operation context."""

    session: Session
    now: int


def sweep_due_states(session: Session, now: int, *, limit: int = SWEEP_BATCH) -> list[str]:
    """Move the tenant or service keys whose Activation or Deactivation Date has passed (at
    most ``limit`` of them) to the state each is in at ``now``, each move audited; return
    their identifiers.

    Every ``interval`` seconds in the writers' transaction, so it reads what is due, not
    every object: two ranges of the partial indexes of the hierarchy keys (migration 0005),
    the Pre-Active keys whose Activation Date passed and the Pre-Active or Active keys whose
    Deactivation Date did (one condition with OR would be read key by key)."""
    levels = ManagedObject.level.in_((LEVEL_TENANT_KEY, LEVEL_SERVICE_KEY))
    activating = select(ManagedObject.uid).where(
        levels, ManagedObject.state == STATE_PRE_ACTIVE, ManagedObject.activation_date <= now)
    deactivating = select(ManagedObject.uid).where(
        levels, ManagedObject.state.in_((STATE_PRE_ACTIVE, STATE_ACTIVE)),
        ManagedObject.deactivation_date <= now)
    uids = session.scalars(union(activating, deactivating).order_by("uid").limit(limit)).all()
    if not uids:
        return []
    due = session.scalars(select(ManagedObject).where(ManagedObject.uid.in_(uids))
                          .order_by(ManagedObject.uid)).all()
    moved = []
    seal = seal_of(session.info)
    for row in due:
        why = None if seal is None else seal.why_refused(row)
        if why is not None:
            seal.refuse(row, why)  # (logged and counted: the keyring's refusal)
            continue  # (a row changed in the database is neither moved nor MACed)
        obj = managed.StoredObject(row, decode_attributes(row.attributes))
        before = obj.state
        state = lifecycle.state_at(before, lifecycle.LifecycleDates(
            obj.value(Tag.ACTIVATION_DATE), obj.value(Tag.DEACTIVATION_DATE)), now)
        if state != before:
            obj.set(Tag.STATE, int(state))
            managed.save(_SweepContext(session, now), obj, changed=False)  # type: ignore[arg-type]
            detail: dict[str, object] = {"from": State(before).name, "to": State(state).name,
                                         "level": _LEVELS[row.level]}
            if row.service is not None:
                detail["service"] = row.service
            append_audit(session, AuditEvent(
                principal=SWEEPER, operation=AUDIT_OPERATION, result_status="SUCCESS",
                correlation_id=new_correlation_id(), source="state-sweeper",
                tenant=row.tenant, object_ids=(obj.uid,), detail=detail),  # type: ignore[arg-type]
                clock=lambda: now)
            moved.append(obj.uid)
    return moved


class StateSweeper(Service):
    """Runs :func:`sweep_due_states` every ``interval`` seconds of ``clock`` (the reactor),
    off the reactor; each sweep's time, which dates are judged by, is ``wall_clock``'s
    (``clock.seconds`` when not given)."""

    name = "kcm-state-sweeper"

    def __init__(self, store: Store, clock: IReactorTime, interval: float = DEFAULT_INTERVAL,
                 steps: Sequence[sweep_steps.SweepStep] = (), *,
                 lease: AdvisoryLease | None = None, batch: int = SWEEP_BATCH,
                 wall_clock: Callable[[], float] | None = None,
                 write: Callable[[Callable[[Session], Any]], Deferred[Any]] | None = None,
                 ) -> None:
        """``write(fn)`` runs a sweep's ``fn(session)`` in a write transaction and fires
        after its commit: kcm-core's is a group commit in the sweeper's own share of the
        writer's time (:meth:`kcm.core.request_handler.CoreRequestHandler.write_in_turn`);
        by default, the store's ``run``."""
        self._store = store
        self._write = write if write is not None else store.run
        #: The most keys one sweep moves by their dates (:func:`sweep_due_states`).
        self._batch = batch
        self._clock = clock
        self._wall_clock = wall_clock if wall_clock is not None else clock.seconds
        self._interval = interval
        self._loop: LoopingCall | None = None
        #: Run first in each sweep's transaction (kcm.core.sweep_steps: rotation).
        self._steps = tuple(steps)
        self._soon: IDelayedCall | None = None
        #: Whether this core held the lease at its last ask (reactor thread).
        self.lease_held = False
        #: When the last sweep committed (``wall_clock``; 0.0: none yet).
        self.last_sweep = 0.0
        #: Sweeps that failed since the start.
        self.failed = 0
        #: Held by the one core that sweeps (always held on SQLite).
        self.lease = lease if lease is not None else AdvisoryLease(
            store, SWEEPER_LEASE_KEY, "state sweeper",
            silence_s=max(LEASE_SILENCE_INTERVALS * interval, LEASE_SILENCE_MIN_S))

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.sweep)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True).addErrback(
            lambda failure: log.failure("state sweeper stopped", failure))

    def stopService(self) -> Deferred[None]:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        super().stopService()
        self.lease_held = False
        # Given up for good, held or not: a sweep asking for it on a thread now must not
        # take it after the stop (it kept it until the process ended).
        return self._store.defer(self.lease.close).addErrback(
            lambda failure: log.failure("releasing the sweeper lease failed", failure))

    def sweep(self) -> Deferred[None]:
        """One sweep in one write transaction, if this core holds the lease; errors are
        logged and the loop goes on."""
        d = self._store.defer(self.lease.hold)
        d.addCallback(self._sweep_if_held)
        d.addCallbacks(_report, self._failed)
        return d

    def _failed(self, failure: Failure) -> None:
        self.failed += 1
        log_failure(log, failure, "state sweep")

    def _sweep_if_held(self, held: bool) -> list[str] | Deferred[list[str]]:
        self.lease_held = held and self.running
        if not held:
            if getattr(self.lease, "ask_failed", False):  # (logged by the lease)
                self.failed += 1
            return []
        at, steps, batch = self._wall_clock(), self._steps, self._batch
        return self._write(lambda session: sweep_once(session, steps, at, batch=batch)
                           ).addCallback(self._stepped)

    def _stepped(self, outcome: tuple[list[object], list[str]]) -> list[str]:
        self.last_sweep = self._wall_clock()
        done, moved = outcome
        sweep_steps.report(done)
        if sweep_steps.wants_more(done) or len(moved) >= self._batch:
            self.sweep_soon()
        return moved

    def sweep_soon(self) -> None:
        """Sweep at the next reactor turn, not at the next tick (a usage cap was reported
        reached, a batch left work); several calls before it runs make one sweep."""
        if self._soon is None and self.running:
            self._soon = self._clock.callLater(0, self._sweep_now)

    def _sweep_now(self) -> None:
        self._soon = None
        self.sweep()


def sweep_once(session: Session, steps: Sequence[sweep_steps.SweepStep], at: float, *,
               batch: int = SWEEP_BATCH) -> tuple[list[object], list[str]]:
    """One sweep at ``at``: the hierarchy keys' dates (:func:`sweep_due_states`), then the
    ``steps``; (what the steps did, the keys moved). The dates first: a key whose
    Deactivation Date has come is retired before a rotation step judges it, so that one
    sweep after a pause (downtime, a clock step) does not rotate a retired service back
    to life."""
    moved = sweep_due_states(session, int(at), limit=batch)
    return sweep_steps.run_steps(session, steps, at), moved


def _report(moved: list[str]) -> None:
    if moved:
        log.info("state sweep: {count} hierarchy keys moved with their dates: {uids}",
                 count=len(moved), uids=", ".join(moved))
