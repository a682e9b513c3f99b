"""Renewed TLS files taken without a restart (kcm.tls_refresh, kcm.tls_renewal): a look
that finds the certificate, key or CA bundle changed reads them in a thread, checks them
(the key is the certificate's, the certificate valid now and chaining to the CA), and swaps
new options into every listener and link; a pair that does not match yet is retried at the
next look (one warning), a bad file is refused (one error), and what is in force stays.
The handshakes of real processes are tested end to end
(tests/integration/test_tls_renewal_process.py)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from kcm.connection_refusals import ConnectionRefusals
from kcm.gateway.service import renamed_gateway
from kcm.pki import (
    CertKeyPaths,
    PkiPaths,
    certificate_pem,
    init_pki,
    issue_certificate,
    issue_crl,
    load_ca,
    new_ca,
    private_key_pem,
    write_certificate,
)
from kcm.tls import client_tls_from, server_tls_from
from kcm.tls_metrics import CertificateExpiry, tls_collectors
from kcm.tls_refresh import TlsRefresher
from tests.thread_fakes import HeldThreads, run_inline
from tests.tls_handshake import presented
from tests.unit.test_metrics import samples


@pytest.fixture
def pki(tmp_path: Path) -> PkiPaths:
    return init_pki(tmp_path / "pki")


@pytest.fixture
def logged() -> list[tuple[LogLevel, str]]:
    seen: list[tuple[LogLevel, str]] = []

    def observe(event: dict) -> None:
        if str(event.get("log_namespace", "")).startswith("kcm.tls"):
            seen.append((event["log_level"], formatEvent(event)))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def _renew(pki: PkiPaths, *, now: dt.datetime | None = None, ca=None,
           **options) -> x509.Certificate:
    """A new certificate and key for the core, written over its files (key first, then
    certificate, each renamed into place: as :func:`kcm.pki.write_certificate` does)."""
    issued = _issue(pki, now=now, ca=ca, **options)
    write_certificate(pki.core, issued.cert, issued.key)
    return issued.cert


def _issue(pki: PkiPaths, *, now: dt.datetime | None = None, ca=None, **options):
    now = now or dt.datetime.now(dt.UTC)
    return issue_certificate(ca or load_ca(pki.ca), "kcm-core", now=now,
                             dns_names=["localhost"], server=True, client=False, **options)


def _serial(pki_or_path) -> int:
    path = pki_or_path.core.cert if isinstance(pki_or_path, PkiPaths) else pki_or_path
    return x509.load_pem_x509_certificate(Path(path).read_bytes()).serial_number




def _refresher(pki: PkiPaths, clock=None, **options) -> TlsRefresher:
    options.setdefault("run_in_thread", run_inline)
    return TlsRefresher(str(pki.core.cert), str(pki.core.key), str(pki.ca.cert),
                        clock or Clock(), interval=1, **options)


def _kmip(material, lists):
    return server_tls_from(material, crls=lists)


def test_a_renewed_certificate_is_presented_by_the_next_handshakes(pki, logged) -> None:
    """Unchanged files: nothing is built. Renewed ones: the next handshake presents the
    new certificate, and the look is counted and logged (its serial)."""
    refresher = _refresher(pki)
    refresher.startService()
    try:
        options = refresher.options(_kmip)()
        first = options._options
        before = _serial(pki)
        assert presented(options, pki.app, pki.ca.cert) == before
        refresher.refresh()
        assert options._options is first and refresher.reloads == 0
        renewed = _renew(pki)
        refresher.refresh()
        assert options._options is not first
        assert presented(options, pki.app, pki.ca.cert) == renewed.serial_number != before
        assert (refresher.reloads, refresher.reloads_refused) == (1, 0)
        refresher.refresh()  # (taken: not again)
        assert refresher.reloads == 1
        assert any(level is LogLevel.info and f"serial {renewed.serial_number:x}" in line
                   for level, line in logged)
    finally:
        refresher.stopService()


def test_a_key_that_is_not_the_certificate_s_yet_is_retried_at_the_next_look(
        pki, logged) -> None:
    """A renewal written as two files, seen between the two: not taken, not an error, one
    warning however many looks it lasts; taken once the certificate follows."""
    refresher = _refresher(pki)
    refresher.startService()
    try:
        options = refresher.options(_kmip)()
        before = _serial(pki)
        issued = _issue(pki)
        pki.core.key.write_bytes(private_key_pem(issued.key))  # the key first
        refresher.refresh()
        refresher.refresh()
        assert presented(options, pki.app, pki.ca.cert) == before
        assert (refresher.reloads, refresher.reloads_refused) == (0, 2)
        warned = [line for level, line in logged if level is LogLevel.warn]
        assert len(warned) == 1 and "is not the key of the certificate" in warned[0]
        assert not [line for level, line in logged if level >= LogLevel.error]
        pki.core.cert.write_bytes(certificate_pem(issued.cert))  # then the certificate
        refresher.refresh()
        assert presented(options, pki.app, pki.ca.cert) == issued.cert.serial_number
        assert refresher.reloads == 1
    finally:
        refresher.stopService()


def test_files_that_cannot_be_taken_are_refused_and_the_ones_in_force_stay(
        pki, logged) -> None:
    """A file that does not parse, a certificate expired or not yet valid (at the injected
    time), one that does not chain to the CA bundle, a key others may read: each refused
    with one error per set of files, read again every look, the certificate in force
    presented meanwhile."""
    now = dt.datetime.now(dt.UTC)
    clock_now = [now]
    refresher = _refresher(pki, now=lambda: clock_now[0])
    refresher.startService()
    try:
        options = refresher.options(_kmip)()
        before = _serial(pki)
        stranger = new_ca("Another CA", now=now)
        cases = [
            ("holds no PEM certificate", lambda: pki.core.cert.write_bytes(b"-----BEGIN CERT")),
            ("expired", lambda: _renew(pki, now=now - dt.timedelta(days=3), days=1)),
            ("not valid before", lambda: _renew(pki, not_before=now + dt.timedelta(days=1))),
            ("does not chain to a CA", lambda: _renew(pki, ca=stranger)),
            ("must not be readable by others", lambda: (_renew(pki), pki.core.key.chmod(0o644))),
        ]
        for refused, (reason, write) in enumerate(cases, start=1):
            logged.clear()
            write()
            refresher.refresh()
            refresher.refresh()  # read again, refused again, not logged again
            assert presented(options, pki.app, pki.ca.cert) == before, reason
            errors = [line for level, line in logged if level is LogLevel.error]
            assert len(errors) == 1, (reason, errors)
            assert "cannot be taken" in errors[0] and reason in errors[0], errors[0]
            assert refresher.reloads_refused == 2 * refused
        pki.core.key.chmod(0o600)  # (a mode fixed changes no stamp: read again anyway)
        refresher.refresh()
        assert presented(options, pki.app, pki.ca.cert) == _serial(pki) != before
        assert refresher.reloads == 1
    finally:
        refresher.stopService()


def test_a_certificate_of_a_ca_outside_tls_ca_at_start_is_renewed_the_same_way(
        pki, logged) -> None:
    """A server certificate from a CA that is not in ``tls.ca`` (the CA of the clients)
    starts, since nothing checks that at start: its renewal by the same CA is taken too,
    not refused for not chaining to ``tls.ca``."""
    now = dt.datetime.now(dt.UTC)
    other = new_ca("Server CA", now=now)
    _renew(pki, ca=other)
    refresher = _refresher(pki)
    refresher.startService()
    try:
        before = _serial(pki)
        _renew(pki, ca=other)
        refresher.refresh()
        assert _serial(pki) != before
        assert refresher.reloads == 1 and refresher.reloads_refused == 0
        assert not [line for level, line in logged if level is LogLevel.error]
    finally:
        refresher.stopService()


def test_a_new_ca_bundle_applies_to_the_next_handshakes(pki, tmp_path) -> None:
    """A client of a new CA is refused until the bundle holds it too; then taken at the
    next handshake, and the old CA's clients still are."""
    refresher = _refresher(pki)
    refresher.startService()
    try:
        options = refresher.options(_kmip)()
        new = new_ca("New CA", now=dt.datetime.now(dt.UTC))
        client = issue_certificate(new, "app", now=dt.datetime.now(dt.UTC),
                                   uris=["spiffe://kcm.test/tenant/demo/service/app"])
        pair = CertKeyPaths(tmp_path / "new-app.pem", tmp_path / "new-app.key")
        write_certificate(pair, client.cert, client.key)
        assert presented(options, pair, pki.ca.cert) is None
        bundle = pki.ca.cert.read_bytes() + certificate_pem(new.cert)
        staged = tmp_path / "ca.new"
        staged.write_bytes(bundle)
        staged.replace(pki.ca.cert)
        refresher.refresh()
        assert presented(options, pair, pki.ca.cert) == _serial(pki)
        assert presented(options, pki.app, pki.ca.cert) == _serial(pki)
        assert refresher.reloads == 1
    finally:
        refresher.stopService()


