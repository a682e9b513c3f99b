"""PostgreSQL sessions of their own, outside the store's pool, for what must outlive a
transaction: a LISTEN (:mod:`kcm.core.outbox_listener`) and a session-level advisory lock
(:mod:`kcm.core.leader_lease`).

Blocking: call from a worker thread, never the reactor.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine


def is_postgresql(engine: Engine) -> bool:
    """Whether ``engine`` is a PostgreSQL one (the only backend with several cores)."""
    return engine.dialect.name == "postgresql"


def own_connection(engine: Engine, *, watched: bool = False) -> Any:
    """A new psycopg connection to ``engine``'s database, in autocommit mode, that the
    engine's pool neither counts nor recycles (the caller closes it). ``watched``: its
    waits stay under the engine's silence watch (:mod:`kcm.core.store.server_silence`),
    for short statements; a LISTEN, which waits as long as it likes, is not."""
    pooled = engine.raw_connection()
    connection = pooled.driver_connection  # (None once detached)
    watch = getattr(connection, "kcm_watch", None)
    pooled.detach()
    if watched and watch is not None:
        connection.kcm_watch = watch
    try:
        connection.rollback()  # the pool may have begun one; autocommit needs none open
        connection.autocommit = True
    except Exception:
        connection.close()
        raise
    return connection
