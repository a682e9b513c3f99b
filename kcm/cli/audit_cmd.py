"""``kcm audit verify|tail|export|archive``: check, read and archive the audit log.

``kcm audit verify [-c CONFIG] [--checkpoint SEQ:DIGEST:MAC] [--checkpoint-log FILE]
[--export FILE] [--json]``: check the audit log's keyed hash chain (``--json``: the outcome
as one JSON object, for scripts).

Runs on the core's host: it needs the database and the L1 key file (the chain is MACed under
a key derived from L1). Every record is checked, those committed after the head marker was
read included; it reads them in pages, each a short read transaction of its own, so that
no snapshot is held for the whole walk. Exit status 0 when every record is intact and every
checkpoint given is in the chain; 1, naming the first bad record, when one was altered,
removed or reordered, the tail was cut back, or a checkpoint is not in the chain (or is not
genuine); 2 for bad input (no L1 key file, another database's L1, an unreadable checkpoint).

Checkpoints are the ``kcm.audit.checkpoint`` events kcm-core writes to its log at start and
every ``audit_checkpoint_interval`` seconds; ``--checkpoint`` takes one as written (its
``checkpoint`` field), ``--checkpoint-log`` reads every one from a saved kcm-core log (either
log format). Both may be repeated.

``kcm audit archive (--until TIME | --until-seq N) -o FILE [-c CONFIG]``: move the oldest
records out of the database. The chain is verified first; records up to N (or those
written before TIME, up to the first that is not) are exported to FILE as ``kcm audit
export`` writes them and the file checked, a MACed base marker naming the last of them is
written, then they are deleted in short transactions (:mod:`kcm.core.audit_archive`).
Interrupted, it can be run again: it finishes the deletes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, TypeVar

from kcm.cli import CommandError, add_command
from kcm.cli.core_cmd import (
    closed_at_end,
    config_option,
    core_config,
    existing_database,
    run_in_store,
    schema_checked,
)
from kcm.cli.output_file import writing

if TYPE_CHECKING:
    from sqlalchemy import Select
    from sqlalchemy.orm import Session

    from kcm.core.audit import VerifyResult
    from kcm.core.store.engine import Store
    from kcm.core.store.schema import AuditLog

T = TypeVar("T")

#: The most records ``kcm audit tail`` prints at once (``kcm audit export`` takes more).
MAX_TAIL_LINES = 1_000_000


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``audit`` to the ``kcm`` parser."""
    actions = add_command(subparsers, "audit", "the audit log", __doc__)
    verify = actions.add_parser("verify", help="verify the audit log's keyed hash chain")
    config_option(verify)
    verify.add_argument("--checkpoint", action="append", default=[], metavar="SEQ:DIGEST:MAC",
                        help="a checkpoint from kcm-core's log the chain must still hold "
                             "(repeatable)")
    verify.add_argument("--checkpoint-log", action="append", default=[], metavar="FILE",
                        help="a saved kcm-core log: the chain must hold every checkpoint in it "
                             "(repeatable)")
    verify.add_argument("--export", metavar="FILE",
                        help="verify a file of kcm audit export instead of the database: each "
                             "record's digest and MAC, and the links between consecutive "
                             "records")
    verify.add_argument("--complete", action="store_true",
                        help="with --export: the file must hold every record from its first "
                             "to its last (an archive, an unfiltered export); one missing "
                             "fails")
    verify.add_argument("--json", action="store_true",
                        help="print the outcome as one JSON object (ok, records_checked, "
                             "first_bad_seq, reason, ...); the same exit status")
    verify.set_defaults(run=_run_verify, prog="kcm audit verify")

    tail = actions.add_parser("tail", help="the newest audit records, as JSON lines")
    config_option(tail)
    tail.add_argument("-n", "--lines", type=int, default=20, metavar="N",
                      help="how many records (default: 20)")
    tail.add_argument("-f", "--follow", action="store_true",
                      help="then print new records as they are written (until Ctrl-C)")
    tail.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    _filters(tail)
    tail.set_defaults(run=_run_tail, prog="kcm audit tail")

    export = actions.add_parser("export", help="audit records in a time range, as JSON lines")
    config_option(export)
    export.add_argument("--since", metavar="TIME",
                        help="from TIME on (ISO 8601 such as 2026-12-03T14:00:00Z or "
                             "2026-12-03, POSIX seconds, or a duration ago: 90s, 15m, 2h, 7d)")
    export.add_argument("--until", metavar="TIME", help="before TIME (same forms)")
    export.add_argument("-o", "--output", metavar="FILE",
                        help="write to FILE, which must not exist (default: stdout)")
    _filters(export)
    export.set_defaults(run=_run_export, prog="kcm audit export")

    archive = actions.add_parser(
        "archive", help="export the oldest audit records to a file, then delete them")
    config_option(archive)
    until = archive.add_mutually_exclusive_group(required=True)
    until.add_argument("--until", metavar="TIME",
                       help="the records written before TIME (same forms as export's), up "
                            "to the first that is not")
    until.add_argument("--until-seq", type=int, metavar="N",
                       help="the records up to and including record N")
    archive.add_argument("-o", "--output", metavar="FILE",
                         help="write them to FILE, which must not exist (needed unless they "
                              "are archived already)")
    archive.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    archive.set_defaults(run=_run_archive, prog="kcm audit archive")


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", help="only this tenant's records")
    parser.add_argument("--operation", help="only this operation's records (e.g. CREATE, "
                                            "get-attributes, remove-tenant; any case, '_' "
                                            "or '-' between words or not)")
    parser.add_argument("--gateway", help="only the records of requests this gateway "
                                          "forwarded or made (its SPIFFE ID)")
    parser.add_argument("--object", metavar="UID",
                        help="only the records that name this object (its Unique "
                             "Identifier), in object_ids or in detail (a refused "
                             "request's requested)")


