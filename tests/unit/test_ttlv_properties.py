"""Property tests: any item tree round-trips; any bytes give an item or the codec's error."""

from __future__ import annotations

import contextlib
import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kcm.ttlv import Item, ItemType, TtlvError, decode, encode
from kcm.ttlv.framer import Framer
from kcm.ttlv.peek import peek_request
from tests.vectors import iter_v11_hex_messages

tags = st.integers(0x420000, 0x42FFFF) | st.integers(0x540000, 0x54FFFF)
i32 = st.integers(-(2**31), 2**31 - 1)
u32 = st.integers(0, 2**32 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)

leaf = st.one_of(
    st.builds(Item, tags, st.just(ItemType.INTEGER), i32),
    st.builds(Item, tags, st.just(ItemType.LONG_INTEGER), i64),
    st.builds(Item, tags, st.just(ItemType.BIG_INTEGER), st.integers(-(2**300), 2**300)),
    st.builds(Item, tags, st.just(ItemType.ENUMERATION), u32),
    st.builds(Item, tags, st.just(ItemType.BOOLEAN), st.booleans()),
    st.builds(Item, tags, st.just(ItemType.TEXT_STRING), st.text(max_size=40)),
    st.builds(Item, tags, st.just(ItemType.BYTE_STRING), st.binary(max_size=40)),
    st.builds(Item, tags, st.just(ItemType.DATE_TIME), i64),
    st.builds(Item, tags, st.just(ItemType.INTERVAL), u32),
    st.builds(Item, tags, st.just(ItemType.DATE_TIME_EXTENDED), i64),
)
trees = st.recursive(
    leaf,
    lambda children: st.builds(
        Item, tags, st.just(ItemType.STRUCTURE), st.lists(children, max_size=6)
    ),
    max_leaves=40,
)

SEEDS = [wire for _, wire in iter_v11_hex_messages()][:60]


@given(trees)
def test_any_tree_round_trips(tree: Item) -> None:
    wire = encode(tree)
    assert len(wire) % 8 == 0
    assert decode(wire) == tree
    assert encode(decode(wire)) == wire


def _decode_or_codec_error(data: bytes) -> None:
    with contextlib.suppress(TtlvError):
        decode(data, max_size=1 << 16)


@given(st.binary(max_size=512))
def test_arbitrary_bytes_give_an_item_or_the_codec_error(data: bytes) -> None:
    _decode_or_codec_error(data)
    with contextlib.suppress(TtlvError):
        Framer(1 << 12).feed(data)
    with contextlib.suppress(TtlvError):
        peek_request(data, unique_identifier=True, create_attributes=True)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                          min_size=1, max_size=8))
def test_mutated_vectors_give_an_item_or_the_codec_error(seed: bytes, edits) -> None:
    data = bytearray(seed)
    for where, value in edits:
        data[where % len(data)] = value
    _decode_or_codec_error(bytes(data))
    with contextlib.suppress(TtlvError):
        peek_request(bytes(data), unique_identifier=True, create_attributes=True)


@given(st.integers(8, 2**32 - 1), st.binary(max_size=64))
def test_declared_lengths_never_allocate_beyond_the_input(length: int, tail: bytes) -> None:
    data = bytes.fromhex("42007801") + length.to_bytes(4, "big") + tail
    tracemalloc.start()
    try:
        _decode_or_codec_error(data)
        with contextlib.suppress(TtlvError):
            Framer(1 << 20).feed(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
