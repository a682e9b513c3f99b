"""The keyed audit chain: a MAC column on audit records.

Records written before this revision keep ``mac`` NULL (unkeyed); every record written after
it carries HMAC-SHA-256 of its digest under the audit key derived from L1 (see
:mod:`kcm.core.audit`). A nullable column: adding it rewrites nothing, on either backend.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch_op:
        batch_op.add_column(sa.Column("mac", sa.LargeBinary(length=32), nullable=True))


def downgrade() -> None:
    # Development only: dropping the MACs leaves a chain that `kcm audit verify` refuses.
    with op.batch_alter_table("audit_log") as batch_op:
        batch_op.drop_column("mac")
