"""The Twisted client: :class:`KmipClient`, a small pool of persistent, pipelined
mutual-TLS connections over a list of endpoints with failover.

Every method of :class:`~kcm.client.operations.Operations` returns a Deferred. A request goes
to the open connection to the preferred endpoint with the fewest outstanding requests; a new
connection is opened (up to ``size``) only when every such one has work outstanding, so a
quiet client holds one connection and a busy one spreads over ``size``. Connections are
opened to the preferred endpoint (the first of the list, or the last that worked); when it
refuses, the next one in order is tried, wrapping around once, and the one that accepts
becomes the preferred one. Over TLS (:meth:`KmipClient.tls`) an endpoint has accepted only
once the TLS handshake has completed, within ``connect_timeout``: a server that takes TCP
connections but does not answer (stopped, hung) or fails the handshake is a refusal.

``timeout`` bounds each call as a whole, as the blocking client's does: the wait for a
connection (every attempt along the list), the request in the connection's queue, its
answer, and its resend on failover share one deadline, and when it passes the call fails
with :class:`KmipClientError` ("no answer within 30 s (the call's timeout)"). A connection
attempt goes on after the call that asked for it has failed (within ``connect_timeout``),
for the calls that come next.

A connection that fails a request without answering it (it broke, or the answer did not come
within ``timeout``; not a request whose deadline passed while it still waited in the
connection's queue, never sent) gives up its endpoint: the next one in the list becomes the
preferred one, and the connections still open to the old one take no new requests and are
closed once idle. The request is then sent once more, on a connection to the new preferred endpoint,
when its operation is idempotent (reads, Encrypt, Decrypt, Query…; :data:`IDEMPOTENT`);
others fail to the caller, who knows whether to retry. The reactor is passed in; nothing
happens at construction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from kcm.client.endpoints import (
    DEFAULT_CONNECT_TIMEOUT,
    Endpoint,
    TlsFiles,
    connect_timeout_for,
    parse_endpoint,
)
from kcm.client.errors import KmipClientError
from kcm.client.operations import Operations
from kcm.client.protocol import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_TIMEOUT,
    KmipClientProtocol,
    NotSent,
)
from kcm.client.wire import DEFAULT_VERSION, IDEMPOTENT, positive_timeout, result_of
from kcm.conformance.client import temporary
from kcm.kmip.enums import Operation
from kcm.kmip.messages import RequestBatchItem, ResponseMessage

__all__ = ["IDEMPOTENT", "KmipClient", "tls_endpoint_factory"]


def tls_endpoint_factory(reactor: Any, tls: TlsFiles, endpoints: Sequence[Endpoint], *,
                         connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
                         ) -> Callable[[Endpoint], IStreamClientEndpoint]:
    """Mutual-TLS client endpoints (TLS 1.2+, the server's certificate verified against
    ``tls.ca`` and its name against the endpoint's host) for ``endpoints``, each connected
    once its TLS handshake is done, the TCP connection and the handshake each within
    ``connect_timeout``. Reads the files now: a wrong file fails here
    (:class:`KmipClientError`), not at the first request."""
    from kcm.eager_tls import EagerTLSClientEndpoint
    from kcm.tcp_client import tcp_client_endpoint
    from kcm.tls import client_tls_options

    try:
        options = {e.host: client_tls_options(tls.cert, tls.key, tls.ca, e.host)
                   for e in endpoints}
    except Exception as e:  # OSError, or OpenSSL's and cryptography's errors for bad PEM
        raise KmipClientError(f"cannot load the client's certificate, key or CA: {e}") from e

    def endpoint_for(endpoint: Endpoint) -> IStreamClientEndpoint:
        # (What the endpoint string "tcp:HOST:PORT" makes, with a timeout that may be a
        # fraction of a second: the string's parser takes whole seconds only. A host name
        # is resolved to IPv6 addresses as well as IPv4 ones.)
        tcp = tcp_client_endpoint(reactor, endpoint.host, endpoint.port,
                                  timeout=connect_timeout)
        return EagerTLSClientEndpoint(options[endpoint.host], tcp,
                                      handshake_timeout=connect_timeout, clock=reactor)

    return endpoint_for


class KmipClient(Operations):
    """A pool of up to ``size`` pipelined connections to the first answering of
    ``endpoints``; see the module's docstring.

    ``connect_to(endpoint)`` gives the Twisted client endpoint of an :class:`Endpoint`
    (:func:`tls_endpoint_factory`, which :meth:`tls` uses); tests pass plain TCP or
    in-memory ones.
    """

    def __init__(self, reactor: IReactorTime, endpoints: Sequence[Endpoint | str],
                 connect_to: Callable[[Endpoint], IStreamClientEndpoint], *, size: int = 2,
                 version: tuple[int, int] = DEFAULT_VERSION,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        if not endpoints:
            raise ValueError("no endpoint to connect to")
        if size < 1:
            raise ValueError("the pool's size must be at least 1")
        timeout = positive_timeout(timeout)
        self.reactor = reactor
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.size = size
        self.version = version
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self._late_message = f"no answer within {timeout:g} s (the call's timeout)"
        self._connect_to = connect_to
        self._preferred = 0
        self._connections: list[KmipClientProtocol] = []
        #: The index in ``endpoints`` of each connection's endpoint.
        self._endpoint_of: dict[KmipClientProtocol, int] = {}
        self._opening = False
        self._waiters: list[Deferred[KmipClientProtocol]] = []
        self._closed = False
        #: Until when no further connection is tried while one is open (one just failed).
        self._more_after = float("-inf")
        #: What the endpoints tried by the opening in progress did (for a call that ends
        #: while it goes on).
        self._open_errors: list[str] = []

    @classmethod
    def tls(cls, reactor: Any, endpoints: Sequence[Endpoint | str], *, cert: str, key: str,
            ca: str, connect_timeout: float | None = None, **options: Any) -> KmipClient:
        """A client over mutual TLS with the client's ``cert`` and ``key`` and the ``ca``;
        each connection (TCP, then the TLS handshake) within ``connect_timeout`` (default:
        10 s, or ``timeout`` divided by the number of endpoints if less, as the blocking
        client's: :func:`~kcm.client.endpoints.connect_timeout_for`)."""
        parsed = [parse_endpoint(e) for e in endpoints]
        connect_timeout = connect_timeout_for(options.get("timeout", DEFAULT_TIMEOUT),
                                              len(parsed), connect_timeout)
        return cls(reactor, parsed, tls_endpoint_factory(reactor, TlsFiles(cert, key, ca), parsed,
                                                         connect_timeout=connect_timeout),
                   **options)

    @property
    def endpoint(self) -> Endpoint:
        """The endpoint new connections go to first."""
        return self.endpoints[self._preferred]

    @property
    def connections(self) -> int:
        """Open connections."""
        return sum(1 for c in self._connections if c.usable)

    # Requests -----------------------------------------------------------------------------------

    def send(self, items: Sequence[RequestBatchItem], *, deadline: float | None = None
             ) -> Deferred[ResponseMessage]:
        """Send one request message of ``items`` (a batch); its whole response, by
        ``deadline`` (on the reactor's ``seconds()``; default: ``timeout`` from now)."""
        if self._closed:
            return _fail(KmipClientError(_CLOSED))
        if deadline is None:
            deadline = self.reactor.seconds() + self.timeout
        left = deadline - self.reactor.seconds()
        if left <= 0:
            return _fail(self._late())
        d = self._connection()
        if not d.called:  # waiting for a connection being made
            d.addTimeout(left, self.reactor,
                         onTimeoutCancel=lambda _, __: Failure(self._late(self._open_errors)))
        d.addCallback(self._send_on, items, deadline)
        return d

    def _late(self, errors: Sequence[str] = ()) -> KmipClientError:
        return temporary(KmipClientError(self._late_message
                                         + (": " + "; ".join(errors) if errors else "")))

    def _send_on(self, connection: KmipClientProtocol, items: Sequence[RequestBatchItem],
                 deadline: float) -> Deferred[ResponseMessage]:
        if self.reactor.seconds() >= deadline:  # (a connection made just then: kept)
            return _fail(self._late())
        d = connection.send(self.version, items, deadline=deadline, late=self._late_message)
        d.addErrback(self._unanswered, connection)
        return d

    def _unanswered(self, failure: Failure, connection: KmipClientProtocol) -> Failure:
        """A request its connection failed without an answer (it broke or timed out): that
        connection's endpoint gives way to the next (once, however many requests it
        fails), before the caller's retry asks for a connection. A request that timed out
        still queued behind ``max_in_flight`` (:class:`NotSent`) was never sent: it
        says nothing of the endpoint, which is kept."""
        index = self._endpoint_of.get(connection)
        if (failure.check(KmipClientError) and not failure.check(NotSent)
                and not self._closed and index == self._preferred):
            self._preferred = (index + 1) % len(self.endpoints)
        return failure

    def call(self, operation: Operation, payload: Any) -> Deferred[Any]:
        """Send ``operation`` with ``payload``; a Deferred firing with the response payload of
        a successful answer (failing with :class:`KmipOperationFailed` or
        :class:`KmipClientError`)."""
        deadline = self.reactor.seconds() + self.timeout
        d = self._call_once(operation, payload, deadline)
        if operation in IDEMPOTENT:
            d.addErrback(self._again, operation, payload, deadline)
        return d

    def _call_once(self, operation: Operation, payload: Any, deadline: float
                   ) -> Deferred[Any]:
        d = self.send([RequestBatchItem(operation=operation, request_payload=payload)],
                      deadline=deadline)
        d.addCallback(_one_result, operation)
        return d

    def _again(self, failure: Failure, operation: Operation, payload: Any,
               deadline: float) -> Any:
        """Send an idempotent request once more, time allowing (within the same call)."""
        failure.trap(KmipClientError)
        if self._closed or self.reactor.seconds() >= deadline:
            return failure
        return self._call_once(operation, payload, deadline)

    def _run(self, operation: Operation, payload: Any, shape: Callable[[Any], Any]) -> Any:
        return self.call(operation, payload).addCallback(shape)

    # Connections ------------------------------------------------------------------------

    def _connection(self) -> Deferred[KmipClientProtocol]:
        self._forget_unusable()
        here = [c for c in self._connections if self._endpoint_of[c] == self._preferred]
        if here:
            best = min(here, key=lambda c: c.outstanding)
            if (best.outstanding == 0 or len(here) >= self.size or self._opening
                    or self.reactor.seconds() < self._more_after):
                return succeed(best)
        # (Cancelled when its call's deadline passes: it leaves the waiters, and the
        # opening goes on for the others and the calls to come.)
        waiter: Deferred[KmipClientProtocol] = Deferred(self._forget_waiter)
        self._waiters.append(waiter)
        if not self._opening:
            self._opening = True
            self._open_errors = []
            # (maybeDeferred: an exception raised before the first connect must reach the
            # waiters too, and end this opening, or every later request would wait for it.)
            maybeDeferred(self._open, 0, self._open_errors).addBoth(self._opened)
        return waiter

    def _forget_waiter(self, waiter: Deferred[KmipClientProtocol]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def _forget_unusable(self) -> None:
        """Drop the connections that closed, and close those to an endpoint given up once
        they are idle (their outstanding requests still get answers): at once, since that
        endpoint may no longer answer a TLS close."""
        kept = []
        for connection in self._connections:
            if connection.usable and self._endpoint_of[connection] != self._preferred \
                    and connection.outstanding == 0:
                connection.abort()
            if connection.usable:
                kept.append(connection)
            else:
                del self._endpoint_of[connection]
        self._connections = kept

    def _opened(self, result: Any) -> None:
        self._opening = False
        waiters, self._waiters = self._waiters, []
        if isinstance(result, Failure) and not self._closed:
            # A further connection failed (the server's cap on connections from one
            # address, a slow handshake) while one is open: its waiters go on that one
            # rather than fail requests never sent, and no other is tried for a while.
            # (Only to the preferred endpoint: those to an endpoint given up take no new
            # requests, docs/sdk.md.)
            open_ = [c for c in self._connections
                     if c.usable and self._endpoint_of[c] == self._preferred]
            if open_:
                self._more_after = self.reactor.seconds() + MORE_CONNECTIONS_BACKOFF
                result = min(open_, key=lambda c: c.outstanding)
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _open(self, step: int, errors: list[str], passing: bool = True
              ) -> Deferred[KmipClientProtocol]:
        index = (self._preferred + step) % len(self.endpoints)
        endpoint = self.endpoints[index]
        factory = Factory.forProtocol(lambda: KmipClientProtocol(
            self.reactor, max_in_flight=self.max_in_flight, timeout=self.timeout))
        d = self._connect_to(endpoint).connect(factory)

        def connected(connection: KmipClientProtocol) -> Any:
            if self._closed:  # close() came while this connection was being made
                return _closed_once_lost(connection)
            self._preferred = index
            self._connections.append(connection)
            self._endpoint_of[connection] = index
            return connection

        def refused(failure: Failure) -> Any:
            if self._closed:
                raise KmipClientError(_CLOSED)
            errors.append(f"{endpoint}: {failure.getErrorMessage()}")
            # (temporary if every endpoint's failure was, as for the blocking client)
            still_passing = passing and _may_pass(failure)
            if step + 1 < len(self.endpoints):
                return self._open(step + 1, errors, still_passing)
            failed = KmipClientError("no endpoint answered: " + "; ".join(errors))
            raise temporary(failed) if still_passing else failed

        return d.addCallbacks(connected, refused)

    def close(self) -> Deferred[Any]:
        """Close every connection; a Deferred firing once they are closed."""
        self._closed = True
        closing = [c.lost for c in self._connections if c.usable]
        for connection in self._connections:
            connection.close()
        self._connections = []
        self._endpoint_of.clear()
        if self._opening:  # the connection being made is closed when it is made
            settled: Deferred[KmipClientProtocol] = Deferred()
            self._waiters.append(settled)
            closing.append(settled)
        return DeferredList(closing, consumeErrors=True)


_CLOSED = "the client is closed"
#: Seconds without trying a further connection after one failed while another was open.
MORE_CONNECTIONS_BACKOFF = 5.0


def _may_pass(failure: Failure) -> bool:
    """Whether a connection attempt that failed with ``failure`` may succeed later
    (:attr:`KmipClientError.temporary`, as the blocking client says): refused, reset,
    unreachable, timed out, or a TLS handshake that broke or took too long; not a host
    name with no address, nor a handshake either side refused."""
    from twisted.internet.error import ConnectError, DNSLookupError
    from twisted.internet.error import TimeoutError as ConnectTimeout

    from kcm.eager_tls import HandshakeFailed

    error = failure.value
    if isinstance(error, HandshakeFailed):
        return error.temporary
    if isinstance(error, (DNSLookupError, KmipClientError)):
        return isinstance(error, KmipClientError) and error.temporary
    return isinstance(error, (ConnectError, ConnectTimeout, ConnectionError, TimeoutError))


def _closed_once_lost(connection: KmipClientProtocol) -> Deferred[Any]:
    """Close ``connection``, made after the client was closed; fails with
    :class:`KmipClientError` once it is gone."""
    gone: Deferred[Any] = Deferred()
    connection.lost.addBoth(lambda _: gone.errback(KmipClientError(_CLOSED)))
    connection.close()
    return gone


def _one_result(response: ResponseMessage, operation: Operation) -> Any:
    if len(response.batch_items) != 1:
        raise KmipClientError(f"the server answered {len(response.batch_items)} batch items "
                              "to a request of one")
    return result_of(operation, response.batch_items[0])


def _fail(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(error)
    return d
