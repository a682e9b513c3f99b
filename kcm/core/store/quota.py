"""What each tenant stores, counted, and bounded (migration 0014).

``tenants.stored`` counts the rows a tenant holds that its clients can add: its managed
objects (ordinary ones, destroyed ones not yet purged, and its tenant and service keys)
and its L4 tombstones. It is kept in the transaction of every change: raised by each
insert (:func:`charge`), lowered by each delete (:func:`release`: the purge of destroyed
objects after ``destroyed_retention``, the tombstones of destroyed service keys, a tenant's
removal), so no request counts rows.

A new ordinary object or L4 tombstone is refused with Server Limit Exceeded once the
count has reached the tenant's bound: ``tenants.max_objects`` when set (``kcm core tenant
limit``), else the core's ``[core.limits] max_objects_per_tenant`` (the store puts it in
each write transaction's ``info``, :data:`MAX_OBJECTS_INFO`); 0 is no bound. Tenant and
service keys are counted, and refused only when a request makes them (a Re-key):
provisioning and automatic rotation must not fail. An L4 tombstone (a Revoke or Destroy of
an L4 token) is refused only a :func:`revocation_headroom` past the bound, so that a tenant
at its bound can still revoke a compromised token.

Exact, on one core or several: the count is read (once per transaction and tenant, then
kept in memory) under the writers' lock, which every write transaction of every core
holds until it ends; a savepoint rolled back forgets what was kept (its rows are gone),
so the next charge reads the count again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import bindparam, event, func, select, update
from sqlalchemy.orm import Session

from kcm.core.store.raw_statements import RawStatement
from kcm.core.store.savepoints import on_rollback
from kcm.core.store.schema import L4Tombstone, ManagedObject, Tenant
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError

__all__ = ["DEFAULT_MAX_OBJECTS", "MAX_OBJECTS_INFO", "REVOCATION_HEADROOM_MIN", "AtBound",
           "at_bound", "bound_of", "charge", "recount", "release"]

#: ``[core.limits] max_objects_per_tenant``'s default: high, but finite.
DEFAULT_MAX_OBJECTS = 1_000_000
#: L4 tombstones a tenant at its bound may still store, at least (:func:`revocation_headroom`).
REVOCATION_HEADROOM_MIN = 1000
#: ``Session.info``: the core's ``max_objects_per_tenant`` (absent or 0: no bound).
MAX_OBJECTS_INFO = "kcm.store.max_objects"
#: ``Session.info``: tenant -> [stored, own bound or None], read in this transaction.
_HELD = "kcm.store.held_objects"

_tenants = Tenant.__table__
_READ = RawStatement(select(_tenants.c.stored, _tenants.c.max_objects).where(
    _tenants.c.name == bindparam("tenant")), ["tenant"])
_RAISE = RawStatement(update(_tenants).where(_tenants.c.name == bindparam("tenant"))
                      .values(stored=_tenants.c.stored + bindparam("by")), ["tenant", "by"])


class AtBound(KmipError):
    """Server Limit Exceeded: the tenant is at its bound (a state the operator ends, by a
    higher bound or a purge; kcm.core.managed_rotation tries a key again later)."""


def bound_of(own: int | None, info: Mapping[str, Any]) -> int:
    """A tenant's bound: its own (``tenants.max_objects``) if set, else the core's; 0:
    none."""
    return own if own is not None else int(info.get(MAX_OBJECTS_INFO) or 0)


def at_bound(session: Session) -> list[str]:
    """The tenants at their bound, in this write transaction (one read of ``tenants``, a
    row a tenant: the operator's number): none of them may store one more object now."""
    t = _tenants.c
    bound = func.coalesce(t.max_objects, int(session.info.get(MAX_OBJECTS_INFO) or 0))
    return list(session.scalars(select(t.name).where(bound > 0, t.stored >= bound)))


def revocation_headroom(bound: int) -> int:
    """How far past its ``bound`` a tenant may still store L4 tombstones: a tenant at its
    bound can still revoke compromised L4 tokens (a tenth of the bound, at least 1,000)."""
    return max(REVOCATION_HEADROOM_MIN, bound // 10)


def charge(session: Session, tenant: str, *, refuse: bool = True,
           revocation: bool = False) -> None:
    """One more row of ``tenant``'s is being inserted in this (write) transaction, which
    holds the writers' lock: count it; with ``refuse``, first raise Server Limit Exceeded
    if the tenant is at its bound (nothing is counted then). A ``revocation`` (an L4
    tombstone) is refused only past the bound's :func:`revocation_headroom`."""
    info = session.info
    held = info.get(_HELD)
    if held is None:
        held = info[_HELD] = {}
    kept = held.get(tenant)
    if kept is None:
        row = _READ.execute(session, {"tenant": tenant}).fetchone()
        kept = held[tenant] = [0, None] if row is None else [row[0] or 0, row[1]]
    if refuse:
        bound = bound_of(kept[1], info)
        if bound and kept[0] >= bound:
            setting = "max_objects_per_tenant" if kept[1] is None else "kcm core tenant limit"
            if not revocation:
                raise AtBound(ResultReason.SERVER_LIMIT_EXCEEDED,
                              f"tenant {tenant} is at its bound of {bound} stored objects "
                              f"({setting})")
            extra = revocation_headroom(bound)
            if kept[0] >= bound + extra:
                raise AtBound(ResultReason.SERVER_LIMIT_EXCEEDED,
                              f"tenant {tenant} is at its bound of {bound} stored objects "
                              f"({setting}) and {extra} more for L4 revocations")
    _RAISE.send(session, {"tenant": tenant, "by": 1})
    kept[0] += 1


def release(session: Session, counts: Mapping[str, int]) -> None:
    """``counts[tenant]`` rows of each tenant were deleted in this transaction."""
    held = session.info.get(_HELD)
    for tenant, count in counts.items():
        if count:
            _RAISE.execute(session, {"tenant": tenant, "by": -count})
            if held is not None:
                held.pop(tenant, None)


def recount(session: Session, tenant: str) -> tuple[int, int]:
    """Count ``tenant``'s rows (managed objects and L4 tombstones) and set its kept count
    to it, in this write transaction, which must hold the writers' lock (so that no insert
    or delete of another transaction falls between the count and the update); (the count
    kept before, the count now). What repairs a count that drifted from the rows (``kcm
    core tenant limit --recount``)."""
    counted = sum(session.scalar(select(func.count()).select_from(table).where(
        table.tenant == tenant)) or 0 for table in (ManagedObject, L4Tombstone))
    was = session.scalar(select(_tenants.c.stored).where(_tenants.c.name == tenant))
    if was != counted:
        session.execute(update(_tenants).where(_tenants.c.name == tenant)
                        .values(stored=counted))
    held = session.info.get(_HELD)
    if held is not None:
        held.pop(tenant, None)
    return int(was or 0), counted


def _forget(session: Session, *_: Any) -> None:
    # A savepoint or the transaction rolled back, or the transaction ended: read again.
    session.info.pop(_HELD, None)


def _ended(session: Session, *_: Any) -> None:
    if not session.in_nested_transaction():
        session.info.pop(_HELD, None)


event.listen(Session, "after_commit", _ended)
event.listen(Session, "after_rollback", _ended)
event.listen(Session, "after_soft_rollback", _forget)
on_rollback(_forget)
