"""Who is on the other end of a connection: principals from verified client certificates.

Every KCM connection is mutual TLS (ARCHITECTURE §6). Once the TLS layer has verified the
peer's certificate chain, this module turns the certificate into a :class:`Principal`, or into
``None`` when it names nobody KCM knows (the connection is then refused). It does no I/O
except :meth:`SubjectMap.from_toml`, which reads the policy file it is pointed at.

Identities are SPIFFE-style URI subject alternative names in one configured trust domain:

* ``spiffe://TD/tenant/T/service/S`` -- SERVICE: an application, service ``S`` of tenant
  ``T``; it uses only its own L3 and the L4s under it.
* ``spiffe://TD/tenant/T/admin/NAME`` -- ADMIN: an administrator of tenant ``T`` only.
* ``spiffe://TD/gateway/NAME`` -- GATEWAY: a kcm-gateway, the only role whose assertions of
  another caller's identity the core trusts (§5).
* ``spiffe://TD/operator/NAME`` -- OPERATOR: a deployment operator, who administers the
  tenants themselves (creates and retires tenants, rotates L2 keys, edits policy) and belongs
  to no tenant.

Parsing is strict: the scheme and trust domain are lowercase and the trust domain equals the
configured one; every path segment is non-empty, made of ``[A-Za-z0-9._-]``, and neither ``.``
nor ``..``; no port, user info, query, fragment, percent-encoding or trailing slash. Anything
else is not a principal.

KMIP clients whose certificates carry only a subject are named by the core's policy file; see
:class:`SubjectMap`.

A CA's certificate (BasicConstraints cA=TRUE, or a KeyUsage with keyCertSign) names nobody,
whatever its names: an X509-SVID leaf has cA=false (SPIFFE X509-SVID §4.1).

The core's own certificate is the one identity without a SPIFFE ID: it names its host (DNS or
IP subject alternative names) only, so that no other identity, a gateway's above all (it names
the same hosts, for its clients), passes for the core (:func:`core_certificate_refusal`).
"""

from __future__ import annotations

import enum
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

__all__ = [
    "Principal",
    "Role",
    "SubjectMap",
    "core_certificate_refusal",
    "is_ca_certificate",
    "is_valid_segment",
    "parse_principal_path",
    "parse_spiffe_id",
    "principal_from_certificate",
    "validate_trust_domain",
]

_SCHEME = "spiffe://"
# SPIFFE ID spec §2.1: trust domain names are lowercase letters, digits, '.', '-' and '_'.
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


class Role(enum.StrEnum):
    """What a principal is allowed to be; the policy module decides what each role may do."""

    SERVICE = "service"
    ADMIN = "admin"
    GATEWAY = "gateway"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated identity.

    ``tenant`` is set exactly for SERVICE and ADMIN; ``service`` exactly for SERVICE; ``name``
    (the admin, gateway or operator name) exactly for the other three roles. ``uri`` is the
    SPIFFE ID the principal was read from, ``subject`` the certificate subject (RFC 4514) when
    it was found through the subject map. Construction checks these invariants.
    """

    role: Role
    trust_domain: str
    tenant: str | None = None
    service: str | None = None
    name: str | None = None
    uri: str | None = None
    subject: str | None = None

    def __post_init__(self) -> None:
        tenant_roles = (Role.SERVICE, Role.ADMIN)
        if (self.tenant is not None) != (self.role in tenant_roles):
            raise ValueError(f"{self.role} principal: tenant must be set only for service/admin")
        if (self.service is not None) != (self.role is Role.SERVICE):
            raise ValueError(f"{self.role} principal: service must be set only for service")
        if (self.name is not None) == (self.role is Role.SERVICE):
            raise ValueError(f"{self.role} principal: name must be set for all but service")
        if self.uri is None and self.subject is None:
            raise ValueError("a principal comes from a URI or a subject")

    @property
    def path(self) -> str:
        """The role path, e.g. ``tenant/acme/service/db`` (the SPIFFE ID path without '/')."""
        if self.role is Role.SERVICE:
            return f"tenant/{self.tenant}/service/{self.service}"
        if self.role is Role.ADMIN:
            return f"tenant/{self.tenant}/admin/{self.name}"
        return f"{self.role.value}/{self.name}"

    @property
    def spiffe_id(self) -> str:
        """The canonical SPIFFE ID for this principal, even when it came from a subject."""
        return f"{_SCHEME}{self.trust_domain}/{self.path}"

    @property
    def id(self) -> str:
        """A stable string for audit records: the SPIFFE URI, or ``subject:<RFC 4514 DN>``."""
        if self.uri is not None:
            return self.uri
        return f"subject:{self.subject}"


def validate_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` unchanged if it is a valid SPIFFE trust domain name.

    Raises ``ValueError`` otherwise: a bad configured trust domain is a configuration error,
    not an unknown peer.
    """
    if not _TRUST_DOMAIN.fullmatch(trust_domain) or trust_domain.strip(".") != trust_domain:
        raise ValueError(f"invalid trust domain {trust_domain!r}")
    return trust_domain