def _run_verify(args: argparse.Namespace) -> int:
    from kcm.core.audit import Checkpoint, checkpoints_in_log, verify_chain_paged

    checkpoints = []
    for text in args.checkpoint:
        try:
            checkpoints.append(Checkpoint.parse(text))
        except ValueError as e:
            raise CommandError(str(e)) from e
    for path in args.checkpoint_log:
        try:
            with open(path, encoding="utf-8", errors="replace") as log:
                found = checkpoints_in_log(log)
        except OSError as e:
            raise CommandError(f"cannot read {path}: {e.strerror}") from e
        except ValueError as e:
            raise CommandError(f"{path}: {e}") from e
        if not found:
            raise CommandError(f"{path} holds no audit checkpoint")
        checkpoints.extend(found)

    if args.complete and args.export is None:
        raise CommandError("--complete applies to --export FILE only")
    config = core_config(args)
    if args.export is not None:
        return _verify_export(args.export, _audit_key_of(config), checkpoints,
                              as_json=args.json, complete=args.complete)
    store = _keyed_store(args, config)
    # Page by page, each a short read transaction: a snapshot held for the whole walk
    # (hours, for a year's chain) would keep SQLite's WAL from being checkpointed and
    # PostgreSQL's vacuum from removing dead rows.
    result = verify_chain_paged(lambda read: run_in_store(store, read, write=False),
                                checkpoints=checkpoints)
    if args.json:
        _print_outcome("database", result)
        return 0 if result.ok else 1
    if result.ok:
        notes = []
        if result.base_seq:
            notes.append(f"from record {result.base_seq + 1}: records up to "
                         f"{result.base_seq} archived (the base marker verified)")
        if result.below_base_records:
            notes.append(f"{result.below_base_records} archived records still to delete "
                         "(an archive interrupted: run it again)")
        if result.unkeyed_records:
            notes.append(f"the first {result.unkeyed_records} written before the chain was "
                         "keyed, checked by digest only")
        if result.past_head_records:
            notes.append(f"{result.past_head_records} records past the head, verified "
                         "(committed meanwhile)")
        if checkpoints:
            notes.append(f"{result.checkpoints_matched} checkpoints matched")
        if result.checkpoints_archived:
            notes.append(f"{result.checkpoints_archived} checkpoints name archived records "
                         "(verify them against the archive: --export FILE)")
        print(f"audit log intact: {result.records_checked} records verified"
              + "".join(f"; {note}" for note in notes))
        return 0
    _print_broken(result)
    return 1


