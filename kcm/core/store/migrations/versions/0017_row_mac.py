"""The row MAC of each managed object: ``managed_objects.row_mac``
(:mod:`kcm.core.store.row_seal`).

A new nullable column: no row is rewritten here. The rows of earlier releases have none
until the state sweeper MACs them in bounded batches (:mod:`kcm.core.row_mac_upgrade`);
until then they are taken as they are while ``[core] accept_rows_without_mac`` is true.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # (a column already there is left as it is: the same column, put there by hand)
    if "row_mac" in {column["name"] for column in
                     sa.inspect(op.get_bind()).get_columns("managed_objects")}:
        return
    with op.batch_alter_table("managed_objects") as batch:
        batch.add_column(sa.Column("row_mac", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("managed_objects") as batch:
        batch.drop_column("row_mac")
