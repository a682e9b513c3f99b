"""The state sweeper's indexes: every periodic step reads what is due, not every object.

Three partial indexes of the tenant and service keys (``managed_objects`` rows whose
``level`` is not NULL, a few among the objects): by level, state, tenant, service and
version, for the sweeper's look-ups of the current and retired tenant and service keys
(automatic rotation, the re-wrap) and a request's of its tenant's or service's keys; by
state and Activation Date, and by state and Deactivation Date, for the keys whose dates
passed (:mod:`kcm.core.state_sweeper`). Without them each sweep, every 5 s in one write
transaction, read the whole table (about 0.3 s with 200,000 objects on SQLite). (A re-wrap
batch reads 0003's index on ``wrapped_by`` in its own order; a wider index there, on
``(wrapped_by, tenant, uid)``, cost every Create some 5 % of kcm-core's throughput.)

Indexes only: no row is rewritten. Building them reads ``managed_objects`` once.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The partial indexes' predicate (kcm.core.store.schema.HIERARCHY_KEYS, as of this revision).
_HIERARCHY_KEYS = "level IS NOT NULL"
_HIERARCHY = (
    ("ix_managed_objects_level_state_tenant_service_key_version",
     ["level", "state", "tenant", "service", "key_version"]),
    ("ix_managed_objects_state_activation_date", ["state", "activation_date"]),
    ("ix_managed_objects_state_deactivation_date", ["state", "deactivation_date"]),
)


def upgrade() -> None:
    with op.batch_alter_table("managed_objects") as batch_op:
        for name, columns in _HIERARCHY:
            batch_op.create_index(
                batch_op.f(name), columns, unique=False,
                sqlite_where=sa.text(_HIERARCHY_KEYS), postgresql_where=sa.text(_HIERARCHY_KEYS))


def downgrade() -> None:
    with op.batch_alter_table("managed_objects") as batch_op:
        for name, _columns in reversed(_HIERARCHY):
            batch_op.drop_index(batch_op.f(name))
