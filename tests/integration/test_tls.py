"""Mutual TLS on a real loopback listener: who gets in, who does not, and as whom.

The server is :func:`kcm.tls.server_tls_options` behind :func:`kcm.tls.tls_server_endpoint`;
its protocol answers every completed handshake with the peer's principal id and a newline,
then closes. Clients are Twisted (:func:`kcm.tls.client_tls_options`, the gateway's way),
Python's ``ssl`` module in a thread (to pin protocol versions and ciphers), and PyKMIP's own
``KMIPProxy``, which KCM must serve.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, threads
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.python.failure import Failure
from zope.interface import implementer

from kcm.identity import Principal, Role, SubjectMap
from kcm.pki import (
    CertKeyPaths,
    PkiPaths,
    init_pki,
    issue_certificate,
    load_ca,
    new_ca,
    write_certificate,
)
from kcm.tls import (
    LISTEN_BACKLOG,
    TLSListener,
    client_tls_options,
    listener_tls_options,
    peer_principal,
    read_tls_material,
    server_tls_options,
    tls_client_endpoint,
    tls_server_endpoint,
    with_backlog,
)
from kcm.tls_policy import TlsPolicy

TD = "kcm.test"
TIMEOUT = 10


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(tmp_path_factory.mktemp("pki"))


# --- the server -------------------------------------------------------------------------------


@dataclass
class ServerLog:
    """What the server saw: principals of completed handshakes, and every lost connection."""

    principals: list[Principal | None] = field(default_factory=list)
    lost: list[Failure] = field(default_factory=list)
    all_lost: defer.Deferred[None] | None = None
    connections: int = 0


@implementer(IHandshakeListener)
class WhoAmI(protocol.Protocol):
    def __init__(self, log: ServerLog, subject_map: SubjectMap | None) -> None:
        self.log = log
        self.subject_map = subject_map

    def connectionMade(self) -> None:
        self.log.connections += 1

    def handshakeCompleted(self) -> None:
        principal = peer_principal(self.transport, TD, self.subject_map)
        self.log.principals.append(principal)
        self.transport.write(f"{principal.id if principal else 'nobody'}\n".encode())
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.log.lost.append(reason)


@pytest.fixture
def server(pki: PkiPaths):
    """Start a listener on 127.0.0.1, port 0; yields ``(port_number, log)``."""
    log = ServerLog()
    subject_map = SubjectMap.from_mapping(
        {"CN=legacy-client,O=KCM Dev": "tenant/demo/service/legacy"}
    )
    factory = protocol.Factory.forProtocol(lambda: WhoAmI(log, subject_map))
    endpoint = tls_server_endpoint(
        reactor, "tcp:0:interface=127.0.0.1",
        server_tls_options(pki.core.cert, pki.core.key, pki.ca.cert),
    )
    port = pytest_twisted.blockon(endpoint.listen(factory))
    yield port.getHost().port, log
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


# --- Twisted clients --------------------------------------------------------------------------


class LineClient(protocol.Protocol):
    """Collects what the server sends until the connection closes."""

    def __init__(self) -> None:
        self.data = b""
        self.done: defer.Deferred[tuple[bytes, Failure]] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.done.callback((self.data, reason))


def _twisted_connect(port: int, options: Any) -> defer.Deferred[tuple[bytes, Failure]]:
    endpoint = tls_client_endpoint(reactor, f"tcp:127.0.0.1:{port}", options)
    client = LineClient()
    d = endpoint.connect(protocol.Factory.forProtocol(lambda: client))
    d.addCallback(lambda _: client.done)
    return d.addTimeout(TIMEOUT, reactor)


def _write_stranger(tmp_path: Path, pki: PkiPaths, *, same_ca: bool, **kwargs: Any
                    ) -> CertKeyPaths:
    now = dt.datetime.now(dt.UTC)
    ca = load_ca(pki.ca) if same_ca else new_ca("Stranger CA", now=now)
    issued = issue_certificate(ca, "stranger", now=now, **kwargs)
    paths = CertKeyPaths(tmp_path / "stranger.pem", tmp_path / "stranger.key")
    write_certificate(paths, issued.cert, issued.key)
    return paths


@pytest_twisted.inlineCallbacks
def test_app_certificate_is_seen_as_its_principal(pki: PkiPaths, server) -> None:
    port, log = server
    options = client_tls_options(pki.app.cert, pki.app.key, pki.ca.cert, "localhost")
    data, _ = yield _twisted_connect(port, options)
    assert data == b"spiffe://kcm.test/tenant/demo/service/app\n"
    [principal] = log.principals
    assert principal is not None
    assert (principal.role, principal.tenant, principal.service) == (Role.SERVICE, "demo", "app")


@pytest_twisted.inlineCallbacks
def test_gateway_link_by_ip_address(pki: PkiPaths, server) -> None:
    port, log = server
    options = client_tls_options(pki.gateway.cert, pki.gateway.key, pki.ca.cert, "127.0.0.1")
    data, _ = yield _twisted_connect(port, options)
    assert data == b"spiffe://kcm.test/gateway/gw1\n"
    assert log.principals[0] is not None and log.principals[0].role is Role.GATEWAY


@pytest_twisted.inlineCallbacks
def test_subject_only_certificate_goes_through_the_subject_map(pki: PkiPaths, server) -> None:
    port, log = server
    options = client_tls_options(pki.legacy.cert, pki.legacy.key, pki.ca.cert, "localhost")
    data, _ = yield _twisted_connect(port, options)
    assert data == b"subject:CN=legacy-client,O=KCM Dev\n"
    assert log.principals[0] is not None and log.principals[0].service == "legacy"


@pytest_twisted.inlineCallbacks
def test_client_refuses_a_server_with_the_wrong_name(pki: PkiPaths, server) -> None:
    port, log = server
    options = client_tls_options(pki.app.cert, pki.app.key, pki.ca.cert, "core.example.org")
    data, reason = yield _twisted_connect(port, options)
    assert data == b""
    assert "core.example.org" in str(reason.value) or "certificate" in str(reason.value).lower()
    assert log.principals == []


@pytest_twisted.inlineCallbacks
def test_no_client_certificate_is_refused(pki: PkiPaths, server) -> None:
    port, log = server
    ca = Certificate.loadPEM(pki.ca.cert.read_bytes())
    options = optionsForClientTLS("localhost", trustRoot=ca)
    data, reason = yield _twisted_connect(port, options)
    assert data == b""
    assert not reason.check(protocol.connectionDone.type)
    yield _server_saw_refusal(log, "peer did not return a certificate")


@pytest_twisted.inlineCallbacks
def test_certificate_from_another_ca_is_refused(pki: PkiPaths, server, tmp_path: Path) -> None:
    port, log = server
    stranger = _write_stranger(tmp_path, pki, same_ca=False,
                               uris=["spiffe://kcm.test/tenant/demo/service/app"])
    options = client_tls_options(stranger.cert, stranger.key, pki.ca.cert, "localhost")
    data, _ = yield _twisted_connect(port, options)
    assert data == b""
    yield _server_saw_refusal(log, "certificate verify failed")


@pytest_twisted.inlineCallbacks
def test_expired_certificate_is_refused(pki: PkiPaths, server, tmp_path: Path) -> None:
    port, log = server
    now = dt.datetime.now(dt.UTC)
    stranger = _write_stranger(tmp_path, pki, same_ca=True,
                               uris=["spiffe://kcm.test/tenant/demo/service/app"],
                               not_before=now - dt.timedelta(days=10),
                               not_after=now - dt.timedelta(days=1))
    options = client_tls_options(stranger.cert, stranger.key, pki.ca.cert, "localhost")
    data, _ = yield _twisted_connect(port, options)
    assert data == b""
    yield _server_saw_refusal(log, "certificate verify failed")


@pytest_twisted.inlineCallbacks
def test_server_only_certificate_is_refused_as_a_client(pki: PkiPaths, server) -> None:
    port, log = server
    # core.pem has extendedKeyUsage serverAuth only.
    options = client_tls_options(pki.core.cert, pki.core.key, pki.ca.cert, "localhost")
    data, _ = yield _twisted_connect(port, options)
    assert data == b""
    yield _server_saw_refusal(log, "certificate verify failed")


@pytest_twisted.inlineCallbacks
def test_valid_chain_in_a_wrong_trust_domain_names_nobody(pki: PkiPaths, server,
                                                          tmp_path: Path) -> None:
    port, log = server
    stranger = _write_stranger(tmp_path, pki, same_ca=True,
                               uris=["spiffe://evil.test/tenant/demo/service/app"])
    options = client_tls_options(stranger.cert, stranger.key, pki.ca.cert, "localhost")
    data, _ = yield _twisted_connect(port, options)
    assert data == b"nobody\n"
    assert log.principals == [None]


def _server_saw_refusal(log: ServerLog, needle: str) -> defer.Deferred[None]:
    """Wait until the server has lost the connection, and check it was over ``needle``."""

    def check() -> None:
        assert log.principals == []
        assert any(needle in str(f.value) for f in log.lost), [str(f.value) for f in log.lost]

    return _eventually(lambda: bool(log.lost), check)


def _eventually(ready: Callable[[], bool], then: Callable[[], None]) -> defer.Deferred[None]:
    # The client may see the alert before the server's connectionLost has run.
    async def poll() -> None:
        from twisted.internet.task import deferLater

        for _ in range(TIMEOUT * 100):
            if ready():
                break
            await deferLater(reactor, 0.01, lambda: None)
        then()

    return defer.ensureDeferred(poll())


# --- Python ssl clients -----------------------------------------------------------------------


def _stdlib_exchange(port: int, context: ssl.SSLContext) -> tuple[bytes, str | None, Any]:
    """Connect, read to EOF; return (data, negotiated version, cipher). Raises ssl errors."""
    hostname = "localhost" if context.check_hostname else None
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        version, cipher = tls.version(), tls.cipher()
        data = b""
        while chunk := tls.recv(4096):
            data += chunk
        return data, version, cipher


def _stdlib_context(pki: PkiPaths, *, cert: CertKeyPaths | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki.ca.cert)
    cert = cert or pki.app
    context.load_cert_chain(cert.cert, cert.key)
    return context


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize(
    ("version", "expected"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
    ids=["tls1.2", "tls1.3"],
)
def test_tls12_and_tls13_accepted(pki: PkiPaths, server, version: ssl.TLSVersion,
                                  expected: str) -> None:
    port, log = server
    context = _stdlib_context(pki)
    context.minimum_version = context.maximum_version = version
    data, negotiated, cipher = yield threads.deferToThread(_stdlib_exchange, port, context)
    assert negotiated == expected
    assert data == b"spiffe://kcm.test/tenant/demo/service/app\n"
    name = cipher[0]
    assert "GCM" in name or "CHACHA20" in name
    if expected == "TLSv1.2":
        assert name.startswith("ECDHE-")


@pytest_twisted.inlineCallbacks
def test_tls11_refused(pki: PkiPaths, server) -> None:
    port, log = server
    context = _stdlib_context(pki)
    # Security level 0 lets this OpenSSL offer TLS 1.1 at all, so the refusal comes from the
    # server (a protocol_version alert), not from the client declining to try.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError) as raised:
        yield threads.deferToThread(_stdlib_exchange, port, context)
    assert "PROTOCOL_VERSION" in str(raised.value).upper()
    yield _server_saw_refusal(log, "unsupported protocol")


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize(
    "ciphers",
    ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA", "AES256-GCM-SHA384"],
)
def test_tls12_without_forward_secret_aead_refused(pki: PkiPaths, server,
                                                   ciphers: str) -> None:
    port, log = server
    context = _stdlib_context(pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    with pytest.raises(ssl.SSLError):
        yield threads.deferToThread(_stdlib_exchange, port, context)
    yield _server_saw_refusal(log, "no shared cipher")


# --- PyKMIP -----------------------------------------------------------------------------------


def _pykmip_exchange(port: int, pki: PkiPaths) -> bytes:
    from kmip.services.kmip_client import KMIPProxy

    # Exactly as PyKMIP's clients are configured for KCM: certfile/keyfile/ca_certs and
    # otherwise its defaults (ssl_version PROTOCOL_SSLv23, cert_reqs CERT_REQUIRED, no SNI,
    # no host name check, Python's default cipher list).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        proxy = KMIPProxy(
            host="127.0.0.1", port=port, certfile=str(pki.app.cert), keyfile=str(pki.app.key),
            ca_certs=str(pki.ca.cert), config_file=None,
        )
        proxy.open()
    try:
        data = b""
        while chunk := proxy.socket.recv(4096):
            data += chunk
        return data
    finally:
        proxy.close()


@pytest_twisted.inlineCallbacks
def test_pykmip_client_connects(pki: PkiPaths, server) -> None:
    port, log = server
    data = yield threads.deferToThread(_pykmip_exchange, port, pki)
    assert data == b"spiffe://kcm.test/tenant/demo/service/app\n"
    assert log.principals[0] is not None and log.principals[0].service == "app"


@pytest_twisted.inlineCallbacks
def test_pykmip_style_stdlib_client_over_tls12(pki: PkiPaths, server) -> None:
    # PyKMIP's KMIPProxy._create_socket, with the version pinned to 1.2 as an older
    # OpenSSL without TLS 1.3 would negotiate.
    port, log = server
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ssl.SSLContext(ssl.PROTOCOL_SSLv23)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(str(pki.ca.cert))
    context.load_cert_chain(str(pki.app.cert), str(pki.app.key))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    data, negotiated, _ = yield threads.deferToThread(_stdlib_exchange, port, context)
    assert (data, negotiated) == (b"spiffe://kcm.test/tenant/demo/service/app\n", "TLSv1.2")


# --- endpoints and options --------------------------------------------------------------------


@pytest.mark.parametrize("description", ["ssl:5696", "tls:localhost:5696", "TLS:x:1"])
def test_tls_descriptions_are_refused(pki: PkiPaths, description: str) -> None:
    options = server_tls_options(pki.core.cert, pki.core.key, pki.ca.cert)
    with pytest.raises(ValueError):
        tls_server_endpoint(reactor, description, options)
    with pytest.raises(ValueError):
        tls_client_endpoint(reactor, description, optionsForClientTLS(
            "localhost", trustRoot=trustRootFromCertificates([])))


def test_versions_outside_12_13_are_refused(pki: PkiPaths) -> None:
    from twisted.internet.ssl import TLSVersion

    with pytest.raises(ValueError):
        server_tls_options(pki.core.cert, pki.core.key, pki.ca.cert,
                           min_version=TLSVersion.TLSv1_1)
    with pytest.raises(ValueError):
        server_tls_options(pki.core.cert, pki.core.key, pki.ca.cert,
                           min_version=TLSVersion.TLSv1_3, max_version=TLSVersion.TLSv1_2)


def test_mismatched_key_fails_at_construction(pki: PkiPaths) -> None:
    with pytest.raises(Exception, match="mismatch"):
        server_tls_options(pki.core.cert, pki.app.key, pki.ca.cert)


def test_context_refuses_renegotiation_compression_and_tickets(pki: PkiPaths) -> None:
    from OpenSSL import SSL

    options = server_tls_options(pki.core.cert, pki.core.key, pki.ca.cert)
    context = options.getContext()
    wanted = SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET
    assert context.set_options(0) & wanted == wanted  # set_options returns the options
    required = SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    assert context.get_verify_mode() & required == required


# --- TLSListener: the one way a KCM process listens ----------------------------------------------


def _listener(pki: PkiPaths, description: str, log: ServerLog | None = None) -> TLSListener:
    factory = protocol.Factory.forProtocol(lambda: WhoAmI(log or ServerLog(), None))
    return TLSListener(reactor, description,
                       partial(server_tls_options, pki.core.cert, pki.core.key, pki.ca.cert),
                       factory, name="kcm-kmip-listener")


@pytest_twisted.inlineCallbacks
def test_a_listener_serves_mutual_tls_while_it_runs(pki: PkiPaths) -> None:
    log = ServerLog()
    listener = _listener(pki, "tcp:0:interface=127.0.0.1", log)
    assert listener.port is None  # assembled: nothing bound, nothing read
    listener.startService()
    assert listener.running
    options = client_tls_options(pki.app.cert, pki.app.key, pki.ca.cert, "localhost")
    data, _ = yield _twisted_connect(listener.port.getHost().port, options)
    assert data == b"spiffe://kcm.test/tenant/demo/service/app\n"
    yield listener.stopService()
    assert listener.port is None and not listener.running


def test_a_listener_on_a_port_in_use_fails_its_start(pki: PkiPaths) -> None:
    from twisted.internet.error import CannotListenError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listener = _listener(pki, f"tcp:{port}:interface=127.0.0.1")
        with pytest.raises(CannotListenError,
                           match=f"127.0.0.1:{port}: .*Address already in use"):
            listener.startService()
    assert not listener.running and listener.port is None


def test_a_listener_reads_its_certificate_when_it_starts(tmp_path: Path) -> None:
    missing = tmp_path / "absent.pem"
    listener = TLSListener(reactor, "tcp:0:interface=127.0.0.1",
                           partial(server_tls_options, missing, missing, missing),
                           protocol.Factory.forProtocol(protocol.Protocol))
    with pytest.raises(FileNotFoundError, match="absent.pem"):
        listener.startService()
    assert not listener.running and listener.port is None


def test_a_listener_refuses_a_tls_description_when_assembled(pki: PkiPaths) -> None:
    with pytest.raises(ValueError, match="KCM adds the TLS itself"):
        _listener(pki, "ssl:5696")


class _LaterEndpoint:
    """An endpoint that listens asynchronously (as e.g. an onion service does)."""

    def __init__(self) -> None:
        self.listening: defer.Deferred = defer.Deferred()

    def listen(self, factory: Any) -> defer.Deferred:
        return self.listening


class _FakeReactor:
    def __init__(self) -> None:
        self.when_running: list = []

    def callWhenRunning(self, fn: Callable[[], Any]) -> None:
        self.when_running.append(fn)

    def stop(self) -> None:  # pragma: no cover - only its identity is checked
        pass


def test_a_listener_whose_endpoint_fails_later_stops_the_reactor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from twisted.internet.error import CannotListenError

    endpoint = _LaterEndpoint()
    monkeypatch.setattr("kcm.tls.tls_server_endpoint", lambda *args, **kwargs: endpoint)
    fake = _FakeReactor()
    listener = TLSListener(fake, "tcp:0", lambda: None, protocol.Factory())  # type: ignore[arg-type]
    listener.startService()
    assert listener.running and listener.port is None
    endpoint.listening.errback(CannotListenError("127.0.0.1", 1, OSError("in use")))
    assert fake.when_running == [fake.stop]


def test_a_listener_stopped_before_its_endpoint_answers_cancels_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = _LaterEndpoint()
    monkeypatch.setattr("kcm.tls.tls_server_endpoint", lambda *args, **kwargs: endpoint)
    fake = _FakeReactor()
    listener = TLSListener(fake, "tcp:0", lambda: None, protocol.Factory())  # type: ignore[arg-type]
    listener.startService()
    listener.stopService()
    assert endpoint.listening.called and fake.when_running == []  # cancelled, not a failure


@pytest.mark.parametrize(("description", "expected"), [
    ("tcp:5696", "tcp:5696:backlog=1024"),
    ("tcp:5696:interface=127.0.0.1", "tcp:5696:interface=127.0.0.1:backlog=1024"),
    ("tcp6:5696:interface=\\:\\:1", "tcp6:5696:interface=\\:\\:1:backlog=1024"),
    ("tcp:5696:backlog=64:interface=127.0.0.1", "tcp:5696:backlog=64:interface=127.0.0.1"),
    ("unix:/run/kcm.sock", "unix:/run/kcm.sock"),
])
def test_tcp_listeners_get_a_backlog_that_survives_a_connect_burst(
        description: str, expected: str) -> None:
    assert LISTEN_BACKLOG == 1024
    assert with_backlog(description) == expected


# --- the TLS policy: minimum version and TLS 1.2 suites (kcm.tls_policy) --------------------


def _listen_with(pki: PkiPaths, policy: TlsPolicy, cert: CertKeyPaths | None = None):
    """A listener with ``policy``: a Deferred firing with (port, log)."""
    log = ServerLog()
    factory = protocol.Factory.forProtocol(lambda: WhoAmI(log, None))
    cert = cert or pki.core
    options = listener_tls_options(read_tls_material(cert.cert, cert.key, pki.ca.cert), policy)
    endpoint = tls_server_endpoint(reactor, "tcp:0:interface=127.0.0.1", options)
    return endpoint.listen(factory).addCallback(lambda port: (port, log))


@pytest.fixture(scope="module")
def rsa_core(pki: PkiPaths, tmp_path_factory: pytest.TempPathFactory) -> CertKeyPaths:
    """A core certificate with an RSA key: TLS_RSA_* suites need one."""
    issued = issue_certificate(load_ca(pki.ca), "core", now=dt.datetime.now(dt.UTC),
                               dns_names=["localhost"], ip_addresses=["127.0.0.1"],
                               server=True, client=False, key_algorithm="rsa-2048")
    directory = tmp_path_factory.mktemp("rsa-core")
    paths = CertKeyPaths(directory / "core.pem", directory / "core.key")
    write_certificate(paths, issued.cert, issued.key)
    return paths


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize(("suite", "rsa"), [
    ("AES128-SHA256", True),  # TLS_RSA_WITH_AES_128_CBC_SHA256
    ("AES256-SHA256", True),  # TLS_RSA_WITH_AES_256_CBC_SHA256
    ("ECDHE-ECDSA-AES128-SHA256", False),  # TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256
    ("ECDHE-RSA-AES256-SHA384", True),  # TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384
])
def test_a_kmip_profile_suite_is_refused_by_default_and_served_with_kmip_compat(
        pki: PkiPaths, rsa_core: CertKeyPaths, suite: str, rsa: bool) -> None:
    """An old appliance offering only one of the KMIP profiles' CBC suites: the default
    listener refuses it (no shared cipher), a ``kmip-compat`` listener serves it."""
    cert = rsa_core if rsa else pki.core
    for policy, accepted in ((TlsPolicy(), False), (TlsPolicy(profile="kmip-compat"), True)):
        port, log = yield _listen_with(pki, policy, cert)
        try:
            context = _stdlib_context(pki)
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            context.set_ciphers(suite)
            if accepted:
                data, version, cipher = yield threads.deferToThread(
                    _stdlib_exchange, port.getHost().port, context)
                assert (version, cipher[0]) == ("TLSv1.2", suite)
                assert data == b"spiffe://kcm.test/tenant/demo/service/app\n"
            else:
                with pytest.raises(ssl.SSLError):
                    yield threads.deferToThread(_stdlib_exchange, port.getHost().port, context)
                yield _server_saw_refusal(log, "no shared cipher")
        finally:
            yield defer.maybeDeferred(port.stopListening)


@pytest_twisted.inlineCallbacks
def test_kmip_compat_still_prefers_forward_secret_aead(pki: PkiPaths) -> None:
    port, _ = yield _listen_with(pki, TlsPolicy(profile="kmip-compat"))
    try:
        context = _stdlib_context(pki)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("AES128-SHA256:ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256")
        _, _, cipher = yield threads.deferToThread(_stdlib_exchange, port.getHost().port,
                                                   context)
        assert cipher[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
    finally:
        yield defer.maybeDeferred(port.stopListening)


@pytest_twisted.inlineCallbacks
def test_min_version_13_refuses_tls12_and_ciphers_replace_the_list(pki: PkiPaths) -> None:
    port, log = yield _listen_with(pki, TlsPolicy(min_version="1.3"))
    try:
        context = _stdlib_context(pki)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            yield threads.deferToThread(_stdlib_exchange, port.getHost().port, context)
        yield _server_saw_refusal(log, "unsupported protocol")
        context = _stdlib_context(pki)
        _, version, _ = yield threads.deferToThread(_stdlib_exchange, port.getHost().port,
                                                    context)
        assert version == "TLSv1.3"
    finally:
        yield defer.maybeDeferred(port.stopListening)
    port, log = yield _listen_with(pki, TlsPolicy(ciphers="ECDHE-ECDSA-AES256-GCM-SHA384"))
    try:
        context = _stdlib_context(pki)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")  # in the default list, not in this
        with pytest.raises(ssl.SSLError):
            yield threads.deferToThread(_stdlib_exchange, port.getHost().port, context)
    finally:
        yield defer.maybeDeferred(port.stopListening)


def test_a_cipher_string_naming_no_suite_fails_at_construction(pki: PkiPaths) -> None:
    with pytest.raises(ValueError, match="names no suite"):
        listener_tls_options(read_tls_material(pki.core.cert, pki.core.key, pki.ca.cert),
                             TlsPolicy(ciphers="NO-SUCH-SUITE"))
