"""CANCEL (link version 2): a gateway whose client left cancels its forwarded call, and the
core stops that request. Each end over StringTransport and a Clock, frame by frame; then the
gateway's request handler cancelling a client's calls when its connection closes."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from kcm.core.context import Caller
from kcm.core.link_server import LinkServerFactory, LinkServerProtocol
from kcm.core.request_handler import CLIENT_GONE, RequestWatch
from kcm.gateway.handler import GatewayRequestHandler, new_correlation_id
from kcm.gateway.l3_cache import L3Cache
from kcm.gateway.link_client import LinkClient, LinkClientProtocol
from kcm.gateway.local_batch import LocalRunner
from kcm.identity import Principal, Role, SubjectMap
from kcm.kmip.enums import ResultReason, ResultStatus
from kcm.kmip_protocol import ConnectionInfo
from kcm.link.framer import LinkFramer
from kcm.link.frames import (
    CANCEL_VERSION,
    DEFAULT_MAX_FRAME_SIZE,
    HELLO_VERSION,
    LINK_VERSION,
    Frame,
    FrameType,
    decode_frame,
    encode_frame,
)
from tests.core_support import LINEAGE
from tests.gateway_support import (
    L3,
    L3_UID,
    FakeLink,
    core_welcome,
    create_l4,
    create_managed,
    encrypt,
    locate,
    request,
    response,
)

TD = "kcm.test"
GATEWAY = Principal(Role.GATEWAY, TD, name="gw1", uri=f"spiffe://{TD}/gateway/gw1")
APP = Principal(Role.SERVICE, TD, tenant="demo", service="app",
                uri=f"spiffe://{TD}/tenant/demo/service/app")


def frames_in(transport: StringTransport) -> list[Frame]:
    """The frames written to ``transport`` so far (and clears it)."""
    wire = transport.value()
    transport.clear()
    return [decode_frame(frame) for frame in LinkFramer(DEFAULT_MAX_FRAME_SIZE).feed(wire)]


# The core's end -------------------------------------------------------------------------------

class RecordingHandler:
    """A core request handler whose answers the test gives; it records cancellations."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[tuple[bytes, RequestWatch, Deferred[bytes]]] = []
        self.cancelled: list[RequestWatch] = []

    def new_watch(self) -> RequestWatch:
        return RequestWatch(self.clock.seconds, 10.0)

    def cancel(self, watch: RequestWatch) -> None:
        self.cancelled.append(watch)
        watch.lost = True

    def handle_as(self, wire: bytes, caller: Caller,
                  watch: RequestWatch | None = None) -> Deferred[bytes]:
        assert watch is not None
        d: Deferred[bytes] = Deferred()
        self.calls.append((wire, watch, d))
        return d

    def failure_response(self, reason: int, message: str) -> bytes:
        return f"FAIL {reason} {message}".encode()


class NoEvents:
    """An event fan-out with an empty outbox whose replay never ends (no events here)."""

    head = 0
    settled = 0
    stale = False
    on_settled: set = set()

    def committed(self) -> int:
        return 0

    def replay(self, after: int) -> Deferred:
        return Deferred()

    def unsubscribe(self, link: object) -> None:
        pass


def core_factory() -> tuple[LinkServerFactory, RecordingHandler, Clock]:
    """A core's link listener with a recording handler and no events."""
    clock = Clock()
    handler = RecordingHandler(clock)
    factory = LinkServerFactory(handler=handler, store=None, keyring=None, fanout=NoEvents(),
                                resolve_peer=lambda transport: GATEWAY, trust_domain=TD,
                                subject_map=SubjectMap({}), clock=clock,
                                lineage=lambda: LINEAGE)
    return factory, handler, clock


def hello(factory: LinkServerFactory) -> tuple[LinkServerProtocol, StringTransport]:
    """A new link of ``factory``'s, past the handshake and the gateway's HELLO."""
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.handshakeCompleted()
    protocol.dataReceived(encode_frame(Frame(FrameType.HELLO, link_version=HELLO_VERSION,
                                             peer_name="gw1", sequence=-1)))
    return protocol, transport


def core_end() -> tuple[LinkServerProtocol, StringTransport, RecordingHandler]:
    factory, handler, _ = core_factory()
    protocol, transport = hello(factory)
    return protocol, transport, handler


