"""Lean group commits (audit records without an ORM session) and storeless requests, on a
real store (a SQLite file, and PostgreSQL for the store's part): the records chain with
those of sessions, the head marker names the newest, a failed lean transaction leaves
nothing, and a Discover Versions or a Query is answered without a transaction, its records
committed before the answer."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from sqlalchemy import select

from kcm.core import request_handler
from kcm.core.audit import (
    AuditEvent,
    AuditKeyMissing,
    append_audit,
    append_records,
    make_checkpoint,
    verify_chain,
)
from kcm.core.request_handler import STORELESS_MAX_BYTES, STORELESS_MAX_ITEMS, _storeless
from kcm.core.store.engine import Store
from kcm.core.store.schema import AuditLog
from kcm.kmip.enums import ObjectType, Operation, QueryFunction, ResultReason, ResultStatus
from kcm.kmip.messages import decode_response
from kcm.kmip.payloads import CreateRequest, DiscoverVersionsRequest, QueryRequest
from kcm.kmip.tags import Tag
from kcm.testing import requests as kmip
from kcm.ttlv import decode
from tests.core_support import CoreHarness
from tests.integration.test_core_handler import AES256, wire
from tests.integration.test_store import db_url, store  # noqa: F401 (fixtures: both databases)


def event(n: int) -> AuditEvent:
    return AuditEvent(principal="op:test", operation=f"TEST{n}", result_status="SUCCESS",
                      correlation_id=f"c{n}", object_ids=(f"uid-{n}",), detail={"n": n})


def operations(ksi: Store) -> list[str]:
    return ksi.run_sync(lambda s: list(s.scalars(
        select(AuditLog.operation).order_by(AuditLog.seq))), write=False)


def test_lean_records_chain_with_session_records_and_the_head_names_the_newest(
        store: Store) -> None:  # noqa: F811
    # the chain's first record through a lean transaction: the head marker is inserted
    rows = store._write_lean_sync(lambda t: append_records(t, [event(1), event(2)]))
    assert [r.seq for r in rows] == [1, 2]
    assert rows[1].prev_digest == rows[0].digest
    store.run_sync(lambda s: append_audit(s, event(3)))
    store._write_lean_sync(lambda t: (append_records(t, [event(4)]),
                                      append_records(t, [event(5), event(6)])))
    assert operations(store) == [f"TEST{n}" for n in range(1, 7)]
    assert store.run_sync(verify_chain).ok
    # the head marker, written once before the lean commit, names record 6
    assert store.run_sync(make_checkpoint).seq == 6


def test_a_lean_transaction_that_fails_leaves_no_record(store: Store) -> None:  # noqa: F811
    store._write_lean_sync(lambda t: append_records(t, [event(1)]))

    def fails(transaction):
        append_records(transaction, [event(2)])
        raise OSError("disk I/O error")

    with pytest.raises(OSError):
        store._write_lean_sync(fails)
    store._write_lean_sync(lambda t: append_records(t, [event(3)]))
    assert operations(store) == ["TEST1", "TEST3"]
    assert store.run_sync(verify_chain).ok
    assert store.run_sync(make_checkpoint).seq == 2


def test_a_bad_record_is_refused_before_anything_is_written(store: Store) -> None:  # noqa: F811
    bad = AuditEvent(principal=b"op:test",  # type: ignore[arg-type]
                     operation="X", result_status="SUCCESS", correlation_id="c")

    def mixed(transaction):
        with pytest.raises(TypeError):
            append_records(transaction, [event(1), bad])
        return append_records(transaction, [event(2)])

    assert [r.seq for r in store._write_lean_sync(mixed)] == [1]
    assert operations(store) == ["TEST2"]
    store.audit_key = None
    with pytest.raises(AuditKeyMissing):
        store._write_lean_sync(lambda t: append_records(t, [event(3)]))


def test_lean_commits_log_their_records_and_count_them(store: Store, monkeypatch) -> None:  # noqa: F811
    from kcm.core import audit

    logged, counted = [], []
    monkeypatch.setattr(audit, "_log_record", logged.append)
    store.on_audit_written = counted.append
    store._write_lean_sync(lambda t: append_records(t, [event(1), event(2)]))
    assert [f["operation"] for f in logged] == ["TEST1", "TEST2"]
    assert [f["seq"] for f in logged] == [1, 2] and counted == [2]
    with pytest.raises(OSError):
        store._write_lean_sync(lambda t: (append_records(t, [event(3)]),
                                          (_ for _ in ()).throw(OSError("lost"))))
    assert len(logged) == 2 and counted == [2]  # a record rolled back is never logged


@pytest_twisted.ensureDeferred
async def test_storeless_requests_run_without_a_transaction_and_their_records_commit_lean(
        core: CoreHarness, monkeypatch) -> None:
    handler, kinds = counting_groups(core, monkeypatch)
    ksi = core.store

    def no_transaction(*_args, **_kwargs):
        raise AssertionError("a storeless request opened a transaction")

    before = len(operations_of(core))
    monkeypatch.setattr(ksi, "run_sync", no_transaction)
    discover = await handler.handle_as(
        wire((Operation.DISCOVER_VERSIONS, DiscoverVersionsRequest())), core.caller())
    query = await handler.handle_as(
        wire((Operation.QUERY, QueryRequest(query_functions=[QueryFunction.QUERY_OPERATIONS])),
             (Operation.DISCOVER_VERSIONS, DiscoverVersionsRequest())), core.caller())
    monkeypatch.undo()
    for answer, count in ((discover, 1), (query, 2)):
        items = decode_response(decode(answer)).batch_items
        assert [i.result_status for i in items] == [ResultStatus.SUCCESS] * count
    assert kinds == ["lean", "lean"]
    assert operations_of(core)[before:] == ["DISCOVER_VERSIONS", "QUERY", "DISCOVER_VERSIONS"]
    assert core.store.run_sync(verify_chain).ok


@pytest_twisted.ensureDeferred
async def test_a_batch_that_also_creates_is_not_storeless(core: CoreHarness) -> None:
    before = len(operations_of(core))
    answer = await core.handler.handle_as(wire(
        (Operation.DISCOVER_VERSIONS, DiscoverVersionsRequest()),
        (Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                         attributes=AES256))), core.caller())
    items = decode_response(decode(answer)).batch_items
    assert [i.result_status for i in items] == [ResultStatus.SUCCESS] * 2
    assert operations_of(core)[before:] == ["DISCOVER_VERSIONS", "CREATE"]
    assert core.store.run_sync(verify_chain).ok


def operations_of(core: CoreHarness) -> list[str]:
    return operations(core.store)


def counting_groups(core: CoreHarness, monkeypatch) -> tuple[request_handler.CoreRequestHandler,
                                                              list[str]]:
    """A handler on ``core``'s store whose group commits say which kind they are."""
    ksi, kinds = core.store, []
    write, write_lean = ksi.write, ksi.write_lean
    monkeypatch.setattr(ksi, "write", lambda fn: (kinds.append("session"), write(fn))[1])
    monkeypatch.setattr(ksi, "write_lean", lambda fn: (kinds.append("lean"), write_lean(fn))[1])
    return request_handler.CoreRequestHandler(ksi, core.keyring, clock=time.time), kinds


