"""The gateway's end of the link to the core (docs/link-protocol.md).

:class:`LinkClient` keeps one mutually authenticated connection to the core up with Twisted's
``ClientService`` (at once after losing a link that lived a while, then exponential backoff,
0.1 s → 1 s) and offers the gateway these things:

* :meth:`LinkClient.forward` — relay a client's KMIP request, answered byte for byte by the
  core; many in flight at once, multiplexed by stream id and answered in any order; cancel
  its Deferred when the client leaves, and the core stops the request (a CANCEL frame, to a
  core whose WELCOME names link version 2 or later);
* :meth:`LinkClient.fetch_service_keys` — a service's L3 versions, on behalf of a caller;
  given the digest of what the gateway holds, a core of link version 8 answers
  :class:`~kcm.link.keys_digest.Unchanged` when that is what it would send;
* ``on_event(seq, kind, tenant, payload)`` — the core's event stream, applied in sequence
  order, resumed after :attr:`LinkClient.last_sequence` on every reconnect: from the event
  before it, so that the last event applied is sent again and compared with what was
  applied; one that differs means the database was restored (its events after the backup
  are new ones under reused numbers), and the gateway resynchronises (``on_resync``), as it
  does when a resumed link's first event is beyond the one expected (the core deleted the
  events between: its ``outbox_retention``); a gap later in a link's stream ends the link;
* ``on_policy(document)`` — the core's policy document, from every WELCOME and every
  ``policy`` event (before ``on_event`` sees that event);
* a scoped gateway's view (link version 6): the core sends it another tenant's events as
  ``redacted`` ones (the number and a keyed digest, handed to ``on_event`` like any,
  which skips them),
  and VIEW, the digest of its scope, on every link: one that differs from the last link's
  (the scope changed) calls ``on_resync``, since the keys held were fetched, and kept
  current by events, under the other scope;
* :meth:`LinkClient.report_usage` — how many encryptions were made under each L3 version
  (USAGE_REPORT, to a core whose WELCOME names link version 3 or later; no answer);
* which database the core serves (link version 7): after a WELCOME of version 7 or later
  the link waits for ORIGIN, the core's deployment id and restore generation, before it
  counts as made, and :attr:`LinkClient.followed` (:mod:`kcm.gateway.core_origin`) judges
  it: a core on an older copy of the database, or of another deployment, is refused (GOAWAY
  naming why; logged once per core until a link to it is made, counted), a failed attempt
  of that core; a later generation (a restored copy) is followed from then on, and the
  keys held are dropped (``on_resync``). A core of version 6 or earlier is linked as before.

A link is made when the core's WELCOME comes, within ``welcome_timeout`` (2 s) of the TCP
connection; one lost or given up before it (a core that refuses the link, or a hung one whose
kernel completes the TCP connection but which never completes the TLS handshake) is a failed
attempt of that core: the next goes to the next core (:mod:`kcm.gateway.core_endpoints`).
So is a link to a peer whose certificate is not a core's, though TLS verified its chain and
host name (:func:`kcm.identity.core_certificate_refusal`: any URI SAN, as a gateway's
certificate carries, or a CA's): it is closed as soon as the handshake completes, before
anything is sent on it, and never taken for the core's.

Nothing waits long for a link that is not there: while it is down every call fails at once
with :class:`LinkDown`, with two exceptions, both bounded (``first_link_wait`` and
``drain_wait``, 5 s): the calls made just after the start wait for the first link, and the
calls made after the core sent DRAIN (it is stopping; link version 4) wait for the next link.
A draining link takes no new call; its calls in flight are answered on it, and it is closed
once they all are, which makes the link reconnect at once (to the next core, when the
draining one no longer takes links).

When the gateway's certificate is renewed (:meth:`LinkClient.relink`, from
:mod:`kcm.tls_refresh`) the link is made again make-before-break: a second connection
presents the new certificate while the link in use carries every call; once the core
welcomes it, it takes the new calls and the old link drains as above (no call waits, none
is lost). One the core refuses leaves the link in use as it is (logged once, counted,
tried again on a back-off up to ``renew_retry_delay``, and at once at the next renewal);
with ``certificates`` (:mod:`kcm.gateway.link_certificates`) a link lost meanwhile is made
again with the certificate the core took last, the new one tried beside it.
Events are applied from the last link welcomed alone: the new link resumes after the
last event applied when its HELLO went, so what the old link applied meanwhile is
replayed on it and skipped, and nothing is missed.

In-flight streams are bounded: at ``max_in_flight`` forwarded requests the registered
producers (the gateway's client connections) are paused until half have been answered, and
beyond twice that a call fails with :class:`LinkBusy` (as does one beyond twice that waiting
for a link). Service key fetches are bounded apart, by ``max_fetches`` (by default
``max_in_flight``, and never more than the core keeps waiting for one link,
:data:`~kcm.link.protocol.MAX_LINK_FETCHES`): beyond it a fetch fails with
:class:`LinkBusy`, and they never pause a client connection (the L3 cache bounds each
tenant's fetches, so one tenant's misses cannot stop every other tenant's connections from
being read). A stream unanswered for
``request_timeout`` seconds fails with :class:`LinkTimeout`.

Frames are bounded by ``max_frame_size`` (:func:`kcm.link.frames.frame_size_limit` of the
gateway's maximum message size), and a frame too large fails its one stream, never the
link: a call too large to send fails at once with :class:`RequestTooLarge`, and an answer
from the core too large to take is skipped unread and fails its call with
:class:`AnswerTooLarge`.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kcm.gateway.core_endpoints import CoreFailoverEndpoint
from kcm.gateway.core_origin import FollowedOrigin, Origin
from kcm.gateway.link_certificates import LinkCertificates
from kcm.identity import Principal, core_certificate_refusal
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError
from kcm.l4.service_key import ServiceKey
from kcm.link.events import EventKind
from kcm.link.framer import OversizedFrame
from kcm.link.frames import (
    CANCEL_VERSION,
    CRLS_VERSION,
    DEFAULT_MAX_FRAME_SIZE,
    DRAIN_VERSION,
    HELLO_VERSION,
    KMIP_ANSWERED,
    LINK_VERSION,
    MAX_CRLS_FRAME_SIZE,
    MAX_STREAM_ID,
    MAX_USAGE_ENTRIES,
    ORIGIN_VERSION,
    PAGES_VERSION,
    REFRESH_VERSION,
    USAGE_VERSION,
    Frame,
    FrameTooLarge,
    FrameType,
    Payload,
)
from kcm.link.keys_digest import Unchanged
from kcm.link.protocol import DEFAULT_HEARTBEAT_INTERVAL, MAX_LINK_FETCHES, LinkProtocol
from kcm.link.relay import caller_fields, read_response, request_frame
from kcm.tls import client_tls_options, peer_certificate, tls_client_endpoint

log = Logger()

EventCallback = Callable[[int, str, "str | None", Payload], None]

#: Callers' encoded fields kept at most (one per client connection; emptied when full).
_MAX_CALLERS = 4096
#: Refusals of peers that are not a core remembered as logged at most (emptied when full).
_MAX_REFUSALS_LOGGED = 64


class LinkError(Exception):
    """The link could not carry a call to the core."""


class LinkDown(LinkError):
    """There is no link to the core now (or it was lost before the answer came)."""


class LinkLost(LinkDown):
    """The link was lost after the call was sent, before its answer: the core may have run
    it (a request never sent is :class:`LinkDown`)."""


class GatewayStopping(LinkDown):
    """The gateway is stopping: its link takes no new call (the core may well be up)."""


class LinkBusy(LinkError):
    """Too many calls are in flight on the link."""


class LinkTimeout(LinkError):
    """The core did not answer in time."""


class RequestTooLarge(LinkError):
    """The call does not fit in a link frame; it was not sent."""


class AnswerTooLarge(LinkError):
    """The core's answer was larger than this gateway's frames; it was skipped unread (the
    core may have carried the request out)."""


class ServiceKeyRefused(KmipError):
    """The core refused a service key fetch; ``reason`` and ``message`` are what the client
    is answered. ``owner`` is the (tenant, service) of the key when the core refused
    because of who asks (docs/link-protocol.md §2), for the gateway's log."""

    def __init__(self, reason: ResultReason, message: str, *,
                 owner: tuple[str, str] | None = None) -> None:
        super().__init__(reason, message)
        self.owner = owner


