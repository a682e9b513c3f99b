"""A request over the batch-item limit is refused from its header and at most limit + 1
item heads, however many items it holds (kcm.kernel.batch_limit, kcm.ttlv.peek)."""

from __future__ import annotations

import pytest

from kcm.kernel.batch_limit import over_batch_limit
from kcm.kernel.versions import version_of
from kcm.kmip.enums import ResultReason
from kcm.ttlv import Item, ItemType, TtlvError
from kcm.ttlv.peek import peek_request, peek_request_head
from tests.unit.test_ttlv_peek import batch_item, request, uid

GET = 0x0A
LOCATE = 0x08


def items(count: int, operation: int = GET) -> list[Item]:
    return [batch_item(operation, uid(f"k{n}")) for n in range(count)]


def with_unreadable_tail(wire: bytes) -> bytes:
    """``wire`` with an item head appended whose length overruns the message, the message's
    own length grown to hold the head: what reads past the items before it fails."""
    tail = (0x42000F01).to_bytes(4, "big") + (1 << 20).to_bytes(4, "big")
    return wire[:4] + (len(wire) - 8 + len(tail)).to_bytes(4, "big") + wire[8:] + tail


def test_the_head_counts_items_no_further_than_one_past_the_bound() -> None:
    wire = request(*items(10))
    assert peek_request_head(wire, max_items=100).items == 10
    head = peek_request_head(wire, max_items=3)
    assert (head.version, head.batch_count, head.items, head.stranger) == ((2, 1), 10, 4, None)
    assert peek_request_head(wire, max_items=0).items == 1


def test_what_the_head_does_not_count_it_does_not_read() -> None:
    wire = with_unreadable_tail(request(*items(5)))
    with pytest.raises(TtlvError):
        peek_request(wire)
    assert peek_request_head(wire, max_items=4).items == 5
    with pytest.raises(TtlvError):
        peek_request_head(wire, max_items=5)


def test_the_head_names_the_first_item_that_is_not_a_batch_item() -> None:
    stray = Item(0x420094, ItemType.TEXT_STRING, "stray")
    assert peek_request_head(request(*items(2), stray, *items(1)),
                             max_items=5).stranger == 0x420094


def test_a_request_at_the_limit_is_not_refused() -> None:
    assert over_batch_limit(request(*items(64)), 64) is None
    assert over_batch_limit(request(), 64) is None


def test_a_request_over_the_limit_is_refused_without_reading_further() -> None:
    wire = with_unreadable_tail(request(*items(65, LOCATE)))
    assert over_batch_limit(wire, 64) == (
        (2, 1), ResultReason.INVALID_MESSAGE,
        "more than 64 batch items; at most 64 are accepted in one request")
    assert over_batch_limit(request(*items(4), major=1, minor=4), 3)[:2] == (
        (1, 4), ResultReason.INVALID_MESSAGE)


def test_an_unsupported_version_is_said_first() -> None:
    assert over_batch_limit(request(*items(4), major=3, minor=0), 3) == (
        (2, 1), ResultReason.UNSUPPORTED_PROTOCOL_VERSION,
        "protocol version 3.0 is not supported")


def test_a_stray_field_among_the_items_is_invalid_field() -> None:
    stray = Item(0x420094, ItemType.TEXT_STRING, "stray")
    assert over_batch_limit(request(*items(2), stray, *items(2)), 3) == (
        (2, 1), ResultReason.INVALID_FIELD,
        "unexpected field Unique Identifier in Request Message")


def test_a_header_that_cannot_be_read_is_left_to_the_decoder() -> None:
    assert over_batch_limit(b"\x42\x00\x78\x01\x00\x00\x00\x08garbage!", 3) is None
    assert over_batch_limit(b"", 3) is None


def test_the_answer_version_is_read_from_the_header_alone() -> None:
    assert version_of(with_unreadable_tail(request(*items(2), major=1, minor=4))) == (1, 4)
    assert version_of(b"nothing") == (1, 0)
