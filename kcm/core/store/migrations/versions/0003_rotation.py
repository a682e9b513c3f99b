"""Automatic rotation: rotation policies and per-version usage counts of service keys, and
when a managed key rotates by itself (``managed_objects.rotate_due``); an index on
``managed_objects.wrapped_by`` for the re-wrap after a tenant key rotation.

Two new tables and a nullable, indexed column: existing rows are not rewritten (their
``rotate_due`` is NULL: no managed key rotated by itself before this revision).

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
        sa.Column("managed_interval", sa.BigInteger(), nullable=True),
        sa.Column("tenant_key_interval", sa.BigInteger(), nullable=True),
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


    with op.batch_alter_table("managed_objects") as batch_op:
        batch_op.add_column(sa.Column("rotate_due", sa.BigInteger(), nullable=True))
        batch_op.create_index(batch_op.f("ix_managed_objects_rotate_due"), ["rotate_due"],
                              unique=False)
        batch_op.create_index(batch_op.f("ix_managed_objects_wrapped_by"), ["wrapped_by"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("managed_objects") as batch_op:
        batch_op.drop_index(batch_op.f("ix_managed_objects_wrapped_by"))
        batch_op.drop_index(batch_op.f("ix_managed_objects_rotate_due"))
        batch_op.drop_column("rotate_due")
    op.drop_table("l3_usage")
    op.drop_table("rotation_policies")
