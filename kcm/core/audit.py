"""The append-only, hash-chained audit log.

Each record carries the digest of the one before it::

    digest(n) = SHA-256(digest(n-1) || canonical(n))        digest(0) = 32 zero bytes

where ``canonical(n)`` is the UTF-8 JSON object of the stored columns of record ``n`` (``v``,
``seq``, ``at``, ``principal``, ``tenant``, ``gateway``, ``source``, ``operation``,
``object_ids``, ``result_status``, ``result_reason``, ``correlation_id``, ``detail``) with keys
sorted, no whitespace, non-ASCII escaped (``json.dumps(..., sort_keys=True,
separators=(",", ":"), ensure_ascii=True)``). ``object_ids`` and ``detail`` enter as the exact
JSON text stored in their columns, so verification never re-serializes anything. Sequence
numbers start at 1 and have no gaps; the ``meta`` row ``audit.head`` holds ``"SEQ:DIGESTHEX"``
of the newest record so that a truncated tail is detected too.

Appends are serialized with every other writer (see
:func:`kcm.core.store.repository.lock_writers`), so the chain cannot fork. Committed records are
also emitted as log events of their own once their transaction commits: a
``twisted.logger`` event in the ``kcm.audit`` namespace whose fields are the record's
(:meth:`AuditRow.log_fields`); records of a rolled-back transaction are never logged.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.orm import Session
from twisted.logger import Logger

from kcm.core.store.repository import get_meta, lock_writers, set_meta
from kcm.core.store.schema import AuditLog

GENESIS_DIGEST = bytes(32)
CANONICAL_VERSION = 1
HEAD_META_KEY = "audit.head"

_PENDING_KEY = "kcm.audit.pending"
_HOOKED_KEY = "kcm.audit.hooked"

#: Where committed audit records are emitted (a namespace of their own, so an observer can
#: pick them out).
audit_log = Logger(namespace="kcm.audit")

#: The text of an audit event; the record itself is in the event's fields.
AUDIT_FORMAT = ("audit {seq}: {operation} by {principal}: {result_status} "
                "(correlation id {correlation_id})")

JsonValue = str | int | float | bool | None | Sequence["JsonValue"] | Mapping[str, "JsonValue"]


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened, as the operation handler describes it. Text only: never key material.

    ``detail`` is a JSON-able mapping of extra facts (str/int/float/bool/None, lists, dicts);
    bytes anywhere are refused, so raw material cannot slip into the log.
    """

    principal: str
    operation: str
    result_status: str
    correlation_id: str
    source: str = ""
    tenant: str | None = None
    gateway: str | None = None
    object_ids: tuple[str, ...] = ()
    result_reason: str | None = None
    detail: Mapping[str, JsonValue] | None = field(default=None)


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One stored audit record, with its chain digests."""

    seq: int
    at: int
    principal: str
    tenant: str | None
    gateway: str | None
    source: str
    operation: str
    object_ids: str
    result_status: str
    result_reason: str | None
    correlation_id: str
    detail: str | None
    prev_digest: bytes
    digest: bytes

    def log_fields(self) -> dict[str, Any]:
        """The record as structured-log fields (digests in hex, JSON columns decoded)."""
        return {
            "seq": self.seq,
            "at_us": self.at,
            "principal": self.principal,
            "tenant": self.tenant,
            "gateway": self.gateway,
            "source": self.source,
            "operation": self.operation,
            "object_ids": json.loads(self.object_ids),
            "result_status": self.result_status,
            "result_reason": self.result_reason,
            "correlation_id": self.correlation_id,
            "detail": None if self.detail is None else json.loads(self.detail),
            "digest": self.digest.hex(),
        }


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of :func:`verify_chain`. ``first_bad_seq`` is None when ``ok``."""

    ok: bool
    records_checked: int
    first_bad_seq: int | None = None
    reason: str | None = None


def _canonical_json(value: Any) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def _check_text(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise TypeError(f"audit field {name} must be str, not {type(value).__name__}")


def _check_json(path: str, value: object) -> None:
    if isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"audit detail {path} is bytes: key material must never be logged")
    if value is None or isinstance(value, str | int | float | bool):
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_text(f"{path} key", key)
            _check_json(f"{path}.{key}", item)
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json(f"{path}[{index}]", item)
        return
    raise TypeError(f"audit detail {path} has unsupported type {type(value).__name__}")


def record_digest(
    prev_digest: bytes,
    *,
    seq: int,
    at: int,
    principal: str,
    tenant: str | None,
    gateway: str | None,
    source: str,
    operation: str,
    object_ids: str,
    result_status: str,
    result_reason: str | None,
    correlation_id: str,
    detail: str | None,
) -> bytes:
    """SHA-256(prev_digest || canonical encoding of the stored fields); see module doc."""
    canonical = _canonical_json(
        {
            "v": CANONICAL_VERSION,
            "seq": seq,
            "at": at,
            "principal": principal,
            "tenant": tenant,
            "gateway": gateway,
            "source": source,
            "operation": operation,
            "object_ids": object_ids,
            "result_status": result_status,
            "result_reason": result_reason,
            "correlation_id": correlation_id,
            "detail": detail,
        }
    )
    return hashlib.sha256(prev_digest + canonical.encode("ascii")).digest()