def test_the_files_are_read_in_a_thread_and_swapped_on_the_reactor(pki) -> None:
    """The look (even an unchanged one) runs in the thread runner; the listeners' and the
    link's options are swapped only when it returns; a tick while it runs is skipped."""
    clock, threads = Clock(), HeldThreads()
    refresher = _refresher(pki, clock, run_in_thread=threads)
    refresher.startService()
    try:
        kmip = refresher.options(_kmip)()
        link = refresher.client(lambda material, lists: client_tls_from(material,
                                                                         "localhost"))
        assert link() is link()  # one set of options, however many cores it links to
        held = (kmip._options, link()._options)
        clock.advance(1)
        assert len(threads.calls) == 1
        threads.finish()
        assert (kmip._options, link()._options) == held
        _renew(pki)
        clock.advance(1)
        clock.advance(1)  # still running: skipped
        assert len(threads.calls) == 1 and (kmip._options, link()._options) == held
        threads.finish()
        assert kmip._options is not held[0] and link()._options is not held[1]
    finally:
        refresher.stopService()


def test_new_crls_while_a_renewal_is_half_written_keep_the_certificate_in_force(
        pki, tmp_path) -> None:
    """Options are built from the files checked, not as they are when built: new CRLs
    taken while the key does not match yet are built with the certificate and key in
    force; the renewal is taken at the next look once complete."""
    ca = load_ca(pki.ca)
    crl = tmp_path / "crl.pem"
    crl.write_bytes(issue_crl(ca, []).public_bytes(Encoding.PEM))
    refresher = _refresher(pki, crl=str(crl), refusals=ConnectionRefusals())
    refresher.startService()
    try:
        options = refresher.options(_kmip)()
        before = _serial(pki)
        issued = _issue(pki)
        pki.core.key.write_bytes(private_key_pem(issued.key))
        revoked = x509.load_pem_x509_certificate(pki.app.cert.read_bytes())
        staged = tmp_path / "crl.new"
        staged.write_bytes(issue_crl(ca, [revoked]).public_bytes(Encoding.PEM))
        staged.replace(crl)
        refresher.refresh()
        assert presented(options, pki.app, pki.ca.cert) is None  # the CRL is in force
        assert presented(options, pki.other_app, pki.ca.cert) == before
        pki.core.cert.write_bytes(certificate_pem(issued.cert))
        refresher.refresh()
        assert presented(options, pki.other_app, pki.ca.cert) == issued.cert.serial_number
        assert presented(options, pki.app, pki.ca.cert) is None  # (and still)
    finally:
        refresher.stopService()


