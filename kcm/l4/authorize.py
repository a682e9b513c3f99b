"""Who may use which service key (L3) and the L4s under it: the one place that decides
(docs/link-protocol.md §3 "Who may"; ARCHITECTURE §6).

* An application (SERVICE principal) uses only its own service's L3 and the L4s under it.
* A tenant administrator (ADMIN) uses any service of its own tenant.
* Nobody else: gateways and operators acting as themselves, anyone of another tenant.

Who asks is decided before anything about the key is looked at (its state, whether a
gateway holds it, whether it was dropped), and a refusal says:

* for another tenant's key, and for any key to a principal of no tenant or to an
  application whose service its tenant never provisioned (the core knows that, a gateway
  asks the core): exactly what a missing key answers, Object Not Found with the same message
  (:mod:`kcm.kernel.missing`), so an identifier tells nothing across tenants;
* for another service's key of the caller's own tenant: Permission Denied, saying so. The
  tenant is the same, so nothing crosses a tenant's boundary, and the application learns
  what it did wrong.

Every refusal is a :class:`ServiceKeyUseDenied`, whose ``why`` (never sent to the client) the
caller logs or audits: a gateway logs the attempt, the core audits it.

Used by the L4 engine (gateway and core), by the L3 sources under it (the gateway's cache, the
core's store), by the core's Revoke/Destroy of an L4 and by the link's FETCH_SERVICE_KEY.
"""

from __future__ import annotations

from kcm.identity import Principal, Role
from kcm.kernel.missing import identifier_label, object_not_found
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError

__all__ = ["ServiceKeyUseDenied", "check_service_key_use", "denial_reason",
           "may_use_service_key", "no_service_key"]


class ServiceKeyUseDenied(KmipError):
    """A refusal because of who asks: an attempt the caller logs or audits.

    Its reason and message are what the client is answered (for another tenant's key, the
    very answer of a missing one); ``why``, and the ``tenant`` and ``service`` whose key was
    reached for, are for the log and the audit only, never for the client."""

    def __init__(self, reason: ResultReason, message: str, *, why: str, tenant: str,
                 service: str) -> None:
        super().__init__(reason, message)
        self.why = why
        self.tenant = tenant
        self.service = service

    def restated(self, answer: KmipError) -> ServiceKeyUseDenied:
        """The same refused attempt, answered with ``answer``'s reason and message (a
        missing wrapping key rather than a missing key, say)."""
        return ServiceKeyUseDenied(answer.reason, answer.message, why=self.why,
                                   tenant=self.tenant, service=self.service)


def may_use_service_key(principal: Principal, tenant: str, service: str) -> bool:
    """Whether ``principal`` may use ``tenant``/``service``'s L3 and its L4s."""
    if principal.tenant != tenant:
        return False
    if principal.role is Role.SERVICE:
        return principal.service == service
    return principal.role is Role.ADMIN


def no_service_key(tenant: str, service: str) -> KmipError:
    """Object Not Found for a service that has no service key (or none the caller may ask
    about: the same answer)."""
    return KmipError(ResultReason.OBJECT_NOT_FOUND,
                     f"service {tenant}/{identifier_label(service)} has no service key")


def check_service_key_use(principal: Principal, tenant: str, service: str, *,
                          uid: str | None = None, known: bool = True) -> None:
    """Raise :class:`ServiceKeyUseDenied` unless ``principal`` may use ``tenant``/``service``'s
    keys.

    ``uid`` is the identifier the request reached the key by (None: it named the service),
    so that a refusal as missing says what a missing ``uid`` says. ``known`` is False for an
    application whose service its tenant has not provisioned: it may use nothing, like a
    principal of an unknown tenant.
    """
    why = denial_reason(principal, tenant, service, known=known)
    if why is None:
        return
    if known and principal.tenant == tenant:  # another service's key, in the same tenant
        raise ServiceKeyUseDenied(
            ResultReason.PERMISSION_DENIED,
            f"an application may use only its own service's keys, not "
            f"{identifier_label(service)!r}'s",
            why=why, tenant=tenant, service=service)
    missing = object_not_found(uid) if uid is not None else no_service_key(tenant, service)
    raise ServiceKeyUseDenied(missing.reason, missing.message, why=why, tenant=tenant,
                              service=service)


def denial_reason(principal: Principal, tenant: str, service: str, *,
                  known: bool = True) -> str | None:
    """Why ``principal`` may not use ``tenant``/``service``'s keys, for a log (None: it
    may)."""
    if not known:
        return f"service {principal.tenant}/{principal.service} is not provisioned"
    if may_use_service_key(principal, tenant, service):
        return None
    if principal.tenant is None:
        return f"{principal.role.value} principals use no service keys"
    if principal.tenant != tenant:
        return "another tenant's key"
    return "another service's key"
