"""What a kcm-core on PostgreSQL tells its operator while the server is stopped, with a real
cluster of its own stopped under it: the state sweeps it cannot run (the lease cannot be
asked for) count in ``kcm_core_sweeps_failed_total``, as documented (they did not: the
ask's failure read as "another core holds the lease"), and each audit checkpoint it cannot
make is one error line naming the cause (it was a critical line with a traceback of some
sixty lines, every interval, as for a bug)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kcm.testing.postgres import Cluster
from kcm.testing.processes import CoreProcess, deploy, free_port
from tests.e2e_support import wait_until
from tests.integration.test_metrics_process import metrics
from tests.pg import own_cluster  # noqa: F401  (fixture)

#: Waits for things that happen within seconds: run alone.
pytestmark = pytest.mark.serial

SWEEPS_FAILED = ("kcm_core_sweeps_failed_total", ())
LAST_SWEEP = ("kcm_core_sweeper_last_sweep_timestamp_seconds", ())
UNAVAILABLE_CHECKPOINT = "no audit checkpoint: the key store is unavailable ("


def test_a_stopped_postgresql_fails_sweeps_and_checkpoints_in_one_line_each(
        own_cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    cluster = own_cluster
    core: CoreProcess = deploy(tmp_path / "core", cluster.url)
    core.metrics_port = port = free_port()
    core.state_sweep_interval = 0.5
    core.audit_checkpoint_interval = 1.0
    core.write_config()
    core.start()
    try:
        wait_until(lambda: metrics(port)[LAST_SWEEP] > 0, "the first sweep")
        assert metrics(port)[SWEEPS_FAILED] == 0

        cluster.run("pg_ctl", "-D", str(cluster.data), "-m", "fast", "-w", "-t", "60", "stop")
        try:
            wait_until(lambda: metrics(port)[SWEEPS_FAILED] >= 2,
                       "the sweeps that could not ask for the lease counted", timeout=15)
            wait_until(lambda: core.log.read_text().count(UNAVAILABLE_CHECKPOINT) >= 2,
                       "the checkpoints not made said", timeout=15)
        finally:
            cluster.run("pg_ctl", "-D", str(cluster.data), "-l", str(cluster.log), "-w",
                        "-t", "60", "start")
        checkpoints = [line for line in _lines(core.log)
                       if line.get("namespace") == "kcm.audit.checkpoint"
                       and "no audit checkpoint" in line.get("text", "")]
        assert checkpoints
        assert all(line["level"] == "error" and "Traceback" not in line["text"]
                   and "\n" not in line["text"] for line in checkpoints), checkpoints[0]
        failed = metrics(port)[SWEEPS_FAILED]
        wait_until(lambda: "holds the state sweeper lease" in core.log.read_text()
                   and core.log.read_text().count("holds the state sweeper lease") >= 2,
                   "the lease held again", timeout=20)
        swept = metrics(port)[LAST_SWEEP]
        wait_until(lambda: metrics(port)[LAST_SWEEP] > swept, "a sweep again", timeout=10)
        assert metrics(port)[SWEEPS_FAILED] <= failed + 1  # (no more once it is back)
    finally:
        core.stop()


def _lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
