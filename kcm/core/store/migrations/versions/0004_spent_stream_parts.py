"""Correlation Values are used once: the stream parts requests have taken
(``spent_stream_parts``, :mod:`kcm.core.stream_parts`), each kept until its value expires.

One new table; nothing existing is rewritten. Streams begun before this revision carry a
Correlation Value of the earlier format, which no longer opens: they must be begun again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "spent_stream_parts",
        sa.Column("stream_id", sa.LargeBinary(), nullable=False),
        sa.Column("part", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("stream_id", "part", name=op.f("pk_spent_stream_parts")),
    )
    op.create_index(op.f("ix_spent_stream_parts_expires_at"), "spent_stream_parts",
                    ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_spent_stream_parts_expires_at"), table_name="spent_stream_parts")
    op.drop_table("spent_stream_parts")
