"""Readiness events handed to their connections without Twisted's legacy log context.

Twisted's epoll reactor hands each ready descriptor to its connection inside
``twisted.python.log.callWithLogger``: it asks the connection for its log prefix, copies a
context dictionary, pushes it on a thread-local stack, and pops it again. The context only
names the ``system`` of events logged with the legacy ``twisted.python.log`` API during the
call (KCM logs with ``twisted.logger``, whose events do not read it). Every request a KCM
process serves costs one such event or more, and on the machine of ``docs/benchmarks.md``
the wrapping cost about 10 µs of a forwarded request's 180-190 µs of gateway CPU.

:func:`install` replaces the reactor's poll with one that calls the reactor's own dispatch
(``_doReadOrWrite``, which turns a connection's failure into its ``connectionLost``) directly.
What ``callWithLogger`` also did is kept: an exception that escapes the dispatch is logged
with the connection's log prefix as its ``system``, and the next event is served.
"""

from __future__ import annotations

import errno
from types import MethodType
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.python import log

__all__ = ["install"]


def install(reactor: Any) -> bool:
    """Make ``reactor`` (if Twisted's epoll reactor) dispatch its events directly; whether it
    did. Any other reactor is left as it is."""
    if not isinstance(reactor, EPollReactor):
        return False
    poll = MethodType(_poll, reactor)
    reactor.doPoll = poll
    reactor.doIteration = poll  # what the reactor's main loop calls
    return True


def _poll(self: EPollReactor, timeout: float | None) -> None:
    """``EPollReactor.doPoll``, with each event dispatched without the log context."""
    try:
        events = self._poller.poll(-1 if timeout is None else timeout,
                                   len(self._selectables))
    except OSError as e:
        if e.errno == errno.EINTR:
            return
        raise
    dispatch = self._doReadOrWrite
    selectables = self._selectables
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:  # removed by an earlier event of this poll
            continue
        try:
            dispatch(selectable, fd, event)
        except KeyboardInterrupt:
            raise
        except BaseException:
            try:
                system = selectable.logPrefix()
            except BaseException:
                system = "(buggy logPrefix method)"
            log.err(system=system)
