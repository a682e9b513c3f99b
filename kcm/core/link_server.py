"""The core's end of the gateway link (docs/link-protocol.md): who may connect, and what the
core does with each frame.

Only a peer whose verified certificate names a GATEWAY principal is served; anyone else is
closed right after the handshake (counted as refused for its ``identity``:
:mod:`kcm.connection_refusals`). On a link:

* HELLO → WELCOME (carrying the core's policy document), then, once the gateway's first
  frame after WELCOME is read (a gateway of link version 4 or later sends VERSION at once;
  an older one its first PING, REQUEST or FETCH_SERVICE_KEY), the outbox events after the
  gateway's sequence (from the oldest kept, when those were deleted: ``outbox_retention``,
  logged; the gateway resynchronises), then new ones live; a scoped gateway is sent its
  view of both (:mod:`kcm.core.gateway_views`: another tenant's events redacted, only the
  subjects it may assert), and a link whose scope a reload changes is closed (GOAWAY), so
  that its gateway links again under the new one;
* REQUEST → :meth:`CoreRequestHandler.handle_as` as the asserted caller, the gateway named in
  the audit record, answered with RESPONSE; a caller the core does not accept (not of its
  trust domain, a gateway, a subject its own map does not name so, or outside the gateway's
  scope, :mod:`kcm.core.gateway_scopes`) is refused, Permission Denied;
* CANCEL (link version 2) → that stream's request stops at its next batch-item boundary, as
  a direct client's does when it disconnects, and is not answered; every request in flight
  on a link that closes stops the same way;
* FETCH_SERVICE_KEY → :func:`kcm.core.service_keys.fetch_service_keys`, answered with
  SERVICE_KEYS (its asserted caller, and the tenant it names, checked as a REQUEST's); one
  carrying the digest of what the gateway holds (link version 8) is judged first in a read
  (:func:`kcm.core.service_keys.unchanged_since`) and answered "unchanged", unaudited, when
  the answer would be exactly that, fetched as any other otherwise; at
  most ``max_fetches_per_tenant`` fetches for one tenant's callers run at once (on every
  link together), the others wait their turn in order, at most ``max_waiting_fetches`` of
  them per link; one more is refused at once (General Failure, the core busy), so that one
  tenant's misses, however many, hold at most that many of the store's workers;
* USAGE_REPORT (link version 3) → the factory's ``on_usage`` (kcm-core: its
  :class:`kcm.core.usage_intake.UsageIntake`, which drops a scoped gateway's counts of
  another tenant's L3s); not answered;
* VERSION (link version 4) → the gateway's own link version, which says whether it takes
  DRAIN; a gateway of link version 7 is answered ORIGIN, the database's deployment id and
  restore generation (:mod:`kcm.core.lineage`), ahead of any event, so that a gateway that
  followed a newer copy of the database refuses this core before it applies anything of
  it; one of version 6 or later VIEW, the digest of its scope; one of version 10 or later
  CRLS, the CRLs of this core's ``tls.crl`` (:meth:`LinkServerFactory.set_crls`: encoded
  once, and sent again to every such link when they change), which the gateway checks its
  own clients against too.

A stopping core (:meth:`LinkServerFactory.drain`) sends DRAIN to every gateway that takes
it: the gateway sends no new request on that link and closes it once its requests are
answered; a HELLO then is answered GOAWAY, so the gateway links to another core.

A gateway that reads slowly never holds up the others: each link registers as the producer of
its transport, queues events while its transport is full and is dropped (it resumes by
sequence when it reconnects) when more than ``max_queued_events`` wait. Answers queue too,
behind the events: an event waits for at most what the transport already holds, never for
the answers that became ready after it. What one link can make the core hold is bounded:
the core reads no more of a link while ``max_requests_in_flight`` of its requests are being
answered or wait to be written, and closes a link whose transport has taken nothing for
``write_timeout`` seconds (a gateway that does not read).

No frame too large for the link ends it. The handler's answers are never longer than the
core's maximum message size, so a RESPONSE always fits the core's frames (derived from the
same limit); should one not, that stream is answered Response Too Large. A REQUEST larger
than the core takes (a gateway configured with a larger maximum message size) is skipped and
answered Invalid Message, as a direct client's would be. A policy too large to travel is
left out of WELCOME and of its event (logged): a gateway keeps the map it has, which the
core checks asserted subjects against anyway.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from kcm.connection_refusals import ConnectionRefusals
from kcm.core.answer_turns import AnswerTurns
from kcm.core.context import Caller
from kcm.core.event_fanout import EncodedEvent, EventFanout
from kcm.core.gateway_scopes import GatewayScope, GatewayScopes
from kcm.core.gateway_views import GatewayViews, view_digest
from kcm.core.keyring import Keyring
from kcm.core.lineage import Lineage
from kcm.core.request_handler import CoreRequestHandler, RequestWatch, share_of
from kcm.core.service_keys import fetch_service_keys, unchanged_since, without_tombstones
from kcm.core.store.engine import Store
from kcm.core.store.unavailable import store_unavailable
from kcm.core.tombstone_pages import (
    TombstonePage,
    VersionDestroyed,
    audit_refused_page,
    tombstone_page,
)
from kcm.core.usage_intake import UsageScope
from kcm.drain import until
from kcm.identity import Principal, Role, SubjectMap, parse_spiffe_id
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip_protocol import Refusal, refusal_answer
from kcm.l4.authorize import ServiceKeyUseDenied
from kcm.l4.service_key import ServiceKey
from kcm.link.framer import OversizedFrame
from kcm.link.frames import (
    CRLS_VERSION,
    DEFAULT_MAX_FRAME_SIZE,
    DRAIN_VERSION,
    HELLO_VERSION,
    LINK_VERSION,
    MAX_CRLS_FRAME_SIZE,
    ORIGIN_VERSION,
    PAGES_VERSION,
    REFRESH_VERSION,
    TOMBSTONES_VERSION,
    VIEW_VERSION,
    Frame,
    FrameTooLarge,
    FrameType,
    decode_frame,
    encode_frame,
)
from kcm.link.keys_digest import Unchanged
from kcm.link.protocol import (
    DEFAULT_HEARTBEAT_INTERVAL,
    MAX_LINK_FETCHES,
    MAX_LINK_PAGES,
    LinkProtocol,
)
from kcm.link.relay import read_caller, response_frame, split_request
from kcm.throttled_line import ThrottledLine

log = Logger()
#: The turn of the answers to refused requests (a caller not accepted, a frame too large):
#: one of their own, beside the tenants'.
_REFUSED = ("refused", "")

#: The callers a link keeps at most (one per gateway client connection; emptied when full).
_MAX_CALLERS = 4096
#: Caller fields longer than this (bytes) are read for each request, not kept: what a link
#: keeps stays within _MAX_CALLERS times this (a SPIFFE ID is at most 2,048 bytes).
_MAX_KEPT_FIELDS = 4096
#: Seconds an answer waits at most for the events committed before it to be sent on its
#: link (:meth:`LinkServerProtocol._answered`); only a fan-out that cannot read the outbox
#: makes one wait this long.
ANSWER_HOLD_LIMIT = 1.0
#: Why a core whose fan-out is stale (it cannot read its outbox) closes its links and
#: refuses new ones: a gateway linked here would miss what other cores change.
STALE_EVENTS = "this core cannot read its event log: link to another"
#: Why a core closes the link of a gateway whose certificate a new CRL lists (tls.crl).
CERTIFICATE_REVOKED = "this gateway's certificate is revoked (tls.crl)"
#: Why a core closes the link of a gateway whose scope a reload of the policy changed: what
#: it was sent (events, policy) was its view under the old scope.
SCOPE_CHANGED = "this gateway's scope changed: link again"


@dataclass(frozen=True, slots=True)
class _Refused:
    """A caller identity a gateway asserted that the core does not accept (kept like the
    accepted ones): what it asserted, in short ASCII, and the caller's source."""

    claimed: str
    source: str


