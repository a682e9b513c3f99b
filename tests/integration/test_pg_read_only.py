"""A PostgreSQL database that turns read-only under a running core (a standby after a
failover, ``default_transaction_read_only`` set by a DBA): writes were answered "internal
error" with a traceback each, readiness said ok, and the pooled sessions, read-only since
they connected, kept failing writes after the database took them again. Now a refused
write is the key store's unavailability, readiness says the database is not writable, and
the first write after the database is writable again succeeds."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy

from kcm.core.keys import derive_audit_key
from kcm.core.metrics import database_state
from kcm.core.session_pinning import READ_ONLY_REFUSAL
from kcm.core.store import repository
from kcm.core.store.engine import Store
from kcm.core.store.migrate import upgrade
from kcm.core.store.unavailable import READ_ONLY, WriteInReadTransaction, store_unavailable
from kcm.link.events import EventKind
from kcm.testing.postgres import Cluster, fresh_database
from kcm.testing.processes import deploy
from tests.pg import own_cluster  # noqa: F401  (fixture)

_databases = itertools.count()


@pytest.fixture
def pg_database(postgres_url: str) -> Iterator[tuple[str, str]]:
    """A fresh, migrated database, and the URL of its cluster's maintenance database."""
    name = f"kcm_read_only_{next(_databases)}"
    url = fresh_database(postgres_url, name)
    upgrade(url)
    yield url, postgres_url.rsplit("/", 1)[0] + "/postgres"


def _admin(maintenance: str, database: str, *statements: str) -> None:
    engine = sqlalchemy.create_engine(maintenance, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            for statement in statements:
                connection.execute(sqlalchemy.text(statement.format(db=database)))
    finally:
        engine.dispose()


@contextlib.contextmanager
def _store(url: str) -> Iterator[Store]:
    """A store on ``url`` (not started: its writer connection given back, its engine
    disposed at the end)."""
    store = Store(url, threads=2)
    store.audit_key = derive_audit_key(bytes(32))
    try:
        yield store
    finally:
        store._give_back_writer_connection()
        store.engine.dispose()


def _add_event(session) -> None:
    repository.append_outbox(session, EventKind.POLICY, None, b"")


def test_a_read_only_database_is_unavailable_and_writes_resume_when_it_is_not(
        pg_database: tuple[str, str]) -> None:
    url, maintenance = pg_database
    database = sqlalchemy.engine.make_url(url).database
    with _store(url) as store:
        store._write_sync(_add_event)
        _admin(maintenance, database,
               "ALTER DATABASE {db} SET default_transaction_read_only = on",
               "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")
        for _ in range(3):  # (the first may meet the session ended under it)
            with pytest.raises(sqlalchemy.exc.DBAPIError) as refused:
                store._write_sync(_add_event)
        assert store_unavailable(refused.value) == READ_ONLY
        assert database_state(url)["database"] == f"not writable: {READ_ONLY}"
        with store.engine.connect() as reader:  # the pool's sessions are read-only ones
            reader.execute(sqlalchemy.text("SELECT 1"))

        _admin(maintenance, database, "ALTER DATABASE {db} RESET default_transaction_read_only")
        store._write_sync(_add_event)
        assert database_state(url)["database"] == "ok"


def test_a_write_in_a_read_transaction_of_the_store_is_a_bug_not_a_read_only_database(
        pg_database: tuple[str, str]) -> None:
    # The store's reads run SET TRANSACTION READ ONLY: a read path that wrote was refused
    # 25006 there too, and was told as a read-only database (no traceback, not audited,
    # counted as the store's unavailability, "try again") on a database that took writes.
    url, _ = pg_database
    write = "CREATE TEMPORARY TABLE written (a integer)"
    with _store(url) as store:
        for read in (lambda: store.run_sync(lambda s: s.execute(sqlalchemy.text(write)),
                                            write=False),
                     lambda: store.read_plain_sync(
                         lambda c: c.execute(sqlalchemy.text(write)))):
            with pytest.raises(WriteInReadTransaction) as refused:
                read()
            assert store_unavailable(refused.value) is None
            assert isinstance(refused.value.__cause__, sqlalchemy.exc.DBAPIError)
        store._write_sync(_add_event)  # the database takes writes
        assert database_state(url)["database"] == "ok"


def test_read_only_sessions_of_the_pool_are_dropped_by_a_worker_write_they_refuse(
        pg_database: tuple[str, str]) -> None:
    # default_transaction_read_only set for the database, its sessions left running: the
    # writer thread's kept session writes on, while the pool's new ones are read-only. The
    # writes of other threads (a gateway's fetch of service keys, an audit checkpoint)
    # failed on them, and went on failing after the database took writes again, until the
    # pool recycled them (30 minutes): only the writer thread's refusals dropped them.
    url, maintenance = pg_database
    database = sqlalchemy.engine.make_url(url).database
    with _store(url) as store:
        store._write_sync(_add_event)
        _admin(maintenance, database,
               "ALTER DATABASE {db} SET default_transaction_read_only = on")
        readers = [store.engine.connect() for _ in range(3)]  # (new sessions: read-only)
        for reader in readers:
            reader.close()
        store._write_sync(_add_event)  # (the writer's session is from before)
        with pytest.raises(sqlalchemy.exc.DBAPIError) as refused:
            store.run_sync(_add_event)
        assert store_unavailable(refused.value) == READ_ONLY

        _admin(maintenance, database, "ALTER DATABASE {db} RESET default_transaction_read_only")
        for _ in range(3):
            store.run_sync(_add_event)


def test_a_core_does_not_start_on_a_read_only_database_and_says_why(
        own_cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    """A start writes (the L1 check value, the audit chain's anchor): on a database whose
    sessions are read-only it failed at kcm-l1 in the driver's words (``cannot execute
    DELETE in a read-only transaction``), and ``kcm config check`` said nothing. Both now
    name the setting; once it is off, the core starts."""
    core = deploy(tmp_path / "core", own_cluster.url)
    maintenance = own_cluster.url.rsplit("/", 1)[0] + "/postgres"
    _admin(maintenance, "kcm", "ALTER DATABASE {db} SET default_transaction_read_only = on")
    checked = core.kcm("config", "check", check=False)
    assert checked.returncode == 1, checked.stdout
    assert f"error: core.database: {READ_ONLY_REFUSAL}" in checked.stdout, checked.stdout
    with pytest.raises(RuntimeError, match="kcm-core exited \\(1\\)"):
        core.start()
    assert (f"kcm-core did not start: kcm-database-sessions: {READ_ONLY_REFUSAL}"
            in core.log.read_text())
    assert READ_ONLY_REFUSAL.startswith(READ_ONLY)
    _admin(maintenance, "kcm", "ALTER DATABASE {db} RESET default_transaction_read_only")
    assert core.kcm("config", "check", check=False).returncode == 0
    core.start()
    core.stop()
