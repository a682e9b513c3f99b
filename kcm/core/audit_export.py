"""An audit export checked on its own (``kcm audit verify --export FILE``), away from the
database: each JSON line of ``kcm audit export`` carries the record's ``prev_digest`` and
``mac`` beside its ``digest`` (:func:`export_fields`), so that

* each record's digest is recomputed from its fields and its ``prev_digest``
  (:func:`kcm.core.audit.record_digest`: ``object_ids`` and ``detail`` are stored as
  canonical JSON, which their decoded values encode back to exactly), and its MAC checked
  under the audit key (only a holder of L1 has it): a record edited, or made up, fails;
* records that follow each other in the chain (sequence numbers ``n`` and ``n + 1``) are
  linked (``prev_digest`` of one is the ``digest`` of the other): none was removed,
  reordered or replaced between them. An export filtered by tenant or operation skips
  records: its runs are counted (and the records between them), each record still
  verified on its own;
* the checkpoints given (from kcm-core's log) that name a record of the export match it;
* records without a MAC (those a release before MACs wrote, at the chain's start) verify
  only followed by the record that keyed the chain (``KeyAuditChain``, MACed, naming how
  many came before it): lines whose MACs were removed, or made up without one, fail;
* a line holds the fields an export writes and no other, its readable ``at`` the time of
  its ``at_us`` (which the digest covers).

What it cannot say: that no record was left out before the first, after the last, or (in a
filtered export) between runs; `kcm audit verify` on the database says that. An archive
file or an unfiltered export has no such runs: checked ``complete``, a record missing
between two of its records fails it.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from kcm.core.audit import (
    KEY_CHAIN_OPERATION,
    AuditRow,
    Checkpoint,
    _canonical_json,
    record_digest,
    record_mac,
)

__all__ = ["LINE_FIELDS", "ExportResult", "export_fields", "readable_time", "verify_export"]

#: The longest line read (bytes): a record's detail keeps strings of at most 1,024
#: characters, so a genuine line is a few KiB.
MAX_LINE = 1 << 20


#: The fields of an export line: the record's log fields, its chain fields, ``at``.
LINE_FIELDS = frozenset({
    "seq", "at_us", "at", "principal", "tenant", "gateway", "source", "operation",
    "object_ids", "result_status", "result_reason", "correlation_id", "detail", "digest",
    "prev_digest", "mac"})


def readable_time(at_us: int) -> str:
    """``at`` of an export line: ``at_us`` in ISO 8601 UTC, microseconds."""
    return dt.datetime.fromtimestamp(at_us / 1e6, dt.UTC).isoformat(
        timespec="microseconds").replace("+00:00", "Z")


def export_fields(row: AuditRow) -> dict[str, Any]:
    """What an export line adds to a record's log fields: its chain fields, in hex."""
    return {"prev_digest": row.prev_digest.hex(),
            "mac": None if row.mac is None else row.mac.hex()}


@dataclass(frozen=True, slots=True)
class ExportResult:
    """The outcome of :func:`verify_export`; ``line`` is the first bad line's number."""

    ok: bool
    records: int = 0
    runs: int = 0
    #: Records of the chain between the runs (not in the export: a filtered one).
    between: int = 0
    unkeyed: int = 0
    checkpoints_matched: int = 0
    line: int | None = None
    reason: str | None = None
    #: The first and the last record's sequence numbers (0: none read).
    first_seq: int = 0
    last_seq: int = 0


