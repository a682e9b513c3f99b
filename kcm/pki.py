"""A development PKI: a throwaway CA and the certificates a local KCM deployment needs.

:func:`init_pki` writes, into one directory, an ECDSA P-256 CA and a certificate and key for
every part of a local deployment and its tests (see :class:`PkiPaths` for the file names).
Identities follow :mod:`kcm.identity`: SPIFFE-style URI SANs in one trust domain.

The core's certificate carries DNS and IP names only, no SPIFFE ID: gateways and KMIP
clients verify the core by host name, and the core never acts as a TLS client, so it needs
no principal. The gateway's certificate serves both ways (server for applications, client
towards the core).

:func:`new_ca` and :func:`issue_certificate` are pure (no files) and take the clock as an
argument, so tests can mint any certificate they need: expired, from a second CA, in the
wrong trust domain, with two SPIFFE IDs, RSA instead of ECDSA. :func:`init_pki` is the one
function that writes files; private keys are written with mode 0600.

This is not a production CA: keys are unencrypted and nothing is revocable.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kcm.identity import Role, parse_principal_path, validate_trust_domain

__all__ = [
    "DEFAULT_HOSTS",
    "CertificateAuthority",
    "CertKeyPaths",
    "IssuedCertificate",
    "KeyAlgorithm",
    "PkiPaths",
    "certificate_spiffe_id",
    "init_pki",
    "issue_certificate",
    "issue_identity",
    "load_ca",
    "new_ca",
    "pki_trust_domain",
    "write_certificate",
]

#: ``ec-p256`` (the default everywhere) or ``rsa-2048`` for clients that insist on RSA.
KeyAlgorithm = Literal["ec-p256", "rsa-2048"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

#: The organization every development certificate names.
DEV_ORGANIZATION = "KCM Dev"
DEFAULT_DAYS = 825
#: The names the core's and the gateway's certificates carry unless told otherwise: the
#: loopback host of either address family, so that a client may connect to [::1] as to
#: 127.0.0.1 and check the name.
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
# Certificates start a little in the past so a peer whose clock is slightly behind accepts them.
_BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """A CA certificate and its signing key."""

    cert: x509.Certificate
    key: PrivateKey


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A leaf certificate and its private key."""

    cert: x509.Certificate
    key: PrivateKey


