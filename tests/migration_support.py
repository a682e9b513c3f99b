"""What the tests of one Alembic migration share (test support): an empty database on
SQLite or in the suite's PostgreSQL cluster, the indexes of ``managed_objects``, and a
downgrade to a revision, the keys the tests fill a database with and its rows to compare."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import inspect, select, text

from kcm.core.hierarchy import provision_service, provision_tenant
from kcm.core.keyring import Keyring
from kcm.core.store.engine import Store, open_engine
from kcm.core.store.migrate import alembic_config, check_foreign_keys, migrating
from kcm.core.store.schema import ManagedObject
from kcm.testing.postgres import fresh_database

__all__ = ["DATABASES", "downgrade", "empty_database", "keyed_store", "later_columns",
           "managed_indexes", "managed_rows", "provision_both_tenants"]

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


def table_names(url: str) -> set[str]:
    """The names of the database's tables."""
    engine = open_engine(url)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names())
    finally:
        engine.dispose()


def tenant_columns(url: str) -> set[str]:
    """The names of the ``tenants`` table's columns as the database has them."""
    engine = open_engine(url)
    try:
        return {column["name"] for column in inspect(engine).get_columns("tenants")}
    finally:
        engine.dispose()


def downgrade(url: str, revision: str) -> None:
    """Alembic's downgrade of the database at ``url`` to ``revision``."""
    engine = open_engine(url)
    try:
        with migrating(engine) as connection:  # (as kcm core init upgrades: see its docs)
            command.downgrade(alembic_config(connection), revision)
            check_foreign_keys(connection)
    finally:
        engine.dispose()


#: The columns that revisions after 0006 add, by table (and their SQL types): this
#: release's code writes and reads them, so a database it fills at an older revision must
#: have them while it does (:func:`later_columns`).
LATER_COLUMNS = {"managed_objects": {"cryptographic_usage_mask": "BIGINT"},
                 "tenants": {"stored": "BIGINT NOT NULL DEFAULT 0", "max_objects": "BIGINT",
                             "requests_per_second": "FLOAT", "request_burst": "BIGINT"}}
#: The columns 0015 adds to ``tenants`` (among :data:`LATER_COLUMNS`).
TENANT_COLUMNS_0015 = ("requests_per_second", "request_burst")


@contextmanager
def later_columns(url: str) -> Iterator[None]:
    """:data:`LATER_COLUMNS` added to the database at ``url`` (at an older revision) for
    the while, so that this release's code may fill or read it as the release of that
    revision would; dropped afterwards, before a migration under test runs (what they
    held meanwhile does not remain)."""
    _alter(url, [f"ALTER TABLE {table} ADD COLUMN {name} {kind}"
                 for table, columns in LATER_COLUMNS.items()
                 for name, kind in columns.items()])
    try:
        yield
    finally:
        _alter(url, [f"ALTER TABLE {table} DROP COLUMN {name}"
                     for table, columns in LATER_COLUMNS.items() for name in columns])


def tenants_as_now(url: str, since: str = "0014") -> None:
    """The columns 0014 and 0015 add to ``tenants`` (:data:`LATER_COLUMNS`; ``since``
    "0015": only 0015's), added to the database at ``url`` (at 0007 to 0013, whose
    migrations leave ``tenants`` alone; or at 0014) for the rest of the test: this
    release's code counts each tenant's rows there and reads its request rate."""
    _alter(url, [f"ALTER TABLE tenants ADD COLUMN {name} {kind}"
                 for name, kind in LATER_COLUMNS["tenants"].items()
                 if since == "0014" or name in TENANT_COLUMNS_0015])


def tenants_as_before(url: str, since: str = "0014") -> None:
    """:func:`tenants_as_now` undone: ``tenants`` as 0013 (or 0014) left it."""
    _alter(url, [f"ALTER TABLE tenants DROP COLUMN {name}" for name in LATER_COLUMNS["tenants"]
                 if since == "0014" or name in TENANT_COLUMNS_0015])


def _alter(url: str, statements: list[str]) -> None:
    engine = open_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


def _with_row_mac(url: str) -> None:
    """``managed_objects.row_mac`` (migration 0017) added to a database at an older revision,
    if it has the table and not the column: this release's code writes and reads it. (0017
    leaves a column already there as it is.)"""
    engine = open_engine(url)
    try:
        tables = inspect(engine).get_table_names()
        if "managed_objects" not in tables or "row_mac" in {
                column["name"] for column in inspect(engine).get_columns("managed_objects")}:
            return
    finally:
        engine.dispose()
    _alter(url, ["ALTER TABLE managed_objects ADD COLUMN row_mac BYTEA"])


def keyed_store(url: str) -> tuple[Store, Keyring]:
    """A :class:`Store` on ``url`` with the audit key of a new random L1, and that L1's
    keyring (to fill the database with)."""
    _with_row_mac(url)
    store = Store(url)
    keyring = Keyring(os.urandom(32))
    store.audit_key = keyring.audit_key
    return store, keyring


def provision_both_tenants(session, keyring: Keyring, now: int) -> None:
    """Tenants demo and other, each with services app and billing, made at ``now``."""
    for tenant in ("demo", "other"):
        provision_tenant(session, keyring, tenant, now=now)
        for service in ("app", "billing"):
            provision_service(session, keyring, tenant, service, now=now)


def managed_rows(store: Store) -> list[tuple]:
    """Every row of ``managed_objects`` (what a migration must keep), by identifier."""
    return store.run_sync(lambda s: [tuple(row) for row in s.execute(select(
        ManagedObject.uid, ManagedObject.tenant, ManagedObject.level, ManagedObject.service,
        ManagedObject.state, ManagedObject.wrapped_by, ManagedObject.created_seq,
        ManagedObject.material, ManagedObject.attributes, ManagedObject.revision
    ).order_by(ManagedObject.uid))])


def locate_page_plan(url: str, **conditions: Any) -> str:
    """The plan of a Locate page (the second: after a keyset bound) of demo's objects that
    :func:`repository._locate_conditions` picks with ``conditions``, as text. PostgreSQL is
    told to avoid a sequential scan, which it rightly prefers for a few rows: the question
    is which index serves the page, in its order."""
    from sqlalchemy import select, text

    from kcm.core.store import repository
    from kcm.core.store.schema import ManagedObject

    engine = open_engine(url)
    try:
        with engine.connect() as connection:
            statement = select(ManagedObject.uid, ManagedObject.created_seq).where(
                repository._locate_conditions("demo", **conditions),
                ManagedObject.created_seq < 10**12,
            ).order_by(ManagedObject.created_seq.desc()).limit(256)
            compiled = statement.compile(dialect=connection.dialect,
                                         compile_kwargs={"literal_binds": True})
            if connection.dialect.name == "postgresql":
                connection.execute(text("SET enable_seqscan = off"))
                lines = connection.execute(text(f"EXPLAIN {compiled}")).scalars()
            else:
                lines = (row[-1] for row in connection.execute(
                    text(f"EXPLAIN QUERY PLAN {compiled}")))
            return "\n".join(lines)
    finally:
        engine.dispose()
