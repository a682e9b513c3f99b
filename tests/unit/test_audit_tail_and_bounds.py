"""The audit chain's head held to its newest record at every append, bounded client text
in audit records and log lines, audit lines whatever the log level, the operator commands'
records, and unkeyed records only before the anchor (review 6 fixes, helper "ha")."""

from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import delete, select, update
from twisted.logger import Logger, LogLevel, capturedLogs

from kcm.cli import main
from kcm.core.audit import (
    DETAIL_TEXT_LIMIT,
    HEAD_META_KEY,
    KEY_CHAIN_OPERATION,
    AuditChainError,
    AuditEvent,
    append_audit,
    append_records,
    checkpoint_log,
    key_chain,
    savepoint,
    verify_chain,
)
from kcm.core.keys import derive_audit_key
from kcm.core.operations.service_ops import INTEROP_IDENTIFIER_LIMIT, interop, log_message
from kcm.core.store.engine import Store
from kcm.core.store.migrate import upgrade
from kcm.core.store.repository import get_meta, set_meta
from kcm.core.store.schema import AuditLog, Meta
from kcm.kmip.enums import InteropFunction
from kcm.kmip.payloads import InteropRequest, LogRequest
from kcm.logging import FIELD_LIMIT, event_as_json, event_as_text, log_observer
from tests.unit.test_audit import write_legacy_chain
from tests.unit.test_cli_core_inventory import deployment, json_lines, kcm  # noqa: F401

AUDIT_KEY = derive_audit_key(bytes(range(32)))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    upgrade(url)
    ksi = Store(url)
    ksi.audit_key = AUDIT_KEY
    yield ksi
    ksi.stopService()


def _event(n: int, **overrides: object) -> AuditEvent:
    fields: dict = {"principal": "p", "operation": f"Op{n}", "result_status": "SUCCESS",
                    "correlation_id": f"c{n}"}
    fields.update(overrides)
    return AuditEvent(**fields)


def _append(store: Store, count: int, first: int = 1) -> None:
    store.run_sync(lambda s: [append_audit(s, _event(n)) for n in range(first, first + count)])


def _seqs(store: Store) -> list[int]:
    return store.run_sync(lambda s: list(s.scalars(select(AuditLog.seq).order_by(AuditLog.seq))))


# 1. A cut tail is not covered up by the next append ---------------------------------------

def _cut_newest(store: Store, count: int) -> None:
    """What a database writer without L1 does: delete the newest records, head kept."""
    store.run_sync(lambda s: s.execute(delete(AuditLog).where(
        AuditLog.seq > max(_seqs_in(s)) - count)))


def _seqs_in(session) -> list[int]:
    return list(session.scalars(select(AuditLog.seq)))


def test_an_append_after_the_newest_records_were_deleted_is_refused(store: Store) -> None:
    _append(store, 5)
    _cut_newest(store, 2)
    with pytest.raises(AuditChainError, match=r"^the audit head marker names record 5, but "
                                              r"the newest record is 3: the tail was cut"):
        _append(store, 1, first=6)
    # ... by a lean group commit too (the records of reads)
    with pytest.raises(AuditChainError, match="names record 5, but the newest record is 3"):
        store._write_lean_sync(lambda t: append_records(t, [_event(6)]))
    # Nothing was appended, nor the head rewritten: verify still sees the cut.
    assert _seqs(store) == [1, 2, 3]
    result = store.run_sync(verify_chain)
    assert (result.ok, result.reason) == (False, "records 4..5 are missing")
    # kcm-core's start (and `kcm core init`) refuse with the same line.
    with pytest.raises(AuditChainError, match="names record 5, but the newest record is 3"):
        store.run_sync(lambda s: key_chain(s, by="kcm-core"))


