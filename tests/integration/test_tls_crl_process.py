"""tls.crl end to end: a kcm-core and a kcm-gateway configured with a CRL refuse a client
certificate it lists at the TLS handshake, serve the others (the gateway's link to the core
included, the core checking the gateway's certificate too), and take a new CRL written to
the file without a restart, cutting the connections already open of a certificate it
lists."""

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


def _answers(client: KmipClient) -> bool:
    """Whether ``client``'s open connection still answers a Query."""
    try:
        return bool(client.send(request(query())))
    except (KmipClientError, ssl.SSLError, OSError):
        return False


def test_open_connections_of_a_certificate_a_new_crl_lists_are_cut(tmp_path: Path) -> None:
    """The CRL read again cuts the connections already open of a certificate it lists, not
    only new handshakes: an application's KMIP connection at the core and at the gateway,
    then the gateway's link at the core (GOAWAY; its next link refused at the handshake),
    each within the refresh interval and a margin, with one line naming the identity and
    the serial; the other connections keep being answered."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    crl = tmp_path / "core" / "crl.pem"
    _revoke(core.pki, crl)
    refresh = 0.2
    settings = {"crl": str(crl), "crl_refresh": refresh}
    core.tls_settings = dict(settings)
    core.write_config()
    gateway = GatewayProcess(tmp_path / "gateway", core, prewarm=(),
                             tls_settings=dict(settings))
    pki = core.pki
    app, other = pki.app, pki.other_app
    core.start()
    clients: list[KmipClient] = []
    try:
        gateway.start()
        gateway.wait_linked()

        def opened(port: int, pair) -> KmipClient:
            client = KmipClient("127.0.0.1", port, cert=pair.cert, key=pair.key,
                                ca=pki.ca.cert, timeout=5)
            client.__enter__()
            clients.append(client)
            assert _answers(client)
            return client

        at_core, at_gateway = opened(core.port, app), opened(gateway.port, app)
        others = [opened(core.port, other), opened(gateway.port, other)]
        _revoke(pki, crl, "app")
        for client in (at_core, at_gateway):
            took = wait_until(lambda client=client: not _answers(client),
                              "the open connection cut", timeout=refresh + 5)
            assert took < refresh + 5
        assert all(_answers(client) for client in others)
        serial = f"{x509.load_pem_x509_certificate(app.cert.read_bytes()).serial_number:x}"
        for log in (core.log, gateway.log):
            lines = [line for line in log.read_text().splitlines()
                     if "tls.crl: closed the KMIP connection of" in line]
            assert len(lines) == 1, lines
            assert "spiffe://" in lines[0] and f"(serial {serial}) is revoked" in lines[0]
        assert "closed the gateway link" not in core.log.read_text()

        links = gateway.links()
        _revoke(pki, crl, "app", "gateway")
        wait_until(lambda: "tls.crl: closed the gateway link connection of spiffe://"
                   in core.log.read_text(), "the gateway's link cut", timeout=refresh + 5)
        wait_until(lambda: "certificate revoked" in gateway.log.read_text(),
                   "the gateway told why", timeout=5)
        # Its next link is refused at the handshake (the core logs the failed handshake).
        wait_until(lambda: "TLS handshake(s) failed" in core.log.read_text(),
                   "the gateway's next link refused", timeout=10)
        assert gateway.links() == links
        assert _answers(others[0])  # the other application's connection at the core
    finally:
        for client in clients:
            client.close()
        gateway.stop()
        core.stop()
