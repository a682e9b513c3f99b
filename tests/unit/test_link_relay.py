"""kcm.link.relay: REQUEST and RESPONSE frames written and read as bytes, held to the general
codec (kcm.link.frames), and the gateway's end relaying answers with it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent

from kcm.connection_guard import LOG_INTERVAL
from kcm.core.link_server import LinkServerFactory
from kcm.gateway.handler import GatewayRequestHandler, new_correlation_id
from kcm.gateway.l3_cache import L3Cache
from kcm.gateway.link_client import LinkClient, LinkClientProtocol, LinkDown
from kcm.gateway.local_batch import LocalRunner
from kcm.gateway.metrics import GatewayMetrics
from kcm.kmip.enums import ResultReason
from kcm.kmip_protocol import ConnectionInfo
from kcm.link.framer import LinkFramer
from kcm.link.frames import (
    Frame,
    FrameError,
    FrameType,
    Tag,
    decode_frame,
    decode_frame_tree,
    encode_frame,
)
from kcm.link.relay import (
    caller_fields,
    read_caller,
    read_request,
    read_response,
    request_frame,
    response_frame,
    split_request,
)
from kcm.ttlv import Item, ItemType, encode
from tests.gateway_support import APP, core_welcome, create_managed, request, response
from tests.unit.test_link_cancel import (
    GATEWAY,
    TD,
    RecordingHandler,
    core_end,
    core_factory,
    frames_in,
    hello,
)

_STREAMS = st.integers(1, 2**31 - 1)
_TEXT = st.text(max_size=40)


@given(_STREAMS, _TEXT, st.none() | _TEXT, _TEXT, st.binary(max_size=80))
def test_a_request_frame_is_what_the_general_encoder_writes(
        stream_id: int, identity: str, subject: str | None, source: str,
        message: bytes) -> None:
    frame = Frame(FrameType.REQUEST, stream_id=stream_id, caller_identity=identity,
                  caller_subject=subject, caller_source=source, message=message)
    wire = request_frame(stream_id, caller_fields(identity, subject, source), message)
    assert wire == encode_frame(frame)
    assert decode_frame_tree(wire) == frame


@given(_STREAMS, st.binary(max_size=80))
def test_a_response_frame_is_what_the_general_encoder_writes_and_reads_back(
        stream_id: int, message: bytes) -> None:
    wire = response_frame(stream_id, message)
    assert wire == encode_frame(Frame(FrameType.RESPONSE, stream_id=stream_id,
                                      message=message))
    assert read_response(wire) == (stream_id, message)


@given(_STREAMS, _TEXT, st.none() | _TEXT, _TEXT, st.binary(max_size=80))
def test_a_request_frame_is_read_back(stream_id: int, identity: str, subject: str | None,
                                      source: str, message: bytes) -> None:
    wire = request_frame(stream_id, caller_fields(identity, subject, source), message)
    assert read_request(wire) == (stream_id, identity, subject, source, message)
    fields = caller_fields(identity, subject, source)
    assert split_request(wire) == (stream_id, fields, message)
    assert read_caller(fields) == (identity, subject, source)


@given(_STREAMS, _TEXT, st.none() | _TEXT, _TEXT, st.binary(max_size=40), st.data())
def test_a_damaged_request_is_read_only_as_the_general_decoder_reads_it(
        stream_id: int, identity: str, subject: str | None, source: str, message: bytes,
        data: st.DataObject) -> None:
    wire = bytearray(request_frame(stream_id, caller_fields(identity, subject, source),
                                   message))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(wire) - 1))
        wire[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        wire = wire[:data.draw(st.integers(0, len(wire)))]
    elif data.draw(st.booleans()):
        wire += data.draw(st.binary(min_size=1, max_size=16))
    read = read_request(bytes(wire))
    if read is not None:
        frame = decode_frame_tree(bytes(wire))
        assert (frame.type, frame.stream_id, frame.caller_identity, frame.caller_subject,
                frame.caller_source, frame.message) == (FrameType.REQUEST, *read)


def test_requests_laid_out_otherwise_are_left_to_the_general_decoder() -> None:
    for frame in [Frame(FrameType.REQUEST, stream_id=1, caller_identity="a",
                        caller_source="b", tenant="t", message=b"m"),
                  Frame(FrameType.RESPONSE, stream_id=1, message=b"m"),
                  Frame(FrameType.FETCH_SERVICE_KEY, stream_id=1, caller_identity="a",
                        tenant="t", service="s")]:
        assert read_request(encode_frame(frame)) is None


@pytest.mark.parametrize("stream_id", [0, -1, 2**31])
def test_a_stream_out_of_range_is_refused(stream_id: int) -> None:
    with pytest.raises(ValueError):
        response_frame(stream_id, b"m")
    with pytest.raises(ValueError):
        request_frame(stream_id, caller_fields("a", None, "b"), b"m")


def test_other_frames_are_left_to_the_general_decoder() -> None:
    others = [
        encode_frame(Frame(FrameType.REQUEST, stream_id=1, caller_identity="a",
                           caller_source="b", message=b"m")),
        encode_frame(Frame(FrameType.RESPONSE, stream_id=1, error="e", message=b"m")),
        encode_frame(Frame(FrameType.SERVICE_KEYS, stream_id=1)),
        encode_frame(Frame(FrameType.PING, stream_id=1)),
        # A RESPONSE the general decoder takes in another order: valid, not read here.
        encode(Item(Tag.LINK_FRAME, ItemType.STRUCTURE, [
            Item(Tag.FRAME_TYPE, ItemType.ENUMERATION, int(FrameType.RESPONSE)),
            Item(Tag.KMIP_MESSAGE, ItemType.BYTE_STRING, b"m"),
            Item(Tag.STREAM_ID, ItemType.INTEGER, 1)])),
        b"", bytes(48),
    ]
    for wire in others:
        assert read_response(wire) is None


@given(_STREAMS, st.binary(max_size=40), st.data())
def test_a_damaged_response_is_read_only_as_the_general_decoder_reads_it(
        stream_id: int, message: bytes, data: st.DataObject) -> None:
    """Flipped bytes, cut or lengthened frames: what the fast reader takes, the general
    decoder takes with the same stream and message; everything else is left to it."""
    wire = bytearray(response_frame(stream_id, message))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(wire) - 1))
        wire[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        wire = wire[:data.draw(st.integers(0, len(wire)))]
    elif data.draw(st.booleans()):
        wire += data.draw(st.binary(min_size=1, max_size=16))
    read = read_response(bytes(wire))
    if read is not None:
        frame = decode_frame_tree(bytes(wire))
        assert (frame.type, frame.stream_id, frame.message) == (FrameType.RESPONSE, *read)


def test_a_whole_frame_in_one_read_is_handed_out_uncopied() -> None:
    wire = response_frame(3, b"answer")
    [frame] = LinkFramer(1 << 16).feed(wire)
    assert frame is wire
    framer = LinkFramer(1 << 16)
    assert framer.feed(wire[:10]) == [] and framer.feed(wire[10:] + wire) == [wire, wire]


# The gateway's end ------------------------------------------------------------------------------

def gateway_end() -> tuple[LinkClient, LinkClientProtocol, StringTransport]:
    client = LinkClient(None, clock=Clock(), max_in_flight=4)
    protocol = LinkClientProtocol(client)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(core_welcome())
    transport.clear()
    return client, protocol, transport


def sent(transport: StringTransport) -> list[Frame]:
    frames = [frame for frame in LinkFramer(1 << 20).feed(transport.value())]
    transport.clear()
    return [decode_frame(frame) for frame in frames]  # type: ignore[arg-type]


def test_forwarded_requests_carry_the_callers_fields_and_answers_come_back_as_sent() -> None:
    client, protocol, transport = gateway_end()
    first = client.forward(b"one", APP, "h:1")
    second = client.forward(b"two", APP, "h:2")
    a, b = sent(transport)
    assert (a.caller_identity, a.caller_subject, a.caller_source, a.message) == (
        APP.spiffe_id, None, "h:1", b"one")
    assert (b.caller_source, b.message) == ("h:2", b"two") and a.stream_id != b.stream_id
    protocol.dataReceived(response_frame(b.stream_id, b"answer two"))
    # An answer laid out otherwise is read by the general decoder, with the same result.
    protocol.dataReceived(encode(Item(Tag.LINK_FRAME, ItemType.STRUCTURE, [
        Item(Tag.FRAME_TYPE, ItemType.ENUMERATION, int(FrameType.RESPONSE)),
        Item(Tag.KMIP_MESSAGE, ItemType.BYTE_STRING, b"answer one"),
        Item(Tag.STREAM_ID, ItemType.INTEGER, a.stream_id)])))
    assert (first.result, second.result) == (b"answer one", b"answer two")
    assert client.in_flight == 0 and not protocol.closing


def test_a_relayed_answer_to_a_stream_awaiting_keys_ends_the_link() -> None:
    client, protocol, transport = gateway_end()
    fetch = client.fetch_service_keys(APP, "demo", "app")
    [asked] = sent(transport)
    failures: list = []
    fetch.addErrback(failures.append)
    protocol.dataReceived(response_frame(asked.stream_id, b"not keys"))
    assert failures[0].check(LinkDown) and protocol.closing
    assert client.in_flight == 0


def test_a_late_answer_is_dropped() -> None:
    client, protocol, _ = gateway_end()
    protocol.dataReceived(response_frame(99, b"nobody asked"))
    assert client.in_flight == 0 and not protocol.closing


def test_a_caller_whose_fields_cannot_be_encoded_is_refused_before_a_stream_opens() -> None:
    client, _, transport = gateway_end()
    with pytest.raises(UnicodeEncodeError):
        client.forward(b"m", APP, "\ud800")
    assert client.in_flight == 0 and transport.value() == b""


# The handler's relay ----------------------------------------------------------------------------

class HeldLink:
    def __init__(self) -> None:
        self.calls: list[Deferred[bytes]] = []

    def forward(self, wire: bytes, caller: object, source: str) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.calls.append(d)
        return d

    def fetch_service_keys(self, *args: object) -> Deferred[list]:
        raise AssertionError("no key is needed to forward")


def relaying_handler(link: object, later: list | None = None
                     ) -> tuple[GatewayRequestHandler, GatewayMetrics]:
    """``later``: where the handler's calls for the end of the turn go (None: none)."""
    clock = Clock()
    cache = L3Cache(link.fetch_service_keys, connected=lambda: True,  # type: ignore[attr-defined]
                    clock=clock.seconds)
    metrics = GatewayMetrics()
    return GatewayRequestHandler(runner=LocalRunner(new_correlation_id=new_correlation_id),
                                 cache=cache, link=link, clock=clock.seconds,  # type: ignore[arg-type]
                                 metrics=metrics,
                                 later=later.append if later is not None else None), metrics


