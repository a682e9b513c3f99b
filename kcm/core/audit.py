"""The append-only, hash-chained, keyed audit log.

Each record carries the digest of the one before it::

    digest(n) = SHA-256(digest(n-1) || canonical(n))        digest(0) = 32 zero bytes

where ``canonical(n)`` is the UTF-8 JSON object of the stored columns of record ``n`` (``v``,
``seq``, ``at``, ``principal``, ``tenant``, ``gateway``, ``source``, ``operation``,
``object_ids``, ``result_status``, ``result_reason``, ``correlation_id``, ``detail``) with keys
sorted, no whitespace, non-ASCII escaped (``json.dumps(..., sort_keys=True,
separators=(",", ":"), ensure_ascii=True)``). ``object_ids`` and ``detail`` enter as the exact
JSON text stored in their columns, so verification never re-serializes anything. Sequence
numbers start at 1 and have no gaps.

The digests alone only catch accidents: whoever can write the database can recompute them.
So every record also carries a MAC under the **audit key** (HKDF of L1,
:func:`kcm.core.keys.derive_audit_key`; never stored)::

    mac(n)        = HMAC-SHA-256(audit key, "kcm audit record" || 0x00 || digest(n))
    head          = "SEQ:DIGESTHEX:MACHEX"      (the ``meta`` row ``audit.head``)
        MAC       = HMAC-SHA-256(audit key, "kcm audit head" || 0x00 || "SEQ:DIGESTHEX")
    checkpoint    = "SEQ:DIGESTHEX:MACHEX"      (a ``kcm.audit.checkpoint`` log event)
        MAC       = HMAC-SHA-256(audit key, "kcm audit checkpoint" || 0x00 || "SEQ:DIGESTHEX")
    base          = "SEQ:DIGESTHEX:MACHEX"      (the ``meta`` row ``audit.base``, if archived)
        MAC       = HMAC-SHA-256(audit key, "kcm audit base" || 0x00 || "SEQ:DIGESTHEX")

Since ``digest(n)`` commits to every record up to ``n``, ``mac(n)`` authenticates them all;
a record edited without the key (its digests recomputed or not) fails its own MAC. The head
marker names the newest record (written once per transaction, just before it commits:
:func:`write_head`), so a truncated tail is detected too; its MAC (distinct from
the record's) means a tail can only be cut back to a head someone saw before. Every
transaction that appends checks the head first, under the writers' lock and in the same
snapshot as the newest record (:func:`_refuse_cut_tail`): records deleted with the head
kept, or the head gone, stop the append (:class:`AuditChainError`) instead of being covered
by the genuine head its commit would write. Checkpoints
are the head, MACed under a third label and written to the log, outside the database, by
:class:`kcm.core.audit_checkpoints.AuditCheckpoints`.

The oldest records may be archived (:mod:`kcm.core.audit_archive`): exported to a file,
then the base marker written, naming the last of them and its digest (MACed under a fourth
label), then the records deleted. The chain in the database then starts after the base:
record ``base + 1`` links to the digest the marker names, as it linked to the deleted record.

Records written before the chain was keyed (schema revision 0002) have no MAC: they are
**unkeyed**, checked by digest only. They can only come first, and the first keyed record
after them can only be the one :func:`key_chain` appends (operation
:data:`KEY_CHAIN_OPERATION`, ``detail`` naming how many they are): it MACs their last digest,
and anchors them. kcm-core (and ``kcm core init``) append such a
record, :func:`key_chain`, once, and only to the chain migration 0002 found in a database it
upgraded: its newest record is named by the ``meta`` row ``audit.unkeyed``
(:data:`UNKEYED_META_KEY`, written by that migration, deleted by the anchoring) and by the
head marker in its unkeyed form ``SEQ:DIGESTHEX``, as the code before 0002 wrote it. Any
other chain whose newest record is unkeyed (a database created at 0002 or later, or one
already anchored, its MACs stripped) is refused there (:class:`AuditChainError`), and
:func:`verify_chain` refuses a chain whose newest record is unkeyed, an unkeyed record
after a keyed one, or unkeyed records followed by any keyed record but that anchor, so
stripping the MACs is no way around them. (Whoever can write the
database can also forge those two rows: checkpoints kept off the host still catch that.)

Appends are serialized with every other writer (see
:func:`kcm.core.store.repository.lock_writers`), so the chain cannot fork. Committed records are
also emitted as log events of their own once their transaction commits: a
``twisted.logger`` event in the ``kcm.audit`` namespace whose fields are the record's
(:meth:`AuditRow.log_fields`); records of a rolled-back transaction are never logged.

The audit key reaches this module with each call (``audit_key=``) or, by default, with the
session: a :class:`kcm.core.store.engine.Store` puts its ``audit_key`` in every session's
``info``. Without one, nothing is appended or verified (:class:`AuditKeyMissing`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from sqlalchemy import bindparam, delete, event, func, select
from sqlalchemy.orm import Session
from twisted.logger import Logger, LogLevel

from kcm.core.store.engine import AUDIT_HEAD_INFO, AUDIT_KEY_INFO, AUDIT_WRITTEN_INFO
from kcm.core.store.lean import LeanTransaction
from kcm.core.store.raw_statements import RawStatement, connection_of
from kcm.core.store.repository import get_meta, lock_writers
from kcm.core.store.savepoints import RawSavepoint, on_rollback
from kcm.core.store.schema import AuditLog, Meta

GENESIS_DIGEST = bytes(32)
CANONICAL_VERSION = 1
HEAD_META_KEY = "audit.head"

# The MAC labels (see the module doc): one key, three kinds of statement that can never be
# taken for one another.
_RECORD_LABEL = b"kcm audit record\x00"
_HEAD_LABEL = b"kcm audit head\x00"
_CHECKPOINT_LABEL = b"kcm audit checkpoint\x00"
_BASE_LABEL = b"kcm audit base\x00"

#: The operation of the record :func:`key_chain` appends to anchor unkeyed records.
KEY_CHAIN_OPERATION = "KeyAuditChain"
#: The ``meta`` row naming (``SEQ:DIGESTHEX``) the newest record of an unkeyed chain that
#: migration 0002 found, the only one :func:`key_chain` may anchor.
UNKEYED_META_KEY = "audit.unkeyed"
#: The ``meta`` row naming (``SEQ:DIGESTHEX:MACHEX``, :func:`base_marker`) the last record
#: archived (:mod:`kcm.core.audit_archive`): the chain in the database starts after it.
BASE_META_KEY = "audit.base"

_PENDING_KEY = "kcm.audit.pending"
#: The chain's newest (seq, digest, mac) as this transaction last wrote it.
_TAIL_KEY = "kcm.audit.tail"
#: The audit key of a transaction that appended records: its head marker is written once,
#: just before it commits (:func:`write_head`), not once per record.
_HEAD_DUE = "kcm.audit.head_due"
_RECORD_COLUMNS = ("seq", "at", "principal", "tenant", "gateway", "source", "operation",
                   "object_ids", "result_status", "result_reason", "correlation_id", "detail",
                   "prev_digest", "digest", "mac")
_INSERT_RECORD = RawStatement(AuditLog.__table__.insert(), _RECORD_COLUMNS)
_UPDATE_HEAD = RawStatement(Meta.__table__.update().where(
    Meta.__table__.c.key == HEAD_META_KEY).values(value=bindparam("value")), ["value"])
_NEWEST = RawStatement(select(AuditLog.seq, AuditLog.digest, AuditLog.mac)
                       .order_by(AuditLog.seq.desc()).limit(1))
_INSERT_HEAD = RawStatement(Meta.__table__.insert().values(key=HEAD_META_KEY), ["value"])
#: The head marker as stored.
_HEAD = RawStatement(select(Meta.value).where(Meta.key == HEAD_META_KEY))
#: The newest record and the head marker, read together: one statement, one snapshot.
_NEWEST_AND_HEAD = RawStatement(
    select(AuditLog.seq, AuditLog.digest, AuditLog.mac,
           select(Meta.value).where(Meta.key == HEAD_META_KEY).scalar_subquery())
    .order_by(AuditLog.seq.desc()).limit(1))
#: This transaction held the head marker to the newest record, under the writers' lock:
#: from then on it is the chain's only writer, and its own head lags its records until it
#: commits, so the tail it reads again (after a savepoint rolled back) is not held to it.
_HEAD_CHECKED = "kcm.audit.head_checked"

#: (audit key, seq, digest, MAC, head marker) of the newest record and the head marker this
#: process wrote, or last found genuine: the checks of a transaction's first append
#: (:func:`_refuse_bad_tail`) are functions of these alone, and pass for them. Each group
#: commit reads what the one before it wrote; their two MACs are not computed again.
_passed: tuple[bytes, int, bytes, bytes, str] | None = None

#: Where committed audit records are emitted (a namespace of their own, so an observer can
#: pick them out).
audit_log = Logger(namespace="kcm.audit")

#: The text of an audit event; the record itself is in the event's fields.
AUDIT_FORMAT = ("audit {seq}: {operation} by {principal}: {result_status} "
                "(correlation id {correlation_id})")

#: Where checkpoints are emitted (:class:`kcm.core.audit_checkpoints.AuditCheckpoints`).
checkpoint_log = Logger(namespace="kcm.audit.checkpoint")

#: The text of a checkpoint event: the checkpoint itself, so that the ``text`` log format
#: carries it too. Its fields are :meth:`Checkpoint.log_fields`.
CHECKPOINT_FORMAT = "audit checkpoint {checkpoint}"

JsonValue = str | int | float | bool | None | Sequence["JsonValue"] | Mapping[str, "JsonValue"]


class AuditKeyMissing(RuntimeError):
    """No audit key was given, nor set on the store: the chain can be neither extended nor
    verified."""


class AuditChainError(Exception):
    """The chain's head is not what the audit key says it must be."""


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened, as the operation handler describes it. Text only: never key material.

    ``detail`` is a JSON-able mapping of extra facts (str/int/float/bool/None, lists, dicts);
    bytes anywhere are refused, so raw material cannot slip into the log. A string in it
    longer than :data:`DETAIL_TEXT_LIMIT` characters is stored (and logged) cut there.
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
    """One stored audit record, with its chain digests and its MAC (None: unkeyed)."""

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
    mac: bytes | None = None

    def log_fields(self, record: AuditEvent | None = None) -> dict[str, Any]:
        """The record as structured-log fields (digests in hex, JSON columns decoded).
        With ``record``, the event this row was appended from, its object ids and detail
        are taken from it rather than decoded again (a detail that is not a plain dict
        still is, so that it logs as stored)."""
        if record is None:
            object_ids: Any = json.loads(self.object_ids)
            detail: Any = None if self.detail is None else json.loads(self.detail)
        else:
            object_ids = list(record.object_ids)
            detail = record.detail
            if detail is not None and type(detail) is not dict:
                detail = json.loads(self.detail)  # type: ignore[arg-type]
        return {
            "seq": self.seq,
            "at_us": self.at,
            "principal": self.principal,
            "tenant": self.tenant,
            "gateway": self.gateway,
            "source": self.source,
            "operation": self.operation,
            "object_ids": object_ids,
            "result_status": self.result_status,
            "result_reason": self.result_reason,
            "correlation_id": self.correlation_id,
            "detail": detail,
            "digest": self.digest.hex(),
        }


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of :func:`verify_chain`. ``first_bad_seq`` is None when ``ok`` (and when
    what failed is a checkpoint given to check, not a record)."""

    ok: bool
    records_checked: int
    first_bad_seq: int | None = None
    reason: str | None = None
    #: Of the records checked, those written before the chain was keyed (digest only).
    unkeyed_records: int = 0
    #: Checkpoints found in the chain.
    checkpoints_matched: int = 0
    #: Of the records checked, those after the head marker read (committed by a writer
    #: meanwhile), each verified as strictly as the others.
    past_head_records: int = 0
    #: The record the base marker names (records up to it archived; 0: none).
    base_seq: int = 0
    #: Records at or below the base still in the database (an archive interrupted before
    #: its deletes ended), not walked.
    below_base_records: int = 0
    #: Checkpoints naming archived records (before the base): checked against the archive
    #: file, not here.
    checkpoints_archived: int = 0


def _mac(audit_key: bytes, label: bytes, message: bytes) -> bytes:
    return hmac.digest(audit_key, label + message, hashlib.sha256)


def _position(seq: int, digest: bytes) -> bytes:
    return f"{seq}:{digest.hex()}".encode("ascii")


def record_mac(audit_key: bytes, digest: bytes) -> bytes:
    """The MAC of the record whose chain digest is ``digest``; see module doc."""
    return _mac(audit_key, _RECORD_LABEL, digest)


def head_marker(audit_key: bytes, seq: int, digest: bytes) -> str:
    """The ``audit.head`` value naming record ``seq`` (digest ``digest``) as the newest."""
    return f"{seq}:{digest.hex()}:{_mac(audit_key, _HEAD_LABEL, _position(seq, digest)).hex()}"


def base_marker(audit_key: bytes, seq: int, digest: bytes) -> str:
    """The ``audit.base`` value naming record ``seq`` (digest ``digest``) as the last one
    archived."""
    return f"{seq}:{digest.hex()}:{_mac(audit_key, _BASE_LABEL, _position(seq, digest)).hex()}"


def _genuine_base(key: bytes, seq: int, digest: bytes, mac: bytes | None) -> bool:
    """Whether ``mac`` is the base marker's MAC of record ``seq`` with digest ``digest``."""
    return mac is not None and hmac.compare_digest(
        mac, _mac(key, _BASE_LABEL, _position(seq, digest)))


