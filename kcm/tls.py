"""Mutual TLS for kcm-core and kcm-gateway, built on Twisted from PEM files.

One policy for every KCM listener and for the gateway's link to the core (ARCHITECTURE §5,
§6):

* TLS 1.2 and TLS 1.3 only (a listener may be configured for TLS 1.3 only);
* TLS 1.2 cipher suites: by default ECDHE key exchange with an AEAD cipher only (AES-GCM,
  ChaCha20-Poly1305), for ECDSA and RSA certificates alike; a KMIP listener may be
  configured for another list, e.g. the ``kmip-compat`` profile that adds the KMIP
  profiles' CBC suites for old appliances (:mod:`kcm.tls_policy`); the server's order of
  preference wins; TLS 1.3 suites are all AEAD, and OpenSSL's default set (AES-256-GCM,
  ChaCha20-Poly1305, AES-128-GCM) is kept;
* no compression, no renegotiation, no session tickets, no session cache;
* the server requires a client certificate and verifies it against the configured CA bundle
  (``VERIFY_PEER | VERIFY_FAIL_IF_NO_PEER_CERT``); OpenSSL also checks that it is fit for TLS
  client use (an extendedKeyUsage without clientAuth is refused);
* the client verifies the server's chain and its DNS or IP subject alternative name with
  ``service_identity``, and presents its own certificate (the gateway's link also refuses a
  peer whose certificate is not a core's: :mod:`kcm.gateway.link_client`);
* a TLS private key file must not be readable by others (a start fails naming it), and one
  its group may read is warned about, once (:func:`check_key_file_mode`).

The server neither needs nor uses SNI: PyKMIP's client, for one, sends none.

After the handshake, :func:`peer_principal` names the peer (see :mod:`kcm.identity`). With
TLS 1.3 a client finishes its side of the handshake before the server has checked the
client's certificate, so a protocol must wait for ``handshakeCompleted`` (Twisted's
``IHandshakeListener``) before it asks who the peer is; a refused client learns of it from
the alert that closes the connection.

Listeners stay endpoint strings in configuration: :func:`tls_server_endpoint` takes a plain
``tcp:5696:interface=127.0.0.1`` description and wraps it in TLS; :func:`tls_client_endpoint`
does the same for ``tcp:HOST:PORT``. A listener may also be ``fd:N``: a listening socket the
process inherited as descriptor N (from kcm-gateway's supervisor for a listener that is not
TCP, which it binds once for all its workers; or from systemd's socket activation), adopted
instead of bound; or ``handoff:N``, the connections another process accepted and hands over
the Unix socket pair inherited as descriptor N (kcm-gateway's workers: :mod:`kcm.handoff`)
(:func:`plain_server_endpoint`).

The files are read once into a :class:`TlsMaterial` (:func:`read_tls_material`), from
which options are built (:func:`server_tls_from`, :func:`client_tls_from`): a running
process reads them again when they change and builds its options again from what it
checked (:mod:`kcm.tls_refresh`); :class:`RenewableServerTLS` and
:class:`RenewableClientTLS` hold a listener's and a link's options so they can be swapped,
for the next connections. Whoever builds TLS options may ask when the certificates they
were built with expire (``dates``: :class:`CertificateDates`, given the very certificates
read), each time they are built: at start, and whenever renewed files or new CRLs are
taken (the metrics' certificate expiry gauges: :mod:`kcm.tls_metrics`).

Services are assembled before anything is read (STYLE.md): :class:`TLSListener` is the one way
a KCM process listens — an endpoint string, a function that builds the TLS options, and a
protocol factory; it reads the certificate files and binds the port when it starts, and a
failure to do either fails its start. Given a :class:`kcm.connection_guard.ConnectionGuard`,
its connections are capped, must finish the handshake in time, and have a bounded send
buffer. :class:`TLSClientEndpoint` is the client side's
counterpart: its TLS options are built when its owner loads it at start.
"""

from __future__ import annotations

