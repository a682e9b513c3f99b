"""The TLS families of both planes' metrics (kcm.tls_metrics): the certificate expiry
gauges, told the dates of the very certificates read each time TLS options are built (at
start, and again at a CRL refresh), the connections refused by reason, and a CRL's
freshness; and the taps that wire them to each listener and to the gateway's link."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock

from kcm.connection_refusals import REASONS, ConnectionRefusals
from kcm.pki import (
    CertKeyPaths,
    PkiPaths,
    init_pki,
    issue_certificate,
    issue_crl,
    load_ca,
    new_ca,
    write_certificate,
)
from kcm.tls import CertificateDates, client_tls_options, server_tls_options
from kcm.tls_metrics import CertificateExpiry, tls_collectors
from kcm.tls_refresh import TlsRefresher
from tests.thread_fakes import run_inline
from tests.unit.test_metrics import samples


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(tmp_path_factory.mktemp("pki"))


def _not_after(path) -> float:
    return min(c.not_valid_after_utc for c in x509.load_pem_x509_certificates(
        path.read_bytes())).timestamp()


def test_built_options_tell_when_their_certificates_expire(pki, tmp_path) -> None:
    """Server and client options alike; a certificate file with an intermediate that
    expires first gives that date."""
    seen: list[CertificateDates] = []
    server_tls_options(pki.core.cert, pki.core.key, pki.ca.cert, dates=seen.append)
    client_tls_options(pki.gateway.cert, pki.gateway.key, pki.ca.cert, "localhost",
                       dates=seen.append)
    ca = _not_after(pki.ca.cert)
    assert seen == [CertificateDates(_not_after(pki.core.cert), ca),
                    CertificateDates(_not_after(pki.gateway.cert), ca)]
    now = dt.datetime.now(dt.UTC)
    short = issue_certificate(load_ca(pki.ca), "short", now=now, server=True,
                              dns_names=["localhost"], not_after=now + dt.timedelta(days=3))
    pair = CertKeyPaths(tmp_path / "short.pem", tmp_path / "short.key")
    write_certificate(pair, short.cert, short.key)
    chained = tmp_path / "chained.pem"
    chained.write_bytes(pki.core.cert.read_bytes() + short.cert.public_bytes(Encoding.PEM))
    seen.clear()
    server_tls_options(chained, pki.core.key, pki.ca.cert, dates=seen.append)
    assert seen == [CertificateDates(short.cert.not_valid_after_utc.timestamp(), ca)]
    with pytest.raises(SSL.Error):  # (a key that is not the certificate's)
        server_tls_options(pki.core.cert, pki.app.key, pki.ca.cert, dates=seen.append)
    assert len(seen) == 1  # options not built: nothing told



def test_the_ca_date_is_the_earliest_notafter_of_the_bundle_not_its_first(pki, tmp_path) -> None:
    """A bundle in a CA rotation holds the CA in use and one that expires sooner: the
    gauge is the sooner, wherever it is in the file."""
    now = dt.datetime.now(dt.UTC)
    ending = new_ca("Ending CA", now=now, days=20)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(pki.ca.cert.read_bytes() + ending.cert.public_bytes(Encoding.PEM))
    seen: list[CertificateDates] = []
    server_tls_options(pki.core.cert, pki.core.key, bundle, dates=seen.append)
    client_tls_options(pki.gateway.cert, pki.gateway.key, bundle, "localhost",
                       dates=seen.append)
    ending_at = ending.cert.not_valid_after_utc.timestamp()
    assert ending_at < _not_after(pki.ca.cert)
    assert [d.ca for d in seen] == [ending_at, ending_at]

def test_the_families_are_read_when_scraped(pki, tmp_path) -> None:
    expiry, refusals = CertificateExpiry(), ConnectionRefusals()
    path = tmp_path / "crl.pem"
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    path.write_bytes(issue_crl(load_ca(pki.ca), [], now=now, days=3).public_bytes(
        Encoding.PEM))
    crls = TlsRefresher(str(pki.core.cert), str(pki.core.key), str(pki.ca.cert), Clock(),
                        crl=str(path), run_in_thread=run_inline)
    registry = CollectorRegistry(auto_describe=False)
    for collector in tls_collectors("kcm_test", expiry=expiry, refusals=refusals,
                                    refresher=crls):
        registry.register(collector)
    got = samples(registry)
    # Nothing built, no CRL read yet: no dates; every reason, from 0.
    assert not [key for key in got if "expiry" in key[0] or "timestamp" in key[0]]
    assert {dict(labels)["reason"]: value for (name, labels), value in got.items()
            if name == "kcm_test_connections_refused_total"} == dict.fromkeys(REASONS, 0)
    assert got[("kcm_test_crl_load_failures_total", ())] == 0
    server_tls_options(pki.core.cert, pki.core.key, pki.ca.cert, dates=expiry.seen("kmip"))
    server_tls_options(pki.core.cert, pki.core.key, pki.ca.cert, dates=expiry.seen("link"))
    refusals.refused("limit")
    refusals.refused("revoked")
    refusals.refused("revoked")
    crls.startService()
    try:
        path.write_bytes(b"not a CRL")
        crls.refresh()
        got = samples(registry)
    finally:
        crls.stopService()
    for listener in ("kmip", "link"):
        assert got[("kcm_test_tls_certificate_expiry_timestamp_seconds",
                    (("listener", listener),))] == _not_after(pki.core.cert)
        assert got[("kcm_test_tls_ca_expiry_timestamp_seconds",
                    (("listener", listener),))] == _not_after(pki.ca.cert)
    refused = "kcm_test_connections_refused_total"
    assert got[(refused, (("reason", "limit"),))] == 1
    assert got[(refused, (("reason", "revoked"),))] == 2
    assert got[("kcm_test_crl_next_update_timestamp_seconds", ())] == (
        now + dt.timedelta(days=3)).timestamp()
    assert abs(got[("kcm_test_crl_last_load_timestamp_seconds", ())]
               - dt.datetime.now(dt.UTC).timestamp()) < 60
    assert got[("kcm_test_crl_load_failures_total", ())] == 1


def test_without_a_crl_there_are_no_crl_families() -> None:
    registry = CollectorRegistry(auto_describe=False)
    refresher = TlsRefresher("cert.pem", "key.pem", "ca.pem", Clock())
    for collector in tls_collectors("kcm_test", expiry=CertificateExpiry(),
                                    refusals=ConnectionRefusals(), refresher=refresher):
        registry.register(collector)
    assert not [name for name, _ in samples(registry) if "_crl_" in name]


def _tls_args(pki: PkiPaths, pair: CertKeyPaths) -> list[str]:
    return ["--tls-cert", str(pair.cert), "--tls-key", str(pair.key),
            "--tls-ca", str(pki.ca.cert)]


def test_the_core_reports_each_listener_s_certificates_as_they_are_built(pki) -> None:
    from kcm.core import tap

    options = tap.Options()
    options.parseOptions(["--listen", "tcp:0", "--link-listen", "tcp:0",
                          *_tls_args(pki, pki.core)])
    core = tap.makeService(options, Clock())
    expiry = "kcm_core_tls_certificate_expiry_timestamp_seconds"
    assert not [key for key in samples(core.metrics.registry) if key[0] == expiry]
    core.getServiceNamed("kcm-tls-refresh").startService()  # (it starts before them)
    for name in ("kcm-kmip-listener", "kcm-link-listener"):
        core.getServiceNamed(name)._tls_options()  # (what the listener's start does)
    core.getServiceNamed("kcm-tls-refresh").stopService()
    got = samples(core.metrics.registry)
    assert {dict(labels)["listener"]: value for (name, labels), value in got.items()
            if name == expiry} == dict.fromkeys(("kmip", "link"), _not_after(pki.core.cert))
    assert got[("kcm_core_connections_refused_total", (("reason", "identity"),))] == 0
    # The parts that refuse count in one place: the guard, the KMIP and link protocols.
    refusals = core.kmip_factory.refusals
    assert core.link_factory.refusals is refusals
    refusals.refused("identity")
    assert samples(core.metrics.registry)[
        ("kcm_core_connections_refused_total", (("reason", "identity"),))] == 1


def test_the_gateway_reports_its_listener_s_and_its_link_s_certificates(pki) -> None:
    from kcm.gateway import tap

    options = tap.Options()
    options.parseOptions(["--listen", "tcp:0", "--core", "tcp:127.0.0.1:1",
                          *_tls_args(pki, pki.gateway)])
    gateway = tap.makeService(options, Clock())
    gateway.getServiceNamed("kcm-tls-refresh").startService()  # (it starts before them)
    gateway.getServiceNamed("kcm-kmip-listener")._tls_options()
    gateway.getServiceNamed("kcm-gateway-identity").endpoint.load()
    gateway.getServiceNamed("kcm-tls-refresh").stopService()
    got = samples(gateway.metrics.registry)
    assert {dict(labels)["listener"]: value for (name, labels), value in got.items()
            if name == "kcm_gateway_tls_certificate_expiry_timestamp_seconds"} == \
        dict.fromkeys(("kmip", "link"), _not_after(pki.gateway.cert))
    assert got[("kcm_gateway_tls_ca_expiry_timestamp_seconds", (("listener", "link"),))] == \
        _not_after(pki.ca.cert)
    gateway.kmip_factory.refusals.refused("unreadable")
    assert samples(gateway.metrics.registry)[
        ("kcm_gateway_connections_refused_total", (("reason", "unreadable"),))] == 1
