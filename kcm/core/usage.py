"""How many encryptions were made under each service key (L3) version: L4s sealed and DEKs
wrapped, reported in batches by the gateways (USAGE_REPORT frames, docs/link-protocol.md)
and counted by the core for its own L4 work. The usage cap of a version's effective
rotation policy (:mod:`kcm.core.rotation_policy`; the built-in cap if no policy sets one)
is judged against these counts.

Counts only grow, and a report adds to them: two gateways reporting the same version add
up. Counts for a uid that names no service key (a gateway's mistake, or a key removed with
its tenant meanwhile) are dropped, so the table holds one row per real version at most.
Blocking functions run in a store transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from kcm.core.rotation_policy import effective, policies_once
from kcm.core.rotation_schedule import look_again
from kcm.core.store.schema import LEVEL_SERVICE_KEY, L3Usage, ManagedObject

__all__ = ["add_uses", "uses_of"]


def add_uses(session: Session, counts: Mapping[str, int], *, now: int) -> list[str]:
    """Add ``counts`` (L3 uid -> encryptions since the last report) to the stored counts;
    those of uids that name no service key are dropped. A version whose count reaches the
    usage cap of its policy (every service key has one: the built-in cap if no policy sets
    one) is judged at the next sweep (:mod:`kcm.core.rotation_schedule`: the sweep reads no
    count but those); return those versions. The policies are read once per
    transaction."""
    wanted = [uid for uid, count in counts.items() if count > 0]
    if not wanted:
        return []
    known = {row.uid: row for row in session.execute(select(
        ManagedObject.uid, ManagedObject.tenant, ManagedObject.service).where(
        ManagedObject.uid.in_(wanted), ManagedObject.level == LEVEL_SERVICE_KEY))}
    stored = policies_once(session)
    reached = []
    for uid in wanted:
        row = known.get(uid)
        if row is None:
            continue
        count = counts[uid]
        total = session.execute(update(L3Usage).where(L3Usage.uid == uid).values(
            uses=L3Usage.uses + count, reported_at=now).returning(L3Usage.uses)).scalar()
        if total is None:
            session.add(L3Usage(uid=uid, uses=count, reported_at=now))
            session.flush()
            total = count
        if total >= effective(stored, row.tenant, row.service or "").max_uses:
            reached.append(uid)
    look_again(session, reached)
    return reached


def uses_of(session: Session, uids: Iterable[str]) -> dict[str, int]:
    """The counts of ``uids`` (absent: none reported)."""
    wanted = list(uids)
    if not wanted:
        return {}
    return dict(session.execute(select(L3Usage.uid, L3Usage.uses)
                                .where(L3Usage.uid.in_(wanted))).all())
