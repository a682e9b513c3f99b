"""kcm-core's request handler in process: real store (SQLite file), real codec and model."""

from __future__ import annotations

import json
import time

import pytest
import pytest_twisted
from sqlalchemy import select

from kcm.core import request_handler
from kcm.core.audit import verify_chain
from kcm.core.config import CoreLimits
from kcm.core.request_handler import CLIENT_GONE, CoreRequestHandler
from kcm.core.store.schema import AuditLog
from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import (
    BatchErrorContinuationOption,
    CryptographicAlgorithm,
    ObjectType,
    Operation,
    QueryFunction,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
    State,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import (
    ProtocolVersion,
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    decode_response,
    encode_request,
)
from kcm.kmip.objects import OpaqueObject
from kcm.kmip.payloads import (
    ActivateRequest,
    CreateRequest,
    DestroyRequest,
    DiscoverVersionsRequest,
    GetRequest,
    LocateRequest,
    QueryRequest,
    RegisterRequest,
    RevocationReason,
    RevokeRequest,
)
from kcm.kmip.tags import Tag
from kcm.testing.requests import create_managed, response
from kcm.testing.requests import request as request_14
from kcm.ttlv import Item, ItemType, decode, encode
from tests.core_support import CoreHarness, service_principal

AES256 = [Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
          Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256)]


def wire(*items: tuple[Operation, object], version=(2, 1), continuation=None) -> bytes:
    header = RequestHeader(protocol_version=ProtocolVersion.of(version), batch_count=len(items),
                           batch_error_continuation_option=continuation)
    batch = [RequestBatchItem(operation=op, request_payload=payload) for op, payload in items]
    return encode(encode_request(RequestMessage(header, batch)))


async def send(core: CoreHarness, data: bytes, principal=None):
    answer = await core.handler.handle_as(data, core.caller(principal))
    return decode_response(decode(answer))


def state_of(core: CoreHarness, uid: str) -> int:
    from kcm.core.store import repository
    return core.store.run_sync(lambda s: repository.get_object(s, "demo", uid).state)


@pytest_twisted.ensureDeferred
async def test_create_activate_revoke_destroy_with_id_placeholder(core: CoreHarness) -> None:
    response = await send(core, wire(
        (Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY, attributes=AES256)),
        (Operation.ACTIVATE, ActivateRequest()),
    ))
    assert [b.result_status for b in response.batch_items] == [ResultStatus.SUCCESS] * 2
    uid = response.batch_items[0].response_payload.unique_identifier
    assert response.batch_items[1].response_payload.unique_identifier == uid
    assert state_of(core, uid) == State.ACTIVE

    response = await send(core, wire((Operation.DESTROY, DestroyRequest(unique_identifier=uid))))
    item = response.batch_items[0]
    assert item.result_status == ResultStatus.OPERATION_FAILED
    assert item.result_reason == ResultReason.WRONG_KEY_LIFECYCLE_STATE

    response = await send(core, wire((Operation.DESTROY, DestroyRequest(unique_identifier=uid)),
                                     version=(1, 4)))
    assert response.batch_items[0].result_reason == ResultReason.PERMISSION_DENIED
    assert response.header.version == (1, 4)

    revoke = RevokeRequest(unique_identifier=uid, revocation_reason=RevocationReason(
        code=RevocationReasonCode.CESSATION_OF_OPERATION))
    # A Revoke leaves the (here empty) ID Placeholder as it was (KMIP 1.4 §4, 2.1 §6): the
    # Destroy names the key.
    response = await send(core, wire((Operation.REVOKE, revoke),
                                     (Operation.DESTROY, DestroyRequest(unique_identifier=uid))))
    assert [b.result_status for b in response.batch_items] == [ResultStatus.SUCCESS] * 2
    assert state_of(core, uid) == State.DESTROYED


