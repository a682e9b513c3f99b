"""Archiving the oldest audit records: the database keeps the chain from a base on.

An archive of records ``base + 1 .. until`` is done in three steps, each safe to interrupt
and the whole safe to run again (``kcm audit archive``):

1. the records are exported to a file, exactly as ``kcm audit export`` writes them (so that
   ``kcm audit verify --export FILE`` checks it), after the whole chain verified;
2. the base marker (:data:`kcm.core.audit.BASE_META_KEY`, :func:`mark_base`) is written,
   naming record ``until`` and its chain digest, MACed under the audit key: from then on
   :func:`kcm.core.audit.verify_chain` starts after it, linking record ``until + 1`` to
   that digest, and counts any record at or below it still there;
3. the records at or below the base are deleted, oldest first, in batches of
   :data:`DELETE_BATCH`, each a short write transaction of its own
   (:func:`delete_below_base`), as the outbox is pruned.

Interrupted before 2, nothing changed in the database; after it, running again (with the
same ``until`` or a later one) finishes the deletes. Only a record whose MAC verifies, with
a successor, may end an archive (:func:`archive_end_refusal`): the newest record stays
(appends chain from it, checkpoints and the head name it), and records without a MAC (a
chain's oldest, from before it was keyed) are archived with the ``KeyAuditChain`` record
that anchors them or not at all. The base never moves back.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from kcm.core.audit import (
    BASE_META_KEY,
    AuditChainError,
    _audit_key,
    base_marker,
    read_base,
    record_mac,
)
from kcm.core.store.repository import lock_writers, set_meta
from kcm.core.store.schema import AuditLog

__all__ = ["DELETE_BATCH", "ArchiveEnd", "archive_end", "archive_end_refusal",
           "delete_below_base", "first_at_or_after", "mark_base"]

#: Records deleted per transaction (one range of the primary key: a few tens of
#: milliseconds on SQLite).
DELETE_BATCH = 5000


@dataclass(frozen=True, slots=True)
class ArchiveEnd:
    """What an archive up to record ``seq`` must know, read in one transaction."""

    seq: int
    #: Its chain digest (what the base marker will name) and MAC (None: unkeyed).
    digest: bytes | None
    mac: bytes | None
    #: The newest record (0: none).
    newest: int
    #: The base marker's record now (0: none) and the digest it names.
    base_seq: int
    base_digest: bytes


def archive_end(session: Session, seq: int, *, audit_key: bytes | None = None) -> ArchiveEnd:
    """Record ``seq``, the newest record and the base, read together."""
    key = _audit_key(session, audit_key)
    base = read_base(session, key)
    row = session.execute(select(AuditLog.digest, AuditLog.mac)
                          .where(AuditLog.seq == seq)).first()
    newest = session.scalar(select(func.coalesce(func.max(AuditLog.seq), 0)))
    return ArchiveEnd(seq, None if row is None else bytes(row[0]),
                      None if row is None or row[1] is None else bytes(row[1]), newest,
                      base[0] if base else 0, base[1] if base else bytes(32))


def archive_end_refusal(end: ArchiveEnd, audit_key: bytes) -> str | None:
    """Why the chain cannot be archived up to ``end.seq`` (None: it can)."""
    if end.seq < 1:
        return "there is no record to archive before that point"
    if end.seq >= end.newest:
        return (f"record {end.seq} is not before the newest record ({end.newest}): the "
                "newest record is never archived (appends chain from it); archive up to "
                f"{end.newest - 1} at most")
    if end.seq <= end.base_seq:
        return None  # archived already: only the deletes may be left
    if end.digest is None:
        return f"record {end.seq} is missing; run `kcm audit verify`"
    if end.mac is None:
        return (f"record {end.seq} has no MAC (written before the chain was keyed): an "
                "archive must end on a keyed record, at or after the KeyAuditChain record "
                "that anchors those before it")
    if not hmac.compare_digest(record_mac(audit_key, end.digest), end.mac):
        return f"record {end.seq} fails its MAC; run `kcm audit verify`"
    return None


def first_at_or_after(session: Session, after: int, at_us: int, limit: int
                      ) -> tuple[int | None, int]:
    """One page of the search for the first record written at or after ``at_us`` (``at``
    has no index): among the ``limit`` records after sequence number ``after``, that
    record's number (None: not among them), and the last number read (``after``: none)."""
    rows = session.execute(select(AuditLog.seq, AuditLog.at).where(AuditLog.seq > after)
                           .order_by(AuditLog.seq).limit(limit)).all()
    for seq, at in rows:
        if at >= at_us:
            return seq, seq
    return None, rows[-1][0] if rows else after


def mark_base(session: Session, end: ArchiveEnd, *, audit_key: bytes | None = None) -> bool:
    """Write the base marker naming ``end`` (its record read again, under the writers'
    lock, must still have that digest); False if the base is there or beyond already."""
    key = _audit_key(session, audit_key)
    lock_writers(session)
    base = read_base(session, key)
    if base is not None and base[0] >= end.seq:
        return False
    digest = session.scalar(select(AuditLog.digest).where(AuditLog.seq == end.seq))
    if digest is None or end.digest is None or bytes(digest) != end.digest:
        raise AuditChainError(f"record {end.seq} changed while it was archived; run "
                              "`kcm audit verify`")
    set_meta(session, BASE_META_KEY, base_marker(key, end.seq, end.digest))
    return True


def delete_below_base(session: Session, *, limit: int = DELETE_BATCH,
                      audit_key: bytes | None = None) -> int:
    """Delete the oldest records at or below the base, at most ``limit`` (one range of the
    primary key); how many."""
    base = read_base(session, _audit_key(session, audit_key))
    if base is None:
        return 0
    lowest = session.scalar(select(func.min(AuditLog.seq)))
    if lowest is None or lowest > base[0]:
        return 0
    through = min(base[0], lowest + limit - 1)
    return session.execute(delete(AuditLog).where(AuditLog.seq <= through)).rowcount