def read_base(session: Session, audit_key: bytes) -> tuple[int, bytes] | None:
    """The genuine base marker's (seq, digest), None if there is none;
    :class:`AuditChainError` if it is malformed or fails its MAC."""
    text = get_meta(session, BASE_META_KEY)
    if text is None:
        return None
    try:
        seq, digest, mac = _parse_position(text, "the audit base marker")
    except ValueError as e:
        raise AuditChainError(str(e)) from None
    if not _genuine_base(audit_key, seq, digest, mac):
        raise AuditChainError(f"the audit base marker (record {seq}) fails its MAC under this "
                              "audit key; run `kcm audit verify`")
    return seq, digest


def _parse_position(text: str, what: str) -> tuple[int, bytes, bytes | None]:
    """``SEQ:DIGESTHEX[:MACHEX]`` → (seq, digest, mac or None); ValueError naming ``what``."""
    parts = text.strip().split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        seq = int(parts[0])
        digest = bytes.fromhex(parts[1])
        mac = bytes.fromhex(parts[2]) if len(parts) == 3 else None
    except ValueError:
        raise ValueError(f"{what} is not SEQ:DIGEST:MAC: {text!r}") from None
    if seq < 0 or len(digest) != 32 or (mac is not None and len(mac) != 32):
        raise ValueError(f"{what} is not SEQ:DIGEST:MAC: {text!r}")
    return seq, digest, mac


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A MACed statement that the chain's newest record was ``seq``, with chain digest
    ``digest`` (``0`` and 32 zero bytes: the chain was empty). kcm-core writes them to its
    log; ``kcm audit verify --checkpoint`` checks that the chain still holds them. Its text
    form, ``SEQ:DIGESTHEX:MACHEX``, is what the log carries and the command takes."""

    seq: int
    digest: bytes
    mac: bytes

    @classmethod
    def sign(cls, audit_key: bytes, seq: int, digest: bytes) -> Checkpoint:
        return cls(seq, digest, _mac(audit_key, _CHECKPOINT_LABEL, _position(seq, digest)))

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """The checkpoint written ``SEQ:DIGESTHEX:MACHEX``; ValueError if it is not one."""
        seq, digest, mac = _parse_position(text, "a checkpoint")
        if mac is None:
            raise ValueError(f"a checkpoint is not SEQ:DIGEST:MAC: {text!r}")
        return cls(seq, digest, mac)

    def genuine(self, audit_key: bytes) -> bool:
        """Whether this checkpoint was made with ``audit_key``."""
        expected = _mac(audit_key, _CHECKPOINT_LABEL, _position(self.seq, self.digest))
        return hmac.compare_digest(self.mac, expected)

    def __str__(self) -> str:
        return f"{self.seq}:{self.digest.hex()}:{self.mac.hex()}"

    def log_fields(self) -> dict[str, Any]:
        """The checkpoint as structured-log fields: ``seq``, ``digest`` and ``mac`` (hex) and
        ``checkpoint``, the three as one ``SEQ:DIGEST:MAC`` string."""
        return {"seq": self.seq, "digest": self.digest.hex(), "mac": self.mac.hex(),
                "checkpoint": str(self)}


def _canonical_json(value: Any) -> str:
    return _CANONICAL(value)


#: The canonical encoding (made once: ``json.dumps`` with options builds an encoder per
#: call, and every record takes three).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                              allow_nan=False).encode


def _check_text(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise TypeError(f"audit field {name} must be str, not {type(value).__name__}")


#: The characters a string in an audit record's ``detail`` keeps: many of them are what a
#: client sent (an identifier, a name, a message), and the audit log keeps them until an
#: operator archives them (:mod:`kcm.core.audit_archive`). A
#: longer one is cut there and says how long it was (:func:`_bounded`).
DETAIL_TEXT_LIMIT = 1024


def _check_json(path: str, value: object) -> bool:
    """TypeError unless ``value`` is what a ``detail`` may hold; whether a string in it is
    longer than :data:`DETAIL_TEXT_LIMIT`."""
    if isinstance(value, str):
        return len(value) > DETAIL_TEXT_LIMIT
    if isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"audit detail {path} is bytes: key material must never be logged")
    if value is None or isinstance(value, int | float | bool):
        return False
    long_text = False
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_text(f"{path} key", key)
            long_text |= len(key) > DETAIL_TEXT_LIMIT
            long_text |= _check_json(f"{path}.{key}", item)
        return long_text
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            long_text |= _check_json(f"{path}[{index}]", item)
        return long_text
    raise TypeError(f"audit detail {path} has unsupported type {type(value).__name__}")


def _bounded(value: Any) -> Any:
    """``value`` (checked by :func:`_check_json`) with every string in it, keys too, cut at
    :data:`DETAIL_TEXT_LIMIT` characters, saying how long it was."""
    if isinstance(value, str):
        if len(value) <= DETAIL_TEXT_LIMIT:
            return value
        return f"{value[:DETAIL_TEXT_LIMIT]}... ({len(value)} characters)"
    if isinstance(value, Mapping):
        return {_bounded(key): _bounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_bounded(item) for item in value]
    return value


def _audit_key(session: Session, audit_key: bytes | None) -> bytes:
    return _audit_key_of(audit_key if audit_key is not None
                         else session.info.get(AUDIT_KEY_INFO))


def _audit_key_of(key: bytes | None) -> bytes:
    if key is None:
        raise AuditKeyMissing("the audit key (derived from L1) is not loaded: the audit log "
                              "can be neither written nor verified")
    return key


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
    session: Session, record: AuditEvent, *, clock: Callable[[], float] = time.time,
    audit_key: bytes | None = None, _anchoring: bool = False,
) -> AuditRow:
    """Append ``record`` to the chain in the caller's transaction and return the stored row.

    The record is MACed under ``audit_key`` (default: the session's, which a
    :class:`~kcm.core.store.engine.Store` with an ``audit_key`` provides). Raises TypeError if
    any field is not text (or ``detail`` holds bytes), and :class:`AuditKeyMissing` without
    a key, before touching the database; a string of ``detail`` longer than
    :data:`DETAIL_TEXT_LIMIT` is cut there (the row returned says so). The record is logged
    (``kcm.audit``) only after the transaction commits. A chain whose newest record has no
    MAC is appended to by :func:`key_chain` alone: anything else raises
    :class:`AuditChainError` (its MACs were removed, or the chain an upgrade found is not
    anchored yet), so that no record of anyone's anchors a forgery. So does a newest record
    whose MAC fails under the key (a key not of this database's L1: records under it would
    never verify), and a head marker that is not genuine or does not name the newest record
    (:func:`_refuse_cut_tail`: records deleted, which the head written with this one would
    cover up). Both are read once per transaction, under the writers' lock.
    """
    record = _check_record(record)
    key = _audit_key(session, audit_key)

    lock_writers(session)
    info = session.info
    tail = info.get(_TAIL_KEY)
    if tail is None:
        checked = info.get(_HEAD_CHECKED, False)
        tail, head = _newest_and_head(connection_of(session), with_head=not checked)
        if tail is not None and tail[2] is None and not _anchoring:
            _refuse_unkeyed(tail, due=anchor_due(session, tail[0], bytes(tail[1])))
        # (key_chain held the unkeyed head to the tail)
        _refuse_bad_tail(tail, head, key, with_head=not (checked or _anchoring))
        info[_HEAD_CHECKED] = True
    values, row = _chained(record, tail, key, clock)
    # Straight to the driver, not the ORM's unit of work: this runs for every request.
    _INSERT_RECORD.send(session, values)
    session.info[_HEAD_DUE] = key
    # Valid while this transaction holds the writers' lock; any rollback (a savepoint's
    # included) forgets it, since the rows it described may be gone.
    session.info[_TAIL_KEY] = (row.seq, row.digest, row.mac)
    _log_after_commit(session, row, record)
    return row


def append_records(transaction: LeanTransaction, records: Sequence[AuditEvent], *,
                   clock: Callable[[], float] = time.time) -> list[AuditRow]:
    """:func:`append_audit` of each of ``records``, in order, in a lean transaction
    (:mod:`kcm.core.store.lean`: a group commit of audit records alone). Every record is
    checked, and the audit key found, before anything is written: a TypeError or
    :class:`AuditKeyMissing` leaves the transaction as it was. Any other error may leave
    some of the records written, so the transaction must not commit (a group commit fails
    whole on it). The head marker is written once before the commit, the records logged
    after it, as for a session."""
    records = [_check_record(record) for record in records]
    info = transaction.info
    key = _audit_key_of(info.get(AUDIT_KEY_INFO))
    connection = transaction.connection
    tail = info.get(_TAIL_KEY)
    if tail is None:
        checked = info.get(_HEAD_CHECKED, False)
        tail, head = _newest_and_head(connection, with_head=not checked)
        if tail is not None and tail[2] is None:
            _refuse_unkeyed(tail, due=False)
        _refuse_bad_tail(tail, head, key, with_head=not checked)
        info[_HEAD_CHECKED] = True
    pending = info.get(_PENDING_KEY)
    if pending is None:
        pending = info[_PENDING_KEY] = []
        transaction.before_commit(_write_lean_head)
        transaction.after_commit(_emit_lean)
    rows = []
    for record in records:
        values, row = _chained(record, tail, key, clock)
        _INSERT_RECORD.run_on(connection, values, wait=False)
        tail = (row.seq, row.digest, row.mac)
        info[_TAIL_KEY] = tail
        pending.append((row, record))
        rows.append(row)
    return rows


def _check_record(record: AuditEvent) -> AuditEvent:
    """``record`` as the chain stores it: TypeError unless every field is what the chain
    stores; a copy whose ``detail`` is :func:`_bounded` if a string in it is too long."""
    for name in ("principal", "operation", "result_status", "correlation_id", "source"):
        _check_text(name, getattr(record, name))
    for name in ("tenant", "gateway", "result_reason"):
        _check_text(name, getattr(record, name), optional=True)
    if isinstance(record.object_ids, str):
        raise TypeError("audit object_ids must be a sequence of str, not one str")
    for uid in record.object_ids:
        _check_text("object_ids item", uid)
    if record.detail is not None and _check_json("detail", record.detail):
        return replace(record, detail=_bounded(record.detail))
    return record


def _chained(record: AuditEvent, tail: Any, key: bytes, clock: Callable[[], float]
             ) -> tuple[dict[str, Any], AuditRow]:
    """The columns of ``record`` stored after ``tail`` ((seq, digest) of the newest record,
    or None for an empty chain), and the row they make."""
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
    mac = record_mac(key, digest)
    row = AuditRow(**values, prev_digest=prev_digest, digest=digest, mac=mac)
    values.update(prev_digest=prev_digest, digest=digest, mac=mac)
    return values, row


def key_chain(session: Session, *, by: str, clock: Callable[[], float] = time.time,
              audit_key: bytes | None = None) -> AuditRow | None:
    """Anchor records written before the chain was keyed: if the newest record is unkeyed
    and is the newest of the chain migration 0002 found (:func:`anchor_due`), append a keyed
    one (operation :data:`KEY_CHAIN_OPERATION`, principal ``by``), whose MAC covers every
    digest before it, and return it; this happens once. An empty or keyed chain is left
    alone (None), if its head marker is genuine and names its newest record (none: no
    marker); otherwise :class:`AuditChainError`, as :func:`append_audit` would raise at the
    first request. Any other unkeyed newest record raises :class:`AuditChainError`: its MACs
    were removed, and anchoring it would make the forgery verify. kcm-core calls it at start
    and ``kcm core init`` when it runs."""
    key = _audit_key(session, audit_key)
    lock_writers(session)
    tail = session.execute(
        select(AuditLog.seq, AuditLog.digest, AuditLog.mac).order_by(AuditLog.seq.desc())
        .limit(1)
    ).first()
    if tail is None or tail[2] is not None:
        _refuse_cut_tail(tail, get_meta(session, HEAD_META_KEY), key)
        if tail is not None:
            # Keyed by a record appended some other way: the marker must not outlive it (a
            # tail cut back to the unkeyed records would be anchored again).
            _forget_unkeyed(session)
        return None
    if not anchor_due(session, tail[0], bytes(tail[1])):
        _refuse_unkeyed(tail, due=False)
    _forget_unkeyed(session)
    return append_audit(session, AuditEvent(
        principal=by, operation=KEY_CHAIN_OPERATION, result_status="SUCCESS",
        correlation_id="", detail={"unkeyed_records": tail[0]},
    ), clock=clock, audit_key=key, _anchoring=True)


def _refuse_unkeyed(tail: Any, *, due: bool) -> None:
    """The newest record ``tail`` has no MAC: no record but :func:`key_chain`'s may follow."""
    if due:
        raise AuditChainError(f"the audit records up to {tail[0]} were written before the "
                              "chain was keyed: start kcm-core or run `kcm core init` first")
    raise AuditChainError(f"the newest audit record ({tail[0]}) has no MAC and is not due "
                          "for anchoring (MACs removed?); run `kcm audit verify`")