#: The answers of fetches (counted apart from forwarded requests; they pause nobody).
_FETCH_ANSWERS = (FrameType.SERVICE_KEYS, FrameType.TOMBSTONES)
_RESPONSE = FrameType.RESPONSE


@dataclass(frozen=True, slots=True)
class TombstonePage:
    """One TOMBSTONES page: TokenIds in increasing order, and whether more follow."""

    token_ids: list[str]
    more: bool


class _Connector:
    """One ClientService keeping a connection to the core up, and what it is to the link:
    the link's own, a renewal's candidate (:meth:`LinkClient.relink`), or retired (its
    last link finishes its calls and closes, and the service stops)."""

    __slots__ = ("service",)

    def __init__(self) -> None:
        self.service: ClientService | None = None


class _ConnectorEndpoint:
    """The endpoint a connector connects through: a renewal's candidate through the link's
    renewal endpoint (the newest certificate; to the core the link is linked to), any
    other through the link's own."""

    def __init__(self, client: LinkClient, connector: _Connector) -> None:
        self._client = client
        self._connector = connector

    def __repr__(self) -> str:  # (ClientService's "Scheduling retry ... to connect <this>")
        return repr(self._client._endpoint)

    def connect(self, protocolFactory: Any) -> Deferred:  # noqa: N803 - Twisted's
        client = self._client
        renewal = client._renewal_endpoint
        if renewal is None or self._connector is not client._candidate:
            return client._endpoint.connect(protocolFactory)
        main = client._endpoint
        if isinstance(renewal, CoreFailoverEndpoint) and isinstance(main, CoreFailoverEndpoint):
            renewal.current = main.current
        return renewal.connect(protocolFactory)


class _Stream:
    __slots__ = ("deferred", "answer_type", "deadline")

    def __init__(self, deferred: Deferred, answer_type: FrameType, deadline: float) -> None:
        self.deferred = deferred
        self.answer_type = answer_type
        self.deadline = deadline


