"""The certificate each of a gateway's links presents while a renewed one waits for the
core (kcm.gateway.link_certificates), and how the link client uses it: its own connections
present the one the core accepted, a renewal's link the newest, through their own
endpoints (kcm.gateway.link_client, make-before-break)."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from kcm.gateway.link_certificates import LinkCertificates
from kcm.gateway.link_client import LinkClient, LinkClientProtocol
from kcm.link.frames import LINK_VERSION
from kcm.tls import RenewableClientTLS
from tests.gateway_support import core_welcome


class _Options:
    """Client TLS options standing for those built with ``certificate``."""

    def __init__(self, certificate: str) -> None:
        self.certificate = certificate

    def clientConnectionForTLS(self, tls_protocol: object) -> str:  # noqa: N802 - Twisted's
        return self.certificate


class _Files:
    """The refresher's side: the newest options and their certificate."""

    def __init__(self) -> None:
        self.certificate = "old"
        self.newest = RenewableClientTLS(_Options("old"))

    def renew(self, certificate: str) -> None:
        self.certificate = certificate
        self.newest.use(_Options(certificate))


def test_the_link_presents_the_accepted_certificate_until_a_core_takes_the_newest() -> None:
    files = _Files()
    certificates = LinkCertificates(lambda: files.newest, lambda: files.certificate)
    assert not certificates.pending
    accepted = certificates.accepted()
    assert accepted.clientConnectionForTLS(None) == "old"
    files.newest.use(_Options("old"))  # rebuilt, same certificate (a new tls.ca): taken
    rebuilt = files.newest.current
    assert not certificates.pending and certificates._options() is rebuilt
    files.renew("new")
    assert certificates.pending
    assert accepted.clientConnectionForTLS(None) == "old"  # the link's own connections
    assert certificates.newest().clientConnectionForTLS(None) == "new"  # a renewal's
    certificates.accept()
    assert not certificates.pending and accepted.clientConnectionForTLS(None) == "new"


class _Endpoint:
    """A client endpoint that records its connection attempts and never connects."""

    def __init__(self) -> None:
        self.attempts = 0

    def connect(self, factory: object) -> Deferred:
        self.attempts += 1
        return Deferred()


def _link(clock: Clock) -> tuple[LinkClient, _Files, _Endpoint, _Endpoint]:
    files = _Files()
    certificates = LinkCertificates(lambda: files.newest, lambda: files.certificate)
    certificates.accepted()  # (the link's endpoints load it as the gateway starts)
    main, renewal = _Endpoint(), _Endpoint()
    client = LinkClient(main, clock=clock, max_in_flight=4, first_link_wait=0.0,
                        renewal_endpoint=renewal, certificates=certificates)
    client.startService()
    return client, files, main, renewal


def _welcomed(client: LinkClient, connector: object) -> LinkClientProtocol:
    protocol = LinkClientProtocol(client, connector)  # type: ignore[arg-type]
    protocol.makeConnection(StringTransport())
    protocol.dataReceived(core_welcome(LINK_VERSION))
    return protocol


def test_a_renewal_s_link_goes_through_its_own_endpoint_and_is_kept_across_a_loss() -> None:
    """The renewal's link connects through the renewal endpoint (the newest certificate),
    the link's through its own (the accepted one). The link lost while the core refuses
    the newest: it is made again with the accepted certificate, and the renewal's link
    tried again at once beside it; a core that then takes the newest makes it the
    accepted one."""
    clock = Clock()
    client, files, main, renewal = _link(clock)
    assert main.attempts == 1 and renewal.attempts == 0
    old = _welcomed(client, client._connector)
    assert client.relink("renewed") and client._candidate is None  # nothing to present
    files.renew("new")
    assert client.relink("renewed")
    assert renewal.attempts == 1 and main.attempts == 1
    refused = LinkClientProtocol(client, client._candidate)
    refused.makeConnection(StringTransport())
    refused.connectionLost(Failure(ConnectionDone("certificate revoked")))
    assert client.links_renew_refused == 1 and client._protocol is old
    # The link lost (a core restarted): made again with the accepted certificate, and the
    # renewal's link tried again at once.
    first = client._candidate
    old.connectionLost(Failure(ConnectionDone()))
    assert client._candidate is not None and client._candidate is not first
    assert renewal.attempts == 2
    again = _welcomed(client, client._connector)  # (the link's own endpoint)
    assert client._protocol is again and client.certificates.pending
    new = _welcomed(client, client._candidate)
    assert client._protocol is new and not client.certificates.pending
    assert again.draining
    client.stopService()


def test_a_link_made_with_the_accepted_certificate_tries_the_newest_beside_it() -> None:
    """No renewal's link pending (given up at a DRAIN) while the newest certificate is not
    the accepted one: the next link made starts one."""
    clock = Clock()
    client, files, _, renewal = _link(clock)
    old = _welcomed(client, client._connector)
    files.renew("new")
    client.relink("renewed")
    old.connectionLost(Failure(ConnectionDone()))  # (dropped and started again)
    client._drop_candidate()  # as a DRAIN does
    attempts = renewal.attempts
    clock.advance(2)
    _welcomed(client, client._connector)
    assert client._candidate is not None and renewal.attempts == attempts + 1
    client.stopService()