def test_the_metrics_show_the_new_certificate_and_count_the_reloads(pki) -> None:
    expiry = CertificateExpiry()
    refresher = _refresher(pki)
    registry = CollectorRegistry(auto_describe=False)
    for collector in tls_collectors("kcm_test", expiry=expiry, refusals=ConnectionRefusals(),
                                    refresher=refresher):
        registry.register(collector)
    refresher.startService()
    try:
        refresher.options(lambda material, lists: server_tls_from(
            material, crls=lists, dates=expiry.seen("kmip")))()
        gauge = ("kcm_test_tls_certificate_expiry_timestamp_seconds", (("listener", "kmip"),))
        first = samples(registry)[gauge]
        renewed = _renew(pki, days=400)
        refresher.refresh()
        pki.core.key.write_bytes(private_key_pem(_issue(pki).key))
        refresher.refresh()
        got = samples(registry)
        assert got[gauge] == renewed.not_valid_after_utc.timestamp() != first
        assert got[("kcm_test_tls_reloads_total", ())] == 1
        assert got[("kcm_test_tls_reloads_refused_total", ())] == 1
        assert not [name for name, _ in got if "_crl_" in name]  # (no tls.crl)
    finally:
        refresher.stopService()


def test_a_gateway_s_renewed_certificate_must_name_the_same_gateway(pki) -> None:
    now = dt.datetime.now(dt.UTC)
    ca = load_ca(pki.ca)
    same = issue_certificate(ca, "gw", now=now, uris=["spiffe://kcm.test/gateway/gw1"])
    other = issue_certificate(ca, "gw", now=now, uris=["spiffe://kcm.test/gateway/gw2"])
    app = issue_certificate(ca, "app", now=now,
                            uris=["spiffe://kcm.test/tenant/demo/service/app"])
    assert renamed_gateway(same.cert, "kcm.test", "gw1") is None
    assert "names gateway gw2, not gateway gw1" in renamed_gateway(other.cert, "kcm.test",
                                                                   "gw1")
    assert "names no gateway" in renamed_gateway(app.cert, "kcm.test", "gw1")
    # Through the refresher: refused, the certificate in force stays.
    refresher = TlsRefresher(str(pki.gateway.cert), str(pki.gateway.key), str(pki.ca.cert),
                             Clock(), run_in_thread=run_inline,
                             check=lambda cert: renamed_gateway(cert, "kcm.test", "gw1"))
    refresher.startService()
    try:
        write_certificate(pki.gateway, other.cert, other.key)
        refresher.refresh()
        assert refresher.reloads_refused == 1 and refresher.reloads == 0
        write_certificate(pki.gateway, same.cert, same.key)
        refresher.refresh()
        assert refresher.reloads == 1
    finally:
        refresher.stopService()


