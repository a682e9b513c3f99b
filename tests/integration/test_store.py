"""The KSI store on a real SQLite file and a real PostgreSQL cluster.

Needs the ``postgres_url`` fixture of ``tests/pg.py`` registered in ``tests/conftest.py``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import pytest_twisted
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import delete, event, func, inspect, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from kcm.core.audit import (
    GENESIS_DIGEST,
    UNKEYED_META_KEY,
    AuditChainError,
    AuditEvent,
    VerifyResult,
    append_audit,
    key_chain,
    record_digest,
    verify_chain,
)
from kcm.core.keys import derive_audit_key, key_check_value, object_aad, unwrap, wrap
from kcm.core.store import engine as engine_module
from kcm.core.store import repository as repo
from kcm.core.store.engine import Store, open_engine
from kcm.core.store.migrate import (
    HEAD_REVISION,
    create_private_sqlite_file,
    current_revision,
    head_revision,
    upgrade,
)
from kcm.core.store.schema import (
    LEVEL_SERVICE_KEY,
    LEVEL_TENANT_KEY,
    STATE_ACTIVE,
    STATE_DEACTIVATED,
    STATE_PRE_ACTIVE,
    WRAPPED_BY_L1,
    AuditLog,
    Base,
    ManagedObject,
    ObjectName,
    OutboxEvent,
    Tenant,
)
from kcm.testing.processes import process_env
from tests.unit.test_audit import write_legacy_chain

SYMMETRIC_KEY = 2
SECRET_DATA = 7
AES = 3
RAW = 1


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty database: a fresh SQLite file, or the PostgreSQL cluster with a wiped schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ksi.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    engine = open_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    yield url


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """A migrated store, usable with run_sync (its thread pool is not started)."""
    upgrade(db_url)
    ksi = Store(db_url, threads=4)
    ksi.audit_key = derive_audit_key(bytes(32))
    yield ksi
    ksi.stopService()


def _new_key(session: Session, uid: str, tenant: str = "t1", **overrides: object) -> ManagedObject:
    fields: dict = {
        "uid": uid,
        "tenant": tenant,
        "object_type": SYMMETRIC_KEY,
        "state": STATE_PRE_ACTIVE,
        "attributes": b"\x42attrs",
        "material": b"wrapped",
        "material_format": RAW,
        "wrapped_by": "l2-" + tenant,
        "cryptographic_algorithm": AES,
        "cryptographic_length": 256,
        "initial_date": 1000,
    }
    fields.update(overrides)
    repo.ensure_tenant(session, tenant, clock=lambda: 1.0)
    return repo.insert_object(session, **fields)


def _event(n: int, **overrides: object) -> AuditEvent:
    fields: dict = {
        "principal": "spiffe://kcm.test/tenant/t1/admin/alice",
        "operation": "Activate",
        "result_status": "Success",
        "correlation_id": f"corr-{n}",
        "source": "127.0.0.1:5000",
        "tenant": "t1",
        "object_ids": (f"uid-{n}",),
        "detail": {"n": n},
    }
    fields.update(overrides)
    return AuditEvent(**fields)


# --- schema and migrations -----------------------------------------------------------------


def test_migrations_match_metadata(db_url: str) -> None:
    assert current_revision(db_url) is None
    upgrade(db_url)
    upgrade(db_url)  # idempotent at every start
    assert current_revision(db_url) == head_revision() == HEAD_REVISION == "0017"
    engine = open_engine(db_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_a_database_at_the_head_is_upgraded_without_alembic(db_url: str) -> None:
    """kcm-core's start finds a database already at the newest revision with one query: the
    upgrade imports no Alembic (a fresh process, so nothing imported it before)."""
    upgrade(db_url)
    script = ("import sys; from kcm.core.store.migrate import upgrade; "
              f"upgrade({db_url!r}); "
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))")
    run = subprocess.run([sys.executable, "-c", script], env=process_env(),
                         capture_output=True, text=True, check=True, timeout=60)
    assert run.stdout.strip() == "[]"


def test_records_written_before_0002_stay_and_are_anchored(db_url: str) -> None:
    """A database of schema 0001 with an (unkeyed) audit chain, as kcm-core wrote it then:
    the upgrade adds the MAC column and keeps the records; the first keyed record anchors
    them."""
    prev = write_legacy_chain(db_url, 3, upgraded=False)
    engine = open_engine(db_url)
    try:
        with engine.connect() as connection:
            columns = {column["name"] for column in inspect(connection).get_columns("audit_log")}
            assert "mac" not in columns and "digest" in columns
    finally:
        engine.dispose()

    upgrade(db_url)
    assert current_revision(db_url) == head_revision()
    store = Store(db_url)
    store.audit_key = derive_audit_key(bytes(32))
    try:
        assert store.run_sync(lambda s: s.scalars(select(AuditLog.mac)).all()) == [None] * 3
        result = store.run_sync(verify_chain)
        assert (result.ok, result.first_bad_seq) == (False, 1)
        assert "no record is keyed" in result.reason
        # Migration 0002 named the chain it found: the one that may be anchored, once.
        assert store.run_sync(lambda s: repo.get_meta(s, UNKEYED_META_KEY)) == f"3:{prev.hex()}"
        anchor = store.run_sync(lambda s: key_chain(s, by="kcm core init"))
        assert anchor.seq == 4 and anchor.prev_digest == prev
        assert store.run_sync(lambda s: repo.get_meta(s, UNKEYED_META_KEY)) is None
        result = store.run_sync(verify_chain)
        assert (result.ok, result.records_checked, result.unkeyed_records) == (True, 4, 3)
    finally:
        store.stopService()


def test_a_database_created_keyed_is_never_anchored(store: Store) -> None:
    """Created at 0002 or later: stripping every MAC, the head rewritten in its unkeyed form
    (or deleted), gets no anchor on either backend; the start and `kcm core init` refuse."""
    _append_five(store)
    assert store.run_sync(lambda s: repo.get_meta(s, UNKEYED_META_KEY)) is None

    def strip(session: Session) -> None:
        prev = GENESIS_DIGEST
        for row in session.scalars(select(AuditLog).order_by(AuditLog.seq)):
            row.principal = "FORGED"
            row.prev_digest = prev
            row.digest = prev = record_digest(prev, **{name: getattr(row, name)
                                                       for name in _DIGESTED})
            row.mac = None
        repo.set_meta(session, "audit.head", f"5:{prev.hex()}")

    store.run_sync(strip)
    with pytest.raises(AuditChainError, match="not due for anchoring"):
        store.run_sync(lambda s: key_chain(s, by="kcm-core"))
    result = store.run_sync(verify_chain)
    assert (result.ok, result.reason) == (
        False, "no record is keyed: records 1..5 have no MAC (their MACs were removed)")
    assert store.run_sync(lambda s: s.scalar(select(func.max(AuditLog.seq)))) == 5


_DIGESTED = ("seq", "at", "principal", "tenant", "gateway", "source", "operation",
             "object_ids", "result_status", "result_reason", "correlation_id", "detail")


def test_sqlite_connections_are_durable(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'ksi.db'}"
    engine = open_engine(url)
    try:
        with pytest.raises(OperationalError, match="the SQLite database file is missing"):
            engine.connect()  # (never made by a connection: by kcm core init, 0600)
        create_private_sqlite_file(url)
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    finally:
        engine.dispose()


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(ValueError, match="memory"):
        open_engine("sqlite://")


# --- objects -------------------------------------------------------------------------------


def test_insert_get_update(store: Store) -> None:
    def create(session: Session) -> tuple[int, int]:
        obj = _new_key(session, "k1", names=[("db-master", 1)], groups=["payments"])
        return obj.revision, obj.created_seq

    assert store.run_sync(create) == (1, 1)

    def read(session: Session) -> tuple:
        obj = repo.get_object(session, "t1", "k1")
        assert obj is not None
        return (
            obj.state,
            obj.material,
            obj.attributes,
            repo.names_of(session, "k1"),
            repo.groups_of(session, "k1"),
        )

    assert store.run_sync(read, write=False) == (
        STATE_PRE_ACTIVE,
        b"wrapped",
        b"\x42attrs",
        [("db-master", 1)],
        ["payments"],
    )

    def activate(session: Session) -> int:
        obj = repo.get_object(session, "t1", "k1", for_update=True)
        repo.update_object(session, obj, state=STATE_ACTIVE, activation_date=2000)
        repo.set_names(session, obj, [("db-master-2", 1), ("alias", 2)])
        return obj.revision

    assert store.run_sync(activate) == 3
    obj = store.run_sync(lambda s: repo.get_object(s, "t1", "k1"), write=False)
    assert (obj.state, obj.activation_date, obj.revision) == (STATE_ACTIVE, 2000, 3)
    assert store.run_sync(lambda s: repo.names_of(s, "k1")) == [("alias", 2), ("db-master-2", 1)]


def test_update_columns_is_one_checked_update(store: Store) -> None:
    store.run_sync(lambda s: _new_key(s, "k1", names=[("db-master", 1)]))
    read = store.run_sync(lambda s: repo.object_columns(s, "t1", "k1"), write=False)

    def activate(session: Session) -> repo.ObjectColumns:
        columns = repo.object_columns(session, "t1", "k1", for_update=True)
        return repo.update_columns(session, columns, state=STATE_ACTIVE,
                                   activation_date=2000, attributes=b"\x43attrs")

    changed = store.run_sync(activate)
    assert changed == read._replace(state=STATE_ACTIVE, activation_date=2000,
                                    attributes=b"\x43attrs", revision=read.revision + 1)
    assert store.run_sync(lambda s: repo.object_columns(s, "t1", "k1"),
                          write=False) == changed
    assert store.run_sync(lambda s: repo.names_of(s, "k1")) == [("db-master", 1)]
    # A row read before that change is stale: updating it fails and changes nothing.
    with pytest.raises(StaleDataError):
        store.run_sync(lambda s: repo.update_columns(s, read, state=STATE_DEACTIVATED))
    assert store.run_sync(lambda s: repo.object_columns(s, "t1", "k1"),
                          write=False) == changed
    with pytest.raises(TypeError):
        store.run_sync(lambda s: repo.update_columns(s, changed, revision=9))


def test_update_columns_keeps_a_row_in_the_session_in_step(store: Store) -> None:
    store.run_sync(lambda s: _new_key(s, "k1"))

    def change(session: Session) -> int:
        obj = repo.get_object(session, "t1", "k1", for_update=True)  # in the session
        assert repo.update_columns(session, obj, state=STATE_ACTIVE) is obj
        assert obj.state == STATE_ACTIVE and obj not in session.dirty
        # The ORM's next flush of the same row sees the revision the UPDATE wrote.
        repo.update_object(session, obj, activation_date=2000)
        # A row with unflushed changes goes through the ORM, which flushes them too.
        obj.deactivation_date = 3000
        repo.update_columns(session, obj, state=STATE_DEACTIVATED)
        return obj.revision

    assert store.run_sync(change) == 4
    stored = store.run_sync(lambda s: repo.object_columns(s, "t1", "k1"), write=False)
    assert (stored.state, stored.activation_date, stored.deactivation_date,
            stored.revision) == (STATE_DEACTIVATED, 2000, 3000, 4)


def test_objects_are_tenant_scoped(store: Store) -> None:
    store.run_sync(lambda s: _new_key(s, "k1", tenant="t1"))
    store.run_sync(lambda s: repo.ensure_tenant(s, "t2"))
    assert store.run_sync(lambda s: repo.get_object(s, "t2", "k1")) is None
    assert store.run_sync(lambda s: repo.locate(s, "t2")) == []
    assert store.run_sync(lambda s: repo.locate(s, "t1")) == ["k1"]


def test_duplicate_uid_and_l3_version_are_refused(store: Store) -> None:
    store.run_sync(lambda s: _new_key(s, "k1"))
    with pytest.raises(IntegrityError):
        store.run_sync(lambda s: _new_key(s, "k1"))
    l3 = {"level": LEVEL_SERVICE_KEY, "service": "pay", "key_version": 1}
    store.run_sync(lambda s: _new_key(s, "l3a", **l3))
    with pytest.raises(IntegrityError):
        store.run_sync(lambda s: _new_key(s, "l3b", **l3))


def test_read_only_transaction_cannot_write(store: Store) -> None:
    with pytest.raises(Exception, match="(?i)read.?only"):
        store.run_sync(lambda s: repo.ensure_tenant(s, "t9"), write=False)
    assert store.run_sync(lambda s: repo.locate(s, "t9")) == []


def test_one_connection_alternating_reads_and_writes(db_url: str) -> None:
    """A DB-API connection that served a write and then a read (or the other way) is
    read-only exactly in the read: SQLite's ``query_only`` follows each transaction."""
    upgrade(db_url)
    single = Store(db_url, threads=1, pool_size=1)
    single.audit_key = derive_audit_key(bytes(32))
    try:
        for name in ("t7", "t8"):
            single.run_sync(lambda s, name=name: repo.ensure_tenant(s, name))
            with pytest.raises(Exception, match="(?i)read.?only"):
                single.run_sync(lambda s: repo.ensure_tenant(s, "t9"), write=False)
        names = single.run_sync(lambda s: sorted(s.scalars(select(Tenant.name))), write=False)
        assert names == ["t7", "t8"]
    finally:
        single.stopService()