def forwarded_count(metrics: GatewayMetrics) -> float:
    return sum(tally.value for (_, _, path), tally in metrics._items.items()
               if path == "forwarded")


def test_a_relayed_answer_is_the_cores_bytes_counted_once_and_forgotten() -> None:
    link = HeldLink()
    handler, metrics = relaying_handler(link)
    connection = ConnectionInfo(7, APP, "h:7")
    answer = handler.handle_request(request(create_managed()), connection)
    assert handler._forwarding == {7: {link.calls[0]}}
    core_answer = response_frame(1, b"x")  # any bytes: relayed as they are
    link.calls[0].callback(core_answer)
    assert answer.result is core_answer and handler._forwarding == {}
    assert sum(metrics.forwarded_duration.counts) == 1


def test_a_relayed_answer_is_written_first_and_its_call_forgotten_when_counted() -> None:
    """With ``later`` (kcm-gateway: the end of the reactor's turn), the answered call is
    forgotten with the count, after the write: a client that leaves in between has only its
    unanswered calls cancelled, and nothing is kept once the turn's answers are counted."""
    link, later = HeldLink(), []
    handler, metrics = relaying_handler(link, later)
    connection = ConnectionInfo(7, APP, "h:7")
    first = handler.handle_request(request(create_managed()), connection)
    second = handler.handle_request(request(create_managed()), connection)
    core_answer = response_frame(1, b"x")
    link.calls[0].callback(core_answer)
    assert first.result is core_answer and len(later) == 1
    assert sum(metrics.forwarded_duration.counts) == 0  # not yet counted
    handler.connection_lost(connection)  # the client leaves before the turn ends
    assert first.result is core_answer  # answered: nothing to cancel
    assert [item.result_reason for item in response(second.result).batch_items] == [
        ResultReason.GENERAL_FAILURE]  # the unanswered one is cancelled and answered so
    later.pop()()
    assert handler._forwarding == {} and later == []
    assert sum(metrics.forwarded_duration.counts) == 2