def test_a_start_reads_the_files_and_fails_on_one_it_cannot_read(pki) -> None:
    os.unlink(pki.core.key)
    refresher = _refresher(pki)
    with pytest.raises(FileNotFoundError, match="core.key"):
        refresher.startService()
    assert not refresher.running


# Found by a mutation review: what the tests above left unchecked --------------------------

def test_a_link_s_client_options_are_built_once_however_many_cores_load_them(pki) -> None:
    refresher = _refresher(pki)
    refresher.startService()
    try:
        builds: list[object] = []

        def build(material, lists):
            builds.append(material)
            return client_tls_from(material, "localhost")

        link = refresher.client(build)
        for _ in range(5):
            link()
        assert len(builds) == 1 and len(refresher._renewed) == 1
        _renew(pki)
        refresher.refresh()
        assert len(builds) == 2  # (built again once, for the renewed files)
    finally:
        refresher.stopService()


def test_files_renewed_while_they_are_read_are_read_again_at_the_next_look(
        pki, monkeypatch) -> None:
    """The stamps are taken before the files are read: a renewal written in between is a
    change the next look sees, never one taken for read already."""
    from kcm import tls_renewal

    refresher = _refresher(pki)
    real_read = tls_renewal.read_tls_material
    renewed: list[x509.Certificate] = []

    def read_then_renewed(*paths):
        material = real_read(*paths)
        if len(renewed) < 2:
            renewed.append(_renew(pki))  # (written just after this read)
        return material

    monkeypatch.setattr(tls_renewal, "read_tls_material", read_then_renewed)
    refresher.startService()  # (reads, then the first renewal is written)
    try:
        options = refresher.options(_kmip)()
        assert refresher.files.material.chain[0] != renewed[0]
        refresher.refresh()  # (takes the first, then the second is written)
        assert presented(options, pki.app, pki.ca.cert) == renewed[0].serial_number
        refresher.refresh()
        assert presented(options, pki.app, pki.ca.cert) == renewed[1].serial_number
    finally:
        refresher.stopService()


def test_each_renewal_seen_half_written_warns_once(pki, logged) -> None:
    """One warning while a renewal stays half written, whatever is rewritten meanwhile;
    the next renewal seen so warns again."""
    refresher = _refresher(pki)
    refresher.startService()
    try:
        def warnings() -> int:
            return sum(level is LogLevel.warn and "is not the key" in line
                       for level, line in logged)

        for renewal in (1, 2):
            issued = _issue(pki)
            pki.core.key.write_bytes(private_key_pem(_issue(pki).key))
            refresher.refresh()
            pki.core.key.write_bytes(private_key_pem(issued.key))  # (another key, again)
            refresher.refresh()
            assert warnings() == renewal
            pki.core.cert.write_bytes(certificate_pem(issued.cert))
            refresher.refresh()
            assert refresher.reloads == renewal
    finally:
        refresher.stopService()


def test_a_kubernetes_secret_volume_s_data_link_switch_is_taken(pki, tmp_path) -> None:
    """A Secret volume: tls.crt, tls.key and ca.crt are links through ``..data``, itself
    a link switched at once to a new directory (renamed over), the old directory then
    removed. Each switch is a renewal taken; none half seen."""
    root = tmp_path / "secret"
    root.mkdir()
    ca_pem = pki.ca.cert.read_bytes()

    def publish(name: str) -> x509.Certificate:
        issued = _issue(pki)
        (root / name).mkdir()
        write_certificate(CertKeyPaths(root / name / "tls.crt", root / name / "tls.key"),
                          issued.cert, issued.key)
        (root / name / "ca.crt").write_bytes(ca_pem)
        os.symlink(name, root / "..data_tmp")
        os.replace(root / "..data_tmp", root / "..data")
        for old in root.glob("..2026_*"):
            if old.name != name:
                shutil.rmtree(old)
        return issued.cert

    first = publish("..2026_a")
    for file in ("tls.crt", "tls.key", "ca.crt"):
        os.symlink(f"..data/{file}", root / file)
    refresher = TlsRefresher(str(root / "tls.crt"), str(root / "tls.key"),
                             str(root / "ca.crt"), Clock(), interval=1,
                             run_in_thread=run_inline)
    refresher.startService()
    try:
        options = refresher.options(_kmip)()
        assert presented(options, pki.app, pki.ca.cert) == first.serial_number
        for name in ("..2026_b", "..2026_c"):
            renewed = publish(name)
            refresher.refresh()
            assert presented(options, pki.app, pki.ca.cert) == renewed.serial_number
        assert (refresher.reloads, refresher.reloads_refused) == (2, 0)
    finally:
        refresher.stopService()


