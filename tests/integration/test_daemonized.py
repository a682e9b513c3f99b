"""A daemonized twistd (no ``-n``) with ``log_file = "-"`` logs to twistd's ``--logfile``
(``twistd.log`` by default), not to the ``/dev/null`` a daemon's standard output is: a core,
and a gateway with workers (whose lines land in the same file). Real daemons, stopped by
the pid files they wrote."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from kcm.kmip.enums import ResultStatus
from kcm.testing.processes import BIN, GatewayProcess, process_env
from tests.e2e_support import deploy, wait_until
from tests.gateway_support import create_l4, request, response


def _daemon(plugin: str, config: Path, cwd: Path, *twistd_options: str) -> Path:
    """Start ``twistd PLUGIN -c CONFIG`` as a daemon in ``cwd``; its pid file."""
    pidfile = cwd / f"{plugin}.pid"
    run = subprocess.run([str(BIN / "twistd"), f"--pidfile={pidfile}", *twistd_options,
                          plugin, "-c", str(config)],
                         cwd=cwd, env=process_env(), capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    wait_until(pidfile.exists, f"{plugin} to write its pid file")
    return pidfile


def _stop(pidfile: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_daemons_log_to_twistds_logfile(tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.write_config()
    assert "log_file" not in core.config.read_text()  # "-": standard output
    gateway = GatewayProcess(tmp_path / "gateway", core, workers=2)
    gateway.write_config()
    pidfiles: list[Path] = []
    try:
        pidfiles.append(_daemon("kcm-core", core.config, core.root))
        core_log = core.root / "twistd.log"  # twistd's default
        wait_until(lambda: core_log.exists() and "kcm-core listening on" in core_log.read_text(),
                   "the core's log in twistd.log", timeout=30)
        assert core_log.stat().st_mode & 0o777 == 0o600
        assert all(line["level"] for line in _lines(core_log))  # KCM's JSON lines

        gateway_log = tmp_path / "gateway.log"
        pidfiles.append(_daemon("kcm-gateway", gateway.config, gateway.root,
                                f"--logfile={gateway_log}"))
        wait_until(lambda: gateway_log.exists() and gateway_log.read_text().count(
            "kcm-gateway listening on") >= 2, "both workers' lines in --logfile", timeout=30)
        with gateway.client("app") as app:
            [answer] = response(app.send(request(create_l4()))).batch_items
            assert answer.result_status == ResultStatus.SUCCESS
        workers = {line.get("worker") for line in _lines(gateway_log)}
        assert {1, 2} <= workers, workers
        assert not (gateway.root / "twistd.log").exists()
    finally:
        for pidfile in reversed(pidfiles):
            _stop(pidfile)
