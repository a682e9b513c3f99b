"""Migration 0015 (each tenant's own request rate and burst) on a database of 0014 with
tenants in it, SQLite and PostgreSQL: the upgrade keeps every row and adds both columns
NULL (the core's settings); the downgrade takes them away, the rows kept."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from kcm.core.request_rates import _read_own
from kcm.core.store.engine import open_engine
from kcm.core.store.migrate import current_revision, upgrade
from kcm.core.store.schema import Tenant
from tests.migration_support import (
    DATABASES,
    downgrade,
    empty_database,
    keyed_store,
    managed_rows,
    provision_both_tenants,
    tenant_columns,
    tenants_as_before,
    tenants_as_now,
)


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from empty_database(request, tmp_path)


def test_0014_to_0015_gives_each_tenant_the_core_s_rate_and_back(db_url: str) -> None:
    upgrade(db_url, "0014")
    tenants_as_now(db_url, since="0015")  # (this release's code fills it; dropped below)
    store, keyring = keyed_store(db_url)
    try:
        store.run_sync(lambda session: provision_both_tenants(session, keyring,
                                                              int(time.time()) - 100))
        before = managed_rows(store)
        counts = store.run_sync(lambda s: sorted(s.execute(
            select(Tenant.name, Tenant.stored)).all()), write=False)
    finally:
        store.stopService()
    tenants_as_before(db_url, since="0015")
    assert "requests_per_second" not in tenant_columns(db_url)

    upgrade(db_url, "0015")
    assert current_revision(db_url) == "0015"
    assert {"requests_per_second", "request_burst"} <= tenant_columns(db_url)
    store, _ = keyed_store(db_url)
    try:
        assert managed_rows(store) == before
        assert store.run_sync(_read_own, write=False) == [
            ("demo", None, None), ("other", None, None)]
        store.run_sync(lambda s: s.execute(update(Tenant).where(Tenant.name == "demo")
                                           .values(requests_per_second=2.5, request_burst=7)))
        assert sorted(store.run_sync(_read_own, write=False)) == [
            ("demo", 2.5, 7), ("other", None, None)]
    finally:
        store.stopService()

    downgrade(db_url, "0014")
    assert current_revision(db_url) == "0014"
    assert {"requests_per_second", "request_burst"}.isdisjoint(tenant_columns(db_url))
    engine = open_engine(db_url)
    try:
        with engine.connect() as connection:
            from sqlalchemy import text
            assert sorted(connection.execute(text("SELECT name, stored FROM tenants")).all()) \
                == counts
    finally:
        engine.dispose()