@pytest_twisted.ensureDeferred
async def test_a_read_only_request_runs_in_a_lean_group(core: CoreHarness,
                                                       monkeypatch) -> None:
    created = await core.handler.handle_as(kmip.request(kmip.create_managed()), core.caller())
    uid = kmip.response(created).batch_items[0].response_payload.unique_identifier
    handler, kinds = counting_groups(core, monkeypatch)
    before = len(operations_of(core))
    answer = await handler.handle_as(kmip.request(
        kmip.get_attributes(uid, Tag.STATE, Tag.CRYPTOGRAPHIC_LENGTH),
        kmip.get_attributes("missing", Tag.STATE)), core.caller())
    # an object of another tenant is as missing as one that never was
    other = await handler.handle_as(kmip.request(kmip.get_attributes(uid, Tag.STATE)),
                                    core.caller(other_tenant()))
    assert kinds == ["lean", "lean"]
    found, missing = kmip.response(answer).batch_items
    assert found.result_status == ResultStatus.SUCCESS
    assert [a.value.value for a in found.response_payload.attributes] == [1, 256]  # Pre-Active
    assert missing.result_status == ResultStatus.OPERATION_FAILED
    assert kmip.response(other).batch_items[0].result_reason == missing.result_reason
    assert operations_of(core)[before:] == ["GET_ATTRIBUTES"] * 3
    assert core.store.run_sync(verify_chain).ok


