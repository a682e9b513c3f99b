"""Per-item decoding of a request (KMIP 1.4 §11.1): an item that cannot be read is kept
as an item that fails alone when the kernel's batch runs it; the message's own errors still
fail it whole."""

from __future__ import annotations

import pytest

from kcm.kernel.batch import run_batch
from kcm.kmip.enums import Operation, ResultReason, ResultStatus
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import (
    ProtocolVersion,
    RequestHeader,
    RequestMessage,
    UnreadablePayload,
    decode_request,
    encode_request,
)
from kcm.kmip.tags import Tag
from kcm.testing.requests import CONTINUE, STOP, UNDO, create_managed, get
from kcm.ttlv import Item, ItemType

_S = ItemType.STRUCTURE


def _message(version, *batch: Item, batch_count: int | None = None) -> Item:
    header = RequestHeader(protocol_version=ProtocolVersion.of(version),
                           batch_error_continuation_option=CONTINUE,
                           batch_count=len(batch) if batch_count is None else batch_count)
    tree = encode_request(RequestMessage(header, []))
    tree.value.extend(batch)  # type: ignore[union-attr]
    return tree


def _bad_get(batch_id: bytes) -> Item:
    return Item(Tag.BATCH_ITEM, _S, [
        Item(Tag.OPERATION, ItemType.ENUMERATION, int(Operation.GET)),
        Item(Tag.UNIQUE_BATCH_ITEM_ID, ItemType.BYTE_STRING, batch_id),
        Item(Tag.REQUEST_PAYLOAD, _S, [
            Item(Tag.UNIQUE_IDENTIFIER, ItemType.TEXT_STRING, "k"),
            Item(Tag.KEY_FORMAT_TYPE, ItemType.TEXT_STRING, "Raw")])])


@pytest.mark.parametrize("version", [(1, 0), (1, 4), (2, 0), (2, 1)])
def test_an_unreadable_item_is_kept_with_its_operation_and_id(version) -> None:
    good = create_managed(b"1").to_item(version)
    tree = _message(version, good, _bad_get(b"2"), Item(Tag.BATCH_ITEM, ItemType.TEXT_STRING, "x"))
    with pytest.raises(KmipError):  # the codec's strict reading
        decode_request(tree)
    message = decode_request(tree, per_item=True)
    first, second, third = message.batch_items
    assert first == decode_request(_message(version, good)).batch_items[0]
    assert (second.operation, second.unique_batch_item_id) == (Operation.GET, b"2")
    assert isinstance(second.request_payload, UnreadablePayload)
    assert second.request_payload.error.reason == ResultReason.INVALID_FIELD
    assert "Key Format Type must be Enumeration" in second.request_payload.error.message
    assert (third.operation, third.unique_batch_item_id) == (None, None)
    assert third.request_payload.error.message == "Batch Item must be a Structure"


def test_a_well_formed_request_reads_the_same_either_way() -> None:
    tree = _message((2, 1), create_managed(b"1").to_item((2, 1)), get("k", b"2").to_item((2, 1)))
    assert decode_request(tree, per_item=True) == decode_request(tree)


def test_the_message_s_own_errors_still_fail_it_whole() -> None:
    tree = _message((2, 1), _bad_get(b"1"), batch_count=2)
    with pytest.raises(KmipError) as caught:
        decode_request(tree, per_item=True)
    assert caught.value.reason == ResultReason.INVALID_MESSAGE


@pytest.mark.parametrize(("continuation", "statuses"), [
    (CONTINUE, [ResultStatus.SUCCESS, ResultStatus.OPERATION_FAILED, ResultStatus.SUCCESS]),
    (STOP, [ResultStatus.SUCCESS, ResultStatus.OPERATION_FAILED]),
    (UNDO, [ResultStatus.OPERATION_UNDONE, ResultStatus.OPERATION_FAILED]),
], ids=["continue", "stop", "undo"])
def test_the_batch_fails_an_unreadable_item_without_running_it(continuation, statuses) -> None:
    version = (1, 4)
    tree = _message(version, get("a", b"1").to_item(version), _bad_get(b"2"),
                    get("c", b"3").to_item(version))
    items = decode_request(tree, per_item=True).batch_items
    ran = []

    def execute(item, placeholder):
        ran.append(item.unique_batch_item_id)

    run = run_batch(items, execute, version=version, continuation=continuation,
                    correlation_id="c")
    assert [i.result_status for i in run.items] == statuses
    assert ran == [b"1", b"3"][:len(statuses) - 1]
    failed = run.items[1]
    assert (failed.operation, failed.unique_batch_item_id) == (Operation.GET, b"2")
    assert failed.result_reason == ResultReason.INVALID_FIELD
    assert run.unexpected == []
