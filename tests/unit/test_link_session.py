"""The gateway's LinkClient talking to the core's link server in memory (twisted.test.iosim),
with a Clock, a fake request handler and an in-memory outbox."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import pytest
from cryptography import x509
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.test import iosim

from kcm.core.context import Caller
from kcm.core.event_fanout import EventFanout
from kcm.core.link_server import LinkServerFactory, LinkServerProtocol, LinkSettings
from kcm.core.request_handler import RequestWatch
from kcm.core.store.repository import OutboxRecord
from kcm.gateway.link_client import (
    AnswerTooLarge,
    LinkBusy,
    LinkClient,
    LinkClientProtocol,
    LinkDown,
    LinkTimeout,
    RequestTooLarge,
    ServiceKeyRefused,
)
from kcm.identity import Principal, Role, SubjectMap
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError
from kcm.l4.service_key import ServiceKey
from kcm.link.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    LINK_VERSION,
    Frame,
    FrameType,
    encode_frame,
    encode_payload,
)
from tests.core_support import LINEAGE
from tests.thread_fakes import run_inline

TD = "kcm.test"
GATEWAY = Principal(Role.GATEWAY, TD, name="gw1", uri=f"spiffe://{TD}/gateway/gw1")
APP = Principal(Role.SERVICE, TD, tenant="demo", service="app",
                uri=f"spiffe://{TD}/tenant/demo/service/app")
LEGACY = Principal(Role.SERVICE, TD, tenant="demo", service="legacy",
                   subject="CN=legacy-client,O=KCM Dev")
KEY = ServiceKey(uid="l3-1", tenant="demo", service="app", version=1, state=2, key=bytes(32))


class FakeHandler:
    def __init__(self) -> None:
        self.calls: list[tuple[bytes, Caller, Deferred[bytes]]] = []
        self.watches: list[RequestWatch] = []

    def new_watch(self) -> RequestWatch:
        return RequestWatch(lambda: 0.0, 10.0)

    def cancel(self, watch: RequestWatch) -> None:
        watch.lost = True

    def handle_as(self, wire: bytes, caller: Caller,
                  watch: RequestWatch | None = None) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.calls.append((wire, caller, d))
        self.watches.append(watch)
        return d

    def failure_response(self, reason: int, message: str) -> bytes:
        return f"FAIL {reason} {message}".encode()


class MemoryFanout(EventFanout):
    """The fan-out over a list instead of the outbox table."""

    def __init__(self, clock: Clock, batch_size: int = 1000) -> None:
        super().__init__(None, clock, batch_size=batch_size)  # type: ignore[arg-type]
        self.records: list[OutboxRecord] = []
        #: The latest event committed by "this process" (commit() here).
        self.committed_seq = 0

    def committed(self) -> int:
        return self.committed_seq

    def read(self, after: int):
        return succeed([r for r in self.records if r.seq > after][: self.batch_size])

    def read_head(self):
        return succeed(max((r.seq for r in self.records), default=0))

    def committed_went_back(self, head: int) -> None:
        self.committed_seq = min(self.committed_seq, head)

    def commit(self, n: int = 1) -> None:
        for _ in range(n):
            seq = self.committed_seq = len(self.records) + 1
            payload = encode_payload({"unique_identifier": f"l3-{seq}", "service": "app",
                                      "key_version": seq})
            self.records.append(OutboxRecord(seq, 0, "demo", "l3.rotated", payload))


@dataclass
class World:
    clock: Clock = field(default_factory=Clock)
    handler: FakeHandler = field(default_factory=FakeHandler)
    events: list[tuple] = field(default_factory=list)
    peer: Principal = GATEWAY
    fanout: MemoryFanout = None  # type: ignore[assignment]
    factory: LinkServerFactory = None  # type: ignore[assignment]
    client: LinkClient = None  # type: ignore[assignment]
    server: LinkServerProtocol | None = None
    pump: iosim.IOPump | None = None
    fetches: list[tuple] = field(default_factory=list)
    core_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    gateway_frame_size: int = DEFAULT_MAX_FRAME_SIZE

    def __post_init__(self) -> None:
        self.fanout = MemoryFanout(self.clock)
        self.factory = LinkServerFactory(
            handler=self.handler, store=None, keyring=None, fanout=self.fanout,
            resolve_peer=lambda transport: self.peer, trust_domain=TD,
            subject_map=SubjectMap.from_mapping(
                {"CN=legacy-client,O=KCM Dev": "tenant/demo/service/legacy"}),
            clock=self.clock, settings=LinkSettings(max_queued_events=5,
                                                    max_frame_size=self.core_frame_size),
            lineage=lambda: LINEAGE)
        self.factory.fetch_keys = self._fetch  # type: ignore[method-assign]
        self.client = LinkClient(None, clock=self.clock, max_in_flight=4, request_timeout=10,
                                 on_event=lambda *event: self.events.append(event),
                                 max_frame_size=self.gateway_frame_size)

    def _fetch(self, caller, tenant, service, uid, now):
        self.fetches.append((caller, tenant, service, uid))
        if tenant != caller.principal.tenant:
            return succeed(KmipError(ResultReason.PERMISSION_DENIED, "another tenant"))
        return succeed([KEY])

    def connect(self) -> LinkClientProtocol:
        self.server = self.factory.buildProtocol(None)
        gateway_end = LinkClientProtocol(self.client)
        self.pump = iosim.connect(self.server, iosim.FakeTransport(self.server, True),
                                  gateway_end, iosim.FakeTransport(gateway_end, False),
                                  greet=False, clock=self.clock)
        self.server.handshakeCompleted()
        self.pump.flush()
        return gateway_end

    def flush(self) -> None:
        self.pump.flush()

    def drop(self) -> None:
        self.pump.clientIO.loseConnection()
        self.pump.flush()


@pytest.fixture
def world() -> World:
    return World()


def results(deferreds):
    """A list that each Deferred's result lands in, at its own index, when it fires."""
    out = [None] * len(deferreds)
    for i, d in enumerate(deferreds):
        d.addBoth(lambda result, i=i: out.__setitem__(i, result))
    return out


def test_hello_welcome_makes_the_link_usable(world: World) -> None:
    ready = results([world.client.when_connected()])
    assert not world.client.connected and ready == [None]
    assert not world.client.when_connected().called
    world.connect()
    assert world.client.connected and ready == [None]
    assert world.client.last_sequence == 0
    assert world.server.gateway == GATEWAY


def test_the_links_reads_skip_client_services_proxy_and_its_loss_still_reaches_it(
        world: World) -> None:
    """ClientService wraps the link's protocol in a proxy that forwards every call through
    ``__getattr__``: the protocol has the proxy hand its reads straight to it, and the
    proxy still learns that the connection was lost (which is how it reconnects)."""
    from twisted.application._client_service import _ReconnectingProtocolProxy
    from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

    lost: list[object] = []
    world.server = world.factory.buildProtocol(None)
    gateway_end = LinkClientProtocol(world.client)
    proxy = _ReconnectingProtocolProxy(gateway_end, lost.append)
    tls_like = ProtocolWrapper(WrappingFactory(None), proxy)  # (a wrapper, as the TLS layer)
    world.pump = iosim.connect(world.server, iosim.FakeTransport(world.server, True),
                               tls_like, iosim.FakeTransport(tls_like, False),
                               greet=False, clock=world.clock)
    world.server.handshakeCompleted()
    world.pump.flush()
    assert vars(proxy)["dataReceived"] == gateway_end.dataReceived
    assert world.client.connected
    answer = results([world.client.forward(b"req", APP, "10.0.0.1:1")])
    world.flush()
    world.handler.calls[0][2].callback(b"ans")
    world.flush()
    assert answer == [b"ans"]
    world.drop()
    assert len(lost) == 1 and not world.client.connected