def test_locate_filters_and_order(store: Store) -> None:
    def populate(session: Session) -> None:
        _new_key(session, "c", names=[("alpha", 1)], groups=["g1"], initial_date=300)
        _new_key(
            session,
            "a",
            object_type=SECRET_DATA,
            cryptographic_algorithm=None,
            cryptographic_length=None,
            names=[("beta", 1)],
            initial_date=100,
            activation_date=150,
        )
        _new_key(session, "b", state=STATE_ACTIVE, groups=["g1", "g2"], initial_date=200)
        _new_key(session, "l2", level=LEVEL_TENANT_KEY, wrapped_by=WRAPPED_BY_L1)
        _new_key(session, "other", tenant="t2", names=[("alpha", 1)])

    store.run_sync(populate)

    def find(**filters: object) -> list[str]:
        return store.run_sync(lambda s: repo.locate(s, "t1", **filters), write=False)

    assert find() == ["c", "a", "b", "l2"]  # creation order, not uid order
    assert find(object_type=SECRET_DATA) == ["a"]
    assert find(state=STATE_ACTIVE) == ["b"]
    assert find(algorithm=AES, length=256) == ["c", "b", "l2"]
    assert find(name="alpha") == ["c"]
    assert find(name="nope") == []
    assert find(group="g1") == ["c", "b"]
    assert find(group="g2", state=STATE_ACTIVE) == ["b"]
    assert find(uid="a") == ["a"]
    assert find(dates={"initial_date": (150, None)}) == ["c", "b", "l2"]
    assert find(dates={"initial_date": (100, 200)}) == ["a", "b"]
    assert find(dates={"activation_date": (None, None)}) == ["a"]
    assert find(levels={None}) == ["c", "a", "b"]
    assert find(levels={LEVEL_TENANT_KEY}) == ["l2"]
    assert find(levels=set()) == []
    assert find(offset=1, limit=2) == ["a", "b"]
    with pytest.raises(ValueError):
        find(dates={"material": (0, 1)})


