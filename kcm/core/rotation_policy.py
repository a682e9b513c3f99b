"""Rotation policies: when a service key (L3) is replaced by a new version by itself.

A policy has three settings, each optional:

* ``interval`` — seconds a version stays current; once the current version is that old, the
  state sweeper makes a new one (0: never by age);
* ``max_uses`` — encryptions under one version (L4 seals and DEK wraps, as the gateways
  and the core report them: :mod:`kcm.core.usage`) after which it is replaced (from 1 to
  :data:`MAX_USES`, the AES-GCM bound; 0, or set at no scope: :data:`BUILTIN_MAX_USES`,
  so every service key is replaced within the bound, whether or not a policy exists);
* ``overlap`` — seconds the replaced version stays Active after its successor exists, then
  it is Deactivated (decrypt-only). Default :data:`DEFAULT_OVERLAP`;
* ``managed_interval`` — not for service keys: the Rotate Interval (with Rotate Automatic)
  a managed symmetric key created in the scope gets when its Create names neither
  (:func:`managed_key_defaults`; the key then rotates by :mod:`kcm.core.managed_rotation`);
* ``tenant_key_interval`` — at the default and tenant scopes: seconds a tenant key (L2) is
  current before a new one replaces it (:mod:`kcm.core.tenant_rotation`, which then
  re-wraps the tenant's keys and objects under it).

Policies live at three scopes (table ``rotation_policies``): the deployment's default
(``kcm core policy``), a tenant's (``kcm core tenant policy``), a service's (``kcm core
service policy``). Each setting is taken from the narrowest scope that sets it
(:func:`effective_policy`), and the effective policy says which scope gave the setting that
triggered a rotation, for its audit record (:data:`BUILTIN` for the built-in cap).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from kcm.core.rotation_schedule import policy_changed
from kcm.core.store.raw_statements import RawStatement
from kcm.core.store.repository import forget_memo, transaction_memo
from kcm.core.store.schema import RotationPolicy
from kcm.kmip.attributes import Attribute
from kcm.kmip.tags import Tag

__all__ = ["BUILTIN", "BUILTIN_MAX_USES", "DEFAULT_OVERLAP", "MAX_DURATION", "MAX_USES",
           "MAX_USES_REASON", "EffectivePolicy", "PolicySettings",
           "clear_policy", "effective", "effective_policy", "format_duration",
           "managed_key_defaults", "parse_duration", "policies", "policies_once", "scope_name",
           "set_policy"]

#: Seconds a replaced version stays Active when no policy says: long enough for every
#: gateway to have learned of its successor (they do within a second when linked).
DEFAULT_OVERLAP = 60

#: The longest duration a policy takes (100 years, in seconds): added to a date it still
#: makes a Date-Time, and as a Rotate Interval it fits the Interval type (32 bits).
MAX_DURATION = 100 * 365 * 86400
#: The largest usage cap a policy takes. A service key seals and wraps with AES-GCM under
#: random 96-bit IVs, which NIST SP 800-38D §8.3 allows at most 2**32 times per key; a cap
#: above that could not keep a version within the bound (2**31 leaves room for the usage
#: the gateways have not reported yet: docs/operations.md, "Automatic rotation").
MAX_USES = 2**32
#: Why a larger cap is refused (the operator reads it).
MAX_USES_REASON = "AES-GCM with random IVs allows at most 2**32 encryptions under one key"
#: The usage cap of a service key whose effective policy sets none (``max_uses`` set at no
#: scope, or 0 at the narrowest that sets it): half the AES-GCM bound, the other half left
#: for the usage the gateways have not reported yet. A policy may set any cap from 1 to
#: :data:`MAX_USES`; none goes above the bound.
BUILTIN_MAX_USES = 2**31
#: Where the effective policy says the built-in cap came from (``max_uses_from``; the
#: ``policy`` of an ``AutoRotate`` audit record it caused).
BUILTIN = "built-in"

_FIELDS = ("interval", "max_uses", "overlap", "managed_interval", "tenant_key_interval")
#: The largest value of each setting.
_MAXIMA = {name: MAX_USES if name == "max_uses" else MAX_DURATION for name in _FIELDS}


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """One scope's settings as stored; None: not set here (inherited)."""

    interval: int | None = None
    max_uses: int | None = None
    overlap: int | None = None
    managed_interval: int | None = None
    tenant_key_interval: int | None = None

    def __post_init__(self) -> None:
        for name in _FIELDS:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise ValueError(f"{name} must be a whole number of at least 0")
            if value is not None and value > _MAXIMA[name]:
                raise ValueError(f"{name} must be at most {_MAXIMA[name]}"
                                 + (" s (100 years)" if name != "max_uses"
                                    else f" ({MAX_USES_REASON})"))


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    """The settings that apply to one service, and the scope each came from
    (:func:`scope_name`; None: not set anywhere). ``max_uses`` is never 0: a service key
    always has a cap, :data:`BUILTIN_MAX_USES` (from :data:`BUILTIN`) if no scope sets
    one."""

    interval: int = 0
    max_uses: int = BUILTIN_MAX_USES
    overlap: int = DEFAULT_OVERLAP
    managed_interval: int = 0
    tenant_key_interval: int = 0
    interval_from: str | None = None
    max_uses_from: str | None = BUILTIN
    overlap_from: str | None = None
    managed_interval_from: str | None = None
    tenant_key_interval_from: str | None = None


