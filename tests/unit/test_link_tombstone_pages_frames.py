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
    assert PAGES_VERSION == 9 and LINK_VERSION >= PAGES_VERSION
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


def _text(tag: Tag, value: str) -> Item:
    return Item(tag, ItemType.TEXT_STRING, value)


_TENANT = _text(Tag.TENANT, "demo")
_SERVICE = _text(Tag.SERVICE, "app")
_FETCH = (_CALLER, _TENANT, _SERVICE)

# Fields outside a fetch's row of the table (each the wire's order, so that the scalar
# reader meets them too), and a FETCH_TOMBSTONES's cursor that is no TokenId: refused when
# the frame is read, with a short ASCII reason (the link's GOAWAY).
_UNRELATED = {
    "tombstones policy": _wire(FrameType.FETCH_TOMBSTONES, _text(Tag.POLICY, "{}"), _CALLER,
                               _UID),
    "tombstones tenant": _wire(FrameType.FETCH_TOMBSTONES, _CALLER, _TENANT, _UID),
    "tombstones source": _wire(FrameType.FETCH_TOMBSTONES, _CALLER,
                               _text(Tag.CALLER_SOURCE, "1.2.3.4:5"), _UID),
    "tombstones message": _wire(FrameType.FETCH_TOMBSTONES, _CALLER, _UID,
                                Item(Tag.KMIP_MESSAGE, ItemType.BYTE_STRING, b"x")),
    "tombstones digest": _wire(FrameType.FETCH_TOMBSTONES, _CALLER, _UID,
                               Item(Tag.KEYS_DIGEST, ItemType.BYTE_STRING, bytes(32))),
    "tombstones error": _wire(FrameType.FETCH_TOMBSTONES, _CALLER, _UID, _ERROR),
    "fetch sequence": _wire(FrameType.FETCH_SERVICE_KEY,
                            Item(Tag.EVENT_SEQUENCE, ItemType.LONG_INTEGER, 1), *_FETCH),
    "fetch source": _wire(FrameType.FETCH_SERVICE_KEY, _CALLER,
                          _text(Tag.CALLER_SOURCE, "1.2.3.4:5"), _TENANT, _SERVICE),
    "fetch kind": _wire(FrameType.FETCH_SERVICE_KEY, *_FETCH, _text(Tag.EVENT_KIND, "x")),
    "fetch reason": _wire(FrameType.FETCH_SERVICE_KEY, *_FETCH, _REASON),
    "fetch view": _wire(FrameType.FETCH_SERVICE_KEY, *_FETCH,
                        Item(Tag.VIEW_DIGEST, ItemType.BYTE_STRING, bytes(16))),
    "fetch token": _wire(FrameType.FETCH_SERVICE_KEY, *_FETCH, _token("a" * 32)),
    "cursor nul": _wire(FrameType.FETCH_TOMBSTONES, _CALLER, _UID, _token("a" * 31 + "\0")),
    "cursor short": _wire(FrameType.FETCH_TOMBSTONES, _CALLER, _UID, _token("a" * 31)),
    "cursor upper": _wire(FrameType.FETCH_TOMBSTONES, _CALLER, _UID, _token("A" * 32)),
    "cursor text": _wire(FrameType.FETCH_TOMBSTONES, _CALLER, _UID, _token("\u00e9" * 32)),
}


@pytest.mark.parametrize("wire", _UNRELATED.values(), ids=_UNRELATED.keys())
def test_a_fetch_with_an_unrelated_or_malformed_field_is_refused(wire: bytes) -> None:
    for decode in (decode_frame, decode_frame_tree):
        with pytest.raises(FrameError) as refused:
            decode(wire)
        reason = str(refused.value)
        assert reason.isascii() and reason.isprintable() and len(reason) <= 100, reason


@pytest.mark.parametrize("frame", [
    Frame(FrameType.FETCH_SERVICE_KEY, stream_id=3, caller_identity=CALLER,
          caller_subject="CN=legacy", tenant="demo", service="app"),
    Frame(FrameType.FETCH_SERVICE_KEY, stream_id=3, caller_identity=CALLER, tenant="",
          service="", unique_identifier=UID, keys_digest=bytes(32)),
    # (A client's words: the core answers them, Object Not Found, not the frame.)
    Frame(FrameType.FETCH_SERVICE_KEY, stream_id=3, caller_identity=CALLER, tenant="",
          service="", unique_identifier="l3-\0"),
    Frame(FrameType.FETCH_SERVICE_KEY, stream_id=3, caller_identity=CALLER, tenant="demo",
          service="a\0b"),
], ids=["service", "uid and digest", "uid with a NUL", "service with a NUL"])
def test_a_fetch_of_its_own_fields_is_read(frame: Frame) -> None:
    wire = encode_frame(frame)
    assert decode_frame(wire) == frame == decode_frame_tree(wire)
