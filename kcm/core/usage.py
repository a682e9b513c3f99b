"""How many encryptions were made under each service key (L3) version: L4s sealed and DEKs
wrapped, reported in batches by the gateways (USAGE_REPORT frames, docs/link-protocol.md)
and counted by the core for its own L4 work. A usage cap in a rotation policy
(:mod:`kcm.core.rotation_policy`) is judged against these counts.

Counts only grow, and a report adds to them: two gateways reporting the same version add
up. Blocking functions run in a store transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from kcm.core.store.schema import L3Usage

__all__ = ["add_uses", "uses_of"]


def add_uses(session: Session, counts: Mapping[str, int], *, now: int) -> None:
    """Add ``counts`` (L3 uid -> encryptions since the last report) to the stored counts."""
    for uid, count in counts.items():
        if count <= 0:
            continue
        updated = session.execute(update(L3Usage).where(L3Usage.uid == uid).values(
            uses=L3Usage.uses + count, reported_at=now))
        if updated.rowcount == 0:
            session.add(L3Usage(uid=uid, uses=count, reported_at=now))
            session.flush()


def uses_of(session: Session, uids: Iterable[str]) -> dict[str, int]:
    """The counts of ``uids`` (absent: none reported)."""
    wanted = list(uids)
    if not wanted:
        return {}
    return dict(session.execute(select(L3Usage.uid, L3Usage.uses)
                                .where(L3Usage.uid.in_(wanted))).all())
