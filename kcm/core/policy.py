"""Who may do what: the one place the core decides allow or deny (ARCHITECTURE §6).

* Every object belongs to one tenant; a principal sees and touches only its own
  tenant's objects. Another tenant's object is indistinguishable from a missing one
  (Item Not Found), so identifiers leak nothing across tenants.
* Applications (SERVICE) and tenant administrators (ADMIN) manage ordinary objects
  of their tenant.
* The hierarchy keys (L2, L3) are objects like any other for Get Attributes, and for
  Locate by tenant administrators (applications locate ordinary objects only);
  changing their lifecycle is for tenant administrators. Their key material never
  leaves through KMIP Get: L2 never, L3 only over the gateway link.
* GATEWAY principals act only through the link, on behalf of the caller they assert.
  OPERATORs administer tenants with the `kcm` CLI and hold no tenant of their own.
"""

from __future__ import annotations

from collections.abc import Collection

from kcm.core.store.schema import LEVEL_SERVICE_KEY, LEVEL_TENANT_KEY
from kcm.identity import Principal, Role
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError
from kcm.l4.authorize import check_service_key_use

_TENANT_ROLES = (Role.SERVICE, Role.ADMIN)


def tenant_of(principal: Principal) -> str:
    """The tenant whose objects ``principal`` acts on; refused for tenant-less roles."""
    if principal.role not in _TENANT_ROLES or principal.tenant is None:
        raise KmipError(ResultReason.PERMISSION_DENIED,
                        f"{principal.role.value} principals hold no objects; "
                        "connect with a tenant identity")
    return principal.tenant


def check_lifecycle_change(principal: Principal, level: int | None) -> None:
    """May ``principal`` change the state or attributes of an object at ``level``?"""
    if level in (LEVEL_TENANT_KEY, LEVEL_SERVICE_KEY) and principal.role is not Role.ADMIN:
        raise KmipError(ResultReason.PERMISSION_DENIED,
                        "only a tenant administrator may change a tenant or service key")


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
