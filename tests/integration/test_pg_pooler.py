"""kcm-core behind a connection pooler. Its sweeper's lease (a session-level advisory lock)
and its outbox LISTEN need one server session per connection: through PgBouncer in
transaction mode two cores both held the lease and notifications were lost, silently. A core
that finds its connections are not sessions of their own refuses to start, with the reason;
straight or through a pooler in session mode it starts as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from kcm.core.session_pinning import unpinned
from kcm.core.store.engine import open_engine
from kcm.core.store.pg_session import own_connection
from kcm.testing.postgres import Cluster
from kcm.testing.processes import deploy
from tests.e2e_support import wait_until
from tests.pg import own_cluster  # noqa: F401  (fixture)
from tests.pgbouncer import pgbouncer


def test_direct_connections_are_sessions_of_their_own(postgres_url: str) -> None:
    engine = open_engine(postgres_url)
    try:
        assert unpinned(lambda: own_connection(engine)) is None
    finally:
        engine.dispose()


def test_a_core_behind_a_transaction_pooler_refuses_to_start(
        own_cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    core = deploy(tmp_path / "core", own_cluster.url)
    with pgbouncer(own_cluster, "transaction") as pooled:
        engine = open_engine(pooled)
        try:
            assert "served two connections" in (unpinned(lambda: own_connection(engine)) or "")
        finally:
            engine.dispose()
        core.database = pooled
        core.write_config()
        # kcm config check said every line ok here, then the start was refused.
        checked = core.kcm("config", "check", check=False)
        assert checked.returncode == 1, checked.stdout
        assert ("error: core.database: the database connections are not sessions of their "
                "own") in checked.stdout, checked.stdout
        with pytest.raises(RuntimeError, match="kcm-core exited \\(1\\)"):
            core.start()
        assert ("kcm-core did not start: kcm-database-sessions: the database connections are "
                "not sessions of their own") in core.log.read_text()

    with pgbouncer(own_cluster, "session") as pooled:
        core.database = pooled
        core.write_config()
        assert core.kcm("config", "check", check=False).returncode == 0
        core.start()
        try:
            wait_until(lambda: "holds the state sweeper lease" in core.log.read_text(),
                       "the core to take the sweeper's lease")
        finally:
            core.stop()


def test_a_core_behind_a_statement_pooler_refuses_to_start_saying_why(
        own_cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    """docs/operations.md says a pooler in statement mode is refused as one in transaction
    mode is: it was, by the L1 check's first transaction, in PgBouncer's words
    (``kcm-l1-before-migration: (psycopg.errors.ProtocolViolation) transaction blocks not
    allowed in statement pooling mode``). The sessions' check comes first now, and says
    what to do."""
    core = deploy(tmp_path / "core", own_cluster.url)
    with pgbouncer(own_cluster, "statement") as pooled:
        core.database = pooled
        core.write_config()
        checked = core.kcm("config", "check", check=False)
        assert checked.returncode == 1, checked.stdout
        assert "error: core.database: " in checked.stdout, checked.stdout
        with pytest.raises(RuntimeError, match="kcm-core exited \\(1\\)"):
            core.start()
        log = core.log.read_text()
        assert ("kcm-core did not start: kcm-database-sessions: the database connections are "
                "not sessions of their own") in log, log
        assert ("the server refused a transaction: transaction blocks not allowed in "
                "statement pooling mode") in log, log