@implementer(IHandshakeListener)
class LinkClientProtocol(LinkProtocol):
    """One connection to the core; its streams die with it."""

    #: The core's CRLs come in one frame larger than the others may be (link version 10).
    big_frame = (FrameType.CRLS, MAX_CRLS_FRAME_SIZE)

    def __init__(self, client: LinkClient, connector: _Connector | None = None) -> None:
        super().__init__(client.clock, heartbeat_interval=client.heartbeat_interval,
                         max_frame_size=client.max_frame_size)
        self.client = client
        #: The connector that made this connection (the link's, a renewal's candidate, or
        #: one retired: see :meth:`LinkClient.relink`); None for one made by hand (tests).
        self.connector = connector
        #: The last event applied when HELLO was sent, and whether HELLO asked for it again
        #: to compare it (None: no HELLO sent yet).
        self.hello_last: int | None = None
        self.hello_checking = False
        self.streams: dict[int, _Stream] = {}
        self.welcomed = False
        #: The link version the core named in WELCOME (which frames it takes).
        self.core_version = HELLO_VERSION
        #: Whether the core sent DRAIN: no new call goes on this link, which closes once
        #: its streams are answered.
        self.draining = False
        #: When WELCOME came (the clock's seconds).
        self.welcomed_at = 0.0
        self._next_stream = 0
        #: Gives the link up unless WELCOME comes in time (from connectionMade).
        self._welcome_deadline: IDelayedCall | None = None
        #: Why the link ends before WELCOME, when this end knows (for the log).
        self.refused: str | None = None
        #: The WELCOME of a core of link version 7 or later, until its ORIGIN comes (the
        #: link is made then, if the gateway follows that core's database).
        self._welcome: Frame | None = None
        #: No PING before WELCOME: VERSION is the first frame the core reads after it.
        self.pinging = False

    def connectionMade(self) -> None:
        super().connectionMade()
        # ClientService puts a proxy between the TLS layer and this protocol that hands
        # every call on through ``__getattr__``, a failed lookup and a call in Python for
        # each read of the link; the reads go straight here instead (its connectionLost,
        # which ClientService needs, still goes through it).
        proxy = getattr(self.transport, "wrappedProtocol", None)
        if proxy is not self and getattr(proxy, "_protocol", None) is self:
            with contextlib.suppress(AttributeError):  # (a proxy that takes no attribute)
                proxy.dataReceived = self.dataReceived
        # Made here, at the TCP connection: a hung core's kernel completes it from the
        # listen backlog, and only the missing WELCOME tells that core from a live one.
        self._welcome_deadline = self.clock.callLater(self.client.welcome_timeout,
                                                      self._no_welcome)
        self.send(Frame(FrameType.HELLO, link_version=HELLO_VERSION,
                        peer_name=self.client.gateway_name,
                        sequence=self.client._resume_after(self)))

    def go_away(self, reason: str) -> None:
        if not self.welcomed and self.refused is None:
            self.refused = reason  # (the core endpoint's warning says why)
        if reason == KMIP_ANSWERED:  # a KMIP server: a GOAWAY is one more invalid request
            self.close()
            return
        super().go_away(reason)

    def handshakeCompleted(self) -> None:
        """TLS verified the peer's chain and host name: it must also be a core, not another
        identity of the same PKI naming the same host (a gateway's certificate); if not, the
        link is closed before anything goes on it, a failed attempt of this core."""
        try:
            cert = peer_certificate(self.transport)
        except ValueError:
            why: str | None = "its certificate cannot be read"
        else:
            why = ("it presented no certificate" if cert is None
                   else core_certificate_refusal(cert))
        if why is None:
            return
        self.refused = f"{self.peer} is not a core: {why}"
        self.client._not_a_core(self.refused)
        self.close(abort=True)

    def frame_WELCOME(self, frame: Frame) -> None:
        if self.welcomed or self._welcome is not None:
            self.go_away("a second WELCOME")
            return
        self.core_version = frame.link_version or HELLO_VERSION
        self.pinging = True
        if self.core_version >= DRAIN_VERSION:  # so that the core may send DRAIN
            self.send(Frame(FrameType.VERSION, link_version=LINK_VERSION))
        if frame.heartbeat_interval and frame.heartbeat_interval != self.heartbeat_interval:
            self.start_heartbeat(frame.heartbeat_interval)
        if self.core_version >= ORIGIN_VERSION:
            # Made once ORIGIN says which database the core serves (within the deadline).
            self._welcome = frame
            return
        self._made(frame, None)

    def frame_ORIGIN(self, frame: Frame) -> None:
        """The core's database (link version 7): the link is made if this gateway follows
        it; if not, it is closed, a failed attempt of this core."""
        welcome, self._welcome = self._welcome, None
        if welcome is None:
            self.go_away("a second ORIGIN" if self.welcomed else "ORIGIN before WELCOME")
            return
        origin = Origin(frame.deployment or "", frame.restore_generation or 0)
        refusal = self.client._origin_refused(self, origin)
        if refusal is not None:
            self.refused = refusal
            self.go_away(refusal)
            return
        self._made(welcome, origin)

    def _made(self, welcome: Frame, origin: Origin | None) -> None:
        """The link is made: welcomed (and, from a core of version 7, its ORIGIN taken)."""
        self.welcomed = True
        self.welcomed_at = self.clock.seconds()
        self._cancel_welcome_deadline()
        self.client._welcomed(self, welcome, origin)

    def _before_made(self, frame: Frame) -> bool:
        """Whether ``frame`` came before the link was made, which ends it (a protocol error:
        the core sends nothing else before WELCOME, and before ORIGIN when it sends one)."""
        if self.welcomed:
            return False
        awaited = "ORIGIN" if self._welcome is not None else "WELCOME"
        self.go_away(f"{frame.type.name} before {awaited}")
        return True

    def _no_welcome(self) -> None:
        """No WELCOME in time: the link is given up (a failed attempt of this core)."""
        self._welcome_deadline = None
        awaited = "ORIGIN" if self._welcome is not None else "WELCOME"
        self.refused = f"no {awaited} within {self.client.welcome_timeout:g}s (hung?)"
        # (each attempt: the core endpoints' warning says it at most every 30 s; a core hung
        # for hours was tried, and this said at warn, every 3 s)
        log.debug("core at {peer} sent no {awaited} within {timeout:g}s (hung?): link given "
                  "up", peer=self.peer, awaited=awaited, timeout=self.client.welcome_timeout)
        if self.closing:  # a close waiting on a handshake that does not finish
            self.transport.abortConnection()
        else:
            self.close(abort=True)

    def _cancel_welcome_deadline(self) -> None:
        if self._welcome_deadline is not None and self._welcome_deadline.active():
            self._welcome_deadline.cancel()
        self._welcome_deadline = None

    def frame_GOAWAY(self, frame: Frame) -> None:
        if not self.welcomed:
            # A refused attempt: the core endpoint's line says it (at once, then at most
            # once every 30 s with a count), not a line of its own every attempt.
            self.refused = f"GOAWAY: {frame.error or 'no reason given'}"
            self.close()
            return
        super().frame_GOAWAY(frame)

    def frame_DRAIN(self, frame: Frame) -> None:
        """The core is stopping: new calls wait for the next link; this one closes once
        its streams are answered."""
        if self._before_made(frame):
            return
        if self.draining:
            return
        self.draining = True
        self.client._draining(self, frame.error)
        self._close_if_drained()

    def _close_if_drained(self) -> None:
        if self.draining and not self.streams and not self.closing:
            self.go_away("drained: every stream is answered")

    def _stream_closed(self, stream: _Stream) -> None:
        """``stream`` was answered, failed or given up: counted, and a draining link whose
        last stream it was is closed."""
        self.client._stream_done(fetch=stream.answer_type in _FETCH_ANSWERS)
        if self.draining and not self.streams:
            self._close_if_drained()

    def frame_received(self, wire: bytes) -> None:
        """A RESPONSE is read straight from its bytes (:func:`kcm.link.relay.read_response`)
        and its KMIP message handed on as it came; any other frame is decoded."""
        relayed = read_response(wire)
        if relayed is None:
            super().frame_received(wire)
            return
        stream_id, message = relayed
        streams = self.streams
        stream = streams.get(stream_id)
        if stream is not None and stream.answer_type is _RESPONSE:
            # (what _answered does, inline: a forwarded request's answer, its usual case)
            del streams[stream_id]
            self.client._stream_done()
            if self.draining and not streams:
                self._close_if_drained()
            stream.deferred.callback(message)
            return
        stream = self._answered(FrameType.RESPONSE, stream_id)
        if stream is not None:
            stream.deferred.callback(message)

    def frame_RESPONSE(self, frame: Frame) -> None:
        stream = self._answered(frame.type, frame.stream_id)
        if stream is not None:
            stream.deferred.callback(frame.message)

    def frame_SERVICE_KEYS(self, frame: Frame) -> None:
        stream = self._answered(frame.type, frame.stream_id)
        if stream is None:
            return
        if frame.error is not None or frame.result_reason is not None:
            try:
                reason = ResultReason(frame.result_reason)
            except ValueError:
                reason = ResultReason.GENERAL_FAILURE
            owner = (frame.tenant, frame.service or "") if frame.tenant is not None else None
            stream.deferred.errback(ServiceKeyRefused(reason, frame.error or "refused",
                                                      owner=owner))
        elif frame.keys_digest is not None:  # what the fetch said it holds is current
            stream.deferred.callback(Unchanged(frame.keys_digest))
        else:
            stream.deferred.callback(frame.service_keys)

    def frame_TOMBSTONES(self, frame: Frame) -> None:
        """A page of a version's tombstones (link version 9), or the core's refusal."""
        stream = self._answered(frame.type, frame.stream_id)
        if stream is None:
            return
        if frame.error is not None:
            try:
                reason = ResultReason(frame.result_reason)
            except ValueError:
                reason = ResultReason.GENERAL_FAILURE
            stream.deferred.errback(ServiceKeyRefused(reason, frame.error))
        else:
            stream.deferred.callback(TombstonePage(frame.token_ids, bool(frame.more)))

    def page(self, frame: Frame) -> Deferred:
        """Send FETCH_TOMBSTONES ``frame`` as :meth:`call`, to a core of link version 9 or
        later (another fails the call: it would end the link)."""
        if self.core_version < PAGES_VERSION:
            return fail(LinkError(f"the core (link version {self.core_version}) sends no "
                                  "tombstone pages"))
        return self.call(frame, FrameType.TOMBSTONES)

    def frame_EVENT(self, frame: Frame) -> None:
        if not self._before_made(frame):
            self.client._event(self, frame)

    def frame_CRLS(self, frame: Frame) -> None:
        """The CRLs of the core's ``tls.crl`` (link version 10), for the client listener."""
        if self._before_made(frame):
            return
        if self.client.on_crls is not None:
            try:
                self.client.on_crls(list(frame.crls))
            except Exception:  # noqa: BLE001 - the link goes on; its own CRLs stay
                log.failure("taking the core's CRLs failed")

    def frame_VIEW(self, frame: Frame) -> None:
        """The digest of what the core sends this gateway (its scope; link version 6)."""
        if self._before_made(frame):
            return
        self.client._viewed(frame.view or b"")

    def frame_oversized(self, frame: OversizedFrame) -> None:
        """An answer too large to take fails its call; the link goes on."""
        if frame.frame_type not in (FrameType.RESPONSE, *_FETCH_ANSWERS) \
                or not frame.stream_id:
            super().frame_oversized(frame)
            return
        stream = self.streams.pop(frame.stream_id, None)
        if stream is None:  # timed out already: skipped like any late answer
            return
        self._stream_closed(stream)
        log.warn("the core answered stream {stream} with a {kind} frame of {size} bytes; "
                 "frames of at most {limit} are taken (limits.max_message_size)",
                 stream=frame.stream_id, kind=frame.frame_type.name, size=frame.size,
                 limit=self.max_frame_size)
        stream.deferred.errback(AnswerTooLarge(
            f"the core's answer of {frame.size} bytes exceeds this gateway's link frames of "
            f"at most {self.max_frame_size} bytes"))

    def _answered(self, frame_type: FrameType, stream_id: int) -> _Stream | None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:  # timed out already: the late answer has nobody to go to
            return None
        # (what _stream_closed does, inline: every answer)
        self.client._stream_done(fetch=stream.answer_type in _FETCH_ANSWERS)
        if self.draining and not self.streams:
            self._close_if_drained()
        if stream.answer_type is not frame_type:
            self.go_away(f"{frame_type.name} answers stream {stream_id}, "
                         f"which awaits {stream.answer_type.name}")
            stream.deferred.errback(LinkLost("the core answered out of protocol"))
            return None
        return stream

    def call(self, frame: Frame, answer_type: FrameType) -> Deferred:
        """Send ``frame`` on a fresh stream; the Deferred fires with the answer. Raises
        :class:`FrameTooLarge` (nothing sent, no stream opened) for a frame too large.

        Cancelling the Deferred (``d.cancel()``: nobody awaits the answer any more) closes
        the stream here and, when the core takes CANCEL (link version 2), sends one, so the
        core stops the request at its next batch-item boundary."""
        stream_id = self._new_stream_id()
        frame.stream_id = stream_id
        self.send(frame)
        return self._awaiting(stream_id, answer_type)

    def fetch(self, frame: Frame, held: bytes | None) -> Deferred:
        """Send FETCH_SERVICE_KEY ``frame`` as :meth:`call`, with the KeysDigest ``held`` to
        a core of link version 8 or later; an "unchanged" answer that does not echo what
        was sent (or to a fetch that sent none) fails the call."""
        if held is not None and self.core_version >= REFRESH_VERSION:
            frame.keys_digest = held
        else:
            held = None

        def unchanged_checked(answer: object) -> object:
            if isinstance(answer, Unchanged) and answer.digest != held:
                raise LinkError("the core answered 'unchanged' to a fetch it was not asked "
                                "so")
            return answer

        return self.call(frame, FrameType.SERVICE_KEYS).addCallback(unchanged_checked)

    def relay(self, caller: bytes, message: bytes) -> Deferred[bytes]:
        """Send KMIP ``message`` in a REQUEST frame on a fresh stream, for the caller whose
        :func:`kcm.link.relay.caller_fields` are ``caller``; as :meth:`call` otherwise (the
        Deferred fires with the answer's KMIP message; :class:`FrameTooLarge` when it does
        not fit, nothing sent)."""
        stream_id = self._new_stream_id()
        self.send_wire(request_frame(stream_id, caller, message))
        return self._awaiting(stream_id, FrameType.RESPONSE)

    def _awaiting(self, stream_id: int, answer_type: FrameType) -> Deferred:
        """The open stream ``stream_id``'s Deferred, which its answer (``answer_type``)
        fires; cancelling it closes the stream."""
        d: Deferred = Deferred(lambda d: self._cancel(stream_id, d))
        self.streams[stream_id] = _Stream(d, answer_type,
                                          self.clock.seconds() + self.client.request_timeout)
        return d

    def _cancel(self, stream_id: int, d: Deferred) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.deferred is not d:
            return
        del self.streams[stream_id]
        self._stream_closed(stream)
        if self.core_version >= CANCEL_VERSION:
            self.send(Frame(FrameType.CANCEL, stream_id=stream_id))
            self.client.cancels_sent += 1

    def _new_stream_id(self) -> int:
        stream_id = self._next_stream
        while True:
            stream_id = stream_id + 1 if stream_id < MAX_STREAM_ID else 1
            if stream_id not in self.streams:
                self._next_stream = stream_id
                return stream_id

    def heartbeat_tick(self) -> None:
        now = self.clock.seconds()
        expired = [sid for sid, stream in self.streams.items() if stream.deadline <= now]
        for stream_id in expired:
            stream = self.streams.pop(stream_id)
            self._stream_closed(stream)
            stream.deferred.errback(LinkTimeout(
                f"the core did not answer within {self.client.request_timeout:g}s"))

    def link_lost(self, reason: Failure) -> None:
        self._cancel_welcome_deadline()
        streams, self.streams = self.streams, {}
        fetches = sum(stream.answer_type in _FETCH_ANSWERS for stream in streams.values())
        self.client._lost(self, reason, len(streams) - fetches, fetches)
        for stream in streams.values():
            stream.deferred.errback(LinkLost("the link to the core was lost before the answer"))