def _refuse_bad_tail(tail: Any, head: str | None, key: bytes, *, with_head: bool) -> None:
    """:func:`_refuse_foreign_tail` of ``tail``, and with ``with_head``
    :func:`_refuse_cut_tail` of it and ``head``; neither is computed again for the very
    values that last passed them, or that this process wrote (:data:`_passed`)."""
    global _passed
    keyed = tail is not None and tail[2] is not None
    if keyed:
        passed = _passed
        if (passed is not None and passed[1] == tail[0] and passed[3] == tail[2]
                and passed[2] == tail[1] and passed[0] == key
                and (not with_head or passed[4] == head)):
            return
    _refuse_foreign_tail(tail, key)
    if with_head:
        _refuse_cut_tail(tail, head, key)
        if keyed and head is not None:
            _passed = (key, tail[0], bytes(tail[1]), bytes(tail[2]), head)


def _refuse_foreign_tail(tail: Any, key: bytes) -> None:
    """The newest record ``tail`` ((seq, digest, mac)) is keyed, but not under ``key``: the
    key is not derived from this database's L1 (or the record was altered). Records MACed
    under it would never verify, so none is appended. Checked once per transaction, when
    the tail is read."""
    if tail is None or tail[2] is None:
        return
    if not hmac.compare_digest(bytes(tail[2]), record_mac(key, bytes(tail[1]))):
        raise AuditChainError(f"the newest audit record ({tail[0]}) fails its MAC under this "
                              "audit key: the L1 key is not this database's, or the record "
                              "was altered; run `kcm audit verify`")


