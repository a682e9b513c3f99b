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


def _plain_encrypt_with_parameters(fields: int) -> bytes:
    """A plain Encrypt (one item: Unique Identifier, Cryptographic Parameters, Data) whose
    Cryptographic Parameters hold ``fields`` Padding Methods."""
    from kcm.kmip.attributes import CryptographicParameters
    from kcm.kmip.enums import PaddingMethod
    from kcm.kmip.tags import Tag
    from kcm.testing.requests import encrypt
    from kcm.testing.requests import request as kmip_request
    from kcm.ttlv import encode

    one = encrypt("k" * 8, b"record")
    one.request_payload.cryptographic_parameters = CryptographicParameters(
        padding_method=PaddingMethod.NONE)
    wire = kmip_request(one)
    padding = encode(Item(Tag.PADDING_METHOD, ItemType.ENUMERATION, int(PaddingMethod.NONE)))
    # Repeat the one Padding Method the structure holds, and lengthen every structure
    # around it by what was added.
    at = wire.index(padding) + len(padding)
    added = padding * (fields - 1)
    grown = bytearray(wire[:at] + added + wire[at:])
    for tag in (Tag.REQUEST_MESSAGE, Tag.BATCH_ITEM, Tag.REQUEST_PAYLOAD,
                Tag.CRYPTOGRAPHIC_PARAMETERS):
        i = grown.index(int(tag).to_bytes(3, "big") + bytes([ItemType.STRUCTURE]))
        length = int.from_bytes(grown[i + 4:i + 8], "big") + len(added)
        grown[i + 4:i + 8] = length.to_bytes(4, "big")
    return bytes(grown)


def test_a_plain_request_over_the_limit_is_refused_before_its_parameters_are_decoded(
        core, monkeypatch: pytest.MonkeyPatch) -> None:
    """The core's plain reader decodes a Cryptographic Parameters structure whole: a plain
    Encrypt whose structure holds 60,000 fields was decoded (0.2-0.3 s of the
    interpreter's time) before the limit refused it. It is counted first."""
    from kcm.kernel import plain_messages
    from kcm.testing.requests import response

    decoded = []

    def counted(*args):
        decoded.append(args[1])
        return decode_item(*args)

    decode_item = plain_messages.decode_item
    monkeypatch.setattr(plain_messages, "decode_item", counted)
    wire = _plain_encrypt_with_parameters(60_000)
    assert len(wire) > 900_000
    [answer] = response(core.client().send(wire)).batch_items
    assert answer.result_reason == ResultReason.INVALID_MESSAGE
    assert answer.result_message.startswith("request too large: more than 16384 fields")
    assert decoded == []
