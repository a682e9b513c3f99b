"""Migration 0006 (Locate's index) on a database of 0005 with objects in it, SQLite and
PostgreSQL: the upgrade keeps every row and replaces the index on the tenant by one on
(tenant, created_seq), which a Locate page then reads in its order (no sort); the
downgrade gives 0005's index back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm.core.store import repository
from kcm.core.store.engine import Store
from kcm.core.store.migrate import current_revision, upgrade
from kcm.core.store.schema import STATE_ACTIVE
from tests.migration_support import (
    DATABASES,
    downgrade,
    empty_database,
    keyed_store,
    later_columns,
    locate_page_plan,
    managed_indexes,
    managed_rows,
    provision_both_tenants,
)

OLD = {"ix_managed_objects_tenant": ["tenant"]}
NEW = {"ix_managed_objects_tenant_created_seq": ["tenant", "created_seq"]}


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from empty_database(request, tmp_path)


def test_0005_to_0006_keeps_the_rows_and_orders_a_tenants_objects(db_url: str) -> None:
    upgrade(db_url, "0005")
    assert OLD.items() <= managed_indexes(db_url).items()
    store, keyring = keyed_store(db_url)
    now = int(time.time())
    try:
        def fill(session) -> None:
            provision_both_tenants(session, keyring, now - 100)
            for n in range(6):
                repository.insert_object(
                    session, uid=f"object-{n}", tenant=("demo", "other")[n % 2],
                    object_type=2, state=STATE_ACTIVE, attributes=b"\x42",
                    material=b"wrapped", material_format=1, wrapped_by="L1",
                    initial_date=now - 100, service=(None, "app", "billing")[n % 3])

        with later_columns(db_url):
            store.run_sync(fill)
            store.stopService()
        before = managed_rows(store)
        assert len(before) == 2 + 4 + 6
        store.stopService()

        upgrade(db_url, "0006")
        assert current_revision(db_url) == "0006"
        indexes = managed_indexes(db_url)
        assert not set(OLD) & set(indexes)
        assert {name: indexes.get(name) for name in NEW} == NEW
        plan = locate_page_plan(db_url, levels={None}, services={None, "app"},
                                destroyed=False)
        assert "ix_managed_objects_tenant_created_seq" in plan, plan
        assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan

        store = Store(db_url)
        store.audit_key = keyring.audit_key
        assert managed_rows(store) == before
        located = store.run_sync(lambda s: [row.uid for row in repository.locate_rows(
            s, "demo", with_attributes=False, levels={None}, services={None, "app"})])
        assert located == ["object-4", "object-0"]  # newest first; billing's object-2 not
        store.stopService()

        downgrade(db_url, "0005")
        assert current_revision(db_url) == "0005"
        indexes = managed_indexes(db_url)
        assert OLD.items() <= indexes.items()
        assert not set(NEW) & set(indexes)
        store = Store(db_url)
        assert managed_rows(store) == before
        store.stopService()
    finally:
        store.stopService()
