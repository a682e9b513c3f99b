"""Queries and changes of the key-state inventory, over a Session inside one transaction.

Every function here expects to run inside :meth:`kcm.core.store.engine.Store.run` (or another
transaction the caller owns) and never commits. Objects are always looked up within a tenant:
an object of another tenant is indistinguishable from a missing one.
"""

from __future__ import annotations

import time
from collections import Counter, namedtuple
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    delete,
    event,
    exists,
    false,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, make_transient_to_detached, object_session
from sqlalchemy.orm.attributes import NO_VALUE, flag_modified, set_committed_value
from sqlalchemy.orm.exc import StaleDataError
from sqlalchemy.orm.util import identity_key
from twisted.logger import Logger

from kcm.core.store import quota
from kcm.core.store.known import WRITE_INFO, known_facts, learn
from kcm.core.store.object_cache import note_written
from kcm.core.store.raw_statements import RawStatement, connection_of, execute_plain
from kcm.core.store.row_seal import SEALED, seal_of
from kcm.core.store.savepoints import on_rollback
from kcm.core.store.schema import (
    DATE_COLUMNS,
    DESTROYED_OBJECTS,
    LEVEL_SERVICE_KEY,
    LEVEL_TENANT_KEY,
    LIVE_OBJECTS,
    LOOK_AGAIN,
    STATE_ACTIVE,
    STATE_DESTROYED,
    STATE_DESTROYED_COMPROMISED,
    STATE_PRE_ACTIVE,
    L3Usage,
    L4Tombstone,
    ManagedObject,
    Meta,
    ObjectAttributeKey,
    ObjectGroup,
    ObjectName,
    OutboxEvent,
    SpentStreamPart,
    Tenant,
)
from kcm.core.store.unavailable import SchemaMoved
from kcm.kmip.errors import KmipError
from kcm.link.events import EventKind

_log = Logger()

#: A session's ``info``: its transaction made key material unreadable (a Destroy); the
#: store then erases what its SQLite WAL still holds of it (``Store._erase_wal``).
MATERIAL_ERASED_INFO = "kcm.material.erased"

# Arbitrary constant: the key of the PostgreSQL advisory lock that serializes writers.
WRITER_LOCK_KEY = 0x4B434D0001
#: The PostgreSQL channel a commit that adds outbox events notifies.
OUTBOX_CHANNEL = "kcm_outbox"
#: ``Session.info``: the sequence number of the latest outbox event the transaction added
#: (the store then keeps it as ``outbox_committed`` and tells its ``on_outbox_written``
#: after the commit: this process's fan-out reads them at once).
OUTBOX_WRITTEN_INFO = "kcm.store.outbox_written"

Clock = Callable[[], float]


def lock_writers(session: Session) -> None:
    """Serialize this write transaction against every other writer, until it ends.

    PostgreSQL: a transaction-scoped advisory lock, taken once per transaction (a savepoint
    rolled back keeps it: only the transaction's end releases it); calling again is free.
    SQLite: nothing to do, ``BEGIN IMMEDIATE`` already holds the write lock.
    """
    if session.info.get(_WRITERS_LOCKED):
        return
    revision = session.info.get(SCHEMA_REVISION_INFO)
    if revision is not None or session.get_bind().dialect.name == "postgresql":
        # Straight to the driver: once per write transaction (every group commit), where
        # the ORM's execute cost more than the lock.
        lock_writers_on(connection_of(session), revision)
    session.info[_WRITERS_LOCKED] = True


#: A session's ``info``: the schema revision its writes need (kcm-core's: the one its code
#: was written for; :func:`lock_writers_on`). None or absent: not checked.
SCHEMA_REVISION_INFO = "kcm.schema.revision"


def _check_revision(stored: object, revision: str) -> None:
    if stored != revision:
        raise OperationalError("(schema revision check)", None, SchemaMoved(
            f"the database's schema is at revision {stored}, this kcm-core writes {revision}: "
            "restart it on the release that upgraded the database"))


def lock_writers_on(connection: Any, revision: str | None = None) -> None:
    """:func:`lock_writers` for a write transaction open on ``connection`` (a SQLAlchemy
    Connection) with no session around it; call it once, first.

    PostgreSQL: the lock is waited for at most :data:`WRITERS_LOCK_WAIT_S`; then the
    database error "lock timeout" is raised (an ``OperationalError``: a group commit's
    requests are answered General Failure, the key store unavailable). While it waits, a
    holder that has sent nothing for ``idle_in_transaction_session_timeout`` is ended
    (:func:`_end_silent_holder`). A free lock costs one statement, as it always did.

    With ``revision``, the schema revision the database must be at (in the same statement
    on PostgreSQL, read again after a wait): a database upgraded under a running kcm-core
    (``kcm core init``, or another core of a newer release) fails its writes with an
    ``OperationalError`` (the key store unavailable, :class:`SchemaMoved`) instead of
    taking rows the new release's migrations did not fill (a Usage Mask column, Locate's
    attribute keys)."""
    if connection.dialect.name != "postgresql":
        if revision is not None:
            _check_revision(execute_plain(connection, _REVISION).fetchone()[0], revision)
        return
    if revision is None:
        if not execute_plain(connection, _TRY_LOCK_WRITERS).fetchone()[0]:
            _wait_for_writers(connection)
        return
    locked, stored = execute_plain(connection, _TRY_LOCK_WRITERS_AND_REVISION).fetchone()
    if not locked:
        _wait_for_writers(connection)
        stored = execute_plain(connection, _REVISION).fetchone()[0]
    _check_revision(stored, revision)


#: The statement that takes the writers' lock (PostgreSQL).
_LOCK_WRITERS = f"SELECT pg_advisory_xact_lock({WRITER_LOCK_KEY})"
#: The same, if it is free now (a try never overtakes a writer already waiting).
_TRY_LOCK_WRITERS = f"SELECT pg_try_advisory_xact_lock({WRITER_LOCK_KEY})"

#: The schema revision the database is at.
_REVISION = "SELECT max(version_num) FROM alembic_version"
#: :data:`_TRY_LOCK_WRITERS` and :data:`_REVISION` in one round trip.
_TRY_LOCK_WRITERS_AND_REVISION = (f"SELECT pg_try_advisory_xact_lock({WRITER_LOCK_KEY}), "
                                  f"({_REVISION})")

#: Seconds a write transaction waits at most for the writers' lock (PostgreSQL): below the
#: default ``limits.request_deadline`` (10 s), so that the requests of a group commit that
#: cannot have it are answered (General Failure, "the key store is unavailable; try
#: again") before their deadline instead of hanging; above the
#: ``idle_in_transaction_session_timeout`` KCM sets (5 s,
#: :data:`kcm.core.store.engine.IDLE_IN_TRANSACTION_S`) plus one look, so that a holder
#: frozen mid-transaction is ended while the first writer behind it still waits.
WRITERS_LOCK_WAIT_S = 8.0
#: Seconds between a waiting writer's looks for a holder gone silent.
WRITERS_LOCK_LOOK_S = 1.0
#: The savepoint a waiting writer's tries roll back to (a lock timeout spoils a transaction).
_WAITING = "kcm_writers_wait"
#: PostgreSQL's SQLSTATE for a lock not granted within ``lock_timeout``.
_LOCK_NOT_AVAILABLE = "55P03"

