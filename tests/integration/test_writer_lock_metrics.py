"""The store's waits for the writers' lock, and the audit head its commits report, on real
databases (a SQLite file, and PostgreSQL): a write that waits for another connection's
lock is observed with its wait, by lock, whether it then got the lock or not; each commit
of audit records moves the head kept in memory."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from kcm.core.audit import AuditEvent, append_audit, append_records
from kcm.core.keys import derive_audit_key
from kcm.core.metrics import CoreMetrics
from kcm.core.store import engine as store_engine
from kcm.core.store import repository
from kcm.core.store.engine import Store, open_engine
from kcm.core.store.migrate import upgrade
from kcm.core.store.repository import WRITER_LOCK_KEY
from tests.integration.test_store import db_url  # noqa: F401 (fixture: both databases)
from tests.unit.test_metrics import samples

#: Seconds another connection holds the lock before it lets go.
HELD = 0.3


@pytest.fixture
def measured(db_url: str, monkeypatch) -> Iterator[tuple[Store, CoreMetrics]]:  # noqa: F811
    # A wait that fails does so in a second, not in the 5 s (SQLite) or 8 s (PostgreSQL)
    # of the real bound (read as each connection opens, and as each wait begins).
    monkeypatch.setattr(store_engine, "SQLITE_BUSY_TIMEOUT_S", 1.0)
    monkeypatch.setattr(repository, "WRITERS_LOCK_WAIT_S", 1.0)
    upgrade(db_url)
    store = Store(db_url)
    store.audit_key = derive_audit_key(bytes(32))
    metrics = CoreMetrics()
    store.on_lock_wait, store.on_audit_head = metrics.lock_waited, metrics.audit_head_moved
    yield store, metrics
    store.stopService()


def holding_the_lock(url: str, seconds: float | None) -> Callable[[], None]:
    """Take the database's writers' lock on a connection of its own (SQLite: its write
    lock, as a ``sqlite3`` shell's ``BEGIN EXCLUSIVE``; PostgreSQL: the writers' advisory
    lock in a transaction), let go after ``seconds`` (None: when the returned call is
    made); the returned call lets go and waits for it."""
    if url.startswith("sqlite"):
        connection: Any = sqlite3.connect(url.removeprefix("sqlite:///"),
                                          isolation_level=None, check_same_thread=False)
        connection.execute("BEGIN EXCLUSIVE")

        def release() -> None:
            connection.execute("ROLLBACK")
            connection.close()
    else:
        engine = open_engine(url)
        connection = engine.connect()
        transaction = connection.begin()
        connection.execute(text(f"SELECT pg_advisory_xact_lock({WRITER_LOCK_KEY})"))

        def release() -> None:
            transaction.rollback()
            connection.close()
            engine.dispose()

    done = threading.Event()

    def let_go() -> None:
        if not done.is_set():
            done.set()
            release()

    timer = threading.Timer(seconds, let_go) if seconds is not None else None
    if timer is not None:
        timer.start()

    def wait() -> None:
        if timer is not None:
            timer.join()
        let_go()

    return wait


def waits(metrics: CoreMetrics, lock: str) -> tuple[float, float]:
    got = samples(metrics.registry)
    labels = (("lock", lock),)
    return (got.get(("kcm_core_writer_lock_wait_seconds_count", labels), 0.0),
            got.get(("kcm_core_writer_lock_wait_seconds_sum", labels), 0.0))


def event(n: int) -> AuditEvent:
    return AuditEvent(principal="op:test", operation=f"TEST{n}", result_status="SUCCESS",
                      correlation_id=f"c{n}")


def test_a_write_waiting_for_the_writers_lock_is_observed_with_its_wait(measured) -> None:
    store, metrics = measured
    store.run_sync(lambda session: None)  # (a free lock: a wait of next to nothing)
    count, total = waits(metrics, "database")
    assert count == 1 and total < HELD / 2
    released = holding_the_lock(store.url, HELD)
    store.run_sync(lambda session: None)  # the session's transaction
    released()
    count, total = waits(metrics, "database")
    assert count == 2 and total >= HELD - 0.05, total
    released = holding_the_lock(store.url, HELD)
    store._write_lean_sync(lambda transaction: None)  # a lean transaction, the writer's
    released()
    count, total = waits(metrics, "database")
    assert count == 3 and total >= 2 * (HELD - 0.05), total


def test_a_wait_that_fails_is_observed_too(measured) -> None:
    store, metrics = measured
    released = holding_the_lock(store.url, None)
    try:
        with pytest.raises(OperationalError):
            store.run_sync(lambda session: None)
        with pytest.raises(OperationalError):
            store._write_lean_sync(lambda transaction: None)
    finally:
        released()
    count, total = waits(metrics, "database")
    assert count == 2 and total >= 2 * 0.9, total
    got = samples(metrics.registry)
    assert got[("kcm_core_writer_lock_wait_seconds_bucket",
                (("le", "0.5"), ("lock", "database")))] == 0


def test_sqlite_writes_wait_for_the_processs_write_lock_first(tmp_path, monkeypatch) -> None:
    url = f"sqlite:///{tmp_path / 'kcm.db'}"
    upgrade(url)
    store = Store(url)
    metrics = CoreMetrics()
    store.on_lock_wait = metrics.lock_waited
    try:
        store._sqlite_writer.acquire()  # another thread of the process writing
        threading.Timer(HELD, store._sqlite_writer.release).start()
        store.run_sync(lambda session: None)
        count, total = waits(metrics, "process")
        assert count == 1 and total >= HELD - 0.05
        store._write_sync(lambda session: None)  # the writer thread's, on its connection
        count, total = waits(metrics, "process")
        assert count == 2 and total < HELD + 0.2
        assert waits(metrics, "database")[0] == 2
    finally:
        store.stopService()


def test_a_lock_wait_observer_that_raises_leaves_the_processs_write_lock_free(
        tmp_path) -> None:
    """The lock was taken, then the observer told: one that raised left it held, and every
    later write of the process waited for ever (found by the cross-feature review)."""
    url = f"sqlite:///{tmp_path / 'kcm.db'}"
    upgrade(url)
    store = Store(url)

    def broken(lock: str, seconds: float) -> None:
        raise RuntimeError("observer failed")

    store.on_lock_wait = broken
    try:
        with pytest.raises(RuntimeError, match="observer failed"):
            store.run_sync(lambda session: None)
        assert store._sqlite_writer.acquire(timeout=1)
        store._sqlite_writer.release()
    finally:
        store.stopService()


def test_each_commit_of_audit_records_moves_the_head(measured) -> None:
    store, metrics = measured
    head = ("kcm_core_audit_head", ())
    assert head not in samples(metrics.registry)
    store.run_sync(lambda session: [append_audit(session, event(n)) for n in range(3)])
    assert samples(metrics.registry)[head] == 3
    store._write_lean_sync(lambda transaction: append_records(
        transaction, [event(3), event(4)]))
    assert samples(metrics.registry)[head] == 5
    with pytest.raises(OSError):  # rolled back: the head stays
        store.run_sync(lambda session: (append_audit(session, event(5)),
                                        (_ for _ in ()).throw(OSError("lost"))))
    assert samples(metrics.registry)[head] == 5
    store.run_sync(lambda session: None)  # no records: nothing said
    assert samples(metrics.registry)[head] == 5