def scope_name(tenant: str, service: str) -> str:
    """How a scope is named in audit records and listings: ``default``, ``tenant T``,
    ``service T/S``."""
    if not tenant:
        return "default"
    return f"tenant {tenant}" if not service else f"service {tenant}/{service}"


def effective_policy(session: Session, tenant: str, service: str) -> EffectivePolicy:
    """What applies to ``tenant``/``service``: each setting from the narrowest scope that
    sets it (service, then tenant, then the default)."""
    rows = {(row.tenant, row.service): row for row in session.scalars(
        select(RotationPolicy).where(RotationPolicy.tenant.in_(("", tenant)),
                                     RotationPolicy.service.in_(("", service))))}
    return resolve([(scope, rows[scope]) for scope in ((tenant, service), (tenant, ""),
                                                        ("", "")) if scope in rows])


def resolve(scopes: Iterable[tuple[tuple[str, str], RotationPolicy | PolicySettings]]
            ) -> EffectivePolicy:
    """The effective policy of ``scopes``, narrowest first. A ``max_uses`` of 0 at the
    narrowest scope that sets it, or set at none, is the built-in cap."""
    values: dict[str, object] = {}
    for (tenant, service), settings in scopes:
        for name in _FIELDS:
            value = getattr(settings, name)
            if value is not None and name not in values:
                # (a value stored before the maxima were enforced is taken as the maximum)
                values[name] = min(value, _MAXIMA[name])
                values[f"{name}_from"] = scope_name(tenant, service)
    if not values.get("max_uses"):
        values.update(max_uses=BUILTIN_MAX_USES, max_uses_from=BUILTIN)
    return EffectivePolicy(**values)  # type: ignore[arg-type]


#: Whether any scope sets a managed-key interval (read once per transaction).
_ANY_MANAGED_INTERVAL = "kcm.rotation.any_managed_interval"
_ANY_MANAGED_INTERVAL_SET = RawStatement(
    select(RotationPolicy.__table__.c.tenant)
    .where(RotationPolicy.__table__.c.managed_interval > 0).limit(1))


def managed_key_defaults(session: Session, tenant: str, service: str | None,
                         attributes: list[Attribute], *, minimum: int = 0) -> list[Attribute]:
    """``attributes`` of a new managed symmetric key of ``tenant`` (made by ``service``'s
    application, or by no service), with Rotate Automatic and Rotate Interval added when
    the scope's ``managed_interval`` is set and the client named neither; an interval
    below ``minimum`` (the core's ``min_rotate_interval``) is raised to it."""
    if any(a.tag in (Tag.ROTATE_AUTOMATIC, Tag.ROTATE_INTERVAL) for a in attributes):
        return attributes
    if not transaction_memo(session, _ANY_MANAGED_INTERVAL, lambda: _ANY_MANAGED_INTERVAL_SET
                            .execute(session).fetchone() is not None):
        return attributes  # the common case: one look per transaction, nothing more
    interval = effective_policy(session, tenant, service or "").managed_interval
    if not interval:
        return attributes
    return [*attributes, Attribute.of(Tag.ROTATE_AUTOMATIC, True),
            Attribute.of(Tag.ROTATE_INTERVAL, max(interval, minimum))]