# The closing note of the renewal's sitting: SIGHUP, all or none, one CRL rule --------------

def _with_a_link_that_breaks(pki, tmp_path):
    """A started refresher with a CRL file, and a link whose options cannot be built once
    ``broken[0]`` is set: (CA, CRL file, refresher, broken, the link's options maker)."""
    ca = load_ca(pki.ca)
    crl = tmp_path / "crl.pem"
    crl.write_bytes(issue_crl(ca, []).public_bytes(Encoding.PEM))
    refresher = _refresher(pki, crl=str(crl))
    refresher.startService()
    broken = [False]

    def link(material, lists):
        if broken[0]:
            raise ValueError("no cipher matches the new key")
        return server_tls_from(material, crls=lists)

    return ca, crl, refresher, broken, link


def test_a_listener_whose_options_cannot_be_built_leaves_every_listener_as_it_was(
        pki, tmp_path, logged) -> None:
    """Renewed files and new CRLs that pass the checks, but one listener's options cannot
    be built from them: no listener takes new options and nothing read is taken (counted
    as refused, one error however many looks), the files are read again at every look
    and taken by all once they can be built."""
    ca, crl, refresher, broken, link = _with_a_link_that_breaks(pki, tmp_path)
    try:
        kmip_options, link_options = refresher.options(_kmip)(), refresher.options(link)()
        before = _serial(pki)
        broken[0] = True
        renewed = _renew(pki)
        staged = tmp_path / "crl.new"
        staged.write_bytes(issue_crl(ca, [x509.load_pem_x509_certificate(
            pki.app.cert.read_bytes())]).public_bytes(Encoding.PEM))
        staged.replace(crl)
        logged.clear()
        refresher.refresh()
        refresher.refresh()
        for options in (kmip_options, link_options):
            assert presented(options, pki.other_app, pki.ca.cert) == before
            assert presented(options, pki.app, pki.ca.cert) == before  # (not revoked)
        assert (refresher.reloads, refresher.reloads_refused) == (0, 2)
        assert refresher.load_failures == 2
        errors = [line for level, line in logged if level >= LogLevel.error]
        assert len(errors) == 1 and "could not be built" in errors[0], errors
        assert "no cipher matches the new key" in errors[0]
        assert not [line for _, line in logged if "read again: certificate serial" in line]
        broken[0] = False
        refresher.refresh()
        for options in (kmip_options, link_options):
            assert presented(options, pki.other_app, pki.ca.cert) == renewed.serial_number
            assert presented(options, pki.app, pki.ca.cert) is None  # (revoked now)
        assert (refresher.reloads, refresher.reloads_refused) == (1, 2)
    finally:
        refresher.stopService()


def test_a_ca_bundle_without_the_ca_of_a_crl_in_force_is_refused_as_at_a_start(
        pki, tmp_path, logged) -> None:
    """One rule at a start and at a reload: every CRL in force is signed by a CA of
    tls.ca. A renewed bundle that drops the CA of a CRL in force is refused with the
    message a start with those files gives (the bundle in force stays); once the CRL file
    drops that CRL too, both are taken."""
    from kcm.tls_crl import RevocationLists

    now = dt.datetime.now(dt.UTC)
    ca, other = load_ca(pki.ca), new_ca("Other CA", now=now)
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(pki.ca.cert.read_bytes() + certificate_pem(other.cert))
    crl = tmp_path / "crl.pem"
    crl.write_bytes(issue_crl(ca, []).public_bytes(Encoding.PEM)
                    + issue_crl(other, []).public_bytes(Encoding.PEM))
    refresher = TlsRefresher(str(pki.core.cert), str(pki.core.key), str(bundle), Clock(),
                             interval=1, run_in_thread=run_inline, crl=str(crl))
    refresher.startService()
    try:
        options = refresher.options(_kmip)()
        staged = tmp_path / "ca.new"
        staged.write_bytes(pki.ca.cert.read_bytes())  # the other CA dropped
        staged.replace(bundle)
        with pytest.raises(ValueError) as at_start:  # what a start would say
            RevocationLists(crl, bundle)
        logged.clear()
        refresher.refresh()
        refresher.refresh()
        assert (refresher.reloads, refresher.reloads_refused) == (0, 2)
        assert len(refresher.files.material.authorities) == 2  # (in force)
        errors = [line for level, line in logged if level >= LogLevel.error]
        assert len(errors) == 1 and str(at_start.value) in errors[0], errors
        assert "which no CA of" in errors[0]
        staged = tmp_path / "crl.new"
        staged.write_bytes(issue_crl(ca, []).public_bytes(Encoding.PEM))
        staged.replace(crl)
        refresher.refresh()
        assert refresher.reloads == 1 and len(refresher.files.material.authorities) == 1
        assert len(refresher.lists.crls) == 1
        assert presented(options, pki.app, pki.ca.cert) == _serial(pki)
        RevocationLists(crl, bundle)  # (and a start takes them)
    finally:
        refresher.stopService()


