"""Migration 0009 (X.509 Certificate Subject and Issuer as structures) on a database of 0008,
SQLite and PostgreSQL: the upgrade rewrites a certificate's two attributes stored as bare
Byte Strings into KMIP's structures, raising its revision, and leaves every other object
and attribute as it was; the downgrade writes them back as they were.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from kcm.core.attribute_blob import decode_attributes, encode_attributes
from kcm.core.store import repository
from kcm.core.store.migrate import current_revision, upgrade
from kcm.core.store.schema import STATE_ACTIVE, ManagedObject
from kcm.kmip.attributes import Attribute
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType
from tests.migration_support import (
    DATABASES,
    downgrade,
    empty_database,
    keyed_store,
    provision_both_tenants,
    tenants_as_now,
)

SUBJECT, ISSUER = b"\x30\x01subject", b"\x30\x01issuer"


def _bare(tag: int, der: bytes) -> Attribute:
    return Attribute(tag, Item(tag, ItemType.BYTE_STRING, der))


#: A certificate as releases before 0009 stored it, and a key that has nothing to rewrite.
STORED = {
    "certificate": (0x01, [Attribute.of(Tag.CERTIFICATE_LENGTH, 557, ItemType.INTEGER),
                           _bare(Tag.X_509_CERTIFICATE_SUBJECT, SUBJECT),
                           _bare(Tag.X_509_CERTIFICATE_ISSUER, ISSUER)]),
    "key": (0x02, [Attribute.of(Tag.CONTACT_INFORMATION, "x")]),
}


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from empty_database(request, tmp_path)


def _stored(store) -> dict[str, tuple[list[Attribute], int]]:
    return {uid: (decode_attributes(blob), revision)
            for uid, blob, revision in store.run_sync(lambda s: s.execute(select(
                ManagedObject.uid, ManagedObject.attributes, ManagedObject.revision).where(
                ManagedObject.level.is_(None))).all())}


def test_0008_to_0009_gives_x509_names_their_structures(db_url: str) -> None:
    upgrade(db_url, "0008")
    tenants_as_now(db_url)  # (this release's code fills it)
    store, keyring = keyed_store(db_url)
    now = int(time.time())
    try:
        def fill(session) -> None:
            provision_both_tenants(session, keyring, now - 100)
            for uid, (object_type, attributes) in STORED.items():
                repository.insert_object(
                    session, uid=uid, tenant="demo", object_type=object_type,
                    state=STATE_ACTIVE, attributes=encode_attributes(attributes),
                    material=b"wrapped", material_format=1, wrapped_by="L1",
                    initial_date=now - 100)

        store.run_sync(fill)
        before = _stored(store)
        store.stopService()

        upgrade(db_url, "0009")
        assert current_revision(db_url) == "0009"
        store, _ = keyed_store(db_url)
        after = _stored(store)
        assert after["key"] == before["key"]
        attributes, revision = after["certificate"]
        assert revision == before["certificate"][1] + 1
        assert attributes == [
            Attribute.of(Tag.CERTIFICATE_LENGTH, 557, ItemType.INTEGER),
            Attribute(Tag.X_509_CERTIFICATE_SUBJECT, Item(
                Tag.X_509_CERTIFICATE_SUBJECT, ItemType.STRUCTURE,
                [Item(Tag.SUBJECT_DISTINGUISHED_NAME, ItemType.BYTE_STRING, SUBJECT)])),
            Attribute(Tag.X_509_CERTIFICATE_ISSUER, Item(
                Tag.X_509_CERTIFICATE_ISSUER, ItemType.STRUCTURE,
                [Item(Tag.ISSUER_DISTINGUISHED_NAME, ItemType.BYTE_STRING, ISSUER)]))]
        store.stopService()

        upgrade(db_url, "0009")  # again: nothing left to rewrite
        store, _ = keyed_store(db_url)
        assert _stored(store) == after
        store.stopService()

        downgrade(db_url, "0008")
        store, _ = keyed_store(db_url)
        back = _stored(store)
        assert back["certificate"][0] == STORED["certificate"][1]
        assert back["key"] == before["key"]
    finally:
        store.stopService()
