"""How a server closes a connection (idle, stopping, or refusing a request too large).

It sends its answers and close_notify, then waits for the client's close_notify while it
reads and drops what the client still sends: a client that sends a request too large whole
before reading reads its refusal (closing on its unread bytes would send a reset that loses
it). But a client that holds the connection without reading (a pooled connection at rest)
never answers: the connection is cut CLOSE_LINGER seconds after its answers have gone.
Before, such connections stayed open and counted (against max_connections too) until the
client read, and every stop with one connected waited out its whole drain_timeout."""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest

from kcm.drain import DRAIN_TIMEOUT
from kcm.kmip.enums import ResultReason
from kcm.kmip_protocol import CLOSE_LINGER
from kcm.testing.processes import free_port
from kcm.testing.requests import query, request, response
from tests.e2e_support import GatewayProcess, deploy, wait_until
from tests.integration.test_metrics_process import metrics

IDLE = 1.0


def silent_clients(server, count: int) -> list:
    """``count`` connections that each send one request, read its answer, and then hold
    the connection without reading or closing it (a pool at rest)."""
    held = []
    for _ in range(count):
        client = server.client()
        client.connect()
        assert response(client.send(request(query()))).batch_items
        held.append(client)
    return held


def test_idle_connections_are_gone_soon_after_the_idle_timeout(tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}",
                  idle_timeout=IDLE)
    core.metrics_port = free_port()
    core.write_config()
    core.start()
    try:
        held = silent_clients(core, 5)
        assert metrics(core.metrics_port)[("kcm_core_open_connections", ())] == 5
        wait_until(lambda: metrics(core.metrics_port)[("kcm_core_open_connections", ())] == 0,
                   "the core closing its idle connections", timeout=IDLE + CLOSE_LINGER + 2)
        for client in held:
            client.close()
    finally:
        core.stop()


def test_a_stop_with_idle_clients_connected_takes_far_less_than_its_drain_timeout(
        tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(tmp_path / "gateway", core)
    core.start()
    gateway.start()
    try:
        for server in (gateway, core):
            held = silent_clients(server, 3)
            process = server.process
            assert process is not None
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
            took = time.monotonic() - started
            # (0.5 s idle grace, then CLOSE_LINGER: not the whole drain_timeout)
            assert took < DRAIN_TIMEOUT - 1, f"{type(server).__name__} took {took:.2f} s"
            server.process = None
            for client in held:
                client.close()
    finally:
        gateway.stop()
        core.stop()


@pytest.mark.parametrize("plane", ["core", "gateway"])
def test_a_request_too_large_sent_whole_before_reading_reads_its_refusal(
        tmp_path: Path, plane: str) -> None:
    """As PyKMIP or any blocking client does: the whole request written, then the answer
    read. The server refuses it from its header and closes; the client, still sending,
    must not get a reset instead of the refusal."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(tmp_path / "gateway", core)
    core.start()
    gateway.start()
    try:
        server = core if plane == "core" else gateway
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(cafile=str(server.pki.ca.cert))
        context.load_cert_chain(certfile=str(server.pki.app.cert), keyfile=str(server.pki.app.key))
        size = 8 << 20
        received = bytearray()
        with contextlib.closing(context.wrap_socket(
                socket.create_connection(("127.0.0.1", server.port)),
                server_hostname="127.0.0.1")) as sock:
            sock.settimeout(15)
            sock.sendall(bytes.fromhex("42007801") + size.to_bytes(4, "big") + bytes(size))
            while chunk := sock.recv(65536):
                received += chunk
        [refused] = response(bytes(received)).batch_items
        assert refused.result_reason == ResultReason.INVALID_MESSAGE
        assert refused.result_message.startswith("request too large")
    finally:
        gateway.stop()
        core.stop()
