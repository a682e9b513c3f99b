"""Which callers each gateway may assert: the ``[gateways]`` table of the core's policy file
(docs/operations.md, "Identities and certificates").

A gateway asserts its clients' identities to the core (docs/link-protocol.md). Its scope
bounds whom it may assert, so that one gateway's credential is not every tenant's::

    [gateways."gateway/gw-eu"]      # the gateway's role path (its SPIFFE ID's path)
    tenants = ["demo", "acme"]      # or "*": every tenant
    admins = false                  # may it assert tenant administrators (default false)

    [gateways."*"]                  # optional: the scope of every gateway not listed
    tenants = []

A scoped gateway may assert an application of a listed tenant, and, with ``admins = true``, an
administrator of one; never an operator. A gateway that no entry names (and no ``"*"``
entry) is *unscoped*: it may assert any caller but another gateway, as before scopes
existed; the core warns of each such gateway as it links.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kcm.identity import Principal, Role, is_valid_segment

__all__ = ["DEFAULT_ENTRY", "GatewayScope", "GatewayScopes"]

#: The key of the entry that scopes every gateway no other entry names.
DEFAULT_ENTRY = "*"
_KEYS = frozenset({"tenants", "admins"})


@dataclass(frozen=True, slots=True)
class GatewayScope:
    """Whom one gateway may assert: applications of ``tenants`` (None: of every tenant), and
    their administrators if ``admins``."""

    tenants: frozenset[str] | None
    admins: bool = False

    def allows(self, principal: Principal) -> bool:
        """Whether the gateway may assert ``principal`` (never an operator or a gateway)."""
        if principal.role is Role.SERVICE:
            return self.allows_tenant(principal.tenant)
        if principal.role is Role.ADMIN:
            return self.admins and self.allows_tenant(principal.tenant)
        return False

    def allows_tenant(self, tenant: str | None) -> bool:
        """Whether the gateway may act for ``tenant``."""
        return tenant is not None and (self.tenants is None or tenant in self.tenants)

    def describe(self) -> str:
        """Short text for logs: ``tenants demo, acme; admins``."""
        tenants = "every tenant" if self.tenants is None else (
            "tenants " + ", ".join(sorted(self.tenants)) if self.tenants else "no tenant")
        return tenants + ("; admins" if self.admins else "")


class GatewayScopes:
    """The gateways' scopes, by gateway role path (``gateway/NAME``)."""

    __slots__ = ("_scopes",)

    def __init__(self, scopes: Mapping[str, GatewayScope]) -> None:
        self._scopes = dict(scopes)

    @classmethod
    def from_mapping(cls, table: Any) -> GatewayScopes:
        """Read a ``[gateways]`` table (as ``tomllib`` gives it); validates it all and raises
        ``ValueError`` naming what is wrong."""
        if not isinstance(table, dict):
            raise ValueError("[gateways] must be a table")
        scopes: dict[str, GatewayScope] = {}
        for key, entry in table.items():
            where = f"gateways.{key!r}"
            if key != DEFAULT_ENTRY:
                segments = key.split("/")
                if len(segments) != 2 or segments[0] != "gateway" \
                        or not is_valid_segment(segments[1]):
                    raise ValueError(f"{where}: a gateway is named by its role path "
                                     "'gateway/NAME' (its SPIFFE ID's path), or '*'")
            if not isinstance(entry, dict):
                raise ValueError(f"{where} must be a table")
            unknown = set(entry) - _KEYS
            if unknown:
                raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                                 f"(known: {', '.join(sorted(_KEYS))})")
            if "tenants" not in entry:
                raise ValueError(f"{where}: 'tenants' is required (a list of tenants, or '*')")
            scopes[key] = GatewayScope(_tenants(where, entry["tenants"]),
                                       _admins(where, entry.get("admins", False)))
        return cls(scopes)

    @classmethod
    def from_document(cls, document: Mapping[str, Any], path: str | Path) -> GatewayScopes:
        """The ``[gateways]`` table of a parsed policy file (none: no scopes)."""
        try:
            return cls.from_mapping(document.get("gateways", {}))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> GatewayScopes:
        """Read the ``[gateways]`` table of the TOML policy file at ``path``."""
        with open(path, "rb") as f:
            return cls.from_document(tomllib.load(f), path)

    def scope_of(self, gateway: Principal) -> GatewayScope | None:
        """The scope of ``gateway`` (None: unscoped, it may assert any non-gateway caller)."""
        scope = self._scopes.get(gateway.path)
        return scope if scope is not None else self._scopes.get(DEFAULT_ENTRY)

    @property
    def has_default(self) -> bool:
        """Whether a ``"*"`` entry scopes the gateways not listed."""
        return DEFAULT_ENTRY in self._scopes

    def __len__(self) -> int:
        return len(self._scopes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GatewayScopes) and self._scopes == other._scopes

    def __hash__(self) -> int:
        return hash(frozenset(self._scopes.items()))


def _tenants(where: str, value: object) -> frozenset[str] | None:
    if value == DEFAULT_ENTRY:
        return None
    if not isinstance(value, list):
        raise ValueError(f"{where}.tenants must be a list of tenant names, or '*'")
    for tenant in value:
        if not isinstance(tenant, str) or not is_valid_segment(tenant):
            raise ValueError(f"{where}.tenants: {tenant!r} is not a tenant name "
                             "([A-Za-z0-9._-], not . or ..)")
    return frozenset(value)


def _admins(where: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where}.admins must be true or false")
    return value
