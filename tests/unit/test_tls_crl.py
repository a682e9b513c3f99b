"""tls.crl (kcm.tls_crl): the CRL file is read and checked against the CA bundle (a CRL no
CA of it signed, or a file that holds none, is refused), handed to each TLS store with
OpenSSL's CRL check, and read again when it changes (a wrong new file keeps the CRLs in
force). The handshakes themselves are tested end to end
(tests/integration/test_tls_crl_process.py)."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import fail
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from kcm.config_file import TlsFiles
from kcm.eager_tls import EagerTLSFactory
from kcm.pki import PkiPaths, init_pki, issue_crl, load_ca, new_ca
from kcm.tls import server_tls_from, server_tls_options
from kcm.tls_crl import RevocationWatch, chain_keys, load_crls, revoked_keys, unsigned_crl
from kcm.tls_refresh import TlsRefresher
from tests.thread_fakes import HeldThreads, run_inline
from tests.tls_handshake import presented


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(tmp_path_factory.mktemp("pki"))


def _certificate(pair) -> object:
    from cryptography import x509

    return x509.load_pem_x509_certificate(pair.cert.read_bytes())


def test_a_crl_file_is_read_in_pem_or_der_and_checked_against_the_cas(pki, tmp_path) -> None:
    ca = load_ca(pki.ca)
    crl = issue_crl(ca, [_certificate(pki.app)])
    pem = tmp_path / "crl.pem"
    pem.write_bytes(crl.public_bytes(Encoding.PEM) * 2)  # two blocks (the same CRL twice)
    assert [len(list(c)) for c in load_crls(pem, pki.ca.cert)] == [1, 1]
    der = tmp_path / "crl.der"
    der.write_bytes(crl.public_bytes(Encoding.DER))
    assert len(load_crls(der, pki.ca.cert)) == 1
    stranger = issue_crl(new_ca("Another CA", now=dt.datetime.now(dt.UTC)), [])
    (tmp_path / "other.pem").write_bytes(stranger.public_bytes(Encoding.PEM))
    with pytest.raises(ValueError, match="which no CA of .* signed"):
        load_crls(tmp_path / "other.pem", pki.ca.cert)
    (tmp_path / "junk.pem").write_bytes(b"not a CRL")
    with pytest.raises(ValueError, match="holds no CRL KCM can read"):
        load_crls(tmp_path / "junk.pem", pki.ca.cert)
    with pytest.raises(ValueError, match="cannot read the CRL file"):
        load_crls(tmp_path / "missing.pem", pki.ca.cert)


def test_a_crl_of_a_ca_s_name_signed_by_another_key_is_refused(pki, tmp_path) -> None:
    """A CA made again under the same name with a new key (a re-keyed CA) did not sign the
    CRLs of the old one: the name alone is not enough, at a start and for a renewed
    tls.ca (unsigned_crl)."""
    old = load_ca(pki.ca)
    again = new_ca("KCM Dev CA (kcm.test)", now=dt.datetime.now(dt.UTC))
    assert again.cert.subject == old.cert.subject
    crl = issue_crl(again, [])
    (tmp_path / "crl.pem").write_bytes(crl.public_bytes(Encoding.PEM))
    with pytest.raises(ValueError, match="which no CA of .* signed"):
        load_crls(tmp_path / "crl.pem", pki.ca.cert)
    assert unsigned_crl([crl], [old.cert], "crl.pem", "ca.pem") is not None
    assert unsigned_crl([crl], [old.cert, again.cert], "crl.pem", "ca.pem") is None


def _handshake(options, pair, ca: Path) -> bool:
    """Whether a client of ``pair`` completes a handshake with a server of ``options``."""
    return presented(options, pair, ca) is not None


def _refresher(pki: PkiPaths, crl: str, ca: str, clock, **options) -> TlsRefresher:
    """The refresher of the core's certificate and key, the CA bundle ``ca`` and the CRL
    file ``crl``."""
    return TlsRefresher(str(pki.core.cert), str(pki.core.key), ca, clock, crl=crl, **options)


def _write(path: Path, crl) -> None:
    path.write_bytes(crl.public_bytes(Encoding.PEM))
    stamp = path.stat()
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1_000_000))  # (seen changed)


def test_a_refresh_builds_the_listeners_options_again_with_the_new_crls_alone(
        pki, tmp_path) -> None:
    """A revoked certificate fails the handshake; after a refresh the options are built
    again with the file's CRLs alone: a newer CRL revokes, one without the entry
    un-revokes, one of the same This Update replaces the one before (no CRL read before is
    kept); a file that cannot be taken keeps the CRLs in force and is read again at every
    refresh until it can be (a mode fixed changes no stamp)."""
    ca = load_ca(pki.ca)
    path = tmp_path / "crl.pem"
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    _write(path, issue_crl(ca, [_certificate(pki.app)], now=now))
    refresher = _refresher(pki, str(path), str(pki.ca.cert), Clock(), interval=1,
                             run_in_thread=run_inline)
    refresher.startService()
    try:
        options = refresher.options(lambda material, lists: server_tls_from(
            material, crls=lists))()
        assert not _handshake(options, pki.app, pki.ca.cert)
        assert _handshake(options, pki.other_app, pki.ca.cert)
        _write(path, issue_crl(ca, [_certificate(pki.other_app)], now=now))  # same time
        refresher.refresh()
        assert _handshake(options, pki.app, pki.ca.cert)  # no longer listed
        assert not _handshake(options, pki.other_app, pki.ca.cert)
        path.write_bytes(b"oops")
        refresher.refresh()  # logged; the CRLs in force stay
        assert not _handshake(options, pki.other_app, pki.ca.cert)
        _write(path, issue_crl(ca, [], now=now + dt.timedelta(seconds=1)))
        path.chmod(0o000)
        if os.geteuid() != 0:  # (root reads it anyway)
            refresher.refresh()
            assert not _handshake(options, pki.other_app, pki.ca.cert)
        path.chmod(0o644)
        refresher.refresh()  # read again though only its mode changed
        assert _handshake(options, pki.other_app, pki.ca.cert)
    finally:
        refresher.stopService()


def test_a_refresh_that_fails_in_any_way_keeps_the_loop_going(pki, tmp_path) -> None:
    """Whatever a refresh meets (the CA bundle gone for a moment: an OSError, not a
    ValueError), it is logged and the next one runs: the loop never stops."""
    ca = load_ca(pki.ca)
    path = tmp_path / "crl.pem"
    _write(path, issue_crl(ca, []))
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(pki.ca.cert.read_bytes())
    clock = Clock()
    refresher = _refresher(pki, str(path), str(bundle), clock, interval=1,
                             run_in_thread=run_inline)
    refresher.startService()
    try:
        options = refresher.options(lambda material, lists: server_tls_from(
            material, crls=lists))()
        aside = tmp_path / "aside.pem"
        bundle.rename(aside)
        _write(path, issue_crl(ca, [_certificate(pki.app)]))
        clock.advance(1)
        assert refresher._loop is not None and refresher._loop.running
        aside.rename(bundle)
        clock.advance(1)
        assert not _handshake(options, pki.app, pki.ca.cert)
    finally:
        refresher.stopService()


def test_a_refresh_reads_and_builds_in_a_thread_and_swaps_on_the_reactor(
        pki, tmp_path) -> None:
    """The file is read and checked, and each listener's options built, by the thread
    runner; the new options are put in only when it returns (on the reactor), all at
    once; a tick that comes while a refresh runs is skipped."""
    ca = load_ca(pki.ca)
    path = tmp_path / "crl.pem"
    _write(path, issue_crl(ca, [_certificate(pki.app)]))
    clock, threads = Clock(), HeldThreads()
    refresher = _refresher(pki, str(path), str(pki.ca.cert), clock, interval=1,
                             run_in_thread=threads)
    refresher.startService()
    builds: list[str] = []

    def build(name: str):
        def options(material, lists):
            builds.append(name)
            return server_tls_from(material, crls=lists)
        return options

    try:
        kmip = refresher.options(build("kmip"))()
        link = refresher.options(build("link"))()
        started = (kmip._options, link._options)
        builds.clear()
        clock.advance(1)  # unchanged: the look itself is in the thread
        assert len(threads.calls) == 1
        threads.finish()
        assert builds == [] and (kmip._options, link._options) == started
        _write(path, issue_crl(ca, [_certificate(pki.other_app)]))
        clock.advance(1)
        clock.advance(1)  # still running: skipped
        assert len(threads.calls) == 1 and builds == []
        assert refresher.lists is not None and len(refresher.lists.crls[0]) == 1
        held = refresher.lists.crls
        threads.finish()  # reads, checks and builds: only now
        assert builds == ["kmip", "link"]
        assert refresher.lists.crls is not held
        assert kmip._options is not started[0] and link._options is not started[1]
        assert _handshake(kmip, pki.app, pki.ca.cert)
        assert not _handshake(kmip, pki.other_app, pki.ca.cert)
        clock.advance(1)
        assert len(threads.calls) == 1  # the next tick runs again
    finally:
        refresher.stopService()


def test_a_crl_setting_is_a_path_and_its_refresh_a_bounded_number() -> None:
    files = {"cert": "c", "key": "k", "ca": "a"}
    assert TlsFiles(**files, crl="crl.pem").crl_refresh == 30.0
    for wrong in (0, -1, 3601, True, "5"):
        with pytest.raises(ValueError, match="tls.crl_refresh"):
            TlsFiles(**files, crl_refresh=wrong)


# Open connections of a certificate a new CRL lists ------------------------------------------

def _handshaken(options, pair, ca: Path) -> tuple[SSL.Connection, socket.socket, object]:
    """The server side of a completed TLS handshake with a client of ``pair`` (its socket
    and the client's thread, to close and join)."""
    a, b = socket.socketpair()
    server = SSL.Connection(options.getContext(), a)
    server.set_accept_state()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(str(ca))
    context.load_cert_chain(str(pair.cert), str(pair.key))

    def client() -> None:
        try:
            with context.wrap_socket(b) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass
        finally:
            b.close()

    thread = threading.Thread(target=client)
    thread.start()
    server.do_handshake()
    return server, a, thread


class _Link:
    """An application protocol that closes itself when its certificate is revoked."""

    def __init__(self) -> None:
        self.revoked = 0

    def certificate_revoked(self) -> None:
        self.revoked += 1


class _Connection:
    """What a :class:`RevocationWatch` uses of a server-side TLS protocol."""

    def __init__(self, pki: PkiPaths, who: str, chain: list, wrapped: object = None,
                 peer: object = None) -> None:
        from OpenSSL import crypto

        pair = getattr(pki, who)
        self.connected = True
        self._aborted = False
        self.wrappedProtocol = wrapped if wrapped is not None else object()
        self.transport = StringTransport(
            peerAddress=peer or IPv4Address("TCP", "192.0.2.7", 4433))
        self._peer = crypto.load_certificate(crypto.FILETYPE_PEM, pair.cert.read_bytes())
        self._tlsConnection = self
        self._chain = chain

    def get_verified_chain(self, *, as_cryptography: bool = False) -> list:
        assert as_cryptography
        return self._chain

    def getPeerCertificate(self) -> object:  # noqa: N802 - Twisted's
        return self._peer

    def abortConnection(self) -> None:  # noqa: N802 - Twisted's
        self._aborted = True


def _chain(pki: PkiPaths, who: str) -> list:
    from cryptography import x509

    return [x509.load_pem_x509_certificate(path.read_bytes())
            for path in (getattr(pki, who).cert, pki.ca.cert)]


@pytest.fixture
def warnings() -> list[str]:
    seen: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_level") in (LogLevel.warn, LogLevel.error):
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def test_a_peer_chain_is_read_at_the_handshake_without_its_trust_anchor(pki) -> None:
    """chain_keys: the issuer (DER) and serial number of each certificate of the verified
    chain but the CA it ends at, which no CRL covers."""
    options = server_tls_options(pki.core.cert, pki.core.key, pki.ca.cert)
    server, sock, thread = _handshaken(options, pki.app, pki.ca.cert)
    try:
        app = _certificate(pki.app)
        assert chain_keys(server) == ((app.issuer.public_bytes(), app.serial_number),)
    finally:
        sock.close()
        thread.join(5)


def test_revoked_certificates_are_matched_by_issuer_and_serial(pki) -> None:
    """revoked_keys: what a CRL lists, by its issuer and serial number: the same serial of
    another CA is not a match."""
    app, other = _certificate(pki.app), _certificate(pki.other_app)
    revoked = revoked_keys([issue_crl(load_ca(pki.ca), [app])])
    assert (app.issuer.public_bytes(), app.serial_number) in revoked
    assert (other.issuer.public_bytes(), other.serial_number) not in revoked
    stranger = new_ca("Another CA", now=dt.datetime.now(dt.UTC))
    assert (app.issuer.public_bytes(), app.serial_number) not in revoked_keys([
        issue_crl(stranger, [app])])  # (its issuer is the stranger's name)
    assert revoked_keys([]) == frozenset()


def test_open_connections_of_a_revoked_certificate_are_cut_one_line_each(
        pki, warnings) -> None:
    """RevocationWatch: each connection's chain is kept from its handshake; the CRLs taken
    cut those they list (a link by its own certificate_revoked, a KMIP connection
    aborted), with one warning naming the identity and the serial in hex; the others, and
    connections already ended, are untouched; a handshake that ends after the swap with
    the CRLs of before is cut as it ends."""
    watch = RevocationWatch("KMIP")
    app = _Connection(pki, "app", _chain(pki, "app"))
    other = _Connection(pki, "other_app", _chain(pki, "other_app"))
    link = _Connection(pki, "gateway", _chain(pki, "gateway"), wrapped=_Link())
    gone = _Connection(pki, "admin", _chain(pki, "admin"))
    for connection in (app, other, link, gone):
        watch.handshake_done(connection)
    watch.lost(gone)
    assert len(watch) == 3
    revoked = revoked_keys([issue_crl(load_ca(pki.ca), [
        _certificate(pki.app), _certificate(pki.gateway), _certificate(pki.admin)])])
    assert watch.cut_revoked(revoked) == 2
    assert app._aborted and not other._aborted and not gone._aborted
    assert link.wrappedProtocol.revoked == 1 and not link._aborted
    assert len(watch) == 1
    serial = f"{_certificate(pki.app).serial_number:x}"
    lines = [line for line in warnings if "tls.crl: closed" in line]
    assert len(lines) == 2
    assert lines[0] == ("tls.crl: closed the KMIP connection of spiffe://kcm.test/tenant/"
                        f"demo/service/app from 192.0.2.7: its certificate (serial {serial}) "
                        "is revoked"), lines
    assert "spiffe://kcm.test/gateway/gw1" in lines[1]
    mapped = _Connection(pki, "app", _chain(pki, "app"),  # (on a dual-stack listener)
                         peer=IPv6Address("TCP", "::ffff:192.0.2.8", 4433))
    watch.handshake_done(mapped)
    assert mapped._aborted and " from 192.0.2.8: " in warnings[-1], warnings[-1]
    assert watch.cut_revoked(revoked) == 0  # (cut once)
    late = _Connection(pki, "app", _chain(pki, "app"))
    watch.handshake_done(late)  # a context built with the CRLs of before
    assert late._aborted and len(watch) == 1
    watch.cut_revoked(frozenset())  # a CRL listing nobody: nothing cut, nothing kept
    again = _Connection(pki, "app", _chain(pki, "app"))
    watch.handshake_done(again)
    assert not again._aborted and len(watch) == 2


def test_a_revoked_intermediate_ca_cuts_what_it_issued(pki, warnings) -> None:
    """A connection whose chain holds a listed CA certificate (not its trust anchor) is
    cut, and its line says a CA certificate of its chain is revoked."""
    intermediate = _certificate(pki.core)  # (any certificate the CA issued will do)
    chain = [_chain(pki, "app")[0], intermediate, _chain(pki, "app")[1]]
    connection = _Connection(pki, "app", chain)
    watch = RevocationWatch("gateway link")
    watch.handshake_done(connection)
    watch.cut_revoked(revoked_keys([issue_crl(load_ca(pki.ca), [intermediate])]))
    assert connection._aborted
    assert any("a CA certificate of its chain" in line for line in warnings), warnings


def test_a_refresh_cuts_the_open_connections_its_crls_list(pki, tmp_path) -> None:
    """TlsRefresher: the listeners' options carry a watch (each connection's peer_watch);
    a refresh that takes new CRLs cuts what they list; an unchanged file cuts nothing, nor
    do new CRLs a listener's options could not be built with (not taken: the CRLs in
    force stay, for every listener), until they can be."""
    ca = load_ca(pki.ca)
    path = tmp_path / "crl.pem"
    _write(path, issue_crl(ca, []))
    refresher = _refresher(pki, str(path), str(pki.ca.cert), Clock(), interval=1,
                             run_in_thread=run_inline)
    refresher.startService()
    broken = False

    def build(material, lists):
        if broken:
            raise OSError("the key file is gone")
        return server_tls_from(material, crls=lists)

    try:
        options = refresher.options(build, name="KMIP")()
        assert options.watch is not None and options.watch.name == "KMIP"

        protocol = EagerTLSFactory(options, False, Factory.forProtocol(Protocol)
                                   ).buildProtocol(IPv4Address("TCP", "192.0.2.7", 4433))
        protocol.makeConnection(StringTransport())
        assert protocol.peer_watch is options.watch  # (told of its handshake and end)
        app = _Connection(pki, "app", _chain(pki, "app"))
        other = _Connection(pki, "other_app", _chain(pki, "other_app"))
        options.watch.handshake_done(app)
        options.watch.handshake_done(other)
        refresher.refresh()
        assert not app._aborted
        broken = True
        _write(path, issue_crl(ca, [_certificate(pki.app)]))
        refresher.refresh()
        assert not app._aborted and refresher.load_failures == 1
        broken = False
        refresher.refresh()
        assert app._aborted and not other._aborted
    finally:
        refresher.stopService()


def test_connections_cut_are_counted_as_refused_revoked(pki, tmp_path) -> None:
    """The watches a refresher gives its listeners count what they cut in its refusals
    (the process's, for the metrics)."""
    from kcm.connection_refusals import ConnectionRefusals

    watch = RevocationWatch("KMIP", refusals := ConnectionRefusals())
    for who in ("app", "other_app", "admin"):
        watch.handshake_done(_Connection(pki, who, _chain(pki, who)))
    watch.cut_revoked(revoked_keys([issue_crl(load_ca(pki.ca), [
        _certificate(pki.app), _certificate(pki.admin)])]))
    assert dict(refusals)["revoked"] == 2
    path = tmp_path / "crl.pem"
    _write(path, issue_crl(load_ca(pki.ca), []))
    refresher = _refresher(pki, str(path), str(pki.ca.cert), Clock(), refusals=refusals)
    refresher.startService()
    try:
        options = refresher.options(lambda material, lists: server_tls_from(
            material, crls=lists))()
        assert options.watch.refusals is refusals
    finally:
        refresher.stopService()


def test_the_crls_freshness_and_failed_loads_are_kept_for_the_metrics(pki, tmp_path) -> None:
    """When the first CRL in force expires and when it was read; the looks that found a
    file that could not be taken, each (read again every refresh until it can be)."""
    ca = load_ca(pki.ca)
    stranger = new_ca("Another CA", now=dt.datetime.now(dt.UTC))
    path = tmp_path / "crl.pem"
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    soon, later = issue_crl(ca, [], now=now, days=2), issue_crl(ca, [], now=now, days=9)
    path.write_bytes(later.public_bytes(Encoding.PEM) + soon.public_bytes(Encoding.PEM))
    refresher = _refresher(pki, str(path), str(pki.ca.cert), Clock(), interval=1,
                             run_in_thread=run_inline)
    refresher.startService()
    try:
        lists = refresher.lists
        assert lists is not None
        assert lists.next_update == (now + dt.timedelta(days=2)).timestamp()
        read_at = lists.loaded_at
        assert abs(read_at - dt.datetime.now(dt.UTC).timestamp()) < 60
        assert refresher.load_failures == 0
        _write(path, issue_crl(stranger, []))  # no CA of the bundle signed it
        refresher.refresh()
        refresher.refresh()  # read again, refused again
        assert refresher.load_failures == 2
        assert lists.next_update == (now + dt.timedelta(days=2)).timestamp()  # in force
        assert lists.loaded_at == read_at
        lists._now = lambda: dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        _write(path, issue_crl(ca, [], now=now, days=30))
        refresher.refresh()
        assert refresher.load_failures == 2
        assert lists.next_update == (now + dt.timedelta(days=30)).timestamp()
        assert lists.loaded_at > read_at + 3000
    finally:
        refresher.stopService()


def test_a_refresh_that_fails_outright_is_counted_as_a_failed_load(pki, tmp_path) -> None:
    """A look that did not end, its thread's work failed or no thread to run it in, counts in
    load_failures as a file refused does (kcm_*_crl_load_failures_total)."""
    path = tmp_path / "crl.pem"
    _write(path, issue_crl(load_ca(pki.ca), []))
    outcomes: list[str] = []

    def run(fn, *args, **kwargs):
        outcome = outcomes.pop(0)
        if outcome == "raise":
            raise RuntimeError("no thread to run it in")
        if outcome == "fail":
            return fail(RuntimeError("the thread's work failed"))
        return run_inline(fn, *args, **kwargs)

    refresher = _refresher(pki, str(path), str(pki.ca.cert), Clock(), interval=1,
                             run_in_thread=run)
    refresher.startService()
    try:
        outcomes[:] = ["fail", "raise", "fail", "ok"]
        for _ in range(4):
            refresher.refresh()
        assert outcomes == [] and refresher.load_failures == 3
    finally:
        refresher.stopService()


def test_a_crl_past_its_next_update_is_said_expired_not_expiring(pki, tmp_path) -> None:
    """A CRL taken after its Next Update was warned of as one that "expires at" that date,
    "after that" refusing every certificate it covers: it is an error, in the past tense."""
    from twisted.logger import capturedLogs

    from kcm.tls_crl import RevocationLists

    ca = load_ca(pki.ca)
    now = dt.datetime.now(dt.UTC)
    path = tmp_path / "crl.pem"
    _write(path, issue_crl(ca, [], now=now - dt.timedelta(days=8), days=7))
    with capturedLogs() as events:
        RevocationLists(path, pki.ca.cert)
    lines = [(event["log_level"], formatEvent(event)) for event in events
             if "Next Update" in formatEvent(event)]
    assert len(lines) == 1 and lines[0][0] == LogLevel.error, lines
    assert " expired at " in lines[0][1] and "after that" not in lines[0][1]
    _write(path, issue_crl(ca, [], now=now - dt.timedelta(hours=156), days=7))  # 12 h left
    with capturedLogs() as events:
        RevocationLists(path, pki.ca.cert)
    [line] = [formatEvent(event) for event in events if "Next Update" in formatEvent(event)]
    assert " expires at " in line
