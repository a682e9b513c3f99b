"""FETCH_TOMBSTONES and TOMBSTONES (link version 9): they round-trip through both decoders,
and anything outside their rules is refused (decoded strictly)."""

from __future__ import annotations

import pytest

from kcm.link.frames import (
    FRAME_OVERHEAD,
    LINK_VERSION,
    MAX_SENT_TOMBSTONES,
    PAGES_VERSION,
    Frame,
    FrameError,
    FrameType,
    Tag,
    decode_frame,
    decode_frame_tree,
    encode_frame,
    frame_item,
    frame_size_limit,
)
from kcm.ttlv import Item, ItemType, encode

UID = "l3-0f6c6d8e-0000-4000-8000-000000000001"
CALLER = "spiffe://kcm.test/tenant/demo/service/app"
TOKENS = [f"{n:032x}" for n in range(3)]

FRAMES = [
    Frame(FrameType.FETCH_TOMBSTONES, stream_id=3, caller_identity=CALLER,
          unique_identifier=UID),
    Frame(FrameType.FETCH_TOMBSTONES, stream_id=3, caller_identity=CALLER,
          caller_subject="CN=legacy,O=KCM Dev", unique_identifier=UID, after="ab" * 16),
    Frame(FrameType.TOMBSTONES, stream_id=3, token_ids=TOKENS, more=True),
    Frame(FrameType.TOMBSTONES, stream_id=3, token_ids=TOKENS, more=False),
    Frame(FrameType.TOMBSTONES, stream_id=3, more=False),
    Frame(FrameType.TOMBSTONES, stream_id=3),
    Frame(FrameType.TOMBSTONES, stream_id=3, error="no object l3-0f6c6d8e-0...",
          result_reason=1),
]


def test_link_version_9_is_paged_tombstones() -> None:
    assert LINK_VERSION == PAGES_VERSION == 9
    assert (FrameType.FETCH_TOMBSTONES, FrameType.TOMBSTONES) == (17, 18)


@pytest.mark.parametrize("frame", FRAMES)
def test_page_frames_round_trip(frame: Frame) -> None:
    wire = encode_frame(frame)
    assert wire == encode(frame_item(frame))
    assert decode_frame(wire) == frame == decode_frame_tree(wire)


def test_a_full_page_fits_the_frame_overhead() -> None:
    tokens = [f"{n:032x}" for n in range(MAX_SENT_TOMBSTONES)]
    wire = encode_frame(Frame(FrameType.TOMBSTONES, stream_id=2**31 - 1, token_ids=tokens,
                              more=True))
    assert len(wire) <= FRAME_OVERHEAD
    assert decode_frame(wire, max_size=frame_size_limit(1)).token_ids == tokens


def _wire(frame_type: FrameType, *fields: Item) -> bytes:
    return encode(Item(Tag.LINK_FRAME, ItemType.STRUCTURE, [
        Item(Tag.FRAME_TYPE, ItemType.ENUMERATION, int(frame_type)),
        Item(Tag.STREAM_ID, ItemType.INTEGER, 3), *fields]))


def _token(token_id: str) -> Item:
    return Item(Tag.TOKEN_ID, ItemType.TEXT_STRING, token_id)


_CALLER = Item(Tag.CALLER_IDENTITY, ItemType.TEXT_STRING, CALLER)
_UID = Item(Tag.UNIQUE_IDENTIFIER, ItemType.TEXT_STRING, UID)
_MORE = Item(Tag.MORE_TOMBSTONES, ItemType.BOOLEAN, True)
_ERROR = Item(Tag.ERROR_MESSAGE, ItemType.TEXT_STRING, "no")
_REASON = Item(Tag.RESULT_REASON, ItemType.ENUMERATION, 1)


@pytest.mark.parametrize("wire", [
    _wire(FrameType.TOMBSTONES, _token("b" * 32), _token("a" * 32)),  # out of order
    _wire(FrameType.TOMBSTONES, _token("a" * 32), _token("a" * 32)),  # twice
    _wire(FrameType.TOMBSTONES, *[_token(f"{n:032x}") for n in range(MAX_SENT_TOMBSTONES + 1)]),
    _wire(FrameType.TOMBSTONES, _MORE, _MORE),  # MoreTombstones twice
    _wire(FrameType.TOMBSTONES, _MORE),  # more follow, yet no cursor to ask them after
    _wire(FrameType.TOMBSTONES, Item(Tag.MORE_TOMBSTONES, ItemType.INTEGER, 1)),
    _wire(FrameType.TOMBSTONES, _token("a" * 32), _ERROR, _REASON),  # a page and a refusal
    _wire(FrameType.TOMBSTONES, _ERROR),  # a refusal without its reason
    _wire(FrameType.TOMBSTONES, _ERROR, _REASON,
          Item(Tag.TENANT, ItemType.TEXT_STRING, "demo")),
    _wire(FrameType.FETCH_TOMBSTONES, _CALLER),  # no uid
    _wire(FrameType.FETCH_TOMBSTONES, _UID),  # no caller
    _wire(FrameType.FETCH_TOMBSTONES, _CALLER, _UID, _token("a" * 32), _token("b" * 32)),
    _wire(FrameType.FETCH_TOMBSTONES, _CALLER, _UID, _MORE),
    _wire(FrameType.SERVICE_KEYS, _token("a" * 32)),  # a TokenId elsewhere
    _wire(FrameType.SERVICE_KEYS, _MORE),
    encode(Item(Tag.LINK_FRAME, ItemType.STRUCTURE, [  # no stream
        Item(Tag.FRAME_TYPE, ItemType.ENUMERATION, int(FrameType.TOMBSTONES))])),
], ids=["order", "twice", "too many", "more twice", "more without tokens",
        "more not boolean", "page and refusal",
        "half a refusal", "refusal naming a tenant", "no uid", "no caller", "two cursors",
        "more in a fetch", "token elsewhere", "more elsewhere", "no stream"])
def test_page_frames_outside_the_rules_are_refused(wire: bytes) -> None:
    with pytest.raises(FrameError):
        decode_frame(wire)
    with pytest.raises(FrameError):
        decode_frame_tree(wire)