def test_find_l2_and_l3(store: Store) -> None:
    def populate(session: Session) -> None:
        _new_key(session, "l2-old", level=LEVEL_TENANT_KEY, state=STATE_DEACTIVATED)
        _new_key(session, "l2-new", level=LEVEL_TENANT_KEY, state=STATE_ACTIVE)
        for version, state in ((1, STATE_DEACTIVATED), (2, STATE_ACTIVE), (3, STATE_PRE_ACTIVE)):
            _new_key(
                session,
                f"pay-v{version}",
                level=LEVEL_SERVICE_KEY,
                service="pay",
                key_version=version,
                state=state,
            )
        _new_key(session, "mail-v1", level=LEVEL_SERVICE_KEY, service="mail", key_version=1)

    store.run_sync(populate)
    assert store.run_sync(lambda s: repo.find_l2(s, "t1").uid) == "l2-new"
    assert store.run_sync(lambda s: repo.find_l2(s, "t2")) is None
    versions = store.run_sync(lambda s: [o.uid for o in repo.find_l3(s, "t1", "pay")])
    assert versions == ["pay-v3", "pay-v2", "pay-v1"]
    active = store.run_sync(
        lambda s: [o.uid for o in repo.find_l3(s, "t1", "pay", active_only=True)]
    )
    assert active == ["pay-v2"]