@pytest_twisted.ensureDeferred
async def test_a_request_that_writes_takes_a_session_group(core: CoreHarness,
                                                           monkeypatch) -> None:
    handler, kinds = counting_groups(core, monkeypatch)
    created = await handler.handle_as(kmip.request(kmip.create_managed(),
                                                   kmip.get_attributes(None, Tag.STATE)),
                                      core.caller())
    assert kinds == ["session"]
    # one the scan takes for read-only, and that writes after all, goes the general way:
    # nothing written in the lean group, then a session group
    monkeypatch.setattr(request_handler, "_reads_only", lambda _wire, _found=None: True)
    before = len(operations_of(core))
    again = await handler.handle_as(kmip.request(kmip.create_managed()), core.caller())
    assert kinds == ["session", "lean", "session"]
    for answer in (created, again):
        assert {i.result_status for i in kmip.response(answer).batch_items} == {
            ResultStatus.SUCCESS}
    assert operations_of(core)[before:] == ["CREATE"]
    assert core.store.run_sync(verify_chain).ok


def other_tenant():
    from tests.core_support import service_principal
    return service_principal("other", "app")


def test_storeless_is_picked_from_the_operations_and_the_length() -> None:
    discover = wire((Operation.DISCOVER_VERSIONS, DiscoverVersionsRequest()))
    assert _storeless(discover)
    assert _storeless(wire((Operation.QUERY, QueryRequest(query_functions=[
        QueryFunction.QUERY_OPERATIONS]))))
    create = wire((Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                                   attributes=AES256)))
    assert not _storeless(create)
    assert not _storeless(wire((Operation.DISCOVER_VERSIONS, DiscoverVersionsRequest()),
                               (Operation.CREATE, CreateRequest(
                                   object_type=ObjectType.SYMMETRIC_KEY,
                                   attributes=AES256))))
    # a Discover Versions over the length bound goes the general way, and so does a batch
    # of more items than the reactor takes (a lean group runs it on the writer)
    padded = discover + bytes(STORELESS_MAX_BYTES)
    assert not _storeless(padded)
    assert not _storeless(b"not ttlv")
    discovers = [(Operation.DISCOVER_VERSIONS, DiscoverVersionsRequest())]
    assert _storeless(wire(*discovers * STORELESS_MAX_ITEMS))
    assert not _storeless(wire(*discovers * (STORELESS_MAX_ITEMS + 1)))
    assert request_handler._reads_only(wire(*discovers * (STORELESS_MAX_ITEMS + 1)))


@pytest_twisted.ensureDeferred
async def test_a_long_storeless_batch_is_answered_in_a_lean_group(core: CoreHarness,
                                                                  monkeypatch) -> None:
    handler, kinds = counting_groups(core, monkeypatch)
    reads, read_in = [], core.store.read_in
    monkeypatch.setattr(core.store, "read_in",
                        lambda *args: (reads.append(1), read_in(*args))[1])
    queries = [(Operation.QUERY, QueryRequest(query_functions=list(QueryFunction)))]
    answer = await handler.handle_as(wire(*queries * (STORELESS_MAX_ITEMS + 2)),
                                     core.caller())
    items = kmip.response(answer).batch_items
    assert [i.result_status for i in items] == [ResultStatus.SUCCESS] * (
        STORELESS_MAX_ITEMS + 2)
    # executed on the writer thread in the lean group, not on the reactor
    assert kinds == ["lean"] and reads == [1]
    await handler.handle_as(wire(*queries * STORELESS_MAX_ITEMS), core.caller())
    assert kinds == ["lean", "lean"] and reads == [1]  # this one on the reactor
    assert core.store.run_sync(verify_chain).ok