def _lines(source: Iterable[str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(source, 1):
        if line.strip():
            yield number, line


def _hex(record: dict[str, Any], name: str, *, optional: bool = False) -> bytes | None:
    value = record.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} is missing")
    return bytes.fromhex(value)


def _digest_of(record: dict[str, Any], prev_digest: bytes) -> bytes:
    """The chain digest of an export line's record, from its fields."""
    def text(name: str, optional: bool = False) -> str | None:
        value = record.get(name)
        if (value is None and optional) or isinstance(value, str):
            return value
        raise ValueError(f"{name} is not text")

    seq, at = record.get("seq"), record.get("at_us")
    if type(seq) is not int or type(at) is not int:
        raise ValueError("seq and at_us must be whole numbers")
    detail = record.get("detail")
    return record_digest(
        prev_digest, seq=seq, at=at, principal=text("principal"),  # type: ignore[arg-type]
        tenant=text("tenant", True), gateway=text("gateway", True),
        source=text("source"), operation=text("operation"),  # type: ignore[arg-type]
        object_ids=_canonical_json(record.get("object_ids")),
        result_status=text("result_status"),  # type: ignore[arg-type]
        result_reason=text("result_reason", True),
        correlation_id=text("correlation_id"),  # type: ignore[arg-type]
        detail=None if detail is None else _canonical_json(detail))


class _Bad(Exception):
    """A line that fails: its reason."""


def verify_export(source: Iterable[str], audit_key: bytes,
                  checkpoints: Iterable[Checkpoint] = (), *,
                  complete: bool = False) -> ExportResult:
    """Check the JSON lines of an export (``source``) under ``audit_key``; see the module.
    ``complete``: the export must be one run (an archive file, an unfiltered export): a
    record missing between two of its records fails it."""
    expected: dict[int, list[Checkpoint]] = {}
    for checkpoint in checkpoints:
        if not checkpoint.genuine(audit_key):
            return ExportResult(False, reason=f"checkpoint {checkpoint} does not verify under "
                                "this L1 key: it was altered, or comes from another deployment")
        expected.setdefault(checkpoint.seq, []).append(checkpoint)
    count = {"records": 0, "runs": 0, "between": 0, "unkeyed": 0, "matched": 0,
             "keyed": 0, "last_unkeyed": 0, "first": 0}
    last: tuple[int, bytes] | None = None
    number = 0
    for number, line in _lines(source):
        try:
            last = _check(line, last, audit_key, expected, count)
            if complete and count["between"]:
                raise _Bad(_missing(last[0], count["between"]))
        except _Bad as e:
            return ExportResult(False, count["records"], count["runs"], count["between"],
                                count["unkeyed"], count["matched"], number, str(e))
    if not count["records"]:
        return ExportResult(False, reason="the export holds no audit record")
    if count["unkeyed"] and not count["keyed"]:
        return ExportResult(False, count["records"], count["runs"], count["between"],
                            count["unkeyed"], count["matched"], number, _UNANCHORED)
    return ExportResult(True, count["records"], count["runs"], count["between"],
                        count["unkeyed"], count["matched"], first_seq=count["first"],
                        last_seq=last[0] if last is not None else 0)


def _check(line: str, last: tuple[int, bytes] | None, audit_key: bytes,
           expected: dict[int, list[Checkpoint]], count: dict[str, int]) -> tuple[int, bytes]:
    """Check one line's record after ``last`` ((seq, digest) of the line before); its own
    (seq, digest). ``count`` is added to; :class:`_Bad` says why the line fails."""
    if len(line) > MAX_LINE:
        raise _Bad("the line is too long for an audit record")
    try:
        record = json.loads(line)
        if not isinstance(record, dict) or record.get("malformed"):
            raise _Bad("not an audit record as kcm audit export writes one (a record the "
                       "database holds altered is exported as malformed)")
        if set(record) != LINE_FIELDS:
            odd = sorted(set(record) ^ LINE_FIELDS)[:3]
            raise _Bad(f"not an audit record as kcm audit export writes one (fields "
                       f"{', '.join(map(repr, odd))} added or missing)")
        prev_digest = _hex(record, "prev_digest")
        digest = _hex(record, "digest")
        mac = _hex(record, "mac", optional=True)
        computed = _digest_of(record, prev_digest)  # type: ignore[arg-type]
    except (ValueError, TypeError) as e:
        raise _Bad(f"not a readable audit record: {str(e)[:80]}") from None
    seq: int = record["seq"]
    try:
        readable = readable_time(record["at_us"])
    except (ValueError, OverflowError, OSError):
        raise _Bad(f"record {seq}: its at_us is no time") from None
    if record["at"] != readable:
        raise _Bad(f"record {seq}: its at is not the time of its at_us ({readable})")
    if last is not None and seq <= last[0]:
        raise _Bad(f"record {seq} comes after record {last[0]}: out of order or twice")
    if computed != digest:
        raise _Bad(f"record {seq}: its digest does not match its content")
    if mac is None:
        if count["records"] > count["unkeyed"]:  # (only a chain's oldest are unkeyed)
            raise _Bad(f"record {seq} has no MAC, after records that have one")
        count["unkeyed"] += 1
        count["last_unkeyed"] = seq
    elif not hmac.compare_digest(mac, record_mac(audit_key, digest)):  # type: ignore[arg-type]
        raise _Bad(f"record {seq}: its MAC does not verify under this L1 key (altered, or "
                   "from another deployment)")
    else:
        if count["unkeyed"] and not count["keyed"] and not _anchors(record, seq, count):
            raise _Bad(_UNANCHORED)
        count["keyed"] += 1
    if last is not None and seq == last[0] + 1:
        if prev_digest != last[1]:
            raise _Bad(f"record {seq} does not follow record {last[0]} in the chain")
    else:
        count["runs"] += 1
        if last is not None:
            count["between"] += seq - last[0] - 1
    for checkpoint in expected.pop(seq, ()):
        if checkpoint.digest != digest:
            raise _Bad(f"record {seq} is not the one checkpoint {checkpoint} names")
        count["matched"] += 1
    if not count["records"]:
        count["first"] = seq
    count["records"] += 1
    return seq, digest  # type: ignore[return-value]


def _missing(seq: int, between: int) -> str:
    """Why a complete export fails: records missing before record ``seq``."""
    first = seq - between
    gap = f"record {first} is" if between == 1 else f"records {first}..{seq - 1} are"
    return (f"{gap} missing (next is {seq}): a complete export (--complete) holds every "
            "record from its first to its last")


_UNANCHORED = ("records without a MAC are not followed by the record that keyed the chain "
               "(KeyAuditChain) naming them: their MACs were removed, or they were made up")


def _anchors(record: dict[str, Any], seq: int, count: dict[str, int]) -> bool:
    """Whether ``record`` (number ``seq``, its MAC verified), the first with a MAC after
    the export's records without one, is the KeyAuditChain record that names the records
    before it unkeyed (as the database's check asks: :func:`kcm.core.audit._anchors`)."""
    detail = record.get("detail")
    return (record.get("operation") == KEY_CHAIN_OPERATION and isinstance(detail, dict)
            and detail == {"unkeyed_records": seq - 1}
            and count["last_unkeyed"] <= seq - 1)
