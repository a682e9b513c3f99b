"""tls.crl end to end: a kcm-core and a kcm-gateway configured with a CRL refuse a client
certificate it lists at the TLS handshake, serve the others (the gateway's link to the core
included, the core checking the gateway's certificate too), and take a new CRL written to
the file without a restart."""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from kcm.conformance.client import KmipClient, KmipClientError
from kcm.pki import PkiPaths, issue_crl, load_ca
from kcm.testing.processes import GatewayProcess, deploy
from kcm.testing.requests import query, request
from tests.e2e_support import wait_until


def _served(port: int, pki: PkiPaths, who: str) -> bool:
    """Whether a Query of ``who`` (one of the PKI's identities) is answered at ``port``."""
    pair = getattr(pki, who)
    try:
        with KmipClient("127.0.0.1", port, cert=pair.cert, key=pair.key, ca=pki.ca.cert,
                        timeout=5) as client:
            return bool(client.send(request(query())))
    except (KmipClientError, ssl.SSLError, ConnectionError):
        return False


def _revoke(pki: PkiPaths, path: Path, *whom: str) -> None:
    """Write a CRL of the PKI's CA listing the certificates of ``whom`` to ``path``."""
    certificates = [x509.load_pem_x509_certificate(getattr(pki, who).cert.read_bytes())
                    for who in whom]
    data = issue_crl(load_ca(pki.ca), certificates).public_bytes(Encoding.PEM)
    staged = path.with_suffix(".new")
    staged.write_bytes(data)
    staged.replace(path)  # (as an operator's tooling would: never half a file)


def test_a_revoked_client_certificate_is_refused_and_a_new_crl_taken_live(
        tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    crl = tmp_path / "core" / "crl.pem"
    _revoke(core.pki, crl, "app")
    settings = {"crl": str(crl), "crl_refresh": 0.2}
    core.tls_settings = dict(settings)
    core.write_config()
    checked = core.kcm("config", "check", check=False)
    assert "core.tls.crl: 1 CRL(s) of the CAs of" in checked.stdout, checked.stdout
    gateway = GatewayProcess(tmp_path / "gateway", core, prewarm=(),
                             tls_settings=dict(settings))
    core.start()
    try:
        gateway.start()
        gateway.wait_linked()  # the core took the gateway's certificate: not revoked
        for port in (core.port, gateway.port):
            assert not _served(port, core.pki, "app")
            assert _served(port, core.pki, "other_app")
        _revoke(core.pki, crl, "app", "other_app")
        for port in (core.port, gateway.port):
            wait_until(lambda port=port: not _served(port, core.pki, "other_app"),
                       "the new CRL taken", timeout=10)
            assert _served(port, core.pki, "admin")
        assert "tls.crl:" in core.log.read_text() and "read again" in core.log.read_text()
    finally:
        gateway.stop()
        core.stop()


def test_a_crl_no_ca_of_the_bundle_signed_stops_the_start(tmp_path: Path) -> None:
    import datetime as dt

    from kcm.pki import new_ca

    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    crl = tmp_path / "core" / "crl.pem"
    stranger = new_ca("Another CA", now=dt.datetime.now(dt.UTC))
    crl.write_bytes(issue_crl(stranger, []).public_bytes(Encoding.PEM))
    core.tls_settings = {"crl": str(crl)}
    core.write_config()
    try:
        core.start()
    except RuntimeError:
        pass
    else:
        core.stop()
        raise AssertionError("kcm-core started with a CRL of another CA")
    assert "which no CA of" in core.log.read_text()
