"""Schema migrations, driven from code: no alembic.ini is needed at run time.

The Alembic scripts ship inside the package (``kcm/core/store/migrations``). A database is
always upgraded in place, never recreated.
"""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, func, select
from sqlalchemy.engine import make_url

from kcm.core.store.engine import WRITE_OPTION, open_engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Arbitrary constant: the PostgreSQL advisory lock that keeps two cores starting at once from
# migrating the same database together.
MIGRATION_LOCK_KEY = 0x4B434D0002


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for the packaged scripts, bound to ``connection`` if given."""
    config = Config()
    # Config values go through configparser interpolation: a literal % must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision the packaged scripts define."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("no migration scripts are packaged")
    return head


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` up to ``revision`` in one transaction.

    Safe to call at every start: an up-to-date database is left untouched. A new SQLite
    database is created owner-only (:func:`create_private_sqlite_file`).
    """
    create_private_sqlite_file(url)
    engine = open_engine(url, pool_size=1, max_overflow=0)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
            command.upgrade(alembic_config(connection), revision)
    finally:
        engine.dispose()


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


def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at, or None if it was never migrated."""
    engine = open_engine(url, pool_size=1, max_overflow=0)
    try:
        # A read: on SQLite, don't take the write lock (see engine.py).
        with engine.connect().execution_options(**{WRITE_OPTION: False}) as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
