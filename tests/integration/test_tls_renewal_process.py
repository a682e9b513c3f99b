"""Renewed certificates taken without a restart, end to end: a kcm-core and a kcm-gateway
(two workers) whose certificate and key files are replaced while they run present the new
certificate at their next TLS handshakes (the core's KMIP and link listeners, the
gateway's KMIP listener, and the gateway's link, made again at once), the connections
already open keep being answered, and a renewal seen half written (the new key beside
the old certificate) is not taken until the certificate follows."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from kcm.conformance.client import KmipClient, KmipClientError
from kcm.pki import (
    CertKeyPaths,
    PkiPaths,
    certificate_pem,
    issue_certificate,
    issue_crl,
    load_ca,
    private_key_pem,
    write_certificate,
)
from kcm.testing.processes import GatewayProcess, deploy
from kcm.testing.requests import query, request
from tests.e2e_support import wait_until

REFRESH = 0.2


def _presented(port: int, pki: PkiPaths, who: CertKeyPaths) -> int | None:
    """The serial number of the certificate a new TLS handshake at ``port`` presents (a
    client of ``who`` trusting the PKI's CA), or None if the handshake failed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(str(pki.ca.cert))
    context.load_cert_chain(str(who.cert), str(who.key))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
    return x509.load_der_x509_certificate(der).serial_number if der else None


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def _answers(client: KmipClient) -> bool:
    """Whether ``client``'s open connection still answers a Query."""
    try:
        return bool(client.send(request(query())))
    except (KmipClientError, ssl.SSLError, OSError):
        return False


def _renewed(pki: PkiPaths, pair: CertKeyPaths) -> tuple[x509.Certificate, object]:
    """A new certificate and key of the same names as ``pair``'s, from the PKI's CA."""
    old = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    names = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    usages = old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    issued = issue_certificate(
        load_ca(pki.ca), "renewed", now=dt.datetime.now(dt.UTC),
        uris=names.get_values_for_type(x509.UniformResourceIdentifier),
        dns_names=names.get_values_for_type(x509.DNSName),
        ip_addresses=[str(ip) for ip in names.get_values_for_type(x509.IPAddress)],
        server=x509.ExtendedKeyUsageOID.SERVER_AUTH in usages,
        client=x509.ExtendedKeyUsageOID.CLIENT_AUTH in usages)
    return issued.cert, issued.key


def _replace(path: Path, data: bytes, mode: int) -> None:
    staged = path.with_name(f".{path.name}.new")
    staged.write_bytes(data)
    os.chmod(staged, mode)
    staged.replace(path)


def _write_crl(pki: PkiPaths, path: Path, revoked: list[x509.Certificate]) -> None:
    _replace(path, issue_crl(load_ca(pki.ca), revoked).public_bytes(Encoding.PEM), 0o644)


def test_renewed_certificates_are_presented_without_a_restart(tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    pki = core.pki
    crl = tmp_path / "core" / "crl.pem"
    _write_crl(pki, crl, [])
    settings = {"crl": str(crl), "crl_refresh": REFRESH}
    core.tls_settings = dict(settings)
    core.write_config()
    gateway = GatewayProcess(tmp_path / "gateway", core, prewarm=(), workers=2,
                             tls_settings=dict(settings))
    clients: list[KmipClient] = []
    core.start()
    try:
        gateway.start()
        gateway.wait_linked()
        for port in (core.port, gateway.port):
            client = KmipClient("127.0.0.1", port, cert=pki.app.cert, key=pki.app.key,
                                ca=pki.ca.cert, timeout=5)
            client.__enter__()
            clients.append(client)
            assert _answers(client)
        old_core = _serial(pki.core.cert)
        assert _presented(core.port, pki, pki.app) == old_core

        # The core's renewal, seen half written: the new key beside the old certificate.
        cert, key = _renewed(pki, pki.core)
        _replace(pki.core.key, private_key_pem(key), 0o600)
        wait_until(lambda: "is not the key of the certificate" in core.log.read_text(),
                   "the mismatched pair seen", timeout=10)
        time.sleep(5 * REFRESH)  # (looked at again and again meanwhile)
        assert _presented(core.port, pki, pki.app) == old_core
        assert core.log.read_text().count("is not the key of the certificate") == 1
        _replace(pki.core.cert, certificate_pem(cert), 0o644)
        wait_until(lambda: _presented(core.port, pki, pki.app) == cert.serial_number,
                   "the core's renewed certificate presented", timeout=10)
        assert _presented(core.link_port, pki, pki.gateway) == cert.serial_number
        assert all(_answers(client) for client in clients)  # the open connections

        # The gateway's renewal (each worker takes it), and its links: each worker makes
        # its link again with the new certificate at once, so the old gateway certificate,
        # then revoked, cuts no link (the core would refuse it at the handshake).
        old_gateway = x509.load_pem_x509_certificate(pki.gateway.cert.read_bytes())
        links = gateway.links()
        cert, key = _renewed(pki, pki.gateway)
        write_certificate(pki.gateway, cert, key)
        wait_until(lambda: gateway.log.read_text().count(
            f"certificate serial {cert.serial_number:x}") == 2,
                   "both workers took the renewed certificate", timeout=10)
        assert {_presented(gateway.port, pki, pki.app) for _ in range(6)} == \
            {cert.serial_number}
        gateway.wait_linked(more_than=links + 1, timeout=15)  # both links made again
        _write_crl(pki, crl, [old_gateway])
        wait_until(lambda: "1 revoked certificate(s) listed" in core.log.read_text(),
                   "the CRL taken", timeout=10)
        time.sleep(5 * REFRESH)
        assert "closed the gateway link connection" not in core.log.read_text()
        assert gateway.links() == links + 2
        assert _presented(gateway.port, pki, pki.app) == cert.serial_number
        assert all(_answers(client) for client in clients)
    finally:
        for client in clients:
            client.close()
        gateway.stop()
        core.stop()