def policies(session: Session) -> dict[tuple[str, str], PolicySettings]:
    """Every stored policy by scope (for the sweeper: one query per sweep)."""
    return {(row.tenant, row.service): _settings(row)
            for row in session.scalars(select(RotationPolicy))}


#: Every stored policy, read once per transaction (:func:`policies_once`).
_POLICIES = "kcm.rotation.policies"


def policies_once(session: Session) -> dict[tuple[str, str], PolicySettings]:
    """:func:`policies`, read once per transaction (a usage count written by every L4 seal
    of a group commit is judged against them: :func:`kcm.core.usage.add_uses`)."""
    return transaction_memo(session, _POLICIES, lambda: policies(session))  # type: ignore[no-any-return]


def effective(stored: Mapping[tuple[str, str], PolicySettings], tenant: str,
              service: str) -> EffectivePolicy:
    """The effective policy of ``tenant``/``service`` (``""``: a tenant key's) among the
    ``stored`` ones (:func:`policies`)."""
    return resolve([(scope, stored[scope]) for scope in dict.fromkeys(
        ((tenant, service), (tenant, ""), ("", ""))) if scope in stored])


def _settings(row: RotationPolicy) -> PolicySettings:
    # A value stored before the maxima were enforced is read as the maximum.
    return PolicySettings(*(None if value is None else min(value, _MAXIMA[name])
                            for name, value in ((name, getattr(row, name))
                                                for name in _FIELDS)))


def set_policy(session: Session, tenant: str, service: str, settings: PolicySettings, *,
               now: int) -> PolicySettings:
    """Change the given settings of a scope (those None in ``settings`` are kept); return
    the scope's settings now."""
    forget_memo(session, _ANY_MANAGED_INTERVAL)
    forget_memo(session, _POLICIES)
    policy_changed(session, tenant, service)
    row = session.get(RotationPolicy, (tenant, service))
    if row is None:
        row = RotationPolicy(tenant=tenant, service=service, updated_at=now)
        session.add(row)
    for name in _FIELDS:
        value = getattr(settings, name)
        if value is not None:
            setattr(row, name, value)
    row.updated_at = now
    session.flush()
    return _settings(row)


def clear_policy(session: Session, tenant: str, service: str) -> bool:
    """Remove a scope's policy (it inherits everything again); whether there was one."""
    forget_memo(session, _ANY_MANAGED_INTERVAL)
    forget_memo(session, _POLICIES)
    policy_changed(session, tenant, service)
    return session.execute(delete(RotationPolicy).where(
        RotationPolicy.tenant == tenant, RotationPolicy.service == service)).rowcount > 0


_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """Seconds of ``90``, ``90s``, ``15m``, ``12h``, ``30d`` or ``2w`` (at most
    :data:`MAX_DURATION`); ValueError else."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text[:40]!r} is not a duration (e.g. 90s, 15m, 12h, 30d, 2w)")
    digits = match.group(1).lstrip("0")
    if len(digits) > 12 or int(digits or 0) * _UNITS[match.group(2)] > MAX_DURATION:
        raise ValueError("a duration is at most 100 years (3153600000 s)")
    return int(digits or 0) * _UNITS[match.group(2)]


def format_duration(seconds: int | float | None, *, never: str = "never") -> str:
    """``seconds`` in the largest unit that divides it (``30d``, ``90s``); ``never`` for 0
    or None."""
    if not seconds:
        return never
    seconds = int(seconds)
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"



def made_or_activated(row: Any, now: float) -> float:
    """When a tenant or service key version's age starts (what a rotation policy's
    interval is measured from): its activation, or its making if that came later. A tenant
    administrator's Re-key without Offset copies the old version's Activation Date (KMIP
    1.4 §4.4), and a version made 2 minutes ago was taken for as old as the one it
    replaced: rotated again at the next sweep, and retired after the overlap. A date of 0
    (1970) is a date, not "none"."""
    dates = [d for d in (row.activation_date, row.initial_date) if d is not None]
    return max(dates) if dates else now
