"""Migration 0016 (``core_presence``, the cores counted to share each tenant's request
rate) on a database of 0015 with tenants in it, SQLite and PostgreSQL: the upgrade adds
the empty table and leaves every other row alone; cores announce themselves in it (on
PostgreSQL, by the database's clock); the downgrade drops it, the rows kept."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from kcm.core.core_presence import announce, database_now, leave
from kcm.core.store.engine import open_engine
from kcm.core.store.migrate import current_revision, upgrade
from tests.migration_support import (
    DATABASES,
    downgrade,
    empty_database,
    keyed_store,
    managed_rows,
    provision_both_tenants,
    table_names,
)


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from empty_database(request, tmp_path)


def test_0015_to_0016_adds_the_presence_table_and_back(db_url: str) -> None:
    upgrade(db_url, "0015")
    store, keyring = keyed_store(db_url)
    try:
        store.run_sync(lambda session: provision_both_tenants(session, keyring,
                                                              int(time.time()) - 100))
        before = managed_rows(store)
    finally:
        store.stopService()
    assert "core_presence" not in table_names(db_url)

    upgrade(db_url, "0016")
    assert current_revision(db_url) == "0016"
    assert "core_presence" in table_names(db_url)
    store, _ = keyed_store(db_url)
    try:
        assert managed_rows(store) == before
    finally:
        store.stopService()
    engine = open_engine(db_url)
    try:
        with engine.connect() as connection, connection.begin():
            now = (database_now(connection) if connection.dialect.name == "postgresql"
                   else time.time())
            assert abs(now - time.time()) < 60
            assert announce(connection, "a", now) == 1
            assert announce(connection, "b", now + 1) == 2
            leave(connection, "b")
            assert announce(connection, "a", now + 2) == 1
    finally:
        engine.dispose()

    downgrade(db_url, "0015")
    assert current_revision(db_url) == "0015"
    assert "core_presence" not in table_names(db_url)
    store, _ = keyed_store(db_url)
    try:
        assert managed_rows(store) == before
    finally:
        store.stopService()


def test_a_presence_table_left_at_0015_by_a_restore_does_not_stop_the_upgrade(
        db_url: str) -> None:
    """Going back: a dump of 0015 restored with ``pg_restore --clean`` over a database of
    0016 drops and restores what the dump holds and leaves ``core_presence`` (with the last
    announcements in it). Upgrading again must not fail with "already exists"."""
    upgrade(db_url, "0016")
    engine = open_engine(db_url)
    try:
        with engine.connect() as connection, connection.begin():
            announce(connection, "gone", time.time())
            connection.execute(text("UPDATE alembic_version SET version_num = '0015'"))
    finally:
        engine.dispose()
    assert current_revision(db_url) == "0015" and "core_presence" in table_names(db_url)

    upgrade(db_url, "0016")
    assert current_revision(db_url) == "0016"
    engine = open_engine(db_url)
    try:
        with engine.connect() as connection, connection.begin():
            assert announce(connection, "a", time.time()) == 1
    finally:
        engine.dispose()
