"""The hash-chained audit log: canonical digest, chain verification, audit log events."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator

import pytest
from sqlalchemy import update
from twisted.logger import capturedLogs

from kcm.core.audit import (
    GENESIS_DIGEST,
    AuditEvent,
    VerifyResult,
    append_audit,
    record_digest,
    verify_chain,
)
from kcm.core.store.engine import Store
from kcm.core.store.migrate import upgrade
from kcm.core.store.schema import AuditLog
from kcm.logging import log_observer


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    upgrade(url)
    ksi = Store(url)
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


def test_recomputed_digest_still_breaks_the_next_link(store: Store) -> None:
    """An attacker who fixes up the edited record's digest is caught by the next record."""
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
    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "prev_digest" in result.reason


def _audit_events(events) -> list[dict]:
    return [e for e in events if e.get("log_namespace") == "kcm.audit"]


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