def test_forwarded_requests_are_multiplexed_and_answered_out_of_order(world: World) -> None:
    world.connect()
    answers = results([world.client.forward(f"req{i}".encode(), APP, f"10.0.0.{i}:1")
                       for i in range(3)])
    world.flush()
    assert [wire for wire, _, _ in world.handler.calls] == [b"req0", b"req1", b"req2"]
    _, caller, _ = world.handler.calls[1]
    assert caller == Caller(APP, "10.0.0.1:1", gateway=GATEWAY)
    for i in (2, 0, 1):
        world.handler.calls[i][2].callback(f"ans{i}".encode())
        world.flush()
    assert answers == [b"ans0", b"ans1", b"ans2"]
    assert world.client.in_flight == 0


def test_a_call_cancelled_at_the_gateway_stops_its_request_at_the_core(world: World) -> None:
    world.connect()
    calls = [world.client.forward(f"req{i}".encode(), APP, "h:1") for i in range(2)]
    world.flush()
    calls[0].addErrback(lambda failure: None)
    calls[0].cancel()
    world.flush()
    assert [w.stop_reason() for w in world.handler.watches] == [
        "request cancelled: the client disconnected", None]
    for _, _, answer in world.handler.calls:
        answer.callback(b"answer")
    world.flush()
    assert calls[1].result == b"answer" and world.client.in_flight == 0
    assert world.client.connected


def test_a_subject_mapped_caller_is_checked_against_the_cores_own_map(world: World) -> None:
    world.connect()
    world.client.forward(b"r", LEGACY, "h:1")
    world.flush()
    assert world.handler.calls[0][1].principal == LEGACY
    impostor = Principal(Role.SERVICE, TD, tenant="demo", service="app",
                         subject="CN=legacy-client,O=KCM Dev")
    answer = results([world.client.forward(b"r", impostor, "h:1")])
    world.flush()
    assert answer[0].startswith(b"FAIL %d" % ResultReason.PERMISSION_DENIED)
    assert len(world.handler.calls) == 1


def test_a_gateway_may_not_assert_a_gateway(world: World) -> None:
    world.connect()
    answer = results([world.client.forward(b"r", GATEWAY, "h:1")])
    world.flush()
    assert answer[0].startswith(b"FAIL")
    assert world.handler.calls == []


def test_only_gateways_are_served(world: World) -> None:
    world.peer = APP
    world.connect()
    assert not world.client.connected
    assert world.server.closing
    assert dict(world.factory.refusals)["identity"] == 1  # (the metrics' refused links)
    world.peer = GATEWAY
    world.connect()
    assert world.client.connected and dict(world.factory.refusals)["identity"] == 1


def test_refused_links_are_logged_at_most_once_an_interval_their_identity_cut(
        world: World) -> None:
    """A peer refused at the link port may reconnect in a loop: one line a link (and the
    whole of a 60,000-character SPIFFE ID in it) filled the log. Now the first at once,
    then one line an interval with the count, the identity cut to 100 characters."""
    from kcm.connection_guard import LOG_INTERVAL

    world.peer = replace(APP, uri=f"spiffe://{TD}/tenant/demo/service/" + "a" * 60_000)
    with capturedLogs() as events:
        for _ in range(5):
            world.connect()
        world.clock.advance(LOG_INTERVAL)
    lines = [e for e in events if "is not a gateway" in e.get("log_format", "")]
    assert [e["count"] for e in lines] == [1, 4]
    assert all(len(formatEvent(e)) < 300 for e in lines), formatEvent(lines[0])


def test_calls_fail_fast_while_the_link_is_down(world: World) -> None:
    [failure] = results([world.client.forward(b"r", APP, "h:1")])
    failure.trap(LinkDown)
    world.connect()
    pending = results([world.client.forward(b"r", APP, "h:1"),
                       world.client.fetch_service_keys(APP, "demo", "app")])
    world.flush()
    world.drop()
    assert not world.client.connected
    assert pending[0].check(LinkDown) and pending[1] == [KEY]
    assert world.client.in_flight == 0
    results([world.client.forward(b"r", APP, "h:1")])[0].trap(LinkDown)


def test_service_keys_are_fetched_for_a_caller_and_refusals_carry_the_reason(
        world: World) -> None:
    world.connect()
    got = results([world.client.fetch_service_keys(APP, "demo", "app"),
                   world.client.fetch_service_keys(APP, "other", "app", uid="l3-9")])
    world.flush()
    assert got[0] == [KEY]
    assert got[1].check(ServiceKeyRefused)
    assert got[1].value.reason == ResultReason.PERMISSION_DENIED
    caller, tenant, service, uid = world.fetches[1]
    assert (caller.principal, caller.gateway, tenant, service, uid) == (
        APP, GATEWAY, "other", "app", "l3-9")


def test_new_events_are_pushed_in_order(world: World) -> None:
    world.fanout.commit(2)
    world.fanout.poll()
    world.connect()  # HELLO -1: from the head, nothing replayed
    assert world.client.last_sequence == 2 and world.events == []
    world.fanout.commit(3)
    world.fanout.poll()
    world.flush()
    assert [e[0] for e in world.events] == [3, 4, 5]
    seq, kind, tenant, payload = world.events[0]
    assert (kind, tenant, payload["unique_identifier"]) == ("l3.rotated", "demo", "l3-3")
    assert world.client.last_sequence == 5


def test_an_answer_follows_the_events_its_request_committed(world: World) -> None:
    """A Revoke's Success reaches the gateway after its events: the gateway has applied
    the revocation before it relays the answer (or runs the batch's next item)."""
    world.connect()
    seen: list[str] = []
    world.client.on_event = lambda *event: seen.append(f"event {event[0]}")
    answer = world.client.forward(b"revoke", APP, "h:1")
    answer.addCallback(lambda wire: seen.append(wire.decode()))
    world.flush()
    world.fanout.commit()  # the request's transaction commits its event ...
    world.handler.calls[0][2].callback(b"answer")  # ... then answers
    world.flush()
    assert seen == []  # held: the fan-out has not read the event yet
    world.fanout.poll()
    world.flush()
    assert seen == ["event 1", "answer"]
    assert world.server.requests_in_flight == 0


def forward_committing(world: World, request: bytes, answer: bytes, seen: list[str]) -> None:
    """Forward ``request``; the core commits an event, then answers ``answer`` (which the
    gateway, once it gets it, adds to ``seen``)."""
    world.client.forward(request, APP, "h:1").addCallback(
        lambda wire: seen.append(wire.decode()))
    world.flush()
    world.fanout.commit()
    world.handler.calls[-1][2].callback(answer)
    world.flush()


