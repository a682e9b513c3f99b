"""How long a destroyed object is kept: two steps of the state sweeper
(:mod:`kcm.core.sweep_steps`; kcm-core's ``makeService`` lists them).

A Destroy deletes an object's key material and keeps the rest (KMIP 1.4 §4.21): its row,
its attributes, its names, for as long as the store lasts, since KMIP lets a client Locate
a destroyed object and get its attributes. With ``destroyed_retention`` set
(docs/operations.md, "Destroyed objects") :func:`purge_destroyed` deletes the objects
destroyed longer ago than that, oldest Destroy first, at most :data:`PURGE_BATCH` a sweep,
with their names, groups and Locate keys, and audits each batch: a record
:data:`AUDIT_OPERATION` by :data:`kcm.core.state_sweeper.SWEEPER` per tenant, naming the
objects (as the sweeper's other changes are audited). From then on Get, Get Attributes and
Locate answer as for an object that never existed. Unset (the default), nothing is deleted.

What stays of a purged object: the audit records that name it; the outbox events that name
it, until ``outbox_retention``; the Links of other objects that name it (KMIP does not make
a Link follow its target's lifetime, and a Destroy leaves them too: they name an object that
is gone, as they named one destroyed). Nothing stays in memory: the object cache drops the
rows deleted (this core's at once, another core's at its next read of the row, which finds
it gone), and the keyring kept nothing of them since their Destroy
(:func:`kcm.core.managed.destroy_material`).

:func:`drop_tombstones` runs whatever the setting: the L4 tombstones of a destroyed service
key are deleted (at most :data:`TOMBSTONE_BATCH` a sweep), since every token under it is
refused as crypto-erased whether it was revoked or not (Object Destroyed; the L4 engine
judges the L3's state first, and the gateways drop those tombstones at its ``l3.state``).

A full batch of either asks for the next sweep at once.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from kcm.core.audit import AuditEvent, append_audit
from kcm.core.state_sweeper import SWEEPER
from kcm.core.store import repository
from kcm.kernel.correlation import new_correlation_id

__all__ = ["AUDIT_OPERATION", "PURGE_BATCH", "TOMBSTONE_BATCH", "DestroyedPurged",
           "TombstonesDropped", "drop_tombstones", "purge_destroyed"]

#: The most destroyed objects one sweep deletes (one transaction).
PURGE_BATCH = 1000
#: The most L4 tombstones of destroyed service keys one sweep deletes.
TOMBSTONE_BATCH = 10_000
#: The operation of the audit record of a batch of objects deleted.
AUDIT_OPERATION = "PurgeDestroyed"


@dataclass(frozen=True, slots=True)
class DestroyedPurged:
    """A sweep deleted ``deleted`` objects destroyed before ``before`` (epoch seconds), of
    ``tenants`` tenants; ``more``: a full batch, the next sweep runs at once."""

    deleted: int
    tenants: int
    before: int
    more: bool

    def __str__(self) -> str:
        when = datetime.datetime.fromtimestamp(self.before, datetime.UTC).isoformat()
        text = (f"destroyed objects: {self.deleted} destroyed before {when} "
                f"(destroyed_retention) deleted, of {self.tenants} tenants")
        return text + ("; sweeping again for more" if self.more else "")


@dataclass(frozen=True, slots=True)
class TombstonesDropped:
    """A sweep deleted ``deleted`` L4 tombstones of destroyed service keys."""

    deleted: int
    more: bool

    def __str__(self) -> str:
        text = f"L4 tombstones: {self.deleted} of destroyed service keys deleted"
        return text + ("; sweeping again for more" if self.more else "")


def purge_destroyed(session: Session, now: float, *, retention: float,
                    limit: int = PURGE_BATCH) -> Sequence[object]:
    """A step of the state sweeper: delete the objects destroyed more than ``retention``
    seconds before ``now`` (at most ``limit``; which ones: :func:`kcm.core.store.repository
    .destroyed_due`), each tenant's audited in one record."""
    before = int(now - retention)
    purged = repository.purge_destroyed(session, before, limit)
    if not purged:
        return []
    by_tenant: dict[str, list[repository.PurgedObject]] = defaultdict(list)
    for obj in purged:
        by_tenant[obj.tenant].append(obj)
    for tenant, objects in sorted(by_tenant.items()):
        append_audit(session, AuditEvent(
            principal=SWEEPER, operation=AUDIT_OPERATION, result_status="SUCCESS",
            correlation_id=new_correlation_id(), source="state-sweeper", tenant=tenant,
            object_ids=tuple(obj.uid for obj in objects),
            detail={"objects": len(objects), "destroyed_before": before,
                    "retention": retention,
                    "service_keys": sum(obj.level is not None for obj in objects)}),
            clock=lambda: now)
    return [DestroyedPurged(len(purged), len(by_tenant), before, len(purged) >= limit)]


def drop_tombstones(session: Session, now: float, *,
                    limit: int = TOMBSTONE_BATCH) -> Sequence[object]:
    """A step of the state sweeper: delete up to ``limit`` L4 tombstones of destroyed
    service keys (:func:`kcm.core.store.repository.drop_tombstones_of_destroyed`)."""
    deleted = repository.drop_tombstones_of_destroyed(session, limit)
    return [TombstonesDropped(deleted, deleted >= limit)] if deleted else []
