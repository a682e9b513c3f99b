"""What ``kcm core tenant list|show|remove`` and ``kcm core service list`` do: read (or, for
remove, delete) the tenants and their key hierarchy in kcm-core's database directly.

Reading needs the database alone (not L1); removing writes an audit record, so it needs
the L1 key as ``kcm core tenant add`` does. Neither opens a database that does not exist.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from kcm.cli import CommandError
from kcm.cli.core_cmd import _with_keyring, core_config, open_store, run_in_store
from kcm.core.store.schema import STATE_DESTROYED, STATE_DESTROYED_COMPROMISED

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement, FromClause
    from sqlalchemy.orm import Session


def iso(seconds: float | None) -> str | None:
    """POSIX seconds as ISO 8601 UTC ("2026-12-03T14:02:17Z"), or None."""
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _state(value: int | None) -> str:
    from kcm.kmip.enums import State
    from kcm.kmip.labels import enum_label

    return enum_label(State, value)


def _print_lines(args: argparse.Namespace, records: list[dict[str, Any]],
                 text: Callable[[dict[str, Any]], str]) -> None:
    for record in records:
        print(json.dumps(record, sort_keys=True) if args.json else text(record))


def _tenants(session: Session, default: int, limits: Any) -> list[dict[str, Any]]:
    from sqlalchemy import func, select

    from kcm.core.store.schema import LEVEL_SERVICE_KEY, ManagedObject, Tenant

    objects = dict(session.execute(select(ManagedObject.tenant, func.count())
                                   .group_by(ManagedObject.tenant)).all())
    services = dict(session.execute(
        select(ManagedObject.tenant, func.count(func.distinct(ManagedObject.service)))
        .where(ManagedObject.level == LEVEL_SERVICE_KEY).group_by(ManagedObject.tenant)).all())
    unfinished = _unfinished_removals(session)
    return [{"tenant": tenant.name, "created": iso(tenant.created_at),
             "services": services.get(tenant.name, 0), "objects": objects.get(tenant.name, 0),
             **_stored(tenant, default), **_rate(tenant, limits),
             "removal_unfinished": tenant.name in unfinished}
            for tenant in session.scalars(select(Tenant).order_by(Tenant.name))]


def _stored(tenant: Any, default: int) -> dict[str, Any]:
    """What a tenant stores against its bound (kcm.core.store.quota): ``stored``, the
    ``bound`` (0: none) and whether it is the tenant's own (else the configuration's
    ``max_objects_per_tenant``, ``default``)."""
    own = tenant.max_objects
    return {"stored": tenant.stored, "bound": default if own is None else own,
            "own_bound": own is not None}


def _rate(tenant: Any, limits: Any) -> dict[str, Any]:
    """A tenant's request rate (kcm.core.request_rates): ``requests_per_second`` (0: none)
    and ``request_burst`` (batch items), and whether each is its own (else the
    configuration's ``requests_per_second_per_tenant``, ``request_burst_per_tenant``)."""
    from kcm.core.request_rates import burst_of

    rate = (limits.requests_per_second_per_tenant if tenant.requests_per_second is None
            else tenant.requests_per_second)
    burst = (limits.request_burst_per_tenant if tenant.request_burst is None
             else tenant.request_burst)
    return {"requests_per_second": rate, "own_rate": tenant.requests_per_second is not None,
            "request_burst": int(burst_of(rate, burst)) if rate else 0,
            "own_burst": tenant.request_burst is not None}


def _bound_text(record: dict[str, Any]) -> str:
    bound = "none" if not record["bound"] else f"{record['bound']:,}"
    return f"stored {record['stored']:,} of {bound}" + (
        " (its own)" if record["own_bound"] else "")


def _rate_text(record: dict[str, Any]) -> str:
    if not record["requests_per_second"]:
        return "request rate none" + (" (its own)" if record["own_rate"] else "")
    return (f"request rate {record['requests_per_second']:g}/s"
            + (" (its own)" if record["own_rate"] else "")
            + f" burst {record['request_burst']:,}"
            + (" (its own)" if record["own_burst"] else ""))


def run_tenant_list(args: argparse.Namespace) -> int:
    config = core_config(args)
    default = config.limits.max_objects_per_tenant
    records = run_in_store(open_store(args, config), partial(
        _tenants, default=default, limits=config.limits), write=False)
    _print_lines(args, records, lambda r: (
        f"{r['tenant']}  created {r['created']}  services {r['services']}  "
        f"objects {r['objects']}  {_bound_text(r)}  {_rate_text(r)}" + (
            f"  removal unfinished (kcm core tenant remove {r['tenant']} --yes finishes it)"
            if r["removal_unfinished"] else "")))
    return 0


def _service_keys(session: Session, tenant: str | None) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from kcm.core.store.schema import LEVEL_SERVICE_KEY, ManagedObject

    query = select(ManagedObject).where(ManagedObject.level == LEVEL_SERVICE_KEY)
    if tenant is not None:
        query = query.where(ManagedObject.tenant == tenant)
    rows = session.scalars(query.order_by(ManagedObject.tenant, ManagedObject.service,
                                          ManagedObject.key_version))
    return [{"tenant": row.tenant, "service": row.service, "version": row.key_version,
             "unique_identifier": row.uid, "state": _state(row.state),
             "created": iso(row.initial_date)} for row in rows]


def _require_tenant(session: Session, tenant: str) -> Any:
    from kcm.core.store.schema import Tenant

    found = session.get(Tenant, tenant)
    if found is None:
        raise CommandError(f"no tenant {tenant!r}")
    return found


def run_service_list(args: argparse.Namespace) -> int:
    def read(session: Session) -> list[dict[str, Any]]:
        if args.tenant is not None:
            _require_tenant(session, args.tenant)
        return _service_keys(session, args.tenant)

    records = run_in_store(open_store(args), read, write=False)
    _print_lines(args, records, lambda r: (
        f"{r['tenant']}/{r['service']}  version {r['version']}  {r['unique_identifier']}  "
        f"{r['state']}  created {r['created']}"))
    return 0


def run_tenant_show(args: argparse.Namespace) -> int:
    from sqlalchemy import func, select

    from kcm.core.store.schema import LEVEL_TENANT_KEY, L4Tombstone, ManagedObject
    from kcm.core.tenant_rotation import wrapped_counts

    def read(session: Session) -> dict[str, Any]:
        tenant = _require_tenant(session, args.tenant)
        wraps = wrapped_counts(session, args.tenant)
        tenant_keys = session.scalars(
            select(ManagedObject).where(ManagedObject.tenant == args.tenant,
                                        ManagedObject.level == LEVEL_TENANT_KEY)
            .order_by(ManagedObject.created_seq)).all()
        states = Counter({_state(state): count for state, count in session.execute(
            select(ManagedObject.state, func.count())
            .where(ManagedObject.tenant == args.tenant, ManagedObject.level.is_(None))
            .group_by(ManagedObject.state)).all()})
        tombstones = session.scalar(select(func.count()).select_from(L4Tombstone)
                                    .where(L4Tombstone.tenant == args.tenant))
        return {"tenant": tenant.name, "created": iso(tenant.created_at),
                **_stored(tenant, default), **_rate(tenant, config.limits),
                "tenant_keys": [{"unique_identifier": key.uid, "state": _state(key.state),
                                 "created": iso(key.initial_date),
                                 "wraps": wraps.get(key.uid, 0)} for key in tenant_keys],
                "service_keys": _service_keys(session, args.tenant),
                "objects": dict(sorted(states.items())),
                "l4_tombstones": tombstones,
                "removal_unfinished": bool(_unfinished_removals(session, args.tenant))}

    config = core_config(args)
    default = config.limits.max_objects_per_tenant
    shown = run_in_store(open_store(args, config), read, write=False)
    if args.json:
        print(json.dumps(shown, sort_keys=True))
        return 0
    print(f"tenant {shown['tenant']}, created {shown['created']}, {_bound_text(shown)} "
          "(objects and L4 tombstones)")
    print(f"  {_rate_text(shown)} (batch items)")
    for key in shown["tenant_keys"]:
        print(f"  tenant key (L2) {key['unique_identifier']}  {key['state']}  "
              f"created {key['created']}  wraps {key['wraps']}")
    for key in shown["service_keys"]:
        print(f"  service key (L3) {key['service']} version {key['version']}  "
              f"{key['unique_identifier']}  {key['state']}  created {key['created']}")
    objects = ", ".join(f"{count} {state}" for state, count in shown["objects"].items())
    print(f"  objects: {objects or 'none'}")
    print(f"  revoked or destroyed L4 tokens: {shown['l4_tombstones']}")
    if shown["removal_unfinished"]:
        print(f"  removal unfinished: kcm core tenant remove {shown['tenant']} --yes "
              "finishes it")
    return 0


#: Rows ``kcm core tenant remove`` deletes per transaction once the tenant is removed: up
#: to this many of its L4 tombstones, then (none left) up to this many of its destroyed
#: objects with their names and groups. Each transaction holds the writers' lock that
#: long, never for the whole tenant.
REMOVAL_BATCH = 1000
#: Seconds between two of those transactions on SQLite: longer than the longest sleep of
#: SQLite's busy handler (100 ms), so that a writer waiting for the lock (a running core's)
#: finds it free between two batches. PostgreSQL queues a waiting writer on the writers'
#: lock, and a batch never overtakes it (:func:`kcm.core.store.repository.lock_writers_on`).
SQLITE_BATCH_PAUSE_S = 0.11
#: ``meta``: a tenant whose removal committed while some of its destroyed objects or L4
#: tombstones were left to delete (JSON: ``bound``, the newest ``created_seq`` then, which
#: no row it may delete exceeds; ``at``; ``objects``, its keys and objects then).
REMOVING_META_PREFIX = "tenant.removing:"

_DESTROYED_STATES = (STATE_DESTROYED, STATE_DESTROYED_COMPROMISED)


@dataclass(frozen=True, slots=True)
class _Removal:
    objects: int  # the tenant's keys and objects when it was removed
    bound: int  # the newest created_seq then (see REMOVING_META_PREFIX)
    finished: bool  # nothing left to delete
    resumed: bool  # an interrupted removal, which this run finishes


def _unfinished_removals(session: Session, tenant: str | None = None) -> dict[str, dict[str, int]]:
    """The markers of removals not finished (:data:`REMOVING_META_PREFIX`), by tenant."""
    from sqlalchemy import select

    from kcm.core.store.schema import Meta

    query = select(Meta.key, Meta.value)
    query = (query.where(Meta.key.startswith(REMOVING_META_PREFIX)) if tenant is None
             else query.where(Meta.key == REMOVING_META_PREFIX + tenant))
    return {key[len(REMOVING_META_PREFIX):]: json.loads(value)
            for key, value in session.execute(query).all()}


def _left_by_removal(table: FromClause, tenant: str, bound: int) -> ColumnElement[bool]:
    """What the removal of ``tenant`` (up to ``bound``) left to delete, of ``table`` (the
    ``managed_objects`` table or an alias): the ordinary objects numbered up to ``bound``,
    all destroyed when the removal committed (its first transaction checked them, and made
    its service keys such ones), whatever was done to one since; never a row of the tenant
    added again since (numbered after ``bound``)."""
    from sqlalchemy import and_

    return and_(table.c.tenant == tenant, table.c.level.is_(None),
                table.c.created_seq <= bound)


def remove_some(session: Session, tenant: str, bound: int, limit: int = REMOVAL_BATCH
                ) -> tuple[int, int, bool]:
    """One batch of the removal of ``tenant`` (up to ``bound``): up to ``limit`` of its L4
    tombstones, or, once none are left, up to ``limit`` of its destroyed objects (their
    names and groups go with them: ``ON DELETE CASCADE``); when that was the last, its
    ``tenants`` row (unless it was added again) and the marker of the removal. Statements
    with subqueries, a few parameters each, whatever the tenant's size. Returns (tombstones
    deleted, objects deleted, finished)."""
    from sqlalchemy import delete, exists, select

    from kcm.core.store import quota
    from kcm.core.store.schema import L4Tombstone, ManagedObject, Meta, Tenant

    objects, tombstones = ManagedObject.__table__, L4Tombstone.__table__
    batch_of_tombstones = tombstones.alias("batch")
    removed_key = objects.alias("removed_key")
    gone = session.execute(delete(tombstones).where(tombstones.c.token_id.in_(
        select(batch_of_tombstones.c.token_id).where(
            batch_of_tombstones.c.tenant == tenant,
            exists().where(removed_key.c.uid == batch_of_tombstones.c.l3_uid,
                           _left_by_removal(removed_key, tenant, bound)))
        .limit(limit)))).rowcount or 0
    if gone >= limit:
        quota.release(session, {tenant: gone})
        return gone, 0, False
    batch = objects.alias("batch")
    deleted = session.execute(delete(objects).where(objects.c.uid.in_(
        select(batch.c.uid).where(_left_by_removal(batch, tenant, bound)).limit(limit)))
    ).rowcount or 0
    quota.release(session, {tenant: gone + deleted})
    if deleted >= limit:
        return gone, deleted, False
    session.execute(delete(Tenant.__table__).where(
        Tenant.__table__.c.name == tenant,
        ~exists().where(objects.c.tenant == tenant),
        ~exists().where(tombstones.c.tenant == tenant)))
    session.execute(delete(Meta.__table__).where(
        Meta.__table__.c.key == REMOVING_META_PREFIX + tenant))
    return gone, deleted, True


def _between_batches(seconds: float) -> None:
    """The pause between two batches of a removal (tests watch the database here)."""
    if seconds > 0:
        time.sleep(seconds)


def _seal_again(session: Session, uids: list[str]) -> None:
    """The rows ``uids``, changed by a bulk UPDATE of this transaction, given their row
    MAC again (:mod:`kcm.core.store.row_seal`; the command holds L1, so the session its
    seal). A handful: a tenant's service keys."""
    from sqlalchemy import select, update

    from kcm.core.store.row_seal import seal_of
    from kcm.core.store.schema import ManagedObject

    seal = seal_of(session.info)
    if seal is None or not uids:
        return
    objects = ManagedObject.__table__
    for row in session.execute(select(*objects.columns).where(objects.c.uid.in_(uids))):
        session.execute(update(objects).where(objects.c.uid == row.uid).values(
            row_mac=seal.mac(row)))


def run_tenant_remove(args: argparse.Namespace) -> int:
    """Remove a tenant whose own objects are all destroyed: its key hierarchy (L2, every L3),
    its destroyed objects and its L4 tombstones go, every gateway is told its service keys
    are destroyed (so each drops them, and every L4 under them stops working), then that
    the tenant is gone (``tenant.removed``: each forgets what it kept of it, and answers
    its L4 tokens as the core does, Object Not Found), and an audit record says who did it.

    Every running core forgets the tenant too: its fan-out reads ``tenant.removed``, and
    its next write transaction sees the count of removals changed
    (:func:`kcm.core.store.repository.count_tenant_removal`), so none commits anything on
    the word of the removed tenant's service keys or under its tenant key.

    The removal takes effect in one short write transaction, which holds the writers' lock
    from its start, so no core adds an object to the tenant between the checks and the
    changes: the events, the count, the audit record (the keys by identifier, the objects
    by number); the tenant keys deleted; the service keys made ordinary destroyed objects
    without material (no service, no L3 any more: no lookup of the core finds one; deleted
    with the other destroyed objects, after the L4 tombstones that name them); the rotation
    policies. Whatever is left of a large tenant is deleted then in batches
    (:func:`remove_some`), a transaction each; a marker in ``meta`` says a removal is not
    finished, and running the command again finishes it."""
    removal = _with_keyring(args, lambda session, keyring: _begin_removal(session, args))
    tenant = args.tenant
    if removal.finished:
        print(f"tenant {tenant} removed with its {removal.objects} keys and objects")
        return 0
    if removal.resumed:
        print(f"tenant {tenant}: finishing its interrupted removal", flush=True)
    else:
        print(f"tenant {tenant} removed (its keys deleted, gateways told); deleting its "
              f"destroyed objects and L4 tombstones, {REMOVAL_BATCH} a transaction",
              flush=True)
    tombstones, objects = _delete_in_batches(args, tenant, removal.bound)
    if removal.resumed:
        print(f"tenant {tenant} removed: its interrupted removal finished ({objects} "
              f"destroyed objects and {tombstones} L4 tombstones deleted now)")
    else:
        print(f"tenant {tenant} removed with its {removal.objects} keys and objects")
    return 0


def _begin_removal(session: Session, args: argparse.Namespace) -> _Removal:
    """The first transaction of ``kcm core tenant remove`` (see :func:`run_tenant_remove`),
    with the first batch; or, for a removal interrupted before, nothing but the checks."""
    from sqlalchemy import case, delete, func, select, update

    from kcm.core import events
    from kcm.core.audit import AuditEvent, append_audit
    from kcm.core.store import quota, repository
    from kcm.core.store.schema import (
        LEVEL_SERVICE_KEY,
        LEVEL_TENANT_KEY,
        L3Usage,
        ManagedObject,
        ObjectAttributeKey,
        ObjectGroup,
        ObjectName,
        RotationPolicy,
    )
    from kcm.kmip.enums import State

    tenant = args.tenant
    objects = ManagedObject.__table__
    _require_tenant(session, tenant)
    unfinished = _unfinished_removals(session, tenant).get(tenant)
    keys = session.execute(
        select(objects.c.uid, objects.c.level, objects.c.service)
        .where(objects.c.tenant == tenant, objects.c.level.is_not(None))
        .order_by(objects.c.created_seq)).all()
    if unfinished is not None:
        # Finished, and nothing more: whatever the tenant holds now (added again since,
        # its new keys and objects, numbered past the bound) is not this removal's.
        if not args.yes:
            raise CommandError(
                f"the removal of tenant {tenant} (begun {iso(unfinished['at'])}) did not "
                "finish deleting its destroyed objects; run again with --yes to finish it")
        return _Removal(unfinished["objects"], unfinished["bound"], False, True)
    live = (objects.c.tenant == tenant, objects.c.level.is_(None),
            objects.c.state.not_in(_DESTROYED_STATES))
    alive = session.scalar(select(func.count()).select_from(objects).where(*live))
    if alive:
        example = session.scalar(select(objects.c.uid).where(*live).limit(1))
        raise CommandError(
            f"tenant {tenant} still holds {alive} objects that are not destroyed "
            f"(e.g. {example}); destroy them first")
    total = session.scalar(select(func.count()).select_from(objects)
                           .where(objects.c.tenant == tenant))
    if not args.yes:
        raise CommandError(
            f"removing tenant {tenant} destroys its {total} keys and objects "
            "(every L4 of its services stops working); run again with --yes")
    for uid, level, service in keys:
        if level == LEVEL_SERVICE_KEY:
            events.l3_state(session, tenant, uid, service or "", State.DESTROYED)
    events.tenant_removed(session, tenant)
    repository.count_tenant_removal(session)
    bound = session.scalar(select(func.max(objects.c.created_seq))) or 0
    now = int(time.time())
    key_uids = select(objects.c.uid).where(objects.c.tenant == tenant,
                                           objects.c.level.is_not(None))
    service_keys = (objects.c.tenant == tenant, objects.c.level == LEVEL_SERVICE_KEY)
    session.execute(delete(L3Usage.__table__).where(
        L3Usage.__table__.c.uid.in_(select(objects.c.uid).where(*service_keys))))
    session.execute(delete(ObjectName.__table__).where(
        ObjectName.__table__.c.uid.in_(key_uids)))
    session.execute(delete(ObjectGroup.__table__).where(
        ObjectGroup.__table__.c.uid.in_(key_uids)))
    session.execute(delete(ObjectAttributeKey.__table__).where(
        ObjectAttributeKey.__table__.c.uid.in_(key_uids)))
    quota.release(session, {tenant: session.execute(delete(objects).where(
        objects.c.tenant == tenant, objects.c.level == LEVEL_TENANT_KEY)).rowcount or 0})
    session.info[repository.MATERIAL_ERASED_INFO] = True  # its L2s' and L3s' material
    # No L3 any more (every lookup of one asks for the level); its L4 tombstones still
    # name it, so it goes with the destroyed objects, after them. Its revision goes up, so
    # no core's object cache takes its cached copy for current.
    session.execute(update(objects).where(*service_keys).values(
        level=None, service=None, key_version=None, material=None, rotate_due=None,
        state=case((objects.c.state.in_(_DESTROYED_STATES), objects.c.state),
                   else_=int(State.DESTROYED)),
        destroy_date=func.coalesce(objects.c.destroy_date, now),
        row_mac=None, revision=objects.c.revision + 1))
    _seal_again(session, [uid for uid, level, _ in keys if level == LEVEL_SERVICE_KEY])
    session.execute(delete(RotationPolicy.__table__).where(
        RotationPolicy.__table__.c.tenant == tenant))
    append_audit(session, AuditEvent(
        principal="kcm core tenant remove", operation="RemoveTenant",
        result_status="SUCCESS", correlation_id=f"cli-{int(time.time() * 1e6)}",
        source="cli", tenant=tenant, object_ids=tuple(uid for uid, _, _ in keys),
        detail={"objects": total}))
    finished = remove_some(session, tenant, bound)[2]
    if not finished:
        repository.set_meta(session, REMOVING_META_PREFIX + tenant,
                            json.dumps({"bound": bound, "at": now, "objects": total}))
    return _Removal(total, bound, finished, False)


def _delete_in_batches(args: argparse.Namespace, tenant: str, bound: int) -> tuple[int, int]:
    """What the removal of ``tenant`` left, deleted in batches (:func:`remove_some`), each
    in a write transaction of its own; (tombstones, objects) deleted."""
    from sqlalchemy.engine import make_url

    store = open_store(args)
    pause = SQLITE_BATCH_PAUSE_S if make_url(store.url).get_backend_name() == "sqlite" else 0.0
    left = (f"tenant {tenant} is removed, but some of its destroyed objects or L4 tombstones "
            f"are left: run `kcm core tenant remove {tenant} --yes` again to delete them")
    tombstones = objects = 0
    try:
        while True:
            _between_batches(pause)  # (the first transaction's too)
            gone, deleted, finished = run_in_store(
                store, lambda session: remove_some(session, tenant, bound))
            tombstones, objects = tombstones + gone, objects + deleted
            if finished:
                return tombstones, objects
    except CommandError as e:
        raise CommandError(f"{e}; {left}") from e
    except KeyboardInterrupt:
        print(f"kcm core tenant remove: {left}", file=sys.stderr)
        raise
    finally:
        store.stopService()


#: The audit record's operation of ``kcm core tenant limit`` when it changes a bound.
LIMIT_OPERATION = "SetTenantLimit"
#: The audit record's operation of ``kcm core tenant limit --recount`` when the count it
#: kept was not the tenant's rows (``detail``: ``was``, ``now``).
RECOUNT_OPERATION = "RecountTenant"


def _max_objects(text: str) -> int | None:
    """``--max-objects``: a whole number of at least 0 (0: no bound), or ``default``."""
    if text == "default":
        return None
    digits = text.replace("_", "").replace(",", "")
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        raise CommandError("--max-objects must be a whole number of at least 0 (0: no "
                           "bound) or default (the core's max_objects_per_tenant)")
    return int(digits)


def _requests_per_second(text: str) -> float | None:
    """``--requests-per-second``: a number of at least 0 (0: none; ASCII digits, one
    decimal point), or ``default``."""
    from kcm.core.config import MAX_REQUEST_RATE

    if text == "default":
        return None
    digits = text.replace("_", "")
    whole, _, part = digits.partition(".")
    if (not (digits.isascii() and (whole + part).isdigit()) or len(digits) > 18
            or float(digits) > MAX_REQUEST_RATE):
        raise CommandError("--requests-per-second must be a number of at least 0 (0: no "
                           "limit) or default (the core's requests_per_second_per_tenant)")
    return float(digits)


def _request_burst(text: str) -> int | None:
    """``--request-burst``: a whole number of at least 0 (0: one second of the rate), or
    ``default``."""
    from kcm.core.config import MAX_REQUEST_RATE

    if text == "default":
        return None
    digits = text.replace("_", "").replace(",", "")
    if not (digits.isascii() and digits.isdigit()) or int(digits) > MAX_REQUEST_RATE:
        raise CommandError("--request-burst must be a whole number of at least 0 (0: one "
                           "second of the rate) or default (the core's "
                           "request_burst_per_tenant)")
    return int(digits)


def run_tenant_limit(args: argparse.Namespace) -> int:
    """Set (``--max-objects``, ``--requests-per-second``, ``--request-burst``) or show a
    tenant's bound on what it stores and its request rate."""
    from sqlalchemy import update

    from kcm.core.audit import AuditEvent, append_audit
    from kcm.core.request_rates import READ_INTERVAL as RATES_INTERVAL
    from kcm.core.store import quota
    from kcm.core.store.repository import lock_writers
    from kcm.core.store.schema import Tenant

    config = core_config(args)
    default = config.limits.max_objects_per_tenant
    if getattr(args, "recount", False):
        def recount(session: Session, _keyring: object) -> tuple[int, int]:
            _require_tenant(session, args.tenant)
            lock_writers(session)  # (no insert or delete between the count and the update)
            was, now = quota.recount(session, args.tenant)
            if was != now:
                append_audit(session, AuditEvent(
                    principal=getattr(args, "prog", "kcm core tenant limit"),
                    operation=RECOUNT_OPERATION, result_status="SUCCESS",
                    correlation_id=f"cli-{int(time.time() * 1e6)}", source="cli",
                    tenant=args.tenant, detail={"was": was, "now": now}))
            return was, now

        recounted = _with_keyring(args, recount)
        if not args.json:
            was, now = recounted
            print(f"tenant {args.tenant}: count right ({now:,})" if was == now else
                  f"tenant {args.tenant}: count corrected from {was:,} to {now:,}")
    changes: dict[str, Any] = {}
    if args.max_objects is not None:
        changes["max_objects"] = _max_objects(args.max_objects)
    if getattr(args, "requests_per_second", None) is not None:
        changes["requests_per_second"] = _requests_per_second(args.requests_per_second)
    if getattr(args, "request_burst", None) is not None:
        changes["request_burst"] = _request_burst(args.request_burst)
    if changes:
        def change(session: Session, _keyring: object) -> None:
            _require_tenant(session, args.tenant)
            lock_writers(session)
            session.execute(update(Tenant).where(Tenant.name == args.tenant)
                            .values(**changes))
            append_audit(session, AuditEvent(
                principal=getattr(args, "prog", "kcm core tenant limit"),
                operation=LIMIT_OPERATION, result_status="SUCCESS",
                correlation_id=f"cli-{int(time.time() * 1e6)}", source="cli",
                tenant=args.tenant, detail=changes))

        _with_keyring(args, change)

    def read(session: Session) -> dict[str, Any]:
        tenant = _require_tenant(session, args.tenant)
        return {"tenant": args.tenant, **_stored(tenant, default),
                **_rate(tenant, config.limits)}

    shown = run_in_store(open_store(args, config), read, write=False)
    if args.json:
        if getattr(args, "recount", False):
            shown["recounted_from"] = recounted[0]
        print(json.dumps(shown, sort_keys=True))
    else:
        print(f"tenant {shown['tenant']}: {_bound_text(shown)}" + (
            "" if shown["own_bound"] else " (the core's max_objects_per_tenant)"))
        print(f"tenant {shown['tenant']}: {_rate_text(shown)} (batch items, shared by the "
              f"cores; a running core takes a change within {RATES_INTERVAL:g} s)")
    return 0