def test_each_answer_is_held_its_own_limit_not_the_first_held_ones(world: World) -> None:
    """Answer A held at 0 s, B at 0.85 s; a read frees A: at 1 s B is not sent without
    its event (it has waited 0.15 s), and goes once the next read brings the event."""
    world.connect()
    seen: list[str] = []
    world.client.on_event = lambda *event: seen.append(f"event {event[0]}")
    forward_committing(world, b"a", b"A", seen)  # held at 0 s
    world.clock.advance(0.85)
    reads: list[Deferred] = []
    read = world.fanout.read
    world.fanout.read = lambda after: reads.append(Deferred()) or reads[-1]
    world.fanout.poll()  # a read that began before B's event was committed
    world.fanout.read = read
    forward_committing(world, b"b", b"B", seen)  # held at 0.85 s
    world.clock.advance(0.1)
    reads[0].callback([r for r in world.fanout.records if r.seq <= 1])
    world.flush()
    assert seen == ["event 1", "A"]
    world.clock.advance(0.06)  # 1.01 s: A's limit, not B's
    world.flush()
    assert seen == ["event 1", "A"]
    world.fanout.poll()
    world.flush()
    assert seen == ["event 1", "A", "event 2", "B"]
    assert world.fanout.on_settled == set() and world.server.requests_in_flight == 0


def test_an_answer_without_new_events_is_not_held(world: World) -> None:
    world.connect()
    world.fanout.commit()
    world.fanout.poll()
    world.flush()
    answer = results([world.client.forward(b"get", APP, "h:1")])
    world.flush()
    world.handler.calls[0][2].callback(b"answer")
    world.flush()
    assert answer == [b"answer"]


def test_an_answer_whose_event_was_rolled_back_goes_once_the_fan_out_has_read(
        world: World) -> None:
    """A savepoint that rolled back an event leaves the count above the outbox: the
    answer waits for one read that began after it, not for an event that never comes."""
    world.connect()
    world.fanout.committed_seq = 1  # counted, then rolled back: no record
    answer = results([world.client.forward(b"req", APP, "h:1")])
    world.flush()
    world.handler.calls[0][2].callback(b"answer")
    world.flush()
    assert answer == [None]
    world.fanout.poll()
    world.flush()
    assert answer == [b"answer"]


def test_an_answer_is_held_at_most_the_hold_limit_when_the_fan_out_cannot_read(
        world: World) -> None:
    from kcm.core.link_server import ANSWER_HOLD_LIMIT

    world.connect()
    world.fanout.commit()  # committed, but the fan-out never reads it
    answer = results([world.client.forward(b"req", APP, "h:1")])
    world.flush()
    world.handler.calls[0][2].callback(b"answer")
    world.flush()
    world.clock.advance(ANSWER_HOLD_LIMIT - 0.01)
    world.flush()
    assert answer == [None] and world.server.requests_in_flight == 1
    world.clock.advance(0.02)
    world.flush()
    assert answer == [b"answer"] and world.server.requests_in_flight == 0
    assert world.fanout.on_settled == set()


def test_a_core_that_cannot_read_its_event_log_sends_its_gateways_to_another(
        world: World) -> None:
    """A core cut off from its database (a read that hangs) would keep its gateways
    linked while they miss what other cores change: once no read has succeeded for
    ``stale_after``, it closes their links and refuses new ones until it reads again."""
    from kcm.core.link_server import STALE_EVENTS

    gateway_end = world.connect()
    pending: list[Deferred] = []
    world.fanout.read = lambda after: pending.append(Deferred()) or pending[-1]
    world.fanout.stale_after = 5.0
    world.fanout.on_stale.append(world.factory.events_stale)  # (as kcm.core.tap wires it)
    world.fanout.startService()
    for _ in range(45):  # (heartbeats flow meanwhile)
        world.clock.advance(0.1)
        world.flush()
    assert world.client.connected and not world.fanout.stale and len(pending) == 1
    for _ in range(10):
        world.clock.advance(0.1)
        world.flush()
    assert world.fanout.stale and not world.client.connected
    assert gateway_end.closing and world.server.closing
    refused = world.connect()  # HELLO while it lasts: refused
    assert not world.client.connected and refused.refused == f"GOAWAY: {STALE_EVENTS}"
    pending[0].callback([])  # the database answers again
    assert not world.fanout.stale
    del world.fanout.read  # (and its next reads too: a HELLO at the head makes one)
    world.connect()
    assert world.client.connected
    world.fanout.stopService()


def test_links_refused_while_the_event_log_cannot_be_read_are_one_line_an_interval(
        world: World) -> None:
    """Every worker of every gateway tries again every second or so while the database
    is out of reach: the core logged "closing link ...: this core cannot read its event
    log" at each attempt. Now one line at the first, then one with the count every 30 s."""
    from twisted.logger import capturedLogs, formatEvent

    from kcm.core.link_server import STALE_EVENTS, STALE_REFUSALS_LOG_INTERVAL

    world.fanout.stale = True
    with capturedLogs() as events:
        for _ in range(40):
            refused = world.connect()
            assert refused.refused == f"GOAWAY: {STALE_EVENTS}"
            world.clock.advance(1.0)
            world.flush()
    lines = [formatEvent(event) for event in events
             if "cannot read its event log" in formatEvent(event)]
    assert STALE_REFUSALS_LOG_INTERVAL == 30.0
    assert len(lines) == 2, lines
    assert lines[0].startswith("refused 1 gateway link(s) in the last 30 s")
    assert lines[1].startswith("refused 29 gateway link(s) in the last 30 s")


def test_a_reconnecting_gateway_gets_what_it_missed_in_order(world: World) -> None:
    world.fanout.batch_size = 2  # the catch-up takes several reads
    world.connect()
    world.fanout.commit(1)
    world.fanout.poll()
    world.flush()
    world.drop()
    world.fanout.commit(5)  # while the gateway is away
    world.fanout.poll()
    world.connect()
    world.fanout.commit(1)
    world.fanout.poll()
    world.flush()
    assert [e[0] for e in world.events] == [1, 2, 3, 4, 5, 6, 7]
    assert world.server.live


def test_a_gateway_from_another_core_is_not_taken_for_one_ahead_of_the_database(
        world: World) -> None:
    """Several cores on one database: the gateway applied events up to 4 at another core,
    and this core's fan-out has read only up to 2 so far. It reads the outbox before its
    WELCOME, so the gateway resumes after 4 instead of resynchronising."""
    world.fanout.commit(2)
    world.fanout.poll()
    world.fanout.commit(3)  # committed by another core, not read here yet
    resyncs: list[bool] = []
    world.client.on_resync = lambda: resyncs.append(True)
    world.client.last_sequence = 4
    world.connect()
    assert resyncs == [] and world.client.last_sequence == 5
    assert [e[0] for e in world.events] == [5]


def test_a_gateway_ahead_of_the_database_resynchronises(world: World) -> None:
    world.fanout.commit(2)
    resyncs: list[bool] = []
    world.client.on_resync = lambda: resyncs.append(True)
    world.client.last_sequence = 9  # a restored database: its events end at 2
    world.connect()
    assert resyncs == [True] and world.client.last_sequence == 2


