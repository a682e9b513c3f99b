"""A reactor's wait for events that polls for a while before it sleeps (``busy_poll_us``).

A process that sleeps in ``epoll_wait`` as soon as it has nothing to do is woken by the
kernel when its next event arrives. On a virtual machine whose idle vCPUs halt (the host's
choice: ``haltpoll.guest_halt_poll_ns=0`` on the kernel command line, say, or no
``cpuidle-haltpoll`` at all), that wake-up goes through the hypervisor and costs tens of
microseconds each time. A gateway pays it twice per forwarded request (the client's
request, the core's answer) on top of the core's own wake-ups: most of what a forward adds
on such a machine (docs/benchmarks.md, "Polling before sleeping").

:class:`SpinningWait` is what ``cpuidle-haltpoll`` does in the guest kernel, done in the
process: after a poll that found events, the next wait first asks the kernel for events
without sleeping, again and again, for up to ``window`` seconds, and gives the CPU to any
other runnable thread between two asks (``sched_yield``). Only when the window passes
with nothing does it sleep as before. An idle process spins once, for one window, after its
last event; a busy one rarely spins at all (the next event is there at once). What it
costs is CPU: up to ``window`` seconds after each burst of events, at most one vCPU, and
only while little else wants that CPU. The threads it gives way to run first (a spinning
process never keeps the client, the core or another worker waiting on its vCPU), and once
they have had more than :data:`OTHERS_SHARE` of the window the process sleeps, leaving a
busy CPU to them.

Pure apart from the calls it is given: the poll, the clock and the yield.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["MAX_WINDOW", "OTHERS_SHARE", "SPIN_ENDS", "SpinningWait"]

#: When other threads have had more than this share of the window (the time spent giving
#: the CPU away), the spin ends and the process sleeps: it spins on a CPU that is mostly
#: idle, and leaves a busy one to the threads that want it.
OTHERS_SHARE = 0.5

#: The longest window a setting may ask for (seconds): beyond a few milliseconds a spin
#: only burns CPU (the next event of a busy process is never that far away, and an idle
#: process sleeps anyway).
MAX_WINDOW = 0.01

#: How a spin ends (:attr:`SpinningWait.spins`).
SPIN_ENDS = ("event", "window", "ceded")

Event = TypeVar("Event")


class SpinningWait:
    """Waits for a reactor's events, spinning for up to ``window`` seconds after a poll that
    found some before it sleeps. ``now``: a monotonic clock in seconds; ``give_way``: lets
    other runnable threads on this CPU run (``os.sched_yield``)."""

    def __init__(self, window: float, *, now: Callable[[], float] = time.monotonic,
                 give_way: Callable[[], None] = os.sched_yield) -> None:
        if not 0 < window <= MAX_WINDOW:
            raise ValueError(f"a busy-poll window is more than 0 and at most {MAX_WINDOW} s")
        self.window = window
        self._now = now
        self._give_way = give_way
        #: Whether the last poll found events (the next wait spins first).
        self._armed = False
        #: Spins so far, by how each ended: ``event`` (events came), ``window`` (the window,
        #: or the timeout, passed first), ``ceded`` (others had their share of the CPU).
        self.spins = dict.fromkeys(SPIN_ENDS, 0)
        #: Seconds spent spinning so far (wall time, the threads given way to included).
        self.spun = 0.0

    def wait(self, poll: Callable[[float, int], Sequence[Event]], timeout: float | None,
             count: int) -> Sequence[Event]:
        """The events ``poll(timeout, count)`` (``epoll.poll``'s signature: -1 waits for
        ever) gives within ``timeout`` seconds (None: for ever), spinning first when the
        last wait found events. An empty result means ``timeout`` passed."""
        if self._armed and (timeout is None or timeout > 0):
            now = self._now
            started = now()
            end = started + (self.window if timeout is None else min(self.window, timeout))
            give_way = self._give_way
            given = 0.0  # how long giving the CPU away took: other threads' time, mostly
            ceded = self.window * OTHERS_SHARE
            spins = self.spins
            while True:
                events = poll(0, count)
                checked = now()
                if events:
                    spins["event"] += 1
                    self.spun += checked - started
                    return events  # (still armed)
                if checked >= end:
                    spins["window"] += 1
                    break
                give_way()
                given += now() - checked
                if given > ceded:
                    spins["ceded"] += 1
                    break  # this CPU is wanted by others: leave it to them
            spun = now() - started
            self.spun += spun
            if timeout is not None:
                timeout = max(0.0, timeout - spun)
                if timeout == 0:
                    self._armed = False
                    return events
        events = poll(-1 if timeout is None else timeout, count)
        self._armed = bool(events)
        return events
