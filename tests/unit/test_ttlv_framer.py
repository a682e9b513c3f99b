"""The streaming framer: whole messages out, oversize refused from the header alone."""

from __future__ import annotations

import pytest

from kcm.ttlv import Item, ItemType, MessageTooLarge, TtlvError, encode
from kcm.ttlv.framer import Framer
from kcm.ttlv.types import structure


def message(n: int) -> bytes:
    return encode(structure(0x420078, Item(0x420020, ItemType.BYTE_STRING, bytes(n))))


def test_byte_by_byte_and_many_at_once() -> None:
    one, two = message(3), message(40)
    framer = Framer(1024)
    out = []
    for b in one + two:
        out += framer.feed(bytes([b]))
    assert out == [one, two]
    assert framer.feed(one + two + one[:5]) == [one, two]
    assert framer.buffered == 5


def test_oversize_refused_from_the_header_alone() -> None:
    framer = Framer(64)
    with pytest.raises(MessageTooLarge):
        framer.feed(message(100)[:8])


def test_non_structure_header_is_refused() -> None:
    with pytest.raises(TtlvError, match="Structure"):
        Framer(64).feed(encode(Item(0x420078, ItemType.INTEGER, 1)))


def test_length_not_multiple_of_eight_is_refused() -> None:
    with pytest.raises(TtlvError, match="multiple of 8"):
        Framer(64).feed(bytes.fromhex("4200780100000005"))


def test_one_whole_message_in_one_read_is_handed_out_as_it_came() -> None:
    one = message(3)
    framer = Framer(1024)
    [out] = framer.feed(one)
    assert out is one and framer.buffered == 0
    # Not so with bytes already buffered, or given something other than bytes.
    assert framer.feed(one[:3]) == [] and framer.feed(one[3:] + one) == [one, one]
    assert framer.feed(bytearray(one)) == [one]
    # A whole message that is too large is refused all the same.
    with pytest.raises(MessageTooLarge):
        Framer(16).feed(one)


def test_clear_forgets_a_message_begun() -> None:
    one = message(3)
    framer = Framer(1024)
    assert framer.feed(one[:5]) == [] and framer.buffered == 5
    framer.clear()
    assert framer.buffered == 0 and framer.feed(one) == [one]


def test_messages_before_an_unusable_header_are_handed_out_and_the_error_kept() -> None:
    one, two = message(3), message(8)
    for bad, kind in ((bytes(8), TtlvError),
                      (bytes.fromhex("4200780100400000"), MessageTooLarge)):
        framer = Framer(1024)
        assert framer.feed(one[:5]) == []
        # The rest of one, a whole two, and a header that cannot be read, in one read.
        assert framer.feed(one[5:] + two + bad + one) == [one, two]
        assert isinstance(framer.error, kind) and framer.buffered == 0
        with pytest.raises(kind):  # the stream cannot be read past it
            framer.feed(one)


def test_an_unusable_header_with_nothing_before_it_is_raised_and_kept() -> None:
    one = message(3)
    framer = Framer(1024)
    with pytest.raises(TtlvError):
        framer.feed(bytes(8) + one)
    assert isinstance(framer.error, TtlvError)
    with pytest.raises(TtlvError):
        framer.feed(one)
    framer = Framer(16)
    with pytest.raises(MessageTooLarge):
        framer.feed(one)  # the one-read shortcut keeps it too
    assert isinstance(framer.error, MessageTooLarge)
    assert Framer(1024).error is None
