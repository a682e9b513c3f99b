"""A group commit whose database ran out of space in the middle of the transaction.

SQLite writes the pages a large transaction changed to its WAL before the commit (a cache
spill, past 2 MB); on a full disk that write fails, and SQLite rolls the whole transaction
back by itself. The group went on: it answered Success to the requests before the one
that failed (their work gone), and committed what ran after, in autocommit mode, one
statement at a time (the failure record of the request that failed, chained to audit
records that were rolled back). Now the group fails whole, and nothing of it is written
(kcm.core.store.transaction_lost)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from sqlalchemy import text
from twisted.internet.defer import DeferredList

from kcm.core.audit import savepoint, verify_chain
from kcm.core.context import Caller
from kcm.core.group_commit import GroupCommitter
from kcm.core.hierarchy import provision_service, provision_tenant
from kcm.core.keyring import Keyring
from kcm.core.request_handler import CoreRequestHandler
from kcm.core.store.engine import Store
from kcm.core.store.transaction_lost import TRANSACTION_LOST, check_transaction
from kcm.kmip.enums import ResultStatus
from kcm.testing.requests import activate, create_managed, request, response
from tests.core_support import _migrated_schema, service_principal
from tests.small_disk import fill, needs_mount, small_disk

NOW = 1_000_000


def _insert(session, key: str, value: str = "x") -> None:
    session.execute(text("INSERT INTO meta (key, value) VALUES (:key, :value)"),
                    {"key": key, "value": value})


def _small(session, key: str) -> str:
    _insert(session, key)
    return key


def _spills(session, record: bool = True) -> str:
    """6 MB of rows (SQLite spills them to the WAL before the commit): the 3 MB disk is
    full on the way. The error is caught and, with ``record``, a failure record written,
    as kcm-core's request handler does."""
    try:
        for number in range(60):
            _insert(session, f"large-{number}", "y" * 100_000)
    except Exception:
        if record:
            with savepoint(session):
                _insert(session, "failure-record")
        return "answered as failed"
    return "all written"


def _store_on(disk: Path, **options: Any) -> Store:
    """A started store whose SQLite database (the migrated schema) is on ``disk``."""
    shutil.copy2(_migrated_schema(), disk / "kcm.db")
    store = Store(f"sqlite:///{disk / 'kcm.db'}", **options)
    store.startService()
    return store


@needs_mount
@pytest_twisted.ensureDeferred
async def test_a_group_whose_transaction_sqlite_ended_fails_whole(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "3m") as disk:
        store = _store_on(disk)
        try:
            committer = GroupCommitter(store.write, check=check_transaction)
            held = threading.Event()
            store.write(lambda session: held.wait(10))  # so the three join one group
            jobs = [committer.submit("tenant", _small, "before"),
                    committer.submit("tenant", _spills),
                    committer.submit("tenant", _small, "after")]
            held.set()
            outcomes = await DeferredList(jobs, consumeErrors=True)
            written = await store.run(lambda session: {row[0] for row in session.execute(
                text("SELECT key FROM meta WHERE key IN "
                     "('before', 'after', 'failure-record')"))})
        finally:
            store.stopService()
    (before, _), (spilled, failure), (after, _) = outcomes
    # The request before the one that failed was rolled back with it: answered so.
    assert not before and "before" not in written
    assert not spilled and TRANSACTION_LOST in str(failure.value)
    assert "failure-record" not in written  # (no statement ran outside the transaction)
    assert after == ("after" in written)  # (its own group, next: the disk had room again)


@needs_mount
@pytest.mark.parametrize("record", [True, False], ids=["writes-on", "returns"])
@pytest_twisted.ensureDeferred
async def test_a_write_whose_transaction_sqlite_ended_fails(tmp_path: Path,
                                                            record: bool) -> None:
    """One write transaction (no group) whose work catches the error: writing on, its
    savepoint refuses to begin a transaction of its own; returning, its commit (of
    nothing) fails. Nothing is written, and the write is not taken for a success."""
    with small_disk(tmp_path / "disk", "3m") as disk:
        store = _store_on(disk)
        try:
            def work(session) -> str:
                _insert(session, "before")
                return _spills(session, record)

            outcome = await DeferredList([store.write(work)], consumeErrors=True)
            written = await store.run(lambda session: {row[0] for row in session.execute(
                text("SELECT key FROM meta WHERE key IN ('before', 'failure-record')"))})
        finally:
            store.stopService()
    [(ok, failure)] = outcome
    assert not ok and TRANSACTION_LOST in str(failure.value)
    assert written == set()


