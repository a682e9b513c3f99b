"""Two real kcm-cores on one fresh PostgreSQL database, for the tests of what one core's
change does at the other (tests/integration/*_pg.py)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy

from kcm.core.store.schema import LEVEL_TENANT_KEY, STATE_ACTIVE
from kcm.testing.postgres import fresh_database
from kcm.testing.processes import CoreProcess, deploy

_databases = itertools.count()


@contextmanager
def two_cores(tmp_path: Path, postgres_url: str, name: str
              ) -> Iterator[tuple[list[CoreProcess], sqlalchemy.Engine]]:
    """Two started kcm-cores (tenant ``demo``) on a new database named after ``name``, and
    an engine on that database; both stopped, the engine disposed, on the way out."""
    url = fresh_database(postgres_url, f"{name}_{next(_databases)}")
    first = deploy(tmp_path / "core1", url)
    cores = [first, first.replica(tmp_path / "core2")]
    engine = sqlalchemy.create_engine(url)
    try:
        for core in cores:
            core.start()
        yield cores, engine
    finally:
        engine.dispose()
        for core in cores:
            core.stop()


def active_l2(engine: sqlalchemy.Engine, tenant: str = "demo") -> str:
    """The uid of ``tenant``'s Active tenant key (L2), as the database has it."""
    with engine.connect() as connection:
        return connection.execute(sqlalchemy.text(
            "SELECT uid FROM managed_objects WHERE tenant = :tenant AND level = :level "
            "AND state = :active"), {"tenant": tenant, "level": LEVEL_TENANT_KEY,
                                     "active": STATE_ACTIVE}).scalar_one()
