"""Link frames: every frame type round-trips; malformed frames raise FrameError only."""

from __future__ import annotations

import contextlib
import struct
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcm.kmip_protocol import ConnectionLimits
from kcm.l4.service_key import ServiceKey
from kcm.link.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    FRAME_HEAD_SIZE,
    FRAME_OVERHEAD,
    MAX_SENT_TOMBSTONES,
    Frame,
    FrameError,
    FrameType,
    Tag,
    decode_frame,
    decode_frame_tree,
    decode_payload,
    encode_frame,
    encode_payload,
    frame_item,
    frame_size_limit,
    peek_frame_head,
)
from kcm.ttlv import Item, ItemType, encode

KEY = ServiceKey(uid="l3-0f6c6d8e-0000-4000-8000-000000000001", tenant="demo", service="app",
                 version=2, state=2, key=bytes(range(32)))

FRAMES = [
    Frame(FrameType.HELLO, link_version=1, peer_name="gw1", sequence=-1),
    Frame(FrameType.WELCOME, link_version=1, peer_name="core", sequence=42,
          heartbeat_interval=1),
    Frame(FrameType.WELCOME, link_version=1, peer_name="core", sequence=42,
          heartbeat_interval=1, policy='{"CN=a,O=B":"tenant/t/service/s"}'),
    Frame(FrameType.REQUEST, stream_id=7, caller_identity="spiffe://kcm.test/tenant/demo/service/app",
          caller_source="127.0.0.1:40000", message=b"\x42\x00\x78\x01" + bytes(4)),
    Frame(FrameType.REQUEST, stream_id=8, caller_identity="spiffe://kcm.test/tenant/demo/service/x",
          caller_subject="CN=legacy,O=KCM Dev", caller_source="::1:1", message=b"m"),
    Frame(FrameType.RESPONSE, stream_id=2**31 - 1, message=b"answer"),
    Frame(FrameType.FETCH_SERVICE_KEY, stream_id=3, caller_identity="spiffe://kcm.test/x",
          tenant="demo", service="app"),
    Frame(FrameType.FETCH_SERVICE_KEY, stream_id=3, caller_identity="spiffe://kcm.test/x",
          tenant="demo", service="app", unique_identifier=KEY.uid),
    Frame(FrameType.SERVICE_KEYS, stream_id=3, service_keys=[KEY, KEY]),
    Frame(FrameType.SERVICE_KEYS, stream_id=3, error="no", result_reason=1),
    Frame(FrameType.EVENT, sequence=9, kind="l3.rotated", tenant="demo",
          payload={"unique_identifier": KEY.uid, "service": "app", "key_version": 2}),
    Frame(FrameType.EVENT, sequence=10, kind="policy", payload={}),
    Frame(FrameType.EVENT, sequence=10, kind="policy", payload={"policy": "{}"}),
    Frame(FrameType.EVENT, sequence=11, kind="l4.tombstone", tenant="demo",
          payload={"token_id": "ab" * 16, "unique_identifier": KEY.uid}),
    Frame(FrameType.EVENT, sequence=12, kind="l3.state", tenant="demo",
          payload={"unique_identifier": KEY.uid, "service": "app", "state": 5}),
    Frame(FrameType.PING, stream_id=1),
    Frame(FrameType.PONG, stream_id=1),
    Frame(FrameType.GOAWAY, error="bye"),
    Frame(FrameType.GOAWAY),
    Frame(FrameType.CANCEL, stream_id=7),
    Frame(FrameType.ORIGIN, deployment="0f" * 16, restore_generation=2),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: f.type.name)
def test_every_frame_round_trips(frame: Frame) -> None:
    wire = encode_frame(frame)
    assert decode_frame(wire) == frame
    assert encode_frame(decode_frame(wire)) == wire