def _newest_and_head(connection: Any, *, with_head: bool) -> tuple[Any, str | None]:
    """The newest record ((seq, digest, mac), None for an empty chain) and, if
    ``with_head``, the head marker (None if there is none), read in one snapshot."""
    if not with_head:
        return _NEWEST.run_on(connection).fetchone(), None
    row = _NEWEST_AND_HEAD.run_on(connection).fetchone()
    if row is not None:
        return tuple(row[:3]), row[3]
    head = _HEAD.run_on(connection).fetchone()
    return None, None if head is None else head[0]


def _refuse_cut_tail(tail: Any, head: str | None, key: bytes) -> None:
    """The head marker must be genuine and name the newest record ``tail`` ((seq, digest,
    mac) or None): records and head are committed together, under the writers' lock, so a
    head that names another record, or is missing beside records, means records were
    deleted (or added) without the audit key. A record appended now would hide that: the
    head written with it would be genuine again. Checked once per transaction."""
    if tail is None:
        if head is not None:
            raise AuditChainError("the audit head marker names a record, but there is none: "
                                  "the records were deleted; run `kcm audit verify`")
        return
    if head is None:
        raise AuditChainError(f"the audit head marker is missing, but there are records (up "
                              f"to {tail[0]}); run `kcm audit verify`")
    try:
        seq, digest, mac = _parse_position(head, "the audit head marker")
    except ValueError as e:
        raise AuditChainError(f"{e}; run `kcm audit verify`") from None
    if seq != tail[0]:
        raise AuditChainError(f"the audit head marker names record {seq}, but the newest "
                              f"record is {tail[0]}: the tail was cut back, or records "
                              "were added without the audit key; run `kcm audit verify`")
    if not hmac.compare_digest(digest, bytes(tail[1])):
        raise AuditChainError(f"the audit head marker names record {seq} with another digest "
                              "than it has: the chain was rewritten; run `kcm audit verify`")
    if not _genuine_head(key, seq, digest, mac):
        raise AuditChainError(f"the audit head marker (record {seq}) fails its MAC under "
                              "this audit key: it was written without the key; run `kcm audit "
                              "verify`")


