"""A kcm-core frozen (SIGSTOP: a stuck process or VM) while it holds the writers' lock on
PostgreSQL holds up the other cores' writes only until its silence ends its session
(``idle_in_transaction_session_timeout``, or the waiting writer ending a session stopped
mid-pipeline), and, thawed, it serves again: its writer reconnects, the requests it had
in flight are answered. One real core; the other core's writer is this process's Store."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from kcm.cli import main as kcm_command
from kcm.core.store import repository
from kcm.core.store.engine import IDLE_IN_TRANSACTION_S, Store
from kcm.kmip.enums import ResultStatus
from kcm.pki import init_pki
from kcm.testing.postgres import fresh_database
from kcm.testing.processes import CoreProcess
from tests.e2e_support import send_v21
from tests.gateway_support import create_managed
from tests.pg import postgres_url  # noqa: F401  (fixture)

#: Asserts timings: run alone, after the parallel part.
pytestmark = pytest.mark.serial

_HOLDER = (
    "SELECT a.pid, a.state FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    f"AND l.classid = {repository.WRITER_LOCK_KEY >> 32} "
    f"AND l.objid = {repository.WRITER_LOCK_KEY & 0xFFFFFFFF} "
    "AND a.datname = current_database()")


def _deploy(root: Path, url: str) -> CoreProcess:
    """:func:`kcm.testing.processes.deploy`'s core with tenant demo and its service app,
    the `kcm` commands run in this process (each of its own takes seconds to start)."""
    root.mkdir(mode=0o700)
    init_pki(root / "pki")
    core = CoreProcess(root, url)
    core.write_config()
    for command in (["core", "init"], ["core", "tenant", "add", "demo"],
                    ["core", "service", "add", "demo", "app"]):
        assert kcm_command([*command, "-c", str(core.config)]) == 0
    return core


def test_a_core_frozen_holding_the_writers_lock_stops_no_other_core_and_recovers(
        tmp_path: Path, postgres_url: str) -> None:  # noqa: F811
    url = fresh_database(postgres_url, f"kcm_frozen_{os.getpid()}")
    core = _deploy(tmp_path / "core", url)
    other_core = Store(url)  # the writer of another core
    stop = threading.Event()
    answers: list[ResultStatus] = []
    frozen = False
    try:
        core.start()

        def load() -> None:
            with core.client("app") as app:
                while not stop.is_set():
                    answers.extend(a.result_status for a in send_v21(app, *[create_managed()] * 8))

        loads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
        for thread in loads:
            thread.start()
        time.sleep(0.5)
        with other_core.engine.connect() as watch:
            for _ in range(200):  # stop the core while its session holds the lock
                core.process.send_signal(signal.SIGSTOP)
                time.sleep(0.02)
                held = watch.execute(text(_HOLDER)).first()
                watch.rollback()
                if held is not None:
                    frozen = True
                    break
                core.process.send_signal(signal.SIGCONT)
                time.sleep(0.01)
        assert frozen, "the core was never caught inside a write transaction"
        began = time.monotonic()
        wrote = threading.Thread(  # takes the writers' lock, commits
            target=lambda: other_core.run_sync(lambda session: None), daemon=True)
        wrote.start()
        wrote.join(IDLE_IN_TRANSACTION_S + repository.WRITERS_LOCK_LOOK_S + 1.0)
        waited = time.monotonic() - began
        print(f"\nfrozen holding the lock ({held.state}); the other core wrote after "
              f"{waited:.1f}s")
        assert not wrote.is_alive(), "the frozen core's lock held every other writer up"

        core.process.send_signal(signal.SIGCONT)
        frozen = False
        stop.set()
        for thread in loads:
            thread.join(15)
            assert not thread.is_alive(), "a request in flight at the freeze got no answer"
        # What it had in flight failed cleanly (or committed before the freeze); it serves
        # again, on a new session.
        assert set(answers) <= {ResultStatus.SUCCESS, ResultStatus.OPERATION_FAILED}
        with core.client("app") as app:
            assert [a.result_status for a in send_v21(app, create_managed())] == [
                ResultStatus.SUCCESS]
        assert core.process.poll() is None
        assert "Unhandled" not in core.log.read_text()
    finally:
        stop.set()
        if frozen:
            core.process.send_signal(signal.SIGCONT)
        core.stop()
        other_core.engine.dispose()
