"""Service key fetches are bounded per tenant (review 4, defect 1): identical fetches in
flight are one, a tenant has at most ``max_fetches_per_tenant`` in flight (the rest wait
their turn), the core's "no such L3" is remembered briefly per (tenant, uid) and forgotten
by the event that makes the L3, and fetches on the link never pause the client connections
(another tenant's included): they are bounded apart. A Clock, fakes and StringTransports."""

from __future__ import annotations

import uuid

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from kcm.gateway.l3_cache import L3Cache, Need
from kcm.gateway.link_client import LinkBusy, LinkClient, LinkClientProtocol, ServiceKeyRefused
from kcm.kernel.missing import object_not_found
from kcm.kmip.enums import ResultReason, State
from kcm.kmip_protocol import (
    PAUSED_BY_UPSTREAM,
    ConnectionInfo,
    ConnectionLimits,
    KmipServerFactory,
)
from kcm.l4.service_key import ServiceKey
from kcm.link.frames import Frame, FrameType, encode_frame
from tests.core_support import service_principal
from tests.gateway_support import core_welcome, locate, request

APP = service_principal()
BILLING = service_principal("demo", "billing")
OTHER = service_principal("other", "app")
NEW = ServiceKey("l3-00000000-0000-4000-8000-0000000000aa", "demo", "app", 2, State.ACTIVE,
                 b"n" * 32)