@dataclass(frozen=True, slots=True)
class CertKeyPaths:
    """Where one certificate (PEM) and its private key (PEM, PKCS #8, mode 0600) live."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class PkiPaths:
    """The files of a development PKI directory, named ``<name>.pem`` / ``<name>.key``.

    ``ca`` the CA; ``core`` the core's server certificate; ``gateway`` the gateway's server and
    client certificate; ``operator``, ``admin`` (tenant admin), ``app`` (an application),
    ``other_app`` (an application of a second tenant, for isolation tests) and ``legacy`` (a
    subject-only client certificate, for subject-map tests) are client certificates.
    """

    directory: Path
    ca: CertKeyPaths
    core: CertKeyPaths
    gateway: CertKeyPaths
    operator: CertKeyPaths
    admin: CertKeyPaths
    app: CertKeyPaths
    other_app: CertKeyPaths
    legacy: CertKeyPaths

    @classmethod
    def for_directory(cls, directory: Path) -> PkiPaths:
        """The paths :func:`init_pki` uses in ``directory`` (nothing is read or written)."""
        directory = Path(directory)

        def pair(name: str) -> CertKeyPaths:
            return CertKeyPaths(directory / f"{name}.pem", directory / f"{name}.key")

        return cls(
            directory=directory,
            ca=pair("ca"),
            core=pair("core"),
            gateway=pair("gateway"),
            operator=pair("operator"),
            admin=pair("admin"),
            app=pair("app"),
            other_app=pair("other-app"),
            legacy=pair("legacy"),
        )

    def all(self) -> tuple[CertKeyPaths, ...]:
        """Every certificate/key pair, the CA first."""
        return (self.ca, self.core, self.gateway, self.operator, self.admin, self.app,
                self.other_app, self.legacy)


def generate_key(algorithm: KeyAlgorithm = "ec-p256") -> PrivateKey:
    """A fresh private key."""
    if algorithm == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key algorithm {algorithm!r}")


def _name(common_name: str, organization: str | None) -> x509.Name:
    # Most significant first in the encoding, so RFC 4514 prints "CN=..,O=..".
    attributes = []
    if organization is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def new_ca(
    common_name: str = "KCM Dev CA",
    *,
    now: dt.datetime,
    days: int = CA_DAYS,
    organization: str | None = DEV_ORGANIZATION,
    key_algorithm: KeyAlgorithm = "ec-p256",
) -> CertificateAuthority:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = generate_key(key_algorithm)
    name = _name(common_name, organization)
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert, key)


def issue_certificate(
    ca: CertificateAuthority,
    common_name: str,
    *,
    now: dt.datetime,
    organization: str | None = DEV_ORGANIZATION,
    uris: Iterable[str] = (),
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    server: bool = False,
    client: bool = True,
    days: int = DEFAULT_DAYS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key_algorithm: KeyAlgorithm = "ec-p256",
) -> IssuedCertificate:
    """A leaf certificate signed by ``ca``.

    ``server`` and ``client`` choose the extended key usages (serverAuth, clientAuth). The
    validity runs from ``not_before`` (default: ``now`` minus five minutes) to ``not_after``
    (default: ``now`` plus ``days``); pass both in the past for an expired certificate. No
    check stops a test from making an odd certificate on purpose, except that it must have at
    least one key usage.
    """
    if not (server or client):
        raise ValueError("a certificate is for a server, a client, or both")
    key = generate_key(key_algorithm)
    public_key = key.public_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ip_addresses]
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organization))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before if not_before is not None else now - _BACKDATE)
        .not_valid_after(not_after if not_after is not None else now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                # TLS 1.2 RSA key exchange is not offered by KCM, but some clients still
                # insist on seeing keyEncipherment on an RSA certificate.
                key_encipherment=is_rsa, data_encipherment=False, key_agreement=False,
                key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.cert.public_key()),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return IssuedCertificate(builder.sign(ca.key, hashes.SHA256()), key)


def issue_crl(ca: CertificateAuthority, revoked: Sequence[x509.Certificate], *,
              now: dt.datetime | None = None,
              days: int = 7) -> x509.CertificateRevocationList:
    """A CRL of ``ca`` listing ``revoked`` (its certificates), valid ``days`` days from
    ``now`` (for ``tls.crl``: :mod:`kcm.tls_crl`)."""
    now = now if now is not None else dt.datetime.now(dt.UTC)
    # The Authority Key Identifier names the CA's key: two CAs of one name (a CA renewed
    # with a new key, both in tls.ca for a while) each get their own CRL, not the newest.
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca.cert.subject)
               .last_update(now - _BACKDATE)
               .next_update(now + dt.timedelta(days=days))
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca.key.public_key()), critical=False)
               .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False))
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
            .revocation_date(now - _BACKDATE).build())
    return builder.sign(ca.key, hashes.SHA256())


def certificate_pem(cert: x509.Certificate) -> bytes:
    """``cert`` in PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: PrivateKey) -> bytes:
    """``key`` as unencrypted PKCS #8 PEM (what OpenSSL, Python's ssl and Twisted all read)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_file(path: Path, data: bytes, mode: int) -> None:
    # Write a temporary file and rename it over the target, so a reader never sees half a key
    # and a key file never exists, even briefly, with a wider mode than 0600.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_certificate(paths: CertKeyPaths, cert: x509.Certificate, key: PrivateKey) -> None:
    """Write ``cert`` (mode 0644) and ``key`` (mode 0600) to ``paths``, replacing them."""
    _write_file(paths.key, private_key_pem(key), 0o600)
    _write_file(paths.cert, certificate_pem(cert), 0o644)


def load_ca(paths: CertKeyPaths) -> CertificateAuthority:
    """Read a CA written by :func:`init_pki` (or any PEM certificate and unencrypted key)."""
    cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
    key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"{paths.key}: CA key must be ECDSA or RSA")
    return CertificateAuthority(cert, key)


def init_pki(
    directory: Path,
    *,
    trust_domain: str = "kcm.test",
    tenant: str = "demo",
    service: str = "app",
    hosts: Sequence[str] = DEFAULT_HOSTS,
    days: int = DEFAULT_DAYS,
    force: bool = False,
    now: dt.datetime | None = None,
) -> PkiPaths:
    """Create a development PKI in ``directory`` and return its paths.

    ``hosts`` (DNS names and IP addresses) go into the core's and the gateway's certificates.
    The core's carries them only, no URI SAN: that is what tells it from the gateway's, which
    names the same hosts (a gateway refuses a core whose certificate has a URI SAN:
    :func:`kcm.identity.core_certificate_refusal`).
    The application certificate is ``spiffe://TD/tenant/TENANT/service/SERVICE``; the other
    identities are fixed: gateway ``gw1``, operator ``ops``, tenant admin ``alice`` of
    ``TENANT``, a second tenant's application ``spiffe://TD/tenant/other/service/app`` (or
    tenant ``other2`` if ``TENANT`` is ``other``), and ``CN=legacy-client,O=KCM Dev``.

    The directory is created (mode 0700) if needed. Raises ``FileExistsError`` if any of the
    files already exists, unless ``force``; with ``force`` they are all replaced.
    """
    validate_trust_domain(trust_domain)
    app_path = f"tenant/{tenant}/service/{service}"
    if parse_principal_path(app_path, trust_domain=trust_domain, uri=app_path) is None:
        raise ValueError(f"invalid tenant or service name in {app_path!r}")
    now = now if now is not None else dt.datetime.now(dt.UTC)
    paths = PkiPaths.for_directory(Path(directory))
    if not force:
        existing = [p for pair in paths.all() for p in (pair.cert, pair.key) if p.exists()]
        if existing:
            raise FileExistsError(f"{existing[0]} already exists")
    paths.directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    dns_names, ips = _split_hosts(hosts)
    spiffe = f"spiffe://{trust_domain}"
    other_tenant = "other" if tenant != "other" else "other2"
    ca = new_ca(f"KCM Dev CA ({trust_domain})", now=now, days=max(days, CA_DAYS))

    issue = functools.partial(issue_certificate, ca, now=now, days=days)

    leaves = {
        paths.core: issue("kcm-core", dns_names=dns_names, ip_addresses=ips,
                          server=True, client=False),
        paths.gateway: issue("kcm-gateway gw1", uris=[f"{spiffe}/gateway/gw1"],
                             dns_names=dns_names, ip_addresses=ips, server=True, client=True),
        paths.operator: issue("ops", uris=[f"{spiffe}/operator/ops"]),
        paths.admin: issue("alice", uris=[f"{spiffe}/tenant/{tenant}/admin/alice"]),
        paths.app: issue(service, uris=[f"{spiffe}/tenant/{tenant}/service/{service}"]),
        paths.other_app: issue("app", uris=[f"{spiffe}/tenant/{other_tenant}/service/app"]),
        paths.legacy: issue("legacy-client"),
    }
    write_certificate(paths.ca, ca.cert, ca.key)
    for pair, issued in leaves.items():
        write_certificate(pair, issued.cert, issued.key)
    return paths


def issue_identity(
    directory: Path,
    name: str,
    identity: str,
    *,
    trust_domain: str | None = None,
    days: int = DEFAULT_DAYS,
    force: bool = False,
    now: dt.datetime | None = None,
    hosts: Sequence[str] = DEFAULT_HOSTS,
) -> CertKeyPaths:
    """Issue one more certificate from the CA :func:`init_pki` wrote in ``directory``.

    ``identity`` is a role path (``tenant/T/service/S``, ``tenant/T/admin/NAME``,
    ``operator/NAME`` or ``gateway/NAME``), put in the certificate as
    ``spiffe://TD/IDENTITY``; the files are ``NAME.pem`` and ``NAME.key``. A gateway's
    certificate serves too, as :func:`init_pki`'s ``gw1`` does: serverAuth and clientAuth,
    and ``hosts`` (DNS names and IP addresses) beside its URI; the others are clients'.
    Raises ``ValueError`` for a bad name or identity, ``FileNotFoundError`` without a CA,
    ``FileExistsError`` if either file exists, unless ``force``.
    ``trust_domain``: by default the one of the directory's gateway certificate (as
    :func:`init_pki` made it), else ``kcm.test``.
    """
    if trust_domain is None:
        trust_domain = pki_trust_domain(directory) or "kcm.test"
    validate_trust_domain(trust_domain)
    if not _FILE_NAME.fullmatch(name) or name == "ca":
        raise ValueError(f"invalid certificate name {name!r}: letters, digits, '-', '_' "
                         "and not 'ca'")
    principal = parse_principal_path(identity, trust_domain=trust_domain, uri=identity)
    if principal is None:
        raise ValueError(f"invalid identity {identity!r}: tenant/T/service/S, "
                         "tenant/T/admin/NAME, operator/NAME or gateway/NAME")
    gateway = principal.role is Role.GATEWAY
    directory = Path(directory)
    ca_paths = PkiPaths.for_directory(directory).ca
    if not (ca_paths.cert.exists() and ca_paths.key.exists()):
        raise FileNotFoundError(f"{directory} has no CA ({ca_paths.cert.name}, "
                                f"{ca_paths.key.name})")
    pair = CertKeyPaths(directory / f"{name}.pem", directory / f"{name}.key")
    if not force:
        for path in (pair.cert, pair.key):
            if path.exists():
                raise FileExistsError(f"{path} already exists")
    now = now if now is not None else dt.datetime.now(dt.UTC)
    dns_names, ips = _split_hosts(hosts) if gateway else ([], [])
    issued = issue_certificate(load_ca(ca_paths), name, now=now, days=days,
                               uris=[f"spiffe://{trust_domain}/{identity}"],
                               dns_names=dns_names, ip_addresses=ips, server=gateway)
    write_certificate(pair, issued.cert, issued.key)
    return pair


def pki_trust_domain(directory: Path) -> str | None:
    """The trust domain of the SPIFFE ID in ``directory``'s gateway certificate, or None
    (no such file, or no SPIFFE ID in it)."""
    spiffe_id = certificate_spiffe_id(PkiPaths.for_directory(Path(directory)).gateway.cert)
    if spiffe_id is None:
        return None
    return spiffe_id.removeprefix("spiffe://").split("/", 1)[0] or None


def certificate_spiffe_id(path: Path) -> str | None:
    """The first SPIFFE ID (``spiffe://...`` URI SAN) of the PEM certificate at ``path``, or
    None (no such file, not a certificate, or no SPIFFE ID in it)."""
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
        uris = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(
                x509.UniformResourceIdentifier)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    return next((uri for uri in uris if uri.startswith("spiffe://")), None)


_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def _split_hosts(hosts: Sequence[str]) -> tuple[list[str], list[str]]:
    dns_names: list[str] = []
    ips: list[str] = []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            dns_names.append(host)
        else:
            ips.append(host)
    return dns_names, ips
