"""Each tenant's own request rate and burst: ``tenants.requests_per_second`` and
``tenants.request_burst`` (:mod:`kcm.core.request_rates`).

Both NULL (the core's ``[core.limits] requests_per_second_per_tenant`` and
``request_burst_per_tenant``) until ``kcm core tenant limit`` sets them. Two nullable
columns: no row is rewritten.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.add_column(sa.Column("requests_per_second", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("request_burst", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch_op:
        batch_op.drop_column("request_burst")
        batch_op.drop_column("requests_per_second")
