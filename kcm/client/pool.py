"""The Twisted client: :class:`KmipClient`, a small pool of persistent, pipelined
mutual-TLS connections over a list of endpoints with failover.

Every method of :class:`~kcm.client.operations.Operations` returns a Deferred. A request goes
to the open connection with the fewest outstanding requests; a new connection is opened
(up to ``size``) only when every open one has work outstanding, so a quiet client holds one
connection and a busy one spreads over ``size``. Connections are opened to the preferred
endpoint (the first of the list, or the last that worked); when it refuses, the next one in
order is tried, wrapping around once, and the one that accepts becomes the preferred one.

A request that fails because its connection broke (:class:`KmipClientError`) is sent once
more, on a fresh connection, when its operation is idempotent (reads, Encrypt, Decrypt,
Query…; :data:`IDEMPOTENT`); others fail to the caller, who knows whether to retry. The
reactor is passed in; nothing happens at construction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from kcm.client.endpoints import Endpoint, TlsFiles, parse_endpoint
from kcm.client.errors import KmipClientError
from kcm.client.operations import Operations
from kcm.client.protocol import DEFAULT_MAX_IN_FLIGHT, DEFAULT_TIMEOUT, KmipClientProtocol
from kcm.client.wire import DEFAULT_VERSION, IDEMPOTENT, result_of
from kcm.kmip.enums import Operation
from kcm.kmip.messages import RequestBatchItem, ResponseMessage

__all__ = ["IDEMPOTENT", "KmipClient", "tls_endpoint_factory"]

def tls_endpoint_factory(reactor: Any, tls: TlsFiles, endpoints: Sequence[Endpoint], *,
                         connect_timeout: float = 10.0
                         ) -> Callable[[Endpoint], IStreamClientEndpoint]:
    """Mutual-TLS client endpoints (TLS 1.2+, the server's certificate verified against
    ``tls.ca`` and its name against the endpoint's host) for ``endpoints``. Reads the files
    now: a wrong file fails here (:class:`KmipClientError`), not at the first request."""
    from kcm.tls import client_tls_options, tls_client_endpoint

    try:
        options = {e.host: client_tls_options(tls.cert, tls.key, tls.ca, e.host)
                   for e in endpoints}
    except Exception as e:  # OSError, or OpenSSL's and cryptography's errors for bad PEM
        raise KmipClientError(f"cannot load the client's certificate, key or CA: {e}") from e

    def endpoint_for(endpoint: Endpoint) -> IStreamClientEndpoint:
        host = endpoint.host.replace(":", "\\:")
        return tls_client_endpoint(
            reactor, f"tcp:{host}:{endpoint.port}:timeout={connect_timeout:g}",
            options[endpoint.host])

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
        self.reactor = reactor
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.size = size
        self.version = version
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self._connect_to = connect_to
        self._preferred = 0
        self._connections: list[KmipClientProtocol] = []
        self._opening = False
        self._waiters: list[Deferred[KmipClientProtocol]] = []
        self._closed = False

    @classmethod
    def tls(cls, reactor: Any, endpoints: Sequence[Endpoint | str], *, cert: str, key: str,
            ca: str, **options: Any) -> KmipClient:
        """A client over mutual TLS with the client's ``cert`` and ``key`` and the ``ca``."""
        parsed = [parse_endpoint(e) for e in endpoints]
        return cls(reactor, parsed, tls_endpoint_factory(reactor, TlsFiles(cert, key, ca),
                                                         parsed), **options)

    @property
    def endpoint(self) -> Endpoint:
        """The endpoint new connections go to first."""
        return self.endpoints[self._preferred]

    @property
    def connections(self) -> int:
        """Open connections."""
        return sum(1 for c in self._connections if c.usable)

    # Requests -----------------------------------------------------------------------------------

    def send(self, items: Sequence[RequestBatchItem]) -> Deferred[ResponseMessage]:
        """Send one request message of ``items`` (a batch); its whole response."""
        if self._closed:
            return _fail(KmipClientError("the client is closed"))
        d = self._connection()
        d.addCallback(lambda connection: connection.send(self.version, items))
        return d

    def call(self, operation: Operation, payload: Any) -> Deferred[Any]:
        """Send ``operation`` with ``payload``; a Deferred firing with the response payload of
        a successful answer (failing with :class:`KmipOperationFailed` or
        :class:`KmipClientError`)."""
        d = self._call_once(operation, payload)
        if operation in IDEMPOTENT:
            d.addErrback(self._again, operation, payload)
        return d

    def _call_once(self, operation: Operation, payload: Any) -> Deferred[Any]:
        d = self.send([RequestBatchItem(operation=operation, request_payload=payload)])
        d.addCallback(_one_result, operation)
        return d

    def _again(self, failure: Failure, operation: Operation, payload: Any) -> Any:
        failure.trap(KmipClientError)
        if self._closed:
            return failure
        return self._call_once(operation, payload)

    def _run(self, operation: Operation, payload: Any, shape: Callable[[Any], Any]) -> Any:
        return self.call(operation, payload).addCallback(shape)

    # Connections ------------------------------------------------------------------------

    def _connection(self) -> Deferred[KmipClientProtocol]:
        self._connections = [c for c in self._connections if c.usable]
        if self._connections:
            best = min(self._connections, key=lambda c: c.outstanding)
            if best.outstanding == 0 or len(self._connections) >= self.size or self._opening:
                return succeed(best)
        waiter: Deferred[KmipClientProtocol] = Deferred()
        self._waiters.append(waiter)
        if not self._opening:
            self._opening = True
            self._open(0, []).addBoth(self._opened)
        return waiter

    def _opened(self, result: Any) -> None:
        self._opening = False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _open(self, step: int, errors: list[str]) -> Deferred[KmipClientProtocol]:
        index = (self._preferred + step) % len(self.endpoints)
        endpoint = self.endpoints[index]
        factory = Factory.forProtocol(lambda: KmipClientProtocol(
            self.reactor, max_in_flight=self.max_in_flight, timeout=self.timeout))
        d = self._connect_to(endpoint).connect(factory)

        def connected(connection: KmipClientProtocol) -> KmipClientProtocol:
            self._preferred = index
            self._connections.append(connection)
            return connection

        def refused(failure: Failure) -> Any:
            errors.append(f"{endpoint}: {failure.getErrorMessage()}")
            if step + 1 < len(self.endpoints):
                return self._open(step + 1, errors)
            raise KmipClientError("no endpoint answered: " + "; ".join(errors))

        return d.addCallbacks(connected, refused)

    def close(self) -> Deferred[Any]:
        """Close every connection; a Deferred firing once they are closed."""
        self._closed = True
        closing = [c.lost for c in self._connections if c.usable]
        for connection in self._connections:
            connection.close()
        self._connections = []
        return DeferredList(closing, consumeErrors=True)


def _one_result(response: ResponseMessage, operation: Operation) -> Any:
    if len(response.batch_items) != 1:
        raise KmipClientError(f"the server answered {len(response.batch_items)} batch items "
                              "to a request of one")
    return result_of(operation, response.batch_items[0])


def _fail(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(error)
    return d