def test_a_missing_forged_or_stale_head_is_refused(store: Store) -> None:
    _append(store, 3)
    genuine = store.run_sync(lambda s: get_meta(s, HEAD_META_KEY))
    store.run_sync(lambda s: s.execute(delete(Meta).where(Meta.key == HEAD_META_KEY)))
    with pytest.raises(AuditChainError, match=r"head marker is missing, but there are records "
                                              r"\(up to 3\)"):
        _append(store, 1, first=4)
    seq, digest, _ = genuine.split(":")
    store.run_sync(lambda s: set_meta(s, HEAD_META_KEY, f"{seq}:{digest}:{'00' * 32}"))
    with pytest.raises(AuditChainError, match=r"head marker \(record 3\) fails its MAC"):
        _append(store, 1, first=4)
    store.run_sync(lambda s: set_meta(s, HEAD_META_KEY, f"{seq}:{'11' * 32}:{'00' * 32}"))
    with pytest.raises(AuditChainError, match="names record 3 with another digest"):
        _append(store, 1, first=4)
    store.run_sync(lambda s: set_meta(s, HEAD_META_KEY, "garbage"))
    with pytest.raises(AuditChainError, match="is not SEQ:DIGEST:MAC"):
        _append(store, 1, first=4)
    # The genuine head put back: appends go on, and the chain verifies.
    store.run_sync(lambda s: set_meta(s, HEAD_META_KEY, genuine))
    _append(store, 1, first=4)
    assert store.run_sync(verify_chain).ok


def test_every_record_deleted_with_the_head_kept_is_refused(store: Store) -> None:
    _append(store, 2)
    store.run_sync(lambda s: s.execute(delete(AuditLog)))
    with pytest.raises(AuditChainError, match="names a record, but there is none"):
        _append(store, 1)
    with pytest.raises(AuditChainError, match="names a record, but there is none"):
        store.run_sync(lambda s: key_chain(s, by="kcm-core"))


def test_a_new_log_and_a_transaction_whose_own_head_lags_are_appended_to(
        store: Store) -> None:
    """The first record of an empty log (no head yet) is appended; so is a record after a
    savepoint of the same transaction rolled back, when the head still names the record
    before this transaction's (it is written at the commit)."""
    assert store.run_sync(lambda s: key_chain(s, by="kcm-core")) is None  # empty: fine

    def group(session) -> None:
        append_audit(session, _event(1))
        with pytest.raises(RuntimeError), savepoint(session):
            append_audit(session, _event(2))
            raise RuntimeError("the request failed")
        append_audit(session, _event(3))  # the tail read again: records 1, the head: none

    store.run_sync(group)
    _append(store, 1, first=4)
    assert store.run_sync(lambda s: list(s.scalars(
        select(AuditLog.operation).order_by(AuditLog.seq)))) == ["Op1", "Op3", "Op4"]
    assert store.run_sync(verify_chain).ok


def test_an_upgraded_unkeyed_chain_is_still_anchored_and_appended_to(tmp_path: Path) -> None:
    """A database of schema 0001 (head in the unkeyed form) is anchored once, then appended
    to as any other."""
    url = f"sqlite:///{tmp_path / 'legacy.db'}"
    write_legacy_chain(url, 3)
    ksi = Store(url)
    ksi.audit_key = AUDIT_KEY
    try:
        anchor = ksi.run_sync(lambda s: key_chain(s, by="kcm-core"))
        assert anchor is not None and anchor.seq == 4
        _append(ksi, 2, first=5)
        result = ksi.run_sync(verify_chain)
        assert (result.ok, result.records_checked, result.unkeyed_records) == (True, 6, 3)
    finally:
        ksi.stopService()


def test_kcm_core_init_and_an_operator_command_refuse_a_cut_tail(
        deployment: Path, capsys) -> None:  # noqa: F811
    c = ("-c", str(deployment))
    database = deployment.parent / "kcm.db"
    with sqlite3.connect(database) as connection:
        newest = connection.execute("SELECT max(seq) FROM audit_log").fetchone()[0]
        connection.execute("DELETE FROM audit_log WHERE seq = ?", (newest,))
    line = (f"the audit head marker names record {newest}, but the newest record is "
            f"{newest - 1}: the tail was cut back, or records were added without the audit "
            "key; run `kcm audit verify`\n")
    assert kcm(capsys, "core", "init", *c) == (2, "", f"kcm core init: error: {line}")
    status, _, err = kcm(capsys, "core", "tenant", "add", "more", *c)
    assert status != 0 and line.strip() in err
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT max(seq) FROM audit_log").fetchone()[0] == newest - 1


# 2. Client text is bounded in the record and in the log line -------------------------------