@pytest_twisted.ensureDeferred
async def test_a_storeless_request_refused_whole_is_answered_and_audited(
        core: CoreHarness, monkeypatch) -> None:
    handler, kinds = counting_groups(core, monkeypatch)
    before = len(operations_of(core))
    unsupported = wire((Operation.DISCOVER_VERSIONS, DiscoverVersionsRequest()),
                       version=(3, 0))
    truncated = wire((Operation.DISCOVER_VERSIONS, DiscoverVersionsRequest()))[:-8]
    assert _storeless(unsupported) and _storeless(truncated)
    answers = [kmip.response(await handler.handle_as(data, core.caller()))
               for data in (unsupported, truncated)]
    assert [a.batch_items[0].result_reason for a in answers] == [
        ResultReason.UNSUPPORTED_PROTOCOL_VERSION, ResultReason.INVALID_MESSAGE]
    assert kinds == ["lean", "lean"]
    rows = core.store.run_sync(lambda s: list(s.execute(select(
        AuditLog.operation, AuditLog.result_reason).order_by(AuditLog.seq))), write=False)
    assert [tuple(r) for r in rows[before:]] == [
        ("?", "UNSUPPORTED_PROTOCOL_VERSION"), ("?", "INVALID_MESSAGE")]
    assert core.store.run_sync(verify_chain).ok


@pytest_twisted.ensureDeferred
async def test_attributes_shared_by_reads_still_show_a_state_that_time_changed(
        core: CoreHarness) -> None:
    """Read-only loads share an object's numbered attributes (its cache entry); a state an
    Activation Date moves, in memory only, is still seen by the next read."""
    from kcm.kmip.attributes import Attribute
    from kcm.kmip.enums import State

    now = [time.time()]
    handler = request_handler.CoreRequestHandler(core.store, core.keyring,
                                                 clock=lambda: now[0])
    created = await handler.handle_as(kmip.request(kmip.item(
        Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                        attributes=kmip.aes256([Attribute.of(
                                            Tag.ACTIVATION_DATE, int(now[0]) + 100)])))),
        core.caller())
    uid = kmip.response(created).batch_items[0].response_payload.unique_identifier

    async def state() -> int:
        answer = await handler.handle_as(kmip.request(kmip.get_attributes(uid, Tag.STATE)),
                                         core.caller())
        return kmip.response(answer).batch_items[0].response_payload.attributes[0].value.value

    assert [await state(), await state()] == [State.PRE_ACTIVE] * 2
    now[0] += 200
    assert [await state(), await state()] == [State.ACTIVE] * 2


@pytest_twisted.ensureDeferred
async def test_a_lean_group_on_the_writer_logs_its_records_after_its_answer(
        store: Store, monkeypatch) -> None:  # noqa: F811
    """On the writer thread, a lean group's records are logged once its outcome is handed
    over (while the reactor wakes up), in order, before the next group runs."""
    import threading

    from kcm.core import audit

    logged: list[int] = []
    two = threading.Event()

    def log_record(fields):
        logged.append(fields["seq"])
        if len(logged) == 3:
            two.set()

    monkeypatch.setattr(audit, "_log_record", log_record)
    store.startService()
    first = store.write_lean(lambda t: append_records(t, [event(1), event(2)]))
    second = store.write_lean(lambda t: append_records(t, [event(3)]))
    assert [r.seq for r in await first] == [1, 2]
    assert [r.seq for r in await second] == [3]
    assert two.wait(5)
    assert logged == [1, 2, 3]
