"""Which database this is: its deployment id and its restore generation.

A restored copy of a database holds everything the original held, its audit chain and
event numbers included, so nothing in it tells the two apart once both run. Two rows of the
``meta`` table do (docs/operations.md, "Backup and restore"):

* ``deployment.id``: 32 hex digits, written once, by the first ``kcm core init`` or
  kcm-core start that finds none (a database made before this release gets one then); it
  never changes, and every copy of the database has the same. It is derived from the L1
  key's check value in force when it is written (``meta`` row ``l1.kcv``; random for a
  database that has none yet), so that a copy backed up before its database had an id
  (before this release) is given the same id as the original when it is restored, unless
  the L1 key was rotated in between; and two databases share one only if they share an L1
  key;
* ``restore.generation``: how many times this database was restored from a copy (absent:
  0). ``kcm core init --restored``, a step of the restore procedure, raises it by one, so a
  restored copy has a higher generation than the original it was copied from.

No migration: ``meta`` is a key/value table every schema has.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from kcm.core.l1 import L1_CHECK_META
from kcm.core.store.repository import get_meta, set_meta
from kcm.core.store.schema import Meta

__all__ = ["DEPLOYMENT_META", "GENERATION_META", "Lineage", "deployment_id", "ensure_lineage",
           "mark_restored", "read_lineage"]

DEPLOYMENT_META = "deployment.id"
GENERATION_META = "restore.generation"


@dataclass(frozen=True)
class Lineage:
    """A database's deployment id and restore generation."""

    deployment: str
    generation: int

    def __str__(self) -> str:
        return f"deployment {self.deployment}, restore generation {self.generation}"


def read_lineage(session: Session) -> Lineage | None:
    """The database's lineage; None before its deployment id is written."""
    rows = {key: value for key, value in session.execute(select(Meta.key, Meta.value).where(
        Meta.key.in_((DEPLOYMENT_META, GENERATION_META))))}
    if DEPLOYMENT_META not in rows:
        return None
    return Lineage(rows[DEPLOYMENT_META], _generation(rows.get(GENERATION_META)))


def ensure_lineage(session: Session) -> Lineage:
    """The database's lineage, its deployment id written first if it has none (in a write
    transaction: of two cores starting together on one database, one id is kept)."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(insert(Meta).values(key=DEPLOYMENT_META,
                                        value=deployment_id(get_meta(session, L1_CHECK_META)))
                    .on_conflict_do_nothing(index_elements=["key"]))
    lineage = read_lineage(session)
    assert lineage is not None  # (just written, or there already)
    return lineage


def deployment_id(l1_check_value: str | None) -> str:
    """The deployment id of a database whose L1 key has ``l1_check_value`` (random when it
    has none yet): 32 hex digits."""
    if l1_check_value is None:
        return secrets.token_hex(16)
    digest = hashlib.sha256(b"kcm deployment id\0" + l1_check_value.encode("ascii"))
    return digest.hexdigest()[:32]


def mark_restored(session: Session) -> Lineage:
    """Raise the restore generation by one (the database is a restored copy); the new
    lineage. Run with kcm-core stopped, once per restore."""
    lineage = ensure_lineage(session)
    set_meta(session, GENERATION_META, str(lineage.generation + 1))
    return Lineage(lineage.deployment, lineage.generation + 1)


def _generation(text: str | None) -> int:
    try:
        return max(0, int(text)) if text is not None else 0
    except ValueError:
        return 0