def request_frame(stream_id: int, wire: bytes = b"req") -> bytes:
    return encode_frame(Frame(FrameType.REQUEST, stream_id=stream_id,
                              caller_identity=APP.spiffe_id, caller_source="10.0.0.1:1",
                              message=wire))


def test_the_core_welcomes_a_version_1_hello_naming_its_own_version() -> None:
    _, transport, _ = core_end()
    [welcome] = frames_in(transport)
    assert welcome.type is FrameType.WELCOME
    assert welcome.link_version == LINK_VERSION >= CANCEL_VERSION == 2
    assert HELLO_VERSION == 1


def test_a_cancelled_stream_stops_its_request_and_is_not_answered() -> None:
    core, transport, handler = core_end()
    core.dataReceived(request_frame(5) + request_frame(6))
    (_, watch5, answer5), (_, watch6, answer6) = handler.calls
    frames_in(transport)

    core.dataReceived(encode_frame(Frame(FrameType.CANCEL, stream_id=5)))
    assert handler.cancelled == [watch5] and watch5.stop_reason() == CLIENT_GONE
    assert watch6.stop_reason() is None
    answer5.callback(b"ran 3 of 64 items")  # what the stopped request answers anyway
    answer6.callback(b"ans6")
    assert [(f.type, f.stream_id, f.message) for f in frames_in(transport)] == [
        (FrameType.RESPONSE, 6, b"ans6")]
    assert not core.closing


def test_a_cancel_crossing_its_answer_or_naming_no_stream_is_ignored() -> None:
    core, transport, handler = core_end()
    core.dataReceived(request_frame(5))
    [(_, watch, answer)] = handler.calls
    answer.callback(b"ans5")
    frames_in(transport)
    core.dataReceived(encode_frame(Frame(FrameType.CANCEL, stream_id=5))
                      + encode_frame(Frame(FrameType.CANCEL, stream_id=99)))
    assert handler.cancelled == [] and watch.stop_reason() is None
    assert frames_in(transport) == [] and not core.closing


def test_a_reused_stream_id_is_answered_for_the_new_request_only() -> None:
    core, transport, handler = core_end()
    core.dataReceived(request_frame(5, b"old"))
    core.dataReceived(encode_frame(Frame(FrameType.CANCEL, stream_id=5)))
    core.dataReceived(request_frame(5, b"new"))
    (_, _, old), (_, _, new) = handler.calls
    frames_in(transport)
    old.callback(b"old answer")
    new.callback(b"new answer")
    assert [f.message for f in frames_in(transport)] == [b"new answer"]


def test_every_request_in_flight_stops_when_the_link_closes() -> None:
    core, _, handler = core_end()
    core.dataReceived(request_frame(1) + request_frame(2))
    core.connectionLost(None)
    assert [w.stop_reason() for _, w, _ in handler.calls] == [CLIENT_GONE, CLIENT_GONE]


def test_a_cancel_before_hello_ends_the_link() -> None:
    clock = Clock()
    factory = LinkServerFactory(handler=RecordingHandler(clock), store=None, keyring=None,
                                fanout=None, resolve_peer=lambda transport: GATEWAY,
                                trust_domain=TD, subject_map=None, clock=clock)
    core = factory.buildProtocol(None)
    transport = StringTransport()
    core.makeConnection(transport)
    core.handshakeCompleted()
    core.dataReceived(encode_frame(Frame(FrameType.CANCEL, stream_id=1)))
    assert core.closing and frames_in(transport)[0].error == "CANCEL before HELLO"


# The gateway's end ----------------------------------------------------------------------------

def gateway_end(core_version: int) -> tuple[LinkClient, LinkClientProtocol, StringTransport]:
    client = LinkClient(None, clock=Clock(), max_in_flight=4)
    protocol = LinkClientProtocol(client)
    transport = StringTransport()
    protocol.makeConnection(transport)
    [hello] = frames_in(transport)
    assert (hello.type, hello.link_version) == (FrameType.HELLO, HELLO_VERSION)
    protocol.dataReceived(core_welcome(core_version))
    return client, protocol, transport


