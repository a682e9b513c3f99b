"""The cores serving the database: ``core_presence`` (:mod:`kcm.core.core_presence`), so
that the cores share each tenant's request rate.

A new table, empty until a core of this release announces itself: no row is rewritten.
A ``core_presence`` already there at 0015 is dropped first: ``pg_restore --clean`` of a
dump taken at 0015 (going back to the previous release) leaves it, as it drops only what
the dump holds, and its rows are only the cores' last announcements.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DROP TABLE IF EXISTS core_presence")
    op.create_table(
        "core_presence",
        sa.Column("core", sa.Text(), nullable=False),
        sa.Column("last_seen", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("core", name=op.f("pk_core_presence")),
    )


def downgrade() -> None:
    op.drop_table("core_presence")