def _old_ca_in_force(pki, tmp_path):
    """The test PKI's CA in force (a bundle of it, and its empty CRL) in a started
    refresher, and a new CA to rotate to: (old, new, bundle, crl, refresher)."""
    old, new = load_ca(pki.ca), new_ca("New CA", now=dt.datetime.now(dt.UTC))
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(pki.ca.cert.read_bytes())
    crl = tmp_path / "crl.pem"
    crl.write_bytes(issue_crl(old, []).public_bytes(Encoding.PEM))
    refresher = TlsRefresher(str(pki.core.cert), str(pki.core.key), str(bundle), Clock(),
                             interval=1, run_in_thread=run_inline, crl=str(crl),
                             refusals=ConnectionRefusals())
    refresher.startService()
    return old, new, bundle, crl, refresher


def test_a_crl_is_checked_against_the_ca_bundle_in_force_not_the_one_on_disk(
        pki, tmp_path, logged) -> None:
    """A CA rotation whose renewed files are refused (the key not the certificate's yet):
    a new CRL file holding only the new CA's CRL was checked against the bundle on disk
    (the new one), and taken beside the bundle in force (the old one), under which every
    client of the old CA then found no CRL of its CA and was refused. It is refused until
    the renewal is taken; then both are."""
    old, new, bundle, crl, refresher = _old_ca_in_force(pki, tmp_path)
    try:
        options = refresher.options(_kmip)()
        before = _serial(pki)
        issued = _issue(pki, ca=new)
        pki.core.key.write_bytes(private_key_pem(issued.key))  # (the certificate not yet)
        bundle.write_bytes(pki.ca.cert.read_bytes() + certificate_pem(new.cert))
        staged = tmp_path / "crl.new"
        staged.write_bytes(issue_crl(new, []).public_bytes(Encoding.PEM))
        staged.replace(crl)
        logged.clear()
        refresher.refresh()
        assert len(refresher.files.material.authorities) == 1  # (the old bundle in force)
        assert presented(options, pki.app, pki.ca.cert) == before
        assert [c.issuer for c in refresher.lists.crls] == [old.cert.subject]
        errors = [line for level, line in logged if level >= LogLevel.error]
        assert any("which no CA of" in line and "in force" in line for line in errors), errors
        pki.core.cert.write_bytes(certificate_pem(issued.cert))
        refresher.refresh()
        assert len(refresher.files.material.authorities) == 2
        assert [c.issuer for c in refresher.lists.crls] == [new.cert.subject]
    finally:
        refresher.stopService()


def test_a_crl_of_the_ca_in_force_is_taken_while_a_renewal_on_disk_is_refused(
        pki, tmp_path, logged) -> None:
    """The other way round: the bundle on disk holds only a new CA (its renewal refused,
    the key not the certificate's yet) and a new CRL file the old CA's CRL, which revokes
    a client: the bundle in force is the old one, so that CRL is taken (checked against
    the file on disk it was refused, and the client stayed unrevoked)."""
    old, new, bundle, crl, refresher = _old_ca_in_force(pki, tmp_path)
    try:
        issued = _issue(pki, ca=new)
        pki.core.key.write_bytes(private_key_pem(issued.key))  # (the certificate not yet)
        bundle.write_bytes(certificate_pem(new.cert))
        revoked = x509.load_pem_x509_certificate(pki.app.cert.read_bytes())
        staged = tmp_path / "crl.new"
        staged.write_bytes(issue_crl(old, [revoked]).public_bytes(Encoding.PEM))
        staged.replace(crl)
        refresher.refresh()
        assert len(refresher.files.material.authorities) == 1  # (the old bundle in force)
        [taken] = refresher.lists.crls
        assert taken.issuer == old.cert.subject
        assert [entry.serial_number for entry in taken] == [revoked.serial_number]
    finally:
        refresher.stopService()