# The writers' lock as pg_locks shows it (a bigint key: its halves, objsubid 1), held by a
# session of this database that is not the asking one.
_HOLDER = (
    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    f"AND l.classid = {WRITER_LOCK_KEY >> 32} AND l.objid = {WRITER_LOCK_KEY & 0xFFFFFFFF} "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND a.pid <> pg_backend_pid()")
_HOLDER_FIELDS = ("a.pid, coalesce(a.application_name, ''), "
                  "coalesce(host(a.client_addr), 'local'), a.state, "
                  "extract(epoch FROM clock_timestamp() - a.state_change)")
#: Ends the holder if it waits for its client (the server waits to read from it, or to
#: write to it) and has for longer than this session's idle_in_transaction_session_timeout
#: (0: never). The server ends a session idle in a transaction by itself; this one also
#: covers a client stopped between statements it sent without waiting for them (psycopg's
#: pipeline: the server counts that session active, not idle), and a holder of an older
#: KCM or another program without the setting.
_END_SILENT_HOLDER = (
    f"SELECT {_HOLDER_FIELDS}, pg_terminate_backend(a.pid) {_HOLDER} "
    "AND a.state <> 'idle' AND a.wait_event_type = 'Client' "
    "AND pg_has_role(a.usesysid, 'MEMBER') "
    "AND current_setting('idle_in_transaction_session_timeout') <> '0' "
    "AND a.state_change < clock_timestamp() "
    "- current_setting('idle_in_transaction_session_timeout')::interval")
_DESCRIBE_HOLDER = f"SELECT {_HOLDER_FIELDS} {_HOLDER}"


def _wait_for_writers(connection: Any) -> None:
    """Take the writers' lock, which another session holds now (see :func:`lock_writers_on`):
    in tries of :data:`WRITERS_LOCK_LOOK_S` each (``lock_timeout``, for this statement only),
    looking after each for a holder gone silent."""
    started = time.monotonic()
    execute_plain(connection, f"SAVEPOINT {_WAITING}", wait=False)
    while True:
        left = WRITERS_LOCK_WAIT_S - (time.monotonic() - started)
        look_ms = max(1, round(min(WRITERS_LOCK_LOOK_S, left) * 1000))
        execute_plain(connection, f"SET LOCAL lock_timeout = {look_ms}", wait=False)
        try:
            execute_plain(connection, _LOCK_WRITERS)
        except DBAPIError as e:
            if getattr(e.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                raise
            execute_plain(connection, f"ROLLBACK TO SAVEPOINT {_WAITING}")
            if time.monotonic() - started >= WRITERS_LOCK_WAIT_S:
                _log.warn("gave up waiting for the writers' lock after {seconds:g} s: held by "
                          "{holder}", seconds=WRITERS_LOCK_WAIT_S,
                          holder=_holder_described(connection))
                raise
            _end_silent_holder(connection)
            continue
        # Held, now by the transaction (a savepoint released passes its locks up).
        execute_plain(connection, f"RELEASE SAVEPOINT {_WAITING}", wait=False)
        execute_plain(connection, "SET LOCAL lock_timeout TO DEFAULT", wait=False)
        return


def _end_silent_holder(connection: Any) -> None:
    """End the session holding the writers' lock if it has gone silent (:data:`
    _END_SILENT_HOLDER`); never fails (the transaction is left as it was)."""
    try:
        ended = execute_plain(connection, _END_SILENT_HOLDER).fetchall()
    except DBAPIError as e:
        execute_plain(connection, f"ROLLBACK TO SAVEPOINT {_WAITING}")
        _log.warn("cannot end the silent holder of the writers' lock: {error}",
                  error=str(e.orig or e).strip().splitlines()[0])
        return
    for pid, application, address, state, silent, _ in ended:
        _log.warn("ended the database session {pid} ({application} at {address}, {state}) "
                  "that held the writers' lock and had sent nothing for {seconds:.1f} s: a "
                  "process frozen or cut off inside a write transaction", pid=pid,
                  application=application or "?", address=address, state=state,
                  seconds=float(silent))


def _holder_described(connection: Any) -> str:
    """Who holds the writers' lock, for a log line."""
    try:
        rows = execute_plain(connection, _DESCRIBE_HOLDER).fetchall()
    except DBAPIError:
        execute_plain(connection, f"ROLLBACK TO SAVEPOINT {_WAITING}")
        return "a session that cannot be named"
    if not rows:
        return "no session any more"
    pid, application, address, state, since = rows[0]
    return (f"session {pid} ({application or '?'} at {address}, {state} for "
            f"{float(since):.1f} s)")


#: ``Session.info``: the writers' lock is held by this session's transaction.
_WRITERS_LOCKED = "kcm.store.writers_locked"


#: ``Session.info``: values read once in this session's transaction (:func:`transaction_memo`).
_TRANSACTION_MEMO = "kcm.store.transaction_memo"


def transaction_memo(session: Session, key: str, compute: Callable[[], Any]) -> Any:
    """``compute()``, called once per transaction of ``session`` (a group commit's many
    requests share one): for a fact the transaction reads often and changes seldom. Whoever
    changes the fact calls :func:`forget_memo`."""
    memo = session.info.setdefault(_TRANSACTION_MEMO, {})
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def forget_memo(session: Session, key: str) -> None:
    """Have the next :func:`transaction_memo` of ``key`` read it again."""
    session.info.get(_TRANSACTION_MEMO, {}).pop(key, None)


def _transaction_ended(session: Session, *_: Any) -> None:
    if not session.in_nested_transaction():
        session.info.pop(_WRITERS_LOCKED, None)
        session.info.pop(_TRANSACTION_MEMO, None)
        session.info.pop(_NEXT_CREATED_SEQ, None)


def _rolled_back(session: Session, *_: Any) -> None:
    # A savepoint or the transaction: the objects it numbered are gone.
    session.info.pop(_NEXT_CREATED_SEQ, None)


# The lock goes with the transaction: the next one of the same session must take it again.
event.listen(Session, "after_commit", _transaction_ended)
event.listen(Session, "after_rollback", _transaction_ended)
event.listen(Session, "after_soft_rollback", _rolled_back)
on_rollback(_rolled_back)


def _dialect_insert(session: Session) -> Callable[..., Any]:
    # Both dialects spell "insert or ignore" as ON CONFLICT DO NOTHING, with their own class.
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


# --- tenants and meta ----------------------------------------------------------------------


def ensure_tenant(session: Session, name: str, *, clock: Clock = time.time) -> None:
    """Make sure tenant ``name`` exists (created now if it did not)."""
    stmt = (
        _dialect_insert(session)(Tenant)
        .values(name=name, created_at=int(clock()), stored=0)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    session.execute(stmt)


def get_meta(session: Session, key: str) -> str | None:
    """The value stored under ``key``, or None."""
    return session.scalar(select(Meta.value).where(Meta.key == key))


def set_meta(session: Session, key: str, value: str) -> None:
    """Store ``value`` under ``key``, replacing any previous value.

    One UPDATE (an INSERT the first time), not an ORM load and flush: the audit chain
    writes its head here on every request.
    """
    updated = session.execute(update(Meta).where(Meta.key == key).values(value=value))
    if updated.rowcount == 0:
        session.add(Meta(key=key, value=value))
        session.flush()


# --- managed objects -----------------------------------------------------------------------


def insert_object(
    session: Session,
    *,
    uid: str,
    tenant: str,
    object_type: int,
    state: int,
    attributes: bytes,
    material: bytes | None = None,
    material_format: int | None = None,
    wrapped_by: str | None = None,
    level: int | None = None,
    service: str | None = None,
    key_version: int | None = None,
    cryptographic_algorithm: int | None = None,
    cryptographic_length: int | None = None,
    cryptographic_usage_mask: int | None = None,
    names: Iterable[tuple[str, int]] = (),
    groups: Iterable[str] = (),
    keys: Iterable[tuple[str, str]] = (),
    attach: bool = True,
    bounded: bool | None = None,
    **dates: int | None,
) -> ManagedObject | None:
    """Insert a new managed object (its tenant must exist) and return it, flushed; with
    ``attach=False`` return None instead (no ORM object is made: the row is read back like
    any other if this transaction asks for it again).

    ``material`` must already be wrapped (:func:`kcm.core.keys.wrap`). ``dates`` are the
    KMIP date columns in epoch seconds (``initial_date=...``, ``activation_date=...``; see
    :data:`~kcm.core.store.schema.DATE_COLUMNS`), and ``rotate_due``. ``names`` are (value,
    Name Type) pairs; ``keys`` the (kind, key) pairs of its Links and vendor attributes
    (:func:`kcm.core.attribute_keys.keys_of`).
    A duplicate ``uid`` or L3 (tenant, service, version) raises ``IntegrityError``.

    The row counts against its tenant's bound (:mod:`kcm.core.store.quota`); ``bounded``
    (by default: an ordinary object, not a tenant or service key) refuses it at the bound
    with Server Limit Exceeded.
    """
    unknown = set(dates) - DATE_COLUMNS - {"rotate_due"}
    if unknown:
        raise TypeError(f"unknown date columns: {sorted(unknown)}")
    lock_writers(session)
    # Core statements, not the ORM's unit of work (a Create's hot path); the row then joins
    # the session as loaded, so later changes in this transaction go through the ORM.
    connection = connection_of(session)
    info = session.info
    # Numbered from memory within one transaction (it holds the writers' lock); a
    # savepoint rolled back forgets the number, since the rows it counted may be gone.
    next_seq = info.get(_NEXT_CREATED_SEQ)
    if next_seq is None:
        next_seq = _read_write_head(session)[0]
    if level is None and service is not None:
        _check_trusted_service(session, tenant, service)
    quota.charge(session, tenant, refuse=level is None if bounded is None else bounded)
    info[_NEXT_CREATED_SEQ] = next_seq + 1
    values: dict[str, Any] = {
        "uid": uid, "created_seq": next_seq, "tenant": tenant, "object_type": object_type,
        "level": level, "service": service, "key_version": key_version, "state": state,
        "cryptographic_algorithm": cryptographic_algorithm,
        "cryptographic_length": cryptographic_length,
        "cryptographic_usage_mask": cryptographic_usage_mask, "material": material,
        "material_format": material_format, "wrapped_by": wrapped_by,
        "attributes": attributes, "revision": 1, "rotate_due": None,
        **dict.fromkeys(DATE_COLUMNS), **dates,
    }
    if level is not None:
        values["rotate_due"] = LOOK_AGAIN  # (its policy judged at the next sweep)
    seal = seal_of(info)
    values["row_mac"] = None if seal is None else seal.mac_of_mapping(values)
    _INSERT_OBJECT.send(session, values)
    note_written(info, tenant, uid)  # (a rollback may free its uid and created_seq)
    _insert_locate_copies(connection, uid, tenant, names, groups, keys)
    if not attach:
        return None
    obj = ManagedObject(**values)
    make_transient_to_detached(obj)
    session.add(obj)
    return obj


#: ``Session.info``: the ``created_seq`` the next object inserted in this transaction gets.
_NEXT_CREATED_SEQ = "kcm.store.next_created_seq"

#: ``meta``: how many tenants ``kcm core tenant remove`` has removed (absent: none).
TENANT_REMOVALS_META_KEY = "tenants.removed"
#: ``meta``: how many times a tenant key (L2) stopped being Active, by whatever cause (a
#: Revoke, a rotation, its Deactivation Date; before the forty-first sitting: Revokes
#: alone, whence the name), ever committed (absent: none).
TENANT_KEY_REVOCATIONS_META_KEY = "tenant_keys.revoked"
#: :func:`transaction_memo` keys: the count of removals this transaction read; whether it
#: found it changed (its store's KnownFacts were forgotten then); the services
#: :func:`service_exists` took for provisioned from the KnownFacts before that read.
_TENANT_REMOVALS_MEMO = "kcm.store.tenant_removals"
_TENANT_KEY_REVOCATIONS_MEMO = "kcm.store.tenant_key_revocations"
_FACTS_FORGOTTEN_MEMO = "kcm.store.facts_forgotten"
_TRUSTED_SERVICES_MEMO = "kcm.store.trusted_services"
#: What a write transaction reads once, in one statement: the newest ``created_seq`` (the
#: next insert numbers from it), the count of tenant removals and that of tenant key
#: retirements. Folded together, the counts cost a Create nothing: the number was read once
#: per transaction before them.
_WRITE_HEAD = RawStatement(select(
    select(func.max(ManagedObject.created_seq)).scalar_subquery(),
    select(Meta.value).where(Meta.key == TENANT_REMOVALS_META_KEY).scalar_subquery(),
    select(Meta.value).where(Meta.key == TENANT_KEY_REVOCATIONS_META_KEY).scalar_subquery()))


def _read_write_head(session: Session) -> tuple[int, int, int]:
    """(the ``created_seq`` of the next object, the count of tenant removals, the count of
    tenant key revocations), read now, in a write transaction holding the writers' lock;
    all kept for the transaction. The store's KnownFacts are checked against the count of
    removals (:meth:`KnownFacts.hold_under`)."""
    newest, removals, revocations = _WRITE_HEAD.execute(session).fetchone()
    head = ((newest or 0) + 1, int(removals or 0), int(revocations or 0))
    info = session.info
    info.setdefault(_NEXT_CREATED_SEQ, head[0])
    memo = info.setdefault(_TRANSACTION_MEMO, {})
    memo[_TENANT_REMOVALS_MEMO] = head[1]
    memo[_TENANT_KEY_REVOCATIONS_MEMO] = head[2]
    facts = known_facts(session)
    if facts is not None and facts.removals != head[1]:
        facts.hold_under(head[1])
        memo[_FACTS_FORGOTTEN_MEMO] = True
    return head


def tenant_removals(session: Session) -> int | None:
    """How many tenants were ever removed (:func:`count_tenant_removal`), read once per
    write transaction, under the writers' lock: no removal commits before this transaction
    ends, so what it remembers of a tenant from before a change of this count may name a
    tenant that is gone, and nothing else can. None in a read-only transaction (it commits
    nothing, and does not read it).

    In the transaction of a Create it is read with the number the object needs anyway
    (:data:`_WRITE_HEAD`): one statement, as before."""
    return _head_count(session, _TENANT_REMOVALS_MEMO, 1)


def count_tenant_removal(session: Session) -> None:
    """A tenant is removed in this (write) transaction: count it, so that every core's
    next write transaction forgets what it remembers of tenants (:func:`tenant_removals`)."""
    _add_to_count(session, TENANT_REMOVALS_META_KEY, _TENANT_REMOVALS_MEMO)


def tenant_key_retirements(session: Session) -> int | None:
    """How many times a tenant key (L2) stopped being Active (:func:`count_tenant_key_retirement`),
    read once per write transaction under the writers' lock, with :func:`tenant_removals`:
    a change since a core looked up a tenant's current L2 means that L2 may no longer be
    Active (revoked, rotated or deactivated by date, at whichever core), so it is looked up
    again before it wraps anything (:meth:`kcm.core.keyring.Keyring.wrap_for_tenant`). None
    in a read-only transaction."""
    return _head_count(session, _TENANT_KEY_REVOCATIONS_MEMO, 2)


def count_tenant_key_retirement(session: Session) -> None:
    """A tenant key (L2) stops being Active in this (write) transaction: count it, so that
    every core's next write transaction looks up each tenant's current L2 again."""
    _add_to_count(session, TENANT_KEY_REVOCATIONS_META_KEY, _TENANT_KEY_REVOCATIONS_MEMO)


def _head_count(session: Session, memo_key: str, index: int) -> int | None:
    """Count ``index`` of :func:`_read_write_head` (kept in the transaction's memo under
    ``memo_key``), read under the writers' lock once per write transaction; None in a
    read-only one."""
    if not session.info.get(WRITE_INFO, True):
        return None
    memo = session.info.get(_TRANSACTION_MEMO)
    if memo is not None:
        count = memo.get(memo_key)
        if count is not None:
            return count
    lock_writers(session)
    return _read_write_head(session)[index]


def _add_to_count(session: Session, meta_key: str, memo_key: str) -> None:
    """One more in ``meta`` count ``meta_key``, in this write transaction, under the
    writers' lock; the transaction's memo of it (``memo_key``) forgotten."""
    lock_writers(session)
    set_meta(session, meta_key, str(int(get_meta(session, meta_key) or 0) + 1))
    forget_memo(session, memo_key)


def _check_trusted_service(session: Session, tenant: str, service: str) -> None:
    """Before an object of ``tenant``/``service`` is inserted: if this transaction took the
    service for provisioned on the word of KnownFacts it then found stale (a tenant was
    removed since they were last checked), ask the database; Permission Denied, as
    :func:`kcm.core.policy.check_provisioned` answers, if the service is gone. The common
    case (nothing was removed) reads nothing."""
    memo = session.info.get(_TRANSACTION_MEMO)
    if not memo or not memo.get(_FACTS_FORGOTTEN_MEMO):
        return
    trusted = memo.get(_TRUSTED_SERVICES_MEMO)
    if not trusted or (tenant, service) not in trusted:
        return
    if connection_of(session).execute(_SERVICE_EXISTS, {
            "tenant": tenant, "service": service}).first() is not None:
        trusted.discard((tenant, service))
        return
    from kcm.kmip.enums import ResultReason
    from kcm.kmip.errors import KmipError

    raise KmipError(ResultReason.PERMISSION_DENIED,
                    f"service {tenant}/{service} is not provisioned (it has no service key)")


_OBJECT_COLUMNS = [column.key for column in ManagedObject.__table__.columns]
#: A managed object's columns as read, by name; immutable (a row to change is attached).
ObjectColumns = namedtuple("ObjectColumns", _OBJECT_COLUMNS)  # type: ignore[misc]
_INSERT_OBJECT = RawStatement(ManagedObject.__table__.insert(), _OBJECT_COLUMNS)
_INSERT_NAME = ObjectName.__table__.insert()
_INSERT_GROUP = ObjectGroup.__table__.insert()
_INSERT_KEY = ObjectAttributeKey.__table__.insert()


def get_object(
    session: Session, tenant: str, uid: str, *, for_update: bool = False
) -> ManagedObject | None:
    """The object ``uid`` of ``tenant``, or None.

    ``for_update`` locks the row until the transaction ends (``SELECT ... FOR UPDATE`` on
    PostgreSQL; on SQLite the write transaction already holds the database write lock) and
    always re-reads it from the database.
    """
    if not in_session(session, uid):
        # Not in this session yet: read the row with a Core statement (the hot path of
        # every operation on an object) and attach it as loaded.
        columns = object_columns(session, tenant, uid, for_update=for_update)
        return None if columns is None else attach_object(session, columns)
    stmt = select(ManagedObject).where(ManagedObject.uid == uid, ManagedObject.tenant == tenant)
    if for_update:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return session.scalar(stmt)


def in_session(session: Session, uid: str) -> bool:
    """Whether ``session`` already holds the object ``uid`` (it may have changed it)."""
    held = session.identity_map
    return bool(held) and identity_key(ManagedObject, uid) in held  # (most hold none)


def object_stamp(session: Session, tenant: str, uid: str, *, for_update: bool = False
                 ) -> tuple[Any, ...] | None:
    """The (revision, created_seq, row_mac) of ``tenant``'s object ``uid``, or None: what
    names one content of one row (:mod:`kcm.core.store.object_cache`). ``for_update``
    locks the row as :func:`get_object` does."""
    row = (_STAMP_FOR_UPDATE if for_update else _STAMP).execute(
        session, {"uid": uid, "tenant": tenant}).fetchone()
    return None if row is None else stamp_of(row[0], row[1], row[2])


def stamp_on(connection: Any, tenant: str, uid: str) -> tuple[Any, ...] | None:
    """:func:`object_stamp` on ``connection`` (a lean transaction's, no session)."""
    row = _STAMP.run_on(connection, {"uid": uid, "tenant": tenant}).fetchone()
    return None if row is None else stamp_of(row[0], row[1], row[2])


def stamp_of(revision: int, created_seq: int, row_mac: Any) -> tuple[Any, ...]:
    """The stamp of a row whose ``revision``, ``created_seq`` and ``row_mac`` these are."""
    return (revision, created_seq, None if row_mac is None else bytes(row_mac))


def object_columns(session: Session, tenant: str, uid: str, *, for_update: bool = False
                   ) -> ObjectColumns | None:
    """The columns of ``tenant``'s object ``uid`` as stored, or None; read-only, not in
    ``session`` (:func:`attach_object` puts them there to change them)."""
    row = (_GET_OBJECT_FOR_UPDATE if for_update else _GET_OBJECT).execute(
        session, {"uid": uid, "tenant": tenant}).fetchone()
    return None if row is None else ObjectColumns(*row)


def attach_object(session: Session, columns: ObjectColumns) -> ManagedObject:
    """The object whose stored ``columns`` were read in this transaction, in ``session``
    as loaded (so that changes to it are flushed as updates); the one ``session`` already
    holds if it has it."""
    held = session.identity_map.get(identity_key(ManagedObject, columns.uid))
    if held is not None:
        return held  # type: ignore[no-any-return]
    obj = ManagedObject(**columns._asdict())
    make_transient_to_detached(obj)
    session.add(obj)
    return obj


_SELECT_OBJECT = select(*ManagedObject.__table__.columns).where(
    ManagedObject.__table__.c.uid == bindparam("uid"),
    ManagedObject.__table__.c.tenant == bindparam("tenant"))
_GET_OBJECT = RawStatement(_SELECT_OBJECT, ["uid", "tenant"])
_SELECT_OBJECT_BY_UID = select(*ManagedObject.__table__.columns).where(
    ManagedObject.__table__.c.uid == bindparam("uid"))
_GET_OBJECT_FOR_UPDATE = RawStatement(_SELECT_OBJECT.with_for_update(), ["uid", "tenant"])
_SELECT_STAMP = select(ManagedObject.revision, ManagedObject.created_seq,
                       ManagedObject.row_mac).where(
    ManagedObject.uid == bindparam("uid"), ManagedObject.tenant == bindparam("tenant"))
_STAMP = RawStatement(_SELECT_STAMP, ["uid", "tenant"])
_STAMP_FOR_UPDATE = RawStatement(_SELECT_STAMP.with_for_update(), ["uid", "tenant"])


def update_object(session: Session, obj: ManagedObject, **changes: object) -> ManagedObject:
    """Apply column ``changes`` to ``obj`` and flush; its ``revision`` goes up by one.

    Raises ``sqlalchemy.orm.exc.StaleDataError`` if the row changed since ``obj`` was read
    (which serialized writers and ``for_update`` reads make impossible in practice).
    """
    _check_changes(changes)
    changes = _looked_at_again(obj.level, changes)
    note_written(session.info, obj.tenant, obj.uid)  # stale now; its key may be going
    for column, value in changes.items():
        setattr(obj, column, value)
    # Bump the revision even when only ``changes`` equal the current values. (By a column
    # the row MAC leaves out: flagged, a column's value as read is forgotten, and the
    # check of the row as read needs every other one's: _seal_updated.)
    flag_modified(obj, "rotate_due")
    session.flush()
    return obj


def update_columns(session: Session, row: ObjectColumns | ManagedObject,
                   **changes: Any) -> ObjectColumns | ManagedObject:
    """Apply column ``changes`` to the stored object ``row`` (as read in this transaction)
    with one UPDATE sent straight to the driver; its ``revision`` goes up by one. Returns
    the row as now stored: new :class:`ObjectColumns`, or ``row`` itself when it is in the
    session (its loaded state updated, nothing left for the ORM to flush).

    A state change, the hot write of Activate, Revoke and the like: the ORM's unit of work
    cost several times the statement. A row the session holds with unflushed changes
    goes through :func:`update_object` instead. Raises
    ``sqlalchemy.orm.exc.StaleDataError`` if the row's revision is no longer the one read
    (which serialized writers and ``for_update`` reads make impossible in practice).
    """
    _check_changes(changes)
    attached = isinstance(row, ManagedObject)
    if attached and inspect(row).modified:
        return update_object(session, row, **changes)
    changes = _looked_at_again(row.level, changes)
    note_written(session.info, row.tenant, row.uid)  # stale now; its key may be going
    seal = seal_of(session.info)
    if seal is None:
        changes["row_mac"] = None  # (a store given no L1 leaves no MAC that is not the row's)
    else:
        # The row as read first (a change must not MAC what a database writer put there),
        # then its MAC as it will be.
        seal.check(row)
        changes["row_mac"] = seal.mac_of(tuple(
            changes[name] if name in changes else getattr(row, name) for name in SEALED))
    columns = tuple(sorted(changes))
    statement = _UPDATES.get(columns)
    if statement is None:
        statement = _UPDATES[columns] = _update_statement(columns)
    revision = row.revision
    params = {f"v_{column}": value for column, value in changes.items()}
    params.update(w_uid=row.uid, w_tenant=row.tenant, w_revision=revision,
                  v_revision=revision + 1)
    if statement.execute(session, params).rowcount != 1:
        raise StaleDataError(f"object {row.uid} changed since it was read")
    if not attached:
        return row._replace(revision=revision + 1, **changes)
    for column, value in changes.items():
        set_committed_value(row, column, value)
    set_committed_value(row, "revision", revision + 1)
    return row


@event.listens_for(ManagedObject, "before_insert")
def _seal_inserted(_mapper: Any, _connection: Any, target: ManagedObject) -> None:
    """A row the ORM inserts gets its MAC (:mod:`kcm.core.store.row_seal`)."""
    session = object_session(target)
    seal = None if session is None else seal_of(session.info)
    target.row_mac = None if seal is None else seal.mac(target)


@event.listens_for(ManagedObject, "before_update")
def _seal_updated(_mapper: Any, _connection: Any, target: ManagedObject) -> None:
    """A row the ORM updates (:func:`update_object`, a flush of any change): the row as
    read is checked first (a change must not MAC what a database writer put there), then
    its new MAC goes into the same UPDATE. Here, where every ORM write passes, so no writer
    can forget it; :func:`insert_object` and :func:`update_columns` do the same for theirs."""
    session = object_session(target)
    seal = None if session is None else seal_of(session.info)
    if seal is None:
        target.row_mac = None
        return
    committed = inspect(target).committed_state
    stored = committed.get("row_mac", target.row_mac)
    before = tuple(committed.get(name, getattr(target, name)) for name in SEALED)
    if NO_VALUE in before or stored is NO_VALUE:
        # Not read whole (a column set after the row was expired, by a savepoint's
        # rollback): the row as the database holds it is what this update overwrites.
        row = _connection.execute(_SELECT_OBJECT_BY_UID, {"uid": target.uid}).fetchone()
        if row is not None:
            as_stored = ObjectColumns(*row)
            stored, before = as_stored.row_mac, tuple(getattr(as_stored, name)
                                                      for name in SEALED)
    if NO_VALUE not in before and stored is not NO_VALUE:
        why = seal.why_values_refused(stored, before)
        if why is not None:
            raise seal.refuse(target, why)
    target.row_mac = seal.mac(target)


def _check_changes(changes: Mapping[str, object]) -> None:
    for column in changes:
        if column in ("uid", "tenant", "created_seq", "revision", "row_mac"):
            raise TypeError(f"{column} cannot be changed")
        if column not in _OBJECT_COLUMN_SET:
            raise TypeError(f"unknown column {column!r}")


#: The columns a rotation policy judges a tenant or service key by: which is current (its
#: state) and how old it is (its dates; :func:`kcm.core.rotation_policy.made_or_activated`).
_JUDGED_BY_POLICY = frozenset({"state", "activation_date", "initial_date"})


def _looked_at_again(level: int | None, changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` of a tenant or service key that change what its rotation policy judges,
    with ``rotate_due`` :data:`LOOK_AGAIN`: the state sweeper judges its tenant's or
    service's keys at its next sweep (:mod:`kcm.core.rotation_schedule`). Here, where every
    change of a stored object passes, so no writer can forget it."""
    if level is None or _JUDGED_BY_POLICY.isdisjoint(changes):
        return changes
    return {**changes, "rotate_due": LOOK_AGAIN}


def _update_statement(columns: tuple[str, ...]) -> RawStatement:
    table = ManagedObject.__table__
    values = {column: bindparam(f"v_{column}") for column in (*columns, "revision")}
    return RawStatement(table.update().where(
        table.c.uid == bindparam("w_uid"), table.c.tenant == bindparam("w_tenant"),
        table.c.revision == bindparam("w_revision")).values(values))


#: The UPDATE of each set of columns changed together, made on first use (a handful).
_UPDATES: dict[tuple[str, ...], RawStatement] = {}
_OBJECT_COLUMN_SET = frozenset(_OBJECT_COLUMNS)


def replace_locate_copies(session: Session, uid: str, tenant: str, *,
                          names: Iterable[tuple[str, int]] | None = None,
                          groups: Iterable[str] | None = None,
                          keys: Iterable[tuple[str, str]] | None = None) -> None:
    """Replace the Locate copies of an object's Name (``names``: (value, Name Type)
    pairs), Object Group attributes or Link and vendor attribute keys (``keys``: (kind,
    key) pairs), those given, with Core statements. The caller bumps the object's
    revision (:func:`update_columns`)."""
    connection = connection_of(session)
    if names is not None:
        connection.execute(ObjectName.__table__.delete().where(
            ObjectName.__table__.c.uid == uid))
    if groups is not None:
        connection.execute(ObjectGroup.__table__.delete().where(
            ObjectGroup.__table__.c.uid == uid))
    if keys is not None:
        connection.execute(ObjectAttributeKey.__table__.delete().where(
            ObjectAttributeKey.__table__.c.uid == uid))
    _insert_locate_copies(connection, uid, tenant, names or (), groups or (), keys or ())


def _insert_locate_copies(connection: Any, uid: str, tenant: str,
                          names: Iterable[tuple[str, int]], groups: Iterable[str],
                          keys: Iterable[tuple[str, str]] = ()) -> None:
    """Core inserts of an object's Name, Object Group and attribute key copies (none when
    there are none; a repeated value once)."""
    unique_names = dict(names)
    if unique_names:
        connection.execute(_INSERT_NAME, [
            {"uid": uid, "tenant": tenant, "name": name, "name_type": name_type}
            for name, name_type in unique_names.items()])
    unique_groups = dict.fromkeys(groups)
    if unique_groups:
        connection.execute(_INSERT_GROUP, [
            {"uid": uid, "tenant": tenant, "group_name": group} for group in unique_groups])
    unique_keys = dict.fromkeys(keys)
    if unique_keys:
        connection.execute(_INSERT_KEY, [
            {"uid": uid, "tenant": tenant, "kind": kind, "key": key}
            for kind, key in unique_keys])


def names_of(session: Session, uid: str) -> list[tuple[str, int]]:
    """The (name, name type) pairs recorded for ``uid``, sorted."""
    rows = session.execute(
        select(ObjectName.name, ObjectName.name_type)
        .where(ObjectName.uid == uid)
        .order_by(ObjectName.name)
    )
    return [(name, name_type) for name, name_type in rows]


def groups_of(session: Session, uid: str) -> list[str]:
    """The object groups recorded for ``uid``, sorted."""
    return list(
        session.scalars(
            select(ObjectGroup.group_name)
            .where(ObjectGroup.uid == uid)
            .order_by(ObjectGroup.group_name)
        )
    )


def set_names(session: Session, obj: ManagedObject, names: Iterable[tuple[str, int]]) -> None:
    """Replace the Locate copy of ``obj``'s Name attributes; bumps its revision."""
    replace_locate_copies(session, obj.uid, obj.tenant, names=names)
    update_object(session, obj)


def locate(
    session: Session,
    tenant: str,
    *,
    offset: int = 0,
    limit: int | None = None,
    **filters: Any,
) -> list[str]:
    """The uids of ``tenant``'s objects matching every given filter (see
    :func:`_locate_conditions`), oldest first. ``offset``/``limit`` page through the
    ordered result.
    """
    narrowed = _narrowed(session, tenant, filters)
    if narrowed.get("uids") == []:
        return []
    stmt = (
        select(ManagedObject.uid)
        .where(_locate_conditions(tenant, **narrowed))
        .order_by(ManagedObject.created_seq)
        .offset(offset)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.scalars(stmt))


#: The columns :func:`locate_rows` reads (with ``attributes`` when asked).
_LOCATE_COLUMNS = (ManagedObject.uid, ManagedObject.tenant, ManagedObject.object_type,
                   ManagedObject.level, ManagedObject.service, ManagedObject.state,
                   ManagedObject.activation_date, ManagedObject.deactivation_date)


def locate_rows(
    session: Session,
    tenant: str,
    *,
    with_attributes: bool,
    chunk: int = 256,
    **filters: Any,
) -> Iterator[Any]:
    """``tenant``'s objects matching every given filter (see :func:`_locate_conditions`),
    newest first, as rows of the columns Locate judges by (uid, tenant, object_type, level,
    service, state, activation_date, deactivation_date, and ``attributes`` when
    ``with_attributes``), read ``chunk`` rows at a time: a query per chunk, not one per
    object, and a caller that stops early reads no further.

    Each chunk is a range of the index on ``(tenant, created_seq)`` (migration 0006), read
    from where the previous one ended: reading every chunk costs one pass over the tenant's
    objects, not a sort of all those left per chunk."""
    columns = (*_LOCATE_COLUMNS, ManagedObject.attributes) if with_attributes else _LOCATE_COLUMNS
    narrowed = _narrowed(session, tenant, filters)
    if narrowed.get("uids") == []:
        return
    condition = _locate_conditions(tenant, **narrowed)
    before: int | None = None
    while True:
        # Keyset pages, each read whole: no cursor stays open between them, so a caller
        # may stop (or fail) between two rows at no cost.
        page = select(*columns, ManagedObject.created_seq).where(condition)
        if before is not None:
            page = page.where(ManagedObject.created_seq < before)
        rows = session.execute(
            page.order_by(ManagedObject.created_seq.desc()).limit(chunk)).all()
        yield from rows
        if len(rows) < chunk:
            return
        before = rows[-1].created_seq


def count_located(session: Session, tenant: str, **filters: Any) -> int:
    """How many of ``tenant``'s objects match every given filter (see
    :func:`_locate_conditions`): counted by the database, no row read out."""
    narrowed = _narrowed(session, tenant, filters)
    if narrowed.get("uids") == []:
        return 0
    return session.scalar(
        select(func.count()).select_from(ManagedObject)
        .where(_locate_conditions(tenant, **narrowed))) or 0


#: The most objects a Name, an Object Group or an attribute key may name for a Locate to
#: read them by their identifiers (:func:`_narrowed`) rather than along the tenant's rows.
NARROW_TO = 1000


def _narrowed(session: Session, tenant: str, filters: dict[str, Any]) -> dict[str, Any]:
    """``filters``, with ``uids`` added when a Name, an Object Group or an attribute key
    among them names at most :data:`NARROW_TO` objects: those objects' identifiers, read
    from that criterion's own index (the smallest such set).

    Without it the database tested each of the tenant's rows against the criterion, along
    the ``(tenant, created_seq)`` index it pages by: a Locate by a Name one object has took
    57 ms among 50,000 objects (linear in the tenant's rows); with it, about 30 us. Every
    criterion is still applied as it was: ``uids`` only narrows where they are looked for
    (empty: nothing can match, and the callers read nothing).
    """
    lookups = []
    name, group = filters.get("name"), filters.get("group")
    if name is not None:
        lookups.append(select(ObjectName.uid).where(ObjectName.tenant == tenant,
                                                    ObjectName.name == name))
    if group is not None:
        lookups.append(select(ObjectGroup.uid).where(ObjectGroup.tenant == tenant,
                                                     ObjectGroup.group_name == group))
    for kind, key in filters.get("keys", ()):
        lookups.append(select(ObjectAttributeKey.uid).where(
            ObjectAttributeKey.tenant == tenant, ObjectAttributeKey.kind == kind,
            ObjectAttributeKey.key == key))
    narrowest: list[str] | None = None
    for lookup in lookups:
        found = list(session.scalars(lookup.limit(NARROW_TO + 1)))
        if len(found) <= NARROW_TO and (narrowest is None or len(found) < len(narrowest)):
            narrowest = found
            if not found:
                break
    if narrowest is None:
        return filters
    return {**filters, "uids": narrowest}


def _locate_conditions(
    tenant: str,
    *,
    object_type: int | None = None,
    state: int | None = None,
    algorithm: int | None = None,
    length: int | None = None,
    usage_mask: int | None = None,
    name: str | None = None,
    group: str | None = None,
    keys: Collection[tuple[str, str]] = (),
    uid: str | None = None,
    uids: Collection[str] | None = None,
    dates: Mapping[str, tuple[int | None, int | None]] | None = None,
    levels: Collection[int | None] | None = None,
    services: Collection[str | None] | None = None,
    destroyed: bool | None = None,
) -> ColumnElement[bool]:
    """The condition that ``tenant``'s objects match every given filter.

    ``dates`` maps a date column to an inclusive (low, high) range, either bound None for
    open; an object whose date is unset never matches a range on it. ``levels`` restricts
    the hierarchy level: ``{None}`` only ordinary objects, ``{2, 3}`` only L2/L3 keys; None
    means any. ``services`` restricts the service likewise (``{None, "app"}``: those of no
    service and app's). ``destroyed`` keeps only the destroyed objects (True) or only the
    others (False); None means both. ``usage_mask`` keeps the objects whose Cryptographic
    Usage Mask has every one of its bits set; ``keys`` those that have each of these
    (kind, key) pairs (:mod:`kcm.core.attribute_keys`); ``uids`` keeps those objects only.
    """
    conditions: list[ColumnElement[bool]] = [ManagedObject.tenant == tenant]
    if object_type is not None:
        conditions.append(ManagedObject.object_type == object_type)
    if state is not None:
        conditions.append(ManagedObject.state == state)
    if algorithm is not None:
        conditions.append(ManagedObject.cryptographic_algorithm == algorithm)
    if length is not None:
        conditions.append(ManagedObject.cryptographic_length == length)
    if usage_mask is not None:
        # Every requested bit set (KMIP 1.4 §4.9, 2.1 §6.1.27).
        conditions.append(ManagedObject.cryptographic_usage_mask.op("&")(usage_mask)
                          == usage_mask)
    if uid is not None:
        conditions.append(ManagedObject.uid == uid)
    if uids is not None:
        conditions.append(ManagedObject.uid.in_(list(uids)) if uids else false())
    if name is not None:
        conditions.append(
            exists().where(
                ObjectName.tenant == tenant,
                ObjectName.name == name,
                ObjectName.uid == ManagedObject.uid,
            )
        )
    if group is not None:
        conditions.append(
            exists().where(
                ObjectGroup.tenant == tenant,
                ObjectGroup.group_name == group,
                ObjectGroup.uid == ManagedObject.uid,
            )
        )
    for kind, key in keys:
        # The objects with the key, read once from its index; each of the tenant's rows
        # is then tested against that list (no attribute list is read).
        conditions.append(ManagedObject.uid.in_(
            select(ObjectAttributeKey.uid).where(
                ObjectAttributeKey.tenant == tenant,
                ObjectAttributeKey.kind == kind,
                ObjectAttributeKey.key == key,
            )
        ))
    for column_name, (low, high) in (dates or {}).items():
        if column_name not in DATE_COLUMNS:
            raise ValueError(f"not a date column: {column_name!r}")
        column = getattr(ManagedObject, column_name)
        conditions.append(column.is_not(None))
        if low is not None:
            conditions.append(column >= low)
        if high is not None:
            conditions.append(column <= high)
    if levels is not None:
        conditions.append(_one_of(ManagedObject.level, levels))
    if services is not None:
        conditions.append(_one_of(ManagedObject.service, services))
    if destroyed:
        conditions.append(ManagedObject.state.in_((STATE_DESTROYED,
                                                   STATE_DESTROYED_COMPROMISED)))
    elif destroyed is not None:  # (in the index's own words: migration 0011)
        conditions.append(text(f"{ManagedObject.__tablename__}.{LIVE_OBJECTS}"))
    return and_(*conditions)


def _one_of(column: Any, values: Collection[Any]) -> ColumnElement[bool]:
    """``column`` is one of ``values``, None among them standing for NULL."""
    given = [value for value in values if value is not None]
    alternatives: list[ColumnElement[bool]] = []
    if given:
        alternatives.append(column.in_(given))
    if None in values:
        alternatives.append(column.is_(None))
    return or_(*alternatives) if alternatives else false()


def find_l3(
    session: Session, tenant: str, service: str, *, active_only: bool = False
) -> list[ManagedObject]:
    """The L3 versions of ``tenant``/``service``, newest version first.

    ``active_only`` keeps the Active ones; otherwise every version still usable for
    decryption or bookkeeping is returned, whatever its state.
    """
    stmt = (
        select(ManagedObject)
        .where(
            ManagedObject.tenant == tenant,
            ManagedObject.level == LEVEL_SERVICE_KEY,
            ManagedObject.service == service,
        )
        .order_by(ManagedObject.key_version.desc())
    )
    if active_only:
        stmt = stmt.where(ManagedObject.state == STATE_ACTIVE)
    return list(session.scalars(stmt))


def find_l3_activatable(session: Session, tenant: str, service: str) -> list[ManagedObject]:
    """The L3 versions of ``tenant``/``service`` that may be Active now, newest first: those
    stored Pre-Active or Active (a state never goes back, so no other version can be).
    What a service's current versions are chosen from: a service rotated every day for a
    year keeps 365 versions, and reading (and unwrapping) each of them for every fetch held
    the writer about 30 us a version."""
    return list(session.scalars(
        select(ManagedObject)
        .where(ManagedObject.level == LEVEL_SERVICE_KEY,
               ManagedObject.state.in_((STATE_PRE_ACTIVE, STATE_ACTIVE)),
               ManagedObject.tenant == tenant, ManagedObject.service == service)
        .order_by(ManagedObject.key_version.desc())))


def newest_l3_version(session: Session, tenant: str, service: str) -> int:
    """The highest key version of ``tenant``/``service``'s L3 (0: none), read without
    loading the versions."""
    found = session.scalar(
        select(func.max(ManagedObject.key_version))
        .where(ManagedObject.tenant == tenant, ManagedObject.level == LEVEL_SERVICE_KEY,
               ManagedObject.service == service))
    return int(found or 0)


def service_exists(session: Session, tenant: str, service: str) -> bool:
    """Whether ``tenant`` provisioned ``service``: it has an L3 version, in any state.

    A service once provisioned stays so until its whole tenant is removed: the store
    remembers it (:class:`kcm.core.store.known.KnownFacts`) and asks only about others.
    In a write transaction, a service taken for provisioned on the facts' word before the
    transaction read the count of tenant removals is noted; should that count turn out
    changed (the facts are forgotten then), an object of that service is not inserted
    unless the database still has the service (:func:`insert_object`). Reads of a removed
    service's objects find none either way; so nothing is committed on the word of a
    forgotten service, at no cost while no tenant is removed."""
    facts = known_facts(session)
    if facts is not None and (tenant, service) in facts.services:
        info = session.info
        if info.get(WRITE_INFO, True):
            memo = info.setdefault(_TRANSACTION_MEMO, {})
            if _TENANT_REMOVALS_MEMO not in memo:  # else checked against it already
                memo.setdefault(_TRUSTED_SERVICES_MEMO, set()).add((tenant, service))
        return True
    epoch = facts.epoch if facts is not None else 0  # before the read: see KnownFacts.add
    found = connection_of(session).execute(_SERVICE_EXISTS, {
        "tenant": tenant, "service": service}).first() is not None
    if found:
        learn(session, (tenant, service), epoch)
    return found


_SERVICE_EXISTS = select(ManagedObject.uid).where(
    ManagedObject.tenant == bindparam("tenant"), ManagedObject.level == LEVEL_SERVICE_KEY,
    ManagedObject.service == bindparam("service")).limit(1)


def get_l3(session: Session, uid: str) -> ManagedObject | None:
    """The L3 version ``uid``, of whichever tenant, or None.

    The one lookup not scoped by tenant: an L4 token names its L3 by identifier alone.
    Callers decide who may use it with :func:`kcm.l4.authorize.check_service_key_use`
    before anything else (another tenant's answers exactly as a missing one, and is
    audited as a refused attempt).
    """
    return session.scalar(select(ManagedObject).where(
        ManagedObject.uid == uid, ManagedObject.level == LEVEL_SERVICE_KEY))


def find_l2(session: Session, tenant: str, *, active_only: bool = True) -> ManagedObject | None:
    """``tenant``'s current L2: the newest Active one (or newest of any state)."""
    stmt = (
        select(ManagedObject)
        .where(ManagedObject.tenant == tenant, ManagedObject.level == LEVEL_TENANT_KEY)
        .order_by(ManagedObject.created_seq.desc())
        .limit(1)
    )
    if active_only:
        stmt = stmt.where(ManagedObject.state == STATE_ACTIVE)
    return session.scalar(stmt)


# --- L4 tombstones -------------------------------------------------------------------------


def add_tombstone(
    session: Session,
    *,
    token_id: str,
    tenant: str,
    l3_uid: str,
    reason: str,
    clock: Clock = time.time,
) -> bool:
    """Record that L4 token ``token_id`` is revoked/destroyed; False if it already was.
    A new tombstone counts against its tenant's bound (:func:`kcm.core.store.quota.charge`:
    Server Limit Exceeded a headroom past the bound, unless the token already has one)."""
    lock_writers(session)
    try:
        quota.charge(session, tenant, revocation=True)
    except KmipError:
        if is_tombstoned(session, token_id):
            return False
        raise
    stmt = (
        _dialect_insert(session)(L4Tombstone)
        .values(token_id=token_id, tenant=tenant, l3_uid=l3_uid, at=int(clock()), reason=reason)
        .on_conflict_do_nothing(index_elements=["token_id"])
        .returning(L4Tombstone.token_id)
    )
    if session.execute(stmt).first() is not None:
        return True
    quota.release(session, {tenant: 1})  # (it had one: not a new row)
    return False


def is_tombstoned(session: Session, token_id: str) -> bool:
    """Whether L4 token ``token_id`` has a tombstone."""
    return session.get(L4Tombstone, token_id) is not None


def tombstones_for(session: Session, tenant: str, l3_uid: str | None = None) -> list[L4Tombstone]:
    """``tenant``'s tombstones (under one L3 if given), oldest first."""
    stmt = select(L4Tombstone).where(L4Tombstone.tenant == tenant)
    if l3_uid is not None:
        stmt = stmt.where(L4Tombstone.l3_uid == l3_uid)
    return list(session.scalars(stmt.order_by(L4Tombstone.at, L4Tombstone.token_id)))


def drop_tombstones_of_destroyed(session: Session, limit: int) -> int:
    """Delete up to ``limit`` L4 tombstones of destroyed service keys; how many. Every token
    under a destroyed L3 is refused as crypto-erased whether it was revoked or not (the L4
    engine looks at the L3's state first), so its tombstones say nothing any more.

    The destroyed L3s are read from the partial index of the hierarchy keys (by level and
    state: a few rows), the tombstones by their index on ``l3_uid``."""
    destroyed = select(ManagedObject.uid).where(
        ManagedObject.level == LEVEL_SERVICE_KEY,
        ManagedObject.state.in_((STATE_DESTROYED, STATE_DESTROYED_COMPROMISED)))
    lock_writers(session)  # (first: the rows read are the rows deleted and released)
    rows = session.execute(select(L4Tombstone.token_id, L4Tombstone.tenant).where(
        L4Tombstone.l3_uid.in_(destroyed)).limit(limit)).all()
    if not rows:
        return 0
    result = session.execute(delete(L4Tombstone).where(
        L4Tombstone.token_id.in_([row.token_id for row in rows])),
        execution_options={"synchronize_session": False})
    quota.release(session, Counter(row.tenant for row in rows))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# --- destroyed objects (kcm.core.destroyed_retention) ---------------------------------------


@dataclass(frozen=True, slots=True)
class PurgedObject:
    """A destroyed object :func:`purge_destroyed` deleted."""

    tenant: str
    uid: str
    level: int | None
    destroy_date: int


def destroyed_due(session: Session, destroyed_before: int, limit: int) -> list[PurgedObject]:
    """Up to ``limit`` destroyed objects whose Destroy Date is before ``destroyed_before``
    (epoch seconds) that may be deleted, those destroyed first first (then by uid).

    Not every destroyed object may be: the newest object (by ``created_seq``) stays, since
    the next one is numbered after it (:func:`insert_object`) and a number is never used
    twice; a tenant key (L2) stays (a handful a tenant; ``kcm core tenant remove`` deletes
    them); a service key (L3) stays while it is the newest version of its service (the
    next version is numbered after it) or L4 tombstones still name it
    (:func:`drop_tombstones_of_destroyed` deletes those first). Read from the partial index
    of the destroyed objects by Destroy Date (migration 0012)."""
    objects = ManagedObject.__table__
    newer = objects.alias("newer")
    newest_seq = select(func.max(objects.c.created_seq)).scalar_subquery()
    may_go = or_(
        objects.c.level.is_(None),
        and_(objects.c.level == LEVEL_SERVICE_KEY,
             exists().where(newer.c.level == LEVEL_SERVICE_KEY,
                            newer.c.tenant == objects.c.tenant,
                            newer.c.service == objects.c.service,
                            newer.c.key_version > objects.c.key_version),
             ~exists().where(L4Tombstone.l3_uid == objects.c.uid)))
    rows = session.execute(
        select(objects.c.tenant, objects.c.uid, objects.c.level, objects.c.destroy_date)
        .where(text(DESTROYED_OBJECTS), objects.c.destroy_date < destroyed_before,
               objects.c.state.in_((STATE_DESTROYED, STATE_DESTROYED_COMPROMISED)),
               objects.c.created_seq < newest_seq, may_go)
        .order_by(objects.c.destroy_date, objects.c.uid).limit(limit)).all()
    return [PurgedObject(tenant, uid, level, destroy_date)
            for tenant, uid, level, destroy_date in rows]


def purge_destroyed(session: Session, destroyed_before: int, limit: int) -> list[PurgedObject]:
    """Delete the objects :func:`destroyed_due` names (at most ``limit``) with everything
    that hangs on them: their names, groups and Locate keys (also ``ON DELETE CASCADE``,
    deleted here by uid all the same), an L3's usage count; return them. Each is noted
    written (:func:`kcm.core.store.object_cache.note_written`): this core's object cache
    drops it now and again at the commit; another core's finds its stamp gone on its next
    read (a missing row) and drops it then."""
    lock_writers(session)
    due = destroyed_due(session, destroyed_before, limit)
    if not due:
        return []
    uids = [obj.uid for obj in due]
    quiet = {"synchronize_session": False}
    for table, column in ((ObjectName, ObjectName.uid), (ObjectGroup, ObjectGroup.uid),
                          (ObjectAttributeKey, ObjectAttributeKey.uid), (L3Usage, L3Usage.uid),
                          (ManagedObject, ManagedObject.uid)):
        session.execute(delete(table).where(column.in_(uids)), execution_options=quiet)
    for obj in due:
        note_written(session.info, obj.tenant, obj.uid)
    quota.release(session, Counter(obj.tenant for obj in due))
    return due


# --- spent stream parts (kcm.core.stream_parts) --------------------------------------------


def spend_stream_part(session: Session, stream_id: bytes, part: int, expires_at: int) -> bool:
    """Record that part ``part`` of stream ``stream_id`` was used (its Correlation Value
    opens until ``expires_at``); False if it already was, in a committed transaction or in
    this one. On PostgreSQL a concurrent transaction that recorded it first is waited for."""
    stmt = (
        _dialect_insert(session)(SpentStreamPart)
        .values(stream_id=stream_id, part=part, expires_at=expires_at)
        .on_conflict_do_nothing(index_elements=["stream_id", "part"])
        .returning(SpentStreamPart.part)
    )
    return session.execute(stmt).first() is not None


def purge_stream_parts(session: Session, before: int) -> int:
    """Delete the spent parts whose values expired before ``before``; how many."""
    result = session.execute(delete(SpentStreamPart).where(SpentStreamPart.expires_at < before))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# --- outbox --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One committed outbox event as gateways receive it."""

    seq: int
    at: int
    tenant: str | None
    kind: str  # an EventKind's wire string
    payload: bytes


def append_outbox(
    session: Session,
    kind: EventKind | str,
    tenant: str | None,
    payload: bytes,
    *,
    clock: Clock = time.time,
) -> int:
    """Queue an event in this transaction and return its sequence number.

    Sequence numbers are gapless and increase in commit order, so a reader that has applied
    everything up to N and asks for ``outbox_since(N)`` misses nothing.
    """
    try:
        kind = EventKind(kind).value  # the column holds the wire string itself
    except ValueError:
        raise ValueError(f"unknown outbox event kind {kind!r}") from None
    if not isinstance(payload, bytes):
        raise TypeError("outbox payload must be bytes")
    lock_writers(session)
    seq = outbox_head(session) + 1
    session.add(
        OutboxEvent(seq=seq, at=int(clock() * 1_000_000), tenant=tenant, kind=kind, payload=payload)
    )
    session.flush()
    session.info[OUTBOX_WRITTEN_INFO] = seq  # the transaction's latest (the Store keeps it)
    if session.get_bind().dialect.name == "postgresql":
        # Delivered at commit (never for a rollback), once per transaction however many
        # events it adds: wakes every core's fan-out (kcm.core.outbox_listener).
        session.execute(text(f"NOTIFY {OUTBOX_CHANNEL}"))
    return seq


def outbox_head(session: Session) -> int:
    """The sequence number of the latest event, 0 when there is none."""
    return session.scalar(select(func.max(OutboxEvent.seq))) or 0


def outbox_head_plain(connection: Any) -> int:
    """:func:`outbox_head` on ``connection`` (as :func:`outbox_since_plain`)."""
    return connection.scalar(select(func.max(OutboxEvent.seq))) or 0


_OUTBOX_SINCE = RawStatement(
    select(OutboxEvent.seq, OutboxEvent.at, OutboxEvent.tenant, OutboxEvent.kind,
           OutboxEvent.payload)
    .where(OutboxEvent.seq > bindparam("after")).order_by(OutboxEvent.seq)
    .limit(bindparam("limit")), ["after", "limit"])


def outbox_since(session: Session, seq: int, limit: int = 1000) -> list[OutboxRecord]:
    """Up to ``limit`` events after ``seq``, in order."""
    return _outbox_records(_OUTBOX_SINCE.execute(session, {"after": seq, "limit": limit}))


def outbox_since_plain(connection: Any, seq: int, limit: int = 1000) -> list[OutboxRecord]:
    """:func:`outbox_since` on ``connection``, a SQLAlchemy Connection in a transaction with
    no ORM session around it (:meth:`kcm.core.store.engine.Store.read_plain`)."""
    return _outbox_records(_OUTBOX_SINCE.run_on(connection, {"after": seq, "limit": limit}))


def _outbox_records(cursor: Any) -> list[OutboxRecord]:
    return [OutboxRecord(seq, at, tenant, kind, bytes(payload))
            for seq, at, tenant, kind, payload in cursor.fetchall()]


#: The oldest outbox events :func:`prune_outbox` reads first; each further page is twice
#: the one before (what is due is mostly a few events, sometimes a whole backlog).
_PRUNE_FIRST_PAGE = 64


def prune_outbox(session: Session, written_before: int, limit: int) -> tuple[int, int]:
    """Delete the oldest outbox events written before ``written_before`` (epoch
    microseconds, the ``at`` column), at most ``limit`` of them, in sequence order up to the
    first one that is not that old; never the newest event, whose number the next one
    follows (:func:`append_outbox`: the newest plus one), so no number is used twice.
    Returns how many were deleted and the sequence number of the last of them (0: none).

    Every statement goes by the primary key (``seq``; ``at`` has no index): the oldest rows
    are read in its order, in pages (64 rows, then twice as many each time) until one is
    not old enough or ``limit`` are read, and deleted as one range of it."""
    head = outbox_head(session)
    through, after, page, left = 0, None, _PRUNE_FIRST_PAGE, limit
    while left > 0:
        take = min(page, left)
        oldest = select(OutboxEvent.seq, OutboxEvent.at).where(OutboxEvent.seq < head)
        if after is not None:
            oldest = oldest.where(OutboxEvent.seq > after)
        rows = session.execute(oldest.order_by(OutboxEvent.seq).limit(take)).all()
        young = False
        for seq, at in rows:
            if at >= written_before:
                young = True
                break
            through = seq
        if young or len(rows) < take:
            break
        after, left, page = rows[-1][0], left - take, page * 2
    if not through:
        return 0, 0
    # (the events this transaction added, in its identity map, are newer: nothing to sync)
    result = session.execute(delete(OutboxEvent).where(OutboxEvent.seq <= through),
                             execution_options={"synchronize_session": False})
    return int(result.rowcount or 0), through  # type: ignore[attr-defined]


def ping(session: Session) -> None:
    """A trivial query: proves the database answers (health checks)."""
    session.execute(text("SELECT 1"))