def test_a_relinked_gateway_gets_its_last_event_again_and_applies_it_once(
        world: World) -> None:
    world.connect()
    world.fanout.commit(3)
    world.fanout.poll()
    world.flush()
    world.drop()
    resyncs: list[bool] = []
    world.client.on_resync = lambda: resyncs.append(True)
    assert world.client._resume_after() == 2  # HELLO asks for the last applied (3) again
    world.connect()
    world.fanout.commit()
    world.fanout.poll()
    world.flush()
    assert [e[0] for e in world.events] == [1, 2, 3, 4]  # 3 compared, not applied again
    assert resyncs == [] and world.client.last_sequence == 4


def test_a_database_restored_past_the_gateways_position_is_noticed(world: World) -> None:
    """The database was restored from a backup taken at event 2, and events were committed
    since, up to 5: the gateway's 3 is another event under the same number, so it drops
    what it cached and applies 3, 4 and 5 afresh."""
    world.connect()
    world.fanout.commit(3)
    world.fanout.poll()
    world.flush()
    world.drop()
    del world.fanout.records[2:]
    world.fanout.committed_seq = 2
    for seq in (3, 4, 5):
        world.fanout.records.append(OutboxRecord(seq, 0, "demo", "l3.state", encode_payload(
            {"unique_identifier": f"l3-{seq}", "state": 4})))
    world.fanout.committed_seq = 5
    resyncs: list[bool] = []
    world.client.on_resync = lambda: resyncs.append(True)
    world.connect()
    world.flush()
    assert resyncs == [True]
    assert [(e[0], e[1]) for e in world.events] == [
        (1, "l3.rotated"), (2, "l3.rotated"), (3, "l3.rotated"),
        (3, "l3.state"), (4, "l3.state"), (5, "l3.state")]
    assert world.client.last_sequence == 5


def test_an_event_gap_makes_the_gateway_reconnect_instead_of_applying(world: World) -> None:
    gateway_end = world.connect()
    gateway_end.dataReceived(encode_frame(Frame(FrameType.EVENT, sequence=5, kind="policy",
                                                payload={})))
    assert world.events == [] and gateway_end.closing


def _prune(fanout: MemoryFanout, through: int) -> None:
    """The core deleted its events up to ``through`` (outbox_retention; never the newest)."""
    fanout.records = [r for r in fanout.records if r.seq > through]


def _commit_after_pruning(fanout: MemoryFanout) -> None:
    """One more event, numbered after the newest (commit() counts the records, which
    pruning made fewer)."""
    seq = fanout.committed_seq = fanout.records[-1].seq + 1
    fanout.records.append(OutboxRecord(seq, 0, "demo", "l3.rotated", encode_payload(
        {"unique_identifier": f"l3-{seq}", "service": "app", "key_version": seq})))


@pytest.mark.parametrize(("applied", "away", "pruned_through", "first"), [
    (3, 5, 6, 7),  # the gateway applied 1-3 and resumes from 2 (comparing 3): 3-6 are gone
    (3, 2, 3, 4),  # only the event to compare (3) is gone: the database cannot be checked
    (0, 5, 5, 6),  # linked at 2 (sent 2, not applied), resumes comparing 2: 3-5 are gone
])
def test_a_gateway_relinking_after_its_events_were_pruned_resynchronises_and_goes_on(
        world: World, applied: int, away: int, pruned_through: int, first: int) -> None:
    """The core deleted the events older than its outbox_retention while the gateway was
    away: the resumed link's first event is beyond the one expected. The gateway drops
    what it cached, logs one line, applies that event and the rest, and stays linked (it
    used to take it for a gap and reconnect, to get the same answer, for ever)."""
    if applied:
        world.connect()
        world.fanout.commit(applied)
        world.fanout.poll()
    else:
        world.fanout.commit(2)
        world.fanout.poll()
        world.connect()
    world.flush()
    world.drop()
    start = len(world.fanout.records)
    world.fanout.commit(away)
    world.fanout.poll()
    _prune(world.fanout, pruned_through)
    resyncs: list[bool] = []
    world.client.on_resync = lambda: resyncs.append(True)
    with capturedLogs() as logged:
        world.connect()
        world.flush()
    assert resyncs == [True]
    assert [e[0] for e in world.events] == [
        *range(1, applied + 1), *range(first, start + away + 1)]
    assert world.client.connected and world.client.last_sequence == start + away
    assert world.server.live and not world.server.closing
    lines = [formatEvent(e) for e in logged if e.get("log_level") == LogLevel.warn]
    compared = applied or 2
    assert lines == [f"events {compared} to {first - 1} are "  # (the one compared)
                     "no longer in the core's outbox (outbox_retention): resynchronising, "
                     f"from event {first}"]
    asked = start - 1
    assert [formatEvent(e) for e in logged if "outbox_retention): it resynchronises"
            in formatEvent(e)] == [
        f"gateway {GATEWAY.id} resumes after event {asked}, but the outbox keeps events "
        f"from {first} only (outbox_retention): it resynchronises"]
    _commit_after_pruning(world.fanout)
    world.fanout.poll()
    world.flush()
    assert world.events[-1][0] == start + away + 1 and resyncs == [True]
    assert world.client.connected


def test_a_gap_later_in_a_resumed_links_stream_still_ends_the_link(world: World) -> None:
    """Only a resumed link's first event may be beyond the expected one (pruned events);
    a gap after it is a broken stream: never applied, the link is given up (GOAWAY)."""
    world.connect()
    world.fanout.commit(2)
    world.fanout.poll()
    world.flush()
    world.drop()
    world.fanout.commit(1)
    world.fanout.poll()
    resyncs: list[bool] = []
    world.client.on_resync = lambda: resyncs.append(True)
    gateway_end = world.connect()  # 2 compared, 3 applied
    assert [e[0] for e in world.events] == [1, 2, 3] and world.client.connected
    gateway_end.dataReceived(encode_frame(Frame(FrameType.EVENT, sequence=6, kind="policy",
                                                payload={})))
    assert gateway_end.closing and resyncs == []
    assert [e[0] for e in world.events] == [1, 2, 3] and world.client.last_sequence == 3


def test_a_slow_gateway_is_dropped_without_holding_up_the_stream(world: World) -> None:
    world.connect()
    world.server.pauseProducing()  # its transport is full
    world.fanout.commit(3)
    world.fanout.poll()
    world.server.resumeProducing()
    world.flush()
    assert [e[0] for e in world.events] == [1, 2, 3]
    world.server.pauseProducing()
    world.fanout.commit(6)
    world.fanout.poll()  # 6 queued > 5 allowed
    assert world.server.closing
    world.flush()
    assert not world.client.connected and world.fanout._subscribers == set()
    world.connect()  # it resumes by sequence
    assert [e[0] for e in world.events] == list(range(1, 10))


