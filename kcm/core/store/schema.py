"""The key-state inventory's tables, as SQLAlchemy 2.x typed declarative mappings.

The schema is portable between SQLite and PostgreSQL: only ``Text``, ``Integer``,
``BigInteger`` and ``LargeBinary`` columns, no server-side defaults, no sequences.

Time is stored as integers, never as ``DateTime``:

- KMIP date attributes (Initial Date, Activation Date, ...) and ``tenants.created_at`` /
  ``l4_tombstones.at`` are epoch **seconds**, the resolution of a KMIP Date-Time.
- ``audit_log.at`` and ``outbox.at`` are epoch **microseconds**.
- ``core_presence.last_seen`` is epoch **milliseconds**.

Every sequence number (``managed_objects.created_seq``, ``audit_log.seq``, ``outbox.seq``) is
assigned by the repository as ``max + 1`` while writers are serialized (see
:func:`kcm.core.store.repository.lock_writers`): that makes the audit and outbox sequences
gapless and ordered by commit, which a database sequence does not guarantee (a rolled-back
``nextval`` leaves a gap; two transactions can commit out of ``nextval`` order).

Changes to this module need a new Alembic revision under ``migrations/versions``; a test
checks that the migrated database matches this metadata.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# KMIP State enumeration values (KMIP 1.4 §9.1.3.2.18); repeated here so the store depends on
# no codec module.
STATE_PRE_ACTIVE = 1
STATE_ACTIVE = 2
STATE_DEACTIVATED = 3
STATE_COMPROMISED = 4
STATE_DESTROYED = 5
STATE_DESTROYED_COMPROMISED = 6

LEVEL_TENANT_KEY = 2
LEVEL_SERVICE_KEY = 3

WRAPPED_BY_L1 = "L1"

#: The predicate of the partial indexes of tenant and service keys (migration 0005): a
#: query uses them when its conditions imply it (``level = ...``, ``level IN (...)``).
HIERARCHY_KEYS = "level IS NOT NULL"
#: The predicate of Locate's partial index of the objects not destroyed (migration 0011).
#: A query uses it when it says the same, in these words and with these constants (bound
#: parameters hide them from both planners): :func:`kcm.core.store.repository.locate`.
LIVE_OBJECTS = "state NOT IN (5, 6)"
#: The predicate of the partial index of destroyed objects by Destroy Date (migration 0012,
#: for the purge after ``destroyed_retention``, kcm.core.destroyed_retention).
DESTROYED_OBJECTS = "destroy_date IS NOT NULL"
#: A tenant or service key's ``rotate_due`` when the state sweeper is to judge its rotation
#: policy at its next sweep (kcm.core.rotation_schedule): it was made, its state or dates
#: changed, a policy of its scope changed, or its usage reached a cap.
LOOK_AGAIN = 0

# Named constraints make future migrations (and SQLite batch mode) deterministic.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every KSI table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Tenant(Base):
    """A tenant: the unit of isolation for every object."""

    __tablename__ = "tenants"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    #: The rows the tenant holds that count against its bound (:mod:`kcm.core.store.quota`,
    #: migration 0014): its managed objects, destroyed ones until purged, and L4 tombstones.
    stored: Mapped[int] = mapped_column(BigInteger)
    #: The tenant's own bound on ``stored`` (``kcm core tenant limit``); NULL: the core's
    #: ``max_objects_per_tenant``; 0: none.
    max_objects: Mapped[int | None] = mapped_column(BigInteger)
    #: The tenant's own request rate, batch items a second (:mod:`kcm.core.request_rates`,
    #: migration 0015; ``kcm core tenant limit``); NULL: the core's
    #: ``requests_per_second_per_tenant``; 0: none.
    requests_per_second: Mapped[float | None] = mapped_column(Float)
    #: The tenant's own burst, batch items; NULL: the core's ``request_burst_per_tenant``;
    #: 0: one second of its rate.
    request_burst: Mapped[int | None] = mapped_column(BigInteger)


class ManagedObject(Base):
    """One KMIP managed object: an L2 tenant key, an L3 service-key version, or an ordinary
    object a client created or registered.

    ``material`` holds the key material wrapped (see :mod:`kcm.core.keys`), never plaintext,
    and is NULL once destroyed. ``attributes`` is an opaque TTLV blob owned by the operation
    handlers; the columns beside it are the copies Locate and the hierarchy look-ups filter on.
    ``revision`` starts at 1 and the ORM increments it on every UPDATE of the row, refusing an
    update whose in-memory revision is stale (optimistic concurrency as a second line behind
    the serialized writers).
    """

    __tablename__ = "managed_objects"
    __table_args__ = (
        UniqueConstraint("created_seq"),
        # At most one row per (tenant, service, version); NULLs (ordinary objects) never clash.
        UniqueConstraint("tenant", "service", "key_version"),
        Index(None, "tenant", "level", "service"),
        # A tenant's objects in the order Locate pages through them, newest first
        # (migration 0006, in place of an index on the tenant alone, which it serves).
        Index(None, "tenant", "created_seq"),
        # The same, of the objects not destroyed (migration 0011): a Locate with the
        # default Storage Status Mask read every destroyed object of its tenant.
        Index("ix_managed_objects_live_tenant_created_seq", "tenant", "created_seq",
              sqlite_where=text(LIVE_OBJECTS), postgresql_where=text(LIVE_OBJECTS)),
        # The state sweeper's look-ups (migration 0005), each a range of what is due rather
        # than a pass over every object. Partial, of the hierarchy keys alone (a few among
        # the objects): by level and state (the current and retired tenant and service keys;
        # with tenant and service, so that a request's look-up of its tenant's or service's
        # keys is exact here too: SQLite, without statistics, prefers a partial index that
        # matches as many columns), and by state and Activation or Deactivation Date (the
        # keys whose dates passed). And what a tenant key wraps, in the order the re-wrap
        # moves it (kcm.core.tenant_rotation).
        Index(None, "level", "state", "tenant", "service", "key_version",
              sqlite_where=text(HIERARCHY_KEYS), postgresql_where=text(HIERARCHY_KEYS)),
        Index(None, "state", "activation_date",
              sqlite_where=text(HIERARCHY_KEYS), postgresql_where=text(HIERARCHY_KEYS)),
        Index(None, "state", "deactivation_date",
              sqlite_where=text(HIERARCHY_KEYS), postgresql_where=text(HIERARCHY_KEYS)),
        # The tenant and service keys whose rotation policy the sweeper judges next, by
        # when (migration 0013): those due, not every current key (kcm.core.rotation_schedule).
        Index(None, "level", "rotate_due",
              sqlite_where=text(HIERARCHY_KEYS), postgresql_where=text(HIERARCHY_KEYS)),
        # The destroyed objects by Destroy Date (migration 0012): those destroyed longer
        # ago than ``destroyed_retention``, which the state sweeper deletes.
        Index(None, "destroy_date",
              sqlite_where=text(DESTROYED_OBJECTS), postgresql_where=text(DESTROYED_OBJECTS)),
    )

    uid: Mapped[str] = mapped_column(Text, primary_key=True)
    created_seq: Mapped[int] = mapped_column(BigInteger)
    tenant: Mapped[str] = mapped_column(Text, ForeignKey("tenants.name"))
    object_type: Mapped[int] = mapped_column(Integer)
    level: Mapped[int | None] = mapped_column(Integer)
    service: Mapped[str | None] = mapped_column(Text)
    key_version: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[int] = mapped_column(Integer)
    cryptographic_algorithm: Mapped[int | None] = mapped_column(Integer)
    cryptographic_length: Mapped[int | None] = mapped_column(Integer)
    #: A copy of the Cryptographic Usage Mask attribute, for Locate (migration 0007).
    cryptographic_usage_mask: Mapped[int | None] = mapped_column(BigInteger)
    initial_date: Mapped[int | None] = mapped_column(BigInteger)
    activation_date: Mapped[int | None] = mapped_column(BigInteger)
    deactivation_date: Mapped[int | None] = mapped_column(BigInteger)
    destroy_date: Mapped[int | None] = mapped_column(BigInteger)
    compromise_date: Mapped[int | None] = mapped_column(BigInteger)
    compromise_occurrence_date: Mapped[int | None] = mapped_column(BigInteger)
    last_change_date: Mapped[int | None] = mapped_column(BigInteger)
    process_start_date: Mapped[int | None] = mapped_column(BigInteger)
    protect_stop_date: Mapped[int | None] = mapped_column(BigInteger)
    material: Mapped[bytes | None] = mapped_column(LargeBinary)
    material_format: Mapped[int | None] = mapped_column(Integer)
    #: The L2 (uid) or ``L1`` that wraps ``material``; indexed with ``tenant`` and ``uid``
    #: (migration 0005; alone in 0003) for the re-wrap after a tenant key rotation
    #: (:mod:`kcm.core.tenant_rotation`).
    wrapped_by: Mapped[str | None] = mapped_column(Text, index=True)
    attributes: Mapped[bytes] = mapped_column(LargeBinary)
    revision: Mapped[int] = mapped_column(Integer)
    #: When a managed key rotates by itself (KMIP 2.1 Rotate Automatic and Rotate Interval,
    #: :mod:`kcm.core.managed_rotation`): computed from its attributes on every save; NULL
    #: when it does not (migration 0003). Of a tenant or service key: when the state sweeper
    #: next judges its rotation policy (:mod:`kcm.core.rotation_schedule`, migration 0013):
    #: :data:`LOOK_AGAIN` once it is written; NULL: not until it is written again.
    rotate_due: Mapped[int | None] = mapped_column(BigInteger, index=True)
    #: The row's MAC (:mod:`kcm.core.store.row_seal`, migration 0017): every write of the
    #: row writes it; NULL in a row of an earlier release until the state sweeper MACs it.
    row_mac: Mapped[bytes | None] = mapped_column(LargeBinary)

    __mapper_args__ = {"version_id_col": revision}


# The date columns Locate may filter on, by column name.
DATE_COLUMNS: frozenset[str] = frozenset(
    {
        "initial_date",
        "activation_date",
        "deactivation_date",
        "destroy_date",
        "compromise_date",
        "compromise_occurrence_date",
        "last_change_date",
        "process_start_date",
        "protect_stop_date",
    }
)


class ObjectName(Base):
    """One Name attribute of a managed object (copied from the blob for Locate)."""

    __tablename__ = "object_names"
    __table_args__ = (Index(None, "tenant", "name"),)

    uid: Mapped[str] = mapped_column(
        Text, ForeignKey("managed_objects.uid", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant: Mapped[str] = mapped_column(Text)
    name_type: Mapped[int] = mapped_column(Integer)


class ObjectGroup(Base):
    """One Object Group attribute of a managed object (copied from the blob for Locate)."""

    __tablename__ = "object_groups"
    __table_args__ = (Index(None, "tenant", "group_name"),)

    uid: Mapped[str] = mapped_column(
        Text, ForeignKey("managed_objects.uid", ondelete="CASCADE"), primary_key=True
    )
    group_name: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant: Mapped[str] = mapped_column(Text)


class ObjectAttributeKey(Base):
    """A Locate key of one of a managed object's Links or vendor attributes
    (:mod:`kcm.core.attribute_keys`; migration 0008): ``kind`` says which attribute,
    ``key`` the value an equal criterion has."""

    __tablename__ = "object_attribute_keys"
    __table_args__ = (Index(None, "tenant", "kind", "key"),)

    uid: Mapped[str] = mapped_column(
        Text, ForeignKey("managed_objects.uid", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(Text, primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant: Mapped[str] = mapped_column(Text)


class L4Tombstone(Base):
    """A revoked or destroyed L4 token: gateways refuse it from then on."""

    __tablename__ = "l4_tombstones"
    # A version's tombstones in TokenId order, as a gateway pages them in (link version 9;
    # migration 0014, in place of an index on l3_uid alone, which it serves).
    __table_args__ = (Index(None, "l3_uid", "token_id"),)

    token_id: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant: Mapped[str] = mapped_column(Text, ForeignKey("tenants.name"), index=True)
    l3_uid: Mapped[str] = mapped_column(Text, ForeignKey("managed_objects.uid"))
    at: Mapped[int] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)


class AuditLog(Base):
    """One hash-chained audit record; see :mod:`kcm.core.audit` for the digest and the MAC
    (None for records written before the chain was keyed, migration 0002)."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[int] = mapped_column(BigInteger)
    principal: Mapped[str] = mapped_column(Text)
    tenant: Mapped[str | None] = mapped_column(Text)
    gateway: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)
    operation: Mapped[str] = mapped_column(Text)
    object_ids: Mapped[str] = mapped_column(Text)
    result_status: Mapped[str] = mapped_column(Text)
    result_reason: Mapped[str | None] = mapped_column(Text)
    correlation_id: Mapped[str] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
    prev_digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    mac: Mapped[bytes | None] = mapped_column(LargeBinary(32))


