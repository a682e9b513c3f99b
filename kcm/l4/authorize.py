"""Who may use which service key (L3) and the L4s under it: the one place that decides
(docs/link-protocol.md §3 "Who may"; ARCHITECTURE §6).

* An application (SERVICE principal) uses only its own service's L3 and the L4s under it.
* A tenant administrator (ADMIN) uses any service of its own tenant.
* Nobody else: another tenant's token or L3, gateways and operators acting as themselves.

Used by the L4 engine (gateway and core), by the core's Revoke/Destroy of an L4 and by the
link server's FETCH_SERVICE_KEY. Callers log or audit the refusal; this module only decides.
"""

from __future__ import annotations

from kcm.identity import Principal, Role
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError


class ServiceKeyUseDenied(KmipError):
    """Permission Denied because the caller may not use the service key it reached for
    (another tenant's token or L3, another service's): an attempt the caller logs."""


def may_use_service_key(principal: Principal, tenant: str, service: str) -> bool:
    """Whether ``principal`` may use ``tenant``/``service``'s L3 and its L4s."""
    if principal.tenant != tenant:
        return False
    if principal.role is Role.SERVICE:
        return principal.service == service
    return principal.role is Role.ADMIN


def check_service_key_use(principal: Principal, tenant: str, service: str) -> None:
    """Raise Permission Denied (:class:`ServiceKeyUseDenied`) unless ``principal`` may use
    ``tenant``/``service``'s keys."""
    if may_use_service_key(principal, tenant, service):
        return
    if principal.tenant is None:
        message = f"{principal.role.value} principals use no service keys"
    elif principal.tenant != tenant:
        message = "the key belongs to another tenant"
    else:
        message = f"an application may use only its own service's keys, not {service!r}'s"
    raise ServiceKeyUseDenied(ResultReason.PERMISSION_DENIED, message)
