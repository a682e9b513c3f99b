"""The core's CRLs pushed to its gateways (link version 10, the CRLS frame): the frame, the
core's end (encoded once, sent to gateways that take it), the gateway's end (checked
against its tls.ca, merged with its own tls.crl, the newest of each CA in force) and the
open connections cut (kcm.link.frames, kcm.core.link_server, kcm.gateway.link_client,
kcm.tls_crl, kcm.tls_refresh)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from kcm.link.framer import LinkFramer, OversizedFrame
from kcm.link.frames import (
    CRLS_VERSION,
    DEFAULT_MAX_FRAME_SIZE,
    LINK_VERSION,
    MAX_CRLS_FRAME_SIZE,
    PAGES_VERSION,
    Frame,
    FrameError,
    FrameType,
    decode_frame,
    encode_frame,
)
from kcm.pki import PkiPaths, init_pki, issue_crl, load_ca, new_ca
from kcm.tls import server_tls_from
from kcm.tls_crl import merged_crls, pushed_crls
from kcm.tls_refresh import TlsRefresher
from tests.gateway_support import core_welcome
from tests.thread_fakes import run_inline
from tests.tls_handshake import presented
from tests.unit.test_link_cancel import frames_in
from tests.unit.test_link_origin import Gateway, core_link
from tests.unit.test_tls_crl import _chain, _Connection, _write

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(tmp_path_factory.mktemp("pki"))


def _cert(pair) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pair.cert.read_bytes())


def _der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(Encoding.DER)


# The frame ----------------------------------------------------------------------------------

def test_a_crls_frame_carries_crls_and_nothing_else() -> None:
    frame = Frame(FrameType.CRLS, crls=[b"\x30\x01a", b"\x30\x02bc"])
    assert decode_frame(encode_frame(frame)) == frame
    assert decode_frame(encode_frame(Frame(FrameType.CRLS))) == Frame(FrameType.CRLS)
    with pytest.raises(FrameError, match="carries no"):
        decode_frame(encode_frame(Frame(FrameType.CRLS, crls=[b"x"], error="no")))
    # A CRL in another frame is an unknown field there.
    wire = encode_frame(Frame(FrameType.TOMBSTONES, stream_id=1, crls=[b"x"]))
    with pytest.raises(FrameError, match="unknown field"):
        decode_frame(wire)


def test_only_the_big_frame_type_passes_the_framer_over_its_limit() -> None:
    crls = encode_frame(Frame(FrameType.CRLS, crls=[bytes(DEFAULT_MAX_FRAME_SIZE)]))
    other = encode_frame(Frame(FrameType.RESPONSE, stream_id=3,
                               message=bytes(DEFAULT_MAX_FRAME_SIZE)))
    plain = LinkFramer(DEFAULT_MAX_FRAME_SIZE)
    assert [type(f) for f in plain.feed(crls)] == [OversizedFrame]
    big = LinkFramer(DEFAULT_MAX_FRAME_SIZE, (FrameType.CRLS, MAX_CRLS_FRAME_SIZE))
    halves = big.feed(crls[:1000]) + big.feed(crls[1000:])
    assert halves == [crls]
    assert [type(f) for f in big.feed(other)] == [OversizedFrame]
    too_big = encode_frame(Frame(FrameType.CRLS, crls=[bytes(MAX_CRLS_FRAME_SIZE)]))
    assert [type(f) for f in big.feed(too_big)] == [OversizedFrame]


# The core's end -----------------------------------------------------------------------------

def test_the_core_sends_its_crls_after_view_to_a_gateway_of_version_10_and_on_change(
        pki) -> None:
    ca = load_ca(pki.ca)
    first, second = issue_crl(ca, [], now=NOW), issue_crl(ca, [_cert(pki.app)], now=NOW)
    protocol, transport, _ = core_link(events=1)
    protocol.factory.set_crls([first])
    frames_in(transport)
    protocol.dataReceived(encode_frame(Frame(FrameType.VERSION, link_version=LINK_VERSION)))
    sent = frames_in(transport)
    assert [f.type for f in sent] == [FrameType.ORIGIN, FrameType.VIEW, FrameType.CRLS,
                                      FrameType.EVENT]
    assert sent[2].crls == [_der(first)]
    wire = protocol.factory.crls_wire
    protocol.factory.set_crls([second])
    assert protocol.factory.crls_wire != wire
    assert [f.crls for f in frames_in(transport)] == [[_der(second)]]


def test_a_gateway_before_version_10_is_sent_no_crls(pki) -> None:
    protocol, transport, _ = core_link(events=0)
    protocol.factory.set_crls([issue_crl(load_ca(pki.ca), [], now=NOW)])
    frames_in(transport)
    protocol.dataReceived(encode_frame(Frame(FrameType.VERSION, link_version=PAGES_VERSION)))
    protocol.factory.set_crls([issue_crl(load_ca(pki.ca), [_cert(pki.app)], now=NOW)])
    assert FrameType.CRLS not in [f.type for f in frames_in(transport)]


def test_crls_too_large_for_the_frame_are_not_sent_and_logged(pki, monkeypatch) -> None:
    import kcm.core.link_server as link_server

    monkeypatch.setattr(link_server, "MAX_CRLS_FRAME_SIZE", 100)
    protocol, transport, _ = core_link(events=0)
    protocol.dataReceived(encode_frame(Frame(FrameType.VERSION, link_version=LINK_VERSION)))
    frames_in(transport)
    with capturedLogs() as logged:
        protocol.factory.set_crls([issue_crl(load_ca(pki.ca), [], now=NOW)])
    assert protocol.factory.crls_wire is None and frames_in(transport) == []
    assert any("too large to send to the gateways" in formatEvent(e) for e in logged)


# The gateway's link -------------------------------------------------------------------------

def test_the_gateway_hands_the_crls_on_and_says_once_when_its_core_sends_none() -> None:
    gateway = Gateway()
    taken: list[list[bytes]] = []
    gateway.client.on_crls = taken.append
    protocol, _ = gateway.link()
    protocol.dataReceived(core_welcome(LINK_VERSION) +
                          encode_frame(Frame(FrameType.CRLS, crls=[b"one", b"two"])))
    assert taken == [[b"one", b"two"]]
    gateway.lose(protocol)
    with capturedLogs() as logged:
        for _ in range(2):
            protocol, _ = gateway.link()
            protocol.dataReceived(core_welcome(CRLS_VERSION - 1))
            gateway.lose(protocol)
    said = [formatEvent(e) for e in logged if "sends no CRLs" in formatEvent(e)]
    assert len(said) == 1 and "link version 9" in said[0]


def test_a_crls_frame_before_the_link_is_made_ends_it() -> None:
    gateway = Gateway()
    gateway.client.on_crls = lambda crls: pytest.fail("taken")
    protocol, _ = gateway.link()
    protocol.dataReceived(encode_frame(Frame(FrameType.CRLS, crls=[b"x"])))
    assert protocol.closing


# Checking and merging -----------------------------------------------------------------------

def test_pushed_crls_are_checked_against_the_gateway_s_cas(pki) -> None:
    ca = load_ca(pki.ca)
    good = issue_crl(ca, [_cert(pki.app)], now=NOW)
    stranger = issue_crl(new_ca("Another CA", now=NOW), [], now=NOW)
    expired = issue_crl(ca, [], now=NOW - dt.timedelta(days=10), days=1)
    checked = pushed_crls([_der(good), _der(stranger), _der(expired), b"junk"],
                          [ca.cert], [], "ca.pem", now=NOW)
    assert [_der(c) for c in checked.crls] == [_der(good)]
    assert checked.ders == frozenset({_der(good)})
    assert len(checked.refused) == 3
    assert "which no CA of ca.pem signed" in checked.refused[0]
    assert "past its Next Update" in checked.refused[1]


def test_an_older_pushed_crl_never_replaces_a_newer_one(pki) -> None:
    ca = load_ca(pki.ca)
    older = issue_crl(ca, [], now=NOW - dt.timedelta(hours=1))
    newer = issue_crl(ca, [_cert(pki.app)], now=NOW)
    assert _der(merged_crls([older], [newer])[0]) == _der(newer)
    assert _der(merged_crls([newer], [older])[0]) == _der(newer)
    same = issue_crl(ca, [_cert(pki.other_app)], now=NOW)  # as new: the gateway's own
    assert _der(merged_crls([same], [newer])[0]) == _der(same)
    held = pushed_crls([_der(older)], [ca.cert], [newer], "ca.pem", now=NOW)
    assert [_der(c) for c in held.crls] == [_der(newer)]
    other = issue_crl(new_ca("Another CA", now=NOW), [], now=NOW)
    assert len(merged_crls([newer], [other])) == 2  # (one of each CA)


# The gateway's listener ---------------------------------------------------------------------

def _gateway_refresher(pki: PkiPaths, crl: str | None = None) -> TlsRefresher:
    refresher = TlsRefresher(str(pki.core.cert), str(pki.core.key), str(pki.ca.cert), Clock(),
                             crl=crl, interval=1, run_in_thread=run_inline, pushed=True)
    refresher.startService()
    return refresher


def test_a_gateway_without_tls_crl_refuses_what_the_core_revoked_and_cuts_it(pki) -> None:
    refresher = _gateway_refresher(pki)
    try:
        options = refresher.options(lambda material, lists: server_tls_from(
            material, crls=lists))()
        assert presented(options, pki.app, pki.ca.cert) is not None  # nothing pushed yet
        watch = options.watch
        assert watch is not None
        open_one = _Connection(pki, "app", _chain(pki, "app"))
        watch.handshake_done(open_one)
        with capturedLogs() as logged:
            refresher.take_pushed([_der(issue_crl(load_ca(pki.ca), [_cert(pki.app)],
                                                  now=NOW))])
        assert presented(options, pki.app, pki.ca.cert) is None
        assert presented(options, pki.other_app, pki.ca.cert) is not None
        assert open_one._aborted
        assert dict(refresher.refusals)["revoked"] == 1
        assert any("the core's CRLs taken: 1 CRL(s), 1 revoked" in formatEvent(e)
                   for e in logged)
        with capturedLogs() as logged:  # the same set again (a new link): nothing to do
            refresher.take_pushed([_der(c) for c in refresher.lists.pushed])
        assert not any("CRLs taken" in formatEvent(e) for e in logged)
    finally:
        refresher.stopService()


def test_a_gateway_s_own_crl_and_the_core_s_newer_one_both_count(pki, tmp_path) -> None:
    ca = load_ca(pki.ca)
    path = tmp_path / "crl.pem"
    _write(path, issue_crl(ca, [_cert(pki.app)], now=NOW - dt.timedelta(minutes=5)))
    refresher = _gateway_refresher(pki, str(path))
    try:
        options = refresher.options(lambda material, lists: server_tls_from(
            material, crls=lists))()
        assert presented(options, pki.other_app, pki.ca.cert) is not None
        # An older CRL of the core's: the gateway's own stays in force.
        refresher.take_pushed([_der(issue_crl(ca, [_cert(pki.other_app)],
                                              now=NOW - dt.timedelta(minutes=10)))])
        assert presented(options, pki.other_app, pki.ca.cert) is not None
        assert presented(options, pki.app, pki.ca.cert) is None
        # A newer one (the CA's lists are cumulative): both revoked.
        refresher.take_pushed([_der(issue_crl(ca, [_cert(pki.app), _cert(pki.other_app)],
                                              now=NOW))])
        assert presented(options, pki.other_app, pki.ca.cert) is None
        assert presented(options, pki.app, pki.ca.cert) is None
        assert refresher.lists.next_update is not None
    finally:
        refresher.stopService()


def test_without_tls_crl_a_ca_the_core_pushed_no_crl_of_is_not_checked(pki, tmp_path) -> None:
    """With its own tls.crl a gateway refuses the clients of a CA without a CRL (as
    OpenSSL must); without it, the core's CRLs check their CAs' clients only: the others
    are taken as before the push, not all refused."""
    from kcm.pki import certificate_pem

    second, issued, client = _second_ca_client(tmp_path)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki.ca.cert.read_bytes() + certificate_pem(second.cert))
    refresher = TlsRefresher(str(pki.core.cert), str(pki.core.key), str(bundle), Clock(),
                             interval=1, run_in_thread=run_inline, pushed=True)
    refresher.startService()
    try:
        options = refresher.options(lambda material, lists: server_tls_from(
            material, crls=lists))()
        refresher.take_pushed([_der(issue_crl(load_ca(pki.ca), [_cert(pki.app)], now=NOW))])
        assert presented(options, pki.app, bundle) is None
        assert presented(options, pki.other_app, bundle) is not None
        assert presented(options, client, bundle) is not None
    finally:
        refresher.stopService()


def _second_ca_client(tmp_path):
    """A second CA, a client certificate it issued, and that client's files."""
    from kcm.pki import CertKeyPaths, issue_certificate, write_certificate

    second = new_ca("Second CA", now=NOW)
    issued = issue_certificate(second, "second-app", now=NOW)
    client = CertKeyPaths(tmp_path / "second.pem", tmp_path / "second.key")
    write_certificate(client, issued.cert, issued.key)
    return second, issued, client


