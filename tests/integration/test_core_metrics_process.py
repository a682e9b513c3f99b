"""What a real `twistd kcm-core` reports of its writer and background work, scraped over
HTTP: group commits (time, size), waits for the writers' lock, the audit head and the
newest checkpoint, the state sweeper's lease, last sweep and failures, what each tenant
stores against its bound; and its ``/readyz``
while another process holds the SQLite file's write lock (503, "not writable"), as every
write then fails, and 200 again once it lets go."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm.kmip.enums import ResultStatus
from kcm.testing.processes import CoreProcess, deploy, free_port, scrape
from tests.e2e_support import last_seq, wait_until
from tests.gateway_support import create_managed, request, response
from tests.integration.test_metrics_process import metrics, moved, ok, ready

HEAD = ("kcm_core_audit_head", ())
CHECKPOINT_HEAD = ("kcm_core_audit_checkpoint_head", ())
CHECKPOINT_AT = ("kcm_core_audit_checkpoint_timestamp_seconds", ())
LEASE = ("kcm_core_sweeper_lease_held", ())
LAST_SWEEP = ("kcm_core_sweeper_last_sweep_timestamp_seconds", ())
SWEEPS_FAILED = ("kcm_core_sweeps_failed_total", ())


@pytest.fixture
def core(tmp_path: Path) -> Iterator[CoreProcess]:
    """A kcm-core on a SQLite file with its metrics listener, sweeping every 0.5 s."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.metrics_port = free_port()
    core.state_sweep_interval = 0.5
    core.write_config()
    started = time.time()
    core.start()
    core.started_at = started  # type: ignore[attr-defined]
    try:
        yield core
    finally:
        core.stop()


def test_the_core_reports_its_group_commits_lock_waits_audit_head_and_sweeper(
        core: CoreProcess) -> None:
    port = core.metrics_port
    assert port is not None
    wait_until(lambda: metrics(port).get(CHECKPOINT_AT, 0) > 0, "the start's checkpoint")
    wait_until(lambda: metrics(port)[LAST_SWEEP] > 0, "the first sweep")
    before = metrics(port)
    with core.client() as client:
        for _ in range(3):
            ok(client.send(request(create_managed())))
    after = metrics(port)
    groups = "kcm_core_group_commit_duration_seconds_count"
    assert moved(before, after, groups, result="committed") >= 1
    assert moved(before, after, "kcm_core_group_commit_jobs_sum") >= 3  # (sweeps' too)
    assert moved(before, after, "kcm_core_group_commit_jobs_count") == moved(
        before, after, groups, result="committed")
    waits = "kcm_core_writer_lock_wait_seconds_count"
    assert moved(before, after, waits, lock="database") >= 1
    assert moved(before, after, waits, lock="process") >= 1
    # The head is the newest record in the database (nothing else writes it here), read
    # from memory; the checkpoint at the start named the head then.
    assert after[HEAD] == last_seq(core) > before[HEAD]
    assert 0 < after[CHECKPOINT_HEAD] <= before[HEAD]
    assert core.started_at <= after[CHECKPOINT_AT] <= time.time()  # type: ignore[attr-defined]
    assert after[LEASE] == 1  # SQLite: this core always holds it
    assert core.started_at <= after[LAST_SWEEP] <= time.time()  # type: ignore[attr-defined]
    assert after[SWEEPS_FAILED] == 0
    wait_until(lambda: metrics(port)[LAST_SWEEP] > after[LAST_SWEEP], "the next sweep")
    # What each tenant stores against its bound, as read at the start (every 30 s).
    for tenant in ("demo", "other"):  # (a tenant key and a service key each)
        assert after[("kcm_core_tenant_stored_objects", (("tenant", tenant),))] == 2
        assert after[("kcm_core_tenant_max_objects", (("tenant", tenant),))] == 1_000_000


def test_readiness_while_another_process_holds_the_sqlite_write_lock(
        core: CoreProcess) -> None:
    port = core.metrics_port
    assert port is not None
    assert ready(port)[0] == 200
    before = metrics(port)
    shell = sqlite3.connect(core.database.removeprefix("sqlite:///"), isolation_level=None)
    shell.execute("BEGIN EXCLUSIVE")  # what a `sqlite3` shell holding the file does
    try:
        status, body = ready(port)
        assert status == 503 and body["ready"] is False, body
        assert body["database"] == "not writable: database is locked", body
        assert scrape(port, "/healthz")[0] == 200  # alive all the same
        with core.client() as client:  # and every write fails, after the busy timeout
            [item] = response(client.send(request(create_managed()))).batch_items
        assert item.result_status == ResultStatus.OPERATION_FAILED
        assert "the key store is unavailable" in item.result_message
        during = metrics(port)
    finally:
        shell.execute("ROLLBACK")
        shell.close()
    let_go = time.time()
    wait_until(lambda: ready(port)[0] == 200, "readiness once the lock is let go")
    assert ready(port)[1]["database"] == "ok"
    # Sweeps failed meanwhile (the writer's group fails whole when its lock never comes),
    # and the waits of 5 s (SQLite's busy timeout) were observed.
    assert during[SWEEPS_FAILED] >= 1
    waits = "kcm_core_writer_lock_wait_seconds"
    database = (("lock", "database"),)
    long_waits = (moved(before, during, f"{waits}_count", lock="database")
                  - (during[(f"{waits}_bucket", (("le", "2.5"), *database))]
                     - before[(f"{waits}_bucket", (("le", "2.5"), *database))]))
    assert long_waits >= 1
    assert during[LAST_SWEEP] < let_go
    wait_until(lambda: metrics(port)[LAST_SWEEP] > let_go, "a sweep once the lock is gone")
