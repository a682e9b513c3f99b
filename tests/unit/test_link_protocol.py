"""The shared link machinery over StringTransport and a Clock: dispatch, heartbeats, limits."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from kcm.link.frames import Frame, FrameTooLarge, FrameType, decode_frame, encode_frame
from kcm.link.protocol import LinkProtocol
from kcm.ttlv.framer import Framer


class Recorder(LinkProtocol):
    """Takes EVENT frames; everything else is the base class's."""

    def __init__(self, clock: Clock, **kwargs) -> None:
        super().__init__(clock, **kwargs)
        self.events: list[Frame] = []
        self.lost = 0

    def frame_EVENT(self, frame: Frame) -> None:
        self.events.append(frame)

    def link_lost(self, reason) -> None:
        self.lost += 1


def connect(**kwargs):
    clock = Clock()
    protocol = Recorder(clock, **kwargs)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, clock


def sent(transport: StringTransport) -> list[Frame]:
    frames = [decode_frame(w) for w in Framer(1 << 22).feed(transport.value())]
    transport.clear()
    return frames


EVENT = Frame(FrameType.EVENT, sequence=1, kind="policy", payload={})


def test_frames_are_dispatched_by_type_even_split_across_reads() -> None:
    protocol, transport, _ = connect()
    wire = encode_frame(EVENT) * 2
    protocol.dataReceived(wire[:5])
    protocol.dataReceived(wire[5:30])
    protocol.dataReceived(wire[30:])
    assert protocol.events == [EVENT, EVENT]
    assert sent(transport) == []


def test_ping_is_answered_with_pong_echoing_the_stream_id() -> None:
    protocol, transport, _ = connect()
    protocol.dataReceived(encode_frame(Frame(FrameType.PING, stream_id=77)))
    assert sent(transport) == [Frame(FrameType.PONG, stream_id=77)]


def test_a_frame_without_handler_is_a_protocol_error() -> None:
    protocol, transport, _ = connect()
    protocol.dataReceived(encode_frame(Frame(FrameType.RESPONSE, stream_id=1, message=b"x")))
    [goaway] = sent(transport)
    assert goaway.type is FrameType.GOAWAY and "unexpected RESPONSE" in goaway.error
    assert transport.disconnecting


def test_malformed_frame_goes_away() -> None:
    protocol, transport, _ = connect()
    protocol.dataReceived(bytes.fromhex("54B00101 00000010") + bytes(16))
    [goaway] = sent(transport)
    assert goaway.type is FrameType.GOAWAY
    assert transport.disconnecting
    protocol.dataReceived(encode_frame(EVENT))  # nothing is read after that
    assert protocol.events == []


def test_frames_before_an_unreadable_header_are_dispatched_then_it_goes_away() -> None:
    protocol, transport, _ = connect()
    protocol.dataReceived(encode_frame(EVENT) + bytes(8) + encode_frame(EVENT))
    assert protocol.events == [EVENT]
    [goaway] = sent(transport)
    assert goaway.type is FrameType.GOAWAY and "unreadable frame" in goaway.error
    assert transport.disconnecting


def test_an_oversized_frame_is_skipped_unbuffered_and_here_ends_the_link() -> None:
    # This end fails no streams: an oversized frame of any type ends its link (ends that
    # answer streams fail just the stream: test_link_session).
    protocol, transport, _ = connect(max_frame_size=1024)
    big = encode_frame(Frame(FrameType.EVENT, sequence=1, kind="policy",
                             payload={"policy": "x" * 2000}))
    protocol.dataReceived(big[:8])  # the header alone: its type is not known yet
    assert sent(transport) == [] and not transport.disconnecting
    protocol.dataReceived(big[8:100])
    assert protocol._framer.buffered == 0
    [goaway] = sent(transport)
    assert goaway.error == f"a EVENT frame of {len(big)} bytes exceeds the maximum of 1024"
    assert transport.disconnecting and protocol.events == []


def test_a_frame_too_large_to_send_is_refused_and_nothing_is_written() -> None:
    protocol, transport, _ = connect(max_frame_size=1024)
    big = Frame(FrameType.RESPONSE, stream_id=9, message=bytes(2000))
    with pytest.raises(FrameTooLarge) as refused:
        protocol.send(big)
    assert (refused.value.frame_type, refused.value.stream_id, refused.value.limit) == (
        FrameType.RESPONSE, 9, 1024)
    with pytest.raises(FrameTooLarge):
        protocol.send_wire(encode_frame(big))
    assert transport.value() == b"" and not transport.disconnecting
    protocol.send(Frame(FrameType.RESPONSE, stream_id=10, message=bytes(900)))
    assert [f.stream_id for f in sent(transport)] == [10]


def test_goaway_from_the_peer_closes() -> None:
    protocol, transport, _ = connect()
    protocol.dataReceived(encode_frame(Frame(FrameType.GOAWAY, error="maintenance")))
    assert transport.disconnecting
    assert sent(transport) == []


def test_heartbeats_ping_every_interval_and_a_silent_link_dies_after_three() -> None:
    protocol, transport, clock = connect(heartbeat_interval=1.0)
    clock.advance(1.0)
    assert [f.type for f in sent(transport)] == [FrameType.PING]
    clock.advance(1.0)
    protocol.dataReceived(encode_frame(Frame(FrameType.PONG, stream_id=1)))
    clock.advance(1.0)
    clock.advance(1.0)
    assert not transport.disconnecting  # 2 s silent
    sent(transport)
    clock.advance(1.0)
    assert transport.disconnecting  # 3 intervals without a byte: dead
    assert sent(transport) == []  # no PING once dead


def test_any_frame_keeps_the_link_alive() -> None:
    protocol, transport, clock = connect(heartbeat_interval=1.0)
    for _ in range(10):
        clock.advance(1.0)
        protocol.dataReceived(encode_frame(EVENT))
    assert not transport.disconnecting


def test_connection_lost_stops_heartbeats_and_reports_once() -> None:
    protocol, transport, clock = connect()
    protocol.connectionLost(None)
    clock.advance(10)
    assert sent(transport) == []
    assert protocol.lost == 1
    assert clock.getDelayedCalls() == []