def test_the_answered_calls_of_a_connection_are_forgotten_by_the_count() -> None:
    link, later = HeldLink(), []
    handler, _ = relaying_handler(link, later)
    connection = ConnectionInfo(7, APP, "h:7")
    handler.handle_request(request(create_managed()), connection)
    third = ConnectionInfo(8, APP, "h:8")
    handler.handle_request(request(create_managed()), third)
    link.calls[0].callback(response_frame(1, b"x"))
    link.calls[1].callback(response_frame(2, b"y"))
    later.pop()()
    assert handler._forwarding == {}


def test_a_link_failure_is_answered_in_the_requests_words_and_forgotten() -> None:
    link = HeldLink()
    handler, metrics = relaying_handler(link)
    connection = ConnectionInfo(7, APP, "h:7")
    answer = handler.handle_request(request(create_managed()), connection)
    link.calls[0].errback(LinkDown("gone"))
    [item] = response(answer.result).batch_items
    assert item.result_reason == ResultReason.GENERAL_FAILURE
    assert "unreachable" in item.result_message
    assert handler._forwarding == {} and sum(metrics.forwarded_duration.counts) == 1
    assert forwarded_count(metrics) == 1


def test_a_link_that_raises_is_answered_not_raised() -> None:
    class BrokenLink(HeldLink):
        def forward(self, wire: bytes, caller: object, source: str) -> Deferred[bytes]:
            raise FrameError("cannot encode")

    handler, _ = relaying_handler(BrokenLink())
    answer = handler.handle_request(request(create_managed()), ConnectionInfo(1, APP, "h"))
    [item] = response(answer.result).batch_items
    assert item.result_reason == ResultReason.GENERAL_FAILURE
    assert handler._forwarding == {}