def test_the_wire_is_a_link_frame_structure_with_its_type_first() -> None:
    wire = encode_frame(Frame(FrameType.PING, stream_id=5))
    assert wire[:4] == bytes.fromhex("54B00101")
    assert wire[8:12] == bytes.fromhex("54B00205")
    assert struct.unpack(">I", wire[16:20])[0] == FrameType.PING


def test_cancel_is_frame_type_11_with_its_stream_and_nothing_else() -> None:
    wire = encode_frame(Frame(FrameType.CANCEL, stream_id=7))
    assert wire == _wire(_type(11), Item(Tag.STREAM_ID, ItemType.INTEGER, 7))
    assert peek_frame_head(wire[:FRAME_HEAD_SIZE]) == (FrameType.CANCEL, 7)


def test_service_key_material_never_shows_in_repr() -> None:
    assert KEY.key.hex() not in repr(Frame(FrameType.SERVICE_KEYS, stream_id=1,
                                           service_keys=[KEY]))


def test_payload_bytes_round_trip() -> None:
    payload = {"unique_identifier": "l3-x", "service": "app", "key_version": 3}
    assert decode_payload(encode_payload(payload)) == payload
    with pytest.raises(FrameError):
        encode_payload({"colour": "red"})
    with pytest.raises(FrameError):
        decode_payload(b"junk")


def _wire(*children: Item, tag: int = Tag.LINK_FRAME) -> bytes:
    return encode(Item(tag, ItemType.STRUCTURE, list(children)))


def _type(value: int) -> Item:
    return Item(Tag.FRAME_TYPE, ItemType.ENUMERATION, value)


MALFORMED = {
    "empty": b"",
    "truncated": encode_frame(FRAMES[0])[:-3],
    "trailing bytes": encode_frame(FRAMES[0]) + bytes(8),
    "not a structure": encode(Item(Tag.LINK_FRAME, ItemType.INTEGER, 1)),
    "another tag": _wire(_type(8), tag=0x420078),
    "no frame type": _wire(Item(Tag.STREAM_ID, ItemType.INTEGER, 1)),
    "empty frame": _wire(),
    "unknown frame type": _wire(_type(99)),
    "frame type not first": _wire(Item(Tag.STREAM_ID, ItemType.INTEGER, 1), _type(8)),
    "unknown field": _wire(_type(8), Item(0x54B0FF, ItemType.INTEGER, 1)),
    "wrong field type": _wire(_type(8), Item(Tag.STREAM_ID, ItemType.LONG_INTEGER, 1)),
    "repeated field": _wire(_type(8), Item(Tag.STREAM_ID, ItemType.INTEGER, 1),
                            Item(Tag.STREAM_ID, ItemType.INTEGER, 2)),
    "negative stream id": _wire(_type(8), Item(Tag.STREAM_ID, ItemType.INTEGER, -1)),
    "request without stream": _wire(
        _type(3), Item(Tag.CALLER_IDENTITY, ItemType.TEXT_STRING, "x"),
        Item(Tag.CALLER_SOURCE, ItemType.TEXT_STRING, "y"),
        Item(Tag.KMIP_MESSAGE, ItemType.BYTE_STRING, b"z")),
    "cancel without stream": _wire(_type(11)),
    "cancel of stream 0": _wire(_type(11), Item(Tag.STREAM_ID, ItemType.INTEGER, 0)),
    "hello without sequence": _wire(_type(1), Item(Tag.LINK_VERSION, ItemType.INTEGER, 1),
                                    Item(Tag.PEER_NAME, ItemType.TEXT_STRING, "gw")),
    "origin without generation": _wire(_type(16), Item(Tag.DEPLOYMENT, ItemType.TEXT_STRING,
                                                       "0f" * 16)),
    "event without payload": _wire(_type(7), Item(Tag.EVENT_SEQUENCE, ItemType.LONG_INTEGER, 1),
                                   Item(Tag.EVENT_KIND, ItemType.TEXT_STRING, "policy")),
    "bad payload field": _wire(_type(7), Item(Tag.EVENT_SEQUENCE, ItemType.LONG_INTEGER, 1),
                               Item(Tag.EVENT_KIND, ItemType.TEXT_STRING, "policy"),
                               Item(Tag.EVENT_PAYLOAD, ItemType.STRUCTURE,
                                    [Item(0x420001, ItemType.INTEGER, 1)])),
    "incomplete service key": _wire(_type(6), Item(Tag.STREAM_ID, ItemType.INTEGER, 1),
                                    Item(Tag.SERVICE_KEY, ItemType.STRUCTURE, [
                                        Item(Tag.UNIQUE_IDENTIFIER, ItemType.TEXT_STRING, "u")])),
    "too deep": _wire(_type(8), Item(Tag.EVENT_PAYLOAD, ItemType.STRUCTURE, [
        Item(0x420001, ItemType.STRUCTURE, [Item(0x420001, ItemType.STRUCTURE, [
            Item(0x420001, ItemType.STRUCTURE, [])])])])),
}