@pytest_twisted.ensureDeferred
async def test_other_tenant_sees_nothing(core: CoreHarness) -> None:
    response = await send(core, wire(
        (Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY, attributes=AES256))))
    uid = response.batch_items[0].response_payload.unique_identifier
    response = await send(core, wire((Operation.ACTIVATE, ActivateRequest(unique_identifier=uid))),
                          principal=service_principal("other"))
    assert response.batch_items[0].result_reason == ResultReason.OBJECT_NOT_FOUND


@pytest_twisted.ensureDeferred
async def test_undo_rolls_back_and_reports_undone(core: CoreHarness) -> None:
    create = CreateRequest(object_type=ObjectType.SYMMETRIC_KEY, attributes=AES256)
    missing = ActivateRequest(unique_identifier="nope")
    response = await send(core, wire((Operation.CREATE, create), (Operation.ACTIVATE, missing),
                                     continuation=BatchErrorContinuationOption.UNDO))
    first, second = response.batch_items
    assert first.result_status == ResultStatus.OPERATION_UNDONE
    assert second.result_reason == ResultReason.OBJECT_NOT_FOUND
    from kcm.core.store import repository
    assert core.store.run_sync(lambda s: repository.locate(s, "demo", levels={None})) == []


@pytest_twisted.ensureDeferred
async def test_malformed_and_unsupported_requests_are_answered(core: CoreHarness) -> None:
    response = await send(core, b"\x42\x00\x78\x01\x00\x00\x00\x08garbage!")
    assert response.batch_items[0].result_reason == ResultReason.INVALID_MESSAGE
    response = await send(core, wire((Operation.ACTIVATE, ActivateRequest(unique_identifier="x")),
                                     version=(3, 0)))
    assert response.batch_items[0].result_reason == ResultReason.UNSUPPORTED_PROTOCOL_VERSION
    assert response.header.version == (2, 1)


@pytest_twisted.ensureDeferred
async def test_every_batch_item_and_refused_request_is_audited(core: CoreHarness) -> None:
    create = CreateRequest(object_type=ObjectType.SYMMETRIC_KEY, attributes=AES256)
    await send(core, wire((Operation.CREATE, create), (Operation.ACTIVATE, ActivateRequest())))
    await send(core, wire((Operation.ACTIVATE, ActivateRequest(unique_identifier="missing"))))
    await send(core, b"not ttlv")
    rows = core.store.run_sync(lambda s: s.scalars(select(AuditLog).order_by(AuditLog.seq)).all())
    assert [(r.operation, r.result_status, r.result_reason) for r in rows] == [
        ("CREATE", "SUCCESS", None), ("ACTIVATE", "SUCCESS", None),
        ("ACTIVATE", "OPERATION_FAILED", "OBJECT_NOT_FOUND"),
        ("?", "OPERATION_FAILED", "INVALID_MESSAGE"),
    ]
    assert rows[0].principal == "spiffe://kcm.test/tenant/demo/service/app"
    assert rows[0].source == "127.0.0.1:40000"
    assert core.store.run_sync(verify_chain).ok


@pytest_twisted.ensureDeferred
async def test_unknown_operation_is_operation_not_supported(core: CoreHarness) -> None:
    empty = Item(Tag.REQUEST_PAYLOAD, ItemType.STRUCTURE, [])
    response = await send(core, wire((0x7F, empty), (Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY, attributes=AES256)),
        continuation=BatchErrorContinuationOption.CONTINUE))
    unknown, create = response.batch_items
    assert unknown.result_reason == ResultReason.OPERATION_NOT_SUPPORTED
    assert create.result_status == ResultStatus.SUCCESS


@pytest_twisted.ensureDeferred
async def test_maximum_response_size_is_enforced(core: CoreHarness) -> None:
    header = RequestHeader(protocol_version=ProtocolVersion.of((2, 1)), batch_count=1,
                           maximum_response_size=64)
    create = CreateRequest(object_type=ObjectType.SYMMETRIC_KEY, attributes=AES256)
    request = encode(encode_request(RequestMessage(
        header, [RequestBatchItem(operation=Operation.CREATE, request_payload=create)])))
    response = await send(core, request)
    assert response.batch_items[0].result_reason == ResultReason.RESPONSE_TOO_LARGE