def anchor_due(session: Session, seq: int, digest: bytes) -> bool:
    """Whether record ``seq`` (chain digest ``digest``), unkeyed and the newest, ends the
    chain that migration 0002 found in a database written before the chain was keyed, not
    anchored yet: :data:`UNKEYED_META_KEY` and the head marker (in its unkeyed form) both
    name it."""
    position = _position(seq, digest).decode("ascii")
    return (get_meta(session, UNKEYED_META_KEY) == position
            and get_meta(session, HEAD_META_KEY) == position)


def _forget_unkeyed(session: Session) -> None:
    session.execute(delete(Meta).where(Meta.key == UNKEYED_META_KEY))


def make_checkpoint(session: Session, *, audit_key: bytes | None = None) -> Checkpoint:
    """A checkpoint of the chain's head as stored now.

    Only a genuine head is signed: raises :class:`AuditChainError` when the head marker is
    missing, unkeyed or fails its MAC, or the record it names is missing or not the one it
    MACed. An empty chain's checkpoint names record 0.
    """
    key = _audit_key(session, audit_key)
    write_head(session)
    text = get_meta(session, HEAD_META_KEY)
    if text is None:
        if session.scalar(select(AuditLog.seq).limit(1)) is not None:
            raise AuditChainError("the audit head marker is missing, but there are records")
        return Checkpoint.sign(key, 0, GENESIS_DIGEST)
    try:
        seq, digest, mac = _parse_position(text, "the audit head marker")
    except ValueError as e:
        raise AuditChainError(str(e)) from None
    if mac is None:
        raise AuditChainError(f"the audit head (record {seq}) is not keyed")
    if not hmac.compare_digest(mac, _mac(key, _HEAD_LABEL, _position(seq, digest))):
        raise AuditChainError(f"the audit head (record {seq}) fails its MAC: it was written "
                              "without the audit key")
    row = session.execute(
        select(AuditLog.digest, AuditLog.mac).where(AuditLog.seq == seq)
    ).first()
    if (row is None or bytes(row[0]) != digest or row[1] is None
            or not hmac.compare_digest(bytes(row[1]), record_mac(key, digest))):
        raise AuditChainError(f"record {seq}, the audit head, is missing or altered")
    return Checkpoint.sign(key, seq, digest)


def log_checkpoint(checkpoint: Checkpoint) -> Checkpoint:
    """Emit ``checkpoint`` as a ``kcm.audit.checkpoint`` event, and return it."""
    checkpoint_log.info(CHECKPOINT_FORMAT, **checkpoint.log_fields())
    return checkpoint


_TEXT_CHECKPOINT = re.compile(r"\[kcm\.audit\.checkpoint#info\] audit checkpoint (\S+)$")


def checkpoints_in_log(lines: Iterable[str]) -> list[Checkpoint]:
    """The checkpoints of a kcm-core log, in order, whichever its ``log_format`` (a JSON
    line of namespace ``kcm.audit.checkpoint``, or a text line of that system). Other lines
    are skipped; a checkpoint line that does not parse raises ValueError naming its line."""
    found = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        text = None
        if line.startswith("{"):
            try:
                logged = json.loads(line)
            except ValueError:
                continue
            if (isinstance(logged, dict) and logged.get("namespace") == checkpoint_log.namespace
                    and "checkpoint" in logged):
                text = str(logged["checkpoint"])
        else:
            match = _TEXT_CHECKPOINT.search(line)
            if match:
                text = match.group(1)
        if text is not None:
            try:
                found.append(Checkpoint.parse(text))
            except ValueError as e:
                raise ValueError(f"line {number}: {e}") from None
    return found


def write_head(session: Session) -> None:
    """Write the head marker naming the newest record, if this transaction appended any
    since it last did. Runs by itself just before the transaction commits (so a group
    commit of many records updates the head once); call it to read the head in the same
    transaction as the appends."""
    key = session.info.pop(_HEAD_DUE, None)
    if key is None:
        return
    tail = session.info.get(_TAIL_KEY)
    if tail is None:  # a savepoint rolled back since: the stored tail is the truth
        newest = _NEWEST.execute(session).fetchone()
        if newest is None:
            return
        tail = (newest[0], newest[1])  # (its MAC, as read, is not known to be genuine)
    _store_head(connection_of(session), key, tail)


