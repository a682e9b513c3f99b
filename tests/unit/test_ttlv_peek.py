"""The classifier's peek agrees with a full decode, refuses what it cannot read, and reports
(never judges) what it need not read."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcm.ttlv import Item, ItemType, TtlvError, decode, encode
from kcm.ttlv.peek import operation_values, peek_request
from kcm.ttlv.types import structure
from tests.vectors import iter_v11_hex_messages

S = ItemType.STRUCTURE


def request(*batch_items: Item, major: int = 2, minor: int = 1) -> bytes:
    header = structure(
        0x420077,
        structure(0x420069, Item(0x42006A, ItemType.INTEGER, major),
                  Item(0x42006B, ItemType.INTEGER, minor)),
        Item(0x42000D, ItemType.INTEGER, len(batch_items)),
    )
    return encode(structure(0x420078, header, *batch_items))


def batch_item(operation: int, *payload: Item, batch_id: bytes | None = None) -> Item:
    children = [Item(0x42005C, ItemType.ENUMERATION, operation)]
    if batch_id is not None:
        children.append(Item(0x420093, ItemType.BYTE_STRING, batch_id))
    children.append(structure(0x420079, *payload))
    return Item(0x42000F, S, children)


def uid(text: str) -> Item:
    return Item(0x420094, ItemType.TEXT_STRING, text)


def test_peek_reads_version_operations_ids_and_uids() -> None:
    attrs = structure(0x420125, Item(0x420028, ItemType.ENUMERATION, 3))
    wire = request(
        batch_item(0x1F, uid("kcm4.abc"), batch_id=b"\x01"),
        batch_item(0x01, Item(0x420057, ItemType.ENUMERATION, 2), attrs, batch_id=b"\x02"),
        batch_item(0x12),
    )
    peeked = peek_request(wire, unique_identifier=True, create_attributes=True)
    assert peeked.version == (2, 1) and peeked.batch_count == 3
    first, second, third = peeked.items
    assert (first.operation, first.unique_identifier, first.unique_batch_item_id) == (
        0x1F, "kcm4.abc", b"\x01")
    assert second.object_type == 2 and second.attributes == attrs
    assert third.operation == 0x12 and third.unique_identifier is None
    full = decode(wire)
    for peeked_item, batch in zip(peeked.items, full.find_all(0x42000F), strict=True):
        assert decode(wire[peeked_item.start:peeked_item.end]) == batch


def test_peek_without_asking_skips_payloads() -> None:
    peeked = peek_request(request(batch_item(0x0A, uid("x"))))
    assert peeked.items[0].unique_identifier is None


def test_peek_agrees_with_full_decode_on_every_v11_request() -> None:
    count = 0
    for _, wire in iter_v11_hex_messages():
        if wire[2] != 0x78:
            continue
        count += 1
        peeked = peek_request(wire, unique_identifier=True)
        full = decode(wire)
        header = full.find(0x420077)
        version = header.find(0x420069)
        assert peeked.version == (version.find(0x42006A).value, version.find(0x42006B).value)
        assert peeked.batch_count == header.find(0x42000D).value
        batches = full.find_all(0x42000F)
        assert [p.operation for p in peeked.items] == [b.find(0x42005C).value for b in batches]
        for p, b in zip(peeked.items, batches, strict=True):
            payload = b.find(0x420079)
            found = payload.find(0x420094) if payload is not None else None
            assert p.unique_identifier == (found.value if found is not None else None)
    assert count == 260


@pytest.mark.parametrize(
    "mangle",
    [
        lambda w: w[:20],
        lambda w: w[:-8],
        lambda w: bytes.fromhex("42007B01") + w[4:],
        lambda w: w[:8] + bytes.fromhex("42000F01") + w[12:],
    ],
)
def test_peek_refuses_what_it_cannot_read(mangle) -> None:
    with pytest.raises(TtlvError):
        peek_request(mangle(request(batch_item(0x0A, uid("x")))), unique_identifier=True)


def test_peek_reports_the_batch_count_as_found_without_judging_it() -> None:
    """Whether Batch Count matches is the decoder's to say, on both planes alike."""
    wire = request(batch_item(0x0A, uid("x")))
    count = bytes.fromhex("42000D020000000400000001") + bytes(4)
    assert wire.count(count) == 1
    assert peek_request(wire).batch_count == 1
    assert peek_request(wire.replace(count, count[:8] + bytes.fromhex("FFFFFFFF")
                                     + bytes(4))).batch_count == -1
    header_length = int.from_bytes(wire[12:16], "big")
    without = (wire[:4] + (len(wire) - 8 - 16).to_bytes(4, "big") + wire[8:12]
               + (header_length - 16).to_bytes(4, "big") + wire[16:].replace(count, b""))
    assert peek_request(without).batch_count is None
    with pytest.raises(TtlvError, match="Protocol Version"):
        peek_request(request(batch_item(0x0A)).replace(bytes.fromhex(
            "42006B02000000040000000100000000"), bytes.fromhex(
            "42006C02000000040000000100000000")))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0xFFFFFFFF), st.text(max_size=12),
                          st.one_of(st.none(), st.binary(max_size=12))), max_size=4))
def test_every_operation_the_peek_reads_is_found_by_the_scan_in_order(items: list) -> None:
    """Strings may hold look-alikes (the scan then finds more), never hide one."""
    wire = request(*(batch_item(operation, uid(text), batch_id=batch_id)
                     for operation, text, batch_id in items))
    peeked = [item.operation.to_bytes(4, "big") for item in peek_request(wire).items]
    found = iter(operation_values(wire))
    assert all(value in found for value in peeked)  # a subsequence, in order


def test_a_look_alike_in_a_string_is_found_too() -> None:
    look_alike = bytes.fromhex("42005c05000000040000000800000000")
    wire = request(batch_item(0x0A, Item(0x420094, ItemType.BYTE_STRING, look_alike)))
    assert operation_values(wire) == [(0x0A).to_bytes(4, "big"), (8).to_bytes(4, "big")]