def test_link_version_10_is_the_crls_frame() -> None:
    assert LINK_VERSION == CRLS_VERSION == 10 and FrameType.CRLS == 19


def test_the_gateway_metrics_count_the_pushed_crls(pki) -> None:
    from prometheus_client import CollectorRegistry

    from kcm.connection_refusals import ConnectionRefusals
    from kcm.tls_metrics import CertificateExpiry, tls_collectors
    from tests.unit.test_metrics import samples

    refresher = _gateway_refresher(pki)
    registry = CollectorRegistry(auto_describe=False)
    try:
        for collector in tls_collectors("kcm_gateway", expiry=CertificateExpiry(),
                                        refusals=ConnectionRefusals(), refresher=refresher):
            registry.register(collector)
        got = samples(registry)
        assert got[("kcm_gateway_crl_pushed", ())] == 0
        assert ("kcm_gateway_crl_next_update_timestamp_seconds", ()) not in got
        crl = issue_crl(load_ca(pki.ca), [], now=NOW, days=3)
        refresher.take_pushed([_der(crl)])
        got = samples(registry)
        assert got[("kcm_gateway_crl_pushed", ())] == 1
        assert got[("kcm_gateway_crl_next_update_timestamp_seconds", ())] == (
            NOW + dt.timedelta(days=3)).timestamp()
        assert ("kcm_gateway_crl_pushed_timestamp_seconds", ()) in got
        assert ("kcm_gateway_crl_load_failures_total", ()) not in got  # (no tls.crl)
    finally:
        refresher.stopService()