def _store_head(connection: Any, key: bytes, tail: Any) -> None:
    """Write the head marker naming ``tail`` ((seq, digest, mac)) on ``connection``."""
    global _passed
    digest = bytes(tail[1])
    head = head_marker(key, tail[0], digest)
    if _UPDATE_HEAD.run_on(connection, {"value": head}).rowcount == 0:
        _INSERT_HEAD.run_on(connection, {"value": head})  # the chain's first record
    if len(tail) > 2 and tail[2] is not None:
        _passed = (key, tail[0], digest, bytes(tail[2]), head)


def _write_lean_head(transaction: LeanTransaction) -> None:
    _store_head(transaction.connection, transaction.info[AUDIT_KEY_INFO],
                transaction.info[_TAIL_KEY])


def _emit_lean(transaction: LeanTransaction) -> None:
    info = transaction.info
    _log_committed(info.pop(_PENDING_KEY, []), info.get(AUDIT_WRITTEN_INFO),
                   info.get(AUDIT_HEAD_INFO))


def _before_commit(session: Session) -> None:
    if not session.in_nested_transaction():
        write_head(session)


def _log_after_commit(session: Session, row: AuditRow, record: AuditEvent) -> None:
    # With the record as given: its object ids and detail need no decoding from the row.
    session.info.setdefault(_PENDING_KEY, []).append((row, record))


def _log_record(fields: dict[str, Any]) -> None:
    """``audit_log.info(AUDIT_FORMAT, **fields)``: the same event to the same observer,
    without the checks :meth:`Logger.emit` makes of a level and a format given by its
    caller (they were half of what logging a record cost the writer)."""
    fields.update(log_logger=audit_log, log_level=LogLevel.info,
                  log_namespace=audit_log.namespace, log_source=audit_log.source,
                  log_format=AUDIT_FORMAT, log_time=time.time())
    audit_log.observer(fields)


@contextmanager
def savepoint(session: Session) -> Iterator[None]:
    """A savepoint (:class:`RequestSavepoint`), whose audit records are never logged if it
    rolls back (the records of the transaction around it still are, once it commits). A
    group commit runs each request in one (:mod:`kcm.core.group_commit`)."""
    with RequestSavepoint(session):
        yield


class RequestSavepoint:
    """A savepoint (:class:`kcm.core.store.savepoints.RawSavepoint`: plain SQL, with the
    ORM's own inside only once something is flushed) whose audit records are never logged if
    it rolls back (:func:`savepoint` is this). A request's can be shared by its only batch
    item: the item's rollback (:meth:`item_savepoint`) rolls back the request so far, which
    before its audit records is that item's work alone, and begins the request's savepoint
    afresh for them. A one-item request then costs one savepoint, not two.

    Use as a context manager; :meth:`item_savepoint` fits
    :func:`kcm.kernel.batch.run_batch`'s savepoint hook for a batch of one item.
    """

    __slots__ = ("_mark", "_nested", "_session")

    def __init__(self, session: Session) -> None:
        self._session = session
        self._nested: RawSavepoint | None = None
        self._mark = 0

    def __enter__(self) -> RequestSavepoint:
        self._begin()
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            try:
                self._nested.commit()  # type: ignore[union-attr]
            except BaseException:
                self._drop_records()  # it rolled back: they are not the chain's
                raise
        else:
            self._rollback()

    def item_savepoint(self) -> RequestSavepoint:
        return self

    @property
    def wrote(self) -> bool:
        """Whether anything was written under it so far (its ``SAVEPOINT`` is sent only
        before the first statement that may write, where the database allows:
        :class:`~kcm.core.store.savepoints.RawSavepoint`)."""
        return self._nested.sent  # type: ignore[union-attr]

    # The kernel's Savepoint: the item's commit is the request's (at its end), its
    # rollback the request's so far.
    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        self._rollback()
        self._begin()

    def _begin(self) -> None:
        pending = self._session.info.get(_PENDING_KEY)
        self._mark = 0 if pending is None else len(pending)
        self._nested = RawSavepoint(self._session, deferred=True)

    def _rollback(self) -> None:
        self._nested.rollback()  # type: ignore[union-attr]
        self._drop_records()

    def _drop_records(self) -> None:
        pending = self._session.info.get(_PENDING_KEY)
        if pending is not None:
            del pending[self._mark:]


