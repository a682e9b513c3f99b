"""KMIP over TLS, server side: framing, limits, ordering and identity for one connection.

Shared by kcm-core and kcm-gateway, which differ only in the :class:`RequestHandler`
they plug in. The protocol never decodes a message: it frames bytes, enforces the
per-connection limits, hands whole requests to the handler in order and writes the
answers back in the same order (KMIP over TLS has no other way to pair them).

A connection is idle only while none of its requests is being answered: a long request is
bounded by the server's own limits (kcm-core's request deadline), not cut off by the idle
timeout. A connection that closes while a request is being answered tells the handler
(``connection_lost``).

Reading from a client pauses for more than one reason — too many of its own requests
unanswered, its answers piling up unsent (a client that does not read them), or (at the
gateway) the link to the core saturated — and resumes only when no reason holds any more
(:meth:`KmipServerProtocol.pause` / :meth:`KmipServerProtocol.resume`). While the transport
holds more than ``max_unsent_output`` bytes of answers, no further request of that
connection is handled either; if it does not drain within ``write_timeout`` the connection
is aborted, which frees what it held.

What happens before a connection has a principal (the handshake deadline, the caps on
connections) is :mod:`kcm.connection_guard`'s, around the TLS layer. The one cap that needs
the principal, ``max_connections_per_tenant``, is the factory's: a connection over it is cut
as soon as the handshake names its tenant (counted ``limit``, logged once an interval).

A request the protocol refuses whole itself (a message larger than ``max_message_size``, the
first request of a client whose certificate names nobody this server serves) is answered by
the handler's ``refuse`` when it has one (:func:`refusal_answer`), so that a server that
audits every request records these too; a refused certificate is logged with its subject,
SANs and serial number either way. Connections refused so are counted by reason in the
factory's ``refusals`` (:mod:`kcm.connection_refusals`): ``identity``, ``too_large``, and
``unreadable`` (a header that cannot be read).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

from cryptography import x509
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from kcm.connection_refusals import ConnectionRefusals
from kcm.peer_address import peer_label
from kcm.throttled_line import ThrottledLine
from kcm.tls import openssl_subject, peer_certificate
from kcm.ttlv.errors import MessageTooLarge, TtlvError
from kcm.ttlv.framer import Framer

if TYPE_CHECKING:
    from kcm.identity import Principal

log = Logger()
_connection_ids = itertools.count(1)

#: ``limits.max_batch_items`` unless configured (kcm-core's and kcm-gateway's).
DEFAULT_MAX_BATCH_ITEMS = 64


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Per-connection limits, and the one per-request bound both servers apply to what
    they run themselves; the defaults suit KMIP clients on a LAN."""

    max_message_size: int = 1 << 20  # bytes, header included
    #: seconds without any byte from the client and no request of it being answered
    idle_timeout: float = 300.0
    message_timeout: float = 30.0  # seconds to finish sending a message once begun
    max_pending: int = 32  # requests read but not yet answered, before reading pauses
    #: Seconds from the TCP connection to a finished TLS handshake that names a principal.
    handshake_timeout: float = 10.0
    #: Connections a process holds at once on its KMIP listener (kcm-core's gateway-link
    #: listener has a cap of its own, ``max_link_connections``); keep the caps together
    #: below ``ulimit -n`` minus about 100 descriptors the process needs for itself.
    max_connections: int = 900
    #: Connections from one client IP address at once, on each listener.
    max_connections_per_address: int = 100
    #: Connections of one tenant's principals at once on the KMIP listener, counted from
    #: the TLS handshake that names them: one tenant cannot take every slot of
    #: ``max_connections``, whatever addresses it connects from. None (unset): half of
    #: ``max_connections`` (450 of the default 900), following it when it is lowered;
    #: a number set is the bound as it is (:attr:`tenant_connections`).
    max_connections_per_tenant: int | None = None
    #: The prefix length by which ``max_connections_per_address`` counts an IPv6 client: 128
    #: each address, 64 each /64 (a host may have every address of one); 32 to 128. IPv4
    #: clients (of a dual-stack listener too) are counted by their address.
    ipv6_address_prefix: int = 128
    #: Bytes of answers written but not yet sent to a client (the transport's buffer) above
    #: which that connection's further requests wait (and are not read).
    max_unsent_output: int = 4 << 20
    #: Seconds a connection's unsent output may stay above ``max_unsent_output`` (a client
    #: that does not read its answers) before the connection is closed.
    write_timeout: float = 30.0
    #: Batch items in one request; a request with more is refused whole (Invalid Message,
    #: :func:`kcm.kmip.messages.too_many_batch_items`) before any item is decoded. kcm-core
    #: judges every request by it, kcm-gateway those it answers itself (local and mixed).
    max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS

    def __post_init__(self) -> None:
        for name in ("max_message_size", "max_pending", "max_connections",
                     "max_connections_per_address", "max_connections_per_tenant",
                     "max_unsent_output", "max_batch_items"):
            value = getattr(self, name)
            if value is None and name == "max_connections_per_tenant":
                continue  # (unset: half of max_connections)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"limits.{name} must be a whole number of at least 1")
        prefix = self.ipv6_address_prefix
        if isinstance(prefix, bool) or not isinstance(prefix, int) or not 32 <= prefix <= 128:
            raise ValueError("limits.ipv6_address_prefix must be a whole number from 32 to 128")
        # Written so that NaN (which passes a "<= 0" test) fails it, as infinity (a connection
        # held forever) does; a wait longer than these bounds holds a connection slot that long.
        for name, most in (("idle_timeout", 86400), ("message_timeout", 3600),
                           ("handshake_timeout", 3600), ("write_timeout", 3600)):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not 0 < value <= most):
                raise ValueError(f"limits.{name} must be a positive number of seconds, at "
                                 f"most {most}")

    @property
    def tenant_connections(self) -> int:
        """The bound of one tenant's connections in force: ``max_connections_per_tenant``
        if set, else half of ``max_connections`` (at least 1). A setting above
        ``max_connections`` bounds nothing more than ``max_connections`` does (``kcm
        config check`` warns)."""
        if self.max_connections_per_tenant is not None:
            return self.max_connections_per_tenant
        return max(1, self.max_connections // 2)


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """Who is on the other end of a connection, as TLS established it."""

    connection_id: int
    principal: Principal
    peer: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request refused whole before any handler saw it, as a record of it would say."""

    #: The Result Reason and Result Message the client is answered (short ASCII).
    reason: int
    message: str
    #: Where the request came from (``host:port``; at the core's link, the caller's source).
    peer: str
    #: Who sent it; None when who it claimed to be is not accepted (see ``claimed``).
    principal: Principal | None
    #: What the client claimed to be, when ``principal`` is None (short ASCII): its
    #: certificate described (:func:`describe_certificate`), or the caller a gateway asserted.
    claimed: str | None = None
    #: The gateway that relayed it (at the core's link), else None.
    gateway: Principal | None = None


class RequestHandler(TypingProtocol):
    """What a server plugs into the protocol.

    A handler may also have ``connection_lost(connection: ConnectionInfo) -> None``: it is
    then told when a connection closes while one of its requests is still being answered,
    so it can stop work nobody will read (kcm-core stops that request at its next batch-item
    boundary). A handler without it is not told.

    It may also have ``refuse(refusal: Refusal) -> bytes | Deferred[bytes]``: the answer to
    a request the protocol refuses whole (:class:`Refusal`), which it may record first (a
    server that audits every request). Without it (kcm-gateway, which keeps no audit log),
    the answer is :meth:`failure_response`'s.
    """

    def handle_request(self, wire: bytes, connection: ConnectionInfo) -> bytes | Deferred[bytes]:
        """Answer one whole request message with one whole response message.

        Must turn every KMIP-level failure into a response; a raised exception or a
        failed Deferred is a bug, answered with a General Failure by the protocol.
        """

    def failure_response(self, reason: int, message: str) -> bytes:
        """A one-item failed response for a request the handler never saw."""


class Upstream(TypingProtocol):
    """What a server's requests go on to, when it can say "stop reading from clients" (the
    gateway's :class:`kcm.gateway.link_client.LinkClient`): it pauses and resumes every
    producer registered with it."""

    def add_producer(self, producer: IPushProducer) -> None: ...

    def remove_producer(self, producer: IPushProducer) -> None: ...


class WorkShare(TypingProtocol):
    """Each tenant's share of the reactor's time (the gateway's
    :class:`kcm.gateway.tenant_turns.TenantTurns`): a connection whose tenant has had its
    time in this turn parks until its next (:meth:`KmipServerProtocol.next_turn`)."""

    #: The reactor time each tenant has taken since its count last started again (the
    #: protocol adds each request's), and how much it may take before it waits.
    clock: Callable[[], float]
    spent: dict[str | None, float]
    turn_time: float

    def park(self, tenant: str | None, connection: KmipServerProtocol) -> None: ...


PrincipalResolver = Callable[[ITransport], "Principal | None"]

#: Why a connection stops reading: its own unanswered requests, its unsent answers, or its
#: upstream.
PAUSED_BY_PENDING = "pending"
PAUSED_BY_OUTPUT = "output"
PAUSED_BY_UPSTREAM = "upstream"
#: ... or its tenant's share of the reactor, had in this turn (:class:`WorkShare`).
PAUSED_BY_SHARE = "share"

RESULT_REASON_INVALID_MESSAGE = 0x04
RESULT_REASON_PERMISSION_DENIED = 0x0C
RESULT_REASON_GENERAL_FAILURE = 0x100

#: The Result Message of the answer a client gets when its certificate names nobody this
#: server serves (no SPIFFE ID of the trust domain with a role allowed here, and no subject
#: mapped by the policy): short ASCII, the same for every such client.
IDENTITY_REFUSED = ("the client certificate names no identity this server accepts (a SPIFFE "
                    "ID of its trust domain, or a subject its policy maps)")


def refusal_answer(handler: RequestHandler, refusal: Refusal) -> bytes | Deferred[bytes]:
    """The answer to ``refusal``: the handler's ``refuse`` (see :class:`RequestHandler`),
    else its :meth:`~RequestHandler.failure_response`. Never fails: a ``refuse`` that does is
    logged, and the refusal answered without it."""
    refuse = getattr(handler, "refuse", None)
    if refuse is None:
        return handler.failure_response(refusal.reason, refusal.message)

    def unrecorded(failure: Failure) -> bytes:
        log.failure("recording the refusal of a request from {peer} failed", failure,
                    peer=refusal.peer)
        return handler.failure_response(refusal.reason, refusal.message)

    try:
        answer = refuse(refusal)
    except Exception:
        return unrecorded(Failure())
    if isinstance(answer, Deferred):
        return answer.addErrback(unrecorded)
    return answer  # type: ignore[no-any-return]


#: The most subject alternative names, and characters of each name, a certificate's
#: description repeats.
_DESCRIBED_NAMES = 4
_DESCRIBED_LENGTH = 100


def describe_peer_certificate(transport: Any) -> str:
    """The certificate of the peer on ``transport`` as :func:`describe_certificate` says it;
    one ``cryptography`` cannot load by its subject and serial as OpenSSL reads them."""
    try:
        return describe_certificate(peer_certificate(transport))
    except ValueError:
        x509_cert = transport.getPeerCertificate()
        subject = openssl_subject(x509_cert)
        return (f"unreadable certificate, subject {_ascii(subject) or '(empty)'}, serial "
                f"{x509_cert.get_serial_number():x}")


def describe_certificate(cert: x509.Certificate | None) -> str:
    """``cert`` in one short ASCII line for a log or an audit record: its subject, its
    subject alternative names (the first few) and its serial number. What a certificate
    holds is the client's choice: every part is bounded, and anything but printable ASCII
    written ``?``."""
    if cert is None:
        return "no certificate"
    try:
        subject = cert.subject.rfc4514_string()
    except ValueError:
        subject = "?"
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [_general_name(name) for name in names]
    except (x509.ExtensionNotFound, ValueError, x509.UnsupportedGeneralNameType):
        sans = []
    shown = [_ascii(san) for san in sans[:_DESCRIBED_NAMES]]
    if len(sans) > _DESCRIBED_NAMES:
        shown.append(f"{len(sans) - _DESCRIBED_NAMES} more")
    return (f"subject {_ascii(subject) or '(empty)'}, SAN {', '.join(shown) or '(none)'}, "
            f"serial {cert.serial_number:x}")


def _general_name(name: object) -> str:
    value = getattr(name, "value", name)
    if hasattr(value, "rfc4514_string"):  # a DirectoryName
        value = value.rfc4514_string()
    return f"{type(name).__name__}:{value}" if isinstance(value, bytes) else str(value)


def _ascii(text: str) -> str:
    head = "".join(c if " " <= c <= "~" else "?" for c in text[:_DESCRIBED_LENGTH])
    return head + ("..." if len(text) > _DESCRIBED_LENGTH else "")


@implementer(IHandshakeListener)
class KmipServerProtocol(Protocol):
    """One client connection."""

    def __init__(self, handler: RequestHandler, limits: ConnectionLimits,
                 resolve_principal: PrincipalResolver, clock: IReactorTime,
                 upstream: Upstream | None = None, share: WorkShare | None = None) -> None:
        self._handler = handler
        self._share = share
        self._limits = limits
        self._resolve_principal = resolve_principal
        self._clock = clock
        self._upstream = upstream
        self._upstream_producer: _UpstreamPause | None = None
        self._framer = Framer(limits.max_message_size)
        self._pending: deque[bytes] = deque()
        self._busy = False
        self._paused_by: set[str] = set()
        self._closing = False
        self._idle_timer = None
        self._message_timer = None
        self._write_timer = None
        self._linger_timer = None
        self._output_producer: _OutputFull | None = None
        self._refused_identity = False
        #: Who the client claimed to be, when its certificate named nobody served here.
        self._claimed: str | None = None
        #: Whether a refusal is being answered (nothing more is read or handed over).
        self._refusing = False
        self._peer = "?"
        #: The unusable header that ended the stream (:attr:`Framer.error`): the requests
        #: read before it are answered, then the connection is refused or closed
        #: (:meth:`_end_of_stream`); nothing after it is read.
        self._unreadable: TtlvError | None = None
        #: Whether any whole request has been read on this connection.
        self._read_any = False
        #: Seconds of silence before the connection is closed: ``idle_timeout``, or the
        #: drain's grace once the server is stopping (:meth:`drain`).
        self._idle_after = limits.idle_timeout
        #: Whether the server is stopping (:meth:`drain`).
        self._draining = False
        self.connection: ConnectionInfo | None = None

    @property
    def identified(self) -> bool:
        """Whether TLS has named the client (what the handshake deadline waits for)."""
        return self.connection is not None

    # Connection life ------------------------------------------------------
    def connectionMade(self) -> None:
        factory = getattr(self, "factory", None)
        if isinstance(factory, KmipServerFactory):
            grace = factory.connection_made(self)
            if grace is not None:  # made while the server drains
                self._idle_after = min(self._idle_after, grace)
                self._draining = True
        self._idle_timer = self._clock.callLater(self._idle_after, self._idle)
        # The transport tells this producer when its buffer of unsent bytes goes above its
        # bufferSize (kcm.connection_guard sets it to max_unsent_output) and when it drains.
        self._output_producer = _OutputFull(self)
        self.transport.registerProducer(self._output_producer, True)
        if self._upstream is not None:
            self._upstream_producer = _UpstreamPause(self)
            self._upstream.add_producer(self._upstream_producer)

    def handshakeCompleted(self) -> None:
        principal = self._resolve_principal(self.transport)
        peer = self.transport.getPeer()
        address = self._peer = peer_label(peer)
        if principal is None:
            # The client's first request is answered Permission Denied, then the connection
            # closes: the client learns why, not only that it was cut off. Nothing is handed
            # to handle_request (the handler may record the refusal: refusal_answer); the
            # connection guard's handshake deadline (the connection is never "identified")
            # bounds how long a silent one is kept.
            self._claimed = describe_peer_certificate(self.transport)
            # At most one line per interval: a client with such a certificate may reconnect
            # in a loop (its audit records are coalesced too).
            factory = getattr(self, "factory", None)
            if isinstance(factory, KmipServerFactory):
                factory.refused_identities.note(peer=address, certificate=self._claimed)
                factory.refusals.refused("identity")
            else:
                log.warn(_REFUSED_IDENTITY, peer=address, certificate=self._claimed, count=1,
                         interval="0")
            self._refused_identity = True
            return
        factory = getattr(self, "factory", None)
        if isinstance(factory, KmipServerFactory) and not factory.admit_tenant(self, principal,
                                                                               address):
            # Cut at once, as a connection over max_connections is at accept: a refused
            # connection kept open until its first request would hold a slot it was
            # refused, and a tenant reconnecting in a loop would hold them all again.
            self._close(abort=True)
            return
        self.connection = ConnectionInfo(next(_connection_ids), principal, address)

    def drain(self, grace: float) -> None:
        """The server is stopping: close this connection once it has been idle for
        ``grace`` seconds (no request in progress, no answer unsent; the request being
        answered, and those already received, are answered first), or, for one that keeps
        sending, as soon as an answer leaves nothing read unanswered (a request it sends
        meanwhile is not read, so not run: the client sends it again elsewhere). A
        connection still in its handshake, or just made, gets its first request served."""
        self._draining = True
        self._idle_after = min(self._idle_after, grace)
        if not self._closing:
            self._restart_idle_timer()

    def connectionLost(self, reason: Failure) -> None:
        factory = getattr(self, "factory", None)
        if isinstance(factory, KmipServerFactory):
            factory.connection_gone(self)
        self._closing = True
        for timer in (self._idle_timer, self._message_timer, self._write_timer,
                      self._linger_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._pending.clear()  # never handed over: nothing to stop
        self._framer.clear()  # (now, not when the garbage collector finds this protocol)
        if self._busy and self.connection is not None:
            # Nobody will read the answer of the request in flight: let the handler stop it.
            connection_lost = getattr(self._handler, "connection_lost", None)
            if connection_lost is not None:
                connection_lost(self.connection)
        if self._upstream is not None and self._upstream_producer is not None:
            self._upstream.remove_producer(self._upstream_producer)
            self._upstream_producer = None

    # Reading, paused for any number of reasons ------------------------------
    @property
    def paused_by(self) -> frozenset[str]:
        """Why reading is paused now (empty: it is not)."""
        return frozenset(self._paused_by)

    def pause(self, reason: str) -> None:
        """Stop reading from the client for ``reason`` (until :meth:`resume` with it)."""
        if reason in self._paused_by:
            return
        self._paused_by.add(reason)
        if len(self._paused_by) == 1 and not self._closing:
            self.transport.pauseProducing()
            # The rest of a message begun cannot arrive while we do not read: its time to
            # finish counts again from when we do (every reason to pause has its own bound).
            if self._message_timer is not None and self._message_timer.active():
                self._message_timer.cancel()

    def resume(self, reason: str) -> None:
        """``reason`` no longer holds; reading resumes once no other reason does."""
        if reason not in self._paused_by:
            return
        self._paused_by.discard(reason)
        if not self._paused_by and not self._closing:
            self.transport.resumeProducing()
            self._watch_partial_message()

    # Input ----------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        if self._closing or self._unreadable is not None or self._refusing:
            return
        if self.connection is None:  # data can only follow a verified handshake
            if self._refused_identity:
                self._answer_refused_identity(data)
            else:
                self._close(abort=True)
            return
        try:
            messages = self._framer.feed(data)
        except TtlvError:  # nothing whole before the unusable header
            messages = []
        if messages:
            self._read_any = True
            self._pending.extend(messages)
            if len(self._pending) >= self._limits.max_pending:
                self.pause(PAUSED_BY_PENDING)
        if self._framer.error is not None:
            # The requests read before it (in this read or earlier ones) are still
            # answered, in order: the refusal or the close follows the last of them.
            self._unreadable = self._framer.error
        if messages or self._unreadable is not None:
            self._process()
        # The timers once the requests are on their way (answered, or sent on to where
        # they are answered): none of a request's path. They are set in the same turn.
        if self._closing:
            return
        self._restart_idle_timer()
        if self._framer.buffered:  # the rest of a message may wait for our ACK (Nagle)
            acknowledge_now = getattr(self.transport, "acknowledge_now", None)
            if acknowledge_now is not None:
                acknowledge_now()
        self._watch_partial_message()

    def _answer_refused_identity(self, data: bytes) -> None:
        """Answer the first whole request of a client refused for its identity with
        Permission Denied, and close; anything that is not a KMIP message closes at once."""
        try:
            messages = self._framer.feed(data)
        except TtlvError:  # MessageTooLarge included: not worth reading further
            self._close(abort=True)
            return
        if messages:
            self._refuse(RESULT_REASON_PERMISSION_DENIED, IDENTITY_REFUSED)

    def _watch_partial_message(self) -> None:
        """A message begun must be finished in time: a slow sender holds nothing for long.
        Only time while reading counts (:meth:`pause`)."""
        if self._paused_by:
            return
        if self._framer.buffered:
            if self._message_timer is None or not self._message_timer.active():
                self._message_timer = self._clock.callLater(
                    self._limits.message_timeout, self._slow_message)
        elif self._message_timer is not None and self._message_timer.active():
            self._message_timer.cancel()

    # Processing, strictly in order ----------------------------------------
    def _process(self) -> None:
        share = self._share
        while (self._pending and not self._busy and not self._closing
               and PAUSED_BY_OUTPUT not in self._paused_by):
            if share is not None:
                tenant = self.connection.principal.tenant
                used = share.spent.get(tenant, 0.0)
                if used >= share.turn_time:
                    # Its tenant has had its time: the rest waits for its next turn.
                    self.pause(PAUSED_BY_SHARE)
                    share.park(tenant, self)
                    break
                started = share.clock()
            wire = self._pending.popleft()
            try:
                result = self._handler.handle_request(wire, self.connection)
            except Exception:
                self._bug(Failure())
                continue
            if isinstance(result, Deferred):
                self._busy = True
                result.addCallbacks(self._answered, self._bug_async)
                if share is not None:
                    share.spent[tenant] = used + share.clock() - started
                break
            self.transport.write(result)
            if share is not None:
                share.spent[tenant] = used + share.clock() - started
        if (self._unreadable is not None and not self._pending and not self._busy
                and not self._closing and PAUSED_BY_OUTPUT not in self._paused_by):
            self._end_of_stream(self._unreadable)
            return
        # Also while an answer is awaited: what counts is how many requests wait behind it.
        if len(self._pending) < self._limits.max_pending // 2:
            self.resume(PAUSED_BY_PENDING)
        if (self._draining and self._read_any and not self._pending and not self._busy
                and not self._framer.buffered and not self._closing
                and self._unreadable is None and not self._refusing):
            self._close(abort=False)  # (its answers are sent first)

    def next_turn(self) -> None:
        """Its tenant's next turn of the reactor (parked by :meth:`_process`): read and
        answer again."""
        if self._closing:
            return
        self.resume(PAUSED_BY_SHARE)
        self._process()

    def _end_of_stream(self, error: TtlvError) -> None:
        """Every request read before the unusable header ``error`` is answered: refuse a
        message too large (a client waiting for its answer reads that it was too large),
        close on any other. With no request read before it, the sender was never a KMIP
        client and the connection is aborted; otherwise it closes once the answers
        written are sent."""
        factory = getattr(self, "factory", None)
        refusals = factory.refusals if isinstance(factory, KmipServerFactory) else None
        if isinstance(error, MessageTooLarge):
            self._closed_line("too_large", peer=self.connection.peer, reason=error.reason)
            if refusals is not None:
                refusals.refused("too_large")
            self._refuse(RESULT_REASON_INVALID_MESSAGE, f"request too large: {error.reason}")
            return
        if refusals is not None:
            refusals.refused("unreadable")
        self._closed_line("unreadable", peer=self.connection.peer, reason=error.reason)
        self._close(abort=not self._read_any)

    def _closed_line(self, kind: str, **fields: object) -> None:
        """Log why this connection is closed or refused (``kind``, one of
        :data:`CLOSED_LINES`): through the factory's line of that kind, at most one an
        interval (a client can reconnect and repeat it as often as it likes); without a
        factory, at once."""
        factory = getattr(self, "factory", None)
        line = factory.closed_lines.get(kind) if isinstance(factory, KmipServerFactory) \
            else None
        if line is None:
            line = ThrottledLine(self._clock, CLOSED_LINES[kind], logger=log,
                                 level=LogLevel.info)
        line.note(**fields)

    def _answered(self, response: bytes) -> None:
        self._busy = False
        if not self._closing:
            self.transport.write(response)
            self._restart_idle_timer()
            self._process()

    def _bug_async(self, failure: Failure) -> None:
        self._busy = False
        self._bug(failure)
        self._restart_idle_timer()
        self._process()

    def _bug(self, failure: Failure) -> None:
        log.failure("request handler failed on {peer}", failure, peer=self.connection.peer)
        if not self._closing:
            self.transport.write(self._handler.failure_response(
                RESULT_REASON_GENERAL_FAILURE, "internal error; see the server log"))

    # Unsent output --------------------------------------------------------
    def _output_full(self) -> None:
        """More answers wait in the transport than ``max_unsent_output``: handle no further
        request, read none, and give the client ``write_timeout`` to take them."""
        if self._closing:
            return
        self.pause(PAUSED_BY_OUTPUT)
        if self._write_timer is None or not self._write_timer.active():
            self._write_timer = self._clock.callLater(self._limits.write_timeout,
                                                      self._not_reading)

    def _output_drained(self) -> None:
        if self._write_timer is not None and self._write_timer.active():
            self._write_timer.cancel()
        if self._closing:
            return
        self.resume(PAUSED_BY_OUTPUT)
        self._restart_idle_timer()
        self._process()

    def _not_reading(self) -> None:
        peer = self.connection.peer if self.connection is not None else "?"
        self._closed_line("not_reading", peer=peer, t=self._limits.write_timeout,
                          size=self._limits.max_unsent_output)
        self._close(abort=True)

    # Closing --------------------------------------------------------------
    def _refuse(self, reason: int, message: str) -> None:
        """Answer a request refused whole (:func:`refusal_answer`), then close; nothing
        more is read meanwhile (an answer recorded first comes later)."""
        if self._refusing:
            return
        self._refusing = True
        connection = self.connection
        answer = refusal_answer(self._handler, Refusal(
            reason, message, connection.peer if connection is not None else self._peer,
            connection.principal if connection is not None else None,
            self._claimed if connection is None else None))
        if isinstance(answer, Deferred):
            self._busy = True  # (the client awaits an answer: it is not idle)
            answer.addCallback(self._refused)
        else:
            self._refused(answer)

    def _refused(self, answer: bytes) -> None:
        self._busy = False
        if not self._closing:
            self.transport.write(answer)
            self._close(abort=False)

    def _idle(self) -> None:
        if self._busy or PAUSED_BY_OUTPUT in self._paused_by:
            # The client waits for an answer, it is not idle: the idle time counts again
            # from that answer (_restart_idle_timer), and the request has its own deadline.
            # Answers it has not taken yet are the write timeout's to judge; a polite close
            # would wait for them to be sent.
            return
        self._close(abort=False)

    def _restart_idle_timer(self) -> None:
        if self._closing:
            return
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.reset(self._idle_after)
        else:
            self._idle_timer = self._clock.callLater(self._idle_after, self._idle)

    def _slow_message(self) -> None:
        if self.connection is not None:
            self._closed_line("slow_message", peer=self.connection.peer,
                              t=self._limits.message_timeout)
        self._close(abort=True)

    def _close(self, *, abort: bool) -> None:
        if self._closing:
            return
        self._closing = True
        if self._output_producer is not None:
            # A TLS transport with a producer registered waits for it before closing.
            self._output_producer = None
            self.transport.unregisterProducer()
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()
            self._linger_timer = self._clock.callLater(CLOSE_LINGER, self._lingered, 0.0)

    def _lingered(self, waited: float) -> None:
        """A polite close (its answers sent, then TLS's close_notify) waits for the
        client's close_notify, reading and dropping what the client still sends (closing
        on unread bytes would send a reset that loses the answer). A client that holds
        its connection without reading never sends one: kept open, the connection stayed
        counted against ``max_connections``, and every stop with one connected waited out
        its whole ``drain_timeout``. So once the answers have gone, the client has
        :data:`CLOSE_LINGER` seconds more; then the connection is cut."""
        waited += CLOSE_LINGER
        if _still_sending(self.transport) and waited < self._limits.write_timeout:
            self._linger_timer = self._clock.callLater(CLOSE_LINGER, self._lingered, waited)
            return
        self._linger_timer = None
        self.transport.abortConnection()


#: Seconds a politely closed connection waits for the client's close_notify once its
#: answers have gone (:meth:`KmipServerProtocol._lingered`), then is cut.
CLOSE_LINGER = 2.0


def _still_sending(transport: Any) -> bool:
    """Whether ``transport`` (a TLS connection, or a plain one) still holds bytes written
    and not yet handed to the kernel: its answers are still going out."""
    if getattr(transport, "_appSendBuffer", None):
        return True
    for layer in (transport, getattr(transport, "transport", None)):
        if layer is not None and (getattr(layer, "dataBuffer", b"")
                                  or getattr(layer, "_tempDataBuffer", None)):
            return True
    return False


@implementer(IPushProducer)
class _UpstreamPause:
    """A connection as a producer its upstream pauses and resumes, apart from the pauses
    the connection decides itself (the upstream's flag is one reason among several)."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: KmipServerProtocol) -> None:
        self._protocol = protocol

    def pauseProducing(self) -> None:
        self._protocol.pause(PAUSED_BY_UPSTREAM)

    def resumeProducing(self) -> None:
        self._protocol.resume(PAUSED_BY_UPSTREAM)

    def stopProducing(self) -> None:
        """Nothing to stop: the connection closes on its own terms."""


@implementer(IPushProducer)
class _OutputFull:
    """A connection as the producer of its transport: paused when the transport holds more
    unsent bytes than its buffer size, resumed when it has sent them all."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: KmipServerProtocol) -> None:
        self._protocol = protocol

    def pauseProducing(self) -> None:
        self._protocol._output_full()

    def resumeProducing(self) -> None:
        self._protocol._output_drained()

    def stopProducing(self) -> None:
        """The transport is going away; connectionLost follows."""


_REFUSED_IDENTITY = ("refused connection from {peer}: no acceptable identity ({certificate}); "
                     "{count} such connection(s) in the last {interval} s")
_REFUSED_TENANT = ("refused {count} connection(s) of tenant {tenant} over "
                   "limits.max_connections_per_tenant ({limit}) in the last {interval} s; "
                   "last from {peer}")
#: The info lines of connections closed (or requests refused) for what their client sent or
#: did not read, by kind: each written at most once an interval with how many it stands for
#: (one line a connection let a client that reconnects in a loop write hundreds a second).
CLOSED_LINES = {
    "too_large": ("refusing a request from {peer}: too large ({reason}); {count} such "
                  "request(s) in the last {interval} s"),
    "unreadable": ("closing {peer}: unreadable message header ({reason}); {count} such "
                   "connection(s) in the last {interval} s"),
    "slow_message": ("closing {peer}: message not completed within {t}s; {count} such "
                     "connection(s) in the last {interval} s"),
    "not_reading": ("closing {peer}: its answers were not read within {t}s (more than "
                    "{size} bytes unsent); {count} such connection(s) in the last "
                    "{interval} s"),
}


class KmipServerFactory(Factory):
    """Builds a :class:`KmipServerProtocol` per connection, sharing handler and limits (and,
    at the gateway, the ``upstream`` that may pause reading from every connection)."""

    def __init__(self, handler: RequestHandler, limits: ConnectionLimits,
                 resolve_principal: PrincipalResolver, clock: IReactorTime,
                 upstream: Upstream | None = None,
                 refusals: ConnectionRefusals | None = None,
                 share: WorkShare | None = None) -> None:
        """``refusals``: where refused connections are counted (the process's, shared with
        its connection guard; None: a count of this factory's own); ``share``: each
        tenant's share of the reactor (the gateway's; None: none)."""
        self.handler = handler
        self.share = share
        self.limits = limits
        self.resolve_principal = resolve_principal
        self.clock = clock
        self.upstream = upstream
        self.refusals = refusals if refusals is not None else ConnectionRefusals()
        #: The warning of a connection whose certificate names no acceptable identity.
        self.refused_identities = ThrottledLine(clock, _REFUSED_IDENTITY, logger=log,
                                                level=LogLevel.warn)
        #: The warning of a connection refused over ``max_connections_per_tenant``.
        self.refused_tenants = ThrottledLine(clock, _REFUSED_TENANT, logger=log,
                                             level=LogLevel.warn)
        #: The info lines of connections closed for what their clients sent or did not
        #: read (:data:`CLOSED_LINES`), each at most once an interval.
        self.closed_lines = {kind: ThrottledLine(clock, message, logger=log,
                                                 level=LogLevel.info)
                             for kind, message in CLOSED_LINES.items()}
        #: The connections open now (made and not yet lost: bounded by the listener's
        #: connection caps).
        self.connections: set[KmipServerProtocol] = set()
        #: The identified connections of each tenant open now (its principals': none for a
        #: principal of no tenant), at most ``max_connections_per_tenant`` each.
        self._tenant_connections: dict[str, set[KmipServerProtocol]] = {}
        #: While draining: the grace, and who waits for the last connection to close.
        self._drain_grace: float | None = None
        self._drained: list[Deferred[None]] = []

    def startFactory(self) -> None:
        limits = self.limits
        if limits.tenant_connections > limits.max_connections:
            log.warn("limits.max_connections_per_tenant ({per_tenant}) exceeds "
                     "limits.max_connections ({most}) and bounds nothing: one tenant may "
                     "take every connection; lower it, or leave it unset (half of "
                     "max_connections)", per_tenant=limits.tenant_connections,
                     most=limits.max_connections)

    def stopFactory(self) -> None:
        # The listener stops: no more refusals; the last counted ones are written.
        self.refused_identities.flush()
        self.refused_tenants.flush()
        for line in self.closed_lines.values():
            line.flush()

    def buildProtocol(self, addr: object) -> KmipServerProtocol:
        protocol = KmipServerProtocol(self.handler, self.limits, self.resolve_principal,
                                      self.clock, self.upstream, self.share)
        protocol.factory = self
        return protocol

    def connection_made(self, protocol: KmipServerProtocol) -> float | None:
        """``protocol`` is connected: counted until it is lost; the drain's grace if the
        server drains."""
        self.connections.add(protocol)
        return self._drain_grace

    def admit_tenant(self, protocol: KmipServerProtocol, principal: Principal,
                     peer: str) -> bool:
        """Whether ``protocol``, identified as ``principal``, may be served: False (counted
        and logged as refused) when its tenant already holds ``max_connections_per_tenant``
        connections; otherwise it is counted until lost."""
        tenant = principal.tenant
        if tenant is None:
            return True
        held = self._tenant_connections.setdefault(tenant, set())
        limit = self.limits.tenant_connections
        if len(held) >= limit:
            self.refusals.refused("limit")
            self.refused_tenants.note(tenant=tenant, limit=limit, peer=peer)
            return False
        held.add(protocol)
        return True

    def connection_gone(self, protocol: KmipServerProtocol) -> None:
        self.connections.discard(protocol)
        connection = protocol.connection
        tenant = connection.principal.tenant if connection is not None else None
        if tenant is not None:
            held = self._tenant_connections.get(tenant)
            if held is not None:
                held.discard(protocol)
                if not held:
                    del self._tenant_connections[tenant]
        if not self.connections and self._drained:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def drain(self, grace: float) -> Deferred[None]:
        """Close every connection once it has been idle ``grace`` seconds
        (:meth:`KmipServerProtocol.drain`), new ones too; fires when none is left (the
        caller bounds the wait: a client may keep a connection busy)."""
        self._drain_grace = grace
        d: Deferred[None] = Deferred(lambda d: self._drained.remove(d))  # (given up on)
        if not self.connections:
            d.callback(None)
            return d
        self._drained.append(d)
        for protocol in list(self.connections):
            protocol.drain(grace)
        return d