def test_wrapped_material_round_trip(store: Store) -> None:
    l1 = bytes(range(32))
    l2_plain = bytes(32 * [7])

    def create(session: Session) -> None:
        repo.ensure_tenant(session, "t1")
        repo.set_meta(session, "l1.kcv", key_check_value(l1))
        repo.insert_object(
            session,
            uid="l2",
            tenant="t1",
            object_type=SYMMETRIC_KEY,
            state=STATE_ACTIVE,
            level=LEVEL_TENANT_KEY,
            attributes=b"",
            material=wrap(l1, l2_plain, aad=object_aad("t1", "l2")),
            material_format=RAW,
            wrapped_by=WRAPPED_BY_L1,
        )

    store.run_sync(create)

    def load(session: Session) -> bytes:
        assert repo.get_meta(session, "l1.kcv") == key_check_value(l1)
        l2 = repo.find_l2(session, "t1")
        return unwrap(l1, l2.material, aad=object_aad(l2.tenant, l2.uid))

    assert store.run_sync(load, write=False) == l2_plain


# --- transactions --------------------------------------------------------------------------


class _Boom(Exception):
    pass


def _counts(session: Session) -> tuple[int, int, int, int]:
    return (
        session.scalar(select(func.count()).select_from(ManagedObject)),
        session.scalar(select(func.count()).select_from(ObjectName)),
        session.scalar(select(func.count()).select_from(AuditLog)),
        session.scalar(select(func.count()).select_from(OutboxEvent)),
    )


