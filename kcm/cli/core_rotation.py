"""What ``kcm core policy``, ``kcm core tenant policy``, ``kcm core service policy`` and
``kcm core service show`` do: set or show rotation policies (:mod:`kcm.core.rotation_policy`)
and show a service's key versions with their states, ages and usage counts.

Setting a policy writes an audit record (``SetRotationPolicy``), so it needs the L1 key as
``kcm core tenant add`` does; showing needs the database alone. kcm-core's state sweeper
applies a changed policy at its next sweep, without a restart.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from kcm.cli import CommandError
from kcm.cli.core_cmd import _with_keyring, core_config, open_store, run_in_store

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from kcm.core.rotation_policy import PolicySettings

AUDIT_OPERATION = "SetRotationPolicy"


def add_policy_options(parser: argparse.ArgumentParser) -> None:
    """The settings a policy command takes (none given: show the policy)."""
    parser.add_argument("--interval", help="rotate when the current version is this old "
                        "(90s, 15m, 12h, 30d, 2w; 0: never by age)")
    parser.add_argument("--max-uses", help="rotate after this many encryptions "
                        "(L4s sealed, DEKs wrapped) under one version (at most 2**32, the "
                        "AES-GCM bound; 0 or set nowhere: the built-in cap, 2**31)")
    parser.add_argument("--overlap", help="how long a replaced version stays Active before "
                        "it is Deactivated (decrypt-only); default 60s (durations: at most "
                        "100 years)")
    parser.add_argument("--managed-interval", help="the Rotate Interval (with Rotate "
                        "Automatic) of new managed symmetric keys created without one "
                        "(0: none)")
    parser.add_argument("--tenant-key-interval", help="replace the tenant key (L2) when it "
                        "is this old, re-wrapping the tenant's keys (default and tenant "
                        "policies; 0: never)")
    parser.add_argument("--clear", action="store_true",
                        help="remove this scope's policy (it inherits the wider one's)")
    parser.add_argument("--json", action="store_true", help="one JSON object")


def _scope(args: argparse.Namespace) -> tuple[str, str]:
    return getattr(args, "tenant", None) or "", getattr(args, "service", None) or ""


def _uses(text: str) -> int:
    """A ``--max-uses`` value: a whole number from 0 to :data:`MAX_USES`; ValueError else."""
    from kcm.core.rotation_policy import MAX_USES, MAX_USES_REASON

    digits = text.strip()
    if not digits.isdigit() or not digits.isascii():
        raise ValueError(f"--max-uses takes a whole number, not {text[:40]!r}")
    # (the length first: int() of thousands of digits is slow, and refused anyway)
    if len(digits.lstrip("0")) > 19 or int(digits) > MAX_USES:
        raise ValueError(f"--max-uses is at most {MAX_USES} ({MAX_USES_REASON})")
    return int(digits)


def _settings(args: argparse.Namespace) -> PolicySettings:
    from kcm.core.rotation_policy import PolicySettings, parse_duration

    try:
        return PolicySettings(
            interval=parse_duration(args.interval) if args.interval is not None else None,
            max_uses=_uses(args.max_uses) if args.max_uses is not None else None,
            overlap=parse_duration(args.overlap) if args.overlap is not None else None,
            managed_interval=(parse_duration(args.managed_interval)
                              if args.managed_interval is not None else None),
            tenant_key_interval=(parse_duration(args.tenant_key_interval)
                                 if args.tenant_key_interval is not None else None))
    except ValueError as e:
        raise CommandError(str(e)) from e


def run_policy(args: argparse.Namespace) -> int:
    """Set (any setting given, or --clear) or show the rotation policy of a scope."""
    tenant, service = _scope(args)
    settings = _settings(args)
    if service and settings.tenant_key_interval is not None:
        raise CommandError("--tenant-key-interval is a tenant's (or the default) setting: "
                           "a service has no tenant key of its own")
    if settings.managed_interval:
        minimum = core_config(args).limits.min_rotate_interval
        if settings.managed_interval < minimum:
            raise CommandError(f"--managed-interval must be at least the core's "
                               f"limits.min_rotate_interval ({minimum} s)")
    changing = args.clear or _any_setting(settings)
    if changing:
        _with_keyring(args, lambda session, keyring: _change(session, args, tenant, service,
                                                             settings))
    shown = run_in_store(open_store(args), lambda session: _policy_record(
        session, tenant, service), write=False)
    if args.json:
        print(json.dumps(shown, sort_keys=True))
    else:
        print(_policy_text(shown))
    return 0


def _change(session: Session, args: argparse.Namespace, tenant: str, service: str,
            settings: PolicySettings) -> None:
    from kcm.core import rotation_policy
    from kcm.core.audit import AuditEvent, append_audit
    from kcm.core.store import repository
    from kcm.core.store.schema import Tenant

    if tenant and session.get(Tenant, tenant) is None:
        raise CommandError(f"no tenant {tenant!r}")
    if service and not repository.find_l3(session, tenant, service):
        raise CommandError(f"tenant {tenant} has no service {service} "
                           "(kcm core service add creates one)")
    now = int(time.time())
    if args.clear:
        rotation_policy.clear_policy(session, tenant, service)
    if _any_setting(settings):
        rotation_policy.set_policy(session, tenant, service, settings, now=now)
    stored = rotation_policy.policies(session).get((tenant, service))
    detail: dict[str, Any] = {
        "scope": rotation_policy.scope_name(tenant, service),
        "interval": stored.interval if stored else None,
        "max_uses": stored.max_uses if stored else None,
        "overlap": stored.overlap if stored else None,
        "managed_interval": stored.managed_interval if stored else None,
        "tenant_key_interval": stored.tenant_key_interval if stored else None}
    if args.clear:
        # The values above are what the scope holds after it: all null for --clear alone.
        detail["cleared"] = True
    # The principal is the command, as for the other operator commands' records.
    append_audit(session, AuditEvent(
        principal=getattr(args, "prog", "kcm core policy"), operation=AUDIT_OPERATION,
        result_status="SUCCESS", correlation_id=f"cli-{int(time.time() * 1e6)}",
        source="cli", tenant=tenant or None, detail=detail))


def _any_setting(settings: PolicySettings) -> bool:
    return any(value is not None for value in (
        settings.interval, settings.max_uses, settings.overlap, settings.managed_interval,
        settings.tenant_key_interval))


def _policy_record(session: Session, tenant: str, service: str) -> dict[str, Any]:
    from kcm.core import rotation_policy

    stored = rotation_policy.policies(session).get((tenant, service))
    effective = rotation_policy.effective_policy(session, tenant, service)
    return {
        "scope": rotation_policy.scope_name(tenant, service),
        "set_here": None if stored is None else {
            "interval": stored.interval, "max_uses": stored.max_uses,
            "overlap": stored.overlap, "managed_interval": stored.managed_interval,
            "tenant_key_interval": stored.tenant_key_interval},
        "effective": {
            "interval": effective.interval, "interval_from": effective.interval_from,
            "max_uses": effective.max_uses, "max_uses_from": effective.max_uses_from,
            "overlap": effective.overlap, "overlap_from": effective.overlap_from,
            "managed_interval": effective.managed_interval,
            "managed_interval_from": effective.managed_interval_from,
            "tenant_key_interval": effective.tenant_key_interval,
            "tenant_key_interval_from": effective.tenant_key_interval_from},
    }


def _policy_text(record: dict[str, Any]) -> str:
    from kcm.core.rotation_policy import BUILTIN, format_duration

    effective = record["effective"]

    def origin(name: str) -> str:
        source = effective[f"{name}_from"]
        if source == BUILTIN:
            return " (the built-in cap)"
        return f" (from the {source} policy)" if source else " (not set)"

    return "\n".join([
        f"rotation policy of {record['scope']}"
        + ("" if record["set_here"] else ": nothing set here, all inherited"),
        f"  interval {format_duration(effective['interval'])}{origin('interval')}",
        f"  max uses {effective['max_uses']}{origin('max_uses')}",
        f"  overlap {format_duration(effective['overlap'], never='0s')}"
        f"{origin('overlap') if effective['overlap_from'] else ' (the default)'}",
        f"  new managed keys' Rotate Interval "
        f"{format_duration(effective['managed_interval'], never='none')}"
        f"{origin('managed_interval')}",
        f"  tenant key interval {format_duration(effective['tenant_key_interval'])}"
        f"{origin('tenant_key_interval')}",
    ])


def run_service_show(args: argparse.Namespace) -> int:
    """A service's key versions (state, age, usage count) and its rotation policy."""
    from kcm.cli.core_inventory import _state, iso
    from kcm.core.rotation_policy import made_or_activated
    from kcm.core.store import repository
    from kcm.core.usage import uses_of

    now = int(time.time())

    def read(session: Session) -> dict[str, Any]:
        rows = repository.find_l3(session, args.tenant, args.service)
        if not rows:
            raise CommandError(f"tenant {args.tenant} has no service {args.service}")
        uses = uses_of(session, [row.uid for row in rows])
        current = next((row.uid for row in rows if row.state == 2), None)
        versions = [{
            "version": row.key_version, "unique_identifier": row.uid,
            "state": _state(row.state), "current": row.uid == current,
            "created": iso(row.initial_date),
            "age": now - made_or_activated(row, now),
            "deactivation_date": iso(row.deactivation_date), "uses": uses.get(row.uid, 0),
        } for row in rows]
        return {"tenant": args.tenant, "service": args.service, "versions": versions,
                "policy": _policy_record(session, args.tenant, args.service)}

    shown = run_in_store(open_store(args), read, write=False)
    if args.json:
        print(json.dumps(shown, sort_keys=True))
        return 0
    print(f"service {shown['tenant']}/{shown['service']}")
    for version in shown["versions"]:
        retire = (f"  deactivates {version['deactivation_date']}"
                  if version["deactivation_date"] and version["current"] is False
                  and version["state"] == _state(2) else "")
        print(f"  version {version['version']}  {version['unique_identifier']}  "
              f"{version['state']}{'  current' if version['current'] else ''}  "
              f"age {_age(version['age'])}  "
              f"uses {version['uses']}{retire}")
    print(_policy_text(shown["policy"]))
    return 0


def _age(seconds: int) -> str:
    """An age, roughly, in the unit that reads best (``42s``, ``17m``, ``5h``, ``30d``)."""
    for limit, unit, size in ((120, "s", 1), (7200, "m", 60), (172800, "h", 3600)):
        if seconds < limit:
            return f"{seconds // size}{unit}"
    return f"{seconds // 86400}d"