#: What a caller the core does not accept from a gateway is answered (Permission Denied).
_NOT_ACCEPTED = "the asserted caller identity is not accepted"
#: The most characters of a refused caller's asserted identity, subject or source repeated.
_SHOWN_LENGTH = 100


def _short(text: str) -> str:
    """``text`` a gateway sent, for a log or an audit record: short ASCII."""
    head = "".join(c if " " <= c <= "~" else "?" for c in text[:_SHOWN_LENGTH])
    return head + ("..." if len(text) > _SHOWN_LENGTH else "")


def _asserted(identity: str, subject: str | None) -> str:
    """The caller a gateway asserted (its SPIFFE ID, and the subject it relayed)."""
    return _short(identity) + ("" if subject is None else f", subject {_short(subject)}")


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """Per-link limits of the core's link listener."""

    heartbeat_interval: int = int(DEFAULT_HEARTBEAT_INTERVAL)  # seconds (a KMIP Interval)
    #: Frames sent and accepted: frame_size_limit(limits.max_message_size) (kcm.core.tap).
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_queued_events: int = 10_000  # events waiting on a full transport before the drop
    #: FETCH_SERVICE_KEYs of one tenant's callers running at once, on all links together
    #: (each is a write transaction on one of the store's workers).
    max_fetches_per_tenant: int = 2
    #: FETCH_SERVICE_KEYs of one link waiting their turn; beyond, refused at once (a
    #: gateway has at most as many in flight on a link, whatever its ``max_in_flight``,
    #: and is never refused).
    max_waiting_fetches: int = MAX_LINK_FETCHES
    #: Requests of one link being answered, held or waiting to be written; at this many the
    #: core reads no more of the link until one has gone. Twice a gateway's default
    #: ``max_in_flight`` (1,024): a gateway stops reading its clients there, and sends at most
    #: twice it (the requests it had read already), so none is held back by this. At 1,024 a
    #: core stopped reading a gateway's link that had more: another tenant's request, behind
    #: the rest in the connection, then waited for as many of them to be answered.
    max_requests_in_flight: int = 2048
    #: Seconds a link's transport may stay full, taking nothing, before the link is closed.
    write_timeout: float = 30.0


#: Why a core whose event log went back (its database restored under it) closes a link.
EVENTS_WENT_BACK = ("this core's event log went back (its database was restored): link "
                    "again")

#: What a FETCH_SERVICE_KEY beyond ``max_waiting_fetches`` is answered (General Failure).
FETCHES_BUSY = "the core is busy: too many service key fetches wait on this link; try again"
#: What a FETCH_TOMBSTONES beyond :data:`MAX_LINK_PAGES` in flight is answered.
PAGES_BUSY = "the core is busy: too many tombstone pages in flight on this link"


class FetchTurns:
    """The service key fetches of a core's links: at most ``per_tenant`` of one tenant's
    callers run at once; the others wait in that tenant's queue, first come first served.
    A fetch of a link that has closed meanwhile is not run."""

    def __init__(self, per_tenant: int) -> None:
        self.per_tenant = per_tenant
        self._running: dict[str, int] = {}
        self._waiting: dict[str, deque[tuple[LinkServerProtocol, Callable[[], Deferred]]]] = {}
        self._starting: set[str] = set()

    def running(self, tenant: str) -> int:
        return self._running.get(tenant, 0)

    def run(self, tenant: str, link: LinkServerProtocol,
            start: Callable[[], Deferred]) -> None:
        """``start()`` now, or in ``tenant``'s turn (``link.fetches_waiting`` counts it
        meanwhile); ``start`` returns a Deferred that fires when the fetch is over."""
        self._waiting.setdefault(tenant, deque()).append((link, start))
        link.fetches_waiting += 1
        self._next(tenant)

    def forget(self, link: LinkServerProtocol) -> None:
        """Drop the waiting fetches of ``link`` (it closed)."""
        for tenant, queue in list(self._waiting.items()):
            kept = deque(entry for entry in queue if entry[0] is not link)
            if kept:
                self._waiting[tenant] = kept
            else:
                del self._waiting[tenant]
        link.fetches_waiting = 0

    def _next(self, tenant: str) -> None:
        if tenant in self._starting:  # a fetch over at once, inside start(): the loop goes on
            return
        self._starting.add(tenant)
        try:
            while self._running.get(tenant, 0) < self.per_tenant:
                queue = self._waiting.get(tenant)
                if not queue:
                    return
                link, start = queue.popleft()
                if not queue:
                    del self._waiting[tenant]
                link.fetches_waiting -= 1
                if link.closing:
                    continue
                self._running[tenant] = self._running.get(tenant, 0) + 1
                maybeDeferred(start).addBoth(self._over, tenant)
        finally:
            self._starting.discard(tenant)

    def _over(self, result: object, tenant: str) -> object:
        left = self._running[tenant] - 1
        if left:
            self._running[tenant] = left
        else:
            del self._running[tenant]
        self._next(tenant)
        return result