def test_a_cancelled_call_sends_cancel_to_a_version_2_core() -> None:
    client, protocol, transport = gateway_end(2)
    kept, dropped = client.forward(b"a", APP, "h:1"), client.forward(b"b", APP, "h:1")
    requests = frames_in(transport)
    failures: list = []
    dropped.addErrback(failures.append)
    dropped.cancel()
    assert failures[0].check(CancelledError)
    assert [(f.type, f.stream_id) for f in frames_in(transport)] == [
        (FrameType.CANCEL, requests[1].stream_id)]
    assert client.in_flight == 1 and client.cancels_sent == 1
    # A late answer to the cancelled stream is dropped; the other call is answered.
    for frame in requests[::-1]:
        protocol.dataReceived(encode_frame(Frame(FrameType.RESPONSE, stream_id=frame.stream_id,
                                                 message=b"answer " + frame.message)))
    assert kept.result == b"answer a" and client.in_flight == 0 and not protocol.closing


def test_a_version_1_core_is_never_sent_a_cancel() -> None:
    client, _, transport = gateway_end(1)
    call = client.forward(b"a", APP, "h:1")
    frames_in(transport)
    call.addErrback(lambda failure: failure.trap(CancelledError))
    call.cancel()
    assert frames_in(transport) == [] and client.in_flight == 0 and client.cancels_sent == 0


def test_cancelling_an_answered_call_sends_nothing() -> None:
    client, protocol, transport = gateway_end(2)
    call = client.forward(b"a", APP, "h:1")
    [sent] = frames_in(transport)
    protocol.dataReceived(encode_frame(Frame(FrameType.RESPONSE, stream_id=sent.stream_id,
                                             message=b"done")))
    call.cancel()
    assert call.result == b"done" and frames_in(transport) == []


# The gateway's handler: a client that leaves --------------------------------------------------

class HeldLink(FakeLink):
    """A fake link whose forwarded calls wait until the test answers them; it records which
    were cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Deferred[bytes]] = []
        self.cancelled: list[bytes] = []

    def forward(self, wire: bytes, caller: Principal, source: str) -> Deferred[bytes]:
        self.forwarded.append((wire, caller, source))
        d: Deferred[bytes] = Deferred(lambda d: self.cancelled.append(wire))
        self.calls.append(d)
        return d


def handler_with(link: HeldLink) -> GatewayRequestHandler:
    clock = Clock()
    cache = L3Cache(link.fetch_service_keys, connected=lambda: True, clock=clock.seconds)
    return GatewayRequestHandler(runner=LocalRunner(new_correlation_id=new_correlation_id),
                                 cache=cache, link=link, clock=clock.seconds)


def test_a_client_that_leaves_has_its_forwarded_calls_cancelled_and_no_other() -> None:
    link = HeldLink()
    handler = handler_with(link)
    mine, theirs = ConnectionInfo(1, APP, "h:1"), ConnectionInfo(2, APP, "h:2")
    answer = handler.handle_request(request(locate(b"m")), mine)
    other = handler.handle_request(request(locate(b"t")), theirs)
    handler.connection_lost(mine)
    assert link.cancelled == [link.forwarded[0][0]]
    [item] = response(answer.result).batch_items  # what nobody reads: said quietly
    assert (item.result_reason, item.result_message) == (ResultReason.GENERAL_FAILURE,
                                                         CLIENT_GONE)
    link.calls[1].callback(b"answer")
    assert other.result == b"answer"
    handler.connection_lost(theirs)  # nothing left in flight: nothing to cancel
    assert len(link.cancelled) == 1 and handler._forwarding == {}


def test_a_mixed_request_whose_client_left_runs_nothing_more() -> None:
    link = HeldLink()
    link.keys[("demo", "app")] = []
    handler = handler_with(link)
    connection = ConnectionInfo(1, APP, "h:1")
    answer = handler.handle_request(
        request(create_managed(b"1"), create_l4(b"2"), create_managed(b"3")), connection)
    assert len(link.forwarded) == 1
    handler.connection_lost(connection)
    assert len(link.cancelled) == 1
    assert len(link.forwarded) == 1  # the second remote run was never sent
    [item] = response(answer.result).batch_items
    assert (item.result_status, item.result_message) == (ResultStatus.OPERATION_FAILED,
                                                         CLIENT_GONE)


def test_a_client_that_leaves_takes_its_waiting_key_fetches_out_of_the_queue() -> None:
    """A request waiting for service keys whose client left: its fetches that no other
    request awaits leave the tenant's queue, and nothing more of it runs (review 6: a
    client sending one request and leaving, again and again, queued 56,000 fetches)."""
    link = FakeLink()
    link.hold_fetches = True
    clock = Clock()
    cache = L3Cache(link.fetch_service_keys, connected=lambda: True, clock=clock.seconds,
                    max_fetches_per_tenant=1)
    handler = GatewayRequestHandler(runner=LocalRunner(new_correlation_id=new_correlation_id),
                                    cache=cache, link=link, clock=clock.seconds)
    first, leaving = ConnectionInfo(1, APP, "h:1"), ConnectionInfo(2, APP, "h:2")
    running = handler.handle_request(request(encrypt(L3_UID)), first)
    held = handler.handle_request(request(encrypt("l3-00000000-0000-4000-8000-00000000000f")),
                                  leaving)
    assert len(link.fetches) == 1 and cache.fetches_waiting == 1
    handler.connection_lost(leaving)
    assert cache.fetches_waiting == 0
    assert held.called  # answered (to no one), not left waiting
    link.pending[0].callback([L3])
    assert len(link.fetches) == 1  # the departed request's fetch was never sent
    [item] = response(running.result).batch_items
    assert item.result_status == ResultStatus.SUCCESS
    assert handler._forwarding == {}


# The first link ---------------------------------------------------------------------------------

class NeverConnects:
    """A client endpoint whose connection attempts never end."""

    def connect(self, factory):
        return Deferred()


def started_link(clock: Clock, **kwargs) -> LinkClient:
    client = LinkClient(NeverConnects(), clock=clock, max_in_flight=4, **kwargs)
    client.startService()
    return client


def welcome(client: LinkClient, core_version: int = CANCEL_VERSION
            ) -> tuple[LinkClientProtocol, StringTransport]:
    """A new link of ``client``'s, welcomed by a core of ``core_version``."""
    protocol = LinkClientProtocol(client)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(core_welcome(core_version))
    return protocol, transport


