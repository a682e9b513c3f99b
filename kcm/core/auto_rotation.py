"""Service keys (L3) that rotate by themselves: one step of the state sweeper.

For each service, the sweeper looks at the current version (the newest Active one) under
its effective rotation policy (:mod:`kcm.core.rotation_policy`; every service has one, with
at least the built-in usage cap, whether or not a policy is stored):

* older than ``interval`` seconds (from its Activation Date), or
* ``max_uses`` or more encryptions counted under it (:mod:`kcm.core.usage`),

and then, in the sweep's transaction: a new version is made current
(:func:`kcm.core.hierarchy.provision_service`, which writes ``l3.rotated``: every gateway
fetches it and seals new L4s under it), every older Active version gets a Deactivation
Date ``overlap`` seconds on (when that passes, the sweep's date step Deactivates it and
``l3.state`` tells the gateways: decrypt-only from then on; with ``overlap`` 0 it is
Deactivated at once), and an audit record ``AutoRotate`` names the policy scope and the
setting that caused it. The KMIP 2.1 rotation attributes are kept on the versions as 2.1
describes them (Rotate Date, Rotate Generation, Rotate Latest).

Old L4 tokens keep opening under their version until it is destroyed: rotation never
destroys anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session, aliased

from kcm.core import managed, rotation_schedule
from kcm.core.attribute_blob import decode_attributes
from kcm.core.audit import AuditEvent, append_audit
from kcm.core.hierarchy import provision_service
from kcm.core.keyring import Keyring
from kcm.core.rotation_policy import (
    BUILTIN,
    EffectivePolicy,
    effective,
    made_or_activated,
    policies,
    policies_once,
)
from kcm.core.store import repository
from kcm.core.store.schema import LEVEL_SERVICE_KEY, STATE_ACTIVE, ManagedObject
from kcm.core.usage import uses_of
from kcm.kernel import lifecycle
from kcm.kernel.correlation import new_correlation_id
from kcm.kmip.tags import Tag
from kcm.ttlv import ItemType

__all__ = ["AUDIT_OPERATION", "Rotation", "cap_reached", "due_trigger", "rotate_due"]

AUDIT_OPERATION = "AutoRotate"
#: The principal automatic rotations are audited as.
ROTATOR = "kcm-core/rotation"


@dataclass(frozen=True, slots=True)
class Rotation:
    """One automatic rotation: ``tenant``/``service`` went from ``previous`` (uid, version)
    to ``current``, because ``trigger`` (``interval`` or ``max_uses``) of the policy scope
    ``policy`` was reached."""

    tenant: str
    service: str
    previous_uid: str
    previous_version: int
    uid: str
    version: int
    trigger: str
    policy: str

    def __str__(self) -> str:
        cause = ("the built-in max_uses" if self.policy == BUILTIN
                 else f"the {self.trigger} of the {self.policy} policy")
        return (f"{self.tenant}/{self.service} rotated to version {self.version} ({self.uid}) "
                f"by {cause}")


@dataclass(slots=True)
class _SweepContext:
    """What :func:`kcm.core.managed.save` needs of an operation context."""

    session: Session
    now: int


def due_trigger(policy: EffectivePolicy, age: float, uses: int) -> str | None:
    """What makes a current version of this ``age`` (seconds) with ``uses`` encryptions due
    for rotation under ``policy``: ``max_uses``, ``interval``, or None (not due)."""
    if policy.max_uses and uses >= policy.max_uses:
        return "max_uses"
    if policy.interval and age >= policy.interval:
        return "interval"
    return None


def rotate_due(session: Session, keyring: Keyring, now: float) -> list[Rotation]:
    """Rotate every service key whose policy says it is due at ``now``; return what was
    done. One query for the policies, one for the keys due: nothing more when none is
    (with no policy stored too: a version that reached the built-in cap is due).

    Only the services one of whose keys has its ``rotate_due`` come are judged
    (:mod:`kcm.core.rotation_schedule`): a sweep reads what is due, not the current key of
    every service (106 ms of the writer every 5 s with 10,000 services, nothing due). Those
    not due get their next ``rotate_due``, on their current version."""
    stored = policies(session)
    marked = session.execute(select(
        ManagedObject.uid, ManagedObject.tenant, ManagedObject.service,
    ).where(rotation_schedule.keys_due(LEVEL_SERVICE_KEY, now))).all()
    if not marked:
        return []
    current = _current_versions(session, now)
    uses = uses_of(session, [row.uid for row in current])
    rotations = []
    rotated: set[tuple[str, str]] = set()
    when: dict[str, int | None] = {}
    for row in current:
        tenant, service = row.tenant, row.service or ""
        policy = effective(stored, tenant, service)
        since = made_or_activated(row, now)
        age = now - since
        count = uses.get(row.uid, 0)
        trigger = due_trigger(policy, age, count)
        if trigger is None:
            when[row.uid] = rotation_schedule.due_at(since, policy.interval)
            continue
        previous = session.scalar(select(ManagedObject).where(ManagedObject.uid == row.uid))
        assert previous is not None  # read in this transaction, writers serialized
        rotations.append(_rotate(session, keyring, previous, policy, trigger, age, count,
                                 now))
        rotated.add((tenant, service))
    # The other keys marked are not their service's current one (or it has none): the
    # current one carries the service's. A service rotated now was marked again by it.
    rotation_schedule.schedule(session, {
        **{row.uid: None for row in marked if (row.tenant, row.service or "") not in rotated},
        **when})
    return rotations


def cap_reached(session: Session, uids: Iterable[str]) -> bool:
    """Whether one of ``uids`` is the current version of its service and has reached the
    usage cap of its policy (so a sweep now would rotate it). Nothing is read for no
    ``uids`` (those :func:`kcm.core.usage.add_uses` found at their cap are enough); the
    policies once per transaction."""
    uses = uses_of(session, uids)
    if not uses:
        return False
    stored = policies_once(session)
    for uid, count in uses.items():
        row = repository.get_l3(session, uid)
        if row is None or row.state != STATE_ACTIVE:
            continue
        if count < effective(stored, row.tenant, row.service or "").max_uses:
            continue
        current = repository.find_l3(session, row.tenant, row.service or "", active_only=True)
        if current and current[0].uid == uid:
            return True
    return False


def _current_versions(session: Session, now: float) -> list[Any]:
    """The newest Active L3 version of every service one of whose keys is due to be judged
    at ``now``: the columns the sweep judges by (uid, tenant, service, key_version,
    activation_date, initial_date), not whole rows; by tenant and service. Each service's
    Active versions are read by the index on (level, state, tenant, service)."""
    marked = aliased(ManagedObject)
    rows = session.execute(select(
        ManagedObject.uid, ManagedObject.tenant, ManagedObject.service,
        ManagedObject.key_version, ManagedObject.activation_date, ManagedObject.initial_date,
    ).distinct().join(marked, and_(
        marked.tenant == ManagedObject.tenant, marked.service == ManagedObject.service,
    )).where(
        rotation_schedule.keys_due(LEVEL_SERVICE_KEY, now, marked),
        ManagedObject.level == LEVEL_SERVICE_KEY, ManagedObject.state == STATE_ACTIVE,
    ).order_by(ManagedObject.tenant, ManagedObject.service,
               ManagedObject.key_version.desc())).all()
    seen: set[tuple[str, str | None]] = set()
    current = []
    for row in rows:
        if (row.tenant, row.service) not in seen:
            seen.add((row.tenant, row.service))
            current.append(row)
    return current


def _rotate(session: Session, keyring: Keyring, previous: ManagedObject,
            policy: EffectivePolicy, trigger: str, age: float, uses: int,
            now: float) -> Rotation:
    seconds = int(now)
    tenant, service = previous.tenant, previous.service or ""
    uid = provision_service(session, keyring, tenant, service, now=seconds)
    new = session.scalar(select(ManagedObject).where(ManagedObject.uid == uid))
    assert new is not None
    generation = _generation(previous)
    _mark_rotated(session, new, generation + 1, seconds)
    retire_at = seconds + policy.overlap
    for row in session.scalars(select(ManagedObject).where(
            ManagedObject.tenant == tenant, ManagedObject.level == LEVEL_SERVICE_KEY,
            ManagedObject.service == service, ManagedObject.state == STATE_ACTIVE,
            ManagedObject.uid != uid)).all():
        _retire(session, row, retire_at, seconds)
    scope = getattr(policy, f"{trigger}_from") or "default"
    rotation = Rotation(tenant, service, previous.uid, previous.key_version or 0, uid,
                        new.key_version or 0, trigger, scope)
    detail: dict[str, object] = {
        "policy": scope, "trigger": trigger, "service": service,
        "previous_version": rotation.previous_version, "version": rotation.version,
        "overlap": policy.overlap, "deactivation_date": retire_at}
    if trigger == "interval":
        detail.update(interval=policy.interval, age=int(age))
    else:
        detail.update(max_uses=policy.max_uses, uses=uses)
    append_audit(session, AuditEvent(
        principal=ROTATOR, operation=AUDIT_OPERATION, result_status="SUCCESS",
        correlation_id=new_correlation_id(), source="state-sweeper", tenant=tenant,
        object_ids=(uid, previous.uid), detail=detail),  # type: ignore[arg-type]
        clock=lambda: now)
    return rotation


def _generation(row: ManagedObject) -> int:
    """The Rotate Generation of a version: as stored, else its version number less one."""
    value = managed.StoredObject(row, decode_attributes(row.attributes)).value(
        Tag.ROTATE_GENERATION)
    return int(value) if value is not None else max((row.key_version or 1) - 1, 0)


def _mark_rotated(session: Session, row: ManagedObject, generation: int, now: int) -> None:
    """The new version's KMIP 2.1 rotation attributes: rotated now, its generation, latest."""
    obj = managed.StoredObject(row, decode_attributes(row.attributes))
    obj.set(Tag.ROTATE_DATE, now, ItemType.DATE_TIME)
    obj.set(Tag.ROTATE_GENERATION, generation, ItemType.INTEGER)
    obj.set(Tag.ROTATE_LATEST, True, ItemType.BOOLEAN)
    managed.save(_SweepContext(session, now), obj, changed=False)  # type: ignore[arg-type]


def _retire(session: Session, row: ManagedObject, when: int, now: int) -> None:
    """A replaced version is Deactivated at ``when`` (at once if that is now), as a Re-key
    of a service key retires its predecessor (:mod:`kcm.core.operations.rekey`); it is no
    longer the latest of its line."""
    obj = managed.StoredObject(row, decode_attributes(row.attributes))
    obj.set(Tag.ROTATE_LATEST, False, ItemType.BOOLEAN)
    current = obj.value(Tag.DEACTIVATION_DATE)
    if current is None or current > when:
        obj.set(Tag.DEACTIVATION_DATE, when, ItemType.DATE_TIME)
        moved = lifecycle.state_at(obj.state, lifecycle.LifecycleDates(
            obj.value(Tag.ACTIVATION_DATE), when), now)
        obj.set(Tag.STATE, int(moved))
    managed.save(_SweepContext(session, now), obj)  # type: ignore[arg-type]
