"""A database upgraded under a running kcm-core (``kcm core init`` of a newer release, or
another core of one) gets no more writes from it: each write transaction reads the schema
revision (on PostgreSQL in the statement that takes the writers' lock) and a revision not
its own fails the requests, General Failure "the key store is unavailable", so that the
old core makes no rows the new release's migrations did not fill (they were invisible to
Locate for good). The core writes again once the revision is its own."""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy

from kcm.core.store.migrate import HEAD_REVISION
from kcm.kmip.enums import ResultReason, ResultStatus
from kcm.testing.postgres import fresh_database
from kcm.testing.processes import CoreProcess
from tests.e2e_support import deploy
from tests.gateway_support import create_managed, request, response
from tests.pg import postgres_url  # noqa: F401  (fixture)


def _set_revision(database: str, revision: str) -> None:
    engine = sqlalchemy.create_engine(database, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = :r"),
                               {"r": revision})
    finally:
        engine.dispose()


def _create(core: CoreProcess) -> tuple[int, int | None, str]:
    with core.client("app") as app:
        [answer] = response(app.send(request(create_managed()))).batch_items
    return answer.result_status, answer.result_reason, answer.result_message or ""


def _check(core: CoreProcess) -> None:
    core.start()
    try:
        assert _create(core)[0] == ResultStatus.SUCCESS
        _set_revision(core.database, "9999")  # what a newer release's upgrade does
        status, reason, message = _create(core)
        assert (status, reason) == (ResultStatus.OPERATION_FAILED,
                                    ResultReason.GENERAL_FAILURE), message
        assert "the key store is unavailable" in message
        assert (f"the database's schema is at revision 9999, this kcm-core writes "
                f"{HEAD_REVISION}") in core.log.read_text()
        _set_revision(core.database, HEAD_REVISION)
        assert _create(core)[0] == ResultStatus.SUCCESS
    finally:
        core.stop()


def test_sqlite(tmp_path: Path) -> None:
    _check(deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}"))


def test_postgresql(tmp_path: Path, postgres_url: str) -> None:  # noqa: F811
    url = fresh_database(postgres_url, f"kcm_schema_moved_{os.getpid()}")
    _check(deploy(tmp_path / "core", url))




def test_a_migration_holds_the_writers_lock_on_postgresql(
        postgres_url: str, monkeypatch) -> None:  # noqa: F811
    """A running core's write made while an upgrade's transaction is under way waits for
    it (the writers' lock), then reads the new revision and is refused: without the lock
    it read the old one and committed, and the migration's fills never saw its rows."""
    from alembic import command

    from kcm.core.store import migrate
    from kcm.core.store.repository import WRITER_LOCK_KEY

    url = fresh_database(postgres_url, f"kcm_schema_lock_{os.getpid()}")
    seen: list[bool] = []

    def migration(config, revision) -> None:  # (what alembic's upgrade would run)
        other = sqlalchemy.create_engine(url)
        try:
            with other.connect() as connection:
                seen.append(connection.execute(sqlalchemy.text(
                    f"SELECT pg_try_advisory_xact_lock({WRITER_LOCK_KEY})")).scalar())
        finally:
            other.dispose()

    monkeypatch.setattr(command, "upgrade", migration)
    migrate.upgrade(url)
    assert seen == [False]  # a writer could not have it meanwhile