def append_audit(
    session: Session, record: AuditEvent, *, clock: Callable[[], float] = time.time
) -> AuditRow:
    """Append ``record`` to the chain in the caller's transaction and return the stored row.

    Raises TypeError if any field is not text (or ``detail`` holds bytes) before touching the
    database. The record is logged (``kcm.audit``) only after the transaction commits.
    """
    for name in ("principal", "operation", "result_status", "correlation_id", "source"):
        _check_text(name, getattr(record, name))
    for name in ("tenant", "gateway", "result_reason"):
        _check_text(name, getattr(record, name), optional=True)
    if isinstance(record.object_ids, str):
        raise TypeError("audit object_ids must be a sequence of str, not one str")
    for uid in record.object_ids:
        _check_text("object_ids item", uid)
    if record.detail is not None:
        _check_json("detail", record.detail)

    lock_writers(session)
    tail = session.execute(
        select(AuditLog.seq, AuditLog.digest).order_by(AuditLog.seq.desc()).limit(1)
    ).first()
    seq, prev_digest = (tail[0] + 1, bytes(tail[1])) if tail else (1, GENESIS_DIGEST)
    values: dict[str, Any] = {
        "seq": seq,
        "at": int(clock() * 1_000_000),
        "principal": record.principal,
        "tenant": record.tenant,
        "gateway": record.gateway,
        "source": record.source,
        "operation": record.operation,
        "object_ids": _canonical_json(list(record.object_ids)),
        "result_status": record.result_status,
        "result_reason": record.result_reason,
        "correlation_id": record.correlation_id,
        "detail": None if record.detail is None else _canonical_json(record.detail),
    }
    digest = record_digest(prev_digest, **values)
    session.add(AuditLog(**values, prev_digest=prev_digest, digest=digest))
    set_meta(session, HEAD_META_KEY, f"{seq}:{digest.hex()}")
    session.flush()
    row = AuditRow(**values, prev_digest=prev_digest, digest=digest)
    _log_after_commit(session, row)
    return row


def _log_after_commit(session: Session, row: AuditRow) -> None:
    session.info.setdefault(_PENDING_KEY, []).append(row)
    if not session.info.get(_HOOKED_KEY):
        event.listen(session, "after_commit", _emit_pending)
        event.listen(session, "after_rollback", _drop_pending)
        session.info[_HOOKED_KEY] = True


def _emit_pending(session: Session) -> None:
    pending: list[AuditRow] = session.info.pop(_PENDING_KEY, [])
    if not pending:
        return
    # The committed row is the record of truth; a broken log observer cannot turn it into a
    # reported failure, since the log publisher catches (and reports) observers' errors.
    for row in pending:
        audit_log.info(AUDIT_FORMAT, **row.log_fields())


def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING_KEY, None)


def verify_chain(session: Session, *, batch: int = 1000) -> VerifyResult:
    """Walk the chain up to its recorded head and report the first record that breaks it.

    Detects an edited record (digest mismatch), a removed or renumbered record (sequence
    gap, broken ``prev_digest`` link), reordered records (the sequence number is inside the
    digest), and a truncated tail (fewer records than the ``audit.head`` meta row names, or a
    different newest digest). Safe to run beside writers: the head is read first and records
    appended after it are left for the next run.
    """
    head = get_meta(session, HEAD_META_KEY)
    head_seq: int | None = None
    head_digest = ""
    if head is not None:
        head_seq_text, _, head_digest = head.partition(":")
        try:
            head_seq = int(head_seq_text)
        except ValueError:
            return VerifyResult(False, 0, 1, f"audit head marker is malformed: {head!r}")

    table = AuditLog.__table__
    stmt = select(table).order_by(table.c.seq).execution_options(yield_per=batch)
    if head_seq is not None:
        stmt = stmt.where(table.c.seq <= head_seq)
    expected_seq = 1
    prev_digest = GENESIS_DIGEST
    checked = 0
    for row in session.execute(stmt).mappings():
        seq = row["seq"]
        if seq != expected_seq:
            return VerifyResult(
                False, checked, expected_seq, f"record {expected_seq} is missing (next is {seq})"
            )
        if bytes(row["prev_digest"]) != prev_digest:
            return VerifyResult(
                False, checked, seq, "prev_digest does not match the previous record's digest"
            )
        computed = record_digest(prev_digest, **{name: row[name] for name in _DIGESTED_COLUMNS})
        if bytes(row["digest"]) != computed:
            return VerifyResult(False, checked, seq, "digest does not match the record's content")
        prev_digest = computed
        expected_seq = seq + 1
        checked += 1

    last_seq = expected_seq - 1
    if head_seq is None:
        if checked:
            return VerifyResult(False, checked, last_seq, "audit head marker is missing")
        return VerifyResult(True, 0)
    if last_seq < head_seq:
        return VerifyResult(
            False, checked, last_seq + 1, f"records {last_seq + 1}..{head_seq} are missing"
        )
    if head_digest != prev_digest.hex():
        return VerifyResult(False, checked, last_seq, "newest record differs from the head marker")
    return VerifyResult(True, checked)


_DIGESTED_COLUMNS = (
    "seq",
    "at",
    "principal",
    "tenant",
    "gateway",
    "source",
    "operation",
    "object_ids",
    "result_status",
    "result_reason",
    "correlation_id",
    "detail",
)
