"""The writers' lock on PostgreSQL is never held for long by a session that stopped talking:
KCM's sessions carry ``idle_in_transaction_session_timeout`` and TCP keepalives on both
ends, a writer waits for the lock a bounded time, and while it waits it ends a holder that
has sent nothing for that timeout (one stopped between statements it sent without waiting,
which the server does not count as idle). Real sessions of the suite's cluster, no core."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from kcm.core.store import repository
from kcm.core.store.engine import Store, open_engine
from kcm.core.store.migrate import upgrade
from kcm.core.store.unavailable import store_unavailable
from kcm.testing.postgres import fresh_database

_databases = itertools.count()
LOCK = f"SELECT pg_advisory_xact_lock({repository.WRITER_LOCK_KEY})"


@pytest.fixture
def pg_database(postgres_url: str) -> Iterator[str]:
    """A fresh, migrated database in the suite's cluster."""
    url = fresh_database(postgres_url, f"kcm_lock_{os.getpid()}_{next(_databases)}")
    upgrade(url)
    yield url


def _settings(connection, *names: str) -> list[str]:
    return [connection.exec_driver_sql(f"SHOW {name}").scalar_one() for name in names]


def test_kcm_sessions_carry_their_timeouts_and_keepalives(pg_database: str) -> None:
    store, migrations = Store(pg_database), open_engine(pg_database)
    try:
        with store.engine.connect() as connection:
            assert _settings(connection, "idle_in_transaction_session_timeout",
                             "tcp_keepalives_idle", "tcp_keepalives_interval",
                             "tcp_keepalives_count", "tcp_user_timeout", "lock_timeout") == [
                "5s", "5", "2", "3", "15000", "0"]
            client = connection.connection.driver_connection.info.get_parameters()
            assert {name: client.get(name) for name in (
                "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
                "tcp_user_timeout")} == {
                "keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2",
                "keepalives_count": "3", "tcp_user_timeout": "15000"}
        # Schema migrations (one long transaction, at start) are not cut short.
        with migrations.connect() as connection:
            assert _settings(connection, "idle_in_transaction_session_timeout",
                             "tcp_keepalives_idle") == ["0", "5"]
        # What the operator set for KCM's database (or role, or in the URL) is kept.
        with migrations.connect().execution_options(isolation_level="AUTOCOMMIT") \
                as connection:
            name = pg_database.rsplit("/", 1)[1]
            connection.exec_driver_sql(
                f"ALTER DATABASE {name} SET idle_in_transaction_session_timeout = '7s'")
        operators = Store(pg_database)
        try:
            with operators.engine.connect() as connection:
                assert _settings(connection, "idle_in_transaction_session_timeout") == ["7s"]
        finally:
            operators.engine.dispose()
    finally:
        store.engine.dispose()
        migrations.dispose()


def _holder(store: Store, *, pipelined: bool) -> tuple[psycopg.Connection, object]:
    """A KCM session holding the writers' lock, then silent: idle in its transaction, or
    (``pipelined``) having sent a statement it does not wait for, as the store sends most
    of a request's (kcm.core.store.raw_statements); and the pipeline, kept open."""
    pooled = store.engine.raw_connection()
    connection = pooled.driver_connection
    pooled.detach()
    connection.execute(LOCK)
    pipeline = None
    if pipelined:
        pipeline = connection.pipeline()  # (collected, it would end with a Sync)
        pipeline.__enter__()
        connection.cursor().execute("SELECT 1")
    return connection, pipeline


def _state(store: Store, pid: int) -> str | None:
    with store.engine.connect() as connection:
        return connection.execute(text("SELECT state FROM pg_stat_activity WHERE pid = :pid"),
                                  {"pid": pid}).scalar()


def test_a_silent_holder_is_ended_and_a_busy_one_makes_writers_give_up(
        pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(pg_database, idle_in_transaction=1)
    try:
        for pipelined in (False, True):
            holder, _pipeline = _holder(store, pipelined=pipelined)
            pid = holder.info.backend_pid
            assert _state(store, pid) == ("active" if pipelined else "idle in transaction")
            began = time.monotonic()

            def in_lock(session) -> str:
                # Taken while the transaction goes on; the wait's lock_timeout is gone.
                return session.execute(text("SHOW lock_timeout")).scalar_one()

            assert store.run_sync(in_lock) == "0"
            waited = time.monotonic() - began
            # The server ends a session idle in a transaction by itself; the writer ends
            # one stopped mid-pipeline (the server takes it for active) at its next look.
            assert 0.8 < waited < 1 + repository.WRITERS_LOCK_LOOK_S + 1.5, (pipelined, waited)
            assert _state(store, pid) is None
            if _pipeline is not None:
                with contextlib.suppress(psycopg.Error):  # (its session is gone)
                    _pipeline.__exit__(None, None, None)
            holder.close()

        # A holder at work (a long statement, not silent) is left alone: the writer gives
        # up after its wait, with an error the handler answers "key store unavailable".
        monkeypatch.setattr(repository, "WRITERS_LOCK_WAIT_S", 1.5)
        busy, _ = _holder(store, pipelined=False)

        def sleep() -> None:
            with contextlib.suppress(psycopg.errors.QueryCanceled):
                busy.execute("SELECT pg_sleep(30)")

        sleeping = threading.Thread(target=sleep, daemon=True)
        sleeping.start()
        began = time.monotonic()
        with pytest.raises(OperationalError) as refused:
            store.run_sync(lambda session: None)
        assert 1.4 < time.monotonic() - began < 3.5
        assert "lock timeout" in store_unavailable(refused.value)
        assert _state(store, busy.info.backend_pid) == "active"
        with store.engine.connect() as connection:
            connection.execute(text("SELECT pg_cancel_backend(:pid)"),
                               {"pid": busy.info.backend_pid})
        sleeping.join(5)
        busy.close()
        store.run_sync(lambda session: None)  # free again, and the session is sound
    finally:
        store.engine.dispose()
