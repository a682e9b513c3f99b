"""A kcm-core and a kcm-gateway (two workers) whose own certificates expire while they run:
no client completes a handshake with them any more, so their ``/readyz`` answers 503 and
says why (before, the core's said ready as long as its database answered, and a load
balancer kept sending it clients that all failed), and a client's refusal of its
certificate is logged as that (it read ``tls alert certificate expired``, as if the
client's had expired); once renewed files are taken, ready again, with no restart."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl

from cryptography import x509

from kcm.pki import CertKeyPaths, PkiPaths, issue_certificate, load_ca, write_certificate
from kcm.testing.processes import GatewayProcess, deploy, free_port, scrape
from tests.e2e_support import wait_until

REFRESH = 0.2
#: Seconds the short certificates are valid once written.
LIFETIME = 8.0


def _reissue(pki: PkiPaths, pair: CertKeyPaths, not_after: dt.datetime | None) -> None:
    """A new certificate and key for ``pair``'s names, valid until ``not_after`` (None:
    the PKI's usual validity)."""
    old = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    names = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    usages = old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    now = dt.datetime.now(dt.UTC)
    issued = issue_certificate(
        load_ca(pki.ca), "reissued", now=now,
        uris=names.get_values_for_type(x509.UniformResourceIdentifier),
        dns_names=names.get_values_for_type(x509.DNSName),
        ip_addresses=[str(ip) for ip in names.get_values_for_type(x509.IPAddress)],
        server=x509.ExtendedKeyUsageOID.SERVER_AUTH in usages,
        client=x509.ExtendedKeyUsageOID.CLIENT_AUTH in usages,
        **({} if not_after is None else {"not_after": not_after}))
    write_certificate(pair, issued.cert, issued.key)


def _handshakes(port: int, pki: PkiPaths) -> bool:
    """Whether a client of the PKI (``app``) completes a TLS handshake at ``port`` (and
    its first read after it, where TLS 1.3 says the server's refusal)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(str(pki.ca.cert))
    context.load_cert_chain(str(pki.app.cert), str(pki.app.key))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw):
            return True
    except (OSError, ssl.SSLError):
        return False


def _readyz(port: int) -> tuple[int, dict]:
    status, body = scrape(port, "/readyz")
    return status, json.loads(body)


def test_an_expired_own_certificate_makes_core_and_gateway_unready(tmp_path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    pki = core.pki
    core.metrics_port = free_port()
    core.tls_settings = {"crl_refresh": REFRESH}
    core.write_config()
    gateway = GatewayProcess(tmp_path / "gateway", core, prewarm=("demo/app",), workers=2,
                             metrics_port=free_port(),
                             tls_settings={"crl_refresh": REFRESH})
    core.start()
    try:
        gateway.start()
        gateway.wait_linked()
        assert _readyz(core.metrics_port)[0] == 200
        wait_until(lambda: _readyz(gateway.metrics_port)[0] == 200, "the gateway ready")
        # Renewed to certificates that expire soon (taken while still in their dates,
        # within crl_refresh), whatever the starts took.
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=LIFETIME)
        _reissue(pki, pki.core, expires)
        _reissue(pki, pki.gateway, expires)
        wait_until(lambda: core.log.read_text().count("certificate serial") >= 1
                   and gateway.log.read_text().count("certificate serial") >= 2,
                   "the short certificates taken", timeout=LIFETIME / 2)
        assert _readyz(core.metrics_port)[0] == 200

        wait_until(lambda: _readyz(core.metrics_port)[0] == 503,
                   "the core unready once its certificate expired", timeout=LIFETIME + 10)
        body = _readyz(core.metrics_port)[1]
        assert body["database"] == "ok"  # (the database is not what is wrong)
        assert "expired at" in body["tls"] and "renew tls.cert" in body["tls"]
        assert body["tls"].isascii()
        # A client's handshake: it refuses the core's certificate, and the core's log
        # says it was its own certificate that was refused.
        assert not _handshakes(core.port, pki)
        wait_until(lambda: "the client refused this server's certificate (" in
                   core.log.read_text(), "the refusal logged", timeout=15)
        wait_until(lambda: _readyz(gateway.metrics_port)[0] == 503,
                   "the gateway unready once its certificate expired", timeout=10)
        workers = _readyz(gateway.metrics_port)[1]["workers"]
        assert len(workers) == 2
        assert all("expired at" in answer["reason"] for answer in workers.values()), workers

        _reissue(pki, pki.core, None)
        _reissue(pki, pki.gateway, None)
        wait_until(lambda: _readyz(core.metrics_port)[0] == 200,
                   "the core ready again on its renewed certificate", timeout=15)
        wait_until(lambda: _readyz(gateway.metrics_port)[0] == 200,
                   "the gateway ready again on its renewed certificate", timeout=15)
    finally:
        gateway.stop()
        core.stop()
