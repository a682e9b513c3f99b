"""Alembic environment for the KSI.

Run from :mod:`kcm.core.store.migrate` with a connection in ``config.attributes``; for
developers creating a new revision with the ``alembic`` command, the URL comes from the
``sqlalchemy.url`` option or ``$KCM_DATABASE_URL``.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from kcm.core.store.engine import open_engine
from kcm.core.store.schema import Base

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
        render_as_batch=True,
        **kwargs,
    )


def _run_on(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("KCM_DATABASE_URL")
    if not url:
        raise RuntimeError("set sqlalchemy.url or KCM_DATABASE_URL")
    return url


if context.is_offline_mode():
    _configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
    else:
        engine = open_engine(_url(), pool_size=1, max_overflow=0)
        try:
            with engine.begin() as own_connection:
                _run_on(own_connection)
        finally:
            engine.dispose()