def test_in_flight_is_bounded_with_backpressure(world: World) -> None:
    world.connect()

    class Producer:
        paused = False

        def pauseProducing(self):
            self.paused = True

        def resumeProducing(self):
            self.paused = False

    producer = Producer()
    world.client.add_producer(producer)
    for _ in range(4):
        world.client.forward(b"r", APP, "h:1")
    assert producer.paused
    more = results([world.client.forward(b"r", APP, "h:1") for _ in range(5)])
    assert more[-1].check(LinkBusy)  # twice the bound: refused
    world.flush()
    for _, _, d in world.handler.calls[:5]:
        d.callback(b"ok")
        world.flush()
    assert world.client.in_flight == 3 and producer.paused
    world.handler.calls[5][2].callback(b"ok")
    world.flush()
    assert world.client.in_flight == 2 and not producer.paused


def test_unanswered_requests_time_out(world: World) -> None:
    world.connect()
    pending = results([world.client.forward(b"r", APP, "h:1")])
    world.flush()
    for _ in range(11):
        world.clock.advance(1)
        world.flush()
    assert pending[0].check(LinkTimeout)
    world.handler.calls[0][2].callback(b"late")  # discarded
    world.flush()
    assert world.client.in_flight == 0 and world.client.connected


def test_a_silent_core_is_declared_dead(world: World) -> None:
    gateway_end = world.connect()
    world.server.transport.write = lambda data: None  # the core hangs
    for _ in range(3):
        world.clock.advance(1)
        world.flush()
    assert gateway_end.closing
    world.flush()
    assert not world.client.connected


def test_a_core_that_never_welcomes_is_given_up_at_the_welcome_deadline(world: World) -> None:
    """A hung core: the TCP connection is made (the kernel takes it into the listen
    backlog), and then nothing; the link is given up, a refusal for the back-off, well
    before heartbeats would find it dead."""
    server = world.factory.buildProtocol(None)
    server.dataReceived = lambda data: None  # its TLS handshake never finishes
    gateway_end = LinkClientProtocol(world.client)
    pump = iosim.connect(server, iosim.FakeTransport(server, True),
                         gateway_end, iosim.FakeTransport(gateway_end, False),
                         greet=False, clock=world.clock)
    world.clock.advance(world.client.welcome_timeout - 0.01)
    pump.flush()
    assert not gateway_end.closing
    world.clock.advance(0.01)
    pump.flush()
    assert gateway_end.closing and world.client._refusals == 1
    assert not world.client.connected
    # A link welcomed in time keeps no deadline.
    world.connect()
    assert world.client.connected and world.client._refusals == 0
    world.clock.advance(world.client.welcome_timeout)
    world.flush()
    assert world.client.connected


def test_an_unknown_link_version_is_refused(world: World) -> None:
    world.server = server = world.factory.buildProtocol(None)
    transport = iosim.FakeTransport(server, True)
    server.makeConnection(transport)
    server.handshakeCompleted()
    server.dataReceived(encode_frame(Frame(FrameType.HELLO, link_version=LINK_VERSION + 1,
                                           peer_name="x", sequence=-1)))
    assert f"link version {LINK_VERSION + 1}".encode() in b"".join(transport.stream)
    assert server.closing


def test_requests_before_hello_are_refused(world: World) -> None:
    server = world.factory.buildProtocol(None)
    server.makeConnection(iosim.FakeTransport(server, True))
    server.handshakeCompleted()
    server.dataReceived(encode_frame(Frame(FrameType.RESPONSE, stream_id=1, message=b"x")))
    assert server.closing


def test_reconnects_back_off_also_when_the_core_closes_before_welcome(world: World) -> None:
    delay = world.client.retry_delay
    assert delay(0) < 0.2
    world.peer = APP  # refused after the handshake, before WELCOME
    for _ in range(6):
        world.connect()
        world.flush()
    assert world.client._refusals == 6
    assert delay(0) >= 1.0  # the cap: a restarted core is retried at least every ~1 s
    world.peer = GATEWAY
    world.connect()
    assert world.client._refusals == 0 and delay(0) < 0.2


def test_the_core_configuration_has_a_link_listener(tmp_path) -> None:
    from kcm.core.config import CoreConfig, load_config

    assert CoreConfig().link_listen == "tcp:5697:interface=127.0.0.1"
    path = tmp_path / "core.toml"
    path.write_text('[core]\nlink_listen = "tcp:7000"\n')
    assert load_config(path).link_listen == "tcp:7000"
    assert load_config(path, {"link_listen": ""}).link_listen == ""


# The core's policy (subject map) pushed to the gateway ----------------------------------------

LEGACY_MAP = {"CN=legacy-client,O=KCM Dev": "tenant/demo/service/legacy"}


def test_welcome_carries_the_cores_subject_map(world: World) -> None:
    documents: list[str] = []
    world.client.on_policy = documents.append
    world.connect()
    assert documents == [SubjectMap.from_mapping(LEGACY_MAP).document()]
    pushed = SubjectMap.from_document(documents[0])
    assert pushed.document() == documents[0] and len(pushed) == 1


def test_a_policy_event_updates_the_gateways_map_and_the_core_checks_the_new_one(
        world: World) -> None:
    from kcm.gateway.config import GatewayConfig
    from kcm.gateway.service import GatewayService

    gateway = GatewayService(GatewayConfig(), reactor=world.clock, run_in_thread=run_inline)
    world.client.on_policy = gateway.apply_policy
    world.connect()
    legacy = x509.Name.from_rfc4514_string("CN=legacy-client,O=KCM Dev")
    assert gateway.subject_map.lookup(legacy, trust_domain=TD) == LEGACY

    moved = SubjectMap.from_mapping({"CN=legacy-client,O=KCM Dev": "tenant/demo/service/app"})
    world.factory.set_subject_map(moved)  # what CoreService.reload_policy does, then:
    world.fanout.records.append(OutboxRecord(1, 0, None, "policy",
                                             encode_payload({"policy": moved.document()})))
    world.fanout.poll()
    world.flush()
    assert world.events[-1][:2] == (1, "policy")
    principal = gateway.subject_map.lookup(legacy, trust_domain=TD)
    assert principal is not None and principal.service == "app"
    # The core now accepts the subject only as the new principal.
    results([world.client.forward(b"old", LEGACY, "h:1"),
             world.client.forward(b"new", principal, "h:1")])
    world.flush()
    assert [(wire, caller.principal.service) for wire, caller, _ in world.handler.calls] == [
        (b"new", "app")]


def test_the_core_reads_a_callers_fields_once_and_again_under_a_new_policy(
        world: World) -> None:
    """The core keeps what a connection's caller fields name (the same with each of its
    requests) until the policy changes: then the same fields are judged anew."""
    world.connect()
    first = results([world.client.forward(b"one", LEGACY, "h:1"),
                     world.client.forward(b"two", LEGACY, "h:1")])
    world.flush()
    assert [(wire, caller.principal) for wire, caller, _ in world.handler.calls] == [
        (b"one", LEGACY), (b"two", LEGACY)]
    one, two = (caller for _, caller, _ in world.handler.calls)
    assert one is two and one.source == "h:1" and one.gateway is not None
    for _, _, d in world.handler.calls:
        d.callback(b"answer")
    world.flush()
    assert first == [b"answer", b"answer"]
    world.factory.set_subject_map(SubjectMap.from_mapping(
        {"CN=legacy-client,O=KCM Dev": "tenant/demo/service/app"}))
    refused = results([world.client.forward(b"three", LEGACY, "h:1")])
    world.flush()
    assert len(world.handler.calls) == 2  # not handed on: the subject names another now
    assert b"asserted caller identity is not accepted" in refused[0]