def _change_then_fail(session: Session) -> None:
    _new_key(session, "k1", names=[("n", 1)])
    append_audit(session, _event(1))
    repo.append_outbox(session, "l3.state", "t1", b"payload")
    raise _Boom("handler failed after writing")


def test_failed_transaction_leaves_nothing_sync(store: Store) -> None:
    with pytest.raises(_Boom):
        store.run_sync(_change_then_fail)
    assert store.run_sync(_counts, write=False) == (0, 0, 0, 0)
    assert store.run_sync(lambda s: repo.get_meta(s, "audit.head")) is None
    # The chain and the outbox continue from where the committed state left them.
    store.run_sync(lambda s: append_audit(s, _event(1)))
    assert store.run_sync(lambda s: repo.append_outbox(s, "policy", None, b"p")) == 1
    assert store.run_sync(verify_chain).ok


def test_a_commit_that_adds_events_is_told_after_it_commits(store: Store) -> None:
    """This process's fan-out reads new events when their commit is done, not at its next
    poll: the store tells ``on_outbox_written`` after (and only after) a commit that added
    some."""
    told: list[int] = []

    def count_events(session: Session) -> int:
        return session.scalar(select(func.count()).select_from(OutboxEvent)) or 0

    store.on_outbox_written = lambda: told.append(store.run_sync(count_events, write=False))
    store.run_sync(lambda s: append_audit(s, _event(1)))  # no event: nobody told
    assert told == []
    store.run_sync(lambda s: [repo.append_outbox(s, "policy", None, b"p") for _ in range(3)])
    assert told == [3]  # once per transaction, and the events are committed by then
    with pytest.raises(_Boom):
        store.run_sync(_change_then_fail)  # rolled back: nobody told
    assert told == [3]
    store.run_sync(lambda s: repo.append_outbox(s, "policy", None, b"p"), write=True)
    assert told == [3, 4]


@pytest_twisted.inlineCallbacks
def test_failed_transaction_leaves_nothing_deferred(store: Store):
    store.startService()
    with pytest.raises(_Boom):
        yield store.run(_change_then_fail)
    counts = yield store.run(_counts, write=False)
    assert counts == (0, 0, 0, 0)


@pytest_twisted.inlineCallbacks
def test_the_writer_keeps_its_connection_and_gives_back_a_failed_one(store: Store):
    """The writer thread's transactions (group commits) share one connection until one
    fails; the next then starts on a fresh one, with nothing of the failed one."""
    store.startService()

    def connection(session: Session) -> object:
        return session.connection()  # SQLAlchemy's, one per checkout from the pool

    first = yield store.write(connection)
    second = yield store.write(lambda s: (_new_key(s, "k1"), connection(s))[1])
    assert first is second

    def fail(session: Session) -> None:
        _new_key(session, "k9")
        append_audit(session, _event(1))
        raise _Boom("handler failed after writing")

    with pytest.raises(_Boom):
        yield store.write(fail)
    third = yield store.write(connection)
    assert third is not second
    counts = yield store.run(_counts, write=False)
    assert counts == (1, 0, 0, 0)  # k1; nothing of the failed transaction
    uid = yield store.write(lambda s: _new_key(s, "k2").uid)
    assert uid == "k2"


