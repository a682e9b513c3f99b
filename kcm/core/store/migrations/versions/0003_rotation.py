"""Automatic rotation: rotation policies and per-version usage counts of service keys.

Two new tables; nothing existing is rewritten, on either backend.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rotation_policies",
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("service", sa.Text(), nullable=False),
        sa.Column("interval", sa.BigInteger(), nullable=True),
        sa.Column("max_uses", sa.BigInteger(), nullable=True),
        sa.Column("overlap", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "service", name=op.f("pk_rotation_policies")),
    )
    op.create_table(
        "l3_usage",
        sa.Column("uid", sa.Text(), nullable=False),
        sa.Column("uses", sa.BigInteger(), nullable=False),
        sa.Column("reported_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("uid", name=op.f("pk_l3_usage")),
    )


def downgrade() -> None:
    op.drop_table("l3_usage")
    op.drop_table("rotation_policies")