def parse_principal_path(
    path: str, *, trust_domain: str, uri: str | None = None, subject: str | None = None
) -> Principal | None:
    """The principal named by a role path such as ``tenant/T/service/S``, or ``None``.

    ``path`` has no leading or trailing slash. ``uri`` and ``subject`` are recorded on the
    principal as where it came from (one of them is required).
    """
    segments = path.split("/")
    if not all(is_valid_segment(s) for s in segments):
        return None
    match segments:
        case ["tenant", tenant, "service", service]:
            return Principal(Role.SERVICE, trust_domain, tenant=tenant, service=service,
                             uri=uri, subject=subject)
        case ["tenant", tenant, "admin", name]:
            return Principal(Role.ADMIN, trust_domain, tenant=tenant, name=name,
                             uri=uri, subject=subject)
        case ["gateway", name]:
            return Principal(Role.GATEWAY, trust_domain, name=name, uri=uri, subject=subject)
        case ["operator", name]:
            return Principal(Role.OPERATOR, trust_domain, name=name, uri=uri, subject=subject)
    return None


def parse_spiffe_id(uri: str, *, trust_domain: str) -> Principal | None:
    """The principal named by SPIFFE ID ``uri`` in ``trust_domain``, or ``None``."""
    validate_trust_domain(trust_domain)
    if not uri.startswith(_SCHEME):
        return None
    authority, slash, path = uri[len(_SCHEME):].partition("/")
    # Exact comparison also rules out ports, user info and upper case: none can match a valid
    # trust domain name.
    if not slash or authority != trust_domain:
        return None
    return parse_principal_path(path, trust_domain=trust_domain, uri=uri)


def is_valid_segment(segment: str) -> bool:
    """Whether ``segment`` may be one segment of a principal's path (a tenant, service or
    other name): non-empty, made of ``[A-Za-z0-9._-]``, and neither ``.`` nor ``..``."""
    return bool(_SEGMENT.fullmatch(segment)) and segment not in (".", "..")


class SubjectMap:
    """Principals for certificates that carry only a subject, from the core's policy file.

    The policy file is TOML; this class reads its ``[subjects]`` table, which maps a
    certificate subject, written as an RFC 4514 string, to a role path::

        [subjects]
        "CN=db1,O=Acme" = "tenant/acme/service/db"
        "CN=hsm-admin,O=Acme" = "tenant/acme/admin/hsm-admin"
        "CN=ops,O=Example Corp" = "operator/ops"

    RFC 4514 writes the most specific attribute first (``CN=...,O=...``), exactly as
    ``cryptography``'s ``Name.rfc4514_string()`` prints it: upper-case attribute names, no
    spaces after commas. ``openssl x509 -noout -subject -nameopt RFC2253`` prints the same
    for CN, O, OU, C, L, ST, STREET, DC and UID; an attribute RFC 4514 has no name for
    (OpenSSL's emailAddress, serialNumber, title, GN, SN) is written by its dotted OID, as
    ``cryptography`` does: ``1.2.840.113549.1.9.1=ops@example.com``. Subjects match attribute by
    attribute, values case-sensitively. Gateway paths are refused: the right to assert other
    callers' identities is bound to a gateway SPIFFE ID, never to a subject. A malformed
    subject, path, or two spellings of the same subject raise ``ValueError`` at load time.
    """

    __slots__ = ("_document", "_paths")

    def __init__(self, paths: Mapping[x509.Name, str]) -> None:
        self._paths = dict(paths)
        self._document: str | None = None

    @classmethod
    def from_mapping(cls, subjects: Mapping[str, str]) -> SubjectMap:
        """Build a map from ``{"CN=..,O=..": "tenant/T/service/S", ...}``; validates all."""
        paths: dict[x509.Name, str] = {}
        for subject, path in subjects.items():
            if not isinstance(subject, str) or not isinstance(path, str):
                raise ValueError(f"subject map entry {subject!r}: subject and path are strings")
            try:
                name = x509.Name.from_rfc4514_string(subject)
            except ValueError as e:
                raise ValueError(f"subject map: {subject!r} is not an RFC 4514 subject") from e
            if len(name) == 0:
                raise ValueError("subject map: the empty subject names nobody")
            # Any valid trust domain will do: only the path's shape is being checked here.
            principal = parse_principal_path(path, trust_domain="check", subject=subject)
            if principal is None:
                raise ValueError(f"subject map: {subject!r} -> {path!r} is not a role path")
            if principal.role is Role.GATEWAY:
                raise ValueError(f"subject map: {subject!r} -> gateways need a SPIFFE ID")
            if name in paths:
                raise ValueError(f"subject map: {subject!r} is listed twice")
            paths[name] = path
        return cls(paths)

    @classmethod
    def from_toml(cls, path: str | Path) -> SubjectMap:
        """Read the ``[subjects]`` table of the TOML policy file at ``path`` (empty if absent)."""
        with open(path, "rb") as f:
            return cls.from_policy(tomllib.load(f), path)

    @classmethod
    def from_policy(cls, document: Mapping[str, Any], path: str | Path) -> SubjectMap:
        """The ``[subjects]`` table of a parsed policy file (empty if absent)."""
        subjects = document.get("subjects", {})
        if not isinstance(subjects, dict):
            raise ValueError(f"{path}: [subjects] must be a table")
        return cls.from_mapping(subjects)

    @classmethod
    def from_document(cls, document: str) -> SubjectMap:
        """The map a :meth:`document` describes; ``ValueError`` if it is not one."""
        try:
            subjects = json.loads(document)
        except ValueError as e:
            raise ValueError(f"policy document is not JSON: {e}") from None
        if not isinstance(subjects, dict):
            raise ValueError("policy document must be a JSON object")
        return cls.from_mapping(subjects)

    def document(self) -> str:
        """The canonical policy document the core pushes to gateways (docs/link-protocol.md):
        a JSON object of RFC 4514 subject -> role path, keys sorted, no spaces. Equal maps
        give equal documents. Made once, the map being fixed: thousands of subjects take
        tens of ms, so a map parsed in a thread is best given its document there too."""
        if self._document is None:
            subjects = {name.rfc4514_string(): path for name, path in self._paths.items()}
            self._document = json.dumps(subjects, sort_keys=True, separators=(",", ":"),
                                        ensure_ascii=False)
        return self._document

    def __len__(self) -> int:
        return len(self._paths)

    def lookup(self, subject: x509.Name, *, trust_domain: str) -> Principal | None:
        """The principal mapped to certificate subject ``subject``, or ``None``."""
        path = self._paths.get(subject)
        if path is None:
            return None
        return parse_principal_path(
            path, trust_domain=trust_domain, subject=subject.rfc4514_string()
        )


