"""The TTLV codec: every type, every strictness rule, with byte offsets."""

from __future__ import annotations

import pytest

from kcm.ttlv import Item, ItemType, MessageTooLarge, TtlvError, decode, decode_item, encode
from kcm.ttlv.types import structure

T = 0x420020


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize(
    ("item", "wire"),
    [
        (Item(T, ItemType.INTEGER, -1), "420020 02 00000004 FFFFFFFF 00000000"),
        (Item(T, ItemType.LONG_INTEGER, -2), "420020 03 00000008 FFFFFFFFFFFFFFFE"),
        (Item(T, ItemType.BIG_INTEGER, -1), "420020 04 00000008 FFFFFFFFFFFFFFFF"),
        (Item(T, ItemType.BIG_INTEGER, 1 << 63), "420020 04 00000010" + "00" * 8 + "80" + "00" * 7),
        (Item(T, ItemType.ENUMERATION, 0xFFFFFFFF), "420020 05 00000004 FFFFFFFF 00000000"),
        (Item(T, ItemType.BOOLEAN, False), "420020 06 00000008 0000000000000000"),
        (Item(T, ItemType.TEXT_STRING, ""), "420020 07 00000000"),
        (Item(T, ItemType.TEXT_STRING, "é"), "420020 07 00000002 C3A9000000000000"),
        (Item(T, ItemType.BYTE_STRING, bytes(8)), "420020 08 00000008 0000000000000000"),
        (Item(T, ItemType.DATE_TIME, -1), "420020 09 00000008 FFFFFFFFFFFFFFFF"),
        (Item(T, ItemType.INTERVAL, 0xFFFFFFFF), "420020 0A 00000004 FFFFFFFF 00000000"),
        (Item(T, ItemType.DATE_TIME_EXTENDED, 1_600_000_000_123_456),
         "420020 0B 00000008 0005AF3107A5E240"),
        (structure(T), "420020 01 00000000"),
    ],
)
def test_round_trip_of_each_type(item: Item, wire: str) -> None:
    assert encode(item) == h(wire)
    assert decode(h(wire)) == item


def test_big_integer_keeps_a_wider_than_needed_encoding() -> None:
    wire = h("420020 04 00000010" + "00" * 15 + "05")
    item = decode(wire)
    assert item.value == 5 and item.width == 16
    assert encode(item) == wire


def test_nested_structure_round_trip() -> None:
    tree = structure(T, structure(0x420004, Item(0x420005, ItemType.INTEGER, 1)),
                     Item(0x420006, ItemType.TEXT_STRING, "abc"))
    assert decode(encode(tree)) == tree


@pytest.mark.parametrize(
    ("wire", "offset", "reason"),
    [
        ("420020 02 00000004 00000001", 0, "overruns"),
        ("420020 02 00000008 0000000100000000", 4, "length must be 4"),
        ("420020 02 00000004 00000001 00000001", 12, "non-zero padding"),
        ("420020 06 00000008 0000000000000002", 8, "0 or 1"),
        ("420020 0C 00000004 00000001 00000000", 3, "unknown item type"),
        ("420020 07 00000001 41000000000000FF", 9, "non-zero padding"),
        ("420020 07 00000002 FFFE000000000000", 8, "UTF-8"),
        ("420020 04 00000004 0000000100000000", 4, "multiple of 8"),
        ("420020 04 00000000", 4, "multiple of 8"),
        ("420020 01 00000018 420021 02 00000004 00000001 00000000", 0, "overruns"),
        ("420020 01 00000008 420021 02 00000004 00000001 00000000", 8, "overruns"),
        ("420020", 0, "truncated"),
        ("420020 02 00000004 00000001 00000000 00", 16, "follow"),
    ],
)
def test_strict_decoding_names_offset_and_fault(wire: str, offset: int, reason: str) -> None:
    with pytest.raises(TtlvError) as caught:
        decode(h(wire))
    assert caught.value.offset == offset
    assert reason in caught.value.reason


def test_depth_and_size_limits() -> None:
    tree = Item(T, ItemType.INTEGER, 1)
    for _ in range(5):
        tree = structure(T, tree)
    wire = encode(tree)
    assert decode(wire, max_depth=5) == tree
    with pytest.raises(TtlvError, match="nested too deeply"):
        decode(wire, max_depth=4)
    with pytest.raises(MessageTooLarge):
        decode(wire, max_size=len(wire) - 1)


def test_decode_item_reports_where_it_stopped() -> None:
    one = encode(Item(T, ItemType.INTEGER, 7))
    item, end = decode_item(one + one, len(one))
    assert item.value == 7 and end == 2 * len(one)


@pytest.mark.parametrize(
    "item",
    [
        Item(T, ItemType.INTEGER, 1 << 31),
        Item(T, ItemType.ENUMERATION, -1),
        Item(T, ItemType.BOOLEAN, 1),
        Item(T, ItemType.TEXT_STRING, b"bytes"),
        Item(T, ItemType.TEXT_STRING, "\ud800"),
    ],
)
def test_unencodable_values_raise_the_codec_error(item: Item) -> None:
    with pytest.raises(TtlvError):
        encode(item)


@pytest.mark.parametrize("length", [1023, 1024, 1025, 1029, 1032, 65_535])
def test_long_strings_encode_and_decode_around_the_joining_threshold(length: int) -> None:
    """Values over 1 KiB are appended apart from their header (copied once by the join):
    the bytes are the same as for shorter ones, padding included."""
    import struct

    from kcm.ttlv.codec import encode_into

    raw = bytes(range(256)) * (length // 256) + b"\x07" * (length % 256)
    for item_type, value, data in ((ItemType.BYTE_STRING, raw, raw),
                                   (ItemType.TEXT_STRING, "k" * length, b"k" * length)):
        item = Item(0x420001, item_type, value)
        expected = struct.pack(">IBI", 0x420001, item_type, length)[1:] + data + \
            b"\0" * (-length & 7)
        assert encode(item) == expected
        parts: list[bytes] = [b"before"]
        assert encode_into(item, parts) == len(expected)
        assert b"".join(parts[1:]) == expected
        assert decode(expected) == item