def test_long_strings_in_detail_are_cut_in_the_record_and_its_log_event(store: Store) -> None:
    huge = "A" * 1_000_000
    with capturedLogs() as events:
        row = store.run_sync(lambda s: append_audit(s, _event(1, detail={
            "interop": huge, "nested": [{"x": huge, "short": "ok"}], "n": 3})))
    cut = f"{'A' * DETAIL_TEXT_LIMIT}... (1000000 characters)"
    stored = json.loads(store.run_sync(lambda s: s.scalar(select(AuditLog.detail))))
    assert stored == {"interop": cut, "nested": [{"x": cut, "short": "ok"}], "n": 3}
    assert json.loads(row.detail) == stored
    [logged] = [e for e in events if e.get("log_namespace") == "kcm.audit"]
    assert logged["detail"] == stored
    assert store.run_sync(verify_chain).ok
    # A detail within bounds is stored as it is.
    store.run_sync(lambda s: append_audit(s, _event(2, detail={"m": "B" * DETAIL_TEXT_LIMIT})))
    assert store.run_sync(lambda s: s.scalar(select(AuditLog.detail).where(
        AuditLog.seq == 2))) == json.dumps({"m": "B" * DETAIL_TEXT_LIMIT}, separators=(",", ":"))


def test_interop_identifier_and_log_message_are_cut() -> None:
    ctx = SimpleNamespace(audit_detail={})
    interop(ctx, InteropRequest(interop_function=InteropFunction.BEGIN,  # type: ignore[arg-type]
                                interop_identifier="I" * 1_000_000))
    assert ctx.audit_detail["interop"] == "BEGIN " + "I" * INTEROP_IDENTIFIER_LIMIT
    log_message(ctx, LogRequest(log_message="L" * 1_000_000))  # type: ignore[arg-type]
    assert ctx.audit_detail["log_message"] == "L" * 1024


def _event_with(fields: dict) -> dict:
    return {"log_level": LogLevel.info, "log_namespace": "kcm.audit", "log_time": 0.0,
            "log_format": "audit {seq}", "seq": 1, **fields}


def test_nested_strings_are_cut_in_json_and_text_lines() -> None:
    huge = "Z" * 1_000_000
    event = _event_with({"detail": {"a": huge, "b": [huge, 1, None], "c": {"d": huge}},
                         "object_ids": ["u1"], "plain": {"ok": "x"}})
    line = event_as_json(event)
    assert len(line) < 5 * FIELD_LIMIT
    shown = json.loads(line)
    cut = f"{'Z' * FIELD_LIMIT}... (1000000 characters)"
    assert shown["detail"] == {"a": cut, "b": [cut, 1, None], "c": {"d": cut}}
    assert shown["object_ids"] == ["u1"] and shown["plain"] == {"ok": "x"}
    assert event["detail"]["a"] is huge  # the event itself is left as it was
    text = event_as_text({**event, "log_format": "audit {seq} {detail}"})
    assert text is not None and len(text) < 5 * FIELD_LIMIT and "(1000000 characters)" in text


# 3. Audit lines whatever log_level says ------------------------------------------------------

def test_a_quieter_log_level_keeps_audit_records_and_checkpoints() -> None:
    for level in ("warn", "error", "critical"):
        out = io.StringIO()
        observer = log_observer(out, level=level)
        other = Logger(namespace="kcm.core.request_handler", observer=observer)
        audit = Logger(namespace="kcm.audit", observer=observer)
        checkpoints = Logger(namespace=checkpoint_log.namespace, observer=observer)
        other.info("dropped")
        audit.info("audit {seq}", seq=1)
        checkpoints.info("audit checkpoint {checkpoint}", checkpoint="1:ab:cd")
        audit.debug("audit debug dropped")
        other.critical("kept")
        namespaces = [line["namespace"] for line in json_lines(out.getvalue())]
        assert namespaces == ["kcm.audit", "kcm.audit.checkpoint", "kcm.core.request_handler"]
    out = io.StringIO()
    observer = log_observer(out, level="debug")
    Logger(namespace="kcm.audit", observer=observer).debug("kept at debug")
    assert len(out.getvalue().splitlines()) == 1


# 4. The operator commands' records -----------------------------------------------------------