def _print_outcome(verified: str, result: Any) -> None:
    """``result`` (a VerifyResult or an ExportResult) as one JSON object on stdout, with
    ``verified``: what was (``database`` or ``export``)."""
    import dataclasses

    print(json.dumps({"verified": verified, **dataclasses.asdict(result)}, sort_keys=True))


def _print_broken(result: VerifyResult) -> None:
    if result.first_bad_seq is None:
        print(f"audit log NOT verified: {result.reason}")
    else:
        print(f"audit log BROKEN at record {result.first_bad_seq}: {result.reason} "
              f"({result.records_checked} records checked)")


def _keyed_store(args: argparse.Namespace, config: Any) -> Store:
    """A store on the existing database of ``config`` with its audit key, once the L1 key
    is known to be the database's."""
    from kcm.core.l1 import L1_CHECK_META, L1Error, open_configured_l1
    from kcm.core.store import repository
    from kcm.core.store.engine import Store

    store = closed_at_end(args, Store(schema_checked(existing_database(config))))
    try:
        l1, _ = open_configured_l1(config)
    except L1Error as e:
        raise CommandError(f"cannot load the L1 key: {e}") from e
    store.audit_key = l1.audit_key()
    known = run_in_store(store, lambda session: repository.get_meta(session, L1_CHECK_META),
                         write=False)
    if known is not None and known != l1.check_value():
        raise CommandError(f"the {l1.description} is not the L1 key of this database")
    return store


def _audit_key_of(config: Any) -> bytes:
    from kcm.core.l1 import L1Error, open_configured_l1

    try:
        l1, _ = open_configured_l1(config)
    except L1Error as e:
        raise CommandError(f"cannot load the L1 key: {e}") from e
    return l1.audit_key()


def _verify_export(path: str, audit_key: bytes, checkpoints: list, *,
                   as_json: bool = False, complete: bool = False) -> int:
    from kcm.core.audit_export import verify_export

    try:
        with open(path, encoding="utf-8", errors="replace") as export:
            result = verify_export(export, audit_key, checkpoints, complete=complete)
    except OSError as e:
        raise CommandError(f"cannot read {path}: {e.strerror}") from e
    if as_json:
        _print_outcome("export", result)
        return 0 if result.ok else 1
    if not result.ok:
        where = f"line {result.line}: " if result.line is not None else ""
        print(f"audit export NOT verified: {where}{result.reason}")
        return 1
    notes = [f"{result.runs} run{'s' if result.runs != 1 else ''} of consecutive records"]
    if result.between:
        notes.append(f"{result.between} records of the chain between them not in the export")
    if result.unkeyed:
        notes.append(f"the first {result.unkeyed} unkeyed, checked by digest only")
    if checkpoints:
        notes.append(f"{result.checkpoints_matched} checkpoints matched")
    start = ("from the chain's first" if result.first_seq == 1 else
             f"records before {result.first_seq} not in it")
    print(f"audit export intact: {result.records} records verified ({result.first_seq} to "
          f"{result.last_seq}, {start}); " + "; ".join(notes))
    return 0


# Reading the log ------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


#: The latest time a --since or --until may name (POSIX seconds): the year 9999, as far as
#: an ISO 8601 date goes.
LATEST_TIME = 253402300799.0


