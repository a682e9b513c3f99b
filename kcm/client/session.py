"""The blocking client: :class:`Session`, for ordinary scripts and the ``kcm`` command.

One request of one batch item at a time over a persistent mutual-TLS connection
(:class:`~kcm.client.endpoints.FailoverConnection`: a list of endpoints, failover in
order). Every method of :class:`~kcm.client.operations.Operations` returns its result or
raises: :class:`KmipOperationFailed` for a failed batch item (Result Reason and Message),
:class:`KmipClientError` for the connection.

Why a socket and not the Twisted client in a thread: a blocking caller waits for each answer
anyway, so pipelining buys it nothing, and a plain socket needs no reactor thread and works
in any program, including one that runs its own reactor elsewhere. A script that wants many
requests in flight uses the Twisted client (:mod:`kcm.client.pool`).

A session may be used on both sides of ``os.fork``: the connection is the process's that
opened it, and a child that uses the session opens one of its own
(:class:`kcm.conformance.client.KmipClient`); the child's lock is its own too, in case a
thread of the parent held the parent's at the fork.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from kcm.client.endpoints import Endpoint, FailoverConnection, TlsFiles, parse_endpoint
from kcm.client.errors import KmipClientError
from kcm.client.operations import Operations
from kcm.client.wire import (
    DEFAULT_VERSION,
    IDEMPOTENT,
    encode_items,
    parse_response,
    result_of,
)
from kcm.conformance.client import DEFAULT_TIMEOUT, temporary
from kcm.kmip.enums import Operation
from kcm.kmip.messages import RequestBatchItem

__all__ = ["Session"]

#: Held while a child process makes its session's lock anew (so two threads of the child
#: cannot each make one); itself made anew in every child, in case a thread of the parent
#: held it at the fork.
_CHILD_LOCK_GUARD = threading.Lock()


def _new_guard_in_child() -> None:
    global _CHILD_LOCK_GUARD
    _CHILD_LOCK_GUARD = threading.Lock()


os.register_at_fork(after_in_child=_new_guard_in_child)


class Session(Operations):
    """Requests to a KMIP server over one connection (opened on the first request).

    ``transport`` is anything with ``send(bytes) -> bytes`` and ``close()``; :meth:`connect`
    makes the usual one, mutual TLS with failover. Usable as a context manager. Threads may
    share it: their requests take turns on its one connection (a thread each with a session
    of its own runs them side by side).
    """

    def __init__(self, transport: Any, version: tuple[int, int] = DEFAULT_VERSION) -> None:
        self.transport = transport
        self.version = version
        self._lock = threading.Lock()  # one request at a time on the connection
        #: The process and thread whose request is on the connection now (None: none).
        self._holder: tuple[int, int] | None = None
        self._lock_pid = os.getpid()

    @classmethod
    def connect(cls, host: str | Sequence[Endpoint | str], port: int | None = None, *,
                cert: str, key: str, ca: str, timeout: float = DEFAULT_TIMEOUT,
                version: tuple[int, int] = DEFAULT_VERSION,
                connect_timeout: float | None = None) -> Session:
        """A session over mutual TLS to ``host:port`` (``host`` alone may say
        ``HOST:PORT``, as the configuration and ``--server`` do), or to the first of a list
        of endpoints that answers (connected on the first request).

        ``timeout`` bounds each call as a whole: waiting for another thread's request on
        the connection, every connection attempt along the list, the request, its answer and
        its resend on failover. ``connect_timeout`` bounds each connection attempt (TCP and
        the TLS handshake; default 10 s, or ``timeout`` divided by the number of endpoints
        if less)."""
        if isinstance(host, str):
            endpoints = [parse_endpoint(host) if port is None else Endpoint(host, port)]
        else:
            endpoints = list(host)
        return cls(FailoverConnection(endpoints, TlsFiles(cert, key, ca), timeout=timeout,
                                      connect_timeout=connect_timeout), version)

    def close(self) -> None:
        """Close the connection once the request another thread has in progress is answered
        (it closed under that request: the thread got AssertionError, AttributeError or
        EBADF); from within this thread's own request (a signal handler), at once, that
        request failing. A request made afterwards connects again, as the first one did."""
        if self._holder == (os.getpid(), threading.get_ident()):
            # Called from inside this thread's own request (a signal handler): waiting
            # for the lock would wait for ever; the request fails as the connection closes.
            self.transport.close()
            return
        with self._lock_of_this_process():
            self.transport.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def call(self, operation: Operation, payload: Any) -> Any:
        """Send ``operation`` with ``payload``; the response payload of a successful answer."""
        batch_item_id = os.urandom(8)
        wire = encode_items(self.version, [RequestBatchItem(
            operation=operation, unique_batch_item_id=batch_item_id, request_payload=payload)])
        deadline = None
        lock = self._lock_of_this_process()
        if isinstance(self.transport, FailoverConnection):
            # The call's deadline starts now: the wait for the connection counts.
            deadline = self.transport.deadline()
            if not lock.acquire(timeout=self.transport.timeout):
                raise temporary(KmipClientError(
                    f"no answer within {self.transport.timeout:g} s (the call's timeout): "
                    "other threads' requests held the connection"))
        else:
            lock.acquire()
        try:
            self._holder = (os.getpid(), threading.get_ident())
            try:
                answer = self._send(wire, operation, deadline)
            finally:
                self._holder = None
            response = parse_response(answer)
            if len(response.batch_items) != 1:
                self.transport.close()
                raise KmipClientError(f"the server answered {len(response.batch_items)} batch "
                                      "items to a request of one")
            [item] = response.batch_items
            echoed = item.unique_batch_item_id
            if echoed is not None and echoed != batch_item_id:
                # Another request's answer: this connection is out of step with its
                # requests, and no later answer on it can be trusted either.
                self.transport.close()
                raise KmipClientError("the server answered another request (its Unique Batch "
                                      "Item ID is not this request's)")
        finally:
            lock.release()
        return result_of(operation, item)

    def _lock_of_this_process(self) -> threading.Lock:
        """The lock, a new one in a child process (the parent's may have been held by a
        thread the fork did not copy)."""
        if self._lock_pid != os.getpid():
            with _CHILD_LOCK_GUARD:
                if self._lock_pid != os.getpid():
                    self._lock = threading.Lock()
                    self._lock_pid = os.getpid()
        return self._lock

    def _send(self, wire: bytes, operation: Operation, deadline: float | None) -> bytes:
        if isinstance(self.transport, FailoverConnection):
            return self.transport.send(wire, repeatable=operation in IDEMPOTENT,
                                       deadline=deadline)
        return self.transport.send(wire)

    def _run(self, operation: Operation, payload: Any, shape: Callable[[Any], Any]) -> Any:
        return shape(self.call(operation, payload))
