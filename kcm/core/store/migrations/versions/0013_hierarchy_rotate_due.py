"""The tenant and service keys whose rotation policy the state sweeper judges next, by
when: a partial index on (level, rotate_due) of the hierarchy keys, and every Active tenant
and service key marked to be judged at the first sweep (:mod:`kcm.core.rotation_schedule`).

Before this revision each sweep read the current key of every service and every tenant
once any rotation policy existed (290 ms of the writer every 5 s with 10,000 tenants,
nothing due); from it a sweep reads the keys whose ``rotate_due`` has come. The column is
the one managed keys rotate by (0003), NULL until now for tenant and service keys: the
first sweep after the upgrade judges every one of them, as every sweep did before, and
gives each its next time.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The partial index's predicate (kcm.core.store.schema.HIERARCHY_KEYS, as of this revision).
_HIERARCHY_KEYS = "level IS NOT NULL"
_NAME = "ix_managed_objects_level_rotate_due"
#: kcm.core.store.schema.STATE_ACTIVE and LOOK_AGAIN.
_ACTIVE, _LOOK_AGAIN = 2, 0

_objects = sa.table("managed_objects", sa.column("level", sa.Integer()),
                    sa.column("state", sa.Integer()), sa.column("rotate_due", sa.BigInteger()))


def upgrade() -> None:
    with op.batch_alter_table("managed_objects") as batch_op:
        batch_op.create_index(
            batch_op.f(_NAME), ["level", "rotate_due"], unique=False,
            sqlite_where=sa.text(_HIERARCHY_KEYS), postgresql_where=sa.text(_HIERARCHY_KEYS))
    op.execute(_objects.update().where(_objects.c.level.is_not(None),
                                       _objects.c.state == _ACTIVE)
               .values(rotate_due=_LOOK_AGAIN))


def downgrade() -> None:
    op.execute(_objects.update().where(_objects.c.level.is_not(None))
               .values(rotate_due=None))
    with op.batch_alter_table("managed_objects") as batch_op:
        batch_op.drop_index(batch_op.f(_NAME))
