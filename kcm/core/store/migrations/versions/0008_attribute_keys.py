"""Locate by Link or vendor attribute in the database: table ``object_attribute_keys``.

One row per Link (its Linked Object Identifier) and per vendor (custom ``x-``) attribute
with a scalar value, as :mod:`kcm.core.attribute_keys` keys them, indexed by ``(tenant,
kind, key)``. Before it, a Locate naming a Link or a vendor attribute decoded the attribute
list of every object of the tenant the caller may see (4.6 s at 50,000 objects on SQLite);
now it reads the objects that have the key asked for and judges those. Deleted with their
object (``ON DELETE CASCADE``), as Names and Object Groups are.

Existing objects are keyed from their attribute lists, read in pages of 2,000 and decoded
in Python with the product's own decoder and keying (what the running release compares a
criterion's key with): about as long as 0007's fill, some 5 s per 50,000 objects on SQLite,
in the one transaction of the upgrade. Objects with neither get no row.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PAGE = 2000


def upgrade() -> None:
    op.create_table(
        "object_attribute_keys",
        sa.Column("uid", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["uid"], ["managed_objects.uid"],
            name=op.f("fk_object_attribute_keys_uid_managed_objects"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("uid", "kind", "key", name=op.f("pk_object_attribute_keys")),
    )
    op.create_index(op.f("ix_object_attribute_keys_tenant_kind_key"), "object_attribute_keys",
                    ["tenant", "kind", "key"])
    _fill()


def _fill() -> None:
    """The keys of every object from its attribute list."""
    from kcm.core.attribute_blob import decode_attributes
    from kcm.core.attribute_keys import keys_of

    connection = op.get_bind()
    objects = sa.table("managed_objects", sa.column("uid", sa.Text()),
                       sa.column("tenant", sa.Text()),
                       sa.column("attributes", sa.LargeBinary()))
    keys = sa.table("object_attribute_keys", sa.column("uid", sa.Text()),
                    sa.column("kind", sa.Text()), sa.column("key", sa.Text()),
                    sa.column("tenant", sa.Text()))
    after = ""
    while True:
        rows = connection.execute(
            sa.select(objects.c.uid, objects.c.tenant, objects.c.attributes)
            .where(objects.c.uid > after).order_by(objects.c.uid).limit(_PAGE)).all()
        if not rows:
            return
        found = [{"uid": uid, "tenant": tenant, "kind": kind, "key": key}
                 for uid, tenant, blob in rows
                 for kind, key in keys_of(decode_attributes(blob))]
        if found:
            connection.execute(sa.insert(keys), found)
        after = rows[-1].uid


def downgrade() -> None:
    op.drop_index(op.f("ix_object_attribute_keys_tenant_kind_key"),
                  table_name="object_attribute_keys")
    op.drop_table("object_attribute_keys")
