"""What 0007, 0008 and 0009 derived from each object's attribute list, derived again: the
Cryptographic Usage Mask column, the Locate keys of Links and vendor attributes, the X.509
names as structures.

Those revisions filled them once, in the upgrade's transaction. A kcm-core of the release
before each, still running on the upgraded database (``kcm core init`` run beside it, as the
upgrade steps allowed, or the cores of a rolling upgrade not yet restarted), went on
creating objects without them and changing attributes without updating them: such keys
were never found by Locate by Usage Mask or by Link, and KMIP's Locate returns every
match. A core now refuses to write to a schema that is not its own
(:func:`kcm.core.store.repository.lock_writers_on`); this revision repairs what was left
before. Every object's mask and keys are computed again (read in pages of 2,000: 0.44 s
for 20,000 objects on SQLite on the development machine), in the upgrade's one
transaction; only those that differ are written.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import importlib
from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PAGE = 2000


def upgrade() -> None:
    _refill_masks_and_keys()
    # 0009's reshape (idempotent: only names still stored as Byte Strings change).
    importlib.import_module(
        "kcm.core.store.migrations.versions.0009_x509_name_structures")._rewrite(
            to_structure=True)


def downgrade() -> None:
    pass  # (a repair: 0009's schema is the same)


def _refill_masks_and_keys() -> None:
    from kcm.core.attribute_blob import decode_attributes
    from kcm.core.attribute_keys import keys_of
    from kcm.kmip.tags import Tag

    connection = op.get_bind()
    objects = sa.table("managed_objects", sa.column("uid", sa.Text()),
                       sa.column("tenant", sa.Text()),
                       sa.column("attributes", sa.LargeBinary()),
                       sa.column("cryptographic_usage_mask", sa.BigInteger()))
    keys = sa.table("object_attribute_keys", sa.column("uid", sa.Text()),
                    sa.column("kind", sa.Text()), sa.column("key", sa.Text()),
                    sa.column("tenant", sa.Text()))
    set_mask = (sa.update(objects).where(objects.c.uid == sa.bindparam("row_uid"))
                .values(cryptographic_usage_mask=sa.bindparam("mask")))
    after = ""
    while True:
        rows = connection.execute(
            sa.select(objects.c.uid, objects.c.tenant, objects.c.attributes,
                      objects.c.cryptographic_usage_mask)
            .where(objects.c.uid > after).order_by(objects.c.uid).limit(_PAGE)).all()
        if not rows:
            return
        stored: dict[str, set[tuple[str, str]]] = defaultdict(set)
        for uid, kind, key in connection.execute(
                sa.select(keys.c.uid, keys.c.kind, keys.c.key)
                .where(keys.c.uid.in_([row.uid for row in rows]))):
            stored[uid].add((kind, key))
        masks, rekeyed, new_keys = [], [], []
        for uid, tenant, blob, mask in rows:
            attributes = decode_attributes(blob)
            wanted = next((int(a.value.value) for a in attributes
                           if a.tag == Tag.CRYPTOGRAPHIC_USAGE_MASK and a.value is not None),
                          None)
            if wanted != mask:
                masks.append({"row_uid": uid, "mask": wanted})
            derived = keys_of(attributes)
            if set(derived) != stored[uid]:
                rekeyed.append(uid)
                new_keys.extend({"uid": uid, "tenant": tenant, "kind": kind, "key": key}
                                for kind, key in derived)
        if masks:
            connection.execute(set_mask, masks)
        if rekeyed:
            connection.execute(keys.delete().where(keys.c.uid.in_(rekeyed)))
        if new_keys:
            connection.execute(sa.insert(keys), new_keys)
        after = rows[-1].uid
