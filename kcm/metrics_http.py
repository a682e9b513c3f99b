"""The metrics and health HTTP listener of kcm-core and kcm-gateway (docs/operations.md,
"Metrics and health"): what :mod:`kcm.metrics` collects, served. Apart from it, so that a
process without a metrics listener imports no HTTP server (Twisted's web, about 35 ms of
every start).

* :func:`metrics_site` answers ``GET /metrics`` (the registry in Prometheus' text format,
  or what an exposition callable answers, which must not block either: kcm-gateway's
  supervisor gathers its workers' that way),
  ``GET /healthz`` (200 while the process serves HTTP at all) and ``GET /readyz`` (200 or
  503 with a small JSON body, from the service's readiness check, which must not block:
  it returns a Deferred). Requests to it are not logged.
* :func:`metrics_listener` is the plain HTTP listener (a Twisted endpoint string, such as
  ``tcp:9696:interface=127.0.0.1``) as a child service; like the KMIP listener it fails
  the process's start when it cannot listen.
* The listener is bounded, since its process also serves KMIP with the same descriptors
  and memory: at most :data:`MAX_CONNECTIONS` connections at once (one more is closed as
  it comes); one request a connection (answered ``Connection: close``; anything sent
  after it is not read); a connection that has not sent a whole request within
  :data:`REQUEST_TIMEOUT` seconds of its start is closed, and one that has not read its
  answer within as long after it is aborted; a request's line and headers take at most
  :data:`MAX_HEAD` bytes; and a method other than
  GET and HEAD, or a request with a body (``Content-Length`` above 0, or
  ``Transfer-Encoding``), is answered 405 or 413 and the connection closed before any of
  the body is read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from kcm.accept_pause import PausedWhenExhausted
from kcm.metrics import STOPPING, Exposition, Readiness, ReadinessCheck
from kcm.peer_address import peer_label
from kcm.throttled_line import ThrottledLine

__all__ = ["MAX_CONNECTIONS", "MAX_HEAD", "REQUEST_TIMEOUT", "metrics_listener",
           "metrics_site"]


log = Logger()


def _render_later(request: Request, result: Deferred[Any],
                  write: Callable[[Request, Any], None]) -> Any:
    """Answer ``request`` with ``write(request, value)`` once ``result`` fires with a
    value (it never fails), unless the client has left meanwhile."""
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def answer(value: Any) -> None:
        if not gone:
            write(request, value)
            request.finish()

    result.addCallback(answer)
    return NOT_DONE_YET


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, exposition: Exposition) -> None:
        super().__init__()
        self.exposition = exposition

    def render_GET(self, request: Request) -> Any:
        def failed(failure: Failure) -> None:
            log.failure("the metrics could not be gathered", failure)
            return None

        return _render_later(request, maybeDeferred(self.exposition).addErrback(failed),
                             self._write)

    @staticmethod
    def _write(request: Request, body: bytes | None) -> None:
        if body is None:
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain")
            request.write(b"metrics unavailable; see the log\n")
            return
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.write(body)


class _Health(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return b'{"alive": true}'


class _Ready(Resource):
    isLeaf = True

    def __init__(self, check: ReadinessCheck, stopping: Callable[[], bool]) -> None:
        super().__init__()
        self.check = check
        self.stopping = stopping

    def render_GET(self, request: Request) -> Any:
        if self.stopping():
            self._write(request, STOPPING)
            return b""

        def failed(failure: Failure) -> Readiness:
            log.failure("the readiness check failed", failure)
            return Readiness(False, {"error": failure.getErrorMessage()
                                     or type(failure.value).__name__})

        return _render_later(request, maybeDeferred(self.check).addErrback(failed),
                             self._write)

    @staticmethod
    def _write(request: Request, readiness: Readiness) -> None:
        request.setResponseCode(200 if readiness.ready else 503)
        request.setHeader(b"content-type", b"application/json")
        request.write(readiness.body())


#: Connections the metrics listener holds at once; one more is closed as it comes.
MAX_CONNECTIONS = 64
#: Seconds a connection has to send a whole request, from its start or its last answer.
REQUEST_TIMEOUT = 10.0
#: Bytes of a request's line and headers at most (and of any one line).
MAX_HEAD = 8192
#: The first byte of a TLS record of the handshake (a client's hello).
TLS_HANDSHAKE = b"\x16"
#: The warning of TLS clients at the metrics listener (plain HTTP).
_TLS_CLIENT = ("metrics listener: a TLS client from {peer} (a KMIP client given the metrics "
               "port?): this port is plain HTTP; give KMIP clients the KMIP port; {count} "
               "such connection(s) in the last {interval} s")
#: The methods answered; any other is refused before the request is read further.
_METHODS = (b"GET", b"HEAD")


class _BoundedChannel(HTTPChannel):
    """One connection to the metrics listener: requests without a body, GET or HEAD,
    each whole within :data:`REQUEST_TIMEOUT` (see the module docstring)."""

    MAX_LENGTH = MAX_HEAD
    totalHeadersSize = MAX_HEAD
    maxHeaders = 64
    #: Set once the request was refused or answered: nothing more is read.
    _refused = False
    #: Whether any byte came yet (the first tells a TLS client).
    _read_any = False
    _deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.factory.opened()
        super().connectionMade()
        self._await_request()

    def connectionLost(self, reason: Failure) -> None:
        self._no_deadline()
        self.factory.closed()
        super().connectionLost(reason)

    # Reading: nothing once refused ------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._read_any and data[:1] == TLS_HANDSHAKE:
            # A TLS client (a KMIP client given this port): it would wait for the
            # request's deadline on a hello that never ends a line; said and closed now.
            self._refused = True
            self.factory.tls_clients.note(peer=_peer(self.transport))
            self.transport.abortConnection()
            return
        self._read_any = True
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if not self._refused:
            super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    def headerReceived(self, line: bytes) -> bool:
        if self._refused_method():
            return False
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding" or (name == b"content-length"
                                            and value.strip().strip(b"0") != b""):
            self._refuse(b"413 Content Too Large")
            return False
        return bool(super().headerReceived(line))

    def allHeadersReceived(self) -> None:
        if not self._refused_method():
            super().allHeadersReceived()

    def _refused_method(self) -> bool:
        """Refuse the request (405) if its method is not GET or HEAD; whether it was."""
        if self._command in _METHODS:
            return False
        self._refuse(b"405 Method Not Allowed", b"Allow: GET, HEAD\r\n")
        return True

    def allContentReceived(self) -> None:
        if self._refused:
            return
        self._no_deadline()  # the request is whole: answering it has no deadline here
        super().allContentReceived()

    def checkPersistence(self, request: Request, version: bytes) -> bool:
        # One request a connection, answered "Connection: close". Requests pipelined
        # behind it are never read: a client that sent thousands in one write, and read
        # none of the answers, had them all answered back to back in one reactor turn (each
        # a /metrics of 10-20 KB), stalling the process's KMIP service for seconds and
        # holding the answers in memory.
        request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        return False

    def requestDone(self, request: Request) -> None:
        self._refused = True  # nothing more is read
        super().requestDone(request)  # (not persistent: closes once the answer is sent)
        # A client that does not read its answer is aborted after the deadline, so its
        # connection does not hold one of the listener's places for good.
        self._no_deadline()
        self._deadline = self.callLater(REQUEST_TIMEOUT, self._unread)

    def _unread(self) -> None:
        self._deadline = None
        self.transport.abortConnection()

    def _refuse(self, status: bytes, headers: bytes = b"") -> None:
        """Answer ``status`` and close, reading nothing more (a body is never read)."""
        self._refused = True
        self.transport.write(b"HTTP/1.1 " + status + b"\r\n" + headers
                             + b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        self.loseConnection()

    # The request's deadline -------------------------------------------------------------
    def _await_request(self) -> None:
        self._no_deadline()
        self._deadline = self.callLater(REQUEST_TIMEOUT, self._too_slow)

    def _no_deadline(self) -> None:
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _too_slow(self) -> None:
        self._deadline = None
        self.timeoutConnection()

    def timeoutConnection(self) -> None:
        # Twisted's, without its log line: idle keep-alive connections of a scraper end
        # so every scrape interval, and requests to this listener are not logged.
        if self.transport.disconnecting:
            return
        if self.abortTimeout is not None:
            self._abortingCall = self.callLater(self.abortTimeout, self.forceAbortClient)
        self.loseConnection()

    def forceAbortClient(self) -> None:
        self._abortingCall = None
        self.transport.abortConnection()


def _peer(transport: Any) -> str:
    """The peer's address, ``host:port`` (``[v6]:port``, :func:`kcm.peer_address.peer_label`;
    a unix socket's: its name or ``unix``)."""
    peer = transport.getPeer()
    if getattr(peer, "host", None) is not None:
        return peer_label(peer)
    return str(getattr(peer, "name", "") or "unix")


