"""Operator mistakes a running deployment must refuse clearly or survive (real processes)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.e2e_support import CoreProcess, deploy, refusals, send_v21
from tests.gateway_support import create_managed


def test_a_second_core_on_one_sqlite_file_does_not_start_and_the_first_serves_on(
        tmp_path: Path) -> None:
    """A manual run beside the service (or two replicas on one volume): the second kcm-core
    exits at once saying which process serves the file; the first serves on, the `kcm`
    commands keep working beside it, and once it is killed the file is free again."""
    first = deploy(tmp_path / "core1", f"sqlite:///{tmp_path / 'core1' / 'kcm.db'}")
    second = first.replica(tmp_path / "core2")
    third: CoreProcess | None = None
    try:
        first.start()
        assert first.process is not None
        second.spawn()
        assert second.process is not None
        assert second.process.wait(timeout=30) == 1
        database = os.path.realpath(tmp_path / "core1" / "kcm.db")
        assert (f"kcm-core did not start: kcm-sqlite-owner: another kcm-core (pid "
                f"{first.process.pid}) serves {database}: stop it first; one kcm-core per "
                "SQLite file (several cores need PostgreSQL, docs/deploy.md)"
                ) in second.log.read_text()
        first.kcm("core", "tenant", "add", "third")
        assert "audit log intact" in first.kcm("audit", "verify").stdout
        with first.client("app") as client:
            assert refusals(send_v21(client, create_managed())) == [None]
        first.stop(signal.SIGKILL)  # the kernel drops the lock with the process
        third = first.replica(tmp_path / "core3")
        third.start()
        with third.client("app") as client:
            assert refusals(send_v21(client, create_managed())) == [None]
    finally:
        for core in (first, second, third):
            if core is not None:
                core.stop()
