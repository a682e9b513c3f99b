"""Stopping without cutting requests off: what kcm-core and kcm-gateway do first when they
stop (SIGTERM, or a supervisor's rolling restart).

:func:`drain` stops the listeners (no new connections), then waits, for at most
:data:`DRAIN_TIMEOUT` seconds, until what the process was doing is done: each KMIP client
connection is closed once it has been idle :data:`DRAIN_GRACE` seconds, its requests
answered first (:meth:`kcm.kmip_protocol.KmipServerFactory.drain`), and the requests other
parts still answer (a core's gateway links) are answered. Only then does the rest of the
process stop (the link to the core, the store); what is still open after the timeout is
cut, as before. It never fails: a stop goes on whatever happens here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

__all__ = ["DRAIN_GRACE", "DRAIN_TIMEOUT", "MAX_DRAIN_TIMEOUT", "STOP_MARGIN", "drain", "until"]

log = Logger()

#: Seconds a connection may be idle before a stopping server closes it.
DRAIN_GRACE = 0.5
#: Seconds a stopping server waits for its connections and requests by default (the
#: ``drain_timeout`` setting of kcm-core and kcm-gateway; a kcm-gateway supervisor kills a
#: worker :data:`STOP_MARGIN` seconds after that past its SIGTERM; systemd's TimeoutStopSec
#: is 20 s in docs/deploy.md).
DRAIN_TIMEOUT = 5.0
#: The longest ``drain_timeout``, seconds.
MAX_DRAIN_TIMEOUT = 3600.0
#: Seconds a stopping process is given beyond its drain to stop the rest (its link, its
#: store) before a supervisor kills it.
STOP_MARGIN = 5.0
#: Seconds between two looks of :func:`until`.
POLL_INTERVAL = 0.05


def drain(reactor: Any, process: str, listeners: Iterable[IService | None],
          waits: Iterable[Callable[[], Deferred[None]]],
          timeout: float = DRAIN_TIMEOUT) -> Deferred[None]:
    """Stop ``listeners`` (None: not configured), then call each of ``waits`` and wait for
    them all, ``timeout`` seconds at most; fires with None, never fails."""
    stopping = [maybeDeferred(listener.stopService) for listener in listeners
                if listener is not None and listener.running]

    def cut(result: object, _timeout: float) -> None:
        # (a DeferredList cancelled fires with its members' cancellations, not an error:
        # the timeout is seen here, where addTimeout says it cancelled the wait)
        log.warn("{process} stopping: still busy after {t:g} s; cutting what is left",
                 process=process, t=timeout)

    def wait(_: object) -> Deferred[Any]:
        waiting = DeferredList([maybeDeferred(start) for start in waits],
                               consumeErrors=True)
        waiting.addTimeout(timeout, reactor, onTimeoutCancel=cut)
        return waiting

    done = DeferredList(stopping, consumeErrors=True).addCallback(wait)
    done.addErrback(lambda failure: log.failure("draining failed", failure))
    return done.addCallback(lambda _: None)


def until(reactor: Any, done: Callable[[], bool],
          interval: float = POLL_INTERVAL) -> Deferred[None]:
    """Fires once ``done()`` is true, looked at every ``interval`` seconds (cancel it to
    stop looking)."""
    if done():
        return maybeDeferred(lambda: None)
    return deferLater(reactor, interval, lambda: None).addCallback(
        lambda _: until(reactor, done, interval))
