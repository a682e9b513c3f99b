"""What ``kcm core tenant list|show|remove`` and ``kcm core service list`` do: read (or, for
remove, delete) the tenants and their key hierarchy in kcm-core's database directly.

Reading needs the database alone (not L1); removing writes an audit record, so it needs
the L1 key as ``kcm core tenant add`` does. Neither opens a database that does not exist.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from collections import Counter
from typing import Any

from kcm.cli import CommandError
from kcm.cli.core_cmd import _with_keyring, open_store, run_in_store


def iso(seconds: float | None) -> str | None:
    """POSIX seconds as ISO 8601 UTC ("2026-12-03T14:02:17Z"), or None."""
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _state(value: int | None) -> str:
    from kcm.kmip.enums import State
    from kcm.kmip.labels import enum_label

    return enum_label(State, value)


def _print_lines(args: argparse.Namespace, records: list[dict[str, Any]], text) -> None:
    for record in records:
        print(json.dumps(record, sort_keys=True) if args.json else text(record))


def _tenants(session) -> list[dict[str, Any]]:
    from sqlalchemy import func, select

    from kcm.core.store.schema import LEVEL_SERVICE_KEY, ManagedObject, Tenant

    objects = dict(session.execute(select(ManagedObject.tenant, func.count())
                                   .group_by(ManagedObject.tenant)).all())
    services = dict(session.execute(
        select(ManagedObject.tenant, func.count(func.distinct(ManagedObject.service)))
        .where(ManagedObject.level == LEVEL_SERVICE_KEY).group_by(ManagedObject.tenant)).all())
    return [{"tenant": tenant.name, "created": iso(tenant.created_at),
             "services": services.get(tenant.name, 0), "objects": objects.get(tenant.name, 0)}
            for tenant in session.scalars(select(Tenant).order_by(Tenant.name))]


def run_tenant_list(args: argparse.Namespace) -> int:
    records = run_in_store(open_store(args), _tenants, write=False)
    _print_lines(args, records, lambda r: (
        f"{r['tenant']}  created {r['created']}  services {r['services']}  "
        f"objects {r['objects']}"))
    return 0


def _service_keys(session, tenant: str | None) -> list[dict[str, Any]]:
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


def _require_tenant(session, tenant: str) -> Any:
    from kcm.core.store.schema import Tenant

    found = session.get(Tenant, tenant)
    if found is None:
        raise CommandError(f"no tenant {tenant!r}")
    return found


def run_service_list(args: argparse.Namespace) -> int:
    def read(session):
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

    def read(session) -> dict[str, Any]:
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
                "tenant_keys": [{"unique_identifier": key.uid, "state": _state(key.state),
                                 "created": iso(key.initial_date),
                                 "wraps": wraps.get(key.uid, 0)} for key in tenant_keys],
                "service_keys": _service_keys(session, args.tenant),
                "objects": dict(sorted(states.items())),
                "l4_tombstones": tombstones}

    shown = run_in_store(open_store(args), read, write=False)
    if args.json:
        print(json.dumps(shown, sort_keys=True))
        return 0
    print(f"tenant {shown['tenant']}, created {shown['created']}")
    for key in shown["tenant_keys"]:
        print(f"  tenant key (L2) {key['unique_identifier']}  {key['state']}  "
              f"created {key['created']}  wraps {key['wraps']}")
    for key in shown["service_keys"]:
        print(f"  service key (L3) {key['service']} version {key['version']}  "
              f"{key['unique_identifier']}  {key['state']}  created {key['created']}")
    objects = ", ".join(f"{count} {state}" for state, count in shown["objects"].items())
    print(f"  objects: {objects or 'none'}")
    print(f"  revoked or destroyed L4 tokens: {shown['l4_tombstones']}")
    return 0


def run_tenant_remove(args: argparse.Namespace) -> int:
    """Remove a tenant whose own objects are all destroyed: its key hierarchy (L2, every L3),
    its destroyed objects and its L4 tombstones go, every gateway is told its service keys
    are destroyed (so each drops them, and every L4 under them stops working), then that
    the tenant is gone (``tenant.removed``: each forgets what it kept of it, and answers
    its L4 tokens as the core does, Object Not Found), and an audit record says who did it.

    Every running core forgets the tenant too: its fan-out reads ``tenant.removed``, and
    its next write transaction sees the count of removals changed
    (:func:`kcm.core.store.repository.count_tenant_removal`), so none commits anything on
    the word of the removed tenant's service keys or under its tenant key. The transaction
    holds the writers' lock from its start (a write transaction of the store), so no core
    adds an object to the tenant between the check below and the deletes."""
    from sqlalchemy import delete, select

    from kcm.core import events
    from kcm.core.audit import AuditEvent, append_audit
    from kcm.core.store import repository
    from kcm.core.store.schema import (
        LEVEL_SERVICE_KEY,
        L3Usage,
        L4Tombstone,
        ManagedObject,
        ObjectGroup,
        ObjectName,
        RotationPolicy,
        Tenant,
    )
    from kcm.kmip.enums import State

    destroyed = (State.DESTROYED, State.DESTROYED_COMPROMISED)

    def remove(session, keyring) -> dict[str, int]:
        _require_tenant(session, args.tenant)
        rows = session.scalars(select(ManagedObject)
                               .where(ManagedObject.tenant == args.tenant)).all()
        live = [row for row in rows if row.level is None and row.state not in destroyed]
        if live:
            raise CommandError(
                f"tenant {args.tenant} still holds {len(live)} objects that are not destroyed "
                f"(e.g. {live[0].uid}); destroy them first")
        if not args.yes:
            raise CommandError(
                f"removing tenant {args.tenant} destroys its {len(rows)} keys and objects "
                "(every L4 of its services stops working); run again with --yes")
        for row in rows:
            if row.level == LEVEL_SERVICE_KEY:
                events.l3_state(session, args.tenant, row.uid, row.service or "",
                                State.DESTROYED)
        events.tenant_removed(session, args.tenant)
        repository.count_tenant_removal(session)
        uids = [row.uid for row in rows]
        session.execute(delete(L4Tombstone).where(L4Tombstone.tenant == args.tenant))
        session.execute(delete(ObjectName).where(ObjectName.uid.in_(uids)))
        session.execute(delete(ObjectGroup).where(ObjectGroup.uid.in_(uids)))
        session.execute(delete(L3Usage).where(L3Usage.uid.in_(uids)))
        session.execute(delete(RotationPolicy).where(RotationPolicy.tenant == args.tenant))
        session.execute(delete(ManagedObject).where(ManagedObject.tenant == args.tenant))
        session.execute(delete(Tenant).where(Tenant.name == args.tenant))
        append_audit(session, AuditEvent(
            principal="kcm core tenant remove", operation="RemoveTenant",
            result_status="SUCCESS", correlation_id=f"cli-{int(time.time() * 1e6)}",
            source="cli", tenant=args.tenant, object_ids=tuple(uids),
            detail={"objects": len(uids)}))
        return {"objects": len(uids)}

    removed = _with_keyring(args, remove)
    print(f"tenant {args.tenant} removed with its {removed['objects']} keys and objects")
    return 0