class _UnnamedRequest(Request):
    """A request answered without a ``Server`` header (Twisted's names its version, on a
    listener anyone who reaches it may ask)."""

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if (name.encode() if isinstance(name, str) else name).lower() != b"server":
            super().setHeader(name, value)


class _QuietSite(Site):
    """A Site that keeps no access log (scrapes and probes every few seconds would fill
    the service's log) and logs no factory start and stop, on bounded connections
    (:class:`_BoundedChannel`), :data:`MAX_CONNECTIONS` at most at once."""

    noisy = False
    protocol = _BoundedChannel
    requestFactory = _UnnamedRequest

    def __init__(self, resource: Resource, *, reactor: Any = None,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        # No idle timeout of Twisted's (reset by each byte): the channel's deadline.
        super().__init__(resource, timeout=None, reactor=reactor)
        self.max_connections = max_connections
        #: Connections open now.
        self.open_connections = 0
        self._full_logged = False
        #: The warning of TLS clients, once in 10 s at most.
        self.tls_clients = ThrottledLine(self.reactor, _TLS_CLIENT, logger=log,
                                         level=LogLevel.warn)

    def buildProtocol(self, addr: IAddress) -> Any:
        if self.open_connections >= self.max_connections:
            if not self._full_logged:
                self._full_logged = True
                log.warn("metrics listener: {count} connections open, the most it holds; "
                         "closing new ones until one closes", count=self.open_connections)
            return None  # the connection is closed at once
        return super().buildProtocol(addr)

    def opened(self) -> None:
        self.open_connections += 1

    def closed(self) -> None:
        self.open_connections -= 1
        self._full_logged = False

    def log(self, request: Request) -> None:
        pass


class _Root(Resource):
    def getChild(self, path: bytes, request: Request) -> Resource:
        return notFound()


def metrics_site(registry: CollectorRegistry | None, ready: ReadinessCheck, *,
                 exposition: Exposition | None = None,
                 stopping: Callable[[], bool] | None = None,
                 reactor: Any = None, max_connections: int = MAX_CONNECTIONS) -> Site:
    """``/metrics``, ``/healthz`` and ``/readyz`` over ``registry`` (or what ``exposition``
    answers) and ``ready``; ``/readyz`` is 503 without asking ``ready`` once ``stopping()``
    (a load balancer sends no more while the process drains). Its connections are bounded
    (see the module docstring), timed on ``reactor`` (Twisted's by default)."""
    if exposition is None:
        if registry is None:
            raise ValueError("metrics_site needs a registry or an exposition")
        exposition = partial(generate_latest, registry)
    root = _Root()
    root.putChild(b"metrics", _Metrics(exposition))
    root.putChild(b"healthz", _Health())
    root.putChild(b"readyz", _Ready(ready, stopping or (lambda: False)))
    return _QuietSite(root, reactor=reactor, max_connections=max_connections)


def private_unix(description: str) -> str:
    """``description`` with ``mode=600`` added when it is a Unix socket's that names no mode:
    the listener answers without authentication, and Twisted's default mode (0666) let every
    local user read the metrics and probe readiness."""
    stripped = description.strip()
    if not stripped.startswith("unix:"):
        return description
    arguments = re.split(r"(?<!\\):", stripped)[1:]
    if any(argument.startswith("mode=") for argument in arguments):
        return description
    return stripped + ":mode=600"


def metrics_listener(reactor: Any, description: str, site: Site, *,
                     stop_after: Callable[[], Deferred[Any]] | None = None
                     ) -> StreamServerEndpointService:
    """The metrics listener on endpoint ``description`` (parsed now; it listens when
    started, and a port it cannot take stops the process's start). ``stop_after``: what
    it waits for once stopped before it stops listening (so its /readyz says 503 until
    then)."""
    endpoint = PausedWhenExhausted(serverFromString(reactor, private_unix(description)),
                                   reactor, description)
    service = _ListenAtStart(endpoint, site)
    service.stop_after = stop_after
    service._raiseSynchronously = True  # a port in use fails startService, as TLSListener's
    service.setName("kcm-metrics-listener")
    return service


class _ListenAtStart(StreamServerEndpointService):
    """Listens in ``startService``, as the KMIP listener does, not in
    ``privilegedStartService``: the process's start reports a failure there in one line
    (``kcm-core did not start: kcm-metrics-listener: ...``), where one raised before it
    ended twistd with a traceback."""

    stop_after: Callable[[], Deferred[Any]] | None = None

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)

    def startService(self) -> None:
        StreamServerEndpointService.privilegedStartService(self)  # listens; raises now
        Service.startService(self)

    def stopService(self) -> Deferred[None]:
        if self.stop_after is None:
            return super().stopService()
        waited = self.stop_after()
        waited.addErrback(lambda failure: None)
        return waited.addCallback(lambda _: super(_ListenAtStart, self).stopService())