# The core's own limit on answers (ARCHITECTURE §12) ---------------------------------------
def queries(count: int, maximum_response_size: int | None = None) -> bytes:
    """A KMIP 2.1 batch of ``count`` Query Operations (48 bytes each; about 580 answered)."""
    header = RequestHeader(protocol_version=ProtocolVersion.of((2, 1)), batch_count=count,
                           maximum_response_size=maximum_response_size)
    query = RequestBatchItem(operation=Operation.QUERY, request_payload=QueryRequest(
        query_functions=[QueryFunction.QUERY_OPERATIONS]))
    return encode(encode_request(RequestMessage(header, [query] * count)))


def bounded_handler(core: CoreHarness, max_message_size: int) -> CoreRequestHandler:
    return CoreRequestHandler(core.store, core.keyring, clock=time.time,
                              limits=CoreLimits(max_message_size=max_message_size,
                                                max_batch_items=1000))


def test_an_answer_over_the_maximum_message_size_is_response_too_large(
        core: CoreHarness) -> None:
    handler = bounded_handler(core, 16 << 10)
    fits = handler.respond(queries(20), core.caller(), int(time.time()))  # about 12 KB
    assert {i.result_status for i in decode_response(decode(fits)).batch_items} == {
        ResultStatus.SUCCESS}
    answer = handler.respond(queries(60), core.caller(), int(time.time()))  # about 35 KB
    assert len(answer) <= 16 << 10
    items = decode_response(decode(answer)).batch_items
    assert len(items) == 60
    assert {(i.operation, i.result_reason, i.result_message) for i in items} == {
        (Operation.QUERY, ResultReason.RESPONSE_TOO_LARGE,
         "the response exceeds the server's maximum message size of 16384 bytes")}


def test_the_clients_maximum_response_size_applies_when_smaller(core: CoreHarness) -> None:
    handler = bounded_handler(core, 16 << 10)
    answer = handler.respond(queries(30, maximum_response_size=4096), core.caller(),
                             int(time.time()))
    assert {i.result_message for i in decode_response(decode(answer)).batch_items} == {
        "the response exceeds the Maximum Response Size of 4096 bytes"}


def test_an_answer_whose_failures_alone_are_too_large_is_one_failed_item(
        core: CoreHarness) -> None:
    # 300 Queries fit in a 16 KiB request; 300 Response Too Large items would not.
    handler = bounded_handler(core, 16 << 10)
    answer = handler.respond(queries(300), core.caller(), int(time.time()))
    assert len(answer) <= 16 << 10
    [item] = decode_response(decode(answer)).batch_items
    assert item.result_reason == ResultReason.RESPONSE_TOO_LARGE
    assert "300 batch items" in item.result_message


def test_an_object_over_1_mib_registered_under_a_larger_limit_reads_back(
        core: CoreHarness) -> None:
    handler = bounded_handler(core, 4 << 20)
    blob = bytes(range(256)) * 6000  # 1.5 MB
    register = RequestBatchItem(operation=Operation.REGISTER, request_payload=RegisterRequest(
        object_type=ObjectType.OPAQUE_OBJECT, attributes=[],
        object=OpaqueObject(opaque_data_type=0x80000001, opaque_data_value=blob)))
    header = RequestHeader(protocol_version=ProtocolVersion.of((2, 1)), batch_count=1)
    registered = handler.respond(encode(encode_request(RequestMessage(header, [register]))),
                                 core.caller(), int(time.time()))
    [item] = decode_response(decode(registered)).batch_items
    uid = item.response_payload.unique_identifier
    got = handler.respond(wire((Operation.GET, GetRequest(unique_identifier=uid))),
                          core.caller(), int(time.time()))
    [item] = decode_response(decode(got, max_size=len(got))).batch_items
    assert item.result_status == ResultStatus.SUCCESS, item.result_message
    assert item.response_payload.object.opaque_data_value == blob
