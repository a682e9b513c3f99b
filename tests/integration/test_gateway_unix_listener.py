"""kcm-gateway's workers on a ``unix:`` listener keep its path and its mode: the socket the
supervisor bound (``mode=600``) stays 0600 once the workers adopt it (Twisted's port made it
0666), and stays in place through a rolling restart (SIGHUP), every worker started again
and the path served (a stopping worker removed it: nobody could connect any more, and no
worker could start again). Real processes, kcm's client over the Unix socket."""

from __future__ import annotations

import os
import re
import signal
import stat
from pathlib import Path

from kcm.testing.processes import GatewayProcess
from kcm.testing.unix_client import UnixKmipClient
from tests.e2e_support import deploy, succeeded_v21, wait_until
from tests.gateway_support import locate


def _served(gateway: GatewayProcess, path: str) -> bool:
    pki = gateway.pki
    try:
        with UnixKmipClient(path, cert=pki.app.cert, key=pki.app.key, ca=pki.ca.cert,
                            timeout=5) as client:
            succeeded_v21(client, locate())
        return True
    except Exception:  # noqa: BLE001 - not (yet) served
        return False


def test_workers_keep_the_unix_listeners_path_and_mode(tmp_path: Path) -> None:
    path = str(tmp_path / "kmip.sock")
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(tmp_path / "gateway", core, workers=2,
                             settings={"pin_workers": "never"})
    gateway.write_config()
    gateway.config.write_text(re.sub(r"^listen = .*$", f'listen = "unix:{path}:mode=600"',
                                     gateway.config.read_text(), flags=re.M))
    core.start()
    try:
        gateway.spawn()
        wait_until(lambda: _served(gateway, path), "the gateway to serve on its socket", 30)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "every kcm-gateway worker was restarted" in gateway.log.read_text(),
                   "the rolling restart to end", timeout=60)
        log = gateway.log.read_text()
        assert "did not start" not in log and "restart of the kcm-gateway workers stops" \
            not in log
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        for _ in range(10):  # each connection to a worker, of either
            assert _served(gateway, path)
    finally:
        gateway.stop()
        core.stop()
    assert not os.path.exists(path)  # the supervisor, which bound it, removes it