def test_a_look_now_takes_renewed_files_at_once_and_says_when_nothing_changed(
        pki, logged) -> None:
    """What SIGHUP does: a look without waiting for the tick, with the same checks and
    lines; one line when the files are unchanged; one asked for while a look runs is
    made again after it (that look may have read the files before they were written);
    before the start, nothing."""
    clock, threads = Clock(), HeldThreads()
    refresher = _refresher(pki, clock, run_in_thread=threads)
    refresher.look_now()  # (not started: nothing to look at yet)
    assert threads.calls == []
    refresher.startService()
    try:
        options = refresher.options(_kmip)()
        refresher.look_now()
        threads.finish()
        assert any("tls: SIGHUP:" in line and "unchanged" in line for _, line in logged)
        refresher.look_now()  # a look under way ...
        renewed = _renew(pki)  # ... the files written meanwhile ...
        refresher.look_now()  # ... and SIGHUP again: another look after it
        assert len(threads.calls) == 1
        threads.finish()
        assert len(threads.calls) == 1
        threads.finish()
        assert presented(options, pki.app, pki.ca.cert) == renewed.serial_number
        assert refresher.reloads == 1 and threads.calls == []
        assert clock.seconds() == 0  # (no tick)
    finally:
        refresher.stopService()


class _ReadNowAnsweredLater:
    """Runs each call at once (the look reads the files now) and holds its result until
    :meth:`answer`: a look that read the files before they were written."""

    def __init__(self) -> None:
        self.held: list[tuple[object, Deferred]] = []

    def __call__(self, fn, *args, **kwargs) -> Deferred:
        d: Deferred = Deferred()
        self.held.append((fn(*args, **kwargs), d))
        return d

    def answer(self) -> None:
        result, d = self.held.pop(0)
        d.callback(result)


def test_a_sighup_during_a_tick_s_look_is_answered_by_the_look_after_it(pki, logged) -> None:
    """The tick's look read the files before they were written: its outcome is not the
    SIGHUP's, which does not say they were unchanged; the look after it takes them."""
    clock, threads = Clock(), _ReadNowAnsweredLater()
    refresher = _refresher(pki, clock, run_in_thread=threads)
    refresher.startService()
    try:
        options = refresher.options(_kmip)()
        clock.advance(1)  # the tick's look reads the files, unchanged
        renewed = _renew(pki)
        refresher.look_now()
        threads.answer()  # the tick's look: nothing changed
        threads.answer()  # the SIGHUP's
        assert threads.held == []
        assert presented(options, pki.app, pki.ca.cert) == renewed.serial_number
        assert refresher.reloads == 1
        assert not any("unchanged" in line for _, line in logged)
    finally:
        refresher.stopService()


def test_the_unchanged_line_is_for_a_look_asked_for_and_finding_nothing_new(
        pki, tmp_path, logged) -> None:
    """The SIGHUP line is written by the look a SIGHUP asked for alone: not by a tick after
    a SIGHUP before the start, nor by the ticks after it; and not when the CRL file
    changed (its own line says so)."""
    ca = load_ca(pki.ca)
    crl = tmp_path / "crl.pem"
    crl.write_bytes(issue_crl(ca, []).public_bytes(Encoding.PEM))
    clock = Clock()
    refresher = _refresher(pki, clock, crl=str(crl))

    def sighup_lines() -> int:
        return sum("tls: SIGHUP:" in line for _, line in logged)

    refresher.look_now()  # (before the start: nothing, and nothing owed)
    refresher.startService()
    try:
        clock.advance(1)
        assert sighup_lines() == 0
        refresher.look_now()
        assert sighup_lines() == 1
        clock.advance(1)
        clock.advance(1)
        assert sighup_lines() == 1  # (the ticks after it: no line)
        staged = tmp_path / "crl.new"
        staged.write_bytes(issue_crl(ca, [x509.load_pem_x509_certificate(
            pki.app.cert.read_bytes())]).public_bytes(Encoding.PEM))
        staged.replace(crl)
        refresher.look_now()
        assert any("tls.crl:" in line and "read again" in line for _, line in logged)
        assert sighup_lines() == 1
    finally:
        refresher.stopService()


def test_files_refused_beside_options_that_cannot_be_built_are_logged_as_refused(
        pki, tmp_path, logged) -> None:
    """A look that reads a renewal it refuses and a new CRL file, or a renewal and a CRL
    file it refuses, whose options cannot be built: the refusal is logged too (once),
    besides the options' error."""
    ca, crl, refresher, broken, link = _with_a_link_that_breaks(pki, tmp_path)
    try:
        refresher.options(_kmip)(), refresher.options(link)()
        broken[0] = True
        stranger = new_ca("Stranger CA", now=dt.datetime.now(dt.UTC))
        _renew(pki, ca=stranger)  # (not of tls.ca: refused)
        staged = tmp_path / "crl.new"
        staged.write_bytes(issue_crl(ca, []).public_bytes(Encoding.PEM))
        staged.replace(crl)
        logged.clear()
        refresher.refresh()
        refresher.refresh()
        errors = [line for level, line in logged if level >= LogLevel.error]
        assert len([e for e in errors if "renewed TLS files cannot be taken" in e]) == 1, errors
        assert len([e for e in errors if "could not be built" in e]) == 1, errors
        _renew(pki)  # a renewal that can be taken, and a CRL file that cannot
        crl.write_bytes(b"not a CRL")
        logged.clear()
        refresher.refresh()
        refresher.refresh()
        errors = [line for level, line in logged if level >= LogLevel.error]
        assert len([e for e in errors if e.startswith("tls.crl: ")]) == 1, errors
        assert len([e for e in errors if "could not be built" in e]) == 1, errors
    finally:
        refresher.stopService()


