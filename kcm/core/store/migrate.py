"""Schema migrations, driven from code: no alembic.ini is needed at run time.

The Alembic scripts ship inside the package (``kcm/core/store/migrations``). A database is
always upgraded in place, never recreated.

kcm-core runs :func:`upgrade` at every start, and logs ``schema upgraded from OLD to NEW``
(``schema created at NEW`` for a new database) when it did something. A database already
at :data:`HEAD_REVISION` (the usual case) is recognised with one query, without importing
Alembic (about 0.15 s of every start); Alembic is imported only when there is something
to do or to refuse.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, func, inspect, select, text
from sqlalchemy.engine import make_url

from kcm.core.store.engine import WRITE_OPTION, open_engine
from kcm.core.store.repository import WRITER_LOCK_KEY

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: The newest revision of the packaged scripts, as :func:`head_revision` reads it from them
#: (a test keeps the two equal): a database at it needs no migration.
HEAD_REVISION = "0017"

# Arbitrary constant: the PostgreSQL advisory lock that keeps two cores starting at once from
# migrating the same database together.
MIGRATION_LOCK_KEY = 0x4B434D0002


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the packaged scripts, bound to ``connection`` if given."""
    from alembic.config import Config

    config = Config()
    # Config values go through configparser interpolation: a literal % must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


class SchemaTooNew(RuntimeError):
    """The database's schema revision is not one this release's scripts know: a newer
    release wrote it (this one cannot read it, nor downgrade it)."""

    def __init__(self, revision: str, head: str) -> None:
        super().__init__(f"the database's schema revision {revision} is newer than this "
                         f"kcm's ({head}): run the kcm release that wrote it, or a later one")
        self.revision = revision
        self.head = head


class SchemaUnknown(RuntimeError):
    """The database holds KCM's tables but no schema revision (its ``alembic_version`` row
    or table is gone): no release can tell what to upgrade, or whether it may write."""

    def __init__(self) -> None:
        super().__init__("the database holds KCM's tables but no schema revision (its "
                         "alembic_version row is gone): restore it from a backup, or put "
                         "the revision it was at back into alembic_version")


def _has_kcm_tables(connection: Connection) -> bool:
    return inspect(connection).has_table("tenants")


def head_revision() -> str:
    """The newest revision the packaged scripts define."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("no migration scripts are packaged")
    return head


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str | None] | None:
    """Bring the database at ``url`` up to ``revision`` in one transaction; the revisions
    it was at before (None: never migrated) and is at now, or None when it was already at
    ``head`` and left untouched.

    Safe to call at every start. A new SQLite database is created owner-only
    (:func:`create_private_sqlite_file`).
    """
    create_private_sqlite_file(url)
    engine = open_engine(url, pool_size=1, max_overflow=0)
    try:
        with migrating(engine) as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
            stored = _stored_revisions(connection)
            if revision == "head" and stored == [HEAD_REVISION]:
                return None
            if not stored and _has_kcm_tables(connection):
                raise SchemaUnknown()
            if connection.dialect.name == "postgresql":
                # The writers' lock too, for the migration's whole transaction: a running
                # core's write waits for it (at most WRITERS_LOCK_WAIT_S), then reads the
                # new revision and is refused; without it, a row a core wrote meanwhile
                # (READ COMMITTED) was never seen by the migration's fills.
                connection.execute(select(func.pg_advisory_xact_lock(WRITER_LOCK_KEY)))
            from alembic import command

            _refuse_unknown_revision(connection)
            command.upgrade(alembic_config(connection), revision)
            check_foreign_keys(connection)
            return _one(stored), _one(_stored_revisions(connection))
    finally:
        engine.dispose()


@contextmanager
def migrating(engine: Engine) -> Iterator[Connection]:
    """A connection of ``engine`` in a transaction to migrate in (committed when the block
    ends without an error), with SQLite's foreign key enforcement off meanwhile (see
    :func:`_sqlite_foreign_keys`; call :func:`check_foreign_keys` before the end)."""
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            _sqlite_foreign_keys(connection, on=False)
        try:
            with connection.begin():
                yield connection
        finally:
            if sqlite:
                _sqlite_foreign_keys(connection, on=True)


def _sqlite_foreign_keys(connection: Connection, *, on: bool) -> None:
    """SQLite's foreign key enforcement on ``connection``, switched outside a transaction
    (within one the PRAGMA does nothing). Migrations run with it off, as Alembic's batch
    mode requires: a table it rebuilds (copied, dropped, the copy renamed) would otherwise
    take every row that refers to it with it, through ON DELETE CASCADE (0007's downgrade
    emptied object_names and object_groups that way)."""
    connection.connection.driver_connection.execute(
        f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")


def check_foreign_keys(connection: Connection) -> None:
    """Refuse to commit a migration that left a row referring to nothing (SQLite, checked
    once at the end since enforcement was off; PostgreSQL enforces them as it goes)."""
    if connection.dialect.name != "sqlite":
        return
    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
    if broken:
        raise RuntimeError(f"the migration left {len(broken)} rows referring to no row, "
                           f"first in table {broken[0][0]}")


def _one(revisions: list[str]) -> str | None:
    """Revisions as one name (None: none; several heads, joined with ``+``)."""
    return "+".join(revisions) or None


def _stored_revisions(connection: Connection) -> list[str]:
    """The revisions the database on ``connection`` records itself at (Alembic's
    ``alembic_version`` table; none for a database never migrated)."""
    if not inspect(connection).has_table("alembic_version"):
        return []
    return list(connection.scalars(text("SELECT version_num FROM alembic_version")))


def _refuse_unknown_revision(connection: Connection) -> None:
    """:class:`SchemaTooNew` if the database on ``connection`` is at a revision the packaged
    scripts do not define (Alembic would only say it "can't locate" it)."""
    from alembic.runtime.migration import MigrationContext

    current = MigrationContext.configure(connection).get_current_revision()
    if current is not None and not is_known_revision(current):
        raise SchemaTooNew(current, head_revision())


def is_known_revision(revision: str) -> bool:
    """Whether the packaged scripts define ``revision``: a database at a revision they do
    not is newer than this release (:class:`SchemaTooNew`); one at a known revision other
    than :func:`head_revision` is behind, and :func:`upgrade` brings it up."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError as AlembicError

    scripts = ScriptDirectory.from_config(alembic_config())
    try:
        return scripts.get_revision(revision) is not None
    except AlembicError:
        return False


