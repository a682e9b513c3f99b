"""Migration 0014 (each tenant's count of what it stores, and its own bound; a version's
tombstones indexed in TokenId order) on a database
of 0013 with tenants, objects and L4 tombstones in it, SQLite and PostgreSQL: the upgrade
keeps every row and fills ``tenants.stored`` with each tenant's objects and tombstones
(a tenant with none: 0), ``max_objects`` NULL; the count then goes on from there; the
downgrade takes both columns away."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text

from kcm.core.store import repository
from kcm.core.store.engine import Store, open_engine
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


def _stored(store: Store) -> dict[str, tuple[int, int | None]]:
    return store.run_sync(lambda s: {name: (stored, own) for name, stored, own in s.execute(
        select(Tenant.name, Tenant.stored, Tenant.max_objects)).all()}, write=False)


def _tombstone_indexes(url: str) -> dict[str, list[str]]:
    engine = open_engine(url)
    try:
        return {index["name"]: index["column_names"]
                for index in inspect(engine).get_indexes("l4_tombstones")}
    finally:
        engine.dispose()


def test_0014_indexes_a_version_s_tombstones_in_token_order_and_back(db_url: str) -> None:
    """A gateway pages a version's tombstones in TokenId order (link version 9): 0014's
    index on (l3_uid, token_id) takes the place of 0013's on l3_uid, and back."""
    upgrade(db_url, "0013")
    assert _tombstone_indexes(db_url) == {"ix_l4_tombstones_l3_uid": ["l3_uid"],
                                          "ix_l4_tombstones_tenant": ["tenant"]}
    upgrade(db_url, "0014")
    assert _tombstone_indexes(db_url) == {
        "ix_l4_tombstones_l3_uid_token_id": ["l3_uid", "token_id"],
        "ix_l4_tombstones_tenant": ["tenant"]}
    downgrade(db_url, "0013")
    assert _tombstone_indexes(db_url) == {"ix_l4_tombstones_l3_uid": ["l3_uid"],
                                          "ix_l4_tombstones_tenant": ["tenant"]}


def test_0013_to_0014_counts_each_tenant_s_objects_and_tombstones(db_url: str) -> None:
    upgrade(db_url, "0013")
    now = int(time.time())
    tenants_as_now(db_url)  # (this release's code fills it; the counts are dropped)
    store, keyring = keyed_store(db_url)
    try:
        def fill(session) -> None:
            provision_both_tenants(session, keyring, now - 100)
            repository.ensure_tenant(session, "empty")
            l3 = repository.find_l3(session, "demo", "app")[0].uid
            for n in range(3):
                repository.add_tombstone(session, token_id=f"tok{n}", tenant="demo",
                                         l3_uid=l3, reason="revoked")
            for n in range(4):
                repository.insert_object(session, uid=f"o{n}", tenant="other",
                                         object_type=2, state=2, attributes=b"",
                                         attach=False)

        store.run_sync(fill)
        before = managed_rows(store)
    finally:
        store.stopService()
    tenants_as_before(db_url)
    assert "stored" not in tenant_columns(db_url)

    upgrade(db_url, "0014")
    assert current_revision(db_url) == "0014"
    tenants_as_now(db_url, since="0015")  # (this release's code reads them)
    store, _ = keyed_store(db_url)
    try:
        assert managed_rows(store) == before
        # demo: its L2, two L3s and three tombstones; other: L2, two L3s, four objects.
        assert _stored(store) == {"demo": (6, None), "other": (7, None), "empty": (0, None)}
        store.run_sync(lambda s: repository.insert_object(
            s, uid="after", tenant="empty", object_type=2, state=2, attributes=b"",
            attach=False))
        assert _stored(store)["empty"] == (1, None)
    finally:
        store.stopService()
    tenants_as_before(db_url, since="0015")

    downgrade(db_url, "0013")
    assert current_revision(db_url) == "0013"
    assert {"stored", "max_objects"}.isdisjoint(tenant_columns(db_url))
    engine = open_engine(db_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM tenants")).scalar() == 3
    finally:
        engine.dispose()