def test_long_caller_fields_are_read_for_each_request_and_not_kept(world: World) -> None:
    """What a link keeps is bounded in size too: caller fields over 4 KiB are served, read
    anew each time."""
    world.connect()
    source = "h:" + "9" * 5000
    results([world.client.forward(b"one", LEGACY, source),
             world.client.forward(b"two", LEGACY, "h:1")])
    world.flush()
    assert [(wire, caller.principal, caller.source)
            for wire, caller, _ in world.handler.calls] == [
        (b"one", LEGACY, source), (b"two", LEGACY, "h:1")]
    (link,) = world.factory.links
    assert [len(fields) < 4096 for fields in link._callers] == [True]


def test_the_gateway_keeps_its_map_when_the_core_sends_a_malformed_policy() -> None:
    from kcm.gateway.config import GatewayConfig
    from kcm.gateway.service import GatewayService

    gateway = GatewayService(GatewayConfig(), reactor=Clock(), run_in_thread=run_inline)
    assert len(gateway.subject_map) == 0  # before the first WELCOME: subjects name nobody
    gateway.apply_policy(SubjectMap.from_mapping(LEGACY_MAP).document())
    for bad in ("not json", "[]", '{"CN=x": "gateway/gw1"}'):
        gateway.apply_policy(bad)
        assert len(gateway.subject_map) == 1


def test_the_gateway_no_longer_reads_a_policy_file(tmp_path) -> None:
    from kcm.config_file import ConfigError
    from kcm.gateway.config import load_config

    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\npolicy_file = "etc/kcm-policy.toml"\n')
    with pytest.raises(ConfigError, match="policy the core pushes"):
        load_config(path)


# A frame too large for the link fails its one stream, never the link -----------------------
def test_an_answer_too_large_for_the_gateway_fails_its_call_and_the_link_goes_on() -> None:
    world = World(gateway_frame_size=4096)  # the core sends frames the gateway will not take
    world.connect()
    calls = results([world.client.forward(b"big", APP, "h:1"),
                     world.client.forward(b"small", APP, "h:1")])
    world.flush()
    world.handler.calls[0][2].callback(bytes(10_000))
    world.handler.calls[1][2].callback(b"ok")
    world.flush()
    assert calls[0].check(AnswerTooLarge)
    size = len(encode_frame(Frame(FrameType.RESPONSE, stream_id=1, message=bytes(10_000))))
    assert str(calls[0].value) == (f"the core's answer of {size} bytes exceeds this "
                                   "gateway's link frames of at most 4096 bytes")
    assert calls[1] == b"ok"
    assert world.client.connected and world.client.in_flight == 0
    later = results([world.client.forward(b"again", APP, "h:1")])
    world.flush()
    world.handler.calls[2][2].callback(b"fine")
    world.flush()
    assert later == [b"fine"]


def test_an_answer_too_large_for_a_call_that_timed_out_is_skipped_quietly() -> None:
    world = World(gateway_frame_size=4096)
    world.connect()
    late = results([world.client.forward(b"slow", APP, "h:1")])
    world.flush()
    for _ in range(11):
        world.clock.advance(1)
        world.flush()
    assert late[0].check(LinkTimeout)
    world.handler.calls[0][2].callback(bytes(10_000))
    world.flush()
    assert world.client.connected and world.client.in_flight == 0


def test_a_request_too_large_for_the_core_is_answered_invalid_message_on_its_stream() -> None:
    world = World(core_frame_size=4096)  # the gateway sends frames the core will not take
    world.connect()
    calls = results([world.client.forward(bytes(10_000), APP, "h:1"),
                     world.client.forward(b"small", APP, "h:1")])
    world.flush()
    assert [wire for wire, _, _ in world.handler.calls] == [b"small"]
    world.handler.calls[0][2].callback(b"ok")
    world.flush()
    assert re.fullmatch(rb"FAIL 4 request too large: its link frame of 10\d\d\d bytes "
                        rb"exceeds the core's maximum of 4096", calls[0])
    assert ResultReason.INVALID_MESSAGE == 4
    assert calls[1] == b"ok" and world.client.connected and world.client.in_flight == 0


def test_a_forward_on_a_link_closing_fails_at_once_unsent() -> None:
    """A link this end is closing (a GOAWAY sent, the connection not yet gone) takes no
    forwarded request: the call fails with LinkDown at once, none is left in flight."""
    world = World()
    world.connect()
    world.client._protocol.close()  # (the transport has not said it is gone yet)
    refused = results([world.client.forward(b"r", APP, "h:1")])
    assert refused[0].check(LinkDown)
    assert world.client.in_flight == 0
    world.flush()
    assert world.handler.calls == []


def test_a_request_too_large_for_the_gateways_own_frames_fails_at_once_unsent() -> None:
    world = World(gateway_frame_size=4096)
    world.connect()
    refused = results([world.client.forward(bytes(10_000), APP, "h:1")])
    assert refused[0].check(RequestTooLarge)
    assert world.client.in_flight == 0
    world.flush()
    assert world.handler.calls == [] and world.client.connected


def test_an_answer_too_large_for_the_cores_own_frames_is_response_too_large() -> None:
    # The core's handler bounds its answers below the frame size; one that did not is still
    # only its stream's failure.
    world = World(core_frame_size=4096)
    world.connect()
    answer = results([world.client.forward(b"r", APP, "h:1")])
    world.flush()
    world.handler.calls[0][2].callback(bytes(10_000))
    world.flush()
    assert answer[0].startswith(f"FAIL {int(ResultReason.RESPONSE_TOO_LARGE)} the response "
                                "of 10000 bytes does not fit".encode())
    assert world.client.connected and world.client.in_flight == 0


def test_a_policy_too_large_for_the_link_is_left_out_and_the_link_stays_up() -> None:
    world = World(core_frame_size=4096)
    big = SubjectMap.from_mapping({f"CN=client-{i},O=KCM Dev": "tenant/demo/service/app"
                                   for i in range(200)})
    assert len(big.document()) > 4096
    world.factory.set_subject_map(big)
    documents: list[str] = []
    world.client.on_policy = documents.append
    world.connect()
    assert world.client.connected and documents == []  # the gateway keeps the map it has
    world.fanout.records.append(OutboxRecord(1, 0, None, "policy",
                                             encode_payload({"policy": big.document()})))
    world.fanout.commit(1)
    world.fanout.poll()
    world.flush()
    assert [(seq, kind, payload) for seq, kind, _, payload in world.events][0] == (
        1, "policy", {})
    assert [e[0] for e in world.events] == [1, 2]  # gapless
    assert documents == [] and world.client.connected


