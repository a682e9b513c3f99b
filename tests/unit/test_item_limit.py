"""A request of more TTLV items than the limit is refused from its headers
(kcm.kernel.item_limit)."""

from __future__ import annotations

import pytest

from kcm.kernel import item_limit as module
from kcm.kernel.item_limit import MAX_REQUEST_ITEMS, item_limit, over_item_limit
from kcm.kmip.enums import ResultReason
from kcm.ttlv import Item, ItemType
from tests.unit.test_ttlv_peek import batch_item, request


def comments(count: int) -> bytes:
    return request(batch_item(0x01, *[Item(0x420010, ItemType.TEXT_STRING, "")] * count))


def test_the_limit_follows_a_raised_batch_limit() -> None:
    assert item_limit(64) == MAX_REQUEST_ITEMS == 16384
    assert item_limit(1) == MAX_REQUEST_ITEMS
    assert item_limit(10_000) == 2_560_000


def test_a_request_of_more_fields_than_the_limit_is_refused() -> None:
    wire = comments(2000)
    assert len(wire) > 8 * 1000
    assert over_item_limit(wire, 1000) == (
        (2, 1), ResultReason.INVALID_MESSAGE,
        "request too large: more than 1000 fields; at most 1000 are accepted in one request")
    assert over_item_limit(wire, 3000) is None


def test_a_request_too_short_to_hold_more_is_not_counted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*_args):
        raise AssertionError("counted")

    monkeypatch.setattr(module, "count_items", never)
    wire = comments(10)
    assert over_item_limit(wire, len(wire) // 8) is None