@implementer(IHandshakeListener, IPushProducer)
class LinkServerProtocol(LinkProtocol):
    """One gateway's link, at the core."""

    def __init__(self, factory: LinkServerFactory) -> None:
        settings = factory.settings
        super().__init__(factory.clock, heartbeat_interval=settings.heartbeat_interval,
                         max_frame_size=settings.max_frame_size)
        self.factory = factory
        self.gateway: Principal | None = None
        #: The gateway's scope, as of its HELLO (None: unscoped): what it is sent is its view
        #: (:mod:`kcm.core.gateway_views`); a reload that changes it closes the link.
        self.scope: GatewayScope | None = None
        self.sent_seq = -1  # the newest event written or queued for this gateway
        self.live = False
        self._hello = False
        #: From WELCOME until the gateway's first frame after it: no event is sent (the
        #: answer to a VERSION, ORIGIN, goes ahead of them). ``_first_frame_due``: that
        #: frame is not read yet.
        self._stream_held = False
        self._first_frame_due = False
        self.pinging = False  # (from WELCOME on: a PONG read then answers a later PING)
        self._peer_name: str | None = None
        self._replaying = False
        #: The event a resuming gateway asked to resume after, until its first replay is
        #: read (which says whether the events after it are still kept: outbox_retention).
        self._resumed_after: int | None = None
        self._paused = False
        #: Frames waiting for the transport in their order: events, and the SERVICE_KEYS
        #: answers handed over between them (an event never overtakes a key answer: a
        #: fetch answered before a revocation must not be applied after it). (wire, event?)
        self._queued: deque[tuple[bytes, bool]] = deque()
        self._queued_events = 0
        #: RESPONSE frames waiting for the transport, written after the queued events (a
        #: RESPONSE is held until the events committed before it have gone anyway), in
        #: turns by the callers' tenants.
        self._answers = AnswerTurns()
        #: The write timeout's call while the transport is full (None: it is not), and what
        #: the transport held unsent when it was set.
        self._stall_timer: Any = None
        self._stall_mark: int | None = None
        #: Whether the core stopped reading the link (too many requests in flight).
        self.reading_paused = False
        #: The forwarded requests being answered, by stream (a CANCEL stops one).
        self._requests: dict[int, RequestWatch] = {}
        #: The requests the gateway cancelled that have not ended yet (queued for their
        #: tenant's turn, or stopping at their next item), by their watch's identity: they
        #: still count in flight, so that a gateway whose clients send requests and leave
        #: cannot make the core hold more than its bound of them.
        self._cancelled: dict[int, RequestWatch] = {}
        #: Answers waiting for the events committed before them, oldest first:
        #: (sequence, stream, wire, when held).
        self._held: list[tuple[int, int, bytes, float, Hashable]] = []
        self._hold_timer: Any = None
        #: What the caller fields of a REQUEST name (a Caller, or _Refused), by their
        #: bytes: a gateway sends the same with every request of a connection. Made under
        #: the factory's ``policy_generation``; a new policy empties it.
        self._callers: dict[bytes, Caller | _Refused] = {}
        self._callers_generation = factory.policy_generation
        #: The link version the gateway named in VERSION (1: it sent none).
        self.gateway_version = HELLO_VERSION
        self._version_seen = False
        #: Whether this link was sent DRAIN (the gateway closes it once answered).
        self.drain_sent = False
        #: FETCH_SERVICE_KEYs of this link waiting their turn (:class:`FetchTurns`).
        self.fetches_waiting = 0
        self._fetches_refused = 0
        #: FETCH_TOMBSTONES of this link being answered (or waiting their turn).
        self.pages_in_flight = 0

    @property
    def requests_in_flight(self) -> int:
        """Forwarded requests of this link being answered now."""
        return len(self._requests) + len(self._held)

    def _in_flight_changed(self) -> None:
        """Read the link, or stop reading it, by what it has in flight: its requests being
        answered or held, and its answers waiting for the transport."""
        busy = (len(self._requests) + len(self._held) + len(self._answers)
                + len(self._cancelled)
                >= self.factory.settings.max_requests_in_flight)
        if busy == self.reading_paused or self.closing or self.transport is None:
            return
        self.reading_paused = busy
        if busy:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    # Identity -------------------------------------------------------------------------------
    @property
    def identified(self) -> bool:
        """Whether a gateway is on the other end (what the handshake deadline waits for)."""
        return self.gateway is not None

    def handshakeCompleted(self) -> None:
        principal = self.factory.resolve_peer(self.transport)
        if principal is None or principal.role is not Role.GATEWAY:
            # At most one line per interval (a refused peer may reconnect in a loop), its
            # identity cut as at the KMIP port.
            who = ("no acceptable identity" if principal is None else principal.id.encode(
                "ascii", "backslashreplace").decode("ascii")[:_SHOWN_ID])
            self.factory.refused_links.note(peer=self.peer, who=who)
            self.factory.refusals.refused("identity")
            self.close(abort=True)
            return
        self.gateway = principal
        self.transport.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        if self.gateway is None:  # frames only ever follow a verified gateway handshake
            self.close(abort=True)
            return
        super().dataReceived(data)

    def link_lost(self, reason: Failure) -> None:
        self.factory.fanout.unsubscribe(self)
        self.factory.links.discard(self)
        self._queued.clear()
        self._queued_events = 0
        self._answers.clear()
        self._held.clear()
        self._stop_stall_timer()
        self._stop_holding()
        self.factory.fetches.forget(self)
        # Nobody is left to read the answers of the requests in flight.
        requests, self._requests = self._requests, {}
        self._cancelled.clear()
        for watch in requests.values():
            self.factory.handler.cancel(watch)

    # HELLO ----------------------------------------------------------------------------------
    def frame_HELLO(self, frame: Frame) -> None:
        if self._hello:
            self.go_away("a second HELLO")
            return
        if self.factory.draining:
            self.go_away("this core is stopping: link to another")
            return
        if self.factory.fanout.stale:
            # Each of its gateways' workers tries again every second or so for as long as
            # the database is out of reach: one line an interval, not one an attempt.
            self.factory.stale_refusals.note(peer=self.peer)
            self.send(Frame(FrameType.GOAWAY, error=STALE_EVENTS))
            self.close()
            return
        # A gateway names the oldest version (HELLO_VERSION) so that cores of every release
        # take it; WELCOME tells it this core's, and so which frames it may send.
        if not HELLO_VERSION <= (frame.link_version or 0) <= LINK_VERSION:
            self.go_away(f"link version {frame.link_version} is not supported "
                         f"(this core speaks {HELLO_VERSION} to {LINK_VERSION})")
            return
        self._hello = True
        self._peer_name = frame.peer_name
        self.scope = self.factory.scope_of(self.gateway)
        self.factory.links.add(self)
        asked = frame.sequence if frame.sequence is not None else -1
        fanout = self.factory.fanout
        if asked >= fanout.head:
            # A gateway that was linked to another core on the same database may have
            # applied events this core's fan-out has not read yet: read the outbox before
            # taking it for a gateway ahead of the database.
            fanout.poll().addBoth(lambda _: self._welcome(asked))
        else:
            self._welcome(asked)

    def _welcome(self, asked: int) -> None:
        if self.closing:
            return
        if self.factory.draining:
            self.go_away("this core is stopping: link to another")
            return
        head = self.factory.fanout.head
        # A gateway ahead of the outbox (a restored database) starts over from the head; it
        # learns so from WELCOME's sequence being below its own. One that starts from the
        # head is sent the head event too: not applied, its digest is what the gateway
        # compares when it resumes, so a restore is noticed before it applies any event.
        self.sent_seq = max(head - 1, 0) if asked < 0 or asked > head else asked
        self._resumed_after = asked if 0 <= asked <= head else None
        log.info("gateway {gateway} linked from {peer} ({name}), events after {seq}",
                 gateway=self.gateway.id, peer=self.peer, name=self._peer_name,
                 seq=self.sent_seq)
        # (With no scopes at all, the core warned once as it started: every gateway is.)
        scopes = self.factory.gateway_scopes
        if len(scopes) and scopes.scope_of(self.gateway) is None:
            log.warn("gateway {gateway} is unscoped: it may assert any tenant's callers; give "
                     'it a [gateways."{path}"] entry in the policy file',
                     gateway=self.gateway.id, path=self.gateway.path)
        welcome = Frame(FrameType.WELCOME, link_version=LINK_VERSION,
                        peer_name=self.factory.server_name, sequence=head,
                        heartbeat_interval=self.factory.settings.heartbeat_interval,
                        policy=self.factory.views.document(self.factory.policy_document,
                                                           self.scope))
        try:
            self.send(welcome)
        except FrameTooLarge as e:
            log.error("the policy document does not fit in a link frame ({error}); gateway "
                      "{gateway} keeps the map it has: raise limits.max_message_size",
                      error=str(e), gateway=self.gateway.id)
            welcome.policy = None
            self.send(welcome)
        # The events wait for the gateway's next frame: from a gateway of link version 7,
        # VERSION, answered ORIGIN, which must reach it first (a gateway sends nothing but
        # HELLO, and PONGs to PINGs, before WELCOME, and the core PINGs from WELCOME on).
        self.pinging = True
        self._stream_held = self._first_frame_due = True

    @property
    def delivered_seq(self) -> int:
        """The newest event handed to the transport for this gateway (queued ones are not)."""
        return self.sent_seq - self._queued_events

    def _require_hello(self, frame: Frame) -> bool:
        if not self._hello:
            self.go_away(f"{frame.type.name} before HELLO")
        return self._hello

    # Events ---------------------------------------------------------------------------------
    def _catch_up(self) -> None:
        if self._replaying or self.live or self.closing or self._paused or self._stream_held:
            return
        self._replaying = True
        fanout = self.factory.fanout
        d = fanout.replay(self.sent_seq)
        d.addCallbacks(self._replayed, self._replay_failed)

    def _replayed(self, events: list[EncodedEvent]) -> None:
        self._replaying = False
        if self.closing:
            return
        if self._resumed_after is not None:
            if events and events[0][0] > self._resumed_after + 1:
                log.info("gateway {gateway} resumes after event {asked}, but the outbox keeps "
                         "events from {oldest} only (outbox_retention): it resynchronises",
                         gateway=self.gateway.id, asked=self._resumed_after,
                         oldest=events[0][0])
            self._resumed_after = None
        self._write_events(events)
        fanout = self.factory.fanout
        # Go live only once nothing the fan-out has published is missing here; the check and
        # the subscription happen in one reactor turn, so no event falls in between.
        if len(events) < fanout.batch_size and self.sent_seq >= fanout.head:
            self.live = True
            fanout.subscribe(self)
        else:
            self._catch_up()

    def _replay_failed(self, failure: Failure) -> None:
        self._replaying = False
        # The database gone or read-only (a failover) recurs for each gateway relinking
        # until it is back: one line of why, not a critical traceback each time.
        unavailable = store_unavailable(failure.value)
        if unavailable is None:
            log.failure("replaying events for {peer} failed", failure, peer=self.peer)
        else:
            log.error("replaying events for {peer} failed: the key store is unavailable "
                      "({why})", peer=self.peer, why=unavailable)
        self.go_away("the core could not read its event log; reconnect")

    def deliver(self, events: list[EncodedEvent]) -> None:
        """New events from the fan-out (in order)."""
        if not self.closing:
            self._write_events(events)

    def _write_events(self, events: list[EncodedEvent]) -> None:
        scope, views = self.scope, self.factory.views
        for event in events:
            seq = event[0]
            if seq <= self.sent_seq:
                continue
            self.sent_seq = seq
            # An unscoped gateway is sent the frame encoded once for all; a scoped one its
            # view of it (the same frame, a redacted one, or its policy document).
            wire = event[1] if scope is None else views.event(event, scope)
            if len(wire) > self.max_frame_size:
                wire = self._without_payload(seq, wire)
            if self._paused:
                self._queued.append((wire, True))
                self._queued_events += 1
            else:
                self.send_wire(wire)
        if self._held:
            self._release_held()
        if self._queued_events > self.factory.settings.max_queued_events:
            self.go_away(f"too far behind the event stream; reconnect and resume after "
                         f"sequence {self.delivered_seq}", abort=True)

    def _without_payload(self, seq: int, wire: bytes) -> bytes:
        """An event too large for the link (a huge policy), sent without its payload: the
        sequence stays gapless and the gateway keeps what it has."""
        frame = decode_frame(wire, max_size=len(wire))
        log.error("event {seq} ({kind}) of {size} bytes does not fit in a link frame of at "
                  "most {limit}: sent without its payload; raise limits.max_message_size",
                  seq=seq, kind=frame.kind, size=len(wire), limit=self.max_frame_size)
        frame.payload = {}
        return encode_frame(frame)

    # IPushProducer: the transport tells us when its buffer is full -------------------------
    def pauseProducing(self) -> None:
        self._paused = True
        if self._stall_timer is None and not self.closing:
            self._arm_stall_timer()

    def _arm_stall_timer(self) -> None:
        self._stall_mark = self._unsent_bytes()
        self._stall_timer = self.clock.callLater(self.factory.settings.write_timeout,
                                                 self._stalled)

    def _unsent_bytes(self) -> int | None:
        """What the TCP transport under the link's TLS holds unsent (None: not known)."""
        lower = getattr(self.transport, "transport", None)
        try:
            return (len(lower.dataBuffer) - lower.offset  # type: ignore[union-attr]
                    + lower._tempDataLen)  # type: ignore[union-attr]
        except (AttributeError, TypeError):
            return None

    def resumeProducing(self) -> None:
        self._paused = False
        self._stop_stall_timer()
        # Events first: they overtake the answers not yet written (docs/link-protocol.md §3).
        while self._queued and not self._paused and not self.closing:
            wire, event = self._queued.popleft()
            self._queued_events -= event
            self.send_wire(wire)
        answers = self._answers
        while answers and not self._paused and not self.closing:
            self.send_wire(answers.popleft())
        if self._held and not self._paused:
            self._release_held()
        if not self._paused and self._hello and not self.live:
            self._catch_up()
        self._in_flight_changed()

    def stopProducing(self) -> None:
        self._queued.clear()
        self._queued_events = 0
        self._answers.clear()

    def _stalled(self) -> None:
        """The transport has stayed full for ``write_timeout``: if it took nothing
        meanwhile, the gateway does not read, and whatever waits for it is dropped with the
        link; if it took some (a gateway reading slowly, a large answer on a slow link), the
        wait starts again."""
        self._stall_timer = None
        if self.closing:
            return
        unsent, mark = self._unsent_bytes(), self._stall_mark
        if unsent is not None and mark is not None and unsent < mark:
            self._arm_stall_timer()
            return
        log.warn("gateway {gateway} read nothing of its link for {timeout} s: closing it",
                 gateway=self.gateway.id if self.gateway else "?",
                 timeout=self.factory.settings.write_timeout)
        self.close(abort=True)

    def _stop_stall_timer(self) -> None:
        if self._stall_timer is not None:
            if self._stall_timer.active():
                self._stall_timer.cancel()
            self._stall_timer = None

    def _send_answer(self, wire: bytes, share: Hashable) -> None:
        """Write a RESPONSE frame, or queue it behind the events while the transport is
        full, in the turn of ``share`` (the caller's tenant: :class:`AnswerTurns`)."""
        if self.closing:
            return
        if self._paused or self._answers:
            self._answers.append(share, wire)
            self._in_flight_changed()
        else:
            self.send_wire(wire)

    def _send_keys(self, wire: bytes) -> None:
        """Write a SERVICE_KEYS frame, or queue it among the events while the transport is
        full, in the order it was handed over: the events committed after the fetch's read
        follow it (``Store.run_answer``)."""
        if self.closing:
            return
        if self._paused or self._queued:
            self._queued.append((wire, False))
        else:
            self.send_wire(wire)

    # REQUEST --------------------------------------------------------------------------------
    def frame_received(self, wire: bytes) -> None:
        """A REQUEST is read straight from its bytes (:func:`kcm.link.relay.split_request`),
        its KMIP message handed on as it came, its caller fields read once per connection
        of the gateway's; any other frame is decoded. The first frame after WELCOME starts
        the event stream, once it is read."""
        if self._first_frame_due:
            self._first_frame_due = False
            self.frame_received(wire)
            self._stream_held = False
            self._catch_up()
            return
        split = split_request(wire)
        if split is None:
            super().frame_received(wire)
            return
        stream_id, fields, message = split
        factory = self.factory
        if self._callers_generation != factory.policy_generation:
            self._callers.clear()
            self._callers_generation = factory.policy_generation
        caller = self._callers.get(fields)
        if caller is None:
            read = read_caller(fields)
            if read is None:  # not well formed: the general decoder says what is wrong
                super().frame_received(wire)
                return
            if not self._hello:
                self.go_away("REQUEST before HELLO")
                return
            caller = self._caller(*read)
            if len(fields) <= _MAX_KEPT_FIELDS:  # (kept only once HELLO came)
                if len(self._callers) >= _MAX_CALLERS:
                    self._callers.clear()
                self._callers[fields] = caller
        self._serve(stream_id, caller, message)

    def frame_REQUEST(self, frame: Frame) -> None:
        if self._require_hello(frame):
            self._serve(frame.stream_id, self._caller(frame.caller_identity or "",
                                                      frame.caller_subject,
                                                      frame.caller_source or ""),
                        frame.message or b"")

    def _caller(self, identity: str, subject: str | None, source: str) -> Caller | _Refused:
        """The Caller a gateway asserts, or why the core does not accept it."""
        principal = self.factory.asserted_principal(identity, subject, self.gateway)
        if principal is None:
            return _Refused(_asserted(identity, subject), _short(source))
        return Caller(principal, source, gateway=self.gateway)

    def _serve(self, stream_id: int, caller: Caller | _Refused, message: bytes) -> None:
        handler = self.factory.handler
        if isinstance(caller, _Refused):
            self._refuse_caller(stream_id, caller)
            return
        watch = handler.new_watch()
        self._requests[stream_id] = watch
        self._in_flight_changed()
        d = handler.handle_as(message, caller, watch)
        d.addErrback(self._request_failed, handler)
        d.addCallback(self._answered, stream_id, watch, share_of(caller))

    def _refuse_caller(self, stream_id: int, caller: _Refused) -> None:
        """Refuse a request whose asserted caller the core does not accept, as the KMIP
        listener refuses a certificate that names nobody (:func:`refusal_answer`: the
        handler may record it first)."""
        self.factory.unacceptable_callers.note(gateway=self.gateway.id, caller=caller.claimed)
        answer = refusal_answer(self.factory.handler, Refusal(
            ResultReason.PERMISSION_DENIED, _NOT_ACCEPTED,
            caller.source, None, caller.claimed, gateway=self.gateway))
        if isinstance(answer, Deferred):  # (dropped if the link closes meanwhile)
            answer.addCallback(lambda wire: self._respond(stream_id, wire, _REFUSED))
        else:
            self._respond(stream_id, answer, _REFUSED)

    def _answered(self, wire: bytes, stream_id: int, watch: RequestWatch,
                  share: Hashable) -> None:
        if self._cancelled.pop(id(watch), None) is not None:
            self._in_flight_changed()
            return  # cancelled: the gateway no longer awaits this stream
        if self._requests.get(stream_id) is not watch:
            return  # (the link was lost meanwhile)
        del self._requests[stream_id]
        # What this request changed reaches the gateway before its answer does: a gateway
        # that relays a Revoke's Success has applied the revocation (docs/link-protocol.md
        # §3). The events committed so far are awaited, this request's among them.
        committed = self.factory.fanout.committed()
        if self._has_events_through(committed):
            self._respond(stream_id, wire, share)
        else:
            self._hold(committed, stream_id, wire, share)
        self._in_flight_changed()

    def _has_events_through(self, committed: int) -> bool:
        """Whether every event this process committed up to ``committed`` has been handed
        to this link's transport (or never existed: a savepoint rolled it back)."""
        delivered = self.delivered_seq
        if delivered >= committed:
            return True
        fanout = self.factory.fanout
        return fanout.settled >= committed and delivered >= fanout.head

    def _hold(self, committed: int, stream_id: int, wire: bytes, share: Hashable) -> None:
        self._held.append((committed, stream_id, wire, self.clock.seconds(), share))
        self.factory.fanout.on_settled.add(self._release_held)
        if self._hold_timer is None:
            self._hold_timer = self.clock.callLater(ANSWER_HOLD_LIMIT, self._held_too_long)

    def _release_held(self) -> None:
        """Send the held answers whose events have gone out."""
        if self._paused or self.closing:
            return
        waiting = []
        for held in self._held:
            if self._has_events_through(held[0]):
                self._respond(held[1], held[2], held[4])
            else:
                waiting.append(held)
        self._held = waiting
        if not waiting:
            self._stop_holding()
        self._in_flight_changed()

    def _held_too_long(self) -> None:
        """Answers held ANSWER_HOLD_LIMIT (the fan-out has not read the outbox meanwhile)
        go without their events, which follow when it reads again (gateways learn of them
        late, as of changes made at another core); the others wait on, the timer set for
        the oldest of them. A link whose gateway is not reading keeps them all behind its
        queued events."""
        self._hold_timer = None
        now = self.clock.seconds()
        if not self._paused and not self._queued:
            overdue = [held for held in self._held if now - held[3] >= ANSWER_HOLD_LIMIT]
            if overdue:
                log.warn("{count} answers to gateway {gateway} sent before their events: "
                         "the event fan-out has not read the outbox for {limit} s",
                         count=len(overdue), limit=ANSWER_HOLD_LIMIT,
                         gateway=self.gateway.id if self.gateway else "?")
                self._held = [held for held in self._held if now - held[3] < ANSWER_HOLD_LIMIT]
                for held in overdue:
                    self._respond(held[1], held[2], held[4])
        if not self._held:
            self.factory.fanout.on_settled.discard(self._release_held)
            return
        wait = ANSWER_HOLD_LIMIT if self._paused or self._queued else max(
            0.0, self._held[0][3] + ANSWER_HOLD_LIMIT - now)
        self._hold_timer = self.clock.callLater(wait, self._held_too_long)

    def _stop_holding(self) -> None:
        if self._hold_timer is None:  # (set while anything is held)
            return
        self.factory.fanout.on_settled.discard(self._release_held)
        if self._hold_timer.active():
            self._hold_timer.cancel()
        self._hold_timer = None

    def frame_CANCEL(self, frame: Frame) -> None:
        """The gateway's client left: the request on that stream stops at its next batch-item
        boundary (its remaining items are audited as cancelled) and is not answered. A
        stream already answered, or unknown, is ignored: the answer crossed the CANCEL."""
        if not self._require_hello(frame):
            return
        watch = self._requests.pop(frame.stream_id, None)
        if watch is not None:
            self._cancelled[id(watch)] = watch
            self.factory.handler.cancel(watch)
            self._in_flight_changed()

    def frame_oversized(self, frame: OversizedFrame) -> None:
        """A REQUEST too large for the core's frames is that request's Invalid Message, as
        from a direct client; any other oversized frame ends the link."""
        if frame.frame_type is not FrameType.REQUEST or not frame.stream_id or not self._hello:
            super().frame_oversized(frame)
            return
        log.warn("gateway {gateway} sent a request of {size} bytes; frames of at most {limit} "
                 "are taken", gateway=self.gateway.id, size=frame.size,
                 limit=self.max_frame_size)
        self._respond(frame.stream_id, self.factory.handler.failure_response(
            ResultReason.INVALID_MESSAGE,
            f"request too large: its link frame of {frame.size} bytes exceeds the core's "
            f"maximum of {self.max_frame_size}"), _REFUSED)

    def _respond(self, stream_id: int, wire: bytes, share: Hashable) -> None:
        frame = response_frame(stream_id, wire)  # the answer spliced in as it is
        if len(frame) > self.max_frame_size:
            # The handler never answers beyond the maximum message size, which the frame
            # size allows for; an answer that got here anyway fails its stream, not the link.
            log.error("an answer to gateway {gateway} does not fit in a link frame: "
                      "{size} bytes, at most {limit}", gateway=self.gateway.id,
                      size=len(frame), limit=self.max_frame_size)
            frame = encode_frame(Frame(FrameType.RESPONSE, stream_id=stream_id,
                                       message=self.factory.handler.failure_response(
                                           ResultReason.RESPONSE_TOO_LARGE,
                                           f"the response of {len(wire)} bytes does not fit "
                                           f"in a link frame")))
        self._send_answer(frame, share)

    def _request_failed(self, failure: Failure, handler: CoreRequestHandler) -> bytes:
        log.failure("forwarded request from {peer} failed", failure, peer=self.peer)
        return handler.failure_response(ResultReason.GENERAL_FAILURE,
                                        "internal error; see the core's log")

    # FETCH_SERVICE_KEY ----------------------------------------------------------------------
    def frame_FETCH_SERVICE_KEY(self, frame: Frame) -> None:
        if not self._require_hello(frame):
            return
        stream_id = frame.stream_id
        factory = self.factory
        principal = factory.asserted_principal(frame.caller_identity, frame.caller_subject,
                                               self.gateway)
        if principal is None or (frame.unique_identifier is None
                                 and not factory.may_act_for(self.gateway, frame.tenant)):
            claimed = _asserted(frame.caller_identity or "", frame.caller_subject) + (
                "" if principal is None else f", for tenant {_short(frame.tenant or '')}")
            self._refuse_fetch(stream_id, claimed)
            return
        caller = Caller(principal, self.peer, gateway=self.gateway)
        fetches = self.factory.fetches
        tenant = principal.tenant if principal.tenant is not None else principal.id
        if (self.fetches_waiting >= self.factory.settings.max_waiting_fetches
                and fetches.running(tenant) >= fetches.per_tenant):
            self._fetch_refused_busy(stream_id)
            return
        # A digest of what the gateway holds (link version 8) is taken only from a gateway
        # that named 8 or later: only such a one is answered "unchanged".
        held = frame.keys_digest if self.gateway_version >= REFRESH_VERSION else None
        fetches.run(tenant, self, lambda: self._fetch(stream_id, caller, frame.tenant,
                                                       frame.service, frame.unique_identifier,
                                                       held))

    def _refuse_fetch(self, stream_id: int, claimed: str) -> None:
        """Refuse a fetch whose asserted caller (or tenant) the core does not accept from
        this gateway, as a REQUEST's (:meth:`_refuse_caller`): logged, and audited with the
        gateway named; the refusal's KMIP answer is not sent (SERVICE_KEYS says it)."""
        self.factory.unacceptable_callers.note(gateway=self.gateway.id, caller=claimed)
        refusal_answer(self.factory.handler, Refusal(
            ResultReason.PERMISSION_DENIED, _NOT_ACCEPTED, self.peer, None, claimed,
            gateway=self.gateway))
        self._keys_refused(stream_id, KmipError(ResultReason.PERMISSION_DENIED, _NOT_ACCEPTED))

    def _fetch(self, stream_id: int, caller: Caller, tenant: str, service: str,
               uid: str | None, held: bytes | None = None) -> Deferred:
        """Run one FETCH_SERVICE_KEY (its turn came) and answer it; fires once answered.
        ``held``: the digest of what the gateway holds (a conditional fetch, link version
        8), answered "unchanged" when the answer would be exactly that."""
        now = int(self.factory.wall_clock())
        d = (self.factory.fetch_keys(caller, tenant, service, uid, now) if held is None
             else self.factory.refresh_keys(caller, tenant, service, uid, held, now))
        if self.gateway_version < TOMBSTONES_VERSION:  # (it named its version before this)
            d.addCallback(without_tombstones)
        # (The answer is sent in the same reactor call the store hands it over in:
        # Store.run_answer's ordering against the events holds up to the transport.)
        return d.addCallbacks(lambda answer: self._keys_answered(stream_id, answer),
                              lambda failure: self._keys_failed(stream_id, failure))

    # FETCH_TOMBSTONES (link version 9) -----------------------------------------------------
    def frame_FETCH_TOMBSTONES(self, frame: Frame) -> None:
        """A page of a version's tombstones, for a gateway that took the version without
        them: its caller and the version authorized exactly as a fetch of that version by
        uid; a refusal answered (and audited) as that fetch's would be."""
        if not self._require_hello(frame):
            return
        if self.gateway_version < PAGES_VERSION:
            self.go_away(f"FETCH_TOMBSTONES from a gateway of link version "
                         f"{self.gateway_version}")
            return
        stream_id, uid = frame.stream_id, frame.unique_identifier or ""
        factory = self.factory
        principal = factory.asserted_principal(frame.caller_identity, frame.caller_subject,
                                               self.gateway)
        if principal is None:
            claimed = _asserted(frame.caller_identity or "", frame.caller_subject)
            factory.unacceptable_callers.note(gateway=self.gateway.id, caller=claimed)
            refusal_answer(factory.handler, Refusal(
                ResultReason.PERMISSION_DENIED, _NOT_ACCEPTED, self.peer, None, claimed,
                gateway=self.gateway))
            self._page_refused(stream_id, KmipError(ResultReason.PERMISSION_DENIED,
                                                    _NOT_ACCEPTED))
            return
        if self.pages_in_flight >= MAX_LINK_PAGES:
            self._page_refused(stream_id, KmipError(ResultReason.GENERAL_FAILURE, PAGES_BUSY))
            return
        caller = Caller(principal, self.peer, gateway=self.gateway)
        tenant = principal.tenant if principal.tenant is not None else principal.id
        self.pages_in_flight += 1

        def over(result: object) -> object:
            self.pages_in_flight -= 1
            return result

        factory.fetches.run(tenant, self, lambda: factory.fetch_page(
            caller, uid, frame.after, int(factory.wall_clock())).addCallbacks(
                lambda page: self._page_answered(stream_id, page),
                lambda failure: self._page_failed(stream_id, failure)).addBoth(over))

    def _page_answered(self, stream_id: int, page: TombstonePage | KmipError) -> None:
        if isinstance(page, KmipError):
            self._page_refused(stream_id, page)
            return
        self._send_keys(encode_frame(Frame(FrameType.TOMBSTONES, stream_id=stream_id,
                                           token_ids=page.token_ids, more=page.more)))

    def _page_refused(self, stream_id: int, error: KmipError) -> None:
        self._send_keys(encode_frame(Frame(FrameType.TOMBSTONES, stream_id=stream_id,
                                           error=error.message,
                                           result_reason=int(error.reason))))

    def _page_failed(self, stream_id: int, failure: Failure) -> None:
        log.failure("tombstone page for {peer} failed", failure, peer=self.peer)
        self._page_refused(stream_id, KmipError(ResultReason.GENERAL_FAILURE,
                                                "internal error; see the core's log"))

    def _fetch_refused_busy(self, stream_id: int) -> None:
        self._fetches_refused += 1
        if self._fetches_refused == 1 or self._fetches_refused % 1000 == 0:
            log.warn("gateway {gateway}: {count} service key fetches refused: more than {limit} "
                     "waited on its link", gateway=self.gateway.id,
                     count=self._fetches_refused,
                     limit=self.factory.settings.max_waiting_fetches)
        self._keys_refused(stream_id, KmipError(ResultReason.GENERAL_FAILURE, FETCHES_BUSY))

    def _keys_answered(self, stream_id: int,
                       answer: list[ServiceKey] | KmipError | Unchanged) -> None:
        if isinstance(answer, KmipError):
            self._keys_refused(stream_id, answer)
            return
        if isinstance(answer, Unchanged):
            self._send_keys(encode_frame(Frame(FrameType.SERVICE_KEYS, stream_id=stream_id,
                                               keys_digest=answer.digest)))
            return
        wire = encode_frame(Frame(FrameType.SERVICE_KEYS, stream_id=stream_id,
                                  service_keys=answer))
        if len(wire) > self.max_frame_size:
            log.error("service keys for gateway {gateway} do not fit in a link frame: "
                      "{size} bytes, at most {limit}", gateway=self.gateway.id,
                      size=len(wire), limit=self.max_frame_size)
            self._keys_refused(stream_id, KmipError(
                ResultReason.GENERAL_FAILURE, "too many key versions to send over the link"))
            return
        self._send_keys(wire)

    def _keys_refused(self, stream_id: int, error: KmipError) -> None:
        # A refusal of who asks names the key's tenant and service, for the gateway's log
        # (docs/link-protocol.md §2); the client is answered with the reason and message.
        # Not to a gateway scoped away from that tenant: a key of another tenant is refused
        # as a missing one, and its names are no more sent than its events are.
        denied = error if isinstance(error, ServiceKeyUseDenied) else None
        if denied is not None and self.scope is not None \
                and not self.scope.allows_tenant(denied.tenant):
            denied = None
        self._send_keys(encode_frame(Frame(
            FrameType.SERVICE_KEYS, stream_id=stream_id, error=error.message,
            result_reason=int(error.reason),
            tenant=denied.tenant if denied is not None else None,
            service=denied.service if denied is not None else None)))

    def _keys_failed(self, stream_id: int, failure: Failure) -> None:
        log.failure("service key fetch from {peer} failed", failure, peer=self.peer)
        self._keys_refused(stream_id, KmipError(ResultReason.GENERAL_FAILURE,
                                                "internal error; see the core's log"))

    # USAGE_REPORT ---------------------------------------------------------------------------
    def frame_USAGE_REPORT(self, frame: Frame) -> None:
        """How many encryptions the gateway made under each L3 version since its last
        report; added up with every other gateway's (no answer)."""
        if not self._require_hello(frame):
            return
        on_usage = self.factory.on_usage
        if on_usage is not None:
            counts: dict[str, int] = {}
            for uid, count in frame.usage:
                counts[uid] = counts.get(uid, 0) + count
            on_usage(counts, self.factory.usage_scope(self.gateway))

    # VERSION and DRAIN ----------------------------------------------------------------------
    def frame_VERSION(self, frame: Frame) -> None:
        """The gateway's own link version (sent once, after a WELCOME of version 4 or
        later): which frames it takes."""
        if not self._require_hello(frame):
            return
        if self._version_seen:
            self.go_away("a second VERSION")
            return
        self._version_seen = True
        self.gateway_version = max(HELLO_VERSION, frame.link_version or HELLO_VERSION)
        if self.gateway_version >= ORIGIN_VERSION:
            lineage = self.factory.lineage()
            if lineage is None:
                self.go_away("this core has not read its database yet: link to another")
                return
            self.send(Frame(FrameType.ORIGIN, deployment=lineage.deployment,
                            restore_generation=lineage.generation))
        if self.gateway_version >= VIEW_VERSION:
            self.send(Frame(FrameType.VIEW, view=view_digest(self.scope)))
        self.send_crls()
        if self.factory.draining:  # it crossed the DRAIN this link was not sent yet
            self.drain()

    def send_crls(self) -> None:
        """The core's CRLs (CRLS, encoded once: :meth:`LinkServerFactory.set_crls`), to a
        gateway that named link version 10 or later; nothing without them. (Over this
        end's frame limit: CRLS has its own, :data:`MAX_CRLS_FRAME_SIZE`.)"""
        wire = self.factory.crls_wire
        if wire is not None and self.gateway_version >= CRLS_VERSION and not self.closing:
            self.transport.write(wire)

    def drain(self) -> None:
        """Ask the gateway to send no new request here (DRAIN), if it takes DRAIN."""
        if self.gateway_version >= DRAIN_VERSION and not self.drain_sent and not self.closing:
            self.drain_sent = True
            self.send(Frame(FrameType.DRAIN, error="the core is stopping"))

    @property
    def drained(self) -> bool:
        """Whether nothing is left to answer here: a link sent DRAIN is drained once the
        gateway closed it; another once no request of it is in flight."""
        return self.closing or (not self.drain_sent and not self._requests
                                and not self._held)

    def certificate_revoked(self) -> None:
        """The gateway's certificate (or a CA's of its chain) is revoked (tls.crl, read
        again: :class:`kcm.tls_crl.RevocationWatch`): GOAWAY, then the connection aborted at
        once; nothing more is read or answered (a request already being carried out may
        still end in the store; its answer is not sent)."""
        if self.closing:
            self.transport.abortConnection()
            return
        self.go_away(CERTIFICATE_REVOKED, abort=True)

    def go_away(self, reason: str, *, abort: bool = False) -> None:
        """Send GOAWAY, then close (``abort``: without waiting for the peer to read)."""
        if self.closing:
            return
        super().go_away(reason)
        if abort:
            self.transport.abortConnection()


