"""The link's framer: whole frames out; a frame over the limit is skipped and named by its
type and stream, and the frames after it still arrive; only a header that cannot be a
frame's is fatal."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcm.link.framer import LinkFramer, OversizedFrame
from kcm.link.frames import Frame, FrameType, encode_frame
from kcm.ttlv import Item, ItemType, TtlvError, encode

PING = encode_frame(Frame(FrameType.PING, stream_id=5))
SMALL = encode_frame(Frame(FrameType.RESPONSE, stream_id=6, message=bytes(100)))
BIG = encode_frame(Frame(FrameType.RESPONSE, stream_id=7, message=bytes(5000)))
BIG_EVENT = encode_frame(Frame(FrameType.EVENT, sequence=1, kind="policy",
                               payload={"policy": "x" * 5000}))
LIMIT = 1024


def feed_in_pieces(framer: LinkFramer, data: bytes, size: int) -> list:
    out: list = []
    for start in range(0, len(data), size):
        out += framer.feed(data[start:start + size])
    return out


@pytest.mark.parametrize("piece", [1, 7, 40, 1000, 1 << 20])
def test_an_oversized_frame_is_skipped_and_the_next_frames_arrive(piece: int) -> None:
    framer = LinkFramer(LIMIT)
    out = feed_in_pieces(framer, PING + BIG + SMALL + BIG_EVENT + PING, piece)
    assert out == [PING, OversizedFrame(len(BIG), FrameType.RESPONSE, 7), SMALL,
                   OversizedFrame(len(BIG_EVENT), FrameType.EVENT, 0), PING]
    assert framer.buffered == 0


def test_an_oversized_frame_is_never_buffered_beyond_its_head() -> None:
    framer = LinkFramer(LIMIT)
    assert framer.feed(BIG[:39]) == []
    assert framer.buffered == 39  # waiting for the 40 bytes that name type and stream
    assert framer.feed(BIG[39:3000]) == [OversizedFrame(len(BIG), FrameType.RESPONSE, 7)]
    assert framer.buffered == 0
    assert framer.feed(BIG[3000:] + PING[:10]) == []
    assert framer.buffered == 10
    assert framer.feed(PING[10:]) == [PING]


def test_a_frame_of_exactly_the_limit_is_whole() -> None:
    frame = encode_frame(Frame(FrameType.RESPONSE, stream_id=1, message=bytes(LIMIT - 48)))
    assert len(frame) == LIMIT
    assert LinkFramer(LIMIT).feed(frame) == [frame]
    assert LinkFramer(LIMIT - 8).feed(frame) == [OversizedFrame(LIMIT, FrameType.RESPONSE, 1)]


def test_a_header_that_cannot_be_a_frames_is_fatal() -> None:
    with pytest.raises(TtlvError, match="Structure"):
        LinkFramer(LIMIT).feed(encode(Item(0x54B001, ItemType.INTEGER, 1)))
    with pytest.raises(TtlvError, match="multiple of 8"):
        LinkFramer(LIMIT).feed(bytes.fromhex("54B0010100000005"))


def test_frames_before_a_header_that_cannot_be_a_frames_are_handed_out() -> None:
    framer = LinkFramer(LIMIT)
    assert framer.feed(PING[:3]) == []
    assert framer.feed(PING[3:] + SMALL + bytes(8) + PING) == [PING, SMALL]
    assert isinstance(framer.error, TtlvError) and framer.buffered == 0
    with pytest.raises(TtlvError):  # where the next frame begins is unknown
        framer.feed(PING)
    framer = LinkFramer(LIMIT)
    with pytest.raises(TtlvError):
        framer.feed(bytes(8) + PING)
    assert isinstance(framer.error, TtlvError)


@given(st.lists(st.sampled_from([PING, SMALL, BIG, BIG_EVENT]), max_size=8),
       st.integers(1, 6000))
def test_any_sequence_in_any_pieces_yields_each_frame_once_in_order(frames, piece) -> None:
    out = feed_in_pieces(LinkFramer(LIMIT), b"".join(frames), piece)
    assert [o if isinstance(o, bytes) else o.size for o in out] == [
        f if len(f) <= LIMIT else len(f) for f in frames]