import os
import re
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL, crypto
from twisted.application.service import Service
from twisted.internet import fdesc, tcp, unix
from twisted.internet.defer import CancelledError, Deferred, execute, fail, maybeDeferred
from twisted.internet.endpoints import (
    AdoptedStreamServerEndpoint,
    serverFromString,
)
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kcm.accept_pause import PausedWhenExhausted
from kcm.connection_guard import ConnectionGuard
from kcm.eager_tls import EagerTLSClientEndpoint, EagerTLSFactory
from kcm.handoff import HandoffServerEndpoint, parse_handoff
from kcm.identity import Principal, SubjectMap, principal_from_certificate
from kcm.tcp_client import plain_client_endpoint
from kcm.tls_crl import RevocationLists, RevocationWatch
from kcm.tls_policy import DEFAULT_TLS12_CIPHERS, TlsPolicy

__all__ = [
    "LISTEN_BACKLOG",
    "CertificateDates",
    "DatesSeen",
    "RenewableClientTLS",
    "RenewableServerTLS",
    "TLS12_CIPHERS",
    "KeyFileModeProblem",
    "TLSClientEndpoint",
    "TLSListener",
    "TlsMaterial",
    "certificate_dates",
    "check_key_file_mode",
    "client_tls_from",
    "client_tls_options",
    "key_file_mode_problem",
    "listener_tls_options",
    "load_certificates",
    "min_tls_version",
    "peer_certificate",
    "peer_principal",
    "plain_server_endpoint",
    "read_tls_material",
    "server_tls_from",
    "server_tls_options",
    "tls_client_endpoint",
    "tls_server_endpoint",
    "with_backlog",
]

#: The OpenSSL cipher string for TLS 1.2: forward-secret ECDHE with AEAD ciphers only.
TLS12_CIPHERS = DEFAULT_TLS12_CIPHERS

_VERSIONS = (TLSVersion.TLSv1_2, TLSVersion.TLSv1_3)

log = Logger()


def load_certificates(path: str | Path) -> list[x509.Certificate]:
    """Every certificate in the PEM file at ``path``, in file order; at least one."""
    try:
        certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except ValueError:
        raise ValueError(f"{path} holds no PEM certificate") from None
    if not certs:  # pragma: no cover - cryptography already refuses a file without any
        raise ValueError(f"{path}: no PEM certificate")
    return certs


#: The key files whose group-readable mode was warned about (once per process each).
_warned_key_files: set[str] = set()


class KeyFileModeProblem(NamedTuple):
    """What a TLS private key file's mode says is wrong: ``refused`` (the file is not
    loaded) or only warned about; ``message`` says which, in one line."""

    refused: bool
    message: str


def key_file_mode_problem(path: str | Path, mode: int) -> KeyFileModeProblem | None:
    """The problem of a TLS private key file ``path`` of ``mode``: refused when others may
    read it; warned about when its group may (the L1 key file is refused for either; a TLS
    key may be shared with a group on purpose, e.g. ``ssl-cert``); None when neither may.
    The one rule of :func:`check_key_file_mode` and of ``kcm config check``."""
    mode = stat.S_IMODE(mode)
    if mode & stat.S_IROTH:
        return KeyFileModeProblem(True, f"TLS key file {os.fspath(path)} has mode {mode:04o}; "
                                  "it must not be readable by others (chmod 600)")
    if mode & stat.S_IRGRP:
        return KeyFileModeProblem(False, f"TLS key file {os.fspath(path)} has mode "
                                  f"{mode:04o}: its group may read it (chmod 600 unless that "
                                  "is meant)")
    return None


def check_key_file_mode(path: str | Path, mode: int) -> None:
    """Refuse (ValueError) a TLS private key file ``path`` of ``mode`` that others may read;
    warn, once per file, about one its group may read (:func:`key_file_mode_problem`)."""
    problem = key_file_mode_problem(path, mode)
    if problem is None:
        return
    if problem.refused:
        raise ValueError(problem.message)
    if os.fspath(path) not in _warned_key_files:
        _warned_key_files.add(os.fspath(path))
        log.warn("{problem}", problem=problem.message, path=os.fspath(path),
                 mode=f"{stat.S_IMODE(mode):04o}")


