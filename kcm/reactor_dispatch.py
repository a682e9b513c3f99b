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

The same poll runs what :func:`call_before_poll` was given just before it asks the kernel
for events: the end of the reactor's turn, after every event of the turn has been
dispatched and every timed call due has run. kcm-core starts its group commits there
(:mod:`kcm.core.group_commit`), so that the requests read in the turn join the group.

Its waker (the pipe another thread writes a byte to, for each ``callFromThread``: every
answer of kcm-core's writer thread) writes that byte as Twisted's does, without reaching
``os.write`` through ``twisted.python.util``, a deprecation proxy whose attribute lookup cost
more than the write's own Python (:func:`_wake_directly`).

With a busy-poll window (kcm-gateway's ``busy_poll_us``), the poll waits for events the
way :class:`kcm.busy_poll.SpinningWait` does: after a turn that had events it asks the
kernel again without sleeping, for up to that long, before it sleeps.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from types import MethodType
from typing import Any

from twisted.internet._signals import _UnixWaker
from twisted.internet.epollreactor import EPollReactor
from twisted.python import log

from kcm.busy_poll import SpinningWait

__all__ = ["call_before_poll", "install", "spinning_wait"]

#: The reactor attribute holding what runs before its next poll (set by :func:`install`).
_BEFORE_POLL = "_kcm_before_poll"
#: The reactor attribute holding its :class:`SpinningWait` (None: it sleeps at once).
_WAIT = "_kcm_wait"


def install(reactor: Any, *, busy_poll: float = 0.0) -> bool:
    """Make ``reactor`` (if Twisted's epoll reactor) dispatch its events directly; whether it
    did. Any other reactor is left as it is. ``busy_poll``: seconds it polls without
    sleeping after a turn with events (:class:`SpinningWait`; 0: none)."""
    if not isinstance(reactor, EPollReactor):
        return False
    setattr(reactor, _BEFORE_POLL, [])
    setattr(reactor, _WAIT, SpinningWait(busy_poll) if busy_poll > 0 else None)
    poll = MethodType(_poll, reactor)
    reactor.doPoll = poll
    reactor.doIteration = poll  # what the reactor's main loop calls
    _wake_directly(reactor.waker)
    return True


def _wake_directly(waker: object) -> None:
    """Give Twisted's pipe ``waker`` (any other is left as it is) a ``wakeUp`` that does what
    its own does (one byte written to the pipe, again if a signal interrupts it; a full pipe
    is already awake) with ``os.write`` called directly."""
    if type(waker) is not _UnixWaker:
        return
    write, eagain = os.write, errno.EAGAIN

    def wake_up() -> None:
        fd = waker.o
        if fd is None:
            return
        while True:
            try:
                write(fd, b"x")
                return
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno != eagain:
                    raise
                return

    waker.wakeUp = wake_up  # type: ignore[attr-defined]


def spinning_wait(reactor: Any) -> SpinningWait | None:
    """The :class:`SpinningWait` ``reactor``'s poll waits with (its counts), or None: it
    sleeps at once, or :func:`install` has not run."""
    return getattr(reactor, _WAIT, None)


def call_before_poll(reactor: Any, run: Callable[[], object]) -> None:
    """Call ``run()`` on the reactor thread once the reactor's current turn is over: just
    before its next poll if :func:`install` installed into it, else with ``callLater(0)``
    (the start of the next turn). An exception ``run`` raises is logged."""
    waiting = getattr(reactor, _BEFORE_POLL, None)
    if waiting is None:
        reactor.callLater(0, run)
    else:
        waiting.append(run)


def _poll(self: EPollReactor, timeout: float | None) -> None:
    """``EPollReactor.doPoll``, with each event dispatched without the log context, after
    what :func:`call_before_poll` was given."""
    waiting = getattr(self, _BEFORE_POLL)
    if waiting:
        _run_before_poll(waiting)
        # What they did may be due sooner (a timed call): the poll waits no longer.
        due = self.timeout()
        if due is not None and (timeout is None or due < timeout):
            timeout = due
    wait = getattr(self, _WAIT)
    try:
        if wait is None:
            events = self._poller.poll(-1 if timeout is None else timeout,
                                       len(self._selectables))
        else:
            events = wait.wait(self._poller.poll, timeout, len(self._selectables))
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


def _run_before_poll(waiting: list[Callable[[], object]]) -> None:
    # (a call made by one of them waits for the next poll)
    calls = waiting[:]
    del waiting[:]
    for run in calls:
        try:
            run()
        except BaseException:
            log.err(None, "a call before the reactor's poll failed")