def test_a_relink_to_a_core_whose_fan_out_has_not_read_our_last_event_is_no_resync() -> None:
    """Failover to another core of the database whose fan-out has read events up to 3, the
    gateway's last applied being 4 (committed by the first core a moment ago): the core's
    head is the event before ours, which is what we asked for to compare; ours comes when
    its fan-out reads it, is compared, and is not applied twice."""
    first = World()
    first.connect()
    first.fanout.commit(4)
    first.fanout.poll()
    first.flush()
    first.drop()
    other = World()
    other.fanout.records = first.fanout.records[:3]
    other.fanout.poll()
    other.fanout.records = first.fanout.records  # the database holds 4 already
    other.fanout.committed_seq = 4
    resyncs: list[bool] = []
    first.client.on_resync = lambda: resyncs.append(True)
    other.client, other.events = first.client, first.events
    other.connect()
    other.fanout.poll()
    other.flush()
    assert resyncs == [] and [e[0] for e in first.events] == [1, 2, 3, 4]
    assert first.client.last_sequence == 4


def test_events_overtake_the_answers_waiting_for_a_full_transport(world: World) -> None:
    """A revocation committed while answers wait for the gateway to read reaches it before
    them: an event waits for what the transport already holds, not for later answers."""
    world.connect()
    seen_at_answer: list[int] = []
    pending = [world.client.forward(b"r", APP, "h:1") for _ in range(2)]
    for d in pending:
        d.addCallback(lambda _: seen_at_answer.append(len(world.events)))
    world.flush()
    world.server.pauseProducing()  # the transport is full: the gateway reads slowly
    for _, _, d in world.handler.calls:
        d.callback(b"ok")
    world.fanout.commit(1)
    world.fanout.poll()
    world.server.resumeProducing()
    world.flush()
    assert [e[0] for e in world.events] == [1]
    assert seen_at_answer == [1, 1]


def test_a_gateway_that_reads_nothing_is_closed_after_the_write_timeout(world: World) -> None:
    world.connect()

    def wait(seconds: int) -> None:  # (the gateway's heartbeats keep coming)
        for _ in range(seconds):
            world.clock.advance(1)
            world.flush()

    timeout = int(world.factory.settings.write_timeout)
    world.server.pauseProducing()
    wait(timeout - 1)
    world.server.resumeProducing()  # it read something: the timeout starts again
    world.server.pauseProducing()
    wait(timeout - 1)
    assert not world.server.closing
    wait(1)
    assert world.server.closing


def connected_watching_reads(world: World) -> list[bool]:
    """Connect ``world``; the core's link then records in the list it returns each time it
    stops reading its transport (False) and starts again (True)."""
    world.connect()
    reading: list[bool] = []
    world.server.transport.pauseProducing = lambda: reading.append(False)
    world.server.transport.resumeProducing = lambda: reading.append(True)
    return reading


def test_a_link_with_too_many_requests_in_flight_is_not_read_until_one_goes(
        world: World) -> None:
    world.factory.settings = replace(world.factory.settings, max_requests_in_flight=3)
    world.client.max_in_flight = 10
    reading = connected_watching_reads(world)
    for _ in range(3):
        world.client.forward(b"r", APP, "h:1")
    world.flush()
    assert reading == [False] and world.server.reading_paused
    world.clock.advance(10 * world.factory.settings.heartbeat_interval)
    assert not world.server.closing  # unread, its silence proves nothing
    world.server.pauseProducing()  # its transport full too: the answer waits, in flight
    world.handler.calls[0][2].callback(b"ok")
    assert reading == [False]
    world.server.resumeProducing()  # written: one fewer in flight
    assert reading == [False, True] and not world.server.reading_paused


def test_a_gateway_at_its_own_bound_is_read_whole_by_the_core_defaults(world: World) -> None:
    """A gateway with the default max_in_flight sends at most twice it (its clients are
    paused at it; the requests already read go on). The core reads all of them, so a
    request of another tenant behind them is read at once, not after as many answers."""
    from dataclasses import fields

    from kcm.gateway.config import GatewayConfig

    assert world.factory.settings.max_requests_in_flight == 2048
    world.client.max_in_flight = next(f.default for f in fields(GatewayConfig)
                                      if f.name == "max_in_flight")
    reading = connected_watching_reads(world)
    for _ in range(2 * world.client.max_in_flight - 1):
        world.client.forward(b"heavy", APP, "h:1")
    world.flush()
    assert reading == [] and not world.server.reading_paused
    world.client.forward(b"other tenant", APP, "h:2")  # the last the gateway may send
    world.flush()
    assert len(world.handler.calls) == 2 * world.client.max_in_flight
    assert world.handler.calls[-1][0] == b"other tenant"


def test_a_gateway_that_applied_no_event_still_notices_a_restore(world: World) -> None:
    """A gateway starts from the head (event 3) and applies nothing; the database is then
    restored from a backup at event 2 and events 3 to 5 are committed anew. Sent the head
    event when it linked, the gateway compares its 3 with the core's and resynchronises."""
    world.fanout.commit(3)
    world.fanout.poll()
    world.connect()
    world.flush()
    assert world.events == [] and world.client.last_sequence == 3  # 3 sent, not applied
    world.drop()
    del world.fanout.records[2:]
    for seq in (3, 4, 5):
        world.fanout.records.append(OutboxRecord(seq, 0, "demo", "l3.state", encode_payload(
            {"unique_identifier": f"l3-{seq}", "state": 4})))
    world.fanout.committed_seq = 5
    world.fanout.poll()
    resyncs: list[bool] = []
    world.client.on_resync = lambda: resyncs.append(True)
    world.connect()
    world.flush()
    assert resyncs == [True]
    assert [(e[0], e[1]) for e in world.events] == [(3, "l3.state"), (4, "l3.state"),
                                                    (5, "l3.state")]


def test_a_key_answer_waiting_for_the_transport_is_not_overtaken_by_a_later_event(
        world: World) -> None:
    """A fetch's answer handed over before the event of a change committed after its read
    (the key compromised) reaches the gateway first, even when both wait for a full
    transport: else the gateway applied the compromise, then cached the key as Active."""
    from twisted.internet.defer import Deferred

    from kcm.gateway.l3_cache import L3Cache, Need, ServiceKeyMissing
    from kcm.kmip.enums import State

    cache = L3Cache(lambda caller, tenant, service, uid:
                    world.client.fetch_service_keys(caller, tenant, service, uid),
                    connected=lambda: True, clock=world.clock.seconds)
    order: list[str] = []

    def on_event(seq, kind, tenant, payload):
        order.append(f"event {seq}")
        cache.apply_event(seq, kind, tenant, payload)

    world.client.on_event = on_event
    world.connect()
    answer: Deferred = Deferred()
    world.factory.fetch_keys = lambda *args: answer
    cache.ensure([Need("demo", "app")], APP).addCallback(lambda _: order.append("keys"))
    world.flush()
    world.server.pauseProducing()
    answer.callback([KEY])
    world.fanout.records.append(OutboxRecord(1, 0, "demo", "l3.state", encode_payload(
        {"unique_identifier": KEY.uid, "service": "app", "state": int(State.COMPROMISED)})))
    world.fanout.committed_seq = 1
    world.fanout.poll()
    world.server.resumeProducing()
    world.flush()
    assert order == ["keys", "event 1"]
    with pytest.raises(ServiceKeyMissing):  # (its only key is compromised)
        cache.current("demo", "app")