# The core's end ---------------------------------------------------------------------------------

def test_the_core_reads_a_relayed_request_and_answers_it_with_the_handlers_bytes() -> None:
    core, transport, handler = core_end()
    frames_in(transport)
    core.dataReceived(request_frame(5, caller_fields(APP.spiffe_id, None, "10.0.0.1:1"),
                                    b"req"))
    # A REQUEST laid out otherwise (a field the fast reader does not expect) is decoded.
    core.dataReceived(encode(Item(Tag.LINK_FRAME, ItemType.STRUCTURE, [
        Item(Tag.FRAME_TYPE, ItemType.ENUMERATION, int(FrameType.REQUEST)),
        Item(Tag.KMIP_MESSAGE, ItemType.BYTE_STRING, b"other"),
        Item(Tag.CALLER_SOURCE, ItemType.TEXT_STRING, "10.0.0.1:2"),
        Item(Tag.CALLER_IDENTITY, ItemType.TEXT_STRING, APP.spiffe_id),
        Item(Tag.STREAM_ID, ItemType.INTEGER, 6)])))
    (wire5, _, answer5), (wire6, _, answer6) = handler.calls
    assert (wire5, wire6) == (b"req", b"other")
    answer6.callback(b"ans6")
    answer5.callback(b"ans5")
    assert transport.value() == response_frame(6, b"ans6") + response_frame(5, b"ans5")
    assert not core.closing


def test_an_unacceptable_caller_is_refused_on_its_stream() -> None:
    core, transport, handler = core_end()
    frames_in(transport)
    core.dataReceived(request_frame(
        5, caller_fields("spiffe://kcm.test/gateway/other", None, "h:1"), b"req"))
    [answer] = frames_in(transport)
    assert (answer.type, answer.stream_id) == (FrameType.RESPONSE, 5)
    assert answer.message.startswith(b"FAIL") and handler.calls == []


def test_unacceptable_callers_are_warned_of_once_per_interval() -> None:
    """A gateway relaying requests of an unacceptable caller in a loop: the first warning at
    once, then one line per interval saying how many it stands for (it was one a refusal)."""
    factory, _, clock = core_factory()
    core, transport = hello(factory)
    frames_in(transport)
    caller = caller_fields("spiffe://kcm.test/gateway/other", None, "h:1")
    with capturedLogs() as events:
        for stream in range(5, 25):
            core.dataReceived(request_frame(stream, caller, b"req"))
        clock.advance(LOG_INTERVAL)
    lines = [formatEvent(e) for e in events if "unacceptable caller" in formatEvent(e)]
    assert len(lines) == 2 and all(e["log_level"] is LogLevel.warn for e in events
                                   if "unacceptable caller" in formatEvent(e))
    assert "1 such request(s) refused" in lines[0] and "19 such request(s)" in lines[1]
    assert len(frames_in(transport)) == 20  # each refused on its stream all the same


def test_a_relayed_request_before_hello_ends_the_link() -> None:
    clock = Clock()
    handler = RecordingHandler(clock)
    factory = LinkServerFactory(handler=handler, store=None, keyring=None, fanout=None,
                                resolve_peer=lambda transport: GATEWAY, trust_domain=TD,
                                subject_map=None, clock=clock)
    core = factory.buildProtocol(None)
    transport = StringTransport()
    core.makeConnection(transport)
    core.handshakeCompleted()
    core.dataReceived(request_frame(5, caller_fields(APP.spiffe_id, None, "h:1"), b"req"))
    assert core.closing and frames_in(transport)[0].error == "REQUEST before HELLO"
    assert handler.calls == []
