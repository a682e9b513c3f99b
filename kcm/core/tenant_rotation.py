"""Tenant keys (L2) rotated, and what they wrap moved under the new one in bounded batches.

:func:`rotate_tenant_key` makes a tenant's new L2 current (``kcm core tenant rotate``, or,
through the sweeper, :func:`rotate_tenant_keys_due` when a tenant or default rotation
policy's ``tenant_key_interval`` has passed) and deactivates the old one at
once: from then on new objects and service keys are wrapped under the new L2, and the old
one only unwraps. (A tenant administrator's KMIP Re-key of the L2 does the same, activating
the new one at its Offset.)

:func:`rewrap_step`, a step of the state sweeper, then moves the material still wrapped
under a tenant key that is no longer Active (Deactivated or Compromised, with its material)
to its tenant's current L2: at most :data:`REWRAP_BATCH` objects per sweep transaction,
each unwrapped and wrapped again (the L3s' and objects' key bytes do not change: L4 tokens,
records and gateways are unaffected); a full batch makes the next sweep come at once, in a
transaction of its own, so requests are served between batches and none waits for the
whole tenant. Every batch is an audit record ``RewrapObjects`` naming the tenant, the old
and the new L2 and the objects moved. A request that read an object before its batch
committed still unwraps it under the old L2, which stays until an operator destroys it;
``kcm core tenant show`` counts what each L2 still wraps.

A Destroy of an L2 is refused (:func:`check_destroy`) while anything with material is
still wrapped under it (the re-wrap has not finished: it would be lost with it), and for
:data:`DESTROY_GRACE` seconds after it stopped being Active (until then another core may
still take it for its tenant's current one: :data:`kcm.core.keyring.CURRENT_L2_TTL`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, exists, func, select
from sqlalchemy.orm import Session, aliased

from kcm.core import managed, rotation_schedule
from kcm.core.attribute_blob import decode_attributes
from kcm.core.audit import AuditEvent, append_audit
from kcm.core.hierarchy import provision_tenant
from kcm.core.keyring import Binding, Keyring, WrappingMismatch
from kcm.core.rotation_policy import effective, made_or_activated, policies
from kcm.core.store import repository
from kcm.core.store.schema import (
    LEVEL_TENANT_KEY,
    STATE_ACTIVE,
    STATE_COMPROMISED,
    STATE_DEACTIVATED,
    ManagedObject,
)
from kcm.kernel import lifecycle
from kcm.kernel.correlation import new_correlation_id
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip.tags import Tag
from kcm.ttlv import ItemType

__all__ = ["DESTROY_GRACE", "REWRAP_BATCH", "Rewrapped", "check_destroy", "rewrap_step",
           "rotate_tenant_key", "rotate_tenant_keys_due", "wrapped_counts"]

#: Objects re-wrapped in one transaction at most.
REWRAP_BATCH = 200
#: Seconds after an L2 stopped being Active before it may be destroyed. A core of this
#: release wraps nothing under it once that change has committed (it is counted:
#: :func:`kcm.core.store.repository.tenant_key_retirements`); a margin for a core of an
#: earlier release on the same database, which trusted what it found for
#: :data:`kcm.core.keyring.CURRENT_L2_TTL` (5 s).
DESTROY_GRACE = 30
AUDIT_OPERATION = "RewrapObjects"
ROTATE_OPERATION = "RotateTenantKey"


@dataclass(frozen=True, slots=True)
class Rewrapped:
    """One batch: ``count`` objects of ``tenant`` moved from L2 ``old`` to ``new``;
    ``more``: objects are left to move (the sweeper comes back at once)."""

    tenant: str
    old: str
    new: str
    count: int
    more: bool
    #: Rows left under ``old``: they do not match their wrapping (the keyring logged them).
    refused: int = 0

    def __str__(self) -> str:
        rest = ("; more to move" if self.more else "; the rest refused, left under it"
                if self.refused else "; none left under it")
        refused = (f" ({self.refused} refused: not matching their wrapping)"
                   if self.refused else "")
        return (f"re-wrapped {self.count} objects of {self.tenant} from tenant key {self.old} "
                f"to {self.new}{refused}{rest}")


@dataclass(slots=True)
class _Context:
    """What :func:`kcm.core.managed.save` needs of an operation context."""

    session: Session
    now: int


def rotate_tenant_key(session: Session, keyring: Keyring, tenant: str, *, now: int,
                      by: str, reason: str, detail: dict[str, object] | None = None,
                      source: str = "cli") -> tuple[str, list[str]]:
    """A new current L2 for ``tenant``, every other Active one Deactivated now; (the new
    L2's uid, the old ones' uids). Audited as ``RotateTenantKey`` by ``by``, for
    ``reason`` (the command, or the policy that caused it), with ``source`` the record's
    (``cli`` for the command, as its other records have; the sweeper gives its own)."""
    old_rows = session.scalars(select(ManagedObject).where(
        ManagedObject.tenant == tenant, ManagedObject.level == LEVEL_TENANT_KEY,
        ManagedObject.state == STATE_ACTIVE)).all()
    for row in old_rows:
        obj = managed.StoredObject(row, decode_attributes(row.attributes))
        obj.set(Tag.DEACTIVATION_DATE, now, ItemType.DATE_TIME)
        obj.set(Tag.STATE, int(lifecycle.state_at(obj.state, lifecycle.LifecycleDates(
            obj.value(Tag.ACTIVATION_DATE), now), now)))
        managed.save(_Context(session, now), obj)  # type: ignore[arg-type]
    session.flush()
    keyring.forget_current(tenant)
    new_uid = provision_tenant(session, keyring, tenant, now=now)
    keyring.forget_current(tenant)
    old = [row.uid for row in old_rows]
    append_audit(session, AuditEvent(
        principal=by, operation=ROTATE_OPERATION, result_status="SUCCESS",
        correlation_id=new_correlation_id(), source=source, tenant=tenant,
        object_ids=(new_uid, *old), detail={"reason": reason, **(detail or {})}),  # type: ignore[arg-type]
        clock=lambda: now)
    return new_uid, old


def rotate_tenant_keys_due(session: Session, keyring: Keyring, now: float) -> list[str]:
    """Rotate every tenant key older than its tenant's ``tenant_key_interval`` (a rotation
    policy at the tenant or default scope); describe each rotation.

    Only the tenants one of whose keys has its ``rotate_due`` come are judged (their
    Active tenant keys; :mod:`kcm.core.rotation_schedule`): a sweep read every tenant's
    (184 ms of the writer every 5 s with 10,000 tenants, nothing due). Each Active tenant
    key not due gets the time its age reaches the interval."""
    stored = policies(session)
    if not any(settings.tenant_key_interval for settings in stored.values()):
        rotation_schedule.not_due(session, LEVEL_TENANT_KEY, now)
        return []
    marked = session.execute(select(ManagedObject.uid, ManagedObject.tenant).where(
        rotation_schedule.keys_due(LEVEL_TENANT_KEY, now))).all()
    if not marked:
        return []
    seconds = int(now)
    done = []
    rotated: set[str] = set()
    when: dict[str, int | None] = {row.uid: None for row in marked}
    tenant_of = {row.uid: row.tenant for row in marked}
    of_marked = aliased(ManagedObject)
    for row in session.scalars(select(ManagedObject).where(
            ManagedObject.level == LEVEL_TENANT_KEY, ManagedObject.state == STATE_ACTIVE,
            ManagedObject.tenant.in_(select(of_marked.tenant).where(
                rotation_schedule.keys_due(LEVEL_TENANT_KEY, now, of_marked))))
            .order_by(ManagedObject.tenant, ManagedObject.created_seq.desc())).all():
        policy = effective(stored, row.tenant, "")
        since = made_or_activated(row, seconds)
        tenant_of[row.uid] = row.tenant
        if not policy.tenant_key_interval or seconds - since < policy.tenant_key_interval:
            when[row.uid] = rotation_schedule.due_at(since, policy.tenant_key_interval)
            continue
        if row.state != STATE_ACTIVE:
            continue  # retired just now, with a newer one of its tenant
        scope = policy.tenant_key_interval_from or "default"
        new, old = rotate_tenant_key(
            session, keyring, row.tenant, now=seconds, by="kcm-core/rotation",
            source="state-sweeper",
            reason=f"the tenant_key_interval ({policy.tenant_key_interval} s) of the "
                   f"{scope} policy", detail={"policy": scope, "trigger": "tenant_key_interval",
                                              "interval": policy.tenant_key_interval,
                                              "age": seconds - since})
        rotated.add(row.tenant)
        done.append(f"tenant {row.tenant}: tenant key {new} replaced {', '.join(old)} by the "
                    f"tenant_key_interval of the {scope} policy")
    # (A tenant rotated now: its keys were marked again by it.)
    rotation_schedule.schedule(session, {uid: due for uid, due in when.items()
                                         if tenant_of[uid] not in rotated})
    return done


def rewrap_step(session: Session, keyring: Keyring, now: float, *,
                batch: int = REWRAP_BATCH, refused: set[str] | None = None) -> list[Rewrapped]:
    """Move one batch of objects from a retired L2 to its tenant's current one (the first
    retired L2 that still wraps something and whose tenant has a current L2).

    A row that does not match its wrapping (:class:`WrappingMismatch`: changed in the
    database, or a version 1 blob refused; logged and counted by the keyring) is left
    under the retired L2, which is then kept, and its uid added to ``refused`` (the
    sweeper's, for the life of the process), which no later batch reads again: one such
    row no longer fails the step at every sweep, nor stops the rest of its tenant's move.

    Only the retired L2s that still wrap something are read, found by the database (one
    probe of the index on ``wrapped_by`` each): a retired L2 keeps its material until it
    is destroyed, and reading every one and asking about each in turn held the writer
    200 ms at every sweep with 1,000 tenants rotated once, and made rotating them all
    quadratic (1,000 steps of 144 ms)."""
    wrapped = aliased(ManagedObject)
    retired = session.execute(select(ManagedObject.uid, ManagedObject.tenant).where(
        ManagedObject.level == LEVEL_TENANT_KEY,
        ManagedObject.state.in_((STATE_DEACTIVATED, STATE_COMPROMISED)),
        ManagedObject.material.is_not(None),
        exists().where(wrapped.wrapped_by == ManagedObject.uid))
        .order_by(ManagedObject.created_seq)).all()
    for old in retired:
        # In no order but the index's on wrapped_by: a batch reads its own objects, neither
        # all the L2 still wraps (to sort them) nor, as a walk in created_seq order would
        # (PostgreSQL chose one), those earlier batches moved; each batch moves its objects
        # out of the range, so the next reads the rest (:func:`wrapped_by`). As columns, not
        # ORM objects, updated straight to the driver: nothing of them stays in the session,
        # which a sweep shares with the requests of its group commit (a step rolled back
        # midway left rows there with what it undid). A row a request of the group holds is
        # left to the next batch.
        query = wrapped_by(old.uid)
        if refused:
            query = query.where(ManagedObject.uid.not_in(refused))
        rows = [repository.ObjectColumns(*row) for row in session.execute(
            query.limit(batch + 1))]
        rows = [row for row in rows if row.tenant == old.tenant  # (all are: the L2's tenant)
                and not repository.in_session(session, row.uid)]
        if not rows:
            continue
        current = repository.find_l2(session, old.tenant, active_only=True)
        if current is None:
            continue  # nothing to move it to (a tenant whose every L2 was revoked)
        keyring.forget_current(old.tenant)
        moved, left = [], 0
        for row in rows[:batch]:
            try:
                flags = keyring.row_flags(row)  # (decoded once: the unwrap's and the wrap's)
                plaintext = keyring.unwrap(session, row, flags)
            except WrappingMismatch:
                if refused is not None:
                    refused.add(row.uid)
                left += 1
                continue
            blob, l2 = keyring.wrap_for_tenant(session, row.tenant, row.uid, plaintext,
                                               binding=Binding.of(row, flags))
            # (one UPDATE straight to the driver: the ORM's flush of each row took most of
            # a batch's 35 ms on the writer)
            repository.update_columns(session, row, material=blob, wrapped_by=l2)
            moved.append(row.uid)
        done = Rewrapped(old.tenant, old.uid, current.uid, len(moved), len(rows) > batch,
                         left)
        if not moved:
            return [done]
        append_audit(session, AuditEvent(
            principal="kcm-core/rotation", operation=AUDIT_OPERATION, result_status="SUCCESS",
            correlation_id=new_correlation_id(), source="state-sweeper", tenant=old.tenant,
            object_ids=tuple(moved),
            detail={"from": old.uid, "to": current.uid, "count": len(moved),
                    "more": done.more}), clock=lambda: now)
        return [done]
    return []


def wrapped_by(uid: str) -> Select[Any]:
    """The columns of the objects with material that the key ``uid`` wraps, found by the
    index on ``wrapped_by`` alone. A uid is unique across tenants, so the tenant is no criterion
    here: with it SQLite (which keeps no statistics) walked the tenant's index instead, and
    each batch of a re-wrap stepped past every object the batches before it had moved (a
    batch held the writer 136 ms at 256,000 objects moved, against 5 ms)."""
    return select(*ManagedObject.__table__.columns).where(
        ManagedObject.wrapped_by == uid, ManagedObject.material.is_not(None))


def wrapped_counts(session: Session, tenant: str) -> dict[str, int]:
    """How many objects (with material) each wrapping key of ``tenant`` wraps, by its uid
    (``L1`` for the tenant keys themselves)."""
    return dict(session.execute(
        select(ManagedObject.wrapped_by, func.count())
        .where(ManagedObject.tenant == tenant, ManagedObject.material.is_not(None))
        .group_by(ManagedObject.wrapped_by)).all())


def check_destroy(session: Session, tenant: str, uid: str, retired_at: int | None,
                  now: int) -> None:
    """Refuse (Wrong Key Lifecycle State; 1.x Permission Denied) the Destroy of ``tenant``'s
    L2 ``uid`` while any key or object with material is still wrapped under it, or within
    :data:`DESTROY_GRACE` seconds of ``retired_at``, when it stopped being Active (None:
    it never was)."""
    # By the index on wrapped_by, as :func:`wrapped_by`; the tenant as an expression no
    # index serves (``tenant || ''``), so that SQLite does not walk the tenant's index.
    wrapped = session.scalar(select(func.count()).select_from(ManagedObject).where(
        ManagedObject.wrapped_by == uid, ManagedObject.tenant.concat("") == tenant,
        ManagedObject.material.is_not(None)))
    if wrapped:
        raise KmipError(ResultReason.WRONG_KEY_LIFECYCLE_STATE,
                        f"the tenant key still wraps {wrapped} keys or objects: the re-wrap "
                        "has not finished")
    if retired_at is not None and now - retired_at < DESTROY_GRACE:
        raise KmipError(ResultReason.WRONG_KEY_LIFECYCLE_STATE,
                        f"the tenant key was retired less than {DESTROY_GRACE} s ago; "
                        "try again later")

