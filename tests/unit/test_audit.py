"""The hash-chained audit log: canonical digest, chain verification, audit log events."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from collections import OrderedDict
from collections.abc import Iterator

import pytest
from sqlalchemy import delete, select, update
from twisted.logger import capturedLogs, formatEvent

from kcm.core.audit import (
    AUDIT_FORMAT,
    GENESIS_DIGEST,
    HEAD_META_KEY,
    UNKEYED_META_KEY,
    AuditChainError,
    AuditEvent,
    AuditKeyMissing,
    AuditRow,
    Checkpoint,
    VerifyResult,
    append_audit,
    audit_log,
    checkpoints_in_log,
    key_chain,
    log_checkpoint,
    make_checkpoint,
    record_digest,
    verify_chain,
)
from kcm.core.keys import derive_audit_key
from kcm.core.store.engine import Store, open_engine
from kcm.core.store.migrate import upgrade
from kcm.core.store.repository import get_meta, set_meta
from kcm.core.store.schema import AuditLog, Meta
from kcm.logging import log_observer

AUDIT_KEY = derive_audit_key(bytes(range(32)))


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    upgrade(url)
    ksi = Store(url)
    ksi.audit_key = AUDIT_KEY
    yield ksi
    ksi.stopService()


def _event(**overrides: object) -> AuditEvent:
    fields: dict = {
        "principal": "spiffe://kcm.test/tenant/t1/service/pay",
        "operation": "Revoke",
        "result_status": "Success",
        "correlation_id": "c-1",
        "source": "10.0.0.7:41234",
        "tenant": "t1",
        "gateway": "spiffe://kcm.test/gateway/gw1",
        "object_ids": ("uid-1", "uid-2"),
        "detail": {"reason": "key compromise", "count": 2, "nested": {"ok": True}},
    }
    fields.update(overrides)
    return AuditEvent(**fields)


def test_digest_matches_the_documented_encoding() -> None:
    fields = {
        "seq": 1,
        "at": 1_700_000_000_000_000,
        "principal": "p\u00e9",
        "tenant": None,
        "gateway": None,
        "source": "s",
        "operation": "Create",
        "object_ids": '["u"]',
        "result_status": "Success",
        "result_reason": None,
        "correlation_id": "c",
        "detail": None,
    }
    canonical = (
        '{"at":1700000000000000,"correlation_id":"c","detail":null,"gateway":null,'
        '"object_ids":"[\\"u\\"]","operation":"Create","principal":"p\\u00e9",'
        '"result_reason":null,"result_status":"Success","seq":1,"source":"s","tenant":null,'
        '"v":1}'
    )
    expected = hashlib.sha256(GENESIS_DIGEST + canonical.encode("ascii")).digest()
    assert record_digest(GENESIS_DIGEST, **fields) == expected


def test_chain_links_each_record_to_the_previous(store: Store) -> None:
    rows = store.run_sync(
        lambda s: [
            append_audit(s, _event(correlation_id=f"c-{n}"), clock=lambda: 1.5) for n in range(3)
        ]
    )
    assert [row.seq for row in rows] == [1, 2, 3]
    assert rows[0].prev_digest == GENESIS_DIGEST
    assert rows[1].prev_digest == rows[0].digest
    assert rows[2].prev_digest == rows[1].digest
    assert rows[0].at == 1_500_000
    assert rows[0].object_ids == '["uid-1","uid-2"]'
    assert json.loads(rows[0].detail) == {
        "reason": "key compromise",
        "count": 2,
        "nested": {"ok": True},
    }
    assert store.run_sync(verify_chain) == VerifyResult(True, 3)


def test_empty_chain_verifies(store: Store) -> None:
    assert store.run_sync(verify_chain, write=False) == VerifyResult(True, 0)


@pytest.mark.parametrize(
    "overrides",
    [
        {"principal": b"spiffe://x"},
        {"tenant": b"t1"},
        {"object_ids": (b"uid",)},
        {"object_ids": "uid-1"},
        {"detail": {"material": b"\x00" * 32}},
        {"detail": {"nested": [{"k": bytearray(b"x")}]}},
        {"detail": {"key": memoryview(b"x")}},
        {"detail": {"obj": object()}},
    ],
)
def test_bytes_never_reach_the_log(store: Store, overrides: dict) -> None:
    with pytest.raises(TypeError):
        store.run_sync(lambda s: append_audit(s, _event(**overrides)))
    assert store.run_sync(verify_chain) == VerifyResult(True, 0)


def test_altered_detail_is_detected(store: Store) -> None:
    store.run_sync(lambda s: [append_audit(s, _event()) for _ in range(3)])
    store.run_sync(
        lambda s: s.execute(update(AuditLog).where(AuditLog.seq == 2).values(detail='{"x":1}'))
    )
    result = store.run_sync(verify_chain)
    assert (result.ok, result.first_bad_seq, result.records_checked) == (False, 2, 1)
    assert "digest" in result.reason


def test_recomputed_digest_fails_the_records_own_mac(store: Store) -> None:
    """An attacker who fixes up the edited record's digest is caught at that record: its MAC
    (before the chain was keyed, only the next record's prev_digest link caught it)."""
    store.run_sync(lambda s: [append_audit(s, _event()) for _ in range(3)])

    def forge(session) -> None:
        row = session.get(AuditLog, 2)
        row.result_status = "OperationFailed"
        row.digest = record_digest(
            row.prev_digest,
            **{
                name: getattr(row, name)
                for name in (
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
            },
        )

    store.run_sync(forge)
    result = store.run_sync(verify_chain)
    assert (result.ok, result.first_bad_seq) == (False, 2)
    assert "MAC" in result.reason


def _audit_events(events) -> list[dict]:
    return [e for e in events if e.get("log_namespace") == "kcm.audit"]


@pytest.mark.parametrize("detail", [
    {"reason": "key compromise", "list": ("a", 1), "nested": {"ok": True}},
    OrderedDict(reason="a dict of another type"),
    None,
])
def test_a_logged_record_carries_the_stored_rows_fields(store: Store, detail) -> None:
    """The log line is made from the record as given, not decoded from the row: it must
    say what the row's own :meth:`AuditRow.log_fields` says."""
    with capturedLogs() as events:
        row = store.run_sync(lambda s: append_audit(s, _event(detail=detail)))
    [entry] = _audit_events(events)
    logged = {key: value for key, value in entry.items() if not key.startswith("log_")}
    assert json.loads(json.dumps(logged)) == row.log_fields()


def test_a_record_is_logged_as_the_audit_logger_would_log_it(store: Store) -> None:
    """Records go to the observer without ``Logger.emit``: the event must be the one
    ``audit_log.info(AUDIT_FORMAT, **fields)`` makes, but for its time."""
    with capturedLogs() as events:
        store.run_sync(lambda s: append_audit(s, _event()))
    [ours] = _audit_events(events)
    fields = {key: value for key, value in ours.items() if not key.startswith("log_")}
    with capturedLogs() as events:
        audit_log.info(AUDIT_FORMAT, **fields)
    [theirs] = events
    assert ours.pop("log_time") <= theirs.pop("log_time")
    assert ours == theirs
    assert formatEvent(ours).startswith("audit 1: Revoke by spiffe://")


def test_records_are_logged_only_after_commit(store: Store) -> None:
    with capturedLogs() as events:
        store.run_sync(lambda s: append_audit(s, _event()))
    [entry] = _audit_events(events)
    assert entry["seq"] == 1
    assert entry["object_ids"] == ["uid-1", "uid-2"]
    assert entry["detail"]["reason"] == "key compromise"
    assert len(entry["digest"]) == 64

    class Boom(Exception):
        pass

    def append_then_fail(session) -> None:
        append_audit(session, _event())
        raise Boom

    with capturedLogs() as events, pytest.raises(Boom):
        store.run_sync(append_then_fail)
    assert _audit_events(events) == []


def test_an_audit_record_is_one_json_line_of_its_own(store: Store) -> None:
    stream = io.StringIO()
    observer = log_observer(stream, log_format="json", level="info")
    with capturedLogs() as events:
        store.run_sync(lambda s: append_audit(s, _event()))
    for event in events:
        observer(event)
    [line] = [json.loads(line) for line in stream.getvalue().splitlines()
              if json.loads(line)["namespace"] == "kcm.audit"]
    assert line["level"] == "info"
    assert line["text"].startswith("audit 1: ")
    assert line["seq"] == 1 and line["object_ids"] == ["uid-1", "uid-2"]
    assert line["detail"]["nested"] == {"ok": True}
    assert line["principal"] == "spiffe://kcm.test/tenant/t1/service/pay"


# --- the keyed chain -----------------------------------------------------------------------


def _rechain_the_old_way(session, *, strip_macs_from: int | None = None) -> None:
    """What an attacker with the database but not L1 does after editing records: recompute
    every digest, link and the head exactly as the unkeyed chain defined them (optionally
    also clearing the MACs they cannot recompute)."""
    prev = GENESIS_DIGEST
    rows = session.scalars(select(AuditLog).order_by(AuditLog.seq)).all()
    for row in rows:
        row.prev_digest = prev
        row.digest = prev = record_digest(prev, **{name: getattr(row, name)
                                                   for name in _DIGESTED})
        if strip_macs_from is not None and row.seq >= strip_macs_from:
            row.mac = None
    if rows:
        set_meta(session, HEAD_META_KEY, f"{rows[-1].seq}:{prev.hex()}")


_DIGESTED = ("seq", "at", "principal", "tenant", "gateway", "source", "operation",
             "object_ids", "result_status", "result_reason", "correlation_id", "detail")


def _append(store: Store, count: int) -> list[AuditRow]:
    return store.run_sync(lambda s: [append_audit(s, _event(correlation_id=f"c-{n}"))
                                     for n in range(count)])


def test_every_record_and_the_head_are_maced(store: Store) -> None:
    rows = _append(store, 3)
    for row in rows:
        assert row.mac == hmac.digest(AUDIT_KEY, b"kcm audit record\x00" + row.digest,
                                      hashlib.sha256)
    head = store.run_sync(lambda s: get_meta(s, HEAD_META_KEY))
    position = f"3:{rows[-1].digest.hex()}"
    mac = hmac.digest(AUDIT_KEY, b"kcm audit head\x00" + position.encode(), hashlib.sha256)
    assert head == f"{position}:{mac.hex()}"
    assert store.run_sync(lambda s: s.get(AuditLog, 2).mac) == rows[1].mac


def test_a_rewrite_recomputed_the_old_way_is_caught_at_the_first_bad_record(
        store: Store) -> None:
    _append(store, 5)
    assert store.run_sync(verify_chain) == VerifyResult(True, 5)

    def rewrite(session) -> None:
        session.get(AuditLog, 3).result_status = "OperationFailed"
        _rechain_the_old_way(session)

    store.run_sync(rewrite)
    result = store.run_sync(verify_chain)
    assert (result.ok, result.first_bad_seq, result.records_checked) == (False, 3, 2)
    assert "MAC does not match" in result.reason


@pytest.mark.parametrize("strip_from", [3, 1])
def test_stripping_the_macs_is_no_way_around_them(store: Store, strip_from: int) -> None:
    """Records without a MAC may only come first, and a chain must end with a keyed one."""
    _append(store, 5)

    def rewrite(session) -> None:
        session.get(AuditLog, 4).principal = "someone else"
        _rechain_the_old_way(session, strip_macs_from=strip_from)

    store.run_sync(rewrite)
    result = store.run_sync(verify_chain)
    if strip_from == 3:
        assert (result.ok, result.first_bad_seq) == (False, 3)
        assert "has no MAC, but an earlier record has one" in result.reason
    else:
        assert (result.ok, result.first_bad_seq) == (False, 1)
        assert "no record is keyed" in result.reason


def test_another_key_verifies_nothing(store: Store) -> None:
    _append(store, 2)
    result = store.run_sync(lambda s: verify_chain(s, audit_key=derive_audit_key(bytes(32))))
    assert (result.ok, result.first_bad_seq) == (False, 1)


def test_without_the_audit_key_nothing_is_written_or_verified(store: Store) -> None:
    store.audit_key = None
    with pytest.raises(AuditKeyMissing):
        store.run_sync(lambda s: append_audit(s, _event()))
    with pytest.raises(AuditKeyMissing):
        store.run_sync(verify_chain)
    # ... unless the caller gives it.
    store.run_sync(lambda s: append_audit(s, _event(), audit_key=AUDIT_KEY))
    assert store.run_sync(lambda s: verify_chain(s, audit_key=AUDIT_KEY)).ok


def test_a_tail_cut_back_to_an_earlier_record_fails_the_head_mac(store: Store) -> None:
    rows = _append(store, 5)

    def cut(session) -> None:
        session.execute(delete(AuditLog).where(AuditLog.seq > 3))
        set_meta(session, HEAD_META_KEY, f"3:{rows[2].digest.hex()}:{rows[2].mac.hex()}")

    store.run_sync(cut)
    result = store.run_sync(verify_chain)
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "head marker fails its MAC" in result.reason


# --- records past the head marker ------------------------------------------------------------


def _insert_past_head(session, *, mac: bytes | None | str = "genuine") -> None:
    """Append a record straight to the table, the head marker left as it was."""
    last = session.scalars(select(AuditLog).order_by(AuditLog.seq.desc()).limit(1)).one()
    fields = {"seq": last.seq + 1, "at": last.at + 1, "principal": "FORGED", "tenant": None,
              "gateway": None, "source": "", "operation": "Destroy", "object_ids": "[]",
              "result_status": "Success", "result_reason": None, "correlation_id": "x",
              "detail": None}
    digest = record_digest(last.digest, **fields)
    if mac == "genuine":
        mac = hmac.digest(AUDIT_KEY, b"kcm audit record\x00" + digest, hashlib.sha256)
    session.add(AuditLog(**fields, prev_digest=last.digest, digest=digest, mac=mac))


@pytest.mark.parametrize(("mac", "reason"), [
    (b"\0" * 32, "MAC does not match"),
    (None, "the record, past the head, has no MAC"),
])
def test_a_record_past_the_head_is_verified_too(store: Store, mac: bytes | None,
                                               reason: str) -> None:
    _append(store, 3)
    store.run_sync(lambda s: _insert_past_head(s, mac=mac))
    result = store.run_sync(verify_chain)
    assert (result.ok, result.first_bad_seq, result.records_checked) == (False, 4, 3)
    assert result.reason.startswith(reason)


def test_genuine_records_past_a_head_that_stays_behind_fail(store: Store) -> None:
    """Records past the head that verify, under a head that still names an earlier record
    when read again: the tail was cut back to them under an older head (a writer commits a
    head naming its records with them)."""
    _append(store, 3)
    store.run_sync(lambda s: _insert_past_head(s))
    result = store.run_sync(verify_chain)
    assert (result.ok, result.first_bad_seq, result.records_checked) == (False, 4, 4)
    assert result.reason.startswith("records 4..4 follow the head marker")


def test_a_head_naming_record_0_is_not_genuine(store: Store) -> None:
    _append(store, 2)
    store.run_sync(lambda s: set_meta(s, HEAD_META_KEY, f"0:{'00' * 32}:{'00' * 32}"))
    result = store.run_sync(verify_chain)
    assert (result.ok, result.first_bad_seq) == (False, 0)
    assert "head marker fails its MAC" in result.reason


# --- records written before the chain was keyed ---------------------------------------------


def write_legacy_chain(url: str, count: int, *, upgraded: bool = True) -> bytes:
    """A database of schema 0001 holding ``count`` records as kcm-core wrote them before the
    chain was keyed (no MAC column, head ``SEQ:DIGEST``), then (unless not ``upgraded``)
    upgraded to the newest schema, as an upgraded deployment's is; the newest record's
    digest."""
    upgrade(url, "0001")
    engine = open_engine(url)
    prev = GENESIS_DIGEST
    try:
        with engine.begin() as connection:
            for seq in range(1, count + 1):
                values = {"seq": seq, "at": seq, "principal": "p", "tenant": "t1",
                          "gateway": None, "source": "s", "operation": "Create",
                          "object_ids": f'["u{seq}"]', "result_status": "Success",
                          "result_reason": None, "correlation_id": f"c{seq}", "detail": None}
                digest = record_digest(prev, **values)
                connection.execute(AuditLog.__table__.insert().values(
                    **values, prev_digest=prev, digest=digest))
                prev = digest
            if count:
                connection.execute(Meta.__table__.insert().values(
                    key=HEAD_META_KEY, value=f"{count}:{prev.hex()}"))
    finally:
        engine.dispose()
    if upgraded:
        upgrade(url)
    return prev


@pytest.fixture
def legacy_store(tmp_path) -> Iterator[Store]:
    """A store upgraded from schema 0001 with three unkeyed records."""
    url = f"sqlite:///{tmp_path / 'legacy.db'}"
    write_legacy_chain(url, 3)
    ksi = Store(url)
    ksi.audit_key = AUDIT_KEY
    yield ksi
    ksi.stopService()


def test_unkeyed_records_are_anchored_by_the_first_keyed_one(legacy_store: Store) -> None:
    store = legacy_store
    assert store.run_sync(lambda s: get_meta(s, UNKEYED_META_KEY)) == store.run_sync(
        lambda s: get_meta(s, HEAD_META_KEY))  # what migration 0002 found
    result = store.run_sync(verify_chain)
    assert (result.ok, result.first_bad_seq) == (False, 1)
    assert "start kcm-core or run `kcm core init`" in result.reason

    anchor = store.run_sync(lambda s: key_chain(s, by="kcm-core", clock=lambda: 7.0))
    assert (anchor.seq, anchor.operation, anchor.principal) == (4, "KeyAuditChain", "kcm-core")
    assert json.loads(anchor.detail) == {"unkeyed_records": 3}
    assert store.run_sync(lambda s: key_chain(s, by="kcm-core")) is None  # once only
    assert store.run_sync(lambda s: get_meta(s, UNKEYED_META_KEY)) is None
    _append(store, 1)
    assert store.run_sync(verify_chain) == VerifyResult(True, 5, unkeyed_records=3)

    # The unkeyed records can still be rewritten and their digests recomputed, but the first
    # keyed record MACs the last of those digests.
    def rewrite(session) -> None:
        session.get(AuditLog, 2).operation = "Get"
        _rechain_the_old_way(session)

    store.run_sync(rewrite)
    result = store.run_sync(verify_chain)
    assert (result.ok, result.first_bad_seq) == (False, 4)


@pytest.mark.parametrize("head", ["deleted", "unkeyed form"])
def test_a_chain_stripped_of_its_macs_is_never_anchored(store: Store, head: str) -> None:
    """Someone with the database but not L1 rewrites a record, recomputes every digest,
    strips every MAC and deletes the head (or writes it as the unkeyed chain did): the
    chain was keyed from the start, so nothing anchors it and verify gives no advice that
    would."""
    _append(store, 4)

    def forge(session) -> None:
        session.get(AuditLog, 2).principal = "someone else"
        _rechain_the_old_way(session, strip_macs_from=1)
        if head == "deleted":
            session.execute(delete(Meta).where(Meta.key == HEAD_META_KEY))

    store.run_sync(forge)
    with pytest.raises(AuditChainError, match=r"record \(4\) has no MAC and is not due for "
                                              r"anchoring .*run `kcm audit verify`"):
        store.run_sync(lambda s: key_chain(s, by="kcm-core"))
    assert store.run_sync(lambda s: s.get(AuditLog, 5)) is None  # nothing appended
    result = store.run_sync(verify_chain)
    assert not result.ok
    assert "kcm core init" not in result.reason and "kcm-core" not in result.reason
    if head == "unkeyed form":
        assert result.reason == "no record is keyed: records 1..4 have no MAC (their MACs " \
                                "were removed)"


def test_no_appender_but_the_anchor_follows_a_record_without_a_mac(store: Store) -> None:
    """A chain stripped of its MACs is not anchored by any record appended after it: a
    request's, a lean group commit's, or an operator command's (``kcm core tenant add``),
    so the forgery never verifies."""
    from kcm.cli.core_cmd import ADD_TENANT_OPERATION, _audit_created
    from kcm.core.audit import append_records

    _append(store, 4)

    def forge(session) -> None:
        session.get(AuditLog, 2).principal = "someone else"
        _rechain_the_old_way(session, strip_macs_from=1)

    store.run_sync(forge)
    appenders = [
        lambda: store.run_sync(lambda s: _audit_created(
            s, "kcm core tenant add", ADD_TENANT_OPERATION, "t9", "uid-l2", {"level": "L2"})),
        lambda: store.run_sync(lambda s: append_audit(s, AuditEvent(
            principal="op:test", operation="TEST", result_status="SUCCESS",
            correlation_id="c"))),
        lambda: store._write_lean_sync(lambda t: append_records(t, [AuditEvent(
            principal="op:test", operation="TEST", result_status="SUCCESS",
            correlation_id="c")])),
    ]
    for append in appenders:
        with pytest.raises(AuditChainError, match=r"record \(4\) has no MAC"):
            append()
    assert store.run_sync(lambda s: s.get(AuditLog, 5)) is None
    assert not store.run_sync(verify_chain).ok


def test_no_record_is_appended_under_another_databases_audit_key(store: Store) -> None:
    """Whoever holds another L1 (a wrong key file given to a command) cannot extend the
    chain: its records would never verify. The newest record's MAC is checked when a
    transaction first reads it, by a session's appends and a lean group commit's."""
    from kcm.core.audit import append_records

    _append(store, 2)
    store.audit_key = derive_audit_key(bytes(32))
    appenders = [
        lambda: store.run_sync(lambda s: append_audit(s, _event())),
        lambda: store._write_lean_sync(lambda t: append_records(t, [_event()])),
    ]
    for append in appenders:
        with pytest.raises(AuditChainError, match=r"newest audit record \(2\) fails its MAC "
                                                  "under this audit key"):
            append()
    store.audit_key = AUDIT_KEY
    assert store.run_sync(lambda s: s.get(AuditLog, 3)) is None
    _append(store, 1)
    assert store.run_sync(verify_chain) == VerifyResult(True, 3)


def test_a_chain_an_upgrade_found_is_anchored_before_anything_else(
        legacy_store: Store) -> None:
    with pytest.raises(AuditChainError, match="start kcm-core or run `kcm core init` first"):
        legacy_store.run_sync(lambda s: append_audit(s, AuditEvent(
            principal="op:test", operation="TEST", result_status="SUCCESS",
            correlation_id="c")))
    assert legacy_store.run_sync(lambda s: key_chain(s, by="kcm-core")) is not None
    _append(legacy_store, 1)
    assert legacy_store.run_sync(verify_chain).ok


def test_an_anchored_chain_stripped_again_is_not_anchored_again(legacy_store: Store) -> None:
    """The anchoring happens once: stripping the anchor's MAC too (head back in its unkeyed
    form) brings the chain back to no anchorable state."""
    store = legacy_store
    store.run_sync(lambda s: key_chain(s, by="kcm-core"))
    _append(store, 1)
    store.run_sync(lambda s: _rechain_the_old_way(s, strip_macs_from=1))
    with pytest.raises(AuditChainError):
        store.run_sync(lambda s: key_chain(s, by="kcm-core"))
    assert "MACs were removed" in store.run_sync(verify_chain).reason


def test_an_empty_or_keyed_chain_needs_no_anchor(store: Store) -> None:
    assert store.run_sync(lambda s: key_chain(s, by="kcm-core")) is None
    _append(store, 1)
    assert store.run_sync(lambda s: key_chain(s, by="kcm-core")) is None
    assert store.run_sync(verify_chain) == VerifyResult(True, 1)


# --- checkpoints ---------------------------------------------------------------------------


def test_a_checkpoint_macs_the_head(store: Store) -> None:
    empty = store.run_sync(make_checkpoint, write=False)
    assert (empty.seq, empty.digest) == (0, GENESIS_DIGEST)
    rows = _append(store, 3)
    checkpoint = store.run_sync(make_checkpoint, write=False)
    assert (checkpoint.seq, checkpoint.digest) == (3, rows[-1].digest)
    position = f"3:{rows[-1].digest.hex()}"
    assert checkpoint.mac == hmac.digest(AUDIT_KEY, b"kcm audit checkpoint\x00"
                                         + position.encode(), hashlib.sha256)
    assert str(checkpoint) == f"{position}:{checkpoint.mac.hex()}"
    assert Checkpoint.parse(str(checkpoint)) == checkpoint
    assert checkpoint.genuine(AUDIT_KEY)
    assert not checkpoint.genuine(derive_audit_key(bytes(32)))
    result = store.run_sync(lambda s: verify_chain(s, checkpoints=[empty, checkpoint]))
    assert result == VerifyResult(True, 3, checkpoints_matched=2)


@pytest.mark.parametrize("text", ["3", "3:abcd:ef", "x:" + "00" * 32 + ":" + "00" * 32,
                                  "3:" + "00" * 32, "-1:" + "00" * 32 + ":" + "00" * 32])
def test_malformed_checkpoints_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="SEQ:DIGEST:MAC"):
        Checkpoint.parse(text)


def test_a_rollback_to_an_earlier_genuine_state_is_caught_only_by_a_checkpoint(
        store: Store) -> None:
    """Someone with the database saved it (or its head) at record 3, and restores it after
    record 5 was checkpointed: every MAC in it is genuine, only the checkpoint tells."""
    _append(store, 3)
    saved_head = store.run_sync(lambda s: get_meta(s, HEAD_META_KEY))
    _append(store, 2)
    checkpoint = store.run_sync(make_checkpoint, write=False)

    def roll_back(session) -> None:
        session.execute(delete(AuditLog).where(AuditLog.seq > 3))
        set_meta(session, HEAD_META_KEY, saved_head)

    store.run_sync(roll_back)
    assert store.run_sync(verify_chain) == VerifyResult(True, 3)
    result = store.run_sync(lambda s: verify_chain(s, checkpoints=[checkpoint]))
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "records 4..5 were deleted" in result.reason

    # Restored and written to again: the chain goes past the checkpoint, but not through it.
    _append(store, 2)
    result = store.run_sync(lambda s: verify_chain(s, checkpoints=[checkpoint]))
    assert (result.ok, result.first_bad_seq) == (False, 5)
    assert "differs from a checkpoint" in result.reason


def test_a_forged_checkpoint_is_not_genuine(store: Store) -> None:
    _append(store, 2)
    checkpoint = store.run_sync(make_checkpoint, write=False)
    forged = Checkpoint(1, checkpoint.digest, checkpoint.mac)
    result = store.run_sync(lambda s: verify_chain(s, checkpoints=[forged]))
    assert (result.ok, result.first_bad_seq) == (False, None)
    assert "does not verify under this L1 key" in result.reason


def test_only_a_genuine_head_is_checkpointed(store: Store) -> None:
    rows = _append(store, 3)
    store.run_sync(lambda s: set_meta(s, HEAD_META_KEY, f"2:{rows[1].digest.hex()}:"
                                                         + "00" * 32))
    with pytest.raises(AuditChainError, match="fails its MAC"):
        store.run_sync(make_checkpoint, write=False)
    store.run_sync(lambda s: _rechain_the_old_way(s))
    with pytest.raises(AuditChainError, match="not keyed"):
        store.run_sync(make_checkpoint, write=False)


def test_checkpoints_are_read_back_from_either_log_format(store: Store) -> None:
    _append(store, 2)
    made = [store.run_sync(make_checkpoint, write=False)]
    _append(store, 1)
    made.append(store.run_sync(make_checkpoint, write=False))
    for log_format in ("json", "text"):
        stream = io.StringIO()
        observer = log_observer(stream, log_format=log_format, level="info")
        with capturedLogs() as events:
            _append(store, 1)  # an audit event between them
            for checkpoint in made:
                log_checkpoint(checkpoint)
        for logged in events:
            observer(logged)
        assert checkpoints_in_log(io.StringIO(stream.getvalue())) == made


def test_a_checkpoint_event_carries_its_parts(store: Store) -> None:
    _append(store, 1)
    checkpoint = store.run_sync(make_checkpoint, write=False)
    stream = io.StringIO()
    observer = log_observer(stream, log_format="json", level="info")
    with capturedLogs() as events:
        log_checkpoint(checkpoint)
    for logged in events:
        observer(logged)
    [line] = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["namespace"] == "kcm.audit.checkpoint" and line["level"] == "info"
    assert line["text"] == f"audit checkpoint {checkpoint}"
    assert (line["seq"], line["digest"], line["mac"], line["checkpoint"]) == (
        1, checkpoint.digest.hex(), checkpoint.mac.hex(), str(checkpoint))


def test_a_malformed_checkpoint_line_names_its_line() -> None:
    lines = ['{"namespace": "kcm.audit", "text": "audit 1"}', "not json",
             '{"namespace": "kcm.audit.checkpoint", "checkpoint": "1:zz:zz"}']
    with pytest.raises(ValueError, match="line 3"):
        checkpoints_in_log(lines)


def test_a_transaction_after_this_processs_own_does_not_check_its_tail_again(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The newest record and head marker a transaction reads are, in a process that wrote
    them, the ones it wrote: their checks (its MAC under this key, the head's MAC and
    position) are functions of those values and pass, so they are not computed again. Any
    other value is checked: a head rewritten, a tail whose MAC was altered, a key changed."""
    from kcm.core import audit
    from kcm.core.audit import append_records

    _append(store, 2)
    macs: list[bytes] = []
    real_mac = audit._mac
    monkeypatch.setattr(audit, "_mac", lambda key, label, message: (
        macs.append(label), real_mac(key, label, message))[1])
    store.run_sync(lambda s: append_audit(s, _event()))
    store._write_lean_sync(lambda t: append_records(t, [_event(), _event()]))
    # Each transaction: the records' MACs and its head's, nothing checked again.
    assert len(macs) == 5 and macs.count(audit._HEAD_LABEL) == 2

    def rewrite_head(session) -> None:  # a genuine head, written some other way
        rows = session.execute(select(AuditLog.seq, AuditLog.digest)
                               .order_by(AuditLog.seq.desc()).limit(1)).one()
        set_meta(session, HEAD_META_KEY, audit.head_marker(AUDIT_KEY, rows[0], rows[1]) + " ")

    store.run_sync(rewrite_head)
    macs.clear()
    store.run_sync(lambda s: append_audit(s, _event()))
    assert len(macs) == 4  # its tail's MAC and the head's checked, then its own two

    def alter_tail_mac(session) -> None:
        newest = session.scalar(select(AuditLog.seq).order_by(AuditLog.seq.desc()).limit(1))
        session.execute(update(AuditLog).where(AuditLog.seq == newest).values(mac=b"\0" * 32))

    store.run_sync(alter_tail_mac)
    for append in (lambda: store.run_sync(lambda s: append_audit(s, _event())),
                   lambda: store._write_lean_sync(lambda t: append_records(t, [_event()]))):
        with pytest.raises(AuditChainError, match=r"newest audit record \(6\) fails its MAC"):
            append()


def test_a_tail_checked_again_unless_its_seq_digest_mac_head_and_key_are_those_passed(
        store: Store) -> None:
    """The checks a transaction's first append skips for the values this process wrote
    are skipped for exactly those: a tail whose digest or seq alone was changed (its MAC
    kept), or read under another key, is checked, and refused, as before."""
    from kcm.core import audit

    _append(store, 2)
    tail = store.run_sync(lambda s: tuple(s.execute(
        select(AuditLog.seq, AuditLog.digest, AuditLog.mac)
        .order_by(AuditLog.seq.desc()).limit(1)).one()))
    head = store.run_sync(lambda s: get_meta(s, HEAD_META_KEY))
    seq, digest, mac = tail[0], bytes(tail[1]), bytes(tail[2])
    assert audit._passed == (AUDIT_KEY, seq, digest, mac, head)
    audit._refuse_bad_tail((seq, digest, mac), head, AUDIT_KEY, with_head=True)
    other_digest = bytes([digest[0] ^ 1]) + digest[1:]
    for bad, with_head in (((seq, other_digest, mac), False), ((seq, other_digest, mac), True),
                           ((seq + 1, digest, mac), True)):
        with pytest.raises(AuditChainError):
            audit._refuse_bad_tail(bad, head, AUDIT_KEY, with_head=with_head)
        audit._passed = (AUDIT_KEY, seq, digest, mac, head)
    other_key = derive_audit_key(bytes(range(1, 33)))
    with pytest.raises(AuditChainError, match="fails its MAC"):
        audit._refuse_bad_tail((seq, digest, mac), head, other_key, with_head=False)
