"""``verify_chain_paged``: the chain verified a page at a time, each page a read transaction
of its own, checks all that one pass in one transaction does (every test of
``test_audit.py`` again, its ``verify_chain`` paged: pages of one and two records, so that
a page ends at every record), and holds no snapshot between pages (a writer commits and
SQLite's WAL is checkpointed to nothing meanwhile)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from kcm.core.audit import Checkpoint, VerifyResult, append_audit, verify_chain_paged
from kcm.core.store.engine import AUDIT_KEY_INFO, WRITE_OPTION, Store
from kcm.core.store.migrate import upgrade
from tests.unit import test_audit
from tests.unit.test_audit import *  # noqa: F403  (every test again, paged)
from tests.unit.test_audit import AUDIT_KEY, _event


def _paged(page: int, transactions: list[int]) -> Callable[..., VerifyResult]:
    """A ``verify_chain(session, ...)`` that walks in pages of ``page`` records, each in a
    read transaction of its own on the session's database (not in the session's)."""
    def verify(session: Session, *, batch: int = 1000, audit_key: bytes | None = None,
               checkpoints: Iterable[Checkpoint] = ()) -> VerifyResult:
        engine = session.get_bind().execution_options(**{WRITE_OPTION: False})
        info = {AUDIT_KEY_INFO: session.info.get(AUDIT_KEY_INFO)}

        def read(fn: Callable[[Session], Any]) -> Any:
            transactions.append(page)
            with Session(engine, info=dict(info)) as own, own.begin():
                return fn(own)

        return verify_chain_paged(read, page=page, audit_key=audit_key,
                                  checkpoints=checkpoints)
    return verify


@pytest.fixture(autouse=True, params=[1, 2], ids=["page1", "page2"])
def paged_verify(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
                 ) -> list[int]:
    transactions: list[int] = []
    monkeypatch.setattr(test_audit, "verify_chain", _paged(request.param, transactions))
    return transactions


def _store(tmp_path: Path, records: int) -> Store:
    url = f"sqlite:///{tmp_path / 'paged.db'}"
    upgrade(url)
    store = Store(url)
    store.audit_key = AUDIT_KEY
    for start in range(0, records, 500):
        store.run_sync(lambda s, start=start: [
            append_audit(s, _event(correlation_id=f"c-{n}"))
            for n in range(start, min(records, start + 500))])
    return store


def test_each_page_is_a_transaction_of_its_own(tmp_path: Path, paged_verify: list[int]
                                               ) -> None:
    store = _store(tmp_path, 2500)
    reads: list[int] = []

    def read(fn: Callable[[Session], Any]) -> Any:
        reads.append(1)
        return store.run_sync(fn, write=False)

    try:
        result = verify_chain_paged(read, page=1000)
    finally:
        store.stopService()
    assert result == VerifyResult(True, 2500)
    # The markers, then pages of 1000, 1000 and 500 (the short one ends the walk).
    assert len(reads) == 4


def test_no_snapshot_is_held_between_pages(tmp_path: Path, paged_verify: list[int]) -> None:
    """Between two pages a writer commits, and the WAL is checkpointed and truncated to
    nothing: no reader holds an older snapshot (one long read transaction would keep the
    WAL, and SQLite says so: the checkpoint is busy). The records committed meanwhile are
    verified as past the head."""
    store = _store(tmp_path, 1200)
    db = str(tmp_path / "paged.db")
    checkpoints: list[tuple[int, int, int]] = []

    def read(fn: Callable[[Session], Any]) -> Any:
        result = store.run_sync(fn, write=False)
        store.run_sync(lambda s: append_audit(s, _event(correlation_id="meanwhile")))
        with sqlite3.connect(db) as other:
            checkpoints.append(other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone())
        return result

    try:
        result = verify_chain_paged(read, page=500)
    finally:
        store.stopService()
    assert result.ok and result.past_head_records == len(checkpoints) - 1
    assert result.records_checked == 1200 + result.past_head_records
    assert [busy for busy, _, _ in checkpoints] == [0] * len(checkpoints)
    assert Path(db + "-wal").stat().st_size == 0

    # What one long read transaction does instead: the checkpoint cannot finish.
    with sqlite3.connect(db, isolation_level=None) as reader, sqlite3.connect(db) as other:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM audit_log").fetchone()
        store.run_sync(lambda s: append_audit(s, _event(correlation_id="late")))
        assert other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 1
        reader.execute("COMMIT")
    store.stopService()
