"""Migration 0013 (the tenant and service keys the state sweeper judges next, by when) on a
database of 0012 with keys in it, SQLite and PostgreSQL: the upgrade keeps every row, adds
a partial index on (level, rotate_due) of the hierarchy keys and marks every Active tenant
and service key to be judged at the first sweep (their ``rotate_due`` was NULL: a sweep
judged every one then), so a policy set before the upgrade still rotates them; the
downgrade takes both away."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from kcm.core.auto_rotation import rotate_due
from kcm.core.rotation_policy import PolicySettings, set_policy
from kcm.core.store import repository
from kcm.core.store.engine import Store
from kcm.core.store.migrate import current_revision, upgrade
from kcm.core.store.schema import STATE_ACTIVE, STATE_DEACTIVATED, ManagedObject
from tests.migration_support import (
    DATABASES,
    downgrade,
    empty_database,
    keyed_store,
    managed_indexes,
    managed_rows,
    provision_both_tenants,
    tenants_as_now,
)

INDEX = "ix_managed_objects_level_rotate_due"


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from empty_database(request, tmp_path)


def _due(store: Store) -> dict[str, int | None]:
    return store.run_sync(lambda s: dict(s.execute(select(
        ManagedObject.uid, ManagedObject.rotate_due).where(ManagedObject.level.is_not(None)))
        .all()))


def test_0012_to_0013_marks_the_tenant_and_service_keys_to_be_judged(db_url: str) -> None:
    upgrade(db_url, "0012")
    tenants_as_now(db_url)  # (this release's code fills it)
    assert INDEX not in managed_indexes(db_url)
    store, keyring = keyed_store(db_url)
    now = int(time.time())
    try:
        def fill(session) -> str:
            provision_both_tenants(session, keyring, now - 100)
            set_policy(session, "", "", PolicySettings(interval=60), now=now - 100)
            retired = repository.find_l3(session, "other", "billing")[0].uid
            # As 0012's code left them: no rotate_due on tenant and service keys.
            session.execute(update(ManagedObject).where(ManagedObject.level.is_not(None))
                            .values(rotate_due=None))
            session.execute(update(ManagedObject).where(ManagedObject.uid == retired)
                            .values(state=STATE_DEACTIVATED))
            return retired

        retired = store.run_sync(fill)
        before = managed_rows(store)
        store.stopService()

        upgrade(db_url, "0013")
        assert current_revision(db_url) == "0013"
        assert managed_indexes(db_url)[INDEX] == ["level", "rotate_due"]
        store, _ = keyed_store(db_url)
        store.audit_key = keyring.audit_key
        assert managed_rows(store) == before
        due = _due(store)
        assert len(due) == 2 + 4 and due.pop(retired) is None
        assert set(due.values()) == {0}
        # The first sweep judges them all: the policy set before the upgrade rotates them.
        rotated = store.run_sync(lambda s: rotate_due(s, keyring, now))
        assert {(r.tenant, r.service) for r in rotated} == {
            ("demo", "app"), ("demo", "billing"), ("other", "app")}
        after = managed_rows(store)
        store.stopService()

        downgrade(db_url, "0012")
        assert current_revision(db_url) == "0012"
        assert INDEX not in managed_indexes(db_url)
        store = Store(db_url)
        assert managed_rows(store) == after
        assert set(_due(store).values()) == {None}
        assert store.run_sync(lambda s: s.scalar(select(ManagedObject.state).where(
            ManagedObject.uid == retired))) == STATE_DEACTIVATED != STATE_ACTIVE
    finally:
        store.stopService()
