"""Reactor time that a step of the wall clock does not move.

Twisted's reactors read the wall clock (``time.time()``) for ``reactor.seconds()``, and
schedule ``callLater`` on it. A step of the wall clock (an NTP step, a virtual machine
resumed) then moves every duration a KCM process measures on its reactor: a step forward
of a few seconds made a healthy link look silent (its heartbeats, kcm.link.protocol), a
longer one timed out every stream and cut requests short of their deadline; a step back
postponed them all by its size.

:func:`install` (both plugins' ``makeService``, before anything is scheduled) makes a
reactor's time monotonic: ``time.monotonic()`` counted from the wall-clock time read at that
moment. Its values read like the wall clock's at first, so a call already scheduled keeps
its time, but they drift from it by every step since: they are for durations only.

The rule in KCM: durations (timers, heartbeats, deadlines, TTLs, backoffs, lease and
staleness checks, drain waits, rates) are measured on the reactor, or on
``time.monotonic``/``time.perf_counter``; dates (KMIP date attributes, the time of a
request, audit records, usage counts, spent stream parts) are read from the wall clock,
``time.time``, injected apart where a component needs both (``wall_clock``, or ``clock``
beside a ``timer``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.base import ReactorBase

__all__ = ["install", "monotonic_seconds"]

#: The reactor attribute set once :func:`install` has made its time monotonic.
_INSTALLED = "_kcm_monotonic_time"


def monotonic_seconds(*, wall: Callable[[], float] | None = None,
                      monotonic: Callable[[], float] | None = None) -> Callable[[], float]:
    """A clock that ticks with ``monotonic`` (``time.monotonic``) and starts at ``wall``'s
    time now (``time.time``'s)."""
    wall = time.time if wall is None else wall
    monotonic = time.monotonic if monotonic is None else monotonic
    offset = wall() - monotonic()

    def seconds() -> float:
        return monotonic() + offset

    return seconds


def install(reactor: Any, seconds: Callable[[], float] | None = None) -> bool:
    """Make ``reactor``'s time (``seconds``, and so its timed calls) monotonic, if it is one
    of Twisted's reactors; whether it is. Any other (a test's ``task.Clock``) is left as it
    is; installing twice changes nothing. ``seconds``: the new time (tests; by default
    :func:`monotonic_seconds`)."""
    if not isinstance(reactor, ReactorBase):
        return False
    if getattr(reactor, _INSTALLED, False):
        return True
    if seconds is None:
        seconds = monotonic_seconds()
    # Read by callLater (each new DelayedCall takes it too) and by the reactor's loop.
    reactor.seconds = seconds
    # A call already scheduled keeps its time (the new clock starts at the wall clock's
    # now) and is reset from now on by the new clock.
    for call in (*reactor._pendingTimedCalls, *reactor._newTimedCalls):
        call.seconds = seconds
    setattr(reactor, _INSTALLED, True)
    return True
