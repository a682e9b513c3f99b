"""kcm-core's request handler in process: real store (SQLite file), real codec and model."""

from __future__ import annotations

import time

import pytest_twisted
from sqlalchemy import select

from kcm.core.audit import verify_chain
from kcm.core.request_handler import CoreRequestHandler
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
    GetRequest,
    QueryRequest,
    RegisterRequest,
    RevocationReason,
    RevokeRequest,
)
from kcm.kmip.tags import Tag
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
    response = await send(core, wire((Operation.REVOKE, revoke),
                                     (Operation.DESTROY, DestroyRequest())))
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
    """A KMIP 2.1 batch of ``count`` Query Operations (48 bytes each; 465 answered)."""
    header = RequestHeader(protocol_version=ProtocolVersion.of((2, 1)), batch_count=count,
                           maximum_response_size=maximum_response_size)
    query = RequestBatchItem(operation=Operation.QUERY, request_payload=QueryRequest(
        query_functions=[QueryFunction.QUERY_OPERATIONS]))
    return encode(encode_request(RequestMessage(header, [query] * count)))


def bounded_handler(core: CoreHarness, max_message_size: int) -> CoreRequestHandler:
    return CoreRequestHandler(core.store, core.keyring, clock=time.time,
                              max_message_size=max_message_size)


def test_an_answer_over_the_maximum_message_size_is_response_too_large(
        core: CoreHarness) -> None:
    handler = bounded_handler(core, 16 << 10)
    fits = handler.respond(queries(30), core.caller(), int(time.time()))  # 14 KB answered
    assert {i.result_status for i in decode_response(decode(fits)).batch_items} == {
        ResultStatus.SUCCESS}
    answer = handler.respond(queries(60), core.caller(), int(time.time()))  # 28 KB answered
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
