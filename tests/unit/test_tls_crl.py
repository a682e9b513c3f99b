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
from twisted.internet.task import Clock

from kcm.config_file import TlsFiles
from kcm.pki import PkiPaths, init_pki, issue_crl, load_ca, new_ca
from kcm.tls import server_tls_options
from kcm.tls_crl import CrlRefresher, load_crls
from tests.thread_fakes import HeldThreads, run_inline


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


def _handshake(options, pair, ca: Path) -> bool:
    """Whether a client of ``pair`` (TLS 1.2, so a refusal shows in the handshake) completes
    a handshake with a server of ``options``' context, over a socket pair."""
    a, b = socket.socketpair()
    server = SSL.Connection(options.getContext(), a)
    server.set_accept_state()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(str(ca))
    context.load_cert_chain(str(pair.cert), str(pair.key))

    def client() -> None:
        try:
            with context.wrap_socket(b) as tls:
                tls.sendall(b"ping")
                tls.recv(4)
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=client)
    thread.start()
    try:
        server.do_handshake()
        server.recv(4)
        server.sendall(b"pong")
        done = True
    except SSL.Error:
        done = False
    finally:
        a.close()
        thread.join(5)
        b.close()
    return done


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
    refresher = CrlRefresher(str(path), str(pki.ca.cert), Clock(), interval=1,
                             run_in_thread=run_inline)
    refresher.startService()
    try:
        options = refresher.options(lambda lists: server_tls_options(
            pki.core.cert, pki.core.key, pki.ca.cert, crls=lists))()
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
    refresher = CrlRefresher(str(path), str(bundle), clock, interval=1,
                             run_in_thread=run_inline)
    refresher.startService()
    try:
        options = refresher.options(lambda lists: server_tls_options(
            pki.core.cert, pki.core.key, pki.ca.cert, crls=lists))()
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
    once; a tick that comes while a refresh runs is skipped; a build that fails keeps
    that listener's options, and the other listener takes its new ones."""
    ca = load_ca(pki.ca)
    path = tmp_path / "crl.pem"
    _write(path, issue_crl(ca, [_certificate(pki.app)]))
    clock, threads = Clock(), HeldThreads()
    refresher = CrlRefresher(str(path), str(pki.ca.cert), clock, interval=1,
                             run_in_thread=threads)
    refresher.startService()
    builds: list[str] = []
    broken = False

    def build(name: str):
        def options(lists):
            builds.append(name)
            if broken and name == "link":
                raise OSError("the key file is gone")
            return server_tls_options(pki.core.cert, pki.core.key, pki.ca.cert, crls=lists)
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
        broken = True
        threads.finish()  # reads, checks and builds: only now
        assert builds == ["kmip", "link"]
        assert refresher.lists.crls is not held
        assert kmip._options is not started[0] and link._options is started[1]
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