#: Seconds after a gateway starts during which calls wait for its first link to the core.
FIRST_LINK_WAIT = 5.0
#: Seconds after the core sent DRAIN during which calls wait for the next link.
DRAIN_WAIT = 5.0
#: A link lost after living this long (seconds) is made again at once, not after the
#: back-off's first delay; one that dies younger backs off (a core that takes links and
#: drops them is not hammered).
RELINK_AFTER = 1.0
#: The most a link made again at once waits (seconds, at random): gateways that lost the
#: same core do not all reach the next one in the same instant.
RELINK_JITTER = 0.025
#: The most seconds between two attempts of a link with a renewed certificate the core
#: refused (:meth:`LinkClient.relink`): the link in use goes on meanwhile.
RENEW_RETRY_DELAY = 60.0
#: A retired connector's retry delay: never reached, it is stopped once its link closes.
RETIRED_DELAY = 3600.0
#: Seconds from the TCP connection to the core's WELCOME (TLS handshake, HELLO, WELCOME)
#: after which the link is given up and the next core tried: a live core takes
#: milliseconds; a hung one completes the TCP connection and nothing more.
WELCOME_TIMEOUT = 2.0


class LinkClient(MultiService):
    """The gateway's link to the core, kept up while the service runs."""

    name = "kcm-link"

    def __init__(self, endpoint: IStreamClientEndpoint, *, clock: IReactorTime,
                 name: str = "kcm-gateway", on_event: EventCallback | None = None,
                 on_resync: Callable[[], None] | None = None,
                 on_policy: Callable[[str], None] | None = None, last_sequence: int = -1,
                 max_in_flight: int = 1024, max_fetches: int | None = None,
                 request_timeout: float = 30.0,
                 heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
                 max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
                 max_retry_delay: float = 1.0,
                 random_fraction: Callable[[], float] = random.random,
                 first_link_wait: float = FIRST_LINK_WAIT,
                 drain_wait: float = DRAIN_WAIT,
                 welcome_timeout: float = WELCOME_TIMEOUT,
                 renew_retry_delay: float = RENEW_RETRY_DELAY,
                 renewal_endpoint: IStreamClientEndpoint | None = None,
                 certificates: LinkCertificates | None = None) -> None:
        """``renewal_endpoint``: the endpoint of a renewal's link, presenting the newest
        certificate, when ``endpoint`` presents the one the core accepted
        (``certificates``: :mod:`kcm.gateway.link_certificates`); None: ``endpoint``
        presents the newest, and a renewal's link goes through it too."""
        super().__init__()
        self.clock = clock
        #: Seconds a connection may take to be welcomed before it is given up.
        self.welcome_timeout = welcome_timeout
        self._endpoint = endpoint
        self._renewal_endpoint = renewal_endpoint
        #: The certificates the links present (None: the newest, always).
        self.certificates = certificates
        #: Seconds after the service starts during which a call waits for the first link,
        #: and after a DRAIN during which it waits for the next (see :meth:`_send`).
        self.first_link_wait = first_link_wait
        self.drain_wait = drain_wait
        #: Until when (the clock's seconds) a call made with no link waits for one.
        self._hold_until = float("-inf")
        #: The calls waiting for a link now: each one's way to give up (LinkDown).
        self._held: set[Callable[[], None]] = set()
        #: Whether the next reconnection goes at once (a drained link, or one that lived
        #: RELINK_AFTER seconds, was lost).
        self._relink_now = False
        self._random_fraction = random_fraction
        #: The name the gateway gives itself in HELLO (its certificate's gateway name; a
        #: gateway assembled before reading its certificate sets it when it starts).
        self.gateway_name = name
        #: Called with (sequence, kind, tenant, payload) for each event, in order.
        self.on_event = on_event
        #: Called when the core's event log is behind ours (a restored database): cached
        #: state may be stale and should be dropped.
        self.on_resync = on_resync
        #: Called with the core's policy document (kcm.identity.SubjectMap.document) from
        #: each WELCOME that carries one and each ``policy`` event.
        self.on_policy = on_policy
        #: Called (no arguments) each time a link is up, after its WELCOME is taken.
        self.on_linked: Callable[[], None] | None = None
        #: Called with the CRLs (each DER) of each CRLS frame (link version 10).
        self.on_crls: Callable[[list[bytes]], None] | None = None
        #: Whether a core that sends no CRLs (before link version 10) was logged.
        self._no_crls_logged = False
        #: The last event applied; the core resumes right after it (see
        #: :meth:`_resume_after`).
        self.last_sequence = last_sequence
        #: What the last event applied said (:func:`_event_digest`; None: none applied on
        #: a link yet), and whether the next link is to send it again to be compared.
        self._last_digest: bytes | None = None
        self._checking = False
        #: Whether the last event applied was ``redacted`` (what its digest was made of).
        self._last_redacted = False
        #: The digest of this gateway's view at the core, from the last VIEW (None: no
        #: core of link version 6 has sent one yet).
        self.view: bytes | None = None
        #: The link whose events are applied (the last welcomed; see :meth:`_event`).
        self._events_from: LinkClientProtocol | None = None
        #: The link whose first event is still to come, when it resumed (see :meth:`_event`).
        self._first_event_of: LinkClientProtocol | None = None
        self.max_in_flight = max_in_flight
        #: Service key fetches in flight at most (they pause no client: see above); never
        #: more than the core keeps waiting for a link (MAX_LINK_FETCHES), which refuses
        #: the next at once.
        self.max_fetches = min(max_in_flight if max_fetches is None else max_fetches,
                               MAX_LINK_FETCHES)
        self.request_timeout = request_timeout
        self.heartbeat_interval = heartbeat_interval
        self.max_frame_size = max_frame_size
        self._protocol: LinkClientProtocol | None = None
        self._waiters: dict[Deferred[None], None] = {}  # (in order)
        self._in_flight = 0  # forwarded requests
        self._fetches = 0  # service key fetches
        self._producers: set[IPushProducer] = set()
        self._saturated = False
        self._refusals = 0  # connections in a row lost before WELCOME
        #: The peers refused as not a core (and why) already logged since the last link.
        self._refusals_logged: set[str] = set()
        #: A REQUEST's caller fields, encoded once per (caller, source): per connection.
        self._caller_fields: dict[tuple[Principal, str], bytes] = {}
        #: CANCEL frames sent since the service started (calls whose caller left).
        self.cancels_sent = 0
        #: Links made (welcomed) since the service started; all but the first reconnected.
        self.links_made = 0
        #: Links the core drained (sent DRAIN on: it was stopping).
        self.links_drained = 0
        #: Links made again because this gateway's certificate was renewed (:meth:`relink`).
        self.links_renewed = 0
        #: The database this gateway follows (link version 7, ORIGIN), in memory, and the
        #: links refused for serving another.
        self.followed = FollowedOrigin()
        self._backoff = backoffPolicy(initialDelay=0.1, maxDelay=max_retry_delay, factor=2.0,
                                      jitter=lambda: 0.1 * random_fraction())
        #: A renewed certificate's link tried again after a refusal: 1 s doubling to
        #: ``renew_retry_delay`` (and at once at the next certificate change).
        self.renew_retry_delay = renew_retry_delay
        self._renew_backoff = backoffPolicy(initialDelay=1.0, maxDelay=renew_retry_delay,
                                            factor=2.0, jitter=lambda: 0.1 * random_fraction())
        #: A renewal's link not yet welcomed (see :meth:`relink`), and how many of its
        #: attempts the core refused since the certificate changed.
        self._candidate: _Connector | None = None
        self._renew_refusals = 0
        self._renew_refusal_logged = False
        #: Links made with a renewed certificate that the core refused (before WELCOME).
        self.links_renew_refused = 0
        # ClientService's prepareConnection cannot be used to wait for WELCOME: a connection
        # lost while it waits trips its state machine (NoTransition). So it counts a TCP/TLS
        # connection as success; a link lost before WELCOME is counted here instead (_lost):
        # it moves the core endpoint on to the next core, and the retry delay adds these
        # refusals, so a core that keeps closing the link before WELCOME, or a single core
        # that hangs, is retried with backoff too.
        for each in (endpoint, renewal_endpoint):
            if isinstance(each, CoreFailoverEndpoint) and each.clock is None:
                each.clock = clock  # (its failure warnings are timed by this clock)
        self._connector = self._new_connector()
        assert self._connector.service is not None
        self._connector.service.setServiceParent(self)

    def _new_connector(self) -> _Connector:
        """A ClientService to the core (to the endpoint's current core first), whose
        connections know it (:attr:`LinkClientProtocol.connector`)."""
        connector = _Connector()
        factory = Factory.forProtocol(lambda: LinkClientProtocol(self, connector))
        factory.noisy = False  # no "Starting/Stopping factory" lines at every attempt
        connector.service = ClientService(
            _ConnectorEndpoint(self, connector), factory, clock=self.clock,
            retryPolicy=lambda failed: self._connector_delay(connector, failed))
        return connector

    def _connector_delay(self, connector: _Connector, failed_attempts: int) -> float:
        """The retry delay of ``connector``: the link's (:meth:`retry_delay`), a renewal's
        candidate's (its refusals' back-off), or a retired one's (never: it is stopped
        once its last link is closed)."""
        if connector is self._connector:
            return self.retry_delay(failed_attempts)
        if connector is self._candidate:
            return self._renew_backoff(failed_attempts + self._renew_refusals)
        return RETIRED_DELAY

    @classmethod
    def over_tls(cls, reactor: Any, core: str, *, cert: str, key: str, ca: str,
                 server_name: str, **kwargs: Any) -> LinkClient:
        """A client for the core's link at endpoint ``core`` (``tcp:HOST:PORT``), presenting
        the gateway certificate ``cert``/``key`` and checking the core's against ``ca`` and
        ``server_name``."""
        options = client_tls_options(cert, key, ca, server_name)
        return cls(tls_client_endpoint(reactor, core, options), clock=reactor, **kwargs)

    def retry_delay(self, failed_attempts: int) -> float:
        """Seconds before the next connection attempt: 0.1 s doubling to 1 s (plus up to
        0.1 s of jitter) with each failure, counting links closed before WELCOME; at
        once (up to :data:`RELINK_JITTER`) after a link was drained or was lost after
        living :data:`RELINK_AFTER` seconds: the core endpoint then tries the next core,
        so a gateway that lost its core links to another without waiting; at once, too,
        after a link lost before WELCOME when the core endpoint moves on to a core not yet
        tried in this round (``CoreFailoverEndpoint.attempt_failed``)."""
        if self._relink_now:
            self._relink_now = False
            return RELINK_JITTER * self._random_fraction()
        return self._backoff(failed_attempts + self._refusals)

    def startService(self) -> None:
        self._hold_until = self.clock.seconds() + self.first_link_wait
        super().startService()

    def stopService(self) -> Deferred[None] | None:
        self._stopped = True
        self._hold_until = float("-inf")
        for give_up in list(self._held):
            give_up()
        return super().stopService()

    # State ----------------------------------------------------------------------------------
    #: Set once the service stops: calls are refused as the gateway's, not the core's.
    _stopped = False

    @property
    def connected(self) -> bool:
        """Whether a link is up and welcomed now."""
        return self._protocol is not None

    @property
    def relinking(self) -> bool:
        """Whether calls wait for the next link now (the core this gateway was linked to
        sent DRAIN: it is stopping), for at most ``drain_wait`` seconds."""
        return (self._protocol is None and self.links_made > 0
                and self.clock.seconds() < self._hold_until)

    @property
    def in_flight(self) -> int:
        """Calls sent and not yet answered (forwarded requests and service key fetches)."""
        return self._in_flight + self._fetches

    @property
    def fetches_in_flight(self) -> int:
        """Service key fetches sent and not yet answered."""
        return self._fetches

    def when_connected(self) -> Deferred[None]:
        """Fires when a link is up (at once if it is now); for start-up and tests."""
        if self._protocol is not None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters[d] = None
        return d

    # Backpressure ---------------------------------------------------------------------------
    def add_producer(self, producer: IPushProducer) -> None:
        """Pause ``producer`` (a client connection: its reading) while the link is saturated,
        from ``max_in_flight`` forwarded requests in flight until half have been answered;
        at once if it is saturated now."""
        self._producers.add(producer)
        if self._saturated:
            producer.pauseProducing()

    def remove_producer(self, producer: IPushProducer) -> None:
        """Forget ``producer`` (its connection closed)."""
        self._producers.discard(producer)

    def _stream_started(self) -> None:
        self._in_flight += 1
        if not self._saturated and self._in_flight >= self.max_in_flight:
            self._saturated = True
            for producer in list(self._producers):
                producer.pauseProducing()

    def _stream_done(self, count: int = 1, *, fetch: bool = False) -> None:
        if fetch:  # (fetches pause nobody)
            self._fetches -= count
            return
        self._in_flight -= count
        if self._saturated and self._in_flight <= self.max_in_flight // 2:
            self._saturated = False
            for producer in list(self._producers):
                producer.resumeProducing()

    # Calls ----------------------------------------------------------------------------------
    def forward(self, wire: bytes, caller: Principal, source: str) -> Deferred[bytes]:
        """Have the core answer KMIP request ``wire`` as ``caller`` (connected from
        ``source``); fires with the core's response bytes, or fails with a :class:`LinkError`
        (at once when the link is down)."""
        fields = self._caller_fields.get((caller, source))
        if fields is None:
            fields = caller_fields(caller.spiffe_id,
                                   caller.subject if caller.uri is None else None, source)
            if len(self._caller_fields) >= _MAX_CALLERS:  # bounded: one entry a connection
                self._caller_fields.clear()
            self._caller_fields[caller, source] = fields
        protocol = self._protocol
        if (protocol is None or protocol.closing or self._stopped
                or self._in_flight >= 2 * self.max_in_flight):
            # No link (a call may wait for one), or refused: as any call.
            return self._send(LinkClientProtocol.relay, fields, wire)
        # The usual case, :meth:`_send_now` inline (each forward's path to the core).
        self._stream_started()
        try:
            return protocol.relay(fields, wire)
        except FrameTooLarge as e:
            self._stream_done()
            return fail(_too_large(e))

    def fetch_service_keys(self, caller: Principal, tenant: str, service: str,
                           uid: str | None = None, *, held: bytes | None = None
                           ) -> Deferred[list[ServiceKey] | Unchanged]:
        """The Active versions of ``tenant``/``service``'s L3, newest first, or the one
        version ``uid`` of whichever tenant and service (``tenant`` and ``service`` are then
        ignored by the core and may be empty), as ``caller`` may use them. Fails with
        :class:`ServiceKeyRefused` (a KmipError with the core's KMIP 2.x reason) or a
        :class:`LinkError`.

        ``held``: the digest of the answer that would leave what is held unchanged
        (:func:`kcm.link.keys_digest.keys_digest`), sent to a core of link version 8 or
        later, which then answers :class:`Unchanged` (with that digest) when its answer
        would be exactly that; a core of an earlier version is sent a plain fetch."""
        return self._send(LinkClientProtocol.fetch, Frame(
            FrameType.FETCH_SERVICE_KEY, caller_identity=caller.spiffe_id,
            caller_subject=caller.subject if caller.uri is None else None,
            tenant=tenant, service=service, unique_identifier=uid), held, fetch=True)

    @property
    def pages_taken(self) -> bool:
        """Whether the core linked now sends tombstone pages (link version 9)."""
        protocol = self._protocol
        return protocol is not None and protocol.core_version >= PAGES_VERSION

    def fetch_tombstones(self, caller: Principal, uid: str,
                         after: str | None) -> Deferred[TombstonePage]:
        """The page of version ``uid``'s tombstones after TokenId ``after`` (None: the
        first), as ``caller`` may use the version (link version 9). Fails with
        :class:`ServiceKeyRefused` (the core's refusal, as of a fetch of ``uid``) or a
        :class:`LinkError` (a core that sends no pages among them)."""
        return self._send(LinkClientProtocol.page, Frame(
            FrameType.FETCH_TOMBSTONES, caller_identity=caller.spiffe_id,
            caller_subject=caller.subject if caller.uri is None else None,
            unique_identifier=uid, after=after), fetch=True)

    def report_usage(self, counts: Mapping[str, int]) -> bool:
        """Send ``counts`` (L3 uid -> encryptions since the last report) to the core in
        USAGE_REPORT frames; False (nothing sent) while there is no link or the core's link
        version has no USAGE_REPORT."""
        protocol = self._protocol
        if protocol is None or protocol.closing or protocol.core_version < USAGE_VERSION:
            return False
        entries = iter(sorted(counts.items()))
        while chunk := list(islice(entries, MAX_USAGE_ENTRIES)):
            protocol.send(Frame(FrameType.USAGE_REPORT, usage=chunk))
        return True

    def _send(self, send: Callable[..., Deferred], *args: Any, fetch: bool = False) -> Deferred:
        """``send(protocol, *args)`` on the link (a call opening a stream; ``fetch``: a
        service key fetch), or the failure that refuses it: no link, too many calls in
        flight, a frame too large.

        A call made with no link waits for the next one, until it is up or the hold ends,
        in two cases: within ``first_link_wait`` seconds of the start, before the first
        link (a gateway just started, or a worker just restarted, serves its first clients
        instead of failing them for a link that is a few milliseconds away); and within
        ``drain_wait`` seconds of a DRAIN (the core it was linked to is stopping: the link
        moves to the next core, or to the same one restarted). Otherwise no link fails the
        call at once."""
        if self._protocol is None:
            left = self._hold_until - self.clock.seconds()
            if left > 0:
                if len(self._held) >= 2 * self.max_in_flight:  # bounded as calls in flight
                    return fail(LinkBusy(f"{len(self._held)} calls wait for a link"))
                return self._after_link(left, send, *args, fetch=fetch)
        return self._send_now(send, *args, fetch=fetch)

    def _after_link(self, left: float, send: Callable[..., Deferred], *args: Any,
                    fetch: bool = False) -> Deferred:
        """``_send_now(send, *args)`` once a link is up, or LinkDown after ``left`` seconds
        (or when the service stops); cancelling it gives up the wait."""
        result: Deferred = Deferred()

        def linked(_: object) -> None:
            if not result.called:
                self._send_now(send, *args, fetch=fetch).chainDeferred(result)

        def too_late() -> None:
            if not result.called:
                result.errback(LinkDown("no link to the core"))

        def done(outcome: object) -> object:
            self._held.discard(too_late)
            self._waiters.pop(waiter, None)  # (a call given up no longer waits for a link)
            if timer.active():
                timer.cancel()
            return outcome

        timer = self.clock.callLater(left, too_late)
        self._held.add(too_late)
        waiter = self.when_connected()
        result.addBoth(done)
        waiter.addCallback(linked)
        return result

    def _send_now(self, send: Callable[..., Deferred], *args: Any,
                  fetch: bool = False) -> Deferred:
        protocol = self._protocol
        if self._stopped:
            return fail(GatewayStopping("the gateway is stopping"))
        if protocol is None or protocol.closing:
            return fail(LinkDown("no link to the core"))
        if fetch:
            if self._fetches >= self.max_fetches:
                return fail(LinkBusy(f"{self._fetches} service key fetches in flight to "
                                     "the core"))
            self._fetches += 1
        elif self._in_flight >= 2 * self.max_in_flight:
            return fail(LinkBusy(f"{self._in_flight} calls in flight to the core"))
        else:
            self._stream_started()
        try:
            return send(protocol, *args)
        except FrameTooLarge as e:
            self._stream_done(fetch=fetch)
            return fail(_too_large(e))

    # From the protocol ----------------------------------------------------------------------
    def _origin_refused(self, protocol: LinkClientProtocol, origin: Origin) -> str | None:
        """Why the link to a core whose ORIGIN is ``origin`` is refused (GOAWAY's reason;
        logged once per core until a link to it is made); None when it may be made."""
        refusal = self.followed.judge(origin)
        if refusal is None:
            return None
        if self.followed.first_refusal(protocol.peer):
            log.warn("refusing the link to core at {peer}: {reason} ({origin}; this gateway "
                     "follows {followed}); {hint}", peer=protocol.peer,
                     reason=refusal.message, origin=str(origin),
                     followed=str(self.followed.origin), hint=refusal.hint)
        return refusal.message

    def _welcomed(self, protocol: LinkClientProtocol, frame: Frame,
                  origin: Origin | None = None) -> None:
        """The link ``protocol`` is made: ``frame`` its WELCOME, ``origin`` the database its
        core named in ORIGIN (None: a core of link version 6 or earlier). A renewal's
        candidate takes over from the link in use (:meth:`_take_over`)."""
        connector = protocol.connector
        if (connector is not None and connector is not self._connector
                and connector is not self._candidate):
            # A connection of a connector given up or retired that completed as it was
            # stopped: the link has another.
            protocol.go_away("superseded by another link")
            return
        retiring = None
        if connector is not None and connector is self._candidate:
            retiring = self._take_over(protocol)
        if protocol.hello_last is not None:
            # Whether its first event is the last applied, sent again to be compared: only
            # if no other link applied one since its HELLO (a renewal's candidate, or the
            # link after a DRAIN, is made while the old link still applies events; those
            # it replays are then skipped as applied).
            self._checking = (protocol.hello_checking
                              and protocol.hello_last == self.last_sequence)
        self._events_from = protocol
        restored_from = None
        if origin is not None:
            if self.followed.origin is None:
                log.info("following the core's database: {origin}", origin=str(origin))
            restored_from = self.followed.follow(origin)
            self.followed.linked(protocol.peer)
        if restored_from is not None:
            log.warn("the core's database is a restored copy ({origin}, after generation "
                     "{before}): resynchronising", origin=str(origin),
                     before=restored_from.generation)
        head = frame.sequence if frame.sequence is not None else 0
        # A link that resumes may find the events it asks for deleted (outbox_retention):
        # its first event tells (_event). One that starts from the head has none missing.
        self._first_event_of = protocol if self.last_sequence >= 0 else None
        if self.last_sequence < 0:
            self.last_sequence = head
        elif head < self.last_sequence:
            # (A core reads its outbox before it names a head at or below what the gateway
            # asks after, so a head below our last is the database's, not a fan-out that
            # has not read our last event yet; a core of an earlier release might name one
            # such: resynchronising then costs the caches, nothing more.)
            log.warn("the core's event log ends at {head}, before our {ours}: resynchronising",
                     head=head, ours=self.last_sequence)
            self.last_sequence = head
            self._restored()
        elif restored_from is not None and self.on_resync is not None:
            # The keys held go; the event stream is checked as on any link (the event sent
            # again under our last number tells whether the copy has what we applied).
            self.on_resync()
        log.info("linked to core {core} at {peer}; events after {seq}", core=frame.peer_name,
                 peer=protocol.peer, seq=self.last_sequence)
        if (protocol.core_version < CRLS_VERSION and self.on_crls is not None
                and not self._no_crls_logged):
            self._no_crls_logged = True
            log.info("core {core} (link version {version}) sends no CRLs: only this "
                     "gateway's own tls.crl is in force, and the core's CRLs sent before",
                     core=frame.peer_name, version=protocol.core_version)
        if frame.policy is not None and self.on_policy is not None:
            try:
                self.on_policy(frame.policy)
            except Exception:
                log.failure("applying the core's policy failed")
        self._protocol = protocol
        self._refusals = 0
        self._refusals_logged.clear()
        linked = getattr(self._endpoint, "linked", None)
        if linked is not None:  # (CoreFailoverEndpoint: its failures, if any, are over)
            linked()
        self._hold_until = float("-inf")  # a link lost from now on fails calls at once
        self.links_made += 1
        if self.on_linked is not None:
            try:
                self.on_linked()
            except Exception:
                log.failure("on_linked failed")
        waiters, self._waiters = self._waiters, {}
        for d in waiters:
            d.callback(None)
        if retiring is not None:
            retiring._close_if_drained()
        elif (self._candidate is None and self.certificates is not None
              and self.certificates.pending):
            # Linked with the accepted certificate (after a DRAIN or a loss gave the
            # renewal's link up, or a restart of the core): the newest is tried again.
            self._start_candidate()

    def _draining(self, protocol: LinkClientProtocol, reason: str | None) -> None:
        """The core of ``protocol`` sent DRAIN: new calls wait for the next link (up to
        ``drain_wait`` seconds), which is made at once when this one closes."""
        self.links_drained += 1
        if self._protocol is not protocol:
            return
        self._drop_candidate()  # (the next link presents the newest certificate anyway)
        self._hold(protocol)
        drained = getattr(self._endpoint, "drained", None)
        if drained is not None:  # a list of cores: the next link goes to the next one
            drained()
        log.info("the core at {peer} is stopping ({reason}): {streams} calls in flight are "
                 "answered on its link; new calls wait up to {wait:g}s for the next link",
                 peer=protocol.peer, reason=reason or "DRAIN", streams=len(protocol.streams),
                 wait=self.drain_wait)

    def _hold(self, protocol: LinkClientProtocol) -> None:
        """``protocol`` takes no new call: they wait for the next link (up to
        ``drain_wait`` seconds), made at once when it closes."""
        self._protocol = None
        self._hold_until = self.clock.seconds() + self.drain_wait
        self._relink_now = True

    def relink(self, reason: str) -> bool:
        """Make the link again with this gateway's renewed certificate, make-before-break:
        a second link is opened (to the core linked to) while the one in use goes on; once
        the core welcomes it, new calls go on it and the old link, taking no new call,
        closes once its calls in flight are answered (or time out: ``request_timeout``).
        If the core refuses it (before WELCOME: the certificate's CA or a CRL of the core),
        the link in use stays; the refusal is logged once and counted
        (:attr:`links_renew_refused`), and the new link tried again on a back-off (1 s
        doubling to ``renew_retry_delay``), or at once when this is called again (the
        next renewal). With :attr:`certificates`, the link's own connections present the
        certificate the core accepted until then (a link lost meanwhile is made again with
        it), and a renewal's link is opened only while the newest is another. ``reason``:
        for the log. Whether a link was up to be made again."""
        protocol = self._protocol
        if protocol is None or protocol.closing or self._stopped:
            return False
        self._drop_candidate()
        if self.certificates is not None and not self.certificates.pending:
            return True  # (the certificate the core accepted: nothing to present anew)
        self._renew_refusals = 0
        self._renew_refusal_logged = False
        log.info("opening a new link to the core at {peer} ({reason}); the link in use "
                 "carries the calls until the core welcomes the new one", peer=protocol.peer,
                 reason=reason)
        self._start_candidate()
        return True

    def _start_candidate(self) -> None:
        """A renewal's link, tried now (and again on its back-off until welcomed)."""
        candidate = self._candidate = self._new_connector()
        assert candidate.service is not None
        candidate.service.setServiceParent(self)

    def _take_over(self, protocol: LinkClientProtocol) -> LinkClientProtocol | None:
        """The core welcomed ``protocol``, a renewal's candidate: its connector is the
        link's from now on; the link in use takes no new call and is returned, to be
        closed once its calls are answered (its connector is retired, stopped once that
        link is closed)."""
        old, self._candidate = self._protocol, None
        previous, self._connector = self._connector, protocol.connector  # type: ignore[assignment]
        self.links_renewed += 1
        if self.certificates is not None:
            self.certificates.accept()  # (the link's next connections present it too)
        if old is None or old.closing:
            # (no link of the previous connector to finish: it is stopped now, before it
            # makes another; one closing is lost soon, and nothing more)
            self._retire(previous)
            return None
        old.draining = True
        log.info("the link with the renewed certificate is up: new calls go on it; {streams} "
                 "calls in flight are answered on the previous link, which then closes",
                 streams=len(old.streams))
        return old

    def _drop_candidate(self) -> None:
        """A renewal's link not yet welcomed is given up (its connection closed)."""
        candidate, self._candidate = self._candidate, None
        if candidate is not None and candidate.service is not None:
            candidate.service.disownServiceParent()

    def _renewal_refused(self, protocol: LinkClientProtocol, reason: Failure) -> None:
        """A renewal's link was lost before WELCOME: the core refused it, or did not
        answer. The link in use stays; logged once per renewal, counted, and tried again
        on the renewal's back-off."""
        self.links_renew_refused += 1
        self._renew_refusals += 1
        why = protocol.refused or reason.getErrorMessage()
        if self._renew_refusal_logged:
            log.debug("the core refused the link with the renewed certificate again: {why}",
                      why=why)
            return
        self._renew_refusal_logged = True
        log.warn("the core at {peer} refused a link with this gateway's renewed certificate "
                 "({why}); the link made with the previous certificate stays in use. Fix: "
                 "the new certificate must chain to a CA of the core's tls.ca (its CRL in "
                 "the core's tls.crl) and be listed by no CRL; retried every {most:g}s at "
                 "most", peer=protocol.peer, why=why, most=self.renew_retry_delay)

    def _retire(self, connector: _Connector) -> None:
        """Stop ``connector``, retired, once its last link is closed."""
        if connector.service is not None and connector.service.parent is not None:
            connector.service.disownServiceParent()

    def _lost(self, protocol: LinkClientProtocol, reason: Failure, streams: int,
              fetches: int = 0) -> None:
        connector = protocol.connector
        if self._protocol is protocol:
            self._protocol = None
            if self._stopped:  # this gateway (or worker) stops, and closed it itself
                log.info("link to the core closed: this gateway stops")
            else:
                log.warn("link to the core lost: {reason}", reason=reason.getErrorMessage())
                # A renewal's link pending: without certificates, the next link presents the
                # newest certificate, and it is given up; with them, the next link presents
                # the accepted one, and the renewal's is tried again at once beside it.
                if self._candidate is not None:
                    self._drop_candidate()
                    if self.certificates is not None and self.certificates.pending:
                        self._start_candidate()
            lived = self.clock.seconds() - protocol.welcomed_at
            self._relink_now = lived >= RELINK_AFTER
            if protocol.went_silent:  # a hung core: not worth another attempt first
                self._attempt_failed("its heartbeats stopped")
        elif connector is not None and connector is not self._connector:
            # A renewal's candidate, or the link it took over from (or one given up).
            if connector is self._candidate and not protocol.welcomed:
                if not self._stopped:
                    self._renewal_refused(protocol, reason)
            elif connector is not self._candidate:
                if protocol.draining:
                    log.info("the link made with the previous certificate is closed")
                self.clock.callLater(0, self._retire, connector)
        elif protocol.draining:
            log.info("the drained link to {peer} is closed", peer=protocol.peer)
        elif not protocol.welcomed:
            self._refusals += 1
            self._relink_now = self._attempt_failed(protocol.refused
                                                    or reason.getErrorMessage())
        if streams:
            self._stream_done(streams)
        if fetches:
            self._stream_done(fetches, fetch=True)

    def _not_a_core(self, refusal: str) -> None:
        """A link was refused for ``refusal`` (its peer is not a core): a warning, once until
        the next link (its retries are the core endpoint's to report, rate-limited)."""
        if refusal in self._refusals_logged:
            return
        if len(self._refusals_logged) >= _MAX_REFUSALS_LOGGED:
            self._refusals_logged.clear()
        self._refusals_logged.add(refusal)
        log.warn("refusing the link: {refusal}", refusal=refusal)

    def _attempt_failed(self, reason: str) -> bool:
        """A link lost before WELCOME is a failed attempt of its core: the core endpoint
        (one that fails over: :class:`kcm.gateway.core_endpoints.CoreFailoverEndpoint`)
        moves on to the next; True when that one is to be tried at once."""
        attempt_failed = getattr(self._endpoint, "attempt_failed", None)
        if attempt_failed is None:
            return False
        return bool(attempt_failed(reason, self._refusals))

    def _resume_after(self, protocol: LinkClientProtocol | None = None) -> int:
        """The EventSequence of ``protocol``'s HELLO: the one before the last event applied,
        when that event's digest is known (so that the core sends it again, to be
        compared), else the last applied (−1: none, start from the head). What it asked is
        kept on ``protocol``, for when it is welcomed (another link may apply events
        meanwhile)."""
        checking = self._last_digest is not None and self.last_sequence > 0
        if protocol is None:
            self._checking = checking
        else:
            protocol.hello_last, protocol.hello_checking = self.last_sequence, checking
        return self.last_sequence - 1 if checking else self.last_sequence

    def _viewed(self, view: bytes) -> None:
        """The core's VIEW: the digest of this gateway's scope. One that differs from the
        last link's drops the keys held (``on_resync``): they were fetched, and events
        about them applied or redacted, under the other scope. The event stream goes on
        as it is (its numbers are the same under any scope)."""
        if self.view is not None and view != self.view:
            log.warn("the core serves this gateway under another scope than on its last "
                     "link: dropping the keys held")
            if self.on_resync is not None:
                self.on_resync()
        self.view = view

    def _restored(self) -> None:
        """The core's database is not the one whose events were applied (restored from a
        backup): what was learnt from them is dropped."""
        self._checking = False
        self._last_digest = None
        if self.on_resync is not None:
            self.on_resync()

    def _event(self, protocol: LinkClientProtocol, frame: Frame) -> None:
        if protocol is not self._events_from:
            # Events come from the last link welcomed alone: one that took over from
            # another resumed from what was applied, so the older link's events (it is
            # closing) are all sent on the new one too, in order.
            return
        seq = frame.sequence
        if self._first_event_of is protocol:
            # The first event of a resumed link: the core sends from the oldest it keeps,
            # so one beyond the event expected (the one to compare, else the next) means
            # the events between were deleted (the core's outbox_retention), not a broken
            # stream: what they said may be missing here, so resynchronise, and go on.
            self._first_event_of = None
            expected = self.last_sequence if self._checking else self.last_sequence + 1
            if seq > expected:
                log.warn("events {first} to {last} are no longer in the core's outbox "
                         "(outbox_retention): resynchronising, from event {seq}",
                         first=expected, last=seq - 1, seq=seq)
                self._restored()
                self.last_sequence = seq - 1  # this and the rest are new
        if self._checking and seq == self.last_sequence:
            self._checking = False
            if _event_digest(frame) == self._last_digest:
                return  # the one applied: the database is the one we followed
            if (frame.kind == EventKind.REDACTED) != self._last_redacted:
                # (A core of a release before link version 6 redacts nothing: a scoped
                # gateway moving between such a core and a later one, in a rolling upgrade,
                # sees the same event both ways. Not a restore.)
                log.warn("the core's event {seq} is not the one applied (redacted on one "
                         "link only): this gateway's scope changed, one of the cores is of "
                         "a release before link version 6, or the core's database was "
                         "restored; resynchronising", seq=seq)
            else:
                log.warn("the core's event {seq} is not the one applied: its database was "
                         "restored; resynchronising", seq=seq)
            self._restored()
            self.last_sequence = seq - 1  # this and the rest are new
        elif seq <= self.last_sequence:
            if seq == self.last_sequence and self._last_digest is None:
                # The head event a core sends a gateway that starts from it: its state is
                # the head's already, so it is not applied; what it said is kept, so that
                # the next resume is checked against the core's history.
                self._last_digest = _event_digest(frame)
                self._last_redacted = frame.kind == EventKind.REDACTED
            return  # already applied (a replay overlapping the live stream)
        self._checking = False
        if seq != self.last_sequence + 1:
            # Never apply out of order: reconnect and resume after the last one applied.
            protocol.go_away(f"event gap: expected {self.last_sequence + 1}, got {seq}")
            return
        payload = frame.payload or {}
        try:
            if (frame.kind == EventKind.POLICY and "policy" in payload
                    and self.on_policy is not None):
                self.on_policy(str(payload["policy"]))
            if self.on_event is not None:
                self.on_event(seq, frame.kind, frame.tenant, payload)
        except Exception:
            log.failure("applying event {seq} ({kind}) failed", seq=seq, kind=frame.kind)
        self.last_sequence = seq
        self._last_digest = _event_digest(frame)
        self._last_redacted = frame.kind == EventKind.REDACTED


def _too_large(error: FrameTooLarge) -> RequestTooLarge:
    """A call refused unsent: its frame is over the link's maximum."""
    return RequestTooLarge(f"the request does not fit in a link frame: {error}")


def _event_digest(frame: Frame) -> bytes:
    """What an EVENT said (its sequence, kind, tenant and payload), as a digest: the same
    event sent again digests the same; another under its number (a restored database's)
    does not."""
    said = (frame.sequence, frame.kind, frame.tenant, sorted((frame.payload or {}).items()))
    return hashlib.sha256(repr(said).encode()).digest()