#: What reading a verified certificate's extensions may raise: an encoding OpenSSL takes
#: and cryptography refuses (BasicConstraints cA=FALSE written out, a URI SAN that is not
#: UTF-8), or a general name type it does not know.
UNREADABLE = (ValueError, x509.UnsupportedGeneralNameType)


def is_ca_certificate(cert: x509.Certificate) -> bool:
    """Whether ``cert`` is a CA's: BasicConstraints cA=TRUE, or a KeyUsage with keyCertSign."""
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return True
    except x509.ExtensionNotFound:
        pass
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return False


def _uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def core_certificate_refusal(cert: x509.Certificate) -> str | None:
    """Why ``cert``, which a gateway's link peer presented, is not a core's (short ASCII), or
    ``None`` if it may be one.

    The chain and host name are TLS's to check; this refuses what TLS would let through: a
    certificate carrying any URI subject alternative name (every identity but the core's
    carries a SPIFFE ID, and a gateway's names the same hosts as the core's), and a CA's.
    """
    try:
        if is_ca_certificate(cert):
            return "its certificate is a CA's"
        uris = _uri_sans(cert)
    except UNREADABLE:
        return "its certificate's extensions cannot be read"
    if uris:
        shown = uris[0].encode("ascii", "backslashreplace").decode("ascii")[:100]
        return f"its certificate carries a URI SAN ({shown}); a core's carries none"
    return None


def principal_from_certificate(
    cert: x509.Certificate, *, trust_domain: str, subject_map: SubjectMap | None = None
) -> Principal | None:
    """The principal a verified peer certificate names, or ``None`` (refuse the connection).

    The certificate must already have been verified by TLS: this only reads names. A CA's
    certificate (:func:`is_ca_certificate`) names nobody. If it has
    any ``spiffe:`` URI SAN, the decision rests on those alone: exactly one, valid in
    ``trust_domain``, or ``None`` (a certificate claiming a bad or second SPIFFE ID is never
    rescued by its subject). Other URI schemes are ignored. Without a SPIFFE ID, the subject is
    looked up in ``subject_map``.
    """
    validate_trust_domain(trust_domain)
    try:
        if is_ca_certificate(cert):
            return None
        uris = _uri_sans(cert)
    except UNREADABLE:
        # An encoding OpenSSL verifies and cryptography will not read (a DER-invalid
        # explicit default, a URI SAN that is not UTF-8): names nobody, refused as such.
        return None
    # The scheme is case-insensitive in RFC 3986, so SPIFFE-looking URIs in any case count as
    # claims here even though only the lowercase spelling can be valid.
    spiffe_uris = [u for u in uris if u[: len(_SCHEME)].lower() == _SCHEME]
    if spiffe_uris:
        if len(spiffe_uris) != 1:
            return None
        return parse_spiffe_id(spiffe_uris[0], trust_domain=trust_domain)
    if subject_map is None:
        return None
    try:
        subject = cert.subject
    except UNREADABLE:
        # A subject OpenSSL verifies and cryptography will not read (a TeletexString of
        # Latin-1, as old appliances write): names nobody. It escaped, a traceback for
        # every connection, and the client got no answer.
        return None
    return subject_map.lookup(subject, trust_domain=trust_domain)
