"""Migration 0010 on a database of 0009, SQLite and PostgreSQL: the objects an older
kcm-core wrote after 0007-0009 had filled their derived data (a NULL Usage Mask column, no
Locate keys, or stale ones after it changed attributes; X.509 names as Byte Strings) get
it computed again from their attribute lists; objects that were right are left as they
were."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from kcm.core.attribute_blob import decode_attributes, encode_attributes
from kcm.core.attribute_keys import keys_of
from kcm.core.store import repository
from kcm.core.store.migrate import current_revision, upgrade
from kcm.core.store.schema import STATE_ACTIVE, ManagedObject, ObjectAttributeKey
from kcm.kmip.attributes import VENDOR_TAG, Attribute, Link
from kcm.kmip.enums import LinkType
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType
from tests.migration_support import (
    DATABASES,
    empty_database,
    keyed_store,
    provision_both_tenants,
    tenants_as_now,
)


def _mask(value: int) -> Attribute:
    return Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, value, ItemType.INTEGER)


def _link(to: str) -> Attribute:
    return Attribute.of(Tag.LINK, Link(link_type=LinkType.PUBLIC_KEY_LINK,
                                       linked_object_identifier=to))


COLOR = Attribute(VENDOR_TAG, Item(Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING, "red"),
                  None, "x", "color")
SUBJECT = b"\x30\x01subject"

#: uid: (object type, attributes, the mask column and keys an older core left)
STORED = {
    "made-by-an-older-core": (0x02, [_mask(12), _link("its-public-key"), COLOR], None, []),
    "changed-by-an-older-core": (0x02, [Attribute.of(Tag.CONTACT_INFORMATION, "x")], 4,
                                 [("Link", "gone")]),
    "right": (0x02, [_mask(4), _link("another")], 4, keys_of([_link("another")])),
    "certificate": (0x01, [Attribute(Tag.X_509_CERTIFICATE_SUBJECT, Item(
        Tag.X_509_CERTIFICATE_SUBJECT, ItemType.BYTE_STRING, SUBJECT))], None, []),
}


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from empty_database(request, tmp_path)


def _derived(store) -> dict[str, tuple[int | None, set, list[Attribute], int]]:
    def read(session):
        keys: dict[str, set] = {}
        for uid, kind, key in session.execute(select(
                ObjectAttributeKey.uid, ObjectAttributeKey.kind, ObjectAttributeKey.key)):
            keys.setdefault(uid, set()).add((kind, key))
        return {uid: (mask, keys.get(uid, set()), decode_attributes(blob), revision)
                for uid, mask, blob, revision in session.execute(select(
                    ManagedObject.uid, ManagedObject.cryptographic_usage_mask,
                    ManagedObject.attributes, ManagedObject.revision).where(
                    ManagedObject.level.is_(None)))}
    return store.run_sync(read)


def test_0009_to_0010_derives_again_what_older_cores_left_out(db_url: str) -> None:
    upgrade(db_url, "0009")
    tenants_as_now(db_url)  # (this release's code fills it)
    store, keyring = keyed_store(db_url)
    now = int(time.time())
    try:
        def fill(session) -> None:
            provision_both_tenants(session, keyring, now - 100)
            for uid, (object_type, attributes, mask, keys) in STORED.items():
                repository.insert_object(
                    session, uid=uid, tenant="demo", object_type=object_type,
                    state=STATE_ACTIVE, attributes=encode_attributes(attributes),
                    material=b"wrapped", material_format=1, wrapped_by="L1",
                    cryptographic_usage_mask=mask, keys=keys, initial_date=now - 100)

        store.run_sync(fill)
        before = _derived(store)
        store.stopService()

        upgrade(db_url, "0010")
        assert current_revision(db_url) == "0010"
        store, _ = keyed_store(db_url)
        after = _derived(store)
        older = STORED["made-by-an-older-core"][1]
        assert after["made-by-an-older-core"][:2] == (12, set(keys_of(older)))
        assert after["made-by-an-older-core"][1] == {
            ("Link", "its-public-key"), keys_of([COLOR])[0]}
        assert after["changed-by-an-older-core"][:2] == (None, set())
        assert after["right"] == before["right"]
        [subject] = after["certificate"][2]
        assert subject.value.type is ItemType.STRUCTURE
        assert subject.value.find(Tag.SUBJECT_DISTINGUISHED_NAME).value == SUBJECT
        store.stopService()

        upgrade(db_url, "0010")  # again: nothing to do
        store, _ = keyed_store(db_url)
        assert _derived(store) == after
    finally:
        store.stopService()
