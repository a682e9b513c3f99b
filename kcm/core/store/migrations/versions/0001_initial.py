"""Initial KSI schema: tenants, managed objects and their Locate copies, L4 tombstones,
the hash-chained audit log, the gateway outbox, and store metadata.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_tenants")),
    )
    op.create_table(
        "managed_objects",
        sa.Column("uid", sa.Text(), nullable=False),
        sa.Column("created_seq", sa.BigInteger(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("object_type", sa.Integer(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=True),
        sa.Column("service", sa.Text(), nullable=True),
        sa.Column("key_version", sa.Integer(), nullable=True),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("cryptographic_algorithm", sa.Integer(), nullable=True),
        sa.Column("cryptographic_length", sa.Integer(), nullable=True),
        sa.Column("initial_date", sa.BigInteger(), nullable=True),
        sa.Column("activation_date", sa.BigInteger(), nullable=True),
        sa.Column("deactivation_date", sa.BigInteger(), nullable=True),
        sa.Column("destroy_date", sa.BigInteger(), nullable=True),
        sa.Column("compromise_date", sa.BigInteger(), nullable=True),
        sa.Column("compromise_occurrence_date", sa.BigInteger(), nullable=True),
        sa.Column("last_change_date", sa.BigInteger(), nullable=True),
        sa.Column("process_start_date", sa.BigInteger(), nullable=True),
        sa.Column("protect_stop_date", sa.BigInteger(), nullable=True),
        sa.Column("material", sa.LargeBinary(), nullable=True),
        sa.Column("material_format", sa.Integer(), nullable=True),
        sa.Column("wrapped_by", sa.Text(), nullable=True),
        sa.Column("attributes", sa.LargeBinary(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant"], ["tenants.name"], name=op.f("fk_managed_objects_tenant_tenants")
        ),
        sa.PrimaryKeyConstraint("uid", name=op.f("pk_managed_objects")),
        sa.UniqueConstraint("created_seq", name=op.f("uq_managed_objects_created_seq")),
        sa.UniqueConstraint(
            "tenant",
            "service",
            "key_version",
            name=op.f("uq_managed_objects_tenant_service_key_version"),
        ),
    )
    op.create_index(op.f("ix_managed_objects_tenant"), "managed_objects", ["tenant"])
    op.create_index(
        op.f("ix_managed_objects_tenant_level_service"),
        "managed_objects",
        ["tenant", "level", "service"],
    )
    op.create_table(
        "object_names",
        sa.Column("uid", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("name_type", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["uid"],
            ["managed_objects.uid"],
            name=op.f("fk_object_names_uid_managed_objects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("uid", "name", name=op.f("pk_object_names")),
    )
    op.create_index(op.f("ix_object_names_tenant_name"), "object_names", ["tenant", "name"])
    op.create_table(
        "object_groups",
        sa.Column("uid", sa.Text(), nullable=False),
        sa.Column("group_name", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["uid"],
            ["managed_objects.uid"],
            name=op.f("fk_object_groups_uid_managed_objects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("uid", "group_name", name=op.f("pk_object_groups")),
    )
    op.create_index(
        op.f("ix_object_groups_tenant_group_name"), "object_groups", ["tenant", "group_name"]
    )
    op.create_table(
        "l4_tombstones",
        sa.Column("token_id", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("l3_uid", sa.Text(), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["l3_uid"],
            ["managed_objects.uid"],
            name=op.f("fk_l4_tombstones_l3_uid_managed_objects"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant"], ["tenants.name"], name=op.f("fk_l4_tombstones_tenant_tenants")
        ),
        sa.PrimaryKeyConstraint("token_id", name=op.f("pk_l4_tombstones")),
    )
    op.create_index(op.f("ix_l4_tombstones_l3_uid"), "l4_tombstones", ["l3_uid"])
    op.create_index(op.f("ix_l4_tombstones_tenant"), "l4_tombstones", ["tenant"])
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("principal", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=True),
        sa.Column("gateway", sa.Text(), nullable=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("operation", sa.Text(), nullable=False),
        sa.Column("object_ids", sa.Text(), nullable=False),
        sa.Column("result_status", sa.Text(), nullable=False),
        sa.Column("result_reason", sa.Text(), nullable=True),
        sa.Column("correlation_id", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("prev_digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("digest", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_log")),
    )
    op.create_table(
        "outbox",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_outbox")),
    )
    op.create_table(
        "meta",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_meta")),
    )


def downgrade() -> None:
    # Dropping the audit log destroys evidence; downgrade exists for development only.
    op.drop_table("meta")
    op.drop_table("outbox")
    op.drop_table("audit_log")
    op.drop_index(op.f("ix_l4_tombstones_tenant"), table_name="l4_tombstones")
    op.drop_index(op.f("ix_l4_tombstones_l3_uid"), table_name="l4_tombstones")
    op.drop_table("l4_tombstones")
    op.drop_index(op.f("ix_object_groups_tenant_group_name"), table_name="object_groups")
    op.drop_table("object_groups")
    op.drop_index(op.f("ix_object_names_tenant_name"), table_name="object_names")
    op.drop_table("object_names")
    op.drop_index(op.f("ix_managed_objects_tenant_level_service"), table_name="managed_objects")
    op.drop_index(op.f("ix_managed_objects_tenant"), table_name="managed_objects")
    op.drop_table("managed_objects")
    op.drop_table("tenants")
