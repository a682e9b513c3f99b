"""A connection a server closes (idle, or stopping) is gone at once, though its client holds
it without reading: the server sends close_notify and closes, not waiting for the client's
own close_notify, which a pooled connection at rest never sends. Before, such connections
stayed open and counted (against max_connections too) until the client read, and every stop
with one connected waited out its whole drain_timeout."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from kcm.drain import DRAIN_TIMEOUT
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
                   "the core closing its idle connections", timeout=IDLE + 3)
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
            assert took < DRAIN_TIMEOUT / 2, f"{type(server).__name__} took {took:.2f} s"
            server.process = None
            for client in held:
                client.close()
    finally:
        gateway.stop()
        core.stop()
