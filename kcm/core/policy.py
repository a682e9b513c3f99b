"""Who may do what: the one place the core decides allow or deny (ARCHITECTURE §6).

* Every object belongs to one tenant; a principal sees and touches only its own
  tenant's objects. Another tenant's object is indistinguishable from a missing one
  (Item Not Found), so identifiers leak nothing across tenants.
* An application (SERVICE) exists only once its tenant has provisioned its service (the
  service has, or had, a service key). Until then it holds nothing, like a principal of an
  unknown tenant: every object and key is Item Not Found to it, and it may create nothing.
* Objects an application creates (Create, Create Key Pair, Register, Derive Key) belong to
  its service; a Re-key's replacement to its predecessor's; a tenant administrator's to no
  service. Which of its tenant's objects an application may use is the core's
  ``application_objects`` setting (:class:`AccessPolicy`): by default those of its own
  service and those of no service; another service's object is Permission Denied (the tenant
  is the same: nothing crosses a tenant's boundary). Tenant administrators use every object
  of their tenant.
* The hierarchy keys (L2, L3) are objects like any other for Get Attributes, and for
  Locate by tenant administrators (applications locate ordinary objects only);
  changing their lifecycle is for tenant administrators. Their key material never
  leaves through KMIP Get: L2 never, L3 only over the gateway link.
* GATEWAY principals act only through the link, on behalf of the caller they assert.
  OPERATORs administer tenants with the `kcm` CLI and hold no tenant of their own.

A refusal because of who asks is an :class:`AccessDenied`: the client is answered its reason
and message (for what it may not know of, exactly a missing object's), and its ``why`` goes
to the item's audit record only (``detail.denied``).
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy.orm import Session

from kcm.core.store import repository
from kcm.core.store.known import KnownFacts
from kcm.core.store.schema import LEVEL_SERVICE_KEY, LEVEL_TENANT_KEY
from kcm.identity import Principal, Role
from kcm.kernel.missing import object_not_found
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError
from kcm.l4.authorize import check_service_key_use

_TENANT_ROLES = (Role.SERVICE, Role.ADMIN)


class ApplicationObjects(enum.StrEnum):
    """Which managed objects of its tenant an application may use (``application_objects``
    in the core's configuration)."""

    #: Those of its own service and those of no service (the default).
    OWN_SERVICE = "own-service"
    #: Every object of its tenant (what KCM did before objects recorded their service).
    TENANT = "tenant"


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """The configured part of the rules (the rest is code, here and in kcm.l4.authorize)."""

    application_objects: ApplicationObjects = ApplicationObjects.OWN_SERVICE


class AccessDenied(KmipError):
    """A refusal because of who asks. Its reason and message are what the client is
    answered; ``why`` (short ASCII) is for the audit record only, never for the client."""

    def __init__(self, reason: ResultReason, message: str, *, why: str) -> None:
        super().__init__(reason, message)
        self.why = why


#: Why another tenant's object is refused (the client is answered as for a missing one).
ANOTHER_TENANTS_OBJECT = "another tenant's object"
#: Why another service's object of the caller's tenant is refused.
ANOTHER_SERVICES_OBJECT = "another service's object"


def hidden_object(uid: str, why: str) -> AccessDenied:
    """The refusal of an object the caller may not know of (another tenant's, or any to an
    application whose service is not provisioned): exactly what a missing ``uid`` answers
    (:func:`kcm.kernel.missing.object_not_found`), with ``why`` for the audit."""
    missing = object_not_found(uid)
    return AccessDenied(missing.reason, missing.message, why=why)


def tenant_of(principal: Principal) -> str:
    """The tenant whose objects ``principal`` acts on; refused for tenant-less roles."""
    if principal.role not in _TENANT_ROLES or principal.tenant is None:
        raise AccessDenied(ResultReason.PERMISSION_DENIED,
                           f"{principal.role.value} principals hold no objects; "
                           "connect with a tenant identity",
                           why=f"{principal.role.value} principals hold no objects")
    return principal.tenant


def is_provisioned(session: Session, principal: Principal) -> bool:
    """Whether ``principal`` names someone its tenant has: an application whose service has
    (or had) a service key; any other principal is as known as its tenant is."""
    if principal.role is not Role.SERVICE:
        return True
    return repository.service_exists(session, principal.tenant or "", principal.service or "")


def known_provisioned(known: KnownFacts, principal: Principal) -> bool:
    """:func:`is_provisioned` from what the store remembers alone: True only where that is
    True (False may be a service the store has not been asked about yet)."""
    if principal.role is not Role.SERVICE:
        return True
    return (principal.tenant or "", principal.service or "") in known.services


def not_provisioned(principal: Principal) -> str:
    """Why an application whose service is not provisioned is refused (for the audit: the
    words :func:`kcm.l4.authorize.denial_reason` uses)."""
    return f"service {principal.tenant}/{principal.service} is not provisioned"


def check_provisioned(session: Session, principal: Principal) -> None:
    """Permission Denied for an application whose service is not provisioned (it may create
    nothing, as a principal of an unprovisioned tenant may not)."""
    if not is_provisioned(session, principal):
        why = not_provisioned(principal)
        raise AccessDenied(ResultReason.PERMISSION_DENIED, f"{why} (it has no service key)",
                           why=why)


def service_of(principal: Principal) -> str | None:
    """The service the objects ``principal`` creates belong to (None: no service)."""
    return principal.service if principal.role is Role.SERVICE else None


def object_services(principal: Principal, access: AccessPolicy) -> Collection[str | None] | None:
    """The services whose objects ``principal`` may use (None: every object of its tenant)."""
    if principal.role is Role.SERVICE \
            and access.application_objects is ApplicationObjects.OWN_SERVICE:
        return frozenset({None, principal.service})
    return None


def check_object_use(principal: Principal, access: AccessPolicy, service: str | None) -> None:
    """May ``principal`` use an object of its tenant that belongs to ``service``?"""
    allowed = object_services(principal, access)
    if allowed is None or service in allowed:
        return
    raise AccessDenied(ResultReason.PERMISSION_DENIED,
                       f"the object belongs to service {service!r}: an application uses only "
                       "its own service's objects and those of no service",
                       why=ANOTHER_SERVICES_OBJECT)


def check_lifecycle_change(principal: Principal, level: int | None) -> None:
    """May ``principal`` change the state or attributes of an object at ``level``?"""
    if level in (LEVEL_TENANT_KEY, LEVEL_SERVICE_KEY) and principal.role is not Role.ADMIN:
        raise KmipError(ResultReason.PERMISSION_DENIED,
                        "only a tenant administrator may change a tenant or service key")


def check_protection_change(principal: Principal, *, was_extractable: bool,
                            was_sensitive: bool, extractable: bool, sensitive: bool) -> None:
    """May ``principal`` change a key's effective Extractable and Sensitive from ``was_*``
    to these? Anyone who may change the object may protect it more (Extractable to False,
    Sensitive to True); only a tenant administrator may protect it less,
    so that an application credential cannot get out a key it was given unextractable or
    sensitive (its material would then leave by Get)."""
    loosened = (extractable and not was_extractable) or (was_sensitive and not sensitive)
    if loosened and principal.role is not Role.ADMIN:
        raise KmipError(ResultReason.PERMISSION_DENIED,
                        "only a tenant administrator may make a key extractable or not "
                        "sensitive")


def locate_levels(principal: Principal) -> Collection[int | None] | None:
    """The hierarchy levels Locate may return to ``principal`` (None: every level).

    Applications find ordinary objects only; tenant administrators also find the tenant
    and service keys, which they manage.
    """
    if principal.role is Role.ADMIN:
        return None
    return frozenset({None})


def check_material_export(principal: Principal, level: int | None) -> None:
    """May ``principal`` receive this object's key material through KMIP Get?"""
    if level == LEVEL_TENANT_KEY:
        raise KmipError(ResultReason.PERMISSION_DENIED, "tenant keys never leave the core")
    if level == LEVEL_SERVICE_KEY:
        raise KmipError(ResultReason.PERMISSION_DENIED,
                        "service keys are served to gateways only, over the link")


def check_key_use(principal: Principal, level: int | None, service: str | None) -> None:
    """May ``principal`` encrypt or decrypt with this key inside the core?"""
    if level == LEVEL_TENANT_KEY:
        raise KmipError(ResultReason.PERMISSION_DENIED, "tenant keys are not for client use")
    if level == LEVEL_SERVICE_KEY:
        # The object was found in the caller's tenant; who may use which service's key is
        # kcm.l4.authorize's rule, shared with the gateway.
        check_service_key_use(principal, tenant_of(principal), service or "")
