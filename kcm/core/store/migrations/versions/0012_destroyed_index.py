"""The index of destroyed objects by their Destroy Date, for the state sweeper's purge of
those destroyed longer ago than ``destroyed_retention`` (:mod:`kcm.core.destroyed_retention`).

A partial index of the rows whose ``destroy_date`` is set (the destroyed objects, and only
them: a Destroy sets it, nothing else does): a Create writes no entry in it, a Destroy one.
Without it each sweep would read the whole table to find the few objects due.

Indexes only: no row is rewritten. Building it reads ``managed_objects`` once.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The partial index's predicate (kcm.core.store.schema.DESTROYED_OBJECTS,
#: as of this revision).
_DESTROYED_OBJECTS = "destroy_date IS NOT NULL"
_NAME = "ix_managed_objects_destroy_date"


def upgrade() -> None:
    with op.batch_alter_table("managed_objects") as batch_op:
        batch_op.create_index(
            batch_op.f(_NAME), ["destroy_date"], unique=False,
            sqlite_where=sa.text(_DESTROYED_OBJECTS),
            postgresql_where=sa.text(_DESTROYED_OBJECTS))


def downgrade() -> None:
    with op.batch_alter_table("managed_objects") as batch_op:
        batch_op.drop_index(batch_op.f(_NAME))
