"""What each tenant stores, counted, and its own bound: ``tenants.stored`` and
``tenants.max_objects`` (:mod:`kcm.core.store.quota`).

``stored`` is the count of the tenant's managed objects (destroyed ones not yet purged,
tenant and service keys among them) and L4 tombstones, kept from now on in the
transaction of every insert and delete; the upgrade fills it with one statement (two
counts per tenant, by the indexes on ``(tenant, created_seq)`` and
``l4_tombstones.tenant``). ``max_objects`` is NULL (the core's ``max_objects_per_tenant``)
until ``kcm core tenant limit`` sets it.

The index of ``l4_tombstones`` on ``l3_uid`` becomes one on ``(l3_uid, token_id)``: a
gateway pages a version's tombstones in TokenId order (link version 9), and each page, a
sort of every tombstone of the version without it (50 ms a page at 200,000), is a range of
it (0.3 ms).

``stored`` is added NOT NULL with a server default of 0 (an added NOT NULL column needs
one); the schema sets it on every insert, and the default stays (dropping it would
rebuild ``tenants`` on SQLite).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_tenants = sa.table("tenants", sa.column("name", sa.Text()),
                    sa.column("stored", sa.BigInteger()))
_objects = sa.table("managed_objects", sa.column("tenant", sa.Text()))
_tombstones = sa.table("l4_tombstones", sa.column("tenant", sa.Text()))


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.add_column(sa.Column("stored", sa.BigInteger(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("max_objects", sa.BigInteger(), nullable=True))
    objects = (sa.select(sa.func.count()).select_from(_objects)
               .where(_objects.c.tenant == _tenants.c.name).scalar_subquery())
    tombstones = (sa.select(sa.func.count()).select_from(_tombstones)
                  .where(_tombstones.c.tenant == _tenants.c.name).scalar_subquery())
    op.execute(_tenants.update().values(stored=objects + tombstones))
    op.create_index("ix_l4_tombstones_l3_uid_token_id", "l4_tombstones",
                    ["l3_uid", "token_id"])
    op.drop_index("ix_l4_tombstones_l3_uid", table_name="l4_tombstones")


def downgrade() -> None:
    op.create_index("ix_l4_tombstones_l3_uid", "l4_tombstones", ["l3_uid"])
    op.drop_index("ix_l4_tombstones_l3_uid_token_id", table_name="l4_tombstones")
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.drop_column("max_objects")
        batch_op.drop_column("stored")