def test_a_renewed_tls_ca_checks_the_last_pushed_crls_again(pki, tmp_path) -> None:
    """The core pushed a CRL of a CA this gateway's tls.ca did not hold yet (left out);
    once tls.ca holds that CA, the CRL is put in force without a new push (the core sends
    its CRLs again only when they change). And a CA taken out of tls.ca takes its pushed
    CRL out of force with it."""
    from kcm.pki import certificate_pem

    second, issued, client = _second_ca_client(tmp_path)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki.ca.cert.read_bytes())
    both = tmp_path / "both.pem"  # (the client's trust: either CA)
    both.write_bytes(pki.ca.cert.read_bytes() + certificate_pem(second.cert))
    refresher = TlsRefresher(str(pki.core.cert), str(pki.core.key), str(bundle), Clock(),
                             interval=1, run_in_thread=run_inline, pushed=True)
    refresher.startService()
    try:
        options = refresher.options(lambda material, lists: server_tls_from(
            material, crls=lists))()
        with capturedLogs() as logged:
            refresher.take_pushed([_der(issue_crl(second, [issued.cert], now=NOW))])
        assert any("left out" in formatEvent(e) for e in logged)  # no CA of tls.ca signed it
        assert refresher.lists.pushed == []
        bundle.write_bytes(pki.ca.cert.read_bytes() + certificate_pem(second.cert))
        refresher.refresh()  # (the look every tls.crl_refresh seconds, or SIGHUP)
        assert len(refresher.lists.pushed) == 1
        assert presented(options, client, both) is None  # revoked by the core's CRL
        assert presented(options, pki.app, both) is not None
        bundle.write_bytes(pki.ca.cert.read_bytes())  # the second CA taken out again
        with capturedLogs() as logged:
            refresher.refresh()
        assert refresher.lists.pushed == [] and refresher.pushed_in_force == frozenset()
        assert any("left out" in formatEvent(e) for e in logged)
    finally:
        refresher.stopService()


