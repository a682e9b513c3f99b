"""The keyed audit chain: a MAC column on audit records.

Records written before this revision keep ``mac`` NULL (unkeyed); every record written after
it carries HMAC-SHA-256 of its digest under the audit key derived from L1 (see
:mod:`kcm.core.audit`). A nullable column: adding it rewrites nothing, on either backend.

A database that already holds records when it is upgraded also gets the ``meta`` row
``audit.unkeyed``, ``SEQ:DIGESTHEX`` of its newest record: the one unkeyed chain
:func:`kcm.core.audit.key_chain` may anchor, once. A database created at this revision or
later never has it, so an unkeyed newest record there (MACs stripped) is never anchored.

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
    if op.get_context().as_sql:
        return  # offline SQL: there are no rows to look at
    audit_log = sa.table("audit_log", sa.column("seq"), sa.column("digest"))
    newest = op.get_bind().execute(
        sa.select(audit_log.c.seq, audit_log.c.digest).order_by(audit_log.c.seq.desc())
        .limit(1)).first()
    if newest is not None:
        # The key is kcm.core.audit.UNKEYED_META_KEY (not imported: a migration stands alone).
        op.execute(sa.table("meta", sa.column("key"), sa.column("value")).insert().values(
            key="audit.unkeyed", value=f"{newest[0]}:{bytes(newest[1]).hex()}"))


def downgrade() -> None:
    # Development only: dropping the MACs leaves a chain that `kcm audit verify` refuses.
    op.execute("DELETE FROM meta WHERE key = 'audit.unkeyed'")
    with op.batch_alter_table("audit_log") as batch_op:
        batch_op.drop_column("mac")