@pytest_twisted.inlineCallbacks
def test_the_writer_checks_a_kept_postgresql_connection_that_sat_idle(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch):
    """A PostgreSQL connection the writer kept idle is pinged before it is used again, as
    the pool checks one before lending it: a server that dropped it (a restart, a
    failover, an idle timeout) costs the next write nothing. One past the pool's recycling
    age is exchanged."""
    engine = open_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    upgrade(postgres_url)
    store = Store(postgres_url, threads=2)
    store.audit_key = derive_audit_key(bytes(32))
    store.startService()
    try:
        backend = yield store.write(
            lambda s: s.execute(text("SELECT pg_backend_pid()")).scalar_one())
        with engine.begin() as connection:
            # With a timeout, it returns once the backend is gone (PostgreSQL 14 and later).
            assert connection.execute(text("SELECT pg_terminate_backend(:pid, 10000)"),
                                      {"pid": backend}).scalar_one()
        monkeypatch.setattr(engine_module, "KEPT_CONNECTION_CHECK_S", 0.0)
        uid = yield store.write(lambda s: _new_key(s, "k1").uid)
        assert uid == "k1"
        again = yield store.write(
            lambda s: s.execute(text("SELECT pg_backend_pid()")).scalar_one())
        assert again != backend
        # One past the recycling age goes back to the pool (which, at that age, replaces
        # it with a new one), however lively.
        kept = yield store.write(lambda s: s.connection())
        monkeypatch.setattr(engine_module, "POSTGRESQL_RECYCLE_S", 0.0)
        exchanged = yield store.write(lambda s: s.connection())
        assert exchanged is not kept
    finally:
        store.stopService()
        engine.dispose()


@pytest_twisted.inlineCallbacks
def test_run_commits_and_returns(store: Store):
    store.startService()
    uid = yield store.run(lambda s: _new_key(s, "k1").uid)
    assert uid == "k1"
    located = yield store.run(lambda s: repo.locate(s, "t1"), write=False)
    assert located == ["k1"]


@pytest_twisted.inlineCallbacks
def test_run_before_start_is_refused(store: Store):
    with pytest.raises(RuntimeError):
        yield store.run(lambda s: None)


@pytest_twisted.inlineCallbacks
def test_concurrent_updates_serialize(store: Store):
    """Read-modify-write from 4 worker threads: no lost update, revisions strictly rise."""
    store.run_sync(lambda s: _new_key(s, "k1", attributes=b"0"))
    store.startService()
    rounds = 40
    seen: list[tuple[int, int]] = []
    seen_lock = threading.Lock()

    def increment(session: Session) -> None:
        obj = repo.get_object(session, "t1", "k1", for_update=True)
        value = int(obj.attributes) + 1
        repo.update_object(session, obj, attributes=str(value).encode())
        append_audit(session, _event(value, operation="ModifyAttribute"))
        with seen_lock:
            seen.append((value, obj.revision))

    from twisted.internet import defer

    yield defer.gatherResults([store.run(increment) for _ in range(rounds)], consumeErrors=True)
    final = store.run_sync(lambda s: repo.get_object(s, "t1", "k1"))
    assert int(final.attributes) == rounds
    assert final.revision == rounds + 1
    assert sorted(seen) == [(n, n + 1) for n in range(1, rounds + 1)]
    result = store.run_sync(verify_chain, write=False)
    assert (result.ok, result.records_checked) == (True, rounds)


def test_concurrent_writers_from_plain_threads(store: Store) -> None:
    """Outbox and audit sequences stay gapless and unforked under raw thread contention."""
    store.run_sync(lambda s: repo.ensure_tenant(s, "t1"))
    errors: list[BaseException] = []

    def worker(worker_id: int) -> None:
        try:
            for n in range(10):
                store.run_sync(
                    lambda s, n=n: (
                        append_audit(s, _event(n, correlation_id=f"w{worker_id}-{n}")),
                        repo.append_outbox(s, "l4.tombstone", "t1", f"{worker_id}-{n}".encode()),
                    )
                )
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    events = store.run_sync(lambda s: repo.outbox_since(s, 0, limit=100), write=False)
    assert [event.seq for event in events] == list(range(1, 41))
    assert store.run_sync(lambda s: repo.outbox_since(s, 38), write=False)[0].seq == 39
    assert store.run_sync(repo.outbox_head) == 40
    result = store.run_sync(verify_chain, write=False)
    assert (result.ok, result.records_checked) == (True, 40)