@needs_mount
@pytest_twisted.ensureDeferred
async def test_no_job_runs_after_the_transaction_ended(tmp_path: Path) -> None:
    """The job after the one that filled the disk, in the same group, writing without a
    savepoint (as a request's lone audit record is): it would have been committed on its
    own while its group failed. It runs in a group of its own instead, and is answered
    as what happened to it."""
    with small_disk(tmp_path / "disk", "3m") as disk:
        store = _store_on(disk)
        try:
            committer = GroupCommitter(store.write, check=check_transaction)
            held = threading.Event()
            store.write(lambda session: held.wait(10))
            jobs = [committer.submit("large", _spills),
                    committer.submit("other", _small, "after", own_savepoint=True)]
            held.set()
            (spilled, _), (after, _) = await DeferredList(jobs, consumeErrors=True)
            written = await store.run(lambda session: {row[0] for row in session.execute(
                text("SELECT key FROM meta WHERE key IN ('after', 'failure-record')"))})
        finally:
            store.stopService()
    assert not spilled and "failure-record" not in written
    assert after == ("after" in written)



def _dirty_then_full(disk: Path):
    """A job that leaves the group's page cache full of changed pages (a small cache, rows
    past it, past the WAL the file had: SQLite spilled them while there was room) and the
    disk full: the next page any statement needs, a read's too, is a spill that fails."""
    def work(session) -> None:
        session.execute(text("PRAGMA cache_size=20"))
        for number in range(400):
            _insert(session, f"dirty-{number}", "z" * 3000)
        fill(disk)
    return work


def _audit_records(store: Store) -> int:
    return store.run_sync(lambda session: session.execute(
        text("SELECT count(*) FROM audit_log")).scalar(), write=False)


@needs_mount
@pytest_twisted.ensureDeferred
async def test_a_read_that_ends_the_transaction_leaves_no_record_behind(
        tmp_path: Path) -> None:
    """A request whose first statement, a read (no savepoint sent yet), met the spill that
    failed: SQLite rolled the group's transaction back. The request was answered as failed
    and its audit record written without a savepoint: committed on its own, after records
    rolled back, and the audit chain no longer verified. Now the statement is refused, and
    nothing of the group is written."""
    with small_disk(tmp_path / "disk", "8m") as disk:
        # (no object cache: the request reads its object from the database)
        store = _store_on(disk, object_cache_size=0)
        try:
            keyring = Keyring(bytes(32))
            store.audit_key = keyring.audit_key

            def bootstrap(session) -> None:
                provision_tenant(session, keyring, "demo", now=NOW)
                provision_service(session, keyring, "demo", "app", now=NOW)

            store.run_sync(bootstrap)
            # (a group as long as it takes: the first job's rows are many)
            committer = GroupCommitter(store.write, max_seconds=60, alone_seconds=60,
                                       write_lean=store.write_lean, check=check_transaction)
            handler = CoreRequestHandler(store, keyring, clock=lambda: float(NOW),
                                         committer=committer)
            caller = Caller(service_principal(), "127.0.0.1:40000")
            made = await handler.handle_as(request(create_managed(), version=(2, 1)), caller)
            [created] = response(made).batch_items
            records = _audit_records(store)

            held = threading.Event()
            store.write(lambda session: held.wait(10))  # so both join one group
            jobs = [handler.write_in_turn(("sweeper", ""), _dirty_then_full(disk)),
                    handler.handle_as(request(activate(
                        created.response_payload.unique_identifier), version=(2, 1)), caller)]
            held.set()
            [(dirtied, why), (_, answer)] = await DeferredList(jobs, consumeErrors=True)
            (disk / "filler").unlink()
            written = _audit_records(store)
            verified = store.run_sync(verify_chain, write=False)
        finally:
            (disk / "filler").unlink(missing_ok=True)
            store.stopService()
    assert not dirtied and TRANSACTION_LOST in str(why.value)  # (failed with its group)
    [activated] = response(answer).batch_items
    assert activated.result_status == ResultStatus.OPERATION_FAILED
    assert activated.result_message.startswith("the key store is unavailable")
    assert written == records  # (the Activate is in the log only)
    assert verified.ok, verified


@needs_mount
@pytest_twisted.ensureDeferred
async def test_a_lean_write_whose_transaction_sqlite_ended_fails(tmp_path: Path) -> None:
    """(Found unchecked by a mutation review.) A lean transaction's commit of nothing
    fails too: the write is not taken for a success."""
    with small_disk(tmp_path / "disk", "3m") as disk:
        store = _store_on(disk)
        try:
            def work(transaction) -> str:
                _insert(transaction.connection, "before")
                return _spills(transaction.connection, record=False)

            [(ok, failure)] = await DeferredList([store.write_lean(work)], consumeErrors=True)
            written = await store.run(lambda session: {row[0] for row in session.execute(
                text("SELECT key FROM meta WHERE key = 'before'"))})
        finally:
            store.stopService()
    assert not ok and TRANSACTION_LOST in str(failure.value)
    assert written == set()

