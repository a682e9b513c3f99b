"""Migration 0008 (the keys of Links and vendor attributes) on a database of 0007 with
objects in it, SQLite and PostgreSQL: the upgrade keeps every row and keys each object's
Links and scalar vendor attributes from its attribute list, so Locate finds the objects
written before it by them; the downgrade drops the table and keeps the rows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from kcm.core.attribute_blob import encode_attributes
from kcm.core.attribute_keys import keys_of
from kcm.core.store import repository
from kcm.core.store.engine import Store
from kcm.core.store.migrate import current_revision, upgrade
from kcm.core.store.schema import STATE_ACTIVE, ObjectAttributeKey
from kcm.kmip.attributes import Attribute, Link
from kcm.kmip.enums import LinkType
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType
from tests.migration_support import (
    DATABASES,
    downgrade,
    empty_database,
    keyed_store,
    managed_rows,
    provision_both_tenants,
    table_names,
    tenants_as_now,
)


def _attributes(n: int) -> list[Attribute]:
    """Object n's attributes: a Link to the object before it (every third), a vendor
    attribute (every other), a structure-valued one (no key), or nothing of the kind."""
    listed = [Attribute.of(Tag.CONTACT_INFORMATION, "x")]
    if n % 3 == 0 and n:
        listed.append(Attribute.of(Tag.LINK, Link(link_type=LinkType.PARENT_LINK,
                                                  linked_object_identifier=_uid(n - 1))))
    if n % 2 == 0:
        listed.append(Attribute.vendor("x", "shard", Item(Tag.ATTRIBUTE_VALUE,
                                                          ItemType.INTEGER, n % 7)))
    if n % 5 == 0:
        listed.append(Attribute.vendor("x", "nested", Item(Tag.ATTRIBUTE_VALUE,
                                                           ItemType.STRUCTURE, [])))
    return listed


def _uid(n: int) -> str:
    return f"object-{n:04d}"


#: A few more objects than one page of the migration's fill, so that it pages.
OBJECTS = {_uid(n): _attributes(n) for n in range(2100)}


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from empty_database(request, tmp_path)


def test_0007_to_0008_keys_each_objects_links_and_vendor_attributes(db_url: str) -> None:
    upgrade(db_url, "0007")
    tenants_as_now(db_url)  # (this release's code fills it)
    assert "object_attribute_keys" not in table_names(db_url)
    store, keyring = keyed_store(db_url)
    now = int(time.time())
    try:
        def fill(session) -> None:
            provision_both_tenants(session, keyring, now - 100)
            for uid, attributes in OBJECTS.items():
                repository.insert_object(
                    session, uid=uid, tenant="demo", object_type=2, state=STATE_ACTIVE,
                    attributes=encode_attributes(attributes), material=b"wrapped",
                    material_format=1, wrapped_by="L1", initial_date=now - 100)

        store.run_sync(fill)
        before = managed_rows(store)
        store.stopService()

        upgrade(db_url, "0008")
        assert current_revision(db_url) == "0008"
        store = Store(db_url)
        assert managed_rows(store) == before
        stored = store.run_sync(lambda s: sorted(s.execute(select(
            ObjectAttributeKey.uid, ObjectAttributeKey.kind, ObjectAttributeKey.key,
            ObjectAttributeKey.tenant)).all()))
        expected = sorted((uid, kind, key, "demo") for uid, attributes in OBJECTS.items()
                          for kind, key in keys_of(attributes))
        assert stored == expected
        assert len(expected) == 699 + 1050  # the Links and the scalar vendor attributes
        # The store finds an object written before 0008 by its Link.
        [link] = keys_of([a for a in OBJECTS[_uid(3)] if a.tag == Tag.LINK])
        assert store.run_sync(lambda s: repository.locate(s, "demo", keys=[link])) == [_uid(3)]
        store.stopService()

        downgrade(db_url, "0007")
        assert current_revision(db_url) == "0007"
        assert "object_attribute_keys" not in table_names(db_url)
        store = Store(db_url)
        assert managed_rows(store) == before
    finally:
        store.stopService()