def _bounded(seconds: float, what: str, text: str) -> float:
    """``seconds`` if it is a time the log can hold (finite, 0 to :data:`LATEST_TIME`)."""
    if not 0 <= seconds <= LATEST_TIME:  # (NaN fails both comparisons)
        raise CommandError(f"{what} {text!r} is not a time between 1970 and 9999")
    return seconds


def parse_time(text: str, what: str, now: float | None = None) -> float:
    """POSIX seconds of ``text``: ISO 8601 (UTC unless it says otherwise; a date alone is its
    midnight), POSIX seconds, or a duration before ``now`` ("15m", "2h", "7d")."""
    now = time.time() if now is None else now
    value = text.strip()
    found = _DURATION.match(value)
    if found:
        return _bounded(now - float(found.group(1)) * _UNITS[found.group(2)], what, text)
    try:
        return _bounded(float(value), what, text)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"{what} {text!r} is not a time (ISO 8601, POSIX seconds, or a "
                           "duration ago such as 15m)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return _bounded(parsed.timestamp(), what, text)


def record_json(row: Any) -> dict[str, Any]:
    """An audit record as one JSON line shows it: ``at`` in ISO 8601 UTC (microseconds) and
    ``at_us``, the JSON columns decoded, the chain digest in hex."""
    from kcm.core.audit import AuditRow
    from kcm.core.audit_export import export_fields, readable_time

    fields = {name: getattr(row, name) for name in AuditRow.__slots__ if hasattr(row, name)}
    try:
        for name, value in fields.items():
            if not isinstance(value, _STORED_TYPES.get(name, object)):
                raise TypeError(name)
        row_read = AuditRow(**fields)
        record = row_read.log_fields()
        record.update(export_fields(row_read))
        record["at"] = readable_time(row.at)
    except (TypeError, ValueError, OverflowError, OSError):
        # Altered (a column's type changed, JSON that is not): shown as stored, and said
        # to be, so that one record stops neither an export nor a tail.
        return {"malformed": True,
                **{name: _as_stored(value) for name, value in fields.items()}}
    return record


#: What each column of an audit record holds (any other value was put there by hand).
_STORED_TYPES: dict[str, type | tuple[type, ...]] = {
    "seq": int, "at": int, "object_ids": str, "detail": (str, type(None)),
    **{name: (str, type(None)) for name in (
        "principal", "tenant", "gateway", "source", "operation", "result_status",
        "result_reason", "correlation_id")},
    **{name: (bytes, memoryview) for name in ("digest", "prev_digest")},
}