def test_a_ca_of_the_bundle_without_a_crl_in_force_is_warned_about_once(
        pki, tmp_path, logged) -> None:
    """A new CA added to tls.ca beside a tls.crl without its CRL (the rotation to a new CA
    as "A new CA" describes it): OpenSSL refuses every client certificate it issues
    ("unable to get certificate CRL"), a gateway's next link too. The look that takes the
    bundle says so, once, naming the CA; so does a start; once its CRL is in the file
    nothing more is said, and a CRL left out again is warned about again."""
    now = dt.datetime.now(dt.UTC)
    ca, new = load_ca(pki.ca), new_ca("KCM Dev CA (kcm.test)", now=now)  # renewed: one name
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(pki.ca.cert.read_bytes())
    crl = tmp_path / "crl.pem"
    crl.write_bytes(issue_crl(ca, []).public_bytes(Encoding.PEM))
    refresher = TlsRefresher(str(pki.core.cert), str(pki.core.key), str(bundle), Clock(),
                             interval=1, run_in_thread=run_inline, crl=str(crl))
    refresher.startService()
    try:
        refresher.options(_kmip)()
        assert not [line for _, line in logged if "holds no CRL of" in line]
        staged = tmp_path / "ca.new"
        staged.write_bytes(pki.ca.cert.read_bytes() + certificate_pem(new.cert))
        staged.replace(bundle)
        refresher.refresh()
        assert refresher.reloads == 1
        warned = [(level, line) for level, line in logged if "holds no CRL of" in line]
        assert len(warned) == 1 and warned[0][0] == LogLevel.warn, warned
        assert "CN=KCM Dev CA" in warned[0][1] and str(bundle) in warned[0][1]
        assert "unable to get certificate CRL" in warned[0][1]
        os.utime(bundle, (1, 1))  # (read again, unchanged in substance: no second line)
        refresher.refresh()
        assert len([line for _, line in logged if "holds no CRL of" in line]) == 1
        staged = tmp_path / "crl.new"
        staged.write_bytes(issue_crl(ca, []).public_bytes(Encoding.PEM)
                           + issue_crl(new, []).public_bytes(Encoding.PEM))
        staged.replace(crl)
        refresher.refresh()
        assert len(refresher.lists.crls) == 2
        assert len([line for _, line in logged if "holds no CRL of" in line]) == 1
        staged = tmp_path / "crl.new"
        staged.write_bytes(issue_crl(new, []).public_bytes(Encoding.PEM))
        staged.replace(crl)
        refresher.refresh()
        warned = [line for _, line in logged if "holds no CRL of" in line]
        assert len(warned) == 2 and "CN=KCM Dev CA" in warned[1]
    finally:
        refresher.stopService()
    logged.clear()
    again = TlsRefresher(str(pki.core.cert), str(pki.core.key), str(bundle), Clock(),
                         interval=1, run_in_thread=run_inline, crl=str(crl))
    again.startService()  # a start with the old CA's CRL missing says so too
    again.stopService()
    assert len([line for _, line in logged if "holds no CRL of" in line]) == 1


def test_a_renewed_certificate_is_announced_once_every_listener_uses_it(pki) -> None:
    """``on_certificate_renewed`` (a gateway makes its link again) is called once renewed
    files with another certificate are taken, after the options are swapped in; not for a
    renewed CA bundle alone, nor for files refused."""
    refresher = _refresher(pki)
    refresher.startService()
    try:
        options = refresher.options(_kmip)()
        seen: list[int] = []
        refresher.on_certificate_renewed.append(
            lambda: seen.append(presented(options, pki.app, pki.ca.cert)))
        cert = _renew(pki)
        refresher.refresh()
        assert seen == [cert.serial_number]
        os.utime(pki.ca.cert, (1, 1))  # the bundle read again, the certificate the same
        refresher.refresh()
        assert refresher.reloads == 2 and seen == [cert.serial_number]
        _renew(pki, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))  # not yet valid
        refresher.refresh()
        assert refresher.reloads_refused == 1 and seen == [cert.serial_number]
    finally:
        refresher.stopService()