# Bounded work, and an audit record for every request (issue 11) ----------------------------
def audit_rows(core: CoreHarness) -> list[AuditLog]:
    return core.store.run_sync(lambda s: s.scalars(select(AuditLog).order_by(AuditLog.seq)).all())


def limited(core: CoreHarness, **limits) -> CoreRequestHandler:
    return CoreRequestHandler(core.store, core.keyring, clock=time.time,
                              limits=CoreLimits(**limits))


def create_item() -> tuple[Operation, object]:
    return Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY, attributes=AES256)


@pytest_twisted.ensureDeferred
async def test_a_long_request_is_decoded_on_a_store_worker_not_on_the_writer(
        core: CoreHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer thread runs every tenant's group commits: a request of a thousand small
    attributes (or a few long ones, as here) is decoded before, in its tenant's turn on a
    store worker, and the writer only runs it. A short one is decoded on the writer."""
    import threading

    from kcm.core.request_handler import PREDECODE_BYTES

    decoded_on: list[str] = []
    real = core.handler._decode

    def recording(wire: bytes, **kwargs):
        decoded_on.append(threading.current_thread().name)
        return real(wire, **kwargs)

    monkeypatch.setattr(core.handler, "_decode", recording)
    # Two long attributes (one attribute takes at most 64 KiB: kcm.core.managed).
    texts = [Attribute.of(tag, "c" * (PREDECODE_BYTES // 2 + 64))
             for tag in (Tag.COMMENT, Tag.DESCRIPTION)]
    long = wire((Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                                 attributes=[*AES256, *texts])))
    assert len(long) > PREDECODE_BYTES
    for request in (long, wire(create_item())):
        answer = decode_response(decode(await core.handler.handle_as(request, core.caller())))
        assert answer.batch_items[0].result_status == ResultStatus.SUCCESS
    writer = f"{core.store.name}-writer"
    assert decoded_on[-1] == writer
    assert decoded_on[0] not in (writer, threading.main_thread().name)


@pytest_twisted.ensureDeferred
async def test_a_batch_over_the_limit_is_refused_without_its_items_being_read(
        core: CoreHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read-only batches with a Locate are peeked on the reactor to choose their thread,
    and every request's Operation values scanned: over the limit, neither reads past it,
    and the request is refused from its header (thousands of items would otherwise take
    the reactor and the writer tens of milliseconds each)."""
    from kcm.core import request_handler
    from kcm.ttlv import peek

    handler = limited(core, max_batch_items=3)
    scanned: list[int] = []

    def operation_values(data: bytes, most: int | None = None) -> list[bytes]:
        found = peek.operation_values(data, most)
        scanned.append(len(found))
        return found

    def peek_request(*args, **kwargs):
        raise AssertionError("an over-limit request was peeked")

    monkeypatch.setattr(request_handler, "operation_values", operation_values)
    monkeypatch.setattr(request_handler, "peek_request", peek_request)
    monkeypatch.setattr(request_handler, "decode", peek_request)
    many = wire(*[(Operation.LOCATE, LocateRequest())] * 500)
    answer = decode_response(decode(await handler.handle_as(many, core.caller())))
    [item] = answer.batch_items
    assert (item.result_reason, item.result_message) == (
        ResultReason.INVALID_MESSAGE,
        "more than 3 batch items; at most 3 are accepted in one request")
    assert scanned == [4]
    assert [(r.operation, r.result_reason) for r in audit_rows(core)] == [
        ("?", "INVALID_MESSAGE")]


def test_a_batch_over_max_batch_items_is_refused_whole_and_audited_once(
        core: CoreHarness) -> None:
    handler = limited(core, max_batch_items=3)
    answer = response(handler.respond(wire(*[create_item()] * 4), core.caller(), 0))
    [item] = answer.batch_items
    assert item.result_reason == ResultReason.INVALID_MESSAGE
    assert item.result_message == "more than 3 batch items; at most 3 are accepted in one request"
    assert [(r.operation, r.result_reason) for r in audit_rows(core)] == [
        ("?", "INVALID_MESSAGE")]
    answer = response(handler.respond(wire(*[create_item()] * 3), core.caller(), 0))
    assert [b.result_status for b in answer.batch_items] == [ResultStatus.SUCCESS] * 3


def test_a_batch_count_that_does_not_match_the_items_is_invalid_message(
        core: CoreHarness) -> None:
    request = decode(wire(create_item(), create_item()))
    request.find(Tag.REQUEST_HEADER).find(Tag.BATCH_COUNT).value = 1
    [item] = response(core.handler.respond(encode(request), core.caller(), 0)).batch_items
    assert item.result_reason == ResultReason.INVALID_MESSAGE
    assert item.result_message == "Batch Count is 1, but the request holds 2 Batch Items"
    assert len(audit_rows(core)) == 1


def stop_after(items: int, reason: str = "request deadline of 1 s exceeded"):
    """A should_stop hook that lets ``items`` batch items start, then stops."""
    asked = [0]

    def should_stop() -> str | None:
        asked[0] += 1
        return reason if asked[0] > items else None

    return should_stop


def test_a_stopped_request_fails_the_rest_and_its_audit_records_say_why(
        core: CoreHarness) -> None:
    answer = response(core.handler.respond(
        wire(*[create_item()] * 4, continuation=BatchErrorContinuationOption.CONTINUE),
        core.caller(), int(time.time()), stop_after(2, CLIENT_GONE)))
    assert [b.result_status for b in answer.batch_items] == (
        [ResultStatus.SUCCESS] * 2 + [ResultStatus.OPERATION_FAILED] * 2)
    assert {(b.result_reason, b.result_message) for b in answer.batch_items[2:]} == {
        (ResultReason.GENERAL_FAILURE, "request cancelled: the client disconnected")}
    rows = audit_rows(core)
    assert [(r.operation, r.result_status, r.result_reason) for r in rows] == (
        [("CREATE", "SUCCESS", None)] * 2 + [("CREATE", "OPERATION_FAILED", "GENERAL_FAILURE")] * 2)
    assert [json.loads(r.detail) for r in rows[2:]] == [
        {"stopped": "request cancelled: the client disconnected"}] * 2
    assert core.store.run_sync(verify_chain).ok


def test_a_stopped_undo_request_rolls_back_everything(core: CoreHarness) -> None:
    answer = response(core.handler.respond(
        wire(*[create_item()] * 3, continuation=BatchErrorContinuationOption.UNDO),
        core.caller(), int(time.time()), stop_after(2)))
    assert [b.result_status for b in answer.batch_items] == [
        ResultStatus.OPERATION_UNDONE, ResultStatus.OPERATION_UNDONE,
        ResultStatus.OPERATION_FAILED]
    assert answer.batch_items[2].result_message == "request deadline of 1 s exceeded"
    from kcm.core.store import repository
    assert core.store.run_sync(lambda s: repository.locate(s, "demo", levels={None})) == []
    assert [r.result_status for r in audit_rows(core)] == [
        "OPERATION_UNDONE", "OPERATION_UNDONE", "OPERATION_FAILED"]


def test_a_long_locate_stops_inside_its_search(core: CoreHarness) -> None:
    for _ in range(3):
        core.handler.respond(wire(create_item()), core.caller(), int(time.time()))
    # Items: the Locate starts (1), then asks once per candidate: it stops at the second.
    answer = response(core.handler.respond(wire((Operation.LOCATE, LocateRequest())),
                                           core.caller(), int(time.time()), stop_after(2)))
    [item] = answer.batch_items
    assert (item.result_reason, item.result_message) == (
        ResultReason.GENERAL_FAILURE, "request deadline of 1 s exceeded")
    assert json.loads(audit_rows(core)[-1].detail) == {
        "stopped": "request deadline of 1 s exceeded"}


def locate_wire(version=(2, 1), **fields) -> bytes:
    return wire((Operation.LOCATE, LocateRequest(**fields)), version=version)


def test_locate_returns_at_most_the_servers_cap(core: CoreHarness) -> None:
    handler = limited(core, max_locate_results=3)
    created = [response(handler.respond(wire(create_item()), core.caller(), int(time.time())))
               .batch_items[0].response_payload.unique_identifier for _ in range(5)]
    newest_first = created[::-1]

    def located(**fields) -> tuple[list[str], int | None]:
        version = fields.pop("version", (2, 1))
        [item] = response(handler.respond(locate_wire(version, **fields), core.caller(),
                                          int(time.time()))).batch_items
        assert item.result_status == ResultStatus.SUCCESS
        return item.response_payload.unique_identifiers, item.response_payload.located_items

    assert located() == (newest_first[:3], None)  # the first N, as asked for all
    assert located(maximum_items=2) == (newest_first[:2], None)  # a smaller maximum
    assert located(maximum_items=100) == (newest_first[:3], None)  # a larger one is the cap
    assert located(version=(1, 2)) == (newest_first[:3], None)
    # Paging through more than the cap: Located Items counts every match.
    assert located(offset_items=0) == (newest_first[:3], 5)
    assert located(offset_items=3, maximum_items=100) == (newest_first[3:], 5)
    assert json.loads(audit_rows(core)[-6].detail) == {"capped_at": 3}  # the plain Locate


def test_a_version_that_is_not_spoken_is_refused_before_its_items_are_decoded(
        core: CoreHarness) -> None:
    """Issue 11, defect 6: 1.x attribute names under version 1.99 raised ValueError in the
    registry (General Failure, no audit record)."""
    for version, answered in [((1, 99), (1, 4)), ((0, 4), (1, 0)), ((3, 0), (2, 1)),
                              ((2**31 - 1, 0), (2, 1)), ((-1, 0), (1, 0))]:
        request = decode(request_14(create_managed()))
        header = request.find(Tag.REQUEST_HEADER)
        header.find(Tag.PROTOCOL_VERSION).value = [
            Item(Tag.PROTOCOL_VERSION_MAJOR, ItemType.INTEGER, version[0]),
            Item(Tag.PROTOCOL_VERSION_MINOR, ItemType.INTEGER, version[1])]
        answer = response(core.handler.respond(encode(request), core.caller(), 0))
        assert answer.header.version == answered
        expected = (ResultReason.UNSUPPORTED_PROTOCOL_VERSION if answered >= (2, 0)
                    else ResultReason.INVALID_MESSAGE)
        assert answer.batch_items[0].result_reason == expected, version
    assert [r.result_status for r in audit_rows(core)] == ["OPERATION_FAILED"] * 5


def test_an_unexpected_failure_is_a_general_failure_with_an_audit_record(
        core: CoreHarness, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("the store fell over")

    monkeypatch.setattr(request_handler, "execute", broken)
    answer = response(core.handler.respond(wire(create_item()), core.caller(), 0))
    assert answer.batch_items[0].result_reason == ResultReason.GENERAL_FAILURE
    [row] = audit_rows(core)
    assert (row.operation, row.result_reason) == ("?", "GENERAL_FAILURE")
    assert json.loads(row.detail) == {"operations": ["CREATE"]}
    assert row.correlation_id in answer.batch_items[0].result_message


def test_a_request_that_writes_nothing_sends_no_savepoint(core: CoreHarness,
                                                          monkeypatch) -> None:
    """A request's savepoint is sent before its first write (SQLite): a Discover Versions,
    which writes nothing but its one audit record, sends none; two read-only items, or a
    Create, do. A lone record whose insert fails leaves nothing: the request is answered
    General Failure, audited as such, and the group goes on."""
    from kcm.core import audit

    caller, now = core.caller(), int(time.time())
    seen: list[str] = []
    discover = wire((Operation.DISCOVER_VERSIONS, DiscoverVersionsRequest()))
    real_append = audit.append_audit

    def refuse_first(session, record, **kwargs):
        monkeypatch.setattr(request_handler, "append_audit", real_append)
        raise RuntimeError("the record cannot be written")

    def group(session):
        session.connection().connection.dbapi_connection.set_trace_callback(
            lambda sql: seen.append(sql.split()[0]))
        answers = []
        for data in (discover, queries(2), wire(create_item())):
            answers.append(core.handler._respond_in(session, data, caller, now, None))
            answers.append(seen.count("SAVEPOINT"))
        monkeypatch.setattr(request_handler, "append_audit", refuse_first)
        answers.append(core.handler._respond_in(session, discover, caller, now, None))
        return answers

    before = len(audit_rows(core))
    first, none, second, one, third, two, refused = core.store.run_sync(group)
    assert (none, one, two) == (0, 1, 2)
    for answer in (first, second, third):
        assert {i.result_status for i in response(answer).batch_items} == {
            ResultStatus.SUCCESS}
    assert response(refused).batch_items[0].result_reason == ResultReason.GENERAL_FAILURE
    rows = audit_rows(core)[before:]
    assert [(r.operation, r.result_status) for r in rows] == [
        ("DISCOVER_VERSIONS", "SUCCESS"), ("QUERY", "SUCCESS"), ("QUERY", "SUCCESS"),
        ("CREATE", "SUCCESS"), ("?", "OPERATION_FAILED")]
    assert core.store.run_sync(lambda s: verify_chain(s)).ok


def test_a_lone_item_that_fails_after_writing_rolls_back_alone_in_its_group(
        core: CoreHarness, monkeypatch) -> None:
    """A one-item request shares its savepoint with its item: the item's rollback must undo
    its writes, keep its own audit record and the group's other requests, and leave the
    chain's head on the newest record."""
    from kcm.core import managed
    from kcm.core.store.schema import ManagedObject

    real_insert = managed.insert

    def insert_then_fail(*args, **kwargs):
        real_insert(*args, **kwargs)  # the object is written...
        raise KmipError(ResultReason.INVALID_FIELD, "refused after writing")

    caller, now = core.caller(), int(time.time())

    def group(session):
        first = core.handler._respond_in(session, wire(create_item()), caller, now, None)
        monkeypatch.setattr(managed, "insert", insert_then_fail)
        failed = core.handler._respond_in(session, wire(create_item()), caller, now, None)
        monkeypatch.setattr(managed, "insert", real_insert)
        last = core.handler._respond_in(session, wire(create_item()), caller, now, None)
        return first, failed, last

    answers = [response(a) for a in core.store.run_sync(group)]
    assert [a.batch_items[0].result_status for a in answers] == [
        ResultStatus.SUCCESS, ResultStatus.OPERATION_FAILED, ResultStatus.SUCCESS]
    kept = {a.batch_items[0].response_payload.unique_identifier for a in (answers[0], answers[2])}
    stored = core.store.run_sync(lambda s: set(s.scalars(select(ManagedObject.uid).where(
        ManagedObject.level.is_(None))).all()))
    assert stored == kept
    rows = audit_rows(core)
    assert [(r.operation, r.result_status) for r in rows[-3:]] == [
        ("CREATE", "SUCCESS"), ("CREATE", "OPERATION_FAILED"), ("CREATE", "SUCCESS")]
    assert core.store.run_sync(lambda s: verify_chain(s)).ok