def _load_private_key(path: str | Path) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    with open(path, "rb") as f:
        check_key_file_mode(path, os.fstat(f.fileno()).st_mode)
        pem = f.read()
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ValueError(f"{path} is encrypted (KCM needs the key unencrypted)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"{path} holds no PEM private key KCM can use") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"{path}: TLS keys must be ECDSA or RSA")
    return key


def is_ca_certificate(certificate: x509.Certificate) -> bool:
    """Whether ``certificate`` may be a CA's, as OpenSSL judges a trust anchor
    (``X509_check_ca``): Basic Constraints cA TRUE; or, without Basic Constraints, a
    version 1 certificate, or a Key Usage with keyCertSign."""
    try:
        extensions = certificate.extensions
    except (x509.DuplicateExtension, x509.UnsupportedGeneralNameType, ValueError):
        return False
    try:
        return bool(extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        pass
    if certificate.version == x509.Version.v1:
        return True
    try:
        return bool(extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign)
    except x509.ExtensionNotFound:
        return False


class CertificateDates(NamedTuple):
    """When the certificates TLS options were built with expire, in unix seconds: the
    earliest notAfter of the process's own certificate file (``certificate``: its
    certificate and the intermediates sent with it) and of the CA bundle (``ca``)."""

    certificate: float
    ca: float


def certificate_dates(own: list[x509.Certificate],
                      authorities: list[x509.Certificate]) -> CertificateDates:
    """The :class:`CertificateDates` of a certificate file's ``own`` certificates and a CA
    bundle's ``authorities`` (neither empty)."""
    return CertificateDates(min(c.not_valid_after_utc for c in own).timestamp(),
                            min(c.not_valid_after_utc for c in authorities).timestamp())


#: Told the dates of the certificates TLS options were just built with.
DatesSeen = Callable[[CertificateDates], object]


class TlsMaterial(NamedTuple):
    """A process's TLS files as read (:func:`read_tls_material`): its certificate file
    (``chain``: its certificate, then the intermediates sent with it), its private ``key``
    and the CA bundle (``authorities``), of which at least one may be a CA's."""

    chain: list[x509.Certificate]
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    authorities: list[x509.Certificate]


def read_tls_material(cert_path: str | Path, key_path: str | Path,
                      ca_path: str | Path) -> TlsMaterial:
    """Read the certificate file, the key file (its mode checked:
    :func:`check_key_file_mode`) and the CA bundle; ValueError (or OSError) naming the file
    when one cannot be read or used. Whether the key is the certificate's is checked by
    whoever uses them (OpenSSL, as options are built; :mod:`kcm.tls_renewal`)."""
    chain = load_certificates(cert_path)
    key = _load_private_key(key_path)
    authorities = load_certificates(ca_path)
    if not any(is_ca_certificate(c) for c in authorities):
        # (a leaf given for the CA: every peer would be refused at its handshake)
        raise ValueError(f"{ca_path} holds no CA certificate (Basic Constraints cA TRUE, "
                         f"or keyCertSign)")
    return TlsMaterial(chain, key, authorities)


def _trust_root(authorities: list[x509.Certificate]) -> Any:
    # Twisted's trust roots still hold pyOpenSSL certificates (X509Store takes nothing else).
    return trustRootFromCertificates(
        [Certificate(crypto.X509.from_cryptography(c)) for c in authorities]
    )


def _identity_options(material: TlsMaterial) -> dict[str, Any]:
    # pyOpenSSL takes cryptography objects for the local certificate and key (and warns about
    # its own X509/PKey there), and Twisted passes them through untouched.
    return {
        "privateKey": material.key,
        "certificate": material.chain[0],
        "extraCertChain": material.chain[1:],
    }


def _check_versions(min_version: Any, max_version: Any) -> None:
    if min_version not in _VERSIONS or max_version not in _VERSIONS:
        raise ValueError("KCM speaks TLS 1.2 and TLS 1.3 only")
    if min_version > max_version:
        raise ValueError("min_version is above max_version")


def _common_options(min_version: Any, max_version: Any,
                    ciphers: str = TLS12_CIPHERS) -> dict[str, Any]:
    try:
        SSL.Context(SSL.TLS_METHOD).set_cipher_list(ciphers.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        raise ValueError(f"the TLS 1.2 cipher string {ciphers!r} names no suite OpenSSL "
                         "has") from None
    return {
        "raiseMinimumTo": min_version,
        "lowerMaximumSecurityTo": max_version,
        "acceptableCiphers": AcceptableCiphers.fromOpenSSLCipherString(ciphers),
    }


def server_tls_options(
    cert_path: str | Path,
    key_path: str | Path,
    ca_path: str | Path,
    **options: Any,
) -> IOpenSSLServerConnectionCreator:
    """Server-side TLS that requires a client certificate issued by a CA in ``ca_path``.

    ``cert_path`` holds the server certificate, optionally followed by intermediates, which are
    sent too; ``key_path`` its unencrypted private key; ``ca_path`` the CA bundle client
    certificates are verified against. The files are read and the TLS context is built now, so
    a missing file or a key that does not match its certificate fails here, not on the first
    connection. ``options``: those of :func:`server_tls_from`.
    """
    return server_tls_from(read_tls_material(cert_path, key_path, ca_path), **options)


def server_tls_from(
    material: TlsMaterial,
    *,
    min_version: Any = TLSVersion.TLSv1_2,
    max_version: Any = TLSVersion.TLSv1_3,
    ciphers: str = TLS12_CIPHERS,
    crls: RevocationLists | None = None,
    dates: DatesSeen | None = None,
) -> IOpenSSLServerConnectionCreator:
    """:func:`server_tls_options` of files already read (a key that is not the
    certificate's is an ``SSL.Error``). ``min_version``/``max_version`` narrow the range
    within TLS 1.2..1.3; ``ciphers`` is the OpenSSL cipher string for TLS 1.2 (one that
    names no suite is a ValueError). ``crls``: client certificates are checked against them
    (:mod:`kcm.tls_crl`), now and as they are read again. ``dates``, if given, is told
    when the certificates read expire, once the options are built."""
    _check_versions(min_version, max_version)
    options = CertificateOptions(
        trustRoot=_trust_root(material.authorities),
        **_identity_options(material),
        **_common_options(min_version, max_version, ciphers),
    )
    # CertificateOptions builds one context and reuses it for every connection, so an option
    # set on it now applies to all of them. Twisted exposes no switch for renegotiation.
    context = options.getContext()
    context.set_options(SSL.OP_NO_RENEGOTIATION)
    if crls is not None:
        crls.attach(context.get_cert_store())
        if crls.lenient and crls.in_force:
            # Only the core's CRLs, not this service's: a CA they hold none of is not
            # checked (as with no CRL at all), rather than every client of it refused.
            context.set_verify(context.get_verify_mode(), _no_crl_is_fine)
    if dates is not None:
        dates(certificate_dates(material.chain, material.authorities))
    return options


#: OpenSSL's X509_V_ERR_UNABLE_TO_GET_CRL: no CRL in force of a certificate's issuer.
_UNABLE_TO_GET_CRL = 3


def _no_crl_is_fine(connection: Any, certificate: Any, error: int, depth: int,
                    ok: int) -> bool:
    """A verify callback that takes a certificate whose issuer has no CRL in force (and
    leaves every other verdict as OpenSSL gave it)."""
    return bool(ok) or error == _UNABLE_TO_GET_CRL


@implementer(IOpenSSLServerConnectionCreator)
class RenewableServerTLS:
    """Server TLS options that can be replaced while a listener runs (:meth:`use`): each
    new connection takes the newest, connections open keep theirs (e.g. options of
    :func:`listener_tls_options` built again with renewed files or new CRLs:
    :mod:`kcm.tls_refresh`). ``watch`` (a
    :class:`kcm.tls_crl.RevocationWatch`), if given, is each connection's ``peer_watch``
    (:class:`kcm.eager_tls.EagerTLSProtocol`): the open ones are checked against new CRLs."""

    def __init__(self, options: Any, watch: RevocationWatch | None = None) -> None:
        self._options = options
        self.watch = watch

    def use(self, options: Any) -> None:
        """Give new connections ``options`` from now on."""
        self._options = options

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Any:  # noqa: N802 - Twisted's
        connection = self._options.serverConnectionForTLS(tlsProtocol)
        if self.watch is not None:
            tlsProtocol.peer_watch = self.watch
        return connection

    def getContext(self) -> Any:  # noqa: N802 - CertificateOptions'
        return self._options.getContext()


@implementer(IOpenSSLClientConnectionCreator)
class RenewableClientTLS:
    """Client TLS options that can be replaced while their owner runs (:meth:`use`): each
    new connection takes the newest (the gateway's link: :mod:`kcm.tls_refresh`)."""

    def __init__(self, options: Any) -> None:
        self._options = options

    def use(self, options: Any) -> None:
        """Give new connections ``options`` from now on."""
        self._options = options

    @property
    def current(self) -> Any:
        """The options new connections take now."""
        return self._options

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:  # noqa: N802 - Twisted's
        return self._options.clientConnectionForTLS(tlsProtocol)


def min_tls_version(policy: TlsPolicy) -> Any:
    """The Twisted ``TLSVersion`` of a policy's ``min_version``."""
    return TLSVersion.TLSv1_3 if policy.min_version == "1.3" else TLSVersion.TLSv1_2


def listener_tls_options(material: TlsMaterial, policy: TlsPolicy,
                         crls: RevocationLists | None = None, *,
                         dates: DatesSeen | None = None) -> IOpenSSLServerConnectionCreator:
    """:func:`server_tls_from` with the versions and TLS 1.2 suites of ``policy``,
    ``crls`` and ``dates``."""
    return server_tls_from(material, min_version=min_tls_version(policy),
                           ciphers=policy.tls12_ciphers, crls=crls, dates=dates)


def client_tls_options(
    cert_path: str | Path,
    key_path: str | Path,
    ca_path: str | Path,
    hostname: str,
    **options: Any,
) -> IOpenSSLClientConnectionCreator:
    """Client-side TLS for the gateway→core link.

    Verifies that the server's chain leads to a CA in ``ca_path`` and that its certificate
    names ``hostname`` (a DNS name, or an IP address matched against IP SANs), and presents
    the certificate in ``cert_path`` (optionally followed by intermediates) with its key.
    ``options``: those of :func:`client_tls_from`.
    """
    return client_tls_from(read_tls_material(cert_path, key_path, ca_path), hostname,
                           **options)


def client_tls_from(
    material: TlsMaterial,
    hostname: str,
    *,
    min_version: Any = TLSVersion.TLSv1_2,
    max_version: Any = TLSVersion.TLSv1_3,
    dates: DatesSeen | None = None,
) -> IOpenSSLClientConnectionCreator:
    """:func:`client_tls_options` of files already read. ``dates``, if given, is told when
    the certificates read expire, once built."""
    _check_versions(min_version, max_version)
    options = optionsForClientTLS(
        hostname,
        trustRoot=_trust_root(material.authorities),
        extraCertificateOptions={
            **_identity_options(material),
            **_common_options(min_version, max_version),
        },
    )
    if dates is not None:
        dates(certificate_dates(material.chain, material.authorities))
    return options


def peer_certificate(transport: Any) -> x509.Certificate | None:
    """The peer's verified certificate on a TLS ``transport``, or ``None`` if there is none;
    ValueError when OpenSSL verified one that ``cryptography`` cannot load.

    Call it once the handshake has completed (``IHandshakeListener.handshakeCompleted``);
    before that there is no verified certificate to read.
    """
    get_peer_certificate = getattr(transport, "getPeerCertificate", None)
    if get_peer_certificate is None:
        return None
    cert = get_peer_certificate()
    if cert is None:
        return None
    return cert.to_cryptography()


def openssl_subject(cert: crypto.X509) -> str:
    """The subject of ``cert`` as OpenSSL prints it (``CN=app, O=demo``; "" when it has
    none), for a certificate ``cryptography`` cannot load. (pyOpenSSL deprecates
    ``X509.get_subject`` and its ``X509Name``.)"""
    text = crypto.dump_certificate(crypto.FILETYPE_TEXT, cert).decode("ascii", "replace")
    for line in text.splitlines():
        field, _, value = line.strip().partition(":")
        if field == "Subject":
            return value.strip()
    return ""


def peer_principal(
    transport: Any, trust_domain: str, subject_map: SubjectMap | None = None
) -> Principal | None:
    """The principal of the peer on a TLS ``transport`` after its handshake, or ``None``.

    ``None`` means refuse: no certificate, or one that names no principal (see
    :func:`kcm.identity.principal_from_certificate`).
    """
    try:
        cert = peer_certificate(transport)
    except ValueError:  # one cryptography cannot load at all (an explicit critical=FALSE)
        return None
    if cert is None:
        return None
    return principal_from_certificate(cert, trust_domain=trust_domain, subject_map=subject_map)


def _refuse_tls_description(description: str) -> None:
    kind = description.split(":", 1)[0].strip().lower()
    if kind in ("ssl", "tls", "txtls"):
        raise ValueError(
            f"{description!r}: give a plain stream endpoint (tcp:...); KCM adds the TLS itself"
        )


@implementer(IStreamServerEndpoint)
class _TLSServerEndpoint:
    """A stream server endpoint whose connections are TLS over those of another endpoint."""

    def __init__(self, inner: IStreamServerEndpoint,
                 options: IOpenSSLServerConnectionCreator,
                 guard: ConnectionGuard | None = None, bound_output: bool = True) -> None:
        self._inner = inner
        self._options = options
        self._guard = guard
        self._bound_output = bound_output

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen on the inner endpoint, running ``protocolFactory``'s protocols inside TLS."""
        if self._guard is not None:
            return self._inner.listen(self._guard.tls_factory(
                self._options, protocolFactory, bound_output=self._bound_output))
        return self._inner.listen(EagerTLSFactory(self._options, False, protocolFactory))


def tls_server_endpoint(
    reactor: Any, description: str, options: IOpenSSLServerConnectionCreator,
    guard: ConnectionGuard | None = None, *, bound_output: bool = True,
    ready: Callable[[], bool] | None = None,
) -> IStreamServerEndpoint:
    """A TLS server endpoint over the plain endpoint ``description`` (``tcp:PORT:...``),
    its connections guarded by ``guard`` if given (``bound_output``: see
    :meth:`kcm.connection_guard.ConnectionGuard.tls_factory`).

    Any stream server endpoint description Twisted parses will do (``tcp6:``, ``unix:``, ...);
    ``ssl:``/``tls:`` descriptions are refused, since they would bring their own TLS settings.
    ``ready``: see :func:`plain_server_endpoint`.
    """
    _refuse_tls_description(description)
    return _TLSServerEndpoint(plain_server_endpoint(reactor, description, ready=ready),
                              options, guard, bound_output)


def plain_server_endpoint(reactor: Any, description: str, *,
                          ready: Callable[[], bool] | None = None) -> IStreamServerEndpoint:
    """The plain stream server endpoint a listener ``description`` names: Twisted's endpoint
    string (a ``tcp:`` listener with :data:`LISTEN_BACKLOG` unless it names its own), or
    ``fd:N``, the listening socket inherited as descriptor N, adopted (its address family
    read from the socket; the endpoint closes N once it has adopted a copy of it), or
    ``handoff:N``, the connections handed over the socket pair inherited as descriptor N
    (:mod:`kcm.handoff`: kcm-gateway's workers), which tells the supervisor when
    ``ready()`` (if given) first says the process can serve.
    ``ssl:``/``tls:`` descriptions are refused: KCM adds the TLS itself."""
    _refuse_tls_description(description)
    handoff = parse_handoff(description)
    if handoff is not None:
        return HandoffServerEndpoint(reactor, handoff, ready)
    kind, _, rest = description.partition(":")
    if kind.strip().lower() != "fd":
        return PausedWhenExhausted(serverFromString(reactor, with_backlog(description)),
                                   reactor, description)
    if not rest.strip().isdigit():
        raise ValueError(f"{description!r}: fd: takes a descriptor number (fd:3)")
    fileno = int(rest)
    # socket(fileno=) reads the family from the descriptor; a copy, so closing it keeps N.
    with socket.socket(fileno=os.dup(fileno)) as inherited:
        family = inherited.family
    if family == socket.AF_UNIX:
        inner: IStreamServerEndpoint = _InheritedUnixEndpoint(reactor, fileno)
    else:
        inner = AdoptedStreamServerEndpoint(reactor, fileno, family)
    return PausedWhenExhausted(_OneAcceptPerTurn(inner), reactor, description)


class _InheritedUnixPort(unix.Port):
    """A listening Unix socket inherited from the process that bound it (kcm-gateway's
    supervisor, systemd): its path and the mode given to it stay that process's. Twisted's
    port, adopting one, made the path the world's (0666, whatever ``mode=`` said), and when
    it stopped listening shut the socket down (for every process holding it) and removed
    its path: one worker stopping in a rolling restart left nothing to connect to, and no
    worker could start again."""

    def startListening(self) -> None:
        tcp._reservedFD.reserve()
        self.factory.doStart()
        skt, self._preexistingSocket = self._preexistingSocket, None
        self._shouldShutdown = False  # (a shutdown ends the socket for every holder)
        self.connected = True
        self.socket = skt
        self.fileno = skt.fileno
        self.numberAccepts = 100
        self.startReading()

    def connectionLost(self, reason: Failure) -> None:
        tcp.Port.connectionLost(self, reason)  # (unix.Port's would remove the path)


@implementer(IStreamServerEndpoint)
class _InheritedUnixEndpoint:
    """``fd:N`` of a listening Unix socket: :class:`_InheritedUnixPort` on a copy of N,
    then N closed (as Twisted's ``AdoptedStreamServerEndpoint`` does)."""

    def __init__(self, reactor: Any, fileno: int) -> None:
        self._reactor = reactor
        self._fileno = fileno

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        def adopt() -> IListeningPort:
            # Non-blocking, as Twisted's own adoption makes it (systemd hands over blocking
            # sockets): the workers share it, and the one that loses a connection to
            # another would wait in accept() with its reactor.
            fdesc.setNonBlocking(self._fileno)
            port = _InheritedUnixPort._fromListeningDescriptor(
                self._reactor, self._fileno, protocolFactory)
            port.startListening()
            os.close(self._fileno)
            return port

        return execute(adopt)


class _OneAcceptPerTurn:
    """An endpoint whose port accepts at most one connection each time the reactor finds
    it readable. Several processes accept on one shared socket (kcm-gateway's workers):
    Twisted's port accepts up to a hundred pending connections in one go, so the first
    worker to wake would take a whole burst of connects; one each, in turn, they spread."""

    def __init__(self, inner: IStreamServerEndpoint) -> None:
        self.inner = inner

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        def one_at_a_time(port: IListeningPort) -> IListeningPort:
            accept_some = port.doRead  # type: ignore[attr-defined]

            def accept_one() -> object:
                port.numberAccepts = 1  # type: ignore[attr-defined]
                return accept_some()

            port.doRead = accept_one  # type: ignore[attr-defined]
            return port

        return self.inner.listen(protocolFactory).addCallback(one_at_a_time)


#: The listen backlog of a TCP listener whose description names none. Twisted's default
#: (50) lets a burst of connections that never speak fill the kernel's accept queue, so
#: that everybody else's connects wait for SYN retries (1 s, 3 s, 7 s, ...) while the guard
#: has not yet seen them; the kernel caps it at ``net.core.somaxconn``.
LISTEN_BACKLOG = 1024


def with_backlog(description: str) -> str:
    """``description`` with ``backlog=LISTEN_BACKLOG`` added if it is a ``tcp:``/``tcp6:``
    listener that names no backlog of its own."""
    return with_tcp_option(description, "backlog", LISTEN_BACKLOG)


def with_tcp_option(description: str, name: str, value: int) -> str:
    """``description`` with ``name=value`` added if it is a ``tcp:``/``tcp6:`` endpoint that
    names no ``name`` of its own."""
    kind = description.split(":", 1)[0].strip().lower()
    if kind not in ("tcp", "tcp6") or re.search(rf"(^|:){name}=", description):
        return description
    return f"{description}:{name}={value}"


def tls_client_endpoint(
    reactor: Any, description: str, options: IOpenSSLClientConnectionCreator
) -> IStreamClientEndpoint:
    """A TLS client endpoint over the plain endpoint ``description`` (``tcp:HOST:PORT``)."""
    _refuse_tls_description(description)
    return EagerTLSClientEndpoint(options, plain_client_endpoint(reactor, description))


class TLSListener(Service):
    """Listens with mutual TLS on the plain endpoint ``description`` while it runs.

    Construction only checks the description. :meth:`startService` calls ``tls_options``
    (which reads the certificate files, e.g. ``functools.partial(server_tls_options, cert,
    key, ca)``), then listens with ``factory``; an error from either propagates, so the
    service does not start (under twistd, the process stops with that error: a port already
    in use is ``CannotListenError: Couldn't listen on ...: Address already in use``).
    Stream endpoints listen at once; for one that answers later, a failure is logged as
    critical and the reactor is stopped, since a server that cannot listen is not serving.
    :attr:`port` is the listening port while running. ``guard`` (one per process, shared by
    its listeners) caps and times the connections before they have a principal, and with
    ``bound_output`` sizes their send buffers. ``ready``: whether the process can serve, for
    a ``handoff:`` listener to tell its supervisor (:mod:`kcm.handoff`).
    """

    def __init__(self, reactor: Any, description: str,
                 tls_options: Callable[[], IOpenSSLServerConnectionCreator],
                 factory: IProtocolFactory, *, name: str | None = None,
                 guard: ConnectionGuard | None = None, bound_output: bool = True,
                 ready: Callable[[], bool] | None = None) -> None:
        _refuse_tls_description(description)
        self.reactor = reactor
        self.description = description
        self.ready = ready
        self.factory = factory
        self.guard = guard
        self.bound_output = bound_output
        self.name = name  # type: ignore[assignment]
        self._tls_options = tls_options
        self._listening: Deferred[None] | None = None
        self._starting = False
        self._start_error: Failure | None = None
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        if self.guard is not None:
            self.guard.check_descriptors()
        endpoint = tls_server_endpoint(self.reactor, self.description, self._tls_options(),
                                       self.guard, bound_output=self.bound_output,
                                       ready=self.ready)
        self._starting, self._start_error = True, None
        try:
            self._listening = endpoint.listen(self.factory)
            self._listening.addCallbacks(self._listened, self._listen_failed)
        finally:
            self._starting = False
        if self._start_error is not None:
            error, self._start_error = self._start_error, None
            error.raiseException()
        super().startService()

    def _listened(self, port: IListeningPort) -> None:
        self._listening = None
        self.port = port
        if not self._starting and not self.running:  # stopped while it was waiting
            self.port = None
            port.stopListening()

    def _listen_failed(self, failure: Failure) -> None:
        self._listening = None
        if self._starting:  # raised by startService
            self._start_error = failure
        elif not failure.check(CancelledError):
            log.failure("{name} cannot listen on {description}; stopping", failure,
                        name=self.name or "a listener", description=self.description)
            self.reactor.callWhenRunning(self.reactor.stop)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._listening is not None:
            self._listening.cancel()
            self._listening = None
        port, self.port = self.port, None
        if port is None:
            return maybeDeferred(lambda: None)
        return maybeDeferred(port.stopListening)


@implementer(IStreamClientEndpoint)
class TLSClientEndpoint:
    """:func:`tls_client_endpoint` of ``description``, assembled before its files are read.

    :meth:`load` builds the TLS options with ``tls_options`` (e.g. ``functools.partial(
    client_tls_options, cert, key, ca, hostname)``); the service that owns the endpoint calls
    it when it starts, so a missing or wrong file fails that start. Connecting before then
    fails.
    """

    def __init__(self, reactor: Any, description: str,
                 tls_options: Callable[[], IOpenSSLClientConnectionCreator]) -> None:
        _refuse_tls_description(description)
        self.reactor = reactor
        self.description = description
        self._tls_options = tls_options
        self._endpoint: IStreamClientEndpoint | None = None

    def load(self) -> None:
        """Read the certificate files and build the TLS options now."""
        self._endpoint = tls_client_endpoint(self.reactor, self.description,
                                             self._tls_options())

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        """Connect through TLS; fails if :meth:`load` has not run."""
        if self._endpoint is None:
            return fail(RuntimeError(f"the TLS options for {self.description} are not loaded"))
        return self._endpoint.connect(protocolFactory)