def test_the_fanouts_plain_read_of_the_outbox_gives_what_a_sessions_does(
        store: Store) -> None:
    """The event fan-out reads the outbox without an ORM session
    (``outbox_since_plain`` in ``Store.read_plain_sync``): the same records as in a
    session, in order, with the same limits, in a read-only transaction."""
    store.run_sync(lambda s: repo.ensure_tenant(s, "t1"))
    for n in range(5):
        store.run_sync(lambda s, n=n: repo.append_outbox(s, "l4.tombstone", "t1",
                                                         f"token-{n}".encode()))
    store.run_sync(lambda s: repo.append_outbox(s, "policy", None, b"\x00\xff"))
    for after, limit in ((0, 1000), (2, 1000), (0, 3), (6, 10)):
        plain = store.read_plain_sync(
            lambda c, after=after, limit=limit: repo.outbox_since_plain(c, after, limit))
        assert plain == store.run_sync(
            lambda s, after=after, limit=limit: repo.outbox_since(s, after, limit),
            write=False)
    records = store.read_plain_sync(lambda c: repo.outbox_since_plain(c, 0))
    assert [(r.seq, r.tenant, r.kind) for r in records] == [
        *((n, "t1", "l4.tombstone") for n in range(1, 6)), (6, None, "policy")]
    assert [r.payload for r in records[:5]] == [f"token-{n}".encode() for n in range(5)]
    assert store.read_plain_sync(lambda c: repo.outbox_since_plain(c, 0))[-1].payload \
        == b"\x00\xff"
    with pytest.raises(Exception, match="(?i)read.?only"):
        store.read_plain_sync(lambda c: c.execute(text("DELETE FROM outbox")))
    assert len(store.read_plain_sync(lambda c: repo.outbox_since_plain(c, 0))) == 6


def test_outbox_refuses_unknown_kinds(store: Store) -> None:
    with pytest.raises(ValueError):
        store.run_sync(lambda s: repo.append_outbox(s, "l3.exploded", None, b""))


def test_tombstones(store: Store) -> None:
    store.run_sync(lambda s: _new_key(s, "l3", level=LEVEL_SERVICE_KEY, service="p", key_version=1))

    def bury(session: Session) -> tuple[bool, bool]:
        first = repo.add_tombstone(
            session, token_id="tok1", tenant="t1", l3_uid="l3", reason="revoked", clock=lambda: 5
        )
        again = repo.add_tombstone(
            session, token_id="tok1", tenant="t1", l3_uid="l3", reason="destroyed", clock=lambda: 6
        )
        return first, again

    assert store.run_sync(bury) == (True, False)
    assert store.run_sync(lambda s: repo.is_tombstoned(s, "tok1"))
    assert not store.run_sync(lambda s: repo.is_tombstoned(s, "tok2"))
    graves = store.run_sync(lambda s: repo.tombstones_for(s, "t1", "l3"))
    assert [(g.token_id, g.reason, g.at) for g in graves] == [("tok1", "revoked", 5)]


