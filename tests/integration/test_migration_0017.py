"""Migration 0017 (``managed_objects.row_mac``, kcm.core.store.row_seal) on a database of
0016 with tenants in it, SQLite and PostgreSQL: the upgrade adds the column, NULL in every
row, and leaves every other value alone; the state sweeper's walk then MACs them all; the
downgrade drops it, the rows kept."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from kcm.core.row_mac_upgrade import RowMacUpgrade, rows_without_mac
from kcm.core.store import repository
from kcm.core.store.engine import open_engine
from kcm.core.store.migrate import current_revision, upgrade
from kcm.core.store.schema import ManagedObject
from tests.migration_support import (
    DATABASES,
    _alter,
    downgrade,
    empty_database,
    keyed_store,
    managed_rows,
    provision_both_tenants,
)


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from empty_database(request, tmp_path)


def _columns(url: str) -> set[str]:
    engine = open_engine(url)
    try:
        return {column["name"] for column in inspect(engine).get_columns("managed_objects")}
    finally:
        engine.dispose()


def test_0016_to_0017_adds_the_row_mac_and_back(db_url: str) -> None:
    upgrade(db_url, "0016")
    store, keyring = keyed_store(db_url)  # (this release's code writes the column)
    try:
        store.run_sync(lambda session: provision_both_tenants(session, keyring,
                                                              int(time.time()) - 100))
        before = managed_rows(store)
    finally:
        store.stopService()
    _alter(db_url, ["ALTER TABLE managed_objects DROP COLUMN row_mac"])  # (as 0016 has it)
    assert "row_mac" not in _columns(db_url)

    upgrade(db_url, "0017")
    assert current_revision(db_url) == "0017" and "row_mac" in _columns(db_url)
    upgrade(db_url)  # (idempotent at every start)
    store, _ = keyed_store(db_url)
    store.audit_key, store.row_seal = keyring.audit_key, keyring.row_seal
    try:
        assert managed_rows(store) == before
        assert store.run_sync(rows_without_mac) == len(before) > 0
        walk = RowMacUpgrade(keyring)
        store.run_sync(lambda session: walk.step(session, time.time()))
        assert store.run_sync(rows_without_mac) == 0 and walk.left == 0
        rows = store.run_sync(lambda s: [repository.ObjectColumns(*row) for row in s.execute(
            select(*ManagedObject.__table__.columns))])
        assert all(keyring.row_seal.why_refused(row) is None for row in rows)
        assert [row[:-1] for row in managed_rows(store)] == [row[:-1] for row in before]
    finally:
        store.stopService()

    downgrade(db_url, "0016")
    assert current_revision(db_url) == "0016" and "row_mac" not in _columns(db_url)
