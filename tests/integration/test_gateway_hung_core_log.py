"""A kcm-gateway whose only core hangs (SIGSTOP: its kernel completes the TCP connections,
the TLS handshake never finishes) tries it again every 3 s or so, and says so in one warning
every 30 s at most, not one per attempt (a core hung for a night wrote 1,200 lines an hour
per worker). Serving L4 work from its keys meanwhile, it links again once the core runs."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from kcm.kmip.enums import ResultStatus
from kcm.testing.processes import running
from kcm.testing.requests import create_l4, encrypt, request, response
from tests.e2e_support import CoreProcess, GatewayProcess, deploy, wait_until

#: Seconds the core is held stopped: three or four attempts of the gateway.
HUNG_FOR = 12.0

pytestmark = pytest.mark.serial  # (timings)


def warnings(gateway: GatewayProcess) -> list[str]:
    lines = []
    for line in gateway.log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("level") in ("warn", "error", "critical"):
            lines.append(event.get("text", ""))
    return lines


def test_a_hung_core_is_tried_again_and_said_once(tmp_path: Path) -> None:
    core: CoreProcess = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(tmp_path / "gateway", core)
    with running(core, gateway), gateway.client() as client:
        [created] = response(client.send(request(create_l4()))).batch_items
        token = created.response_payload.unique_identifier
        assert core.process is not None
        core.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            while time.monotonic() - started < HUNG_FOR:
                [sealed] = response(client.send(request(encrypt(token, b"x")))).batch_items
                assert sealed.result_status == ResultStatus.SUCCESS
                time.sleep(0.5)
        finally:
            core.process.send_signal(signal.SIGCONT)
        wait_until(lambda: "reached again after" in gateway.log.read_text(),
                   "the gateway to link again", timeout=15)
    said = [line for line in warnings(gateway) if "link" in line]
    attempts = [line for line in said if "WELCOME" in line]
    # The link found dead and lost, the spell of failures' first cause (the heartbeats)
    # and its changed cause (no WELCOME: a new cause is said at once), nothing per attempt
    # after it.
    assert len(attempts) <= 1, said
    assert len(said) <= 4, said
    assert "failed attempt(s)" in gateway.log.read_text()