def _as_stored(value: Any) -> Any:
    """A column's value as JSON can show it: bytes in hex, anything odd as its repr."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return repr(value)


def _query(args: argparse.Namespace) -> tuple[Select[Any], type[AuditLog]]:
    from sqlalchemy import func, or_, select

    from kcm.core.audit import KEY_CHAIN_OPERATION
    from kcm.core.store.schema import AuditLog

    query = select(AuditLog)
    # A filtered selection keeps the record that keyed the chain (KeyAuditChain, after the
    # records of a release before MACs): an export's records without a MAC verify only
    # beside it (kcm.core.audit_export).
    anchor = AuditLog.operation == KEY_CHAIN_OPERATION
    if args.tenant is not None:
        query = query.where(or_(AuditLog.tenant == args.tenant, anchor))
    if args.operation is not None:
        # Compared without case, '_', '-' or spaces: KMIP operations are stored as
        # GET_ATTRIBUTES, the operator commands' as RemoveTenant, and either may be asked
        # for as get-attributes or remove-tenant (otherwise: nothing found, and status 0).
        operation = "".join(ch for ch in args.operation.upper() if ch not in "_- ")
        query = query.where(or_(
            func.replace(func.upper(AuditLog.operation), "_", "") == operation, anchor))
    if args.gateway is not None:
        query = query.where(or_(AuditLog.gateway == args.gateway, anchor))
    if args.object is not None:
        # object_ids and detail are stored as JSON: the identifier as a whole JSON string.
        named = json.dumps(args.object)
        query = query.where(or_(AuditLog.object_ids.contains(named, autoescape=True),
                                AuditLog.detail.contains(named, autoescape=True), anchor))
    return query, AuditLog


def _read(args: argparse.Namespace, fn: Callable[[Session], T]) -> tuple[Store, T]:
    from kcm.cli.core_cmd import open_store

    store = open_store(args)
    return store, run_in_store(store, fn, write=False)


def _page(query: Select[Any], table: type[AuditLog], after: int
          ) -> Callable[[Session], list[dict[str, Any]]]:
    """A read of the next (up to) 1000 records after sequence number ``after``."""
    def read(session: Session) -> list[dict[str, Any]]:
        return [record_json(row) for row in session.scalars(
            query.where(table.seq > after).order_by(table.seq).limit(1000))]
    return read


def _write(out: IO[str], records: list[dict[str, Any]]) -> None:
    for record in records:
        out.write(json.dumps(record, sort_keys=True) + "\n")
    out.flush()


def _run_tail(args: argparse.Namespace) -> int:
    if not 0 <= args.lines <= MAX_TAIL_LINES:
        raise CommandError(f"--lines must be 0 to {MAX_TAIL_LINES}")
    query, table = _query(args)

    def newest(session: Session) -> tuple[list[dict[str, Any]], int]:
        """The last ``--lines`` records, and the newest sequence number, read together:
        a record committed after this read is the first that following prints."""
        from sqlalchemy import func, select

        last = session.scalar(select(func.coalesce(func.max(table.seq), 0)))
        rows = session.scalars(query.where(table.seq <= last).order_by(table.seq.desc())
                               .limit(args.lines)).all()
        return [record_json(row) for row in reversed(rows)], last

    store, (records, after) = _read(args, newest)
    _write(sys.stdout, records)
    if not args.follow:
        return 0
    with _interrupted() as stop:
        try:
            while not stop.wait(args.interval):
                found = run_in_store(store, _page(query, table, after), write=False)
                if found:
                    _write(sys.stdout, found)
                    after = found[-1]["seq"]
        except KeyboardInterrupt:  # (not the main thread: Ctrl-C raises where it lands)
            pass
    return 0


@contextlib.contextmanager
def _interrupted() -> Iterator[threading.Event]:
    """An Event Ctrl-C (SIGINT) sets while in the block, in place of KeyboardInterrupt, so
    that following stops between reads: raised in the middle of one, it landed in the
    database driver's cleanup, which printed a traceback."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_export(args: argparse.Namespace) -> int:
    query, table = _query(args)
    if args.since is not None:
        query = query.where(table.at >= int(parse_time(args.since, "--since") * 1e6))
    if args.until is not None:
        query = query.where(table.at < int(parse_time(args.until, "--until") * 1e6))

    def export(out: IO[str]) -> int:
        after = 0
        count = 0
        while True:  # in pages, so that a long log is never all in memory
            page = run_in_store(store, _page(query, table, after), write=False)
            if not page:
                return count
            _write(out, page)
            count += len(page)
            after = page[-1]["seq"]

    from kcm.cli.core_cmd import open_store

    store = open_store(args)
    if args.output is None:
        export(sys.stdout)
        return 0
    # Never over another file (as `kcm core backup`), and whole or not at all: written to
    # FILE.partial, synced, then linked to FILE (kcm.cli.output_file).
    with writing(args.output) as out:
        count = export(out)
    print(f"{count} audit records written to {args.output}", file=sys.stderr)
    return 0


# Archiving -------------------------------------------------------------------------------------


