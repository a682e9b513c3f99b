"""Managed keys that rotate by themselves, by their KMIP 2.1 rotation attributes: one step of
the state sweeper.

A client asks for it on a managed symmetric key with Rotate Automatic = true and a Rotate
Interval (KMIP 2.1 §4) of at least the core's ``min_rotate_interval``
(:func:`kcm.core.managed.check_rotate_interval`); the store keeps when it is due in
``managed_objects.rotate_due`` (:func:`kcm.core.managed.rotate_due`: the last Rotate Date,
else its Activation Date or Initial Date, plus the interval). Each sweep, every Active or
Pre-Active one whose time has come — at most ``limit`` per sweep, shared by the tenants in
turn (each tenant's oldest due first: the first due key of every tenant with one, then the
second, ...), so no tenant takes more than its share while another has keys due — is
rotated in the sweep's transaction, as if its tenant's administrator had sent a Re-key
(KMIP 2.1 §6.1.41, with :mod:`kcm.core.operations.rekey`): a replacement with the same
attributes and fresh material, linked both ways, the name moving to it, activated Rotate
Offset seconds from now (0 when unset: at once). The server then maintains, as 2.1
describes: on the replacement Rotate Date (now), Rotate Generation (one more than the old
key's, which counts from 0) and Rotate Latest (true); on the old key Rotate Latest (false),
after which it is not due again.
Each rotation is an ``AutoRotate`` audit record naming the attribute policy that caused it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from kcm.core import managed
from kcm.core.audit import AuditEvent, append_audit, savepoint
from kcm.core.auto_rotation import AUDIT_OPERATION, ROTATOR
from kcm.core.context import Caller, OperationContext
from kcm.core.keyring import Keyring, WrappingMismatch
from kcm.core.keys import L1Error
from kcm.core.operations.rekey import re_key
from kcm.core.server_info import DEFAULT_MIN_ROTATE_INTERVAL, ServerInfo
from kcm.core.store.quota import AtBound, at_bound
from kcm.core.store.schema import STATE_ACTIVE, STATE_PRE_ACTIVE, ManagedObject
from kcm.identity import Principal, Role
from kcm.kernel.correlation import new_correlation_id
from kcm.kmip.enums import ObjectType
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import IdPlaceholder
from kcm.kmip.payloads import ReKeyRequest
from kcm.kmip.tags import Tag

__all__ = ["AT_BOUND_RETRY_S", "ManagedRotation", "rotate_managed_due"]

#: Managed keys rotated in one sweep at most (the rest wait for the next sweep).
DEFAULT_LIMIT = 100


class ManagedRotation:
    """One managed key rotated: ``uid`` replaced by ``replacement`` (or why not)."""

    __slots__ = ("tenant", "uid", "replacement", "error")

    def __init__(self, tenant: str, uid: str, replacement: str | None,
                 error: str | None = None) -> None:
        self.tenant = tenant
        self.uid = uid
        self.replacement = replacement
        self.error = error

    def __str__(self) -> str:
        if self.error is not None:
            return f"managed key {self.uid} of {self.tenant} not rotated: {self.error}"
        return (f"managed key {self.uid} of {self.tenant} rotated to {self.replacement} by its "
                "Rotate Interval")


def rotate_managed_due(session: Session, keyring: Keyring, now: float, *,
                       trust_domain: str = "kcm.invalid",
                       limit: int = DEFAULT_LIMIT,
                       min_rotate_interval: int = DEFAULT_MIN_ROTATE_INTERVAL,
                       ) -> list[ManagedRotation]:
    """Rotate the managed keys whose Rotate Interval has passed at ``now``: at most
    ``limit``, shared by the tenants in turn (:func:`_due_in_turn`). A key whose Rotate
    Interval is below ``min_rotate_interval`` (stored before the minimum was enforced, or
    raised since) is not rotated: its replacement would be refused."""
    seconds = int(now)
    # A tenant at its bound of stored objects cannot take a replacement: its keys stay
    # due, untried, until it has room (a higher bound, a purge), and take no turn.
    due = _due_in_turn(session, seconds, limit, skip=at_bound(session))
    server_info = ServerInfo(min_rotate_interval=min_rotate_interval)
    done = []
    for row in due:
        ctx = _context(session, keyring, row.tenant, seconds, trust_domain, server_info)
        try:
            with savepoint(session):  # (a key that fails takes its audit records along)
                rotated = _rotate(ctx, row.uid)
                if rotated is not None:
                    done.append(rotated)
        except (DBAPIError, L1Error):
            raise  # the database's or L1's trouble, not this key's: the step is retried
        except WrappingMismatch as e:
            # Changed in the database (logged and counted): nothing of it is written, not
            # even its ``rotate_due`` (which would fail the step, and every other key's
            # rotation in it, at every sweep). Picked again next sweep, refused again.
            _audit(ctx, row.uid, None, {"error": e.message})
            done.append(ManagedRotation(row.tenant, row.uid, None, e.message))
            continue
        except Exception as e:
            # Never again by itself until a client changes it: the error is in the log and
            # the audit record, and the key no longer looks due. Any error, not only a KMIP
            # one (a stored value no rotation can read): one key never stops the others.
            message = e.message if isinstance(e, KmipError) else (
                f"internal error ({type(e).__name__})")
            # But a tenant that reached its bound in this sweep (room for fewer keys than
            # were due) is the operator's to end: tried again later.
            row.rotate_due = seconds + AT_BOUND_RETRY_S if isinstance(e, AtBound) else None
            session.flush()
            _audit(ctx, row.uid, None, {"error": message})
            done.append(ManagedRotation(row.tenant, row.uid, None, message))
    return done


#: Seconds after which a key not rotated because its tenant was at its bound of stored
#: objects (:class:`kcm.core.store.quota.AtBound`) is tried again.
AT_BOUND_RETRY_S = 3600

#: How many of the keys due longest one sweep reads at most, in limits (:func:`_due_in_turn`).
WINDOW_LIMITS = 16


def _due_in_turn(session: Session, now: int, limit: int, *,
                 skip: Collection[str] = ()) -> list[ManagedObject]:
    """At most ``limit`` keys due at ``now``, the tenants taking turns: every tenant's
    oldest due key first (oldest first), then every tenant's second, and so on. A tenant
    with many keys due thus takes no more than another with as many, and only what the
    others leave of the limit.

    Only the :data:`WINDOW_LIMITS` x ``limit`` keys due longest are read, in the order of
    the index on ``rotate_due``, and the turns are taken among them: reading and sorting
    every key due (a window function over them all) held the writer 0.45 s every sweep
    with 256,000 keys due. While more are due than that, a tenant whose keys all came
    due later than those waits for them to be rotated (100 a sweep by default).

    The keys of the tenants in ``skip`` (those at their bound of stored objects) are
    passed over, wherever they are in that order."""
    query = select(ManagedObject.uid, ManagedObject.tenant, ManagedObject.rotate_due).where(
        ManagedObject.rotate_due <= now, ManagedObject.level.is_(None),
        ManagedObject.object_type == int(ObjectType.SYMMETRIC_KEY),
        ManagedObject.state.in_((STATE_ACTIVE, STATE_PRE_ACTIVE)))
    if skip:
        query = query.where(ManagedObject.tenant.not_in(list(skip)))
    window = list(session.execute(
        query.order_by(ManagedObject.rotate_due).limit(WINDOW_LIMITS * limit)))
    by_tenant: dict[str, list[tuple[int, str]]] = {}
    for uid, tenant, rotate_due in window:
        by_tenant.setdefault(tenant, []).append((rotate_due, uid))
    turns = sorted((turn, rotate_due, uid)
                   for due in by_tenant.values()
                   for turn, (rotate_due, uid) in enumerate(sorted(due)[:limit]))
    picked = [uid for _, _, uid in turns[:limit]]
    if not picked:
        return []
    rows = {row.uid: row for row in session.scalars(
        select(ManagedObject).where(ManagedObject.uid.in_(picked)))}
    return [rows[uid] for uid in picked if uid in rows]


def _rotate(ctx: OperationContext, uid: str) -> ManagedRotation | None:
    """Rotate ``uid``, due by its stored row; None when, loaded, it no longer rotates: its
    Deactivation Date passed since it was last written (the row's state is as it was then),
    so it is Deactivated now and never rotated (its state and its rotation, none, stored);
    or when its attributes (which the row MAC covers) say it is not due yet."""
    old = managed.load(ctx, uid)
    due = managed.rotate_due(old)
    if due is None or due > ctx.now:
        # (not due by its attributes: the stored ``rotate_due``, which the row MAC leaves
        # out, was changed in the database; saved, it is what they say again)
        managed.save(ctx, old, changed=False)
        return None
    generation = int(old.value(Tag.ROTATE_GENERATION) or 0)
    interval = old.value(Tag.ROTATE_INTERVAL)
    offset = old.value(Tag.ROTATE_OFFSET)
    # Re-key hands the line on: the replacement is the latest, of the next generation.
    answer = re_key(ctx, ReKeyRequest(unique_identifier=uid, offset=int(offset or 0)))
    new_uid = str(answer.unique_identifier)
    _audit(ctx, uid, new_uid, {
        "policy": f"Rotate Interval of {uid}", "trigger": "rotate_interval",
        "rotate_interval": int(interval or 0), "rotate_offset": int(offset or 0),
        "rotate_generation": generation + 1})
    return ManagedRotation(old.tenant, uid, new_uid)


def _audit(ctx: OperationContext, uid: str, new_uid: str | None,
           detail: dict[str, object]) -> None:
    now = ctx.now
    append_audit(ctx.session, AuditEvent(
        principal=ROTATOR, operation=AUDIT_OPERATION,
        result_status="SUCCESS" if new_uid else "OPERATION_FAILED",
        correlation_id=new_correlation_id(), source="state-sweeper",
        tenant=ctx.principal.tenant,
        object_ids=(new_uid, uid) if new_uid else (uid,),
        detail=detail), clock=lambda: now)  # type: ignore[arg-type]


def _context(session: Session, keyring: Keyring, tenant: str, now: int,
             trust_domain: str, server_info: ServerInfo) -> OperationContext:
    """The context of a Re-key made by the server for ``tenant``: as its administrator
    (who may change any object of the tenant), in KMIP 2.1."""
    principal = Principal(Role.ADMIN, trust_domain, tenant=tenant, name="kcm-rotation",
                          uri=f"spiffe://{trust_domain}/tenant/{tenant}/admin/kcm-rotation")
    random_bytes: Callable[[int], bytes] = keyring.random_bytes
    return OperationContext(session=session, caller=Caller(principal, "state-sweeper"),
                            version=(2, 1), now=now, keyring=keyring,  # type: ignore[arg-type]
                            server_info=server_info, id_placeholder=IdPlaceholder(),
                            random_bytes=random_bytes)