def test_a_gateway_that_reads_slowly_is_not_taken_for_one_that_reads_nothing(
        world: World) -> None:
    """Twisted resumes a producer only once the buffer is empty: a gateway draining a large
    answer over a slow link stays "paused" longer than the write timeout. What its transport
    holds unsent going down keeps the link; nothing taken for a whole timeout closes it."""
    from types import SimpleNamespace

    world.connect()
    lower = SimpleNamespace(dataBuffer=b"x" * 1_000_000, offset=0, _tempDataLen=0)
    world.server.transport.transport = lower
    timeout = int(world.factory.settings.write_timeout)
    world.server.pauseProducing()
    for _ in range(3 * timeout):  # it reads 10 kB a second: 3 timeouts and more
        lower.offset += 10_000
        world.clock.advance(1)
        world.flush()
    assert not world.server.closing
    for _ in range(timeout):  # then it reads nothing
        world.clock.advance(1)
        world.flush()
    assert world.server.closing


def test_a_database_restored_one_event_back_is_noticed(world: World) -> None:
    """A backup at event 2, one event after it (3, applied by the gateway), then the restore:
    the restored core's head, 2, is the one before the gateway's. The gateway took that for
    a fan-out that had not read its event yet and waited for a 3 that never came (it sealed
    new tokens under a service key the database never had). The core reads its outbox
    before naming a head at what the gateway asks after, so the gateway can trust it."""
    world.connect()
    world.fanout.commit(3)
    world.fanout.poll()
    world.flush()
    world.drop()
    del world.fanout.records[2:]
    world.fanout.committed_seq = 2
    world.fanout.head = 2  # the core started again on the restored database
    resyncs: list[bool] = []
    world.client.on_resync = lambda: resyncs.append(True)
    world.connect()
    world.flush()
    assert resyncs == [True] and world.client.last_sequence == 2
    world.fanout.commit()
    world.fanout.poll()
    world.flush()
    assert world.events[-1][0] == 3 and world.client.last_sequence == 3


def test_a_database_restored_under_a_running_core_sends_its_gateways_to_link_again(
        world: World) -> None:
    """``pg_restore --clean`` while the core runs: the outbox ends before the head the
    fan-out has sent, and the events the core then commits, under numbers already sent,
    were never published. The core notices, goes back to the outbox's head, and closes
    its links: its gateways link again, find WELCOME's head below their own, and
    resynchronise, then follow the restored database's events."""
    world.fanout.on_went_back.append(world.factory.events_went_back)  # (as kcm.core.tap)
    world.connect()
    world.fanout.commit(3)
    world.fanout.poll()
    world.flush()
    del world.fanout.records[2:]  # restored from a backup at event 2
    world.fanout.committed_seq = 2
    resyncs: list[bool] = []
    world.client.on_resync = lambda: resyncs.append(True)
    world.fanout.check_head()
    world.flush()
    assert world.fanout.head == 2 and not world.client.connected
    world.connect()
    world.flush()
    assert resyncs == [True] and world.client.last_sequence == 2
    world.fanout.commit()  # event 3 of the restored database
    world.fanout.poll()
    world.flush()
    assert world.events[-1][0] == 3 and world.client.last_sequence == 3


def test_answers_waiting_for_a_full_transport_go_in_turns_by_tenant(world: World) -> None:
    """Tenant demo's many answers waiting for a gateway that reads slowly do not hold back
    tenant other's: the transport takes one of each busy tenant's in turn (a Get Attributes
    waited 2 s behind another tenant's 1 MB answers), each tenant's in its order."""
    other = Principal(Role.SERVICE, TD, tenant="other", service="app",
                      uri=f"spiffe://{TD}/tenant/other/service/app")
    world.connect()
    order: list[bytes] = []
    for n in range(3):
        world.client.forward(f"demo{n}".encode(), APP, "h:1").addCallback(order.append)
    world.client.forward(b"other0", other, "h:2").addCallback(order.append)
    world.flush()
    world.server.pauseProducing()  # the transport is full: the gateway reads slowly
    for wire, _, answer in world.handler.calls:
        answer.callback(wire)
    world.server.resumeProducing()
    world.flush()
    assert order == [b"demo0", b"other0", b"demo1", b"demo2"]


def test_a_cancelled_request_counts_in_flight_until_it_has_ended(world: World) -> None:
    """A request the gateway cancelled may still wait for its tenant's turn, holding its
    bytes: it counts against the link's bound until it ends, so that clients that send and
    leave cannot make the core hold more than the bound of them."""
    world.factory.settings = replace(world.factory.settings, max_requests_in_flight=2)
    world.client.max_in_flight = 10
    reading = connected_watching_reads(world)
    calls = [world.client.forward(f"req{i}".encode(), APP, "h:1") for i in range(2)]
    world.flush()
    assert reading == [False]
    for call in calls:
        call.addErrback(lambda failure: None)
        call.cancel()
    world.flush()
    assert reading == [False] and world.server.reading_paused  # both still queued
    world.handler.calls[0][2].callback(b"late")  # the first ends (answered, dropped)
    world.flush()
    assert reading == [False, True] and not world.server.reading_paused


def _candidate_link(world: World) -> tuple[LinkClientProtocol, iosim.IOPump]:
    """A renewal's second link (LinkClient.relink) to the same core: HELLO written, not
    yet read by the core."""
    server = world.factory.buildProtocol(None)
    gateway_end = LinkClientProtocol(world.client, world.client._candidate)
    pump = iosim.connect(server, iosim.FakeTransport(server, True),
                         gateway_end, iosim.FakeTransport(gateway_end, False),
                         greet=False, clock=world.clock)
    server.handshakeCompleted()
    return gateway_end, pump


@pytest.mark.parametrize("applied_meanwhile", [0, 2])
def test_a_renewal_s_second_link_applies_each_event_once_in_order(
        world: World, applied_meanwhile: int) -> None:
    """Make-before-break: while the renewal's link is made, the old one goes on applying
    events (``applied_meanwhile`` of them between the new link's HELLO and its WELCOME);
    once the new link takes over, the core's events reach the gateway on both until the old
    one closes. Every event is applied once, in order, without a resynchronisation, and
    the new link's replay of the last applied event is compared only when nothing was
    applied since its HELLO."""
    resyncs: list[bool] = []
    world.client.on_resync = lambda: resyncs.append(True)
    old = world.connect()
    world.fanout.commit(3)
    world.fanout.poll()
    world.flush()
    assert world.client.relink("renewed")
    new, new_pump = _candidate_link(world)  # HELLO asks after 2 (3 sent again, compared)
    if applied_meanwhile:
        world.fanout.commit(applied_meanwhile)
        world.fanout.poll()
        world.flush()  # (the old link's pump)
    assert [e[0] for e in world.events] == list(range(1, 4 + applied_meanwhile))
    new_pump.flush()
    assert world.client._protocol is new and old.draining
    world.fanout.commit(2)
    world.fanout.poll()
    new_pump.flush()
    world.flush()
    last = 5 + applied_meanwhile
    assert [e[0] for e in world.events] == list(range(1, last + 1))
    assert resyncs == [] and world.client.last_sequence == last
    assert world.client.links_renewed == 1