class OutboxEvent(Base):
    """One event for the gateways, committed with the change that caused it."""

    __tablename__ = "outbox"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[int] = mapped_column(BigInteger)
    tenant: Mapped[str | None] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    payload: Mapped[bytes] = mapped_column(LargeBinary)


class Meta(Base):
    """Store-wide key/value facts (e.g. the L1 key check value, the audit chain head)."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class RotationPolicy(Base):
    """When service keys rotate by themselves (:mod:`kcm.core.rotation_policy`): one row per
    scope, ``("", "")`` the deployment's default, ``(tenant, "")`` a tenant's, ``(tenant,
    service)`` a service's. A NULL field is inherited from the wider scope (migration 0003).
    """

    __tablename__ = "rotation_policies"

    tenant: Mapped[str] = mapped_column(Text, primary_key=True)
    service: Mapped[str] = mapped_column(Text, primary_key=True)
    #: Seconds a version is current before the next one replaces it (0: never by age).
    interval: Mapped[int | None] = mapped_column(BigInteger)
    #: Encryptions under one version (L4 seals, DEK wraps) before it is replaced (0: the
    #: built-in cap, :data:`kcm.core.rotation_policy.BUILTIN_MAX_USES`).
    max_uses: Mapped[int | None] = mapped_column(BigInteger)
    #: Seconds a replaced version stays Active before it is Deactivated (decrypt-only).
    overlap: Mapped[int | None] = mapped_column(BigInteger)
    #: The Rotate Interval a managed symmetric key created in this scope gets (with Rotate
    #: Automatic) when its Create names neither (0: none).
    managed_interval: Mapped[int | None] = mapped_column(BigInteger)
    #: Seconds a tenant key (L2) is current before a new one replaces it (default and
    #: tenant scopes only; 0: never by age).
    tenant_key_interval: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class L3Usage(Base):
    """How many encryptions were made under one L3 version, as the gateways and the core
    reported them (:mod:`kcm.core.usage`). Counts only grow."""

    __tablename__ = "l3_usage"

    uid: Mapped[str] = mapped_column(Text, primary_key=True)
    uses: Mapped[int] = mapped_column(BigInteger)
    reported_at: Mapped[int] = mapped_column(BigInteger)


class SpentStreamPart(Base):
    """A Correlation Value a request has used (:mod:`kcm.core.stream_parts`): the part of
    the stream it named, so that it is refused the second time. Kept until the value has
    expired (``expires_at``, epoch seconds), then purged by the state sweeper (migration
    0004)."""

    __tablename__ = "spent_stream_parts"

    stream_id: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    part: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)


class CorePresenceRow(Base):
    """A core serving the database, as it last announced itself (:mod:`kcm.core.core_presence`,
    migration 0016): every few seconds, so that each core knows how many share each tenant's
    request rate. Deleted as the core stops, or once long unseen."""

    __tablename__ = "core_presence"

    #: The core's id: host, process id, a random part.
    core: Mapped[str] = mapped_column(Text, primary_key=True)
    #: When it last announced itself, by the database's clock: epoch milliseconds.
    last_seen: Mapped[int] = mapped_column(BigInteger)
