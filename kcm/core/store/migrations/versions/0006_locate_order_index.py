"""Locate's index: a tenant's objects in the order Locate reads them, newest first.

Replaces the index on ``managed_objects(tenant)`` by one on ``(tenant, created_seq)``.
Locate reads a tenant's objects in keyset pages ordered by ``created_seq``; with the tenant
alone indexed, SQLite sorted every remaining object of the tenant for each page of 256
(``USE TEMP B-TREE FOR ORDER BY``), so a Locate that counts its matches, or an application
whose objects are few among another service's, took time quadratic in the tenant's size
(past the 10 s request deadline at 50,000 objects). The new index begins with the tenant:
it serves every look-up the old one did (the foreign key to ``tenants``, a tenant's rows),
and every insert still writes as many index entries as before (an index more cost Create
some 5 % of kcm-core's throughput; see 0005).

Indexes only: no row is rewritten. Building it reads ``managed_objects`` once.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-20
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = ("ix_managed_objects_tenant", ["tenant"])
_NEW = ("ix_managed_objects_tenant_created_seq", ["tenant", "created_seq"])


def upgrade() -> None:
    with op.batch_alter_table("managed_objects") as batch_op:
        # The new index first: a tenant's rows are never without one.
        batch_op.create_index(batch_op.f(_NEW[0]), _NEW[1], unique=False)
        batch_op.drop_index(batch_op.f(_OLD[0]))


def downgrade() -> None:
    with op.batch_alter_table("managed_objects") as batch_op:
        batch_op.create_index(batch_op.f(_OLD[0]), _OLD[1], unique=False)
        batch_op.drop_index(batch_op.f(_NEW[0]))
