"""Locate's index of a tenant's objects that are not destroyed, in the order it reads them.

A Locate with the default Storage Status Mask (no destroyed objects) pages through a
tenant's objects by ``created_seq`` (migration 0006) and read each row to test its state:
destroyed objects are never purged unless ``destroyed_retention`` says so, so with a
million destroyed objects in a tenant such a Locate read them all for its few live ones
(562 ms at p50 for ten answers, against 2.9 ms on a small database). A partial index of the
same columns, of the objects whose state is not Destroyed or Destroyed Compromised, serves
it (0.05 ms for the statement): the query says ``managed_objects.state NOT IN (5, 6)`` in
those words (:data:`kcm.core.store.schema.LIVE_OBJECTS`), for the planners of both SQLite
and PostgreSQL to see that the index holds every row it wants.

Indexes only: no row is rewritten. Building it reads ``managed_objects`` once (0.3 s a
million rows on SQLite); each Create and Destroy writes one more index entry.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The index's predicate (kcm.core.store.schema.LIVE_OBJECTS, as of this revision).
_LIVE_OBJECTS = "state NOT IN (5, 6)"
_NAME = "ix_managed_objects_live_tenant_created_seq"


def upgrade() -> None:
    with op.batch_alter_table("managed_objects") as batch_op:
        batch_op.create_index(_NAME, ["tenant", "created_seq"], unique=False,
                              sqlite_where=sa.text(_LIVE_OBJECTS),
                              postgresql_where=sa.text(_LIVE_OBJECTS))


def downgrade() -> None:
    with op.batch_alter_table("managed_objects") as batch_op:
        batch_op.drop_index(_NAME)
