"""A real kcm-core and kcm-gateway, asked the same requests: a batch item that cannot be
read fails alone (KMIP 1.4 §11.1), a mixed batch with Undo is undone by the core, and the
Client Correlation Value is in the core's audit records."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from kcm.kmip.enums import Operation, ResultReason, ResultStatus
from kcm.kmip.messages import (
    ProtocolVersion,
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    encode_request,
)
from kcm.kmip.tags import Tag
from kcm.testing.processes import CoreProcess, GatewayProcess, deploy, running
from kcm.testing.requests import (
    CONTINUE,
    STOP,
    UNDO,
    create_l4,
    create_managed,
    get,
    odd_request,
    response,
)
from kcm.ttlv import Item, ItemType, encode
from tests.e2e_support import audit_rows, last_seq

_S = ItemType.STRUCTURE


@pytest.fixture(scope="module")
def planes(tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[CoreProcess, GatewayProcess]]:
    root = tmp_path_factory.mktemp("hm")
    core = deploy(root / "core", f"sqlite:///{root / 'core' / 'kcm.db'}")
    with running(core, GatewayProcess(root / "gateway", core)) as both:
        yield both


def wire_of(version: tuple[int, int], continuation: int, *items: RequestBatchItem | Item,
            **header: object) -> bytes:
    """A request of ``items`` (models, or raw Batch Items sent as they are)."""
    head = RequestHeader(protocol_version=ProtocolVersion.of(version),
                         batch_error_continuation_option=continuation,
                         batch_count=len(items), **header)  # type: ignore[arg-type]
    tree = encode_request(RequestMessage(head, []))
    tree.value.extend(i if isinstance(i, Item) else i.to_item(version)  # type: ignore[union-attr]
                      for i in items)
    return encode(tree)


def raw_item(operation: int | None, batch_id: bytes | None, *payload: Item,
             extra: tuple[Item, ...] = ()) -> Item:
    head = [] if operation is None else [Item(Tag.OPERATION, ItemType.ENUMERATION, operation)]
    if batch_id is not None:
        head.append(Item(Tag.UNIQUE_BATCH_ITEM_ID, ItemType.BYTE_STRING, batch_id))
    return Item(Tag.BATCH_ITEM, _S, [*head, *extra, Item(Tag.REQUEST_PAYLOAD, _S, list(payload))])


def _uid(uid: str) -> Item:
    return Item(Tag.UNIQUE_IDENTIFIER, ItemType.TEXT_STRING, uid)


#: Batch items no server can read, each with the Result Reason and words of its failure;
#: "l4" ones are L4 items the gateway runs itself, the others go to the core.
UNREADABLE: dict[str, tuple[Callable[[bytes], Item], ResultReason, str]] = {
    "text-key-format-type": (lambda bid: raw_item(Operation.GET, bid, _uid("k"), Item(
        Tag.KEY_FORMAT_TYPE, ItemType.TEXT_STRING, "Raw")), ResultReason.INVALID_FIELD,
        "Key Format Type must be Enumeration, not TextString"),
    "l4-text-key-format-type": (lambda bid: raw_item(Operation.GET, bid, _uid("l4.1.bogus"), Item(
        Tag.KEY_FORMAT_TYPE, ItemType.TEXT_STRING, "Raw")), ResultReason.INVALID_FIELD,
        "Key Format Type must be Enumeration, not TextString"),
    "stray-payload-field": (lambda bid: raw_item(Operation.ACTIVATE, bid, _uid("k"), Item(
        Tag.OBJECT_GROUP, ItemType.TEXT_STRING, "g")), ResultReason.INVALID_FIELD,
        "unexpected field Object Group in Request Payload"),
    "l4-stray-payload-field": (lambda bid: raw_item(Operation.GET, bid, _uid("l4.1.bogus"), Item(
        Tag.OBJECT_GROUP, ItemType.TEXT_STRING, "g")), ResultReason.INVALID_FIELD,
        "unexpected field Object Group in Request Payload"),
    "missing-payload-field": (lambda bid: raw_item(Operation.REVOKE, bid, _uid("k")),
                              ResultReason.INVALID_MESSAGE,
                              "missing the required field Revocation Reason"),
    "stray-item-field": (lambda bid: raw_item(Operation.GET, bid, _uid("l4.1.bogus"), extra=(
        Item(Tag.OBJECT_GROUP, ItemType.TEXT_STRING, "g"),)), ResultReason.INVALID_FIELD,
        "unexpected field Object Group in Batch Item"),
}

VERSIONS = [(1, 4), (2, 1)]


def comparable(wire: bytes) -> list[tuple]:
    """What a client sees of an answer, without identifiers, times and correlation values."""
    message = response(wire)
    return [message.header.version] + [
        (i.operation, i.unique_batch_item_id, i.result_status, i.result_reason,
         i.result_message) for i in message.batch_items]


def both(planes: tuple[CoreProcess, GatewayProcess], wire: bytes) -> tuple[bytes, bytes]:
    """The core's answer to ``wire`` and the gateway's."""
    core, gateway = planes
    with core.client() as direct, gateway.client() as through:
        return direct.send(wire), through.send(wire)


_FAILED, _SUCCESS, _UNDONE = (ResultStatus.OPERATION_FAILED, ResultStatus.SUCCESS,
                              ResultStatus.OPERATION_UNDONE)


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"{v[0]}.{v[1]}")
@pytest.mark.parametrize("case", list(UNREADABLE))
@pytest.mark.parametrize(("continuation", "statuses"), [
    (CONTINUE, [_SUCCESS, _FAILED, _SUCCESS]),
    (STOP, [_SUCCESS, _FAILED]),
    (UNDO, [_UNDONE, _FAILED]),
], ids=["continue", "stop", "undo"])
@pytest.mark.parametrize("first", ["managed", "l4"])
def test_an_unreadable_item_fails_alone_under_the_batch_s_option(
        planes, version, case, continuation, statuses, first) -> None:
    build, reason, words = UNREADABLE[case]
    first_item = create_managed(b"1") if first == "managed" else create_l4(b"1")
    wire = wire_of(version, continuation, first_item, build(b"2"), create_l4(b"3"))
    at_core, through = both(planes, wire)
    answered = response(at_core).batch_items
    assert [i.result_status for i in answered] == statuses, [i.result_message for i in answered]
    assert [i.unique_batch_item_id for i in answered] == [b"1", b"2", b"3"][:len(statuses)]
    failed = answered[1]
    assert failed.operation == Operation(build(b"").value[0].value)
    assert failed.result_reason == reason and words in failed.result_message
    assert comparable(through) == comparable(at_core)


@pytest.mark.parametrize("version", [(1, 4), (2, 1)], ids=lambda v: f"{v[0]}.{v[1]}")
def test_an_item_without_operation_fails_alone_without_one(planes, version) -> None:
    wire = wire_of(version, CONTINUE, create_managed(b"1"),
                   raw_item(None, b"2", _uid("k")), create_l4(b"3"))
    at_core, through = both(planes, wire)
    answered = response(at_core).batch_items
    assert [(i.operation, i.unique_batch_item_id, i.result_status) for i in answered] == [
        (Operation.CREATE, b"1", _SUCCESS), (None, b"2", _FAILED),
        (Operation.CREATE, b"3", _SUCCESS)]
    assert answered[1].result_reason == ResultReason.INVALID_MESSAGE
    assert comparable(through) == comparable(at_core)


def test_an_unreadable_item_is_audited_with_its_operation(planes) -> None:
    core, _ = planes
    before = last_seq(core)
    build, _, _ = UNREADABLE["text-key-format-type"]
    with core.client() as direct:
        direct.send(wire_of((2, 1), CONTINUE, build(b"1"), create_managed(b"2")))
    rows = audit_rows(core, before)
    assert [(r["operation"], r["result_status"], r["result_reason"]) for r in rows] == [
        ("GET", "OPERATION_FAILED", "INVALID_FIELD"), ("CREATE", "SUCCESS", None)]


def test_a_structurally_wrong_request_is_still_refused_whole(planes) -> None:
    wire = odd_request(create_managed(b"1"), create_l4(b"2"), batch_count=3)
    at_core, through = both(planes, wire)
    [refused] = response(at_core).batch_items
    assert refused.operation is None and refused.result_reason == ResultReason.INVALID_MESSAGE
    assert comparable(through) == comparable(at_core)


@pytest.mark.parametrize("version", [(1, 4), (2, 1)], ids=lambda v: f"{v[0]}.{v[1]}")
def test_a_mixed_undo_batch_is_undone_through_the_gateway_as_at_the_core(
        planes, version) -> None:
    core, _ = planes
    wire = wire_of(version, UNDO, create_l4(b"1"), create_managed(b"2"),
                   get("l4.1.bogus", b"3"))
    before = last_seq(core)
    at_core, through = both(planes, wire)
    answered = response(through).batch_items
    assert [(i.unique_batch_item_id, i.result_status) for i in answered] == [
        (b"1", _UNDONE), (b"2", _UNDONE), (b"3", _FAILED)], [i.result_message for i in answered]
    assert all(i.response_payload is None for i in answered)  # no usable token, no object
    assert comparable(through) == comparable(at_core)
    # The gateway relayed it whole: the core ran (and audited) every item of both.
    assert [r["result_status"] for r in audit_rows(core, before)] == [
        "OPERATION_UNDONE", "OPERATION_UNDONE", "OPERATION_FAILED"] * 2


def _client_correlations(core: CoreProcess, before: int) -> list[object]:
    return [(r["detail"] or {}).get("client_correlation") for r in audit_rows(core, before)]


@pytest.mark.parametrize("version", [(1, 4), (2, 1)], ids=lambda v: f"{v[0]}.{v[1]}")
def test_the_client_correlation_value_is_in_every_audit_record_of_the_request(
        planes, version) -> None:
    core, gateway = planes
    tag = f"order-{version[0]}{version[1]}"
    cases = [
        (core, [create_managed(b"1"), create_managed(b"2")], 2),  # direct
        (gateway, [create_managed(b"1"), create_managed(b"2")], 2),  # relayed whole
        (gateway, [create_l4(b"1"), create_managed(b"2")], 1),  # mixed: the core's part
        (gateway, [create_l4(b"1"), create_managed(b"2"), get("l4.1.bogus", b"3")], 3),  # undo
    ]
    for index, (plane, items, records) in enumerate(cases):
        before = last_seq(core)
        value = f"{tag}-{index}"
        with plane.client() as client:
            client.send(wire_of(version, UNDO if len(items) == 3 else CONTINUE, *items,
                                client_correlation_value=value))
        assert _client_correlations(core, before) == [value] * records, index


def test_a_client_correlation_value_is_kept_short_and_printable(planes) -> None:
    core, _ = planes
    before = last_seq(core)
    with core.client() as direct:
        direct.send(wire_of((2, 1), STOP, create_managed(b"1"),
                            client_correlation_value="\x1b[2J" + "x" * 5000))
    [kept] = _client_correlations(core, before)
    assert isinstance(kept, str) and kept.isascii() and kept.isprintable()
    assert kept.startswith("\\x1b[2Jxxx") and len(kept) < 100 and "5004 characters" in kept


def test_a_refused_request_s_record_keeps_its_client_correlation_value(planes) -> None:
    core, _ = planes
    before = last_seq(core)
    header = RequestHeader(protocol_version=ProtocolVersion.of((2, 1)),
                           client_correlation_value="refused-one", batch_count=5)
    tree = encode_request(RequestMessage(header, [create_managed(b"1")]))
    with core.client() as direct:
        [refused] = response(direct.send(encode(tree))).batch_items
    assert refused.result_reason == ResultReason.INVALID_MESSAGE
    assert _client_correlations(core, before) == ["refused-one"]