def test_a_call_before_the_first_link_waits_for_it_within_the_first_seconds() -> None:
    """A gateway (or worker) just started serves its first clients once its link is up,
    milliseconds later, rather than failing them."""
    clock = Clock()
    client = started_link(clock, first_link_wait=5.0)
    call = client.forward(b"early", APP, "h:1")
    clock.advance(1)
    assert not call.called
    assert not client.relinking  # (a gateway is not ready before its first link)
    protocol, transport = welcome(client)
    [hello, sent] = frames_in(transport)
    assert (hello.type, sent.type, sent.message) == (FrameType.HELLO, FrameType.REQUEST,
                                                     b"early")
    protocol.dataReceived(encode_frame(Frame(FrameType.RESPONSE, stream_id=sent.stream_id,
                                             message=b"answer")))
    assert call.result == b"answer"
    client.stopService()


def test_past_the_first_seconds_or_after_a_first_link_no_link_fails_at_once() -> None:
    clock = Clock()
    client = started_link(clock, first_link_wait=5.0)
    waiting = client.forward(b"early", APP, "h:1")
    failures: list = []
    waiting.addErrback(failures.append)
    clock.advance(5)  # the wait is bounded
    assert failures and failures[0].value.args == ("no link to the core",)
    late = client.forward(b"late", APP, "h:1")
    late.addErrback(failures.append)
    assert len(failures) == 2  # at once
    waiting_link = started_link(Clock(), first_link_wait=5.0)
    for _ in range(50):  # clients that leave while their calls wait: nothing left behind
        cancelled = waiting_link.forward(b"x" * 1000, APP, "h:1")
        cancelled.addErrback(lambda failure: failure.trap(CancelledError))
        cancelled.cancel()
    assert waiting_link._waiters == {} and waiting_link._held == set()
    assert client._waiters == {}  # the call that gave up at the end of the wait, too
    client.stopService()
    # Once a link was up, a lost one fails calls at once, even within the first seconds.
    clock = Clock()
    client = started_link(clock, first_link_wait=5.0)
    protocol, _ = welcome(client)
    protocol.connectionLost(Failure(ConnectionDone()))
    after = client.forward(b"after", APP, "h:1")
    after.addErrback(failures.append)
    assert len(failures) == 3
    client.stopService()
