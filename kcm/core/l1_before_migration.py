"""The L1 key checked against a database before kcm-core upgrades its schema.

kcm-core's store brings an older schema up to this release's as it starts
(:func:`kcm.core.store.migrate.upgrade`), and :class:`~kcm.core.service.MasterKey` checks
the L1 key against the check value ``kcm core init`` recorded only once the store has
started: with another deployment's L1 key (or the right key and another deployment's
database) an older database was upgraded, which cannot be undone, and then refused.
:class:`L1BeforeMigration` starts before the store: when the database is at an older
revision this release knows, it reads the recorded check value (the ``meta`` table has held
it, as ``l1.kcv``, since revision 0001) and refuses the start before anything is written
if the key is not the database's. A database at this release's revision, a new one, or one
at a revision unknown here is left to the store and the MasterKey, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.application.service import Service

from kcm.core.l1 import L1_CHECK_META, L1Key, l1_refusal

if TYPE_CHECKING:
    from kcm.core.service import MasterKey

__all__ = ["L1BeforeMigration", "migration_refusal", "recorded_l1_check"]


def recorded_l1_check(url: str) -> str | None:
    """The L1 check value ``kcm core init`` recorded in the database at ``url`` (at any
    revision: the ``meta`` table is there since 0001), or None; reads only."""
    from sqlalchemy import text

    from kcm.core.store.engine import WRITE_OPTION, open_engine

    engine = open_engine(url, pool_size=1, max_overflow=0)
    try:
        # A read: on SQLite, don't take the write lock (as current_revision).
        with engine.connect().execution_options(**{WRITE_OPTION: False}) as connection:
            return connection.execute(text("SELECT value FROM meta WHERE key = :key"),
                                      {"key": L1_CHECK_META}).scalar()
    finally:
        engine.dispose()


def migration_refusal(url: str, open_key: Callable[[], L1Key]) -> str | None:
    """Why the schema of the database at ``url`` must not be upgraded with the L1 key
    ``open_key()`` gives (it is not the database's), or None: also when no upgrade of a
    known older revision is due (the key is then not opened here)."""
    from kcm.core.store.migrate import HEAD_REVISION, current_revision, is_known_revision

    current = current_revision(url)
    if current is None or current == HEAD_REVISION or not is_known_revision(current):
        return None
    refusal = l1_refusal(recorded_l1_check(url), open_key())
    if refusal is None:
        return None
    return f"{refusal} (its schema, at revision {current}, was not upgraded)"


class L1BeforeMigration(Service):
    """Refuses the start (:class:`~kcm.core.service.StartupError`) before the store
    upgrades an older schema, when ``master_key``'s L1 is not the database's (see the
    module's docstring). Set before the store in the service tree."""

    name = "kcm-l1-before-migration"

    def __init__(self, master_key: MasterKey, url: str) -> None:
        self.master_key = master_key
        self.url = url

    def startService(self) -> None:
        from kcm.core.service import StartupError

        refusal = migration_refusal(self.url, self.master_key.open)
        if refusal is not None:
            raise StartupError(refusal)
        super().startService()
