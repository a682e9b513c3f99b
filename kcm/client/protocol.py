"""KMIP over TLS, client side, on Twisted: framing, pipelining and matching answers.

:class:`KmipClientProtocol` sends request messages as soon as they are asked for, without
waiting for earlier answers (pipelining), up to ``max_in_flight`` unanswered messages; more
wait in a queue, in order, and are sent as answers arrive. Every batch item it sends carries
a Unique Batch Item ID of its own (8 bytes, a per-connection counter), which the server
echoes (KMIP 1.4 §6.4, 2.1 §8.4); an answer is matched to its request by the ID of its first
batch item, so a server may answer messages in any order, and a message's batch items are
put back in request order by their IDs. An answer that carries no known ID goes to the
oldest unanswered request (KMIP over TLS answers in order unless IDs say otherwise).

Each request has a deadline (``timeout`` after it is written, or the ``deadline`` its
caller gives, counted from when it is asked for: :class:`~kcm.client.pool.KmipClient`
gives its call's, on the injected ``clock``). A request still queued at its deadline fails
alone (:class:`NotSent`); one written and not answered fails with :class:`KmipClientError` and the
connection is closed, since a later answer could no longer be trusted to be matched (the
other requests on it fail too: the pool sends the idempotent ones again). A connection
that closes fails every unanswered and queued request with :class:`KmipClientError`. No
I/O beyond the transport; tests drive it over a ``StringTransport`` and a ``task.Clock``.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from typing import Any

from OpenSSL.SSL import Error as SslError
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from kcm.client.errors import KmipClientError
from kcm.client.wire import encode_items, parse_response
from kcm.conformance.client import temporary
from kcm.kmip.messages import RequestBatchItem, ResponseBatchItem, ResponseMessage
from kcm.ttlv import TtlvError
from kcm.ttlv.framer import Framer

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "DEFAULT_TIMEOUT", "KmipClientProtocol", "NotSent"]

#: Unanswered request messages on one connection before more wait in the client's queue.
DEFAULT_MAX_IN_FLIGHT = 1024
#: Seconds a request may wait for its answer.
DEFAULT_TIMEOUT = 30.0
#: The largest answer accepted, in bytes.
DEFAULT_MAX_RESPONSE = 16 * 1024 * 1024
#: How long a closing connection waits for the server's TLS close (seconds) before it is
#: aborted.
CLOSE_GRACE = 2.0

_ID = struct.Struct(">Q")


class NotSent(KmipClientError):
    """A request that reached its deadline still queued behind ``max_in_flight``: it was
    never written, so it says nothing of the server (the pool keeps the endpoint)."""

    temporary = True


class _Request:
    __slots__ = ("ids", "wire", "answer", "timer", "late")

    def __init__(self, ids: list[bytes], wire: bytes, late: str) -> None:
        self.ids = ids
        self.wire = wire  # b"" once written
        self.answer: Deferred[ResponseMessage] = Deferred()
        self.timer: IDelayedCall | None = None
        #: What the request fails with when its deadline passes.
        self.late = late


class KmipClientProtocol(Protocol):
    """One client connection; see the module's docstring. :meth:`send` returns a Deferred
    firing with the whole :class:`ResponseMessage` of a request of ``items``."""

    def __init__(self, clock: IReactorTime, *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 timeout: float = DEFAULT_TIMEOUT,
                 max_response: int = DEFAULT_MAX_RESPONSE) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._clock = clock
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self._framer = Framer(max_response)
        self._next_id = 0
        # Sent and unanswered, in the order sent (dicts keep insertion order).
        self._in_flight: dict[bytes, _Request] = {}
        self._queued: deque[_Request] = deque()
        self._closed_because: str | None = None
        #: Whether what closed the connection may pass (it broke, or an answer was late):
        #: the requests it fails are then :attr:`KmipClientError.temporary`; not so for
        #: an answer that is not KMIP or not asked, or the client's own close.
        self._closed_temporary = False
        #: The most requests this connection has had sent and unanswered at once.
        self.most_in_flight = 0
        self.lost: Deferred[None] = Deferred()
        #: Aborts a closing connection the server has not closed within CLOSE_GRACE.
        self._grace: IDelayedCall | None = None

    # What the pool looks at ------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        """Requests sent and unanswered, plus those queued behind them."""
        return len(self._in_flight) + len(self._queued)

    @property
    def usable(self) -> bool:
        """Connected and not closing."""
        return self.transport is not None and self._closed_because is None

    # Sending ------------------------------------------------------------------------------------

    def send(self, version: tuple[int, int], items: Sequence[RequestBatchItem], *,
             deadline: float | None = None, late: str | None = None
             ) -> Deferred[ResponseMessage]:
        """Send a request message of ``items`` in protocol ``version`` (each item gets its
        Unique Batch Item ID here); its answer, batch items in request order. ``deadline``
        (on the clock's ``seconds()``): when it fails, queued or written, with ``late``;
        else ``timeout`` after it is written."""
        if self._closed_because is not None:
            return _failed(self._error(self._closed_because))
        ids = []
        for item in items:
            self._next_id += 1
            item.unique_batch_item_id = _ID.pack(self._next_id)
            ids.append(item.unique_batch_item_id)
        request = _Request(ids, encode_items(version, items),
                           late or f"no answer within {self.timeout:g} s")
        if deadline is not None:
            request.timer = self._clock.callLater(
                max(0.0, deadline - self._clock.seconds()), self._timed_out, request)
        if len(self._in_flight) < self.max_in_flight and not self._queued:
            self._write(request)
        else:
            self._queued.append(request)
        return request.answer

    def _write(self, request: _Request) -> None:
        self._in_flight[request.ids[0]] = request
        if len(self._in_flight) > self.most_in_flight:
            self.most_in_flight = len(self._in_flight)
        if self.timeout and request.timer is None:
            request.timer = self._clock.callLater(self.timeout, self._timed_out, request)
        self.transport.write(request.wire)
        request.wire = b""

    def _timed_out(self, request: _Request) -> None:
        request.timer = None
        if request.wire:  # still queued: nothing was sent, the connection is fine
            self._queued.remove(request)
            request.answer.errback(NotSent(request.late))
            return
        # Written and unanswered: its answer may still come, and would be taken for a
        # later request's if it carried no ID. The others on the connection fail too.
        self._in_flight.pop(request.ids[0], None)
        request.answer.errback(temporary(KmipClientError(request.late)))
        self._close("the connection was closed: a request on it had no answer in time",
                    abort=True, passing=True)

    # Receiving -----------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        try:
            messages = self._framer.feed(data)
        except TtlvError as e:
            self._close(f"the server sent something that is not TTLV: {e}", abort=True)
            return
        for wire in messages:
            try:
                response = parse_response(wire)
            except KmipClientError as e:
                self._close(str(e), abort=True)
                return
            request = self._match(response.batch_items)
            if request is None:
                self._close("the server answered a request that was not asked", abort=True)
                return
            if request.timer is not None and request.timer.active():
                request.timer.cancel()
            response.batch_items = _in_request_order(request.ids, response.batch_items)
            request.answer.callback(response)
        broken = self._framer.error
        if broken is not None:  # after the answers that came whole before it
            self._close(f"the server sent something that is not TTLV: {broken}", abort=True)
            return
        while self._queued and len(self._in_flight) < self.max_in_flight and self.usable:
            self._write(self._queued.popleft())

    def _match(self, items: list[ResponseBatchItem]) -> _Request | None:
        for item in items:
            key = item.unique_batch_item_id
            if key is not None and key in self._in_flight:
                return self._in_flight.pop(key)
        if not self._in_flight:
            return None
        oldest = next(iter(self._in_flight))
        return self._in_flight.pop(oldest)

    # Closing -----------------------------------------------------------------------------------

    def connectionLost(self, reason: Failure | None = None) -> None:
        why = "the connection closed"
        if reason is not None and reason.value is not None and str(reason.value):
            why = f"the connection closed: {reason.value}"
        if self._closed_because is None:
            # The server closed it, or it broke: may pass; not a TLS alert (the server
            # refused the client's certificate after the handshake, at the first read).
            self._closed_temporary = not (reason is not None and reason.check(SslError))
        self._fail_all(self._closed_because or why)
        self.transport = None
        if self._grace is not None:
            if self._grace.active():
                self._grace.cancel()
            self._grace = None
        if not self.lost.called:
            self.lost.callback(None)

    def close(self) -> None:
        """Close the connection; unanswered requests fail. The server's TLS close is waited
        for :data:`CLOSE_GRACE` seconds at most: a server that no longer answers (a hung
        gateway) would otherwise keep the socket, and whoever waits for :attr:`lost`."""
        self._close("the client closed the connection")

    def abort(self) -> None:
        """Close the connection at once, without waiting for the server's TLS close (one
        that no longer answers would keep the socket open); unanswered requests fail."""
        self._close("the client closed the connection", abort=True)

    def _close(self, why: str, *, abort: bool = False, passing: bool = False) -> None:
        """Fail what is unanswered and close; ``abort``: at once, without waiting for the
        server's TLS close (a server that does not answer would keep the socket open);
        ``passing``: the failures are temporary (a late answer, not a bad one)."""
        if self._closed_because is None:
            self._closed_because = why
            self._closed_temporary = passing
        self._fail_all(why)
        if self.transport is not None:
            if abort:
                self.transport.abortConnection()
            else:
                self.transport.loseConnection()
                if self._grace is None:
                    self._grace = self._clock.callLater(CLOSE_GRACE, self._abort_if_open)

    def _abort_if_open(self) -> None:
        self._grace = None
        if self.transport is not None:
            self.transport.abortConnection()

    def _fail_all(self, why: str) -> None:
        if self._closed_because is None:
            self._closed_because = why
        waiting = list(self._in_flight.values()) + list(self._queued)
        self._in_flight.clear()
        self._queued.clear()
        for request in waiting:
            if request.timer is not None and request.timer.active():
                request.timer.cancel()
            request.answer.errback(self._error(why))

    def _error(self, why: str) -> KmipClientError:
        error = KmipClientError(why)
        return temporary(error) if self._closed_temporary else error


def _in_request_order(ids: list[bytes], items: list[ResponseBatchItem]
                      ) -> list[ResponseBatchItem]:
    """``items`` sorted as their IDs are in ``ids``; those without a known ID keep their
    place after them."""
    if len(items) < 2:
        return items
    rank = {key: index for index, key in enumerate(ids)}
    known = [i for i in items if i.unique_batch_item_id in rank]
    if len(known) != len(items):
        return items
    return sorted(items, key=lambda i: rank[i.unique_batch_item_id])


def _failed(error: Exception) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(error)
    return d