def create_private_sqlite_file(url: str) -> None:
    """Create the SQLite database file of ``url`` with mode 0600 if it does not exist yet.

    SQLite gives the database's WAL and shared-memory files the database file's mode, so
    the three hold key material and audit records for the owner alone, whatever the umask.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return
    try:
        fd = os.open(parsed.database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                     0o600)
    except FileExistsError:
        return
    os.fchmod(fd, 0o600)  # the umask can only narrow the mode; make it exact
    os.close(fd)


def schema_refusal(url: str) -> str | None:
    """Why a command of this release may not use the database at ``url`` (None: it may):
    a schema revision newer than this release's (:class:`SchemaTooNew`), an older one
    ``kcm core init`` has not upgraded yet, or none with KCM's tables there
    (:class:`SchemaUnknown`). A database never migrated is left to the command (it has no
    tables to read)."""
    current = current_revision(url)
    if current is None:
        return str(SchemaUnknown()) if tables_without_revision(url) else None
    if current == HEAD_REVISION:
        return None
    if not is_known_revision(current):
        return str(SchemaTooNew(current, head_revision()))
    return (f"the database's schema revision {current} is older than this kcm's "
            f"({head_revision()}): run kcm core init to upgrade it")


def _missing_sqlite_file(url: str) -> bool:
    """Whether ``url`` names a SQLite database file that does not exist (opening one would
    fail: :func:`kcm.core.store.engine._sqlite_file_must_exist`)."""
    parsed = make_url(url)
    return (parsed.get_backend_name() == "sqlite" and bool(parsed.database)
            and not os.path.exists(parsed.database))


def tables_without_revision(url: str) -> bool:
    """Whether the database at ``url`` holds KCM's tables but no schema revision."""
    if _missing_sqlite_file(url):
        return False
    engine = open_engine(url, pool_size=1, max_overflow=0)
    try:
        with engine.connect().execution_options(**{WRITE_OPTION: False}) as connection:
            return _has_kcm_tables(connection) and not _stored_revisions(connection)
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at, or None if it was never migrated (or,
    SQLite, its file does not exist yet)."""
    if _missing_sqlite_file(url):
        return None
    engine = open_engine(url, pool_size=1, max_overflow=0)
    try:
        # A read: on SQLite, don't take the write lock (see engine.py).
        with engine.connect().execution_options(**{WRITE_OPTION: False}) as connection:
            # Read here rather than by Alembic's MigrationContext, whose import is a tenth
            # of a core's start, at every start of kcm-core and of each `kcm` command.
            stored = _stored_revisions(connection)
    finally:
        engine.dispose()
    if len(stored) > 1:  # (KCM's revisions are one line: Alembic refuses it too)
        raise RuntimeError(f"the database records {len(stored)} schema revisions in "
                           "alembic_version, not one: restore it from a backup")
    return stored[0] if stored else None
