"""The connection guard every KCM listener has (issue 11, defect 3): caps on connections in
total and per address, the handshake deadline, the send-buffer size, and a log that a flood
does not flood — over StringTransport and a Clock, with real TLS options."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from kcm.connection_guard import LOG_INTERVAL, ConnectionGuard
from kcm.kmip_protocol import ConnectionLimits
from kcm.pki import init_pki
from kcm.tls import server_tls_options


class App(Protocol):
    identified = False


@pytest.fixture(scope="module")
def pki_paths(tmp_path_factory: pytest.TempPathFactory):
    return init_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_options(pki_paths):
    return server_tls_options(pki_paths.core.cert, pki_paths.core.key, pki_paths.ca.cert)


def guarded(tls_options, **limits):
    clock = Clock()
    guard = ConnectionGuard(ConnectionLimits(**limits), clock)
    factory = guard.tls_factory(tls_options, Factory.forProtocol(App))
    return guard, factory, clock


def accept(factory, host="10.0.0.1", port=40000):
    """What a listening port does: build, then connect (None: the socket is closed)."""
    address = (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)
    protocol = factory.buildProtocol(address)
    if protocol is None:
        return None, None
    transport = StringTransport(peerAddress=address)
    transport.bufferSize = 65536
    protocol.makeConnection(transport)
    return protocol, transport


@pytest.fixture
def warnings():
    seen: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "kcm.connection_guard":
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def test_connections_over_the_total_cap_are_closed_before_tls(tls_options) -> None:
    guard, factory, _ = guarded(tls_options, max_connections=3)
    opened = [accept(factory, host=f"10.0.0.{i}") for i in range(5)]
    assert [p is not None for p, _ in opened] == [True, True, True, False, False]
    assert guard.connections == 3
    opened[0][0].connectionLost(None)  # one leaves: one more may come
    assert guard.connections == 2
    assert accept(factory, host="10.0.0.9")[0] is not None
    assert accept(factory, host="10.0.0.10")[0] is None


def test_connections_over_the_per_address_cap_are_closed(tls_options) -> None:
    guard, factory, _ = guarded(tls_options, max_connections_per_address=2)
    assert [accept(factory, port=40000 + i)[0] is not None for i in range(4)] == [
        True, True, False, False]
    assert accept(factory, host="10.0.0.2")[0] is not None  # another client is not held up
    assert dict(guard.by_address) == {"10.0.0.1": 2, "10.0.0.2": 1}


def test_an_ipv4_client_of_a_dual_stack_listener_is_capped_by_its_ipv4_address(
        tls_options) -> None:
    """A tcp6 listener that takes IPv4 too sees ::ffff:10.0.0.1: counted and capped as
    10.0.0.1, as on an IPv4 listener (the cap was checked under the mapped name and the
    count kept under the IPv4 one, so it never refused)."""
    guard, factory, _ = guarded(tls_options, max_connections_per_address=2)
    assert [accept(factory, host="::ffff:10.0.0.1", port=40000 + i)[0] is not None
            for i in range(3)] == [True, True, False]
    assert accept(factory, host="10.0.0.1")[0] is None  # the same client, one cap
    assert dict(guard.by_address) == {"10.0.0.1": 2}
    assert accept(factory, host="::1")[0] is not None
    assert dict(guard.by_address) == {"10.0.0.1": 2, "::1": 1}


def test_ipv6_clients_are_capped_by_their_address_by_default(tls_options) -> None:
    """limits.ipv6_address_prefix 128 (the default): each IPv6 address is a client of its
    own, so one host with a /64 is not held by the per-address cap."""
    guard, factory, _ = guarded(tls_options, max_connections_per_address=2)
    assert all(accept(factory, host=f"2001:db8:1:2::{i:x}")[0] is not None
               for i in range(1, 7))
    assert len(guard.by_address) == 6


def test_ipv6_clients_are_capped_by_their_network_with_a_prefix(tls_options,
                                                                warnings) -> None:
    """limits.ipv6_address_prefix 64: every address of one /64 counts towards one cap (and is
    refused before any TLS work), another /64 and IPv4 clients (of a dual-stack listener
    too) are counted apart; a connection that closes frees its network's slot; the refusal
    line names the network."""
    guard, factory, _ = guarded(tls_options, max_connections_per_address=2,
                                ipv6_address_prefix=64)
    first, _ = accept(factory, host="2001:db8:1:2::1")
    assert first is not None
    assert accept(factory, host="2001:db8:1:2:ffff:ffff:ffff:ffff")[0] is not None
    assert accept(factory, host="2001:db8:1:2::3")[0] is None  # the same /64: over the cap
    assert accept(factory, host="2001:db8:1:3::1")[0] is not None  # the next /64
    assert [accept(factory, host="::ffff:10.0.0.1", port=40000 + i)[0] is not None
            for i in range(3)] == [True, True, False]  # IPv4: by its address, as before
    assert accept(factory, host="10.0.0.2")[0] is not None
    assert dict(guard.by_address) == {"2001:db8:1:2::/64": 2, "2001:db8:1:3::/64": 1,
                                      "10.0.0.1": 2, "10.0.0.2": 1}
    refusals = [event for event in warnings if "refused" in event["log_format"]]
    assert refusals[0]["host"] == "2001:db8:1:2::/64"
    first.connectionLost(None)
    assert guard.by_address["2001:db8:1:2::/64"] == 1
    assert accept(factory, host="2001:db8:1:2::4")[0] is not None


def test_link_local_clients_are_capped_by_their_link_with_a_prefix(tls_options) -> None:
    """limits.ipv6_address_prefix 64: a host on the server's link can take any number of
    link-local addresses (fe80::/64 is the whole link, as its global /64 is under SLAAC),
    so they count towards one cap per link (zone): counted by address, one neighbour took
    every slot of max_connections from fe80::1, fe80::2... while the prefix was set to stop
    just that. Another interface is another link, counted apart."""
    guard, factory, _ = guarded(tls_options, max_connections_per_address=2,
                                ipv6_address_prefix=64)
    assert [accept(factory, host=f"fe80::{i:x}%eth0", port=40000 + i)[0] is not None
            for i in range(1, 6)] == [True, True, False, False, False]
    assert accept(factory, host="fe80::1%eth1")[0] is not None  # another link
    assert dict(guard.by_address) == {"fe80::/64%eth0": 2, "fe80::/64%eth1": 1}


def test_a_link_guard_groups_ipv6_clients_by_the_same_prefix(tls_options) -> None:
    guard, _, _ = guarded(tls_options, max_connections_per_address=1,
                          ipv6_address_prefix=48)
    link = guard.reserve("max_link_connections", 8)
    assert link.group("2001:db8:1:2::1") == "2001:db8:1::/48"
    assert link.group("10.0.0.1") == "10.0.0.1"


def test_a_connection_without_a_handshake_is_aborted_at_the_deadline(tls_options) -> None:
    guard, factory, clock = guarded(tls_options, handshake_timeout=10)
    protocol, transport = accept(factory)
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnected  # aborted, not a polite close that could wait
    protocol.connectionLost(None)
    assert guard.connections == 0 and not guard.by_address and not clock.getDelayedCalls()


def test_an_identified_connection_outlives_the_deadline(tls_options) -> None:
    guard, factory, clock = guarded(tls_options, handshake_timeout=10)
    protocol, transport = accept(factory)
    protocol.wrappedProtocol.identified = True  # TLS named the client
    clock.advance(60)
    assert not transport.disconnecting and guard.connections == 1


def test_a_connection_that_left_leaves_no_timer(tls_options) -> None:
    guard, factory, clock = guarded(tls_options)
    protocol, _ = accept(factory)
    protocol.connectionLost(None)
    assert not clock.getDelayedCalls() and guard.connections == 0


def test_the_send_buffer_is_max_unsent_output(tls_options) -> None:
    _, factory, _ = guarded(tls_options, max_unsent_output=12345)
    _, transport = accept(factory)
    assert transport.bufferSize == 12345


def test_the_link_listener_keeps_twisteds_send_buffer(tls_options) -> None:
    guard = ConnectionGuard(ConnectionLimits(max_unsent_output=12345), Clock())
    factory = guard.tls_factory(tls_options, Factory.forProtocol(App), bound_output=False)
    _, transport = accept(factory)
    assert transport.bufferSize == 65536 and guard.connections == 1


def test_a_cap_above_the_descriptor_limit_is_warned_about_once(monkeypatch, warnings) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda kind: (1024, 4096))
    ConnectionGuard(ConnectionLimits(max_connections=924), Clock()).check_descriptors()
    assert warnings == []
    guard = ConnectionGuard(ConnectionLimits(max_connections=1000), Clock())
    guard.check_descriptors()
    guard.check_descriptors()  # the core's second listener
    assert [event["soft"] for event in warnings] == [1024]


def test_a_flood_of_refusals_is_logged_once_per_interval(tls_options, warnings) -> None:
    _, factory, clock = guarded(tls_options, max_connections_per_address=1)
    accept(factory)
    for i in range(1000):
        accept(factory, port=41000 + i)
        clock.advance(0.001)
    # One line at the first refusal, one at the end of its interval for the rest.
    clock.advance(LOG_INTERVAL)
    refusals = [event for event in warnings if "refused" in event["log_format"]]
    assert [event["count"] for event in refusals] == [1, 999]
    assert "max_connections_per_address" in refusals[0]["log_format"]
    assert refusals[1]["host"] == "10.0.0.1"


def test_expired_handshakes_are_logged_in_summary(tls_options, warnings) -> None:
    _, factory, clock = guarded(tls_options, handshake_timeout=1)
    for i in range(50):
        accept(factory, host=f"10.0.1.{i}")
    clock.advance(1)
    clock.advance(LOG_INTERVAL)
    assert [event["count"] for event in warnings] == [1, 49]


# Failed handshakes (a client certificate TLS did not verify) ---------------------------------

def _client_pair(directory, name: str, ca=None, **issue):
    """A client certificate and key in ``directory``, issued by ``ca`` (else a CA of its
    own: one the server does not trust)."""
    import datetime as dt

    from kcm.pki import CertKeyPaths, issue_certificate, new_ca, write_certificate

    now = dt.datetime.now(dt.UTC)
    ca = ca if ca is not None else new_ca("Another CA", now=now)
    issued = issue_certificate(ca, name, now=now,
                               uris=["spiffe://kcm.test/tenant/demo/service/app"], **issue)
    paths = CertKeyPaths(directory / f"{name}.pem", directory / f"{name}.key")
    write_certificate(paths, issued.cert, issued.key)
    return paths


def handshake(factory, client_options, host="10.0.2.1", port=42000):
    """A TLS handshake between a client with ``client_options`` and a connection the guarded
    ``factory`` accepted from ``host``, bytes carried by hand until neither side has more."""
    from twisted.protocols.tls import TLSMemoryBIOFactory

    server, server_transport = accept(factory, host=host, port=port)
    client = TLSMemoryBIOFactory(client_options, True, Factory.forProtocol(Protocol)) \
        .buildProtocol(None)
    client_transport = StringTransport()
    client.makeConnection(client_transport)
    for _ in range(20):
        to_server, to_client = client_transport.value(), server_transport.value()
        client_transport.clear()
        server_transport.clear()
        if not to_server and not to_client:
            break
        if to_server:
            server.dataReceived(to_server)
        if to_client:
            client.dataReceived(to_client)
    return server


def test_a_client_certificate_of_another_ca_is_logged_with_openssls_reason(
        tls_options, pki_paths, tmp_path, warnings) -> None:
    from kcm.tls import client_tls_options

    _, factory, _ = guarded(tls_options)
    stranger = _client_pair(tmp_path, "stranger")
    handshake(factory, client_tls_options(stranger.cert, stranger.key, pki_paths.ca.cert,
                                          "localhost"))
    failed = [event for event in warnings if "handshake(s) failed" in event["log_format"]]
    assert [(event["count"], event["host"]) for event in failed] == [(1, "10.0.2.1")]
    assert failed[0]["reason"] == ("certificate verify failed: unable to get local issuer "
                                   "certificate")


def test_failed_handshakes_are_logged_in_summary_under_a_flood(
        tls_options, pki_paths, tmp_path, warnings) -> None:
    """One line at the first failure, one for the rest of its interval: never one each."""
    import datetime as dt

    from kcm.pki import load_ca
    from kcm.tls import client_tls_options

    _, factory, clock = guarded(tls_options)
    ca = load_ca(pki_paths.ca)
    now = dt.datetime.now(dt.UTC)
    expired = _client_pair(tmp_path, "expired", ca, not_before=now - dt.timedelta(days=3),
                           not_after=now - dt.timedelta(days=1))
    options = client_tls_options(expired.cert, expired.key, pki_paths.ca.cert, "localhost")
    for i in range(30):
        handshake(factory, options, host=f"10.0.3.{i}")
        clock.advance(0.01)
    server_only = _client_pair(tmp_path, "server-only", ca, server=True, client=False)
    handshake(factory, client_tls_options(server_only.cert, server_only.key,
                                          pki_paths.ca.cert, "localhost"), host="10.0.4.1")
    clock.advance(LOG_INTERVAL)
    failed = [event for event in warnings if "handshake(s) failed" in event["log_format"]]
    assert [event["count"] for event in failed] == [1, 30]
    assert failed[0]["reason"] == "certificate verify failed: certificate has expired"
    assert failed[1]["host"] == "10.0.4.1"  # the last one, with its reason
    assert failed[1]["reason"].startswith("certificate verify failed: ")
    assert "certificate purpose" in failed[1]["reason"]  # (OpenSSL 3: "unsuitable ...")


def test_a_client_that_does_not_take_the_servers_certificate_is_logged(
        tls_options, tmp_path, warnings) -> None:
    from kcm.pki import init_pki as other_pki
    from kcm.tls import client_tls_options

    _, factory, _ = guarded(tls_options)
    other = other_pki(tmp_path / "other")  # its CA did not issue the server's certificate
    handshake(factory, client_tls_options(other.app.cert, other.app.key, other.ca.cert,
                                          "localhost"))
    failed = [event for event in warnings if "handshake(s) failed" in event["log_format"]]
    assert len(failed) == 1 and "unknown ca" in failed[0]["reason"], failed


def test_a_connection_closed_before_its_handshake_is_no_failed_handshake(
        tls_options, warnings) -> None:
    """A TCP health check (connect, close) or a client that gives up mid-handshake is not
    a refused certificate: nothing is logged for it."""
    _, factory, _ = guarded(tls_options)
    protocol, _ = accept(factory)
    protocol.connectionLost(None)
    protocol, _ = accept(factory, port=40001)
    protocol.dataReceived(b"\x16\x03\x01\x00\x05")  # the start of a ClientHello
    protocol.connectionLost(None)
    assert [event for event in warnings if "failed" in event["log_format"]] == []


def test_the_private_parts_the_handshake_log_reads_are_still_there() -> None:
    """kcm.connection_guard reads Twisted's and pyOpenSSL's private parts to log failed
    handshakes: an upgrade that renames one fails here, not silently in production."""
    from OpenSSL import SSL
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    from kcm import connection_guard

    assert callable(getattr(TLSMemoryBIOProtocol, "_tlsShutdownFinished", None))
    assert connection_guard._VERIFY_RESULT is not None
    context = SSL.Context(SSL.TLS_METHOD)
    connection = SSL.Connection(context, None)
    assert getattr(connection, "_ssl", None) is not None
    protocol = TLSMemoryBIOProtocol(None, None)
    assert hasattr(protocol, "_handshakeDone")


# Refusals counted by reason (the metrics' connections_refused_total) ---------------------------

def test_refusals_are_counted_by_reason_reserved_guards_included(tls_options) -> None:
    guard, factory, clock = guarded(tls_options, max_connections=2,
                                    max_connections_per_address=1, handshake_timeout=10)
    accept(factory, host="10.0.5.1")
    assert accept(factory, host="10.0.5.1", port=40001)[0] is None  # per address
    accept(factory, host="10.0.5.2")
    assert accept(factory, host="10.0.5.3")[0] is None  # in total
    link_guard = guard.reserve("max_link_connections", 0)
    link_factory = link_guard.tls_factory(tls_options, Factory.forProtocol(App))
    assert accept(link_factory, host="10.0.5.4")[0] is None
    assert link_guard.refusals is guard.refusals
    clock.advance(10.1)  # neither handshake began: both aborted
    assert dict(guard.refusals) == {"limit": 3, "timeout": 2, "handshake": 0, "revoked": 0,
                                    "identity": 0, "unreadable": 0, "too_large": 0}


def test_a_handshake_done_without_an_identity_is_no_timeout(tls_options, pki_paths) -> None:
    """Its protocol counted it (identity) when it refused the certificate."""
    from kcm.tls import client_tls_options

    guard, factory, clock = guarded(tls_options, handshake_timeout=10)
    server = handshake(factory, client_tls_options(pki_paths.app.cert, pki_paths.app.key,
                                                   pki_paths.ca.cert, "localhost"))
    assert server._handshakeDone and not server.wrappedProtocol.identified
    clock.advance(10.1)
    assert server.transport.disconnected  # aborted all the same
    assert dict(guard.refusals)["timeout"] == 0


def test_failed_handshakes_are_counted_revoked_apart(pki_paths, tmp_path) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from kcm.pki import issue_crl, load_ca
    from kcm.tls import client_tls_options
    from kcm.tls_crl import RevocationLists

    crl = tmp_path / "crl.pem"
    app = x509.load_pem_x509_certificate(pki_paths.app.cert.read_bytes())
    crl.write_bytes(issue_crl(load_ca(pki_paths.ca), [app],
                              now=dt.datetime.now(dt.UTC)).public_bytes(Encoding.PEM))
    options = server_tls_options(pki_paths.core.cert, pki_paths.core.key, pki_paths.ca.cert,
                                 crls=RevocationLists(crl, pki_paths.ca.cert))
    guard, factory, _ = guarded(options)
    handshake(factory, client_tls_options(pki_paths.app.cert, pki_paths.app.key,
                                          pki_paths.ca.cert, "localhost"))
    stranger = _client_pair(tmp_path, "stranger")
    handshake(factory, client_tls_options(stranger.cert, stranger.key, pki_paths.ca.cert,
                                          "localhost"), host="10.0.2.2")
    served = handshake(factory, client_tls_options(
        pki_paths.other_app.cert, pki_paths.other_app.key, pki_paths.ca.cert, "localhost"),
        host="10.0.2.3")
    assert served._handshakeDone
    counts = dict(guard.refusals)
    assert (counts["revoked"], counts["handshake"]) == (1, 1)
