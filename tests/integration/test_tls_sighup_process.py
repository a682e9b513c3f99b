"""SIGHUP makes the TLS files' look at once, end to end: with ``tls.crl_refresh`` an hour, a
kcm-core and a single kcm-gateway process (workers = 1) whose certificate and key are
renewed present the new certificate at a new TLS handshake within a second of a SIGHUP;
with workers, the supervisor's rolling restart does it (each new worker reads the files as
it starts)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509

from kcm.pki import write_certificate
from kcm.testing.processes import CoreProcess, GatewayProcess, deploy
from tests.e2e_support import wait_until
from tests.integration.test_tls_renewal_process import _presented, _renewed, _serial

#: A tick far away: only the SIGHUP can make the look within the test.
HOUR = {"crl_refresh": 3600}


def _seen_within(port: int, pki, serial: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _presented(port, pki, pki.app) == serial:
            return True
        time.sleep(0.05)
    return False


def test_a_sighup_takes_renewed_certificates_at_once(tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    pki = core.pki
    core.tls_settings = dict(HOUR)
    core.write_config()
    gateway = GatewayProcess(tmp_path / "gateway", core, prewarm=(),
                             tls_settings=dict(HOUR))
    core.start()
    try:
        gateway.start()
        gateway.wait_linked()
        old_core = _serial(pki.core.cert)
        cert, key = _renewed(pki, pki.core)
        write_certificate(pki.core, cert, key)
        time.sleep(0.5)
        assert _presented(core.port, pki, pki.app) == old_core  # (no tick meanwhile)
        core.process.send_signal(signal.SIGHUP)
        assert _seen_within(core.port, pki, cert.serial_number, 1.0)
        assert _presented(core.link_port, pki, pki.gateway) == cert.serial_number
        log = core.log.read_text()
        assert f"certificate serial {cert.serial_number:x}" in log
        # The policy reload as before.
        wait_until(lambda: "policy reload: " in core.log.read_text()
                   and "is unchanged" in core.log.read_text(), "the policy reload")
        core.process.send_signal(signal.SIGHUP)  # unchanged: one line says so
        wait_until(lambda: "tls: SIGHUP:" in core.log.read_text()
                   and "are unchanged" in core.log.read_text(), "the unchanged look")

        old_gateway = x509.load_pem_x509_certificate(pki.gateway.cert.read_bytes())
        cert, key = _renewed(pki, pki.gateway)
        write_certificate(pki.gateway, cert, key)
        assert _presented(gateway.port, pki, pki.app) == old_gateway.serial_number
        gateway.process.send_signal(signal.SIGHUP)
        assert _seen_within(gateway.port, pki, cert.serial_number, 1.0)
        assert gateway.process.poll() is None
        assert "looks at its TLS files now" in gateway.log.read_text()
    finally:
        gateway.stop()
        core.stop()


@contextmanager
def _linked_with_workers(tmp_path: Path) -> Iterator[tuple[CoreProcess, GatewayProcess]]:
    """A started kcm-core and a kcm-gateway of two workers linked to it (its certificates
    looked at every hour, so only a SIGHUP renews them); both stopped on the way out."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(tmp_path / "gateway", core, prewarm=(), workers=2,
                             tls_settings=dict(HOUR))
    core.start()
    try:
        gateway.start()
        gateway.wait_linked()
        yield core, gateway
    finally:
        gateway.stop()
        core.stop()


def test_a_sighup_to_a_gateway_with_workers_restarts_them_on_the_renewed_files(
        tmp_path: Path) -> None:
    with _linked_with_workers(tmp_path) as (core, gateway):
        pki = core.pki
        cert, key = _renewed(pki, pki.gateway)
        write_certificate(pki.gateway, cert, key)
        gateway.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "every kcm-gateway worker was restarted" in gateway.log.read_text(),
                   "the rolling restart to finish", timeout=60.0)
        assert {_presented(gateway.port, pki, pki.app) for _ in range(6)} == \
            {cert.serial_number}


def test_a_sighup_to_a_gateway_with_workers_closes_its_open_client_connections(
        tmp_path: Path) -> None:
    """What docs/operations.md ("Certificates") says of a renewal hook's SIGHUP to a
    gateway with workers: its rolling restart closes every client connection (each worker
    drains as it stops), so a client's connection held through it is answered no more and
    the client reconnects, to the renewed certificate; the look by the tick keeps them
    (test_tls_renewal_process.py)."""
    from kcm.conformance.client import KmipClientError
    from kcm.testing.requests import query, request

    with _linked_with_workers(tmp_path) as (core, gateway):
        pki = core.pki
        held = [gateway.client("app") for _ in range(4)]  # two on each worker

        def answers(client) -> bool:
            try:
                return bool(client.send(request(query())))
            except (KmipClientError, OSError):
                return False

        assert all(answers(client) for client in held)
        cert, key = _renewed(pki, pki.gateway)
        write_certificate(pki.gateway, cert, key)
        gateway.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "every kcm-gateway worker was restarted" in gateway.log.read_text(),
                   "the rolling restart to finish", timeout=60.0)
        assert not any(answers(client) for client in held)
        for client in held:
            client.close()
        assert _presented(gateway.port, pki, pki.app) == cert.serial_number