@pytest.mark.parametrize("wire", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_frames_raise_frame_error(wire: bytes) -> None:
    with pytest.raises(FrameError):
        decode_frame(wire)


def test_an_oversized_frame_is_refused() -> None:
    wire = encode_frame(Frame(FrameType.RESPONSE, stream_id=1, message=bytes(5000)))
    with pytest.raises(FrameError):
        decode_frame(wire, max_size=4096)


def test_unencodable_values_raise_frame_error() -> None:
    with pytest.raises(FrameError):
        encode_frame(Frame(FrameType.PING, stream_id=2**40))


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_frame_error(data: bytes) -> None:
    with contextlib.suppress(FrameError):
        decode_frame(data)


@given(st.integers(0, 2**31 - 1), st.binary(max_size=64), st.text(max_size=20))
def test_requests_round_trip(stream_id: int, message: bytes, source: str) -> None:
    frame = Frame(FrameType.RESPONSE if stream_id else FrameType.PONG, stream_id=stream_id,
                  message=message if stream_id else None)
    frame.caller_source = source or None
    assert decode_frame(encode_frame(frame)) == frame
    assert frame_item(frame).tag == Tag.LINK_FRAME


# Frame size: a whole maximum-size KMIP message always fits -----------------------------------
def kmip_message(size: int) -> bytes:
    """A TTLV Response Message of exactly ``size`` bytes (a multiple of 8), as the core's
    largest permitted answer."""
    return struct.pack(">II", 0x42007B01, size - 8) + bytes(size - 8)


def test_the_frame_size_is_derived_from_the_maximum_message_size() -> None:
    assert frame_size_limit(1 << 20) == (1 << 20) + FRAME_OVERHEAD
    assert frame_size_limit(8 << 20) == (8 << 20) + FRAME_OVERHEAD
    assert frame_size_limit(ConnectionLimits().max_message_size) == DEFAULT_MAX_FRAME_SIZE
    assert FRAME_OVERHEAD == 64 << 10


@pytest.mark.parametrize("max_message_size", [16 << 10, 1 << 20, 4 << 20])
def test_an_answer_of_the_maximum_message_size_fits_a_response_frame(
        max_message_size: int) -> None:
    frame = Frame(FrameType.RESPONSE, stream_id=2**31 - 1,
                  message=kmip_message(max_message_size))
    wire = encode_frame(frame)
    assert len(wire) <= frame_size_limit(max_message_size)
    assert decode_frame(wire, max_size=frame_size_limit(max_message_size)) == frame


def test_a_request_of_the_maximum_size_with_long_caller_fields_fits_its_frame() -> None:
    identity = "spiffe://kcm.test/tenant/" + "t" * 1000 + "/service/" + "s" * 1000  # 2 KiB
    frame = Frame(FrameType.REQUEST, stream_id=2**31 - 1, caller_identity=identity,
                  caller_subject="CN=" + "x" * 16_000 + ",O=KCM Dev",
                  caller_source="[2001:db8::1]:65535", message=kmip_message(1 << 20))
    assert len(encode_frame(frame)) <= frame_size_limit(1 << 20)


def test_the_head_of_a_frame_names_its_type_and_stream() -> None:
    wire = encode_frame(Frame(FrameType.RESPONSE, stream_id=2**31 - 1, message=bytes(100)))
    assert peek_frame_head(wire[:FRAME_HEAD_SIZE]) == (FrameType.RESPONSE, 2**31 - 1)
    event = encode_frame(Frame(FrameType.EVENT, sequence=1, kind="policy", payload={}))
    assert peek_frame_head(event[:FRAME_HEAD_SIZE]) == (FrameType.EVENT, 0)
    assert peek_frame_head(wire[:30]) == (FrameType.RESPONSE, 0)  # StreamId cut short
    assert peek_frame_head(b"\x42\x00\x7b\x01" + wire[4:FRAME_HEAD_SIZE]) == (None, 0)
    assert peek_frame_head(wire[:8] + bytes(32)) == (None, 0)


@given(st.binary(max_size=FRAME_HEAD_SIZE))
def test_any_head_is_read_without_error(head: bytes) -> None:
    frame_type, stream_id = peek_frame_head(head)
    assert frame_type is None or isinstance(frame_type, FrameType)
    assert 0 <= stream_id < 2**31


# --- the scalar-frame fast codec against the general one ------------------------------------

_TEXT = st.text(max_size=40)
_SCALAR_FRAMES = st.builds(
    Frame, st.sampled_from(list(FrameType)),
    stream_id=st.integers(0, 2**31 - 1),
    link_version=st.none() | st.integers(-(2**31), 2**31 - 1),
    peer_name=st.none() | _TEXT,
    sequence=st.none() | st.integers(-(2**63), 2**63 - 1),
    message=st.none() | st.binary(max_size=64),
    caller_identity=st.none() | _TEXT,
    caller_subject=st.none() | _TEXT,
    caller_source=st.none() | _TEXT,
    tenant=st.none() | _TEXT,
    service=st.none() | _TEXT,
    unique_identifier=st.none() | _TEXT,
    kind=st.none() | _TEXT,
    error=st.none() | _TEXT,
    result_reason=st.none() | st.integers(0, 2**32 - 1),
    heartbeat_interval=st.none() | st.integers(0, 2**32 - 1),
    policy=st.none() | _TEXT,
    view=st.none() | st.binary(max_size=16),
    deployment=st.none() | _TEXT,
    restore_generation=st.none() | st.integers(-(2**31), 2**31 - 1),
)


@given(_SCALAR_FRAMES)
def test_scalar_frames_encode_as_the_general_encoder_writes_them(frame: Frame) -> None:
    assert encode_frame(frame) == encode(frame_item(frame))


def _general_decode(wire: bytes) -> Frame | str:
    """What the reference decoder (the Item tree) makes of ``wire``: a frame, or the error."""
    try:
        return decode_frame_tree(wire)
    except FrameError as e:
        return f"error: {type(e).__name__}"


@given(_SCALAR_FRAMES)
def test_scalar_frames_decode_as_the_general_decoder_reads_them(frame: Frame) -> None:
    wire = encode_frame(frame)
    general = _general_decode(wire)
    try:
        decoded: Frame | str = decode_frame(wire)
    except FrameError as e:
        decoded = f"error: {type(e).__name__}"
    assert decoded == general


@given(_SCALAR_FRAMES, st.data())
def test_damaged_scalar_frames_decode_as_the_general_decoder_reads_them(
        frame: Frame, data: st.DataObject) -> None:
    """Flipped bytes, cut or lengthened frames: the fast reader accepts exactly the frames the
    general one accepts, with the same fields, and leaves every refusal to it."""
    wire = bytearray(encode_frame(frame))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(wire) - 1))
        wire[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        wire = wire[:data.draw(st.integers(0, len(wire)))]
    wire = bytes(wire)
    general = _general_decode(wire)
    try:
        decoded: Frame | str = decode_frame(wire)
    except FrameError:
        decoded = "refused"
    if isinstance(general, Frame):
        assert decoded == general
    else:
        assert decoded == "refused"


# --- a ServiceKey's tombstones (link version 5) ------------------------------------------


def _key_fields(key: ServiceKey) -> list[Item]:
    return [Item(Tag.UNIQUE_IDENTIFIER, ItemType.TEXT_STRING, key.uid),
            Item(Tag.KEY_VERSION, ItemType.INTEGER, key.version),
            Item(Tag.STATE, ItemType.ENUMERATION, key.state),
            Item(Tag.KEY_MATERIAL, ItemType.BYTE_STRING, key.key),
            Item(Tag.TENANT, ItemType.TEXT_STRING, key.tenant),
            Item(Tag.SERVICE, ItemType.TEXT_STRING, key.service)]


def _keys_wire(*extra: Item) -> bytes:
    return _wire(_type(6), Item(Tag.STREAM_ID, ItemType.INTEGER, 3),
                 Item(Tag.SERVICE_KEY, ItemType.STRUCTURE, [*_key_fields(KEY), *extra]))


def _count(n: int) -> Item:
    return Item(Tag.TOMBSTONE_COUNT, ItemType.INTEGER, n)


def _token(token_id: str) -> Item:
    return Item(Tag.TOKEN_ID, ItemType.TEXT_STRING, token_id)


def test_a_service_keys_tombstones_round_trip_and_none_means_not_sent() -> None:
    tombstones = frozenset({"ab" * 16, "cd" * 16, "ef" * 16})
    keys = [replace(KEY, tombstones=tombstones), replace(KEY, tombstones=frozenset()),
            replace(KEY, tombstones=None)]
    wire = encode_frame(Frame(FrameType.SERVICE_KEYS, stream_id=3, service_keys=keys))
    decoded = decode_frame(wire)
    assert [key.tombstones for key in decoded.service_keys] == [tombstones, frozenset(), None]
    assert encode_frame(decoded) == wire


def test_a_service_key_of_an_older_core_has_its_tombstones_unknown() -> None:
    """A core of link version 4 sends no TombstoneCount: not "none", but unknown."""
    [key] = decode_frame(_keys_wire()).service_keys
    assert key == KEY and key.tombstones is None
    [key] = decode_frame(_keys_wire(_count(0))).service_keys
    assert key.tombstones == frozenset()


@pytest.mark.parametrize("extra", [
    [_token("ab" * 16)],  # a TokenId without TombstoneCount
    [_token("ab" * 16), _count(1)],  # before it
    [_count(2), _token("ab" * 16)],  # fewer than counted
    [_count(0), _token("ab" * 16)],  # more
    [_count(2), _token("ab" * 16), _token("ab" * 16)],  # the same twice
    [_count(0), _count(0)],  # TombstoneCount twice
    [Item(Tag.TOMBSTONE_COUNT, ItemType.LONG_INTEGER, 0)],  # of the wrong type
], ids=["no count", "count after", "fewer", "more", "repeated", "two counts", "wrong type"])
def test_malformed_tombstones_raise_frame_error(extra: list[Item]) -> None:
    with pytest.raises(FrameError):
        decode_frame(_keys_wire(*extra))


def test_the_most_tombstones_sent_fit_in_the_frame_overhead() -> None:
    """They never make SERVICE_KEYS too large for a gateway, whatever its message size."""
    tombstones = frozenset(f"{i:032x}" for i in range(MAX_SENT_TOMBSTONES))
    wire = encode_frame(Frame(FrameType.SERVICE_KEYS, stream_id=3, service_keys=[
        replace(KEY, tombstones=tombstones), KEY, KEY]))
    assert len(wire) <= FRAME_OVERHEAD
    assert decode_frame(wire, max_size=frame_size_limit(1)).service_keys[0].tombstones \
        == tombstones