def test_a_stream_part_is_spent_once_and_purged_after_it_expired(store: Store) -> None:
    """kcm.core.stream_parts: a Correlation Value's part is recorded once; a second record
    of it, in the same transaction or a later one, says False; expired ones are purged."""
    def spend_twice(session: Session) -> tuple[bool, bool, bool]:
        return (repo.spend_stream_part(session, b"s" * 16, 0, 100),
                repo.spend_stream_part(session, b"s" * 16, 0, 100),
                repo.spend_stream_part(session, b"s" * 16, 1, 200))

    assert store.run_sync(spend_twice) == (True, False, True)
    assert not store.run_sync(lambda s: repo.spend_stream_part(s, b"s" * 16, 1, 200))
    assert store.run_sync(lambda s: repo.spend_stream_part(s, b"t" * 16, 1, 200))
    assert store.run_sync(lambda s: repo.purge_stream_parts(s, 100)) == 0
    assert store.run_sync(lambda s: repo.purge_stream_parts(s, 101)) == 1
    assert store.run_sync(lambda s: repo.spend_stream_part(s, b"s" * 16, 0, 100))  # forgotten
    assert not store.run_sync(lambda s: repo.spend_stream_part(s, b"s" * 16, 1, 200))


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_transactions_racing_for_one_stream_part_one_wins(db_url: str) -> None:
    """Two cores on one PostgreSQL database taking the same Correlation Value at once: the
    second waits for the first and, once it commits, is told the part was spent. (PostgreSQL
    only: SQLite serializes writers, so no two write transactions overlap there.)"""
    upgrade(db_url)
    engine = open_engine(db_url)
    outcome: list[bool] = []
    try:
        with Session(engine) as first:
            assert repo.spend_stream_part(first, b"r" * 16, 3, 100)

            def second() -> None:
                with Session(engine) as session:
                    outcome.append(repo.spend_stream_part(session, b"r" * 16, 3, 100))
                    session.commit()

            racer = threading.Thread(target=second)
            racer.start()
            racer.join(0.5)
            assert racer.is_alive() and outcome == []  # waiting for the first to end
            first.commit()
            racer.join(10)
        assert outcome == [False]
    finally:
        engine.dispose()


# --- audit chain on both backends ----------------------------------------------------------


def _append_five(store: Store) -> None:
    store.run_sync(lambda s: [append_audit(s, _event(n), clock=lambda n=n: n) for n in range(5)])


def test_audit_chain_detects_altered_record(store: Store) -> None:
    _append_five(store)
    assert store.run_sync(verify_chain).ok
    store.run_sync(
        lambda s: s.execute(update(AuditLog).where(AuditLog.seq == 3).values(principal="x"))
    )
    result = store.run_sync(verify_chain)
    assert (result.ok, result.first_bad_seq, result.records_checked) == (False, 3, 2)


def test_audit_chain_detects_deleted_record(store: Store) -> None:
    _append_five(store)
    store.run_sync(lambda s: s.execute(delete(AuditLog).where(AuditLog.seq == 2)))
    result = store.run_sync(verify_chain)
    assert (result.ok, result.first_bad_seq) == (False, 2)


def test_audit_chain_detects_reordered_records(store: Store) -> None:
    _append_five(store)

    def swap(session: Session) -> None:
        session.execute(update(AuditLog).where(AuditLog.seq == 2).values(seq=-2))
        session.execute(update(AuditLog).where(AuditLog.seq == 4).values(seq=2))
        session.execute(update(AuditLog).where(AuditLog.seq == -2).values(seq=4))

    store.run_sync(swap)
    result = store.run_sync(verify_chain)
    assert (result.ok, result.first_bad_seq) == (False, 2)


def test_audit_records_committed_after_the_head_was_read_are_verified(
        store: Store, db_url: str) -> None:
    """A writer commits records between verify's read of the head and its walk of the
    records: on PostgreSQL (each statement sees the latest commits) the walk meets them past
    the head and verifies them; SQLite reads one snapshot and does not see them."""
    _append_five(store)
    writer = Store(db_url)
    writer.audit_key = store.audit_key
    engine = store.engine
    walks = []

    def commit_meanwhile(conn, cursor, statement: str, *args: object) -> None:
        walk = ("FROM audit_log" in statement and "ORDER BY audit_log.seq" in statement
                and "DESC" not in statement)
        if walk and not walks:
            walks.append(statement)
            writer.run_sync(lambda s: [append_audit(s, _event(n)) for n in range(5, 8)])

    event.listen(engine, "before_cursor_execute", commit_meanwhile)
    try:
        result = store.run_sync(verify_chain, write=False)
    finally:
        event.remove(engine, "before_cursor_execute", commit_meanwhile)
        writer.stopService()
    assert walks
    if db_url.startswith("postgresql"):
        assert result == VerifyResult(True, 8, past_head_records=3)
    else:
        assert result == VerifyResult(True, 5)
    assert store.run_sync(verify_chain, write=False) == VerifyResult(True, 8)


def test_audit_chain_detects_truncated_tail(store: Store) -> None:
    _append_five(store)
    store.run_sync(lambda s: s.execute(delete(AuditLog).where(AuditLog.seq >= 4)))
    result = store.run_sync(verify_chain)
    assert (result.ok, result.first_bad_seq) == (False, 4)
