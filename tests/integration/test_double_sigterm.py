"""A second SIGTERM while kcm-core or a one-process kcm-gateway stops is logged, not another
stop: Twisted's handler called reactor.stop again and logged ReactorNotRunning as a
critical traceback (kcm.stop_signals). The process ends as a first SIGTERM ends it."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from kcm.conformance.client import KmipClient
from kcm.testing.processes import CoreProcess, GatewayProcess, deploy
from kcm.testing.requests import query, request


def _twice(process, log: Path, port: int, core: CoreProcess) -> None:  # noqa: ANN001
    # A client's idle connection holds the drain open for half a second (its idle grace),
    # long enough for the second signal to come while the process stops.
    with KmipClient("127.0.0.1", port, cert=core.pki.app.cert, key=core.pki.app.key,
                    ca=core.pki.ca.cert) as client:
        client.send(request(query()))
        process.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == -signal.SIGTERM
    text = log.read_text()
    assert "while stopping (after SIGTERM): the stop goes on" in text, text[-2000:]
    assert '"level": "critical"' not in text and "ReactorNotRunning" not in text, \
        text[-2000:]


def test_a_second_sigterm_is_not_a_second_stop(tmp_path: Path) -> None:
    core: CoreProcess = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.start()
    gateway = GatewayProcess(tmp_path / "gateway", core)
    try:
        gateway.start()
        gateway.wait_linked()
        process, gateway.process = gateway.process, None
        _twice(process, gateway.log, gateway.port, core)
        process, core.process = core.process, None
        _twice(process, core.log, core.port, core)
    finally:
        gateway.stop()
        core.stop()