def test_tenant_rotate_and_policy_records_say_cli_and_the_command(
        deployment: Path, capsys) -> None:  # noqa: F811
    c = ("-c", str(deployment))
    for argv in (("core", "tenant", "rotate", "demo"),
                 ("core", "policy", "--interval", "30d"),
                 ("core", "tenant", "policy", "demo", "--interval", "10d"),
                 ("core", "service", "policy", "demo", "app", "--max-uses", "5"),
                 ("core", "service", "policy", "demo", "app", "--clear"),
                 ("core", "policy", "--clear", "--overlap", "1h")):
        assert kcm(capsys, *argv, *c)[0] == 0, argv
    status, out, _ = kcm(capsys, "audit", "tail", "-n", "6", *c)
    records = json_lines(out)
    assert [(r["principal"], r["source"], r["operation"]) for r in records] == [
        ("kcm core tenant rotate", "cli", "RotateTenantKey"),
        ("kcm core policy", "cli", "SetRotationPolicy"),
        ("kcm core tenant policy", "cli", "SetRotationPolicy"),
        ("kcm core service policy", "cli", "SetRotationPolicy"),
        ("kcm core service policy", "cli", "SetRotationPolicy"),
        ("kcm core policy", "cli", "SetRotationPolicy")]
    assert [r["detail"].get("cleared") for r in records[1:]] == [None, None, None, True, True]
    assert records[4]["detail"]["max_uses"] is None  # nothing left set at that scope
    assert records[5]["detail"]["overlap"] == 3600  # cleared, then set


# 5. Unkeyed records only before the anchor -------------------------------------------------

def test_macs_stripped_from_the_first_records_of_a_keyed_database_fail_verify(
        store: Store) -> None:
    _append(store, 6)
    store.run_sync(lambda s: s.execute(update(AuditLog).where(AuditLog.seq <= 3)
                                       .values(mac=None)))
    result = store.run_sync(verify_chain)
    assert (result.ok, result.first_bad_seq, result.reason) == (
        False, 1, "records 1..3 have no MAC, and record 4, the first with one, is not the "
                  f"{KEY_CHAIN_OPERATION} record that anchors them: their MACs were removed")


def test_records_up_to_an_anchor_stripped_of_its_mac_are_not_anchored(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'legacy.db'}"
    write_legacy_chain(url, 3)
    ksi = Store(url)
    ksi.audit_key = AUDIT_KEY
    try:
        ksi.run_sync(lambda s: key_chain(s, by="kcm-core"))
        _append(ksi, 2, first=5)
        assert ksi.run_sync(verify_chain).unkeyed_records == 3
        # The anchor's MAC stripped too: the first keyed record is then an ordinary one.
        ksi.run_sync(lambda s: s.execute(update(AuditLog).where(AuditLog.seq == 4)
                                         .values(mac=None)))
        result = ksi.run_sync(verify_chain)
        assert (result.ok, result.reason) == (
            False, "records 1..4 have no MAC, and record 5, the first with one, is not the "
                   f"{KEY_CHAIN_OPERATION} record that anchors them: their MACs were removed")
    finally:
        ksi.stopService()


def test_verify_says_how_many_records_the_anchor_covers(tmp_path: Path, capsys) -> None:
    root = tmp_path
    config = root / "core.toml"
    url = f"sqlite:///{root / 'kcm.db'}"
    config.write_text(f'[core]\ndatabase = "{url}"\nl1_key_file = "{root / "l1.key"}"\n')
    write_legacy_chain(url, 2)
    assert main(["core", "init", "-c", str(config)]) == 0
    capsys.readouterr()
    assert main(["audit", "verify", "-c", str(config)]) == 0
    assert capsys.readouterr().out == (
        "audit log intact: 3 records verified; the first 2 written before the chain was "
        "keyed, checked by digest only\n")


def test_tail_lines_out_of_range_are_one_line_of_bad_input(
        deployment: Path, capsys) -> None:  # noqa: F811
    """-n of 20 digits was `error: OverflowError: Python int too large to convert to
    SQLite INTEGER`."""
    for lines in ("-1", "99999999999999999999", "1000001"):
        status, out, err = kcm(capsys, "audit", "tail", "-n", lines, "-c", str(deployment))
        assert status == 2 and "--lines must be 0 to 1000000" in out + err
        assert "Overflow" not in out + err
    assert kcm(capsys, "audit", "tail", "-n", "1000000", "-c", str(deployment))[0] == 0
