"""What the tests of one Alembic migration share (test support): an empty database on
SQLite or in the suite's PostgreSQL cluster, the indexes of ``managed_objects``, and a
downgrade to a revision."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect

from kcm.core.store.engine import open_engine
from kcm.core.store.migrate import alembic_config
from kcm.testing.postgres import fresh_database

__all__ = ["DATABASES", "downgrade", "empty_database", "managed_indexes"]

_databases = itertools.count()


#: The databases a migration is tested on (the ``params`` of each test module's fixture).
DATABASES = ["sqlite", "postgresql"]


def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database for ``request.param``: a fresh SQLite file, or a fresh database of
    the suite's cluster (not the cluster's own, which tests/integration/test_store.py wipes
    meanwhile)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kcm.db'}"
        return
    yield fresh_database(request.getfixturevalue("postgres_url"),
                         f"kcm_migration_{os.getpid()}_{next(_databases)}")


def managed_indexes(url: str) -> dict[str, list[str]]:
    """The columns of each index of ``managed_objects``, by name."""
    engine = open_engine(url)
    try:
        with engine.connect() as connection:
            return {ix["name"]: ix["column_names"]
                    for ix in inspect(connection).get_indexes("managed_objects")}
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> None:
    """Alembic's downgrade of the database at ``url`` to ``revision``."""
    engine = open_engine(url)
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), revision)
    finally:
        engine.dispose()
