"""Migration 0007 (the usage-mask column) on a database of 0006 with objects in it, SQLite
and PostgreSQL: the upgrade keeps every row and fills ``cryptographic_usage_mask`` from each
object's attribute list (NULL where it has no mask), so Locate finds the objects written
before it by their mask; the downgrade drops the column and keeps the rows, the objects'
Names and Object Groups among them (on SQLite the downgrade rebuilds the table, which with
foreign keys enforced deleted every name and group row through their ON DELETE CASCADE).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select

from kcm.core.attribute_blob import encode_attributes
from kcm.core.store import repository
from kcm.core.store.engine import Store, open_engine
from kcm.core.store.migrate import current_revision, upgrade
from kcm.core.store.schema import STATE_ACTIVE, ManagedObject, ObjectGroup, ObjectName
from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import CryptographicUsageMask
from kcm.kmip.tags import Tag
from tests.migration_support import (
    DATABASES,
    downgrade,
    empty_database,
    keyed_store,
    later_columns,
    managed_rows,
    provision_both_tenants,
)

ENCRYPT, DECRYPT = CryptographicUsageMask.ENCRYPT, CryptographicUsageMask.DECRYPT
#: The objects written at 0006, by identifier: their usage mask (None: none), a few more
#: than one page of the migration's fill so that it pages.
MASKS = {f"object-{n:04d}": (None, ENCRYPT, ENCRYPT | DECRYPT)[n % 3] for n in range(2100)}


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from empty_database(request, tmp_path)


def _attributes(mask: int | None) -> bytes:
    listed = [Attribute.of(Tag.CONTACT_INFORMATION, "x")]
    if mask is not None:
        listed.append(Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, mask))
    return encode_attributes(listed)


def _names_and_groups(store: Store) -> tuple[int, int]:
    return store.run_sync(lambda s: (
        s.scalar(select(func.count()).select_from(ObjectName)),
        s.scalar(select(func.count()).select_from(ObjectGroup))))


def _columns(url: str) -> set[str]:
    engine = open_engine(url)
    try:
        with engine.connect() as connection:
            return {c["name"] for c in inspect(connection).get_columns("managed_objects")}
    finally:
        engine.dispose()


def test_0006_to_0007_fills_the_usage_mask_from_each_objects_attributes(db_url: str) -> None:
    upgrade(db_url, "0006")
    assert "cryptographic_usage_mask" not in _columns(db_url)
    store, keyring = keyed_store(db_url)
    now = int(time.time())
    try:
        def fill(session) -> None:
            provision_both_tenants(session, keyring, now - 100)
            for uid, mask in MASKS.items():
                named = uid < "object-0010"
                repository.insert_object(
                    session, uid=uid, tenant="demo", object_type=2, state=STATE_ACTIVE,
                    attributes=_attributes(mask), material=b"wrapped", material_format=1,
                    wrapped_by="L1", initial_date=now - 100,
                    names=[(f"name-{uid}", 1)] if named else (),
                    groups=["group"] if named else ())

        with later_columns(db_url):
            store.run_sync(fill)
            store.stopService()
        before = managed_rows(store)
        kept = _names_and_groups(store)
        assert kept[1] == 10  # (and the tenants' and services' names)
        store.stopService()

        upgrade(db_url, "0007")
        assert current_revision(db_url) == "0007"
        store = Store(db_url)
        assert managed_rows(store) == before
        stored = dict(store.run_sync(lambda s: s.execute(select(
            ManagedObject.uid, ManagedObject.cryptographic_usage_mask).where(
            ManagedObject.level.is_(None))).all()))
        assert stored == MASKS
        # The hierarchy's keys were filled too (encrypt, decrypt, wrap, unwrap).
        hierarchy = store.run_sync(lambda s: set(s.scalars(select(
            ManagedObject.cryptographic_usage_mask).where(ManagedObject.level.is_not(None)))))
        assert hierarchy == {ENCRYPT | DECRYPT | CryptographicUsageMask.WRAP_KEY
                             | CryptographicUsageMask.UNWRAP_KEY}
        both = store.run_sync(lambda s: repository.count_located(
            s, "demo", levels={None}, usage_mask=ENCRYPT | DECRYPT))
        assert both == sum(1 for mask in MASKS.values() if mask == ENCRYPT | DECRYPT)
        store.stopService()

        assert _names_and_groups(store) == kept
        store.stopService()

        downgrade(db_url, "0006")
        assert current_revision(db_url) == "0006"
        assert "cryptographic_usage_mask" not in _columns(db_url)
        store = Store(db_url)
        assert managed_rows(store) == before
        assert _names_and_groups(store) == kept
        store.stopService()
        upgrade(db_url)  # and up again, to the head
        store = Store(db_url)
        assert _names_and_groups(store) == kept
        assert store.run_sync(lambda s: repository.locate(
            s, "demo", name="name-object-0003")) == ["object-0003"]
    finally:
        store.stopService()