class HeldFetches:
    """A core that answers fetches when told: ``calls`` in the order they were made."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, str | None, Deferred]] = []
        self.keys: dict[str, ServiceKey] = {}

    def __call__(self, caller, tenant, service, uid=None) -> Deferred:
        d: Deferred = Deferred()
        self.calls.append((caller, uid, d))
        return d

    def answer(self, index: int = 0, caller=None) -> None:
        """Answer call ``index`` (of those not answered yet, of ``caller`` if given) as the
        core would."""
        pending = [call for call in self.calls
                   if not call[2].called and (caller is None or call[0] == caller)]
        _, uid, d = pending[index]
        if uid in self.keys:
            d.callback([self.keys[uid]])
        else:
            missing = object_not_found(uid)
            d.errback(ServiceKeyRefused(missing.reason, missing.message))

    def waiting(self, caller=None) -> int:
        return sum(1 for who, _, d in self.calls
                   if not d.called and (caller is None or who == caller))


def uid() -> str:
    return f"l3-{uuid.uuid4()}"


def cache_of(core: HeldFetches, clock: Clock, **kwargs) -> L3Cache:
    return L3Cache(core, connected=lambda: True, clock=clock.seconds, **kwargs)


def errors_of(d: Deferred) -> dict:
    got: list[dict] = []
    d.addCallback(got.append)
    assert got, "not answered yet"
    return got[0]


def test_identical_fetches_in_flight_are_one() -> None:
    core, clock = HeldFetches(), Clock()
    cache = cache_of(core, clock)
    core.keys[NEW.uid] = NEW
    first = cache.ensure([Need(uid=NEW.uid)], APP)
    second = cache.ensure([Need(uid=NEW.uid)], APP)
    assert len(core.calls) == 1
    other = cache.ensure([Need(uid=NEW.uid)], BILLING)  # who asks decides what is answered
    assert len(core.calls) == 2
    core.answer()
    assert errors_of(first) == errors_of(second) == {}
    assert cache.holds(NEW.uid) and not other.called


def test_a_tenant_has_a_bounded_number_of_fetches_in_flight_and_others_are_not_held() -> None:
    core, clock = HeldFetches(), Clock()
    cache = cache_of(core, clock, max_fetches_per_tenant=3)
    flood = [cache.ensure([Need(uid=uid()) for _ in range(5)], APP) for _ in range(4)]
    assert core.waiting(APP) == 3 and cache.fetches_waiting == 17
    # Another tenant's fetch is sent at once, whatever demo has waiting.
    cache.ensure([Need(uid=NEW.uid)], OTHER)
    assert core.waiting(OTHER) == 1
    # Demo's next waiting fetch goes out as one of its own is answered, in order.
    core.answer(0, APP)
    assert core.waiting(APP) == 3 and cache.fetches_waiting == 16
    while core.waiting(APP):
        core.answer(0, APP)
    assert cache.fetches_waiting == 0 and cache.fetches_running == 1  # OTHER's
    for d in flood:  # every request is answered as it would have been, only later
        errors = errors_of(d)
        assert len(errors) == 5
        assert {e.reason for e in errors.values()} == {ResultReason.OBJECT_NOT_FOUND}


def test_fetches_in_all_are_bounded_below_the_links_and_waiting_tenants_take_turns() -> None:
    """Every tenant's fetches together stay within ``max_fetches`` (half the link's own
    bound, which fails a fetch at once): 300 tenants of a prewarm made other tenants'
    requests fail "core unreachable" there. Beyond it a fetch waits, and the tenants with
    fetches waiting take the free turns in turn: a tenant that comes later is not behind
    everything the others queued."""
    core, clock = HeldFetches(), Clock()
    cache = cache_of(core, clock, max_fetches_per_tenant=2, max_fetches=3)
    tenants = [service_principal(f"t{n}", "app") for n in range(3)]
    for who in tenants:
        for _ in range(4):
            cache.ensure([Need(uid=uid())], who)
    assert core.waiting() == 3 and cache.fetches_running == 3  # t0 two, t1 one
    assert [core.waiting(who) for who in tenants] == [2, 1, 0]
    late = cache.ensure([Need(uid=NEW.uid)], OTHER)
    assert core.waiting(OTHER) == 0  # waits: every turn in all is taken
    core.keys[NEW.uid] = NEW
    for _ in range(4):  # four turns free, one at a time: the tenants waiting take them in turn
        core.answer(0)
        assert cache.fetches_running == 3
    assert [call[0].tenant for call in core.calls[3:]] == ["t0", "t1", "t2", "other"]
    while core.waiting():
        core.answer()
        assert cache.fetches_running <= 3
    assert errors_of(late) == {} and cache.fetches_waiting == 0


def test_a_tenants_waiting_fetches_are_bounded() -> None:
    """Beyond ``max_waiting_per_tenant`` waiting, a fetch fails at once (General Failure,
    try again): clients that send and leave faster than the core answers cannot grow the
    queue (review 6: 56,000 waiting fetches and 130 MB from one client). Another tenant's
    fetches are not refused for it."""
    from kcm.gateway.l3_cache import FETCHES_BUSY

    core, clock = HeldFetches(), Clock()
    cache = cache_of(core, clock, max_fetches_per_tenant=2, max_waiting_per_tenant=3)
    held = [cache.ensure([Need(uid=uid())], APP) for _ in range(5)]
    assert core.waiting(APP) == 2 and cache.fetches_waiting == 3
    refused = cache.ensure([Need(uid=uid()), Need(uid=uid())], APP)
    assert {(e.reason, e.message) for e in errors_of(refused).values()} == {
        (ResultReason.GENERAL_FAILURE, FETCHES_BUSY)}
    assert cache.fetches_waiting == 3 and not any(d.called for d in held)
    cache.ensure([Need(uid=NEW.uid)], OTHER)
    assert core.waiting(OTHER) == 1


def test_a_request_whose_client_left_takes_its_waiting_fetches_out_of_the_queue() -> None:
    """Cancelling :meth:`L3Cache.ensure`'s Deferred (the client left: the handler does it)
    takes the fetches no other request awaits out of the tenant's queue; one another
    request awaits stays; one already sent finishes and is kept. The cancelled request
    goes on as if its fetches had failed."""
    core, clock = HeldFetches(), Clock()
    cache = cache_of(core, clock, max_fetches_per_tenant=1)
    core.keys[NEW.uid] = NEW
    running = cache.ensure([Need(uid=NEW.uid)], APP)
    shared, alone = Need(uid=uid()), Need(uid=uid())
    leaving = cache.ensure([shared, alone, Need(uid=NEW.uid)], APP)
    staying = cache.ensure([shared], APP)
    assert cache.fetches_waiting == 2
    leaving.cancel()
    assert cache.fetches_waiting == 1  # `alone` left the queue, `shared` stays
    assert set(errors_of(leaving)) == {shared, alone, Need(uid=NEW.uid)}
    core.answer(0, APP)  # NEW, sent before: answered and kept
    assert errors_of(running) == {} and cache.holds(NEW.uid)
    core.answer(0, APP)  # then `shared`, which `staying` awaits
    assert set(errors_of(staying)) == {shared} and core.waiting() == 0
    assert cache.fetches_waiting == 0 and cache.fetches_running == 0


def test_a_lost_link_fails_every_waiting_fetch_without_recursion_or_leaks() -> None:
    """The link lost with 8 of a tenant's fetches in flight and thousands waiting: each
    waiting fetch then fails at once as it starts (no link). Every request is answered, no
    fetch is left running or merged into (before: one level of recursion per waiting fetch,
    a RecursionError, requests never answered and the tenant's turns leaked)."""
    core, clock = HeldFetches(), Clock()
    link_down = False

    def fetch(caller, tenant, service, uid=None) -> Deferred:
        if link_down:
            d: Deferred = Deferred()
            d.errback(ConnectionDone("no link"))
            return d
        return core(caller, tenant, service, uid)

    cache = L3Cache(fetch, connected=lambda: not link_down, clock=clock.seconds,
                    max_waiting_per_tenant=5000)
    flood = [cache.ensure([Need(uid=uid())], APP) for _ in range(3000)]
    assert core.waiting(APP) == cache.max_fetches_per_tenant
    link_down = True
    for _, _, d in list(core.calls):
        d.errback(ConnectionDone("link lost"))
    assert all(d.called for d in flood)
    assert cache.fetches_running == 0 and cache.fetches_waiting == 0
    link_down = False
    core.keys[NEW.uid] = NEW
    again = cache.ensure([Need(uid=NEW.uid)], APP)  # the tenant's turns are all free
    core.answer(0, APP)
    assert errors_of(again) == {} and cache.holds(NEW.uid)


def test_the_cores_not_found_is_remembered_briefly_per_tenant() -> None:
    core, clock = HeldFetches(), Clock()
    cache = cache_of(core, clock, not_found_ttl=5.0)
    bogus = uid()
    first = cache.ensure([Need(uid=bogus)], APP)
    core.answer()
    refusal = errors_of(first)[Need(uid=bogus)]
    assert refusal.reason == ResultReason.OBJECT_NOT_FOUND
    # Asked again by the same tenant (any of its callers): the same answer, no fetch; an
    # error of its own each time, never one raised before (which holds the frames, and
    # the request, it was raised through).
    for who in (APP, BILLING):
        [again] = errors_of(cache.ensure([Need(uid=bogus)], who)).values()
        assert (type(again), again.reason, again.message, again.args) == (
            type(refusal), refusal.reason, refusal.message, refusal.args)
        assert again is not refusal and again.__traceback__ is None
        assert again.__context__ is None and again.__cause__ is None
    assert len(core.calls) == 1
    cache.ensure([Need(uid=bogus)], OTHER)  # another tenant asks the core itself
    assert len(core.calls) == 2
    core.answer()
    clock.advance(5.0)  # then it is asked again
    cache.ensure([Need(uid=bogus)], APP)
    assert len(core.calls) == 3


def test_a_refusal_of_a_service_of_the_callers_tenant_or_a_link_failure_is_not_remembered(
        ) -> None:
    clock = Clock()
    denied = object_not_found(NEW.uid)
    answers = iter([ServiceKeyRefused(denied.reason, denied.message, owner=("demo", "billing")),
                    ServiceKeyRefused(ResultReason.GENERAL_FAILURE, "busy")])
    calls: list[str] = []

    def core(caller, tenant, service, uid=None) -> Deferred:
        calls.append(uid)
        d: Deferred = Deferred()
        d.errback(next(answers, object_not_found(uid)))
        return d

    cache = L3Cache(core, connected=lambda: True, clock=clock.seconds)
    for _ in range(3):
        cache.ensure([Need(uid=NEW.uid)], APP)
    assert len(calls) == 3


def test_another_tenants_l3_is_remembered_as_a_missing_one_is() -> None:
    """Each ask of another tenant's L3 went to the core (4-8 ms), where a missing one was
    answered from memory after the first (0.6 ms): the time told the two apart. Now both
    are asked once per not_found_ttl, and each refusal still names the key's owner."""
    clock = Clock()
    denied = object_not_found(NEW.uid)
    calls: list[str] = []

    def core(caller, tenant, service, uid=None) -> Deferred:
        calls.append(uid)
        d: Deferred = Deferred()
        owner = ("demo", "app") if uid == NEW.uid else None  # (None: no such L3)
        d.errback(ServiceKeyRefused(denied.reason, denied.message, owner=owner))
        return d

    cache = L3Cache(core, connected=lambda: True, clock=clock.seconds)
    missing = "l3-00000000-0000-4000-8000-0000000000ff"
    answers = []
    for _ in range(3):
        for uid in (NEW.uid, missing):
            answers.append(errors_of(cache.ensure([Need(uid=uid)], OTHER)))
    assert calls == [NEW.uid, missing]  # once each
    refusals = [error for answer in answers for error in answer.values()]
    assert {(e.reason, e.message) for e in refusals[::2]} == {(denied.reason, denied.message)}
    assert all(e.owner == ("demo", "app") for e in refusals[::2])


def test_the_owner_using_its_l3_forgets_no_other_tenants_refusal_of_it() -> None:
    """The owner fetching, refreshing or rotating its L3 forgot every tenant's remembered
    answer for its uid: another tenant's next ask then went to the core, which a missing
    uid's does not (one fetch each ``not_found_ttl``). Now only "no such L3" answers and
    the owner's own tenant's go; the refusal stays until it expires."""
    clock = Clock()
    calls: list[tuple[object, str | None]] = []
    denied = object_not_found(NEW.uid)

    def core(caller, tenant, service, uid=None) -> Deferred:
        calls.append((caller, uid))
        d: Deferred = Deferred()
        if caller == OTHER:
            d.errback(ServiceKeyRefused(denied.reason, denied.message, owner=("demo", "app")))
        else:
            d.callback([NEW])
        return d

    cache = L3Cache(core, connected=lambda: True, clock=clock.seconds)
    cache.ensure([Need(uid=NEW.uid)], OTHER)
    cache.ensure([Need(uid=NEW.uid)], APP)  # the owner fetches it: stored
    for kind, payload in (("l3.rotated", {"service": "app", "key_version": 2}),
                          ("l3.state", {"service": "app", "state": int(State.ACTIVE)})):
        cache.apply_event(1, kind, "demo", {"unique_identifier": NEW.uid, **payload})
    cache.store([NEW], APP)  # a refresh
    assert errors_of(cache.ensure([Need(uid=NEW.uid)], OTHER))[Need(uid=NEW.uid)].owner == (
        "demo", "app")
    assert [call for call in calls if call[0] == OTHER] == [(OTHER, NEW.uid)]  # once
    clock.advance(5)  # expired: asked again, as a missing uid is
    cache.ensure([Need(uid=NEW.uid)], OTHER)
    assert [call for call in calls if call[0] == OTHER] == [(OTHER, NEW.uid)] * 2


def test_a_no_such_l3_is_forgotten_when_the_l3_is_made_whoever_asked() -> None:
    core, clock = HeldFetches(), Clock()
    cache = cache_of(core, clock)
    cache.ensure([Need(uid=NEW.uid)], OTHER)
    core.answer()  # no such L3 (to tenant other)
    cache.store([NEW], APP)  # made since, as demo's: other's "not found" is untrue now
    cache.ensure([Need(uid=NEW.uid)], OTHER)
    assert core.waiting(OTHER) == 1


def test_a_new_l3_is_usable_as_soon_as_its_event_comes() -> None:
    core, clock = HeldFetches(), Clock()
    cache = cache_of(core, clock)
    cache.ensure([Need(uid=NEW.uid)], APP)
    core.answer()  # not found (yet)
    core.keys[NEW.uid] = NEW  # made at the core: its event comes
    cache.apply_event(1, "l3.rotated", "demo", {"unique_identifier": NEW.uid,
                                                "service": "app", "key_version": 2})
    done = cache.ensure([Need(uid=NEW.uid)], APP)
    core.answer()
    assert errors_of(done) == {} and cache.holds(NEW.uid)


def test_a_not_found_sent_before_an_l3_was_made_is_not_remembered() -> None:
    """The fetch read the store before the L3 was made; its event came before the answer."""
    core, clock = HeldFetches(), Clock()
    cache = cache_of(core, clock)
    cache.ensure([Need(uid=NEW.uid)], APP)
    cache.apply_event(1, "l3.rotated", "demo", {"unique_identifier": NEW.uid,
                                                "service": "app", "key_version": 2})
    core.answer()  # not found, as read before
    core.keys[NEW.uid] = NEW
    done = cache.ensure([Need(uid=NEW.uid)], APP)
    core.answer()
    assert errors_of(done) == {} and cache.holds(NEW.uid)


def test_the_remembered_not_founds_are_bounded_oldest_first_and_expire() -> None:
    """At most max_not_found, the oldest out first (all expire alike); those past their
    5 s go as the next is remembered, not only when asked again (each kept some 20 KB of
    a request for as long as nobody asked)."""
    core, clock = HeldFetches(), Clock()
    cache = cache_of(core, clock, max_not_found=2, not_found_ttl=5.0)
    a, b, c = uid(), uid(), uid()
    for bogus in (a, b):
        cache.ensure([Need(uid=bogus)], APP)
        core.answer()
    cache.ensure([Need(uid=a)], APP)  # (asked again: still the oldest)
    cache.ensure([Need(uid=c)], APP)
    core.answer()
    asked = len(core.calls)
    cache.ensure([Need(uid=b)], APP)
    assert len(core.calls) == asked
    cache.ensure([Need(uid=a)], APP)
    assert len(core.calls) == asked + 1
    core.answer()
    assert len(cache._not_found) == 2
    clock.advance(5.0)
    d = uid()
    cache.ensure([Need(uid=d)], APP)
    core.answer()
    assert len(cache._not_found) == 1  # c and a expired: they went as d came
    cache.resync()  # forgets them all
    cache.ensure([Need(uid=d)], APP)
    assert len(core.calls) == asked + 3


# The link ------------------------------------------------------------------------------------

class ForwardingHandler:
    def __init__(self, link: LinkClient) -> None:
        self.link = link

    def handle_request(self, wire: bytes, connection: ConnectionInfo) -> Deferred[bytes]:
        return self.link.forward(wire, connection.principal, connection.peer)

    def failure_response(self, reason: int, message: str) -> bytes:
        return b"FAIL"


def linked(**kwargs) -> tuple[LinkClient, LinkClientProtocol]:
    clock = Clock()
    link = LinkClient(None, clock=clock, **kwargs)  # type: ignore[arg-type]
    core_end = LinkClientProtocol(link)
    core_end.makeConnection(StringTransport())
    core_end.dataReceived(core_welcome())
    assert link.connected
    return link, core_end


def test_fetches_pause_no_client_connection_and_are_bounded_apart() -> None:
    link, core_end = linked(max_in_flight=4, max_fetches=6)
    factory = KmipServerFactory(ForwardingHandler(link), ConnectionLimits(),
                                lambda transport: OTHER, Clock(), upstream=link)
    other = factory.buildProtocol(None)
    transport = StringTransport()
    other.makeConnection(transport)
    other.handshakeCompleted()
    fetches = [link.fetch_service_keys(APP, "", "", uid()) for _ in range(6)]
    assert link.in_flight == 6 and link.fetches_in_flight == 6
    assert PAUSED_BY_UPSTREAM not in other.paused_by
    assert transport.producerState == "producing"
    refused = link.fetch_service_keys(APP, "", "", uid())
    assert isinstance(refused.result.value, LinkBusy)
    refused.addErrback(lambda _: None)
    # Another tenant's forwarded request still goes out, and is answered.
    other.dataReceived(request(locate()))
    assert link.in_flight == 7 and link.fetches_in_flight == 6
    forwarded = max(core_end.streams)
    core_end.dataReceived(encode_frame(Frame(FrameType.RESPONSE, stream_id=forwarded,
                                             message=b"answer")))
    assert transport.value() == b"answer"
    # Answered, timed out or lost, each fetch is counted as a fetch.
    first = min(core_end.streams)
    core_end.dataReceived(encode_frame(Frame(FrameType.SERVICE_KEYS, stream_id=first,
                                             service_keys=[])))
    assert link.fetches_in_flight == 5 and fetches[0].result == []
    fetches[1].addErrback(lambda _: None)
    fetches[1].cancel()
    assert link.fetches_in_flight == 4
    for d in fetches[2:]:
        d.addErrback(lambda _: None)
    core_end.connectionLost(Failure(ConnectionDone()))
    assert link.in_flight == link.fetches_in_flight == 0


def test_a_link_never_has_more_fetches_in_flight_than_the_core_keeps_waiting() -> None:
    """kcm-core keeps at most MAX_LINK_FETCHES of one link's fetches waiting and refuses
    the next at once: a gateway whose max_in_flight is larger (4,096) still sends no more,
    so that a burst of misses across many tenants is never refused by the core."""
    from kcm.core.link_server import LinkSettings
    from kcm.link.protocol import MAX_LINK_FETCHES

    assert LinkSettings().max_waiting_fetches == MAX_LINK_FETCHES
    for max_in_flight, fetches in ((4096, MAX_LINK_FETCHES), (100, 100)):
        link = LinkClient(None, clock=Clock(), max_in_flight=max_in_flight)  # type: ignore[arg-type]
        assert link.max_fetches == fetches
    assert LinkClient(None, clock=Clock(), max_in_flight=4096,  # type: ignore[arg-type]
                      max_fetches=5000).max_fetches == MAX_LINK_FETCHES