def _describe(scope: GatewayScope | None) -> str:
    return "unscoped" if scope is None else scope.describe()


_REFUSED_LINK = ("refused link from {peer}: {who} is not a gateway; {count} such link(s) "
                 "refused in the last {interval} s")
#: How much of a refused peer's identity a log line shows.
_SHOWN_ID = 100
#: Seconds between two lines of links refused while this core cannot read its event log.
STALE_REFUSALS_LOG_INTERVAL = 30.0
_STALE_REFUSALS = ("refused {count} gateway link(s) in the last {interval} s, the last from "
                   "{peer}: " + STALE_EVENTS)

_UNACCEPTABLE_CALLER = ("gateway {gateway} asserted an unacceptable caller ({caller}); "
                        "{count} such request(s) refused in the last {interval} s")


class LinkServerFactory(Factory):
    """The core's link listener: shares the handler, store, keyring and event fan-out."""

    protocol = LinkServerProtocol

    def __init__(self, *, handler: CoreRequestHandler, store: Store, keyring: Keyring,
                 fanout: EventFanout, resolve_peer: Callable[[Any], Principal | None],
                 trust_domain: str, subject_map: SubjectMap | None, clock: IReactorTime,
                 settings: LinkSettings | None = None, server_name: str = "kcm-core",
                 wall_clock: Callable[[], float] | None = None,
                 refusals: ConnectionRefusals | None = None,
                 lineage: Callable[[], Lineage | None] | None = None) -> None:
        """``clock``: the reactor the links' heartbeats, held answers and drains are timed
        on; ``wall_clock``: the time of a service key fetch (a date; ``clock.seconds`` when
        not given); ``refusals``: where links refused for their peer's identity are counted
        (the process's, :mod:`kcm.connection_refusals`; None: a count of its own);
        ``lineage``: the database's deployment id and restore generation, sent in ORIGIN
        (kcm-core's, read as it starts; None, or a lineage not read yet: a gateway of link
        version 7 is answered GOAWAY)."""
        self.refusals = refusals if refusals is not None else ConnectionRefusals()
        self.handler = handler
        self.store = store
        self.keyring = keyring
        self.fanout = fanout
        self.resolve_peer = resolve_peer
        self.trust_domain = trust_domain
        self.clock = clock
        self.wall_clock = wall_clock if wall_clock is not None else clock.seconds
        self.settings = settings or LinkSettings()
        self.server_name = server_name
        self.lineage: Callable[[], Lineage | None] = lineage or (lambda: None)
        #: Asserted callers resolved, by (gateway's role path, identity, subject).
        self._principals: dict[tuple[str, str, str | None], Principal | None] = {}
        #: Whom each gateway may assert (the policy file's [gateways]; empty: every gateway
        #: is unscoped), and the scopes looked up, by gateway role path.
        self.gateway_scopes = GatewayScopes({})
        self._scopes: dict[str, GatewayScope | None] = {}
        #: What scoped gateways are sent, made once per scope.
        self.views = GatewayViews(
            (lambda: keyring.audit_key) if keyring is not None else None)
        #: Raised by every new policy: what a link read under an older one is read anew.
        self.policy_generation = 0
        #: The CRLS frame of the core's CRLs, encoded once (None: none to send).
        self.crls_wire: bytes | None = None
        #: The links that said HELLO and are still up (for the metrics).
        self.links: set[LinkServerProtocol] = set()
        #: Called with each USAGE_REPORT's counts (L3 uid -> encryptions) and the scope they
        #: are recorded under (:meth:`usage_scope`); None: ignored.
        self.on_usage: Callable[[dict[str, int], UsageScope | None], None] | None = None
        #: Set by :meth:`drain`: no new link is welcomed.
        self.draining = False
        #: Conditional fetches (link version 8) by outcome: ``unchanged`` (answered from a
        #: read, not audited), ``changed`` (fetched in full); for the metrics.
        self.refreshes: dict[str, int] = {"unchanged": 0, "changed": 0}
        #: The links' service key fetches, in turns by tenant.
        self.fetches = FetchTurns(self.settings.max_fetches_per_tenant)
        #: The warning of a caller a gateway asserted that the core does not accept: one
        #: line per interval at most (a gateway may relay such requests in a loop; their
        #: audit records are coalesced too, :class:`~kcm.core.refusal_records.RefusalRecords`).
        self.unacceptable_callers = ThrottledLine(clock, _UNACCEPTABLE_CALLER, logger=log,
                                                  level=LogLevel.warn)
        #: The line of links refused at HELLO while the fan-out is stale (STALE_EVENTS).
        self.stale_refusals = ThrottledLine(clock, _STALE_REFUSALS, logger=log,
                                            interval=STALE_REFUSALS_LOG_INTERVAL,
                                            level=LogLevel.warn)
        #: The warning of a link refused after its handshake (no gateway's certificate).
        self.refused_links = ThrottledLine(clock, _REFUSED_LINK, logger=log,
                                           level=LogLevel.warn)
        self.set_subject_map(subject_map)

    def set_subject_map(self, subject_map: SubjectMap | None) -> None:
        """Use ``subject_map`` (the core's policy) from now on: for asserted subjects, and as
        the policy document the next WELCOMEs carry (a running gateway learns it from the
        ``policy`` event the core writes with the change)."""
        self.subject_map = subject_map
        self.policy_document = (subject_map or SubjectMap({})).document()
        self._principals.clear()
        self.policy_generation += 1

    def set_crls(self, crls: Sequence[x509.CertificateRevocationList]) -> None:
        """Send ``crls`` (those in force at the client listener, each signed by a CA of
        ``tls.ca``) to every gateway that takes them (link version 10), now and on each
        link from now on, encoded once. A set whose frame is over
        :data:`MAX_CRLS_FRAME_SIZE` is not sent (logged): the gateways keep what they hold."""
        wire = encode_frame(Frame(FrameType.CRLS, crls=[crl.public_bytes(Encoding.DER)
                                                        for crl in crls]))
        if len(wire) > MAX_CRLS_FRAME_SIZE:
            log.error("tls.crl: the CRLs ({size} bytes) are too large to send to the gateways "
                      "(at most {limit}): each gateway checks only its own tls.crl and the "
                      "CRLs it was sent before", size=len(wire), limit=MAX_CRLS_FRAME_SIZE)
            self.crls_wire = None
            return
        self.crls_wire = wire
        for link in list(self.links):
            if link._version_seen:
                link.send_crls()

    def set_gateway_scopes(self, scopes: GatewayScopes) -> None:
        """Use ``scopes`` from now on: the next frame of every link is checked against
        them (what a link resolved under the old ones is resolved anew), and a link whose
        gateway's scope changed is closed (GOAWAY): its gateway links again, and is sent its
        view under the new scope from its WELCOME on (a gateway of link version 6 also
        drops the keys it holds: VIEW)."""
        self.gateway_scopes = scopes
        self._scopes.clear()
        self._principals.clear()
        self.policy_generation += 1
        for link in list(self.links):
            if link.gateway is not None and self.scope_of(link.gateway) != link.scope:
                log.info("gateway {gateway}: its scope changed ({scope}): closing its link",
                         gateway=link.gateway.id,
                         scope=_describe(self.scope_of(link.gateway)))
                link.go_away(SCOPE_CHANGED)

    def scope_of(self, gateway: Principal) -> GatewayScope | None:
        """``gateway``'s scope (None: unscoped); one dict lookup once looked up."""
        path = gateway.path
        try:
            return self._scopes[path]
        except KeyError:
            scope = self._scopes[path] = self.gateway_scopes.scope_of(gateway)
            return scope

    def may_act_for(self, gateway: Principal, tenant: str | None) -> bool:
        """Whether ``gateway`` may act for ``tenant`` (a FETCH_SERVICE_KEY's)."""
        scope = self.scope_of(gateway)
        return scope is None or scope.allows_tenant(tenant)

    def usage_scope(self, gateway: Principal) -> UsageScope | None:
        """The scope ``gateway``'s usage reports are recorded under (None: any tenant's)."""
        scope = self.scope_of(gateway)
        if scope is None or scope.tenants is None:
            return None
        return gateway.id, scope.tenants

    def stopFactory(self) -> None:
        # The listener stops: the last counted refusals are written.
        self.refused_links.flush()
        self.unacceptable_callers.flush()

    def buildProtocol(self, addr: object) -> LinkServerProtocol:
        return LinkServerProtocol(self)

    def requests_in_flight(self) -> int:
        """Forwarded requests being answered now, on every link."""
        return sum(link.requests_in_flight for link in self.links)

    def drain(self) -> Deferred[None]:
        """What a stopping core does with its links: welcome no new one, send DRAIN to each
        gateway that takes it; fires once every link is drained (:attr:`LinkServerProtocol.
        drained`: its gateway closed it, its requests answered, or, for a gateway that
        does not take DRAIN, no request of it is in flight). The caller bounds the wait."""
        self.draining = True
        for link in list(self.links):
            link.drain()
        return until(self.clock, lambda: all(link.drained for link in self.links))

    def events_stale(self) -> None:
        """The fan-out cannot read the outbox (:attr:`EventFanout.on_stale`): every link is
        closed, so that its gateway links to another core and follows changes made there
        (HELLO is refused while it lasts)."""
        for link in list(self.links):
            link.go_away(STALE_EVENTS)

    def events_went_back(self) -> None:
        """The outbox ends before events already sent (:attr:`EventFanout.on_went_back`):
        every link is closed, so that its gateway links again and finds WELCOME's head
        below its own (a restore), and resynchronises."""
        for link in list(self.links):
            link.go_away(EVENTS_WENT_BACK)

    def fetch_keys(self, caller: Caller, tenant: str, service: str, uid: str | None,
                   now: int) -> Deferred[list[ServiceKey] | KmipError]:
        """FETCH_SERVICE_KEY's answer, computed in a store transaction off the reactor.

        Handed over before any event committed after it is read
        (:meth:`kcm.core.store.engine.Store.run_answer`): a gateway never gets a key's
        revocation, then the key as it was before."""
        return self.store.run_answer(lambda session: fetch_service_keys(
            session, self.keyring, caller, tenant, service, uid, now=now))

    def fetch_page(self, caller: Caller, uid: str, after: str | None,
                   now: int) -> Deferred[TombstonePage | KmipError]:
        """FETCH_TOMBSTONES's answer (link version 9): a page read in a read transaction
        of its own (tombstones are only added, and deleted only with their version, which
        a page of answers as a refusal: the order of a page and the events does not
        matter); a refusal of who asks, or of an unknown uid, is audited in a write."""
        d: Deferred = self.store.run(lambda session: tombstone_page(
            session, self.keyring, caller, uid, after, now=now), write=False)

        def audited(page: TombstonePage | KmipError) -> object:
            if not isinstance(page, KmipError) or isinstance(page, VersionDestroyed):
                return page
            return self.store.run(lambda session: audit_refused_page(
                session, caller, uid, page, now=now)).addCallback(lambda _: page)

        return d.addCallback(audited)

    def refresh_keys(self, caller: Caller, tenant: str, service: str, uid: str | None,
                     held: bytes, now: int) -> Deferred[list[ServiceKey] | KmipError | Unchanged]:
        """A conditional FETCH_SERVICE_KEY's answer (link version 8): :class:`Unchanged`
        when the answer would be exactly what ``held`` digests, judged in a read
        transaction, with no audit record (it delivers no key material); otherwise, a
        refusal included, :meth:`fetch_keys`'s (a write, audited, as every fetch). Counted
        in :attr:`refreshes` by outcome."""
        d: Deferred = self.store.run(lambda session: unchanged_since(
            session, self.keyring, caller, tenant, service, uid, held, now=now), write=False)

        def judged(unchanged: bool) -> Deferred | Unchanged:
            if unchanged:
                self.refreshes["unchanged"] += 1
                return Unchanged(held)
            self.refreshes["changed"] += 1
            return self.fetch_keys(caller, tenant, service, uid, now)

        return d.addCallback(judged)

    def asserted_principal(self, identity: str | None, subject: str | None,
                           gateway: Principal) -> Principal | None:
        """The caller ``gateway`` asserts, or None when the core would not accept it directly,
        or not from that gateway.

        A SPIFFE ID of this trust domain (never a gateway's); with a subject, the core's own
        subject map must name the same principal for that subject; and one the gateway's
        scope allows (:meth:`GatewayScope.allows`), if it has one.
        """
        key = (gateway.path, identity or "", subject)
        if key in self._principals:
            return self._principals[key]
        principal = self._resolve_asserted(identity or "", subject)
        if principal is not None:
            scope = self.scope_of(gateway)
            if scope is not None and not scope.allows(principal):
                principal = None
        if len(key[1]) + len(subject or "") <= _MAX_KEPT_FIELDS:  # bounded in size
            if len(self._principals) >= 4096:  # and number: identities are few, but asserted
                self._principals.clear()
            self._principals[key] = principal
        return principal

    def _resolve_asserted(self, identity: str, subject: str | None) -> Principal | None:
        principal = parse_spiffe_id(identity, trust_domain=self.trust_domain)
        if principal is None or principal.role is Role.GATEWAY:
            return None
        if subject is None:
            return principal
        if self.subject_map is None:
            return None
        try:
            name = x509.Name.from_rfc4514_string(subject)
        except ValueError:
            return None
        mapped = self.subject_map.lookup(name, trust_domain=self.trust_domain)
        if mapped is None or mapped.path != principal.path:
            return None
        return mapped
