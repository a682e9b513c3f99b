"""When the state sweeper judges a tenant or service key's rotation policy next: the
``rotate_due`` of tenant and service keys (L2, L3), read by a partial index (migration 0013).

The rotation steps (:func:`kcm.core.auto_rotation.rotate_due`,
:func:`kcm.core.tenant_rotation.rotate_tenant_keys_due`) judge only the keys whose
``rotate_due`` has come and their service's or tenant's other keys, instead of every
current key at every sweep (with 10,000 tenants that held the writer 290 ms every 5 s,
whether or not anything was due). A key's ``rotate_due`` is

* :data:`~kcm.core.store.schema.LOOK_AGAIN` (the next sweep) when anything that could make
  it due sooner happens: it is made, or its state or dates change (the store sets it then,
  :func:`kcm.core.store.repository.update_columns`, whoever writes), a policy of its scope
  changes (:func:`policy_changed`), or its usage count reaches its cap
  (:func:`kcm.core.usage.add_uses`);
* when the step that judged it finds it not due: when its age reaches the interval (its
  Activation or Initial Date plus the interval), or NULL (no interval; a usage cap wakes
  it; or not the current version of its service: the current one carries the service's).

So a key is judged at the first sweep at or after the moment a judgement of every key at
every sweep would have found it due, and at that sweep: the same keys rotate at the same
sweeps. Everything is in the database, written in the transaction of the change (writers
are serialized), so several cores on one PostgreSQL database need nothing more: whichever
holds the sweeper's lease reads what every core wrote.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session

from kcm.core.store.schema import (
    LEVEL_SERVICE_KEY,
    LEVEL_TENANT_KEY,
    LOOK_AGAIN,
    STATE_ACTIVE,
    ManagedObject,
)

__all__ = ["due_at", "keys_due", "look_again", "not_due", "policy_changed", "schedule"]

_OBJECTS = ManagedObject.__table__
#: The latest a Date-Time holds (:data:`kcm.core.managed.LATEST_DATE`; not imported: the
#: policy commands read this module, and need nothing of the object model).
_LATEST_DATE = (1 << 63) - 1


def keys_due(level: int, now: float, objects: Any = ManagedObject) -> Any:
    """The condition of the keys of ``level`` whose policy is to be judged at ``now`` (a
    range of the partial index on (level, rotate_due)); of ``objects``, an alias of
    ``managed_objects``, if given."""
    return (objects.level == level) & (objects.rotate_due <= int(now))


def due_at(since: float, interval: int) -> int | None:
    """When a key whose age counts from ``since`` is due by an ``interval`` (0: never by
    age: None). Whole seconds, never later than the judgement finds it due."""
    return min(int(since) + interval, _LATEST_DATE) if interval else None


def schedule(session: Session, when: Mapping[str, int | None]) -> None:
    """Set the ``rotate_due`` of keys (uid -> when; None: until written again): the step
    that judged them found them not due. Plain updates of the one column, no new
    revision: nothing but the sweeper reads it of these keys."""
    if when:
        session.execute(
            update(_OBJECTS).where(_OBJECTS.c.uid == bindparam("w_uid"))
            .values(rotate_due=bindparam("w_due")),
            [{"w_uid": uid, "w_due": due} for uid, due in sorted(when.items())])


def not_due(session: Session, level: int, now: float) -> None:
    """No policy can make keys of ``level`` rotate: those due are not looked at again until
    they or a policy are written (the keys a write marked accumulate otherwise, and the
    managed keys' walk of ``rotate_due`` would step past them at every sweep)."""
    session.execute(update(_OBJECTS).where(keys_due(level, now)).values(rotate_due=None))


def look_again(session: Session, uids: Iterable[str]) -> None:
    """Judge the policies of these service or tenant keys at the next sweep."""
    wanted = sorted(set(uids))
    if wanted:
        session.execute(update(_OBJECTS).where(
            _OBJECTS.c.uid.in_(wanted), _OBJECTS.c.level.is_not(None))
            .values(rotate_due=LOOK_AGAIN))


def policy_changed(session: Session, tenant: str, service: str) -> None:
    """A policy of the scope ``tenant``/``service`` (``""``: the wider scope) was set or
    cleared: every Active key it may apply to is judged at the next sweep (one statement;
    all of them for the default scope, once)."""
    conditions = [_OBJECTS.c.level.in_((LEVEL_TENANT_KEY, LEVEL_SERVICE_KEY)),
                  _OBJECTS.c.state == STATE_ACTIVE]
    if tenant:
        conditions.append(_OBJECTS.c.tenant == tenant)
    if service:
        conditions += [_OBJECTS.c.level == LEVEL_SERVICE_KEY, _OBJECTS.c.service == service]
    session.execute(update(_OBJECTS).where(*conditions).values(rotate_due=LOOK_AGAIN))