def _run_archive(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from kcm.core.audit import verify_chain_paged
    from kcm.core.audit_archive import (
        DELETE_BATCH,
        archive_end,
        archive_end_refusal,
        delete_below_base,
        first_at_or_after,
        mark_base,
    )
    from kcm.core.store.schema import AuditLog

    batch = args.batch or DELETE_BATCH
    if args.until_seq is None:
        at_us = int(parse_time(args.until, "--until") * 1e6)
    store = _keyed_store(args, core_config(args))
    key = store.audit_key
    assert key is not None
    # Nothing is archived from a chain that does not verify: the base marker would vouch
    # for what it holds.
    verified = verify_chain_paged(lambda read: run_in_store(store, read, write=False))
    if not verified.ok:
        print("audit log NOT archived: the chain does not verify")
        _print_broken(verified)
        return 1
    until = args.until_seq
    if until is None:  # the first record written at or after TIME ends the archive
        after = verified.base_seq
        while True:
            first, last = run_in_store(
                store, lambda s, after=after: first_at_or_after(s, after, at_us, 5000),
                write=False)
            if first is not None or last == after:
                break
            after = last
        until = (first if first is not None else last + 1) - 1
    end = run_in_store(store, lambda s: archive_end(s, until), write=False)
    refusal = archive_end_refusal(end, key)
    if refusal is not None:
        raise CommandError(f"cannot archive the audit log up to record {until}: {refusal}")

    if end.seq > end.base_seq:
        if args.output is None:
            raise CommandError("-o FILE is needed: records "
                               f"{end.base_seq + 1}..{end.seq} are to be archived there")
        query = select(AuditLog).where(AuditLog.seq <= end.seq)
        with writing(args.output) as out:
            after, count = end.base_seq, 0
            while True:  # in pages, each a short read transaction, as an export
                page = run_in_store(store, _page(query, AuditLog, after), write=False)
                if not page:
                    break
                _write(out, page)
                count += len(page)
                after = page[-1]["seq"]
        _check_archive_file(args.output, key, end)
        marked = run_in_store(store, lambda s: mark_base(s, end))
        print(f"audit records {end.base_seq + 1}..{end.seq} ({count}) written to "
              f"{args.output} and verified; the database's chain now starts after record "
              f"{end.seq} " + ("(base marker written)" if marked else
                               "(the base marker was there or beyond already: another "
                               "archive ran meanwhile)"), file=sys.stderr)
    else:
        print(f"audit records up to {end.base_seq} are archived already (base marker): "
              "nothing exported; deleting those still in the database", file=sys.stderr)
    deleted = transactions = 0
    while True:  # short transactions, as the outbox is pruned: writers wait one at most
        done = run_in_store(store, lambda s: delete_below_base(s, limit=batch))
        if not done:
            break
        deleted += done
        transactions += 1
    print(f"{deleted} archived audit records deleted from the database in {transactions} "
          f"transactions; keep the archive files: they alone prove the chain up to record "
          f"{max(end.seq, end.base_seq)}", file=sys.stderr)
    return 0


def _check_archive_file(path: str, audit_key: bytes, end: Any) -> None:
    """The archive at ``path`` must verify as an export, hold records ``end.base_seq + 1
    .. end.seq`` and no other, and link to the base and to record ``end.seq``: else no base
    is written, and nothing deleted."""
    from kcm.core.audit_export import verify_export

    ends: list[str] = []

    def lines(archive: IO[str]) -> Any:
        for line in archive:  # (streamed: an archive may be larger than memory)
            if not ends:
                ends.append(line)
            yield line
        ends.append(line if ends else "")

    with open(path, encoding="utf-8") as archive:
        result = verify_export(lines(archive), audit_key)
    first = json.loads(ends[0]) if result.ok else {}
    last = json.loads(ends[-1]) if result.ok else {}
    if not (result.ok and result.runs == 1 and result.records == end.seq - end.base_seq
            and first.get("prev_digest") == end.base_digest.hex()
            and last.get("seq") == end.seq and last.get("digest") == end.digest.hex()):
        why = result.reason or "another range"
        raise CommandError(f"the archive {path} does not hold records {end.base_seq + 1}.."
                           f"{end.seq} of the chain as verified ({why}): nothing deleted, "
                           "no base marker written; remove it and run `kcm audit verify`")
