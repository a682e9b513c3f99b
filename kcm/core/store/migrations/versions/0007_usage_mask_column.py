"""Locate by Cryptographic Usage Mask in the database: ``managed_objects.cryptographic_usage_mask``.

A copy of the object's Cryptographic Usage Mask attribute (NULL when it has none), kept on
every save like the algorithm and length columns. Before it, a Locate naming a usage mask
decoded the attribute list of every object of the tenant the caller may see: at 50,000
objects on SQLite under load it reached the 10 s request deadline. Now the database judges
it (``mask & requested = requested``) and counts the matches. Not indexed: the filter is a
bitwise test, which no B-tree index serves; it runs over the tenant's rows the
``(tenant, created_seq)`` index (0006) yields, without reading their attributes.

Existing rows are filled from their attribute lists, read in pages of 2,000 and decoded in
Python: about 5 s per 50,000 objects on SQLite (some 100 s a million), in the one
transaction of the upgrade.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PAGE = 2000


def upgrade() -> None:
    with op.batch_alter_table("managed_objects") as batch_op:
        batch_op.add_column(sa.Column("cryptographic_usage_mask", sa.BigInteger(),
                                      nullable=True))
    _fill()


def _fill() -> None:
    """Each row's column from its attribute list (the product's own decoder: the list's
    encoding is the one every release reads)."""
    from kcm.core.attribute_blob import decode_attributes
    from kcm.kmip.tags import Tag

    connection = op.get_bind()
    objects = sa.table("managed_objects", sa.column("uid", sa.Text()),
                       sa.column("attributes", sa.LargeBinary()),
                       sa.column("cryptographic_usage_mask", sa.BigInteger()))
    update = (sa.update(objects).where(objects.c.uid == sa.bindparam("row_uid"))
              .values(cryptographic_usage_mask=sa.bindparam("mask")))
    after = ""
    while True:
        rows = connection.execute(
            sa.select(objects.c.uid, objects.c.attributes).where(objects.c.uid > after)
            .order_by(objects.c.uid).limit(_PAGE)).all()
        if not rows:
            return
        masks = []
        for uid, blob in rows:
            mask = next((a.value.value for a in decode_attributes(blob)
                         if a.tag == Tag.CRYPTOGRAPHIC_USAGE_MASK and a.value is not None),
                        None)
            if mask is not None:
                masks.append({"row_uid": uid, "mask": int(mask)})
        if masks:
            connection.execute(update, masks)
        after = rows[-1].uid


def downgrade() -> None:
    with op.batch_alter_table("managed_objects") as batch_op:
        batch_op.drop_column("cryptographic_usage_mask")
