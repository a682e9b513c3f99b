"""The VIEW digest of a gateway's scope (docs/link-protocol.md, "Scoped gateways"): what
the core sends a gateway of link version 6 on each link, and what the gateway compares.

:func:`scope_digest` is the digest of a scope (``tenants`` None: every tenant);
:data:`UNSCOPED` that of an unscoped gateway. :data:`SERVES_NOBODY` are the digests of the
scopes that let a gateway assert no caller (no tenant, with or without ``admins``): a
gateway told one answers ``/readyz`` 503 (:meth:`kcm.gateway.metrics.GatewayMetrics.readiness`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["SERVES_NOBODY", "UNSCOPED", "scope_digest"]


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()[:16]


def scope_digest(tenants: Iterable[str] | None, admins: bool) -> bytes:
    """16 bytes that differ between two scopes (and from :data:`UNSCOPED`); the tenants'
    names are not sent, only their digest."""
    names = "*" if tenants is None else ",".join(sorted(tenants))
    return _digest(f"tenants={names};admins={int(admins)}")


#: The VIEW of an unscoped gateway.
UNSCOPED = _digest("unscoped")
#: The VIEWs of a scope of no tenant: a gateway that may assert nobody.
SERVES_NOBODY = frozenset({scope_digest((), False), scope_digest((), True)})