def _emit_pending(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint released ("after_commit" fires for those too): not durable yet
    session.info.pop(_TAIL_KEY, None)
    session.info.pop(_HEAD_CHECKED, None)
    info = session.info
    _log_committed(info.pop(_PENDING_KEY, []), info.get(AUDIT_WRITTEN_INFO),
                   info.get(AUDIT_HEAD_INFO))


def _log_committed(pending: list[tuple[AuditRow, AuditEvent]],
                   written: Callable[[int], None] | None,
                   head: Callable[[int], None] | None = None) -> None:
    """Log the records just committed, tell ``written`` how many there were and ``head``
    the newest one's sequence number."""
    if not pending:
        return
    # The committed row is the record of truth; a broken log observer cannot turn it into a
    # reported failure, since the log publisher catches (and reports) observers' errors.
    for row, record in pending:
        _log_record(row.log_fields(record))
    if written is not None:
        written(len(pending))
    if head is not None:
        head(pending[-1][0].seq)


def _drop_pending(session: Session) -> None:
    session.info.pop(_TAIL_KEY, None)
    if session.in_nested_transaction():
        return  # a savepoint rolled back: :func:`savepoint` drops its own records
    session.info.pop(_PENDING_KEY, None)
    session.info.pop(_HEAD_DUE, None)
    session.info.pop(_HEAD_CHECKED, None)


def _forget_tail(session: Session, _transaction: Any) -> None:
    session.info.pop(_TAIL_KEY, None)


# Once for every session (what they do is a look in ``session.info``): listening on each
# new session cost more than the rest of an audit append.
event.listen(Session, "before_commit", _before_commit)
event.listen(Session, "after_commit", _emit_pending)
event.listen(Session, "after_rollback", _drop_pending)
event.listen(Session, "after_soft_rollback", _forget_tail)
on_rollback(lambda session: _forget_tail(session, None))


#: Records :func:`verify_chain_paged` reads in each of its read transactions.
VERIFY_PAGE = 2000

#: ``read(fn)``: ``fn(session)`` in a read transaction of its own (``Store.run_sync(fn,
#: write=False)``), its result returned.
ReadTransaction = Callable[[Callable[[Session], "VerifyResult | None"]], "VerifyResult | None"]


def verify_chain(session: Session, *, batch: int = 1000, audit_key: bytes | None = None,
                 checkpoints: Iterable[Checkpoint] = ()) -> VerifyResult:
    """Walk the whole chain, through its recorded head and past it, and report the first
    record that breaks it; in the caller's transaction, ``batch`` records a statement
    (:func:`verify_chain_paged` checks the same in short transactions).

    With the audit key (default: the session's; :class:`AuditKeyMissing` without one),
    detects an edited record, its digests recomputed or not (digest or MAC mismatch), a
    removed or renumbered record (sequence gap, broken ``prev_digest`` link), reordered
    records (the sequence number is inside the digest), a truncated tail (fewer records than
    the ``audit.head`` meta row names, or a different digest at the head, or a head marker
    that fails its MAC), and MACs stripped (an unkeyed record after a keyed one, a chain
    whose newest record is unkeyed, or unkeyed records whose first keyed successor is not the
    :func:`key_chain` record anchoring that many: a database keyed from its first record).
    Each of ``checkpoints`` must be genuine and name a record of the chain with its digest:
    a chain cut back, or rewritten since, fails. Safe to run beside writers: the head is
    read first, and records committed after it (PostgreSQL reads each statement afresh)
    must be keyed, linked and MACed like the rest; they are counted in
    ``past_head_records``. A record past the head that is not (one added without the audit
    key) fails.

    A chain archived up to a record (:data:`BASE_META_KEY`, :mod:`kcm.core.audit_archive`)
    is walked from the record after it, linked to the digest the base marker names; the
    marker must be genuine (its MAC), every record after it keyed. Records at or below it
    still there (an archive interrupted before its deletes ended) are counted, not walked;
    checkpoints naming them are counted as archived (they are checked against the archive
    file: ``kcm audit verify --export``).
    """
    walk = _ChainWalk(audit_key, checkpoints)
    result = walk.start(session)
    while result is None:
        result = walk.page(session, batch)
    return result


def verify_chain_paged(read: ReadTransaction, *, page: int = VERIFY_PAGE,
                       audit_key: bytes | None = None,
                       checkpoints: Iterable[Checkpoint] = ()) -> VerifyResult:
    """:func:`verify_chain`, each page of ``page`` records in a read transaction of its own
    (``read(fn)``: ``fn(session)`` in a new read transaction), the running digest, MAC and
    head state carried from one to the next: no snapshot is held longer than a page (a
    long-lived one keeps SQLite's WAL from being checkpointed and PostgreSQL's vacuum from
    removing dead rows). Pages follow each other by sequence number (``seq > last ORDER BY
    seq LIMIT page``). The chain only grows at its end (and is archived only from its
    start, behind a base marker written first), so the pages check exactly what one pass
    did: every record up to the head read in the first transaction, and those committed
    after it, as the records past the head (the head read again with the last page must
    reach them)."""
    if page < 1:
        raise ValueError("a page holds at least one record")
    for _ in range(ARCHIVED_WHILE_VERIFYING):
        walk = _ChainWalk(audit_key, checkpoints)
        result = read(walk.start)
        while result is None:
            result = read(partial(_next_page, walk, page))
        if result.ok or read(lambda session: get_meta(  # type: ignore[arg-type,return-value]
                session, BASE_META_KEY)) == walk.base_text:
            return result
        # An archive moved the base while the walk ran: the records it deleted behind it
        # are gone for that reason, not tampered with. Walked again from the new base.
    return result


def _next_page(walk: _ChainWalk, page: int, session: Session) -> VerifyResult | None:
    return walk.page(session, page)


#: How many walks :func:`verify_chain_paged` makes while archives keep moving the base
#: under it (each walk's failure checked against a base moved meanwhile).
ARCHIVED_WHILE_VERIFYING = 3


class _ChainWalk:
    """One walk of the chain, from its start (record 1, or the base marker's) to its newest
    record, fed one page at a time, in one transaction or in many: :meth:`start`, then
    :meth:`page` until it returns the result (None: more to read)."""

    def __init__(self, audit_key: bytes | None, checkpoints: Iterable[Checkpoint]) -> None:
        self._given_key = audit_key
        self.key = b""
        self.checkpoints = list(checkpoints)
        self.expected: dict[int, list[Checkpoint]] = {}
        self.matched = self.archived = 0
        self.head_seq: int | None = None
        self.head_digest = b""
        self.head_mac: bytes | None = None
        self.base_seq = self.below_base = 0
        #: The base marker as :meth:`start` read it (None: none).
        self.base_text: str | None = None
        self.after: int | None = None  # the last sequence number read (None: none yet)
        self.expected_seq = 1
        self.prev_digest = GENESIS_DIGEST
        self.at_head = GENESIS_DIGEST  # the digest of record head_seq, once walked
        self.checked = self.unkeyed = self.past_head = 0

    def _fail(self, seq: int | None, reason: str) -> VerifyResult:
        return VerifyResult(False, self.checked, seq, reason, base_seq=self.base_seq)

    def _checkpoints_hold(self, seq: int, digest: bytes) -> bool:
        for checkpoint in self.expected.pop(seq, ()):
            if checkpoint.digest != digest:
                return False
            self.matched += 1
        return True

    def start(self, session: Session) -> VerifyResult | None:
        """Read the head and base markers; a result if the walk already failed."""
        self.key = key = _audit_key(session, self._given_key)
        write_head(session)
        for checkpoint in self.checkpoints:
            if not checkpoint.genuine(key):
                return VerifyResult(False, 0, None,
                                    f"checkpoint {checkpoint} does not verify under this L1 "
                                    "key: it was altered, or comes from another deployment")
            self.expected.setdefault(checkpoint.seq, []).append(checkpoint)
        # The base before the head: on PostgreSQL each statement sees what has committed
        # when it runs, and a base read after the head could name a record archived since,
        # past it (the head only moves on, so one read first is never past the head).
        self.base_text = base = get_meta(session, BASE_META_KEY)
        head = get_meta(session, HEAD_META_KEY)
        if head is not None:
            try:
                self.head_seq, self.head_digest, self.head_mac = _parse_position(
                    head, "the audit head marker")
            except ValueError:
                return VerifyResult(False, 0, 1, f"audit head marker is malformed: {head!r}")
        if base is None:
            if not self._checkpoints_hold(0, GENESIS_DIGEST):
                return VerifyResult(False, 0, None,
                                    "a checkpoint of the empty chain is malformed")
            return None
        try:
            base_seq, base_digest, base_mac = _parse_position(base, "the audit base marker")
        except ValueError:
            return VerifyResult(False, 0, None, f"audit base marker is malformed: {base!r}")
        if not _genuine_base(key, base_seq, base_digest, base_mac):
            return VerifyResult(False, 0, base_seq + 1,
                                f"the audit base marker (record {base_seq}) fails its MAC: it "
                                "was written without the audit key, to hide deleted records")
        self.base_seq = self.after = base_seq
        self.expected_seq = base_seq + 1
        self.prev_digest = base_digest
        if self.head_seq == base_seq:
            self.at_head = base_digest
        elif self.head_seq is not None and self.head_seq < base_seq:
            return self._fail(self.head_seq,
                              f"the head marker names record {self.head_seq}, before the "
                              f"base marker's record {base_seq}: the chain was rolled back")
        for seq in [seq for seq in self.expected if seq < base_seq]:
            self.archived += len(self.expected.pop(seq))
        if not self._checkpoints_hold(base_seq, base_digest):
            return self._fail(base_seq, f"the base marker's record {base_seq} differs from a "
                                        "checkpoint of it: the chain was rewritten since")
        self.below_base = session.scalar(
            select(func.count()).select_from(AuditLog).where(AuditLog.seq <= base_seq)) or 0
        return None

    def page(self, session: Session, limit: int) -> VerifyResult | None:
        """Walk the next ``limit`` records; the result once the walk ends, else None."""
        table = AuditLog.__table__
        stmt = select(table).order_by(table.c.seq).limit(limit)
        if self.after is not None:
            stmt = stmt.where(table.c.seq > self.after)
        rows = session.execute(stmt).mappings().all()
        for row in rows:
            failed = self._record(row)
            if failed is not None:
                return failed
        if len(rows) == limit:
            self.after = rows[-1]["seq"]
            return None
        return self._finish(session)

    def _record(self, row: Mapping[str, Any]) -> VerifyResult | None:
        key, checked, unkeyed = self.key, self.checked, self.unkeyed
        seq = row["seq"]
        if seq != self.expected_seq:
            why = f"record {self.expected_seq} is missing (next is {seq})"
            if self.base_seq and self.expected_seq == self.base_seq + 1:
                why += (f": the audit base marker says records up to {self.base_seq} were "
                        "archived, and every record after it must be here")
            elif self.expected_seq == 1:
                why += ": no audit base marker says records before it were archived"
            return self._fail(self.expected_seq, why)
        prev_digest = self.prev_digest
        try:
            linked = bytes(row["prev_digest"]) == prev_digest
            computed = record_digest(prev_digest,
                                     **{name: row[name] for name in _DIGESTED_COLUMNS})
            stored_digest = bytes(row["digest"])
            mac = None if row["mac"] is None else bytes(row["mac"])
        except (TypeError, ValueError):  # (a column's type changed: SQLite keeps any)
            return self._fail(seq, "a stored value of the record is not of its column's "
                                   "type: the record was altered")
        if not linked:
            if seq == self.base_seq + 1 and self.base_seq:
                return self._fail(seq, "prev_digest does not match the digest the audit base "
                                       f"marker names for record {self.base_seq}")
            return self._fail(seq, "prev_digest does not match the previous record's digest")
        if stored_digest != computed:
            return self._fail(seq, "digest does not match the record's content")
        beyond = self.head_seq is not None and seq > self.head_seq
        if mac is None:
            if beyond:
                return self._fail(seq, "the record, past the head, has no MAC")
            if unkeyed < checked or self.base_seq:
                return self._fail(seq, "the record has no MAC, but an earlier record has one")
            self.unkeyed += 1
        elif not hmac.compare_digest(mac, record_mac(key, computed)):
            return self._fail(seq, "MAC does not match: the record, or one before it, was "
                                   "rewritten without the audit key (or this is not the "
                                   "database's L1 key)")
        elif unkeyed == checked and unkeyed and not _anchors(row, unkeyed):
            return self._fail(1, f"records 1..{unkeyed} have no MAC, and record {seq}, the "
                                 f"first with one, is not the {KEY_CHAIN_OPERATION} record "
                                 "that anchors them: their MACs were removed")
        if not self._checkpoints_hold(seq, computed):
            return self._fail(seq, "the record differs from a checkpoint of it: the chain "
                                   "was rewritten since the checkpoint")
        if seq == self.head_seq:
            self.at_head = computed
        self.prev_digest = computed
        self.expected_seq = seq + 1
        self.checked += 1
        self.past_head += beyond
        return None

    def _finish(self, session: Session) -> VerifyResult:
        """The checks of the walk's end, in the transaction of its last page."""
        key, checked, unkeyed, past_head = self.key, self.checked, self.unkeyed, self.past_head
        head_seq, prev_digest = self.head_seq, self.prev_digest
        last_seq = self.expected_seq - 1
        to_head = checked - past_head
        if head_seq is None:
            if checked or self.base_seq:
                return self._fail(last_seq, "audit head marker is missing")
        elif last_seq < head_seq:
            return self._fail(last_seq + 1, f"records {last_seq + 1}..{head_seq} are missing")
        elif self.head_digest != self.at_head:
            return self._fail(head_seq, f"record {head_seq} differs from the head marker")
        if to_head and unkeyed == to_head:
            if anchor_due(session, last_seq, prev_digest):
                why = ("written before the chain was keyed, not anchored yet: start kcm-core "
                       "or run `kcm core init`")
            else:
                why = "their MACs were removed"
            return self._fail(1, f"no record is keyed: records 1..{last_seq} have no MAC "
                                 f"({why})")
        if head_seq is not None and not _genuine_head(key, head_seq, self.at_head,
                                                      self.head_mac):
            return self._fail(head_seq, "the head marker fails its MAC: it was rewritten "
                                        "without the audit key (the tail cut back?)")
        if past_head and not _head_reaches(session, key, last_seq, prev_digest):
            # A writer commits its records and the head that names them together: once they
            # are read, so is a head at or past them. A head that stays behind is an old one.
            return self._fail(last_seq - past_head + 1,
                              f"records {last_seq - past_head + 1}..{last_seq} follow the "
                              "head marker, which names an earlier record: the tail was cut "
                              "back, or the head rolled back")
        if self.expected:
            beyond_seq = max(self.expected)
            return self._fail(last_seq + 1,
                              f"a checkpoint names record {beyond_seq}, but the chain ends at "
                              f"{last_seq}: records {last_seq + 1}..{beyond_seq} were deleted, "
                              "or the chain was rolled back")
        return VerifyResult(True, checked, unkeyed_records=unkeyed,
                            checkpoints_matched=self.matched, past_head_records=past_head,
                            base_seq=self.base_seq, below_base_records=self.below_base,
                            checkpoints_archived=self.archived)


def _anchors(row: Mapping[str, Any], unkeyed: int) -> bool:
    """Whether ``row``, the first keyed record (its MAC verified), is the one
    :func:`key_chain` appends after the ``unkeyed`` records written before the chain was
    keyed: no other keyed record ever follows an unkeyed one (:func:`append_audit`), so
    unkeyed records before any other are records whose MACs were removed."""
    if row["operation"] != KEY_CHAIN_OPERATION or row["detail"] is None:
        return False
    try:
        detail = json.loads(row["detail"])
    except ValueError:
        return False
    return detail == {"unkeyed_records": unkeyed}


def _genuine_head(key: bytes, seq: int, digest: bytes, mac: bytes | None) -> bool:
    """Whether ``mac`` is the head marker's MAC of record ``seq`` with digest ``digest``."""
    return mac is not None and hmac.compare_digest(
        mac, _mac(key, _HEAD_LABEL, _position(seq, digest)))


def _head_reaches(session: Session, key: bytes, seq: int, digest: bytes) -> bool:
    """Whether the head marker, read again now, is genuine and names record ``seq`` (with
    ``digest``) or a later one."""
    text = get_meta(session, HEAD_META_KEY)
    if text is None:
        return False
    try:
        head_seq, head_digest, head_mac = _parse_position(text, "the audit head marker")
    except ValueError:
        return False
    return _genuine_head(key, head_seq, head_digest, head_mac) and (
        head_seq > seq or (head_seq == seq and head_digest == digest))


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