def test_pushed_crls_that_could_not_be_put_in_force_are_tried_again_at_the_next_look(
        pki) -> None:
    """A push whose options could not be built (OpenSSL refused them) is not lost until the
    core sends another set: the next look (every tls.crl_refresh seconds) tries it again,
    and it is said once while it fails."""
    clock = Clock()
    refresher = TlsRefresher(str(pki.core.cert), str(pki.core.key), str(pki.ca.cert), clock,
                             interval=1, run_in_thread=run_inline, pushed=True)
    refresher.startService()
    broken = [True]

    def build(material, lists):
        if broken[0] and lists is not None and lists.pushed:
            raise ValueError("refused by OpenSSL")
        return server_tls_from(material, crls=lists)

    try:
        options = refresher.options(build)()
        with capturedLogs() as logged:
            refresher.take_pushed([_der(issue_crl(load_ca(pki.ca), [_cert(pki.app)],
                                                  now=NOW))])
            clock.advance(1)  # still failing: said once
        said = [formatEvent(e) for e in logged]
        assert sum("the CRLs the core pushed could not be put in force" in line
                   for line in said) == 1
        assert refresher.lists.pushed == []
        assert presented(options, pki.app, pki.ca.cert) is not None
        broken[0] = False
        clock.advance(1)  # the next look
        assert len(refresher.lists.pushed) == 1
        assert presented(options, pki.app, pki.ca.cert) is None
        with capturedLogs() as logged:
            clock.advance(1)  # in force: not taken again
        assert not any("CRLs taken" in formatEvent(e) for e in logged)
    finally:
        refresher.stopService()
