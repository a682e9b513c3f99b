"""A message's TTLV items counted from their headers (kcm.ttlv.item_count): the compiled
walk and the Python one agree on any bytes, both agree with the decoder on what it reads,
and neither counts past the bound."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcm.ttlv import Item, ItemType, TtlvError, decode, encode, item_count
from kcm.ttlv.item_count import count_items, count_items_python
from tests.unit.test_plain_scan import _mutated, _mutations
from tests.vectors import iter_v11_hex_messages


def items_in(item: Item) -> int:
    if item.type is ItemType.STRUCTURE:
        return 1 + sum(items_in(child) for child in item.value)
    return 1


leaves = st.one_of(
    st.builds(lambda v: Item(0x420001, ItemType.INTEGER, v), st.integers(-2**31, 2**31 - 1)),
    st.builds(lambda v: Item(0x420002, ItemType.TEXT_STRING, v), st.text(max_size=20)),
    st.builds(lambda v: Item(0x420003, ItemType.BYTE_STRING, v), st.binary(max_size=20)),
    st.builds(lambda v: Item(0x420004, ItemType.BOOLEAN, v), st.booleans()))
trees = st.recursive(leaves, lambda children: st.builds(
    lambda kids: Item(0x420005, ItemType.STRUCTURE, kids), st.lists(children, max_size=5)),
    max_leaves=40)


def test_the_compiled_walk_is_built() -> None:
    assert item_count.compiled(), "setup.py builds kcm/ttlv/_item_count.c"


@settings(max_examples=400, deadline=None)
@given(trees, st.integers(0, 60))
def test_a_message_is_counted_as_the_decoder_reads_it(tree: Item, most: int) -> None:
    wire = encode(tree)
    total = items_in(decode(wire))
    assert count_items(wire, most) == count_items_python(wire, most) == min(total, most + 1)


@settings(max_examples=1000, deadline=None)
@given(trees, st.lists(_mutations, min_size=1, max_size=3), st.integers(0, 60))
def test_any_changed_message_is_counted_alike(tree: Item, mutations: list, most: int) -> None:
    wire = encode(tree)
    for mutation in mutations:
        wire = _mutated(wire, mutation)
    counted = count_items(wire, most)
    assert counted == count_items_python(wire, most)
    try:
        total = items_in(decode(wire))
    except TtlvError:
        return
    assert counted == min(total, most + 1)  # what decodes, the walk reads alike


@given(st.binary(max_size=200), st.integers(0, 30))
def test_any_bytes_are_counted_alike(wire: bytes, most: int) -> None:
    assert count_items(wire, most) == count_items_python(wire, most)


def test_every_v11_request_is_counted_as_decoded() -> None:
    for _name, wire in iter_v11_hex_messages():
        assert count_items(wire, 10**6) == items_in(decode(wire))


def test_the_walk_stops_one_past_its_bound_however_many_items_follow() -> None:
    many = encode(Item(0x420005, ItemType.STRUCTURE,
                       [Item(0x420001, ItemType.INTEGER, n) for n in range(50_000)]))
    # An unreadable tail after the counted items is never reached.
    cut = many[:4] + (len(many) - 8 + 8).to_bytes(4, "big") + many[8:] + b"\x42\x00\x01\x02"
    cut += (1 << 30).to_bytes(4, "big")
    for walk in (count_items, count_items_python):
        assert walk(many, 100) == 101
        assert walk(cut, 100) == 101
        assert walk(many, 10**6) == 50_001
        assert walk(cut, 10**6) == -1


def test_a_max_depth_out_of_range_is_refused_alike() -> None:
    """The C walk cut max_depth to an int and recursed once a level: 2**31 - 1 overflowed
    (it answered -1 where the Python walk counted), and a large one with deep bytes
    overflowed the C stack. Both walks take 0 to MAX_DEPTH_LIMIT."""
    import struct

    from kcm.ttlv.item_count import MAX_DEPTH_LIMIT, count_items, count_items_python

    wire = struct.pack(">II", 0x42000501, 16) + struct.pack(">II", 0x42000602, 4) + bytes(8)
    for depth in (-1, MAX_DEPTH_LIMIT + 1, 2**31 - 1, 2**32 + 1):
        for walk in (count_items, count_items_python):
            with pytest.raises(ValueError, match="max_depth must be from 0 to 256"):
                walk(wire, 10, max_depth=depth)
    assert count_items(wire, 10, max_depth=MAX_DEPTH_LIMIT) == count_items_python(
        wire, 10, max_depth=MAX_DEPTH_LIMIT) == 2
