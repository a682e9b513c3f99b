"""Migration 0005 (the state sweeper's indexes) on a database of 0004 with keys and objects
in it, SQLite and PostgreSQL: the upgrade keeps every row and adds the indexes (the partial
ones with their predicate), the sweep then works, and the downgrade gives 0004's indexes back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text

from kcm.core.attribute_blob import decode_attributes, encode_attributes
from kcm.core.state_sweeper import sweep_due_states
from kcm.core.store import repository
from kcm.core.store.engine import Store, open_engine
from kcm.core.store.migrate import current_revision, upgrade
from kcm.core.store.schema import LEVEL_SERVICE_KEY, STATE_ACTIVE, ManagedObject
from kcm.core.tenant_rotation import rotate_tenant_key
from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import State
from kcm.kmip.tags import Tag
from tests.migration_support import (
    DATABASES,
    downgrade,
    empty_database,
    keyed_store,
    later_columns,
    managed_indexes,
    managed_rows,
    provision_both_tenants,
)

NEW = {"ix_managed_objects_level_state_tenant_service_key_version": [
           "level", "state", "tenant", "service", "key_version"],
       "ix_managed_objects_state_activation_date": ["state", "activation_date"],
       "ix_managed_objects_state_deactivation_date": ["state", "deactivation_date"]}
PARTIAL = ("ix_managed_objects_level_state_tenant_service_key_version",
           "ix_managed_objects_state_activation_date",
           "ix_managed_objects_state_deactivation_date")


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from empty_database(request, tmp_path)


def _definition(url: str, name: str) -> str:
    engine = open_engine(url)
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                return connection.scalar(text(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = :name"), {"name": name})
            return connection.scalar(text(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :name"),
                {"name": name})
    finally:
        engine.dispose()


def _deactivate_an_l3(session, when: int) -> str:
    row = session.scalars(select(ManagedObject).where(
        ManagedObject.level == LEVEL_SERVICE_KEY).order_by(ManagedObject.uid)).first()
    attributes = [a for a in decode_attributes(row.attributes) if a.tag != Tag.DEACTIVATION_DATE]
    attributes.append(Attribute.of(Tag.DEACTIVATION_DATE, when))
    repository.update_object(session, row, attributes=encode_attributes(attributes),
                             deactivation_date=when)
    return row.uid


def test_0004_to_0005_keeps_the_rows_and_adds_the_sweepersindexes(db_url: str) -> None:
    upgrade(db_url, "0004")
    assert "ix_managed_objects_wrapped_by" in managed_indexes(db_url)
    store, keyring = keyed_store(db_url)
    now = int(time.time())
    try:
        def fill(session) -> None:
            provision_both_tenants(session, keyring, now - 100)
            for n in range(5):
                repository.insert_object(
                    session, uid=f"object-{n}", tenant="demo", object_type=2,
                    state=STATE_ACTIVE, attributes=b"\x42", material=b"wrapped",
                    material_format=1, wrapped_by="L1", initial_date=now - 100)
            # A retired tenant key (its service keys still under it) and a service key due
            # to be deactivated: what the sweeper's indexes serve.
            rotate_tenant_key(session, keyring, "other", now=now - 50, by="test",
                              reason="the test")

        with later_columns(db_url):
            store.run_sync(fill)
            due = store.run_sync(lambda s: _deactivate_an_l3(s, now - 1))
            store.stopService()
        before = managed_rows(store)
        assert len(before) == 2 + 4 + 5 + 1
        store.stopService()

        upgrade(db_url, "0005")
        assert current_revision(db_url) == "0005"
        indexes = managed_indexes(db_url)
        assert indexes["ix_managed_objects_wrapped_by"] == ["wrapped_by"]
        assert {name: indexes.get(name) for name in NEW} == NEW
        for name in PARTIAL:
            assert "WHERE" in _definition(db_url, name)
            assert "level IS NOT NULL" in _definition(db_url, name)

        store = Store(db_url)
        store.audit_key = keyring.audit_key
        assert managed_rows(store) == before
        with later_columns(db_url):
            assert store.run_sync(lambda s: sweep_due_states(s, now)) == [due]
            store.stopService()
        moved = [row for row in managed_rows(store) if row[0] == due]
        assert moved[0][4] == State.DEACTIVATED  # its state
        after = managed_rows(store)
        store.stopService()

        downgrade(db_url, "0004")
        assert current_revision(db_url) == "0004"
        indexes = managed_indexes(db_url)
        assert indexes["ix_managed_objects_wrapped_by"] == ["wrapped_by"]
        assert not set(NEW) & set(indexes)
        store = Store(db_url)
        assert managed_rows(store) == after
        store.stopService()

        upgrade(db_url, "0005")
        assert current_revision(db_url) == "0005"
        assert {name: managed_indexes(db_url).get(name) for name in NEW} == NEW
    finally:
        store.stopService()
