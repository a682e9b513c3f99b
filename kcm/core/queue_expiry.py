"""Jobs that must not wait in a queue past their request's deadline: one reactor timer.

kcm-core's requests wait in two queues before they run: for a store worker
(:class:`kcm.core.fair_scheduler.FairScheduler`) and for the writer's next group commit
(:class:`kcm.core.group_commit.GroupCommitter`). A request's deadline
(``limits.request_deadline``) is judged when it runs, at each batch-item boundary; a request
still waiting at its deadline would otherwise wait for as long as what runs before it,
which a silent database makes up to its cut (``request_deadline`` + 2 s) and, for the group
after, a new connection's ``connect_timeout`` on top: 17 to 19 s against a deadline of
10 s. So a queue hands each waiting job's deadline to its :class:`QueueExpiry`, and the
jobs still waiting at their deadline are taken out of the queue (never run) and failed
with :class:`RequestExpired`: kcm-core answers General Failure ``request deadline of N s
exceeded before it ran``. A job handed over at or after its deadline (its request ran up
to it) waits at most :data:`LATE_GRACE_S`.

One timer serves a queue, armed for the earliest deadline it was told of (a later job,
whose deadline is later, arms nothing): under load it fires about once a deadline, looks
at what waits, and is armed again for the earliest deadline left, at least
:data:`GRANULARITY_S` on (a queue of jobs whose deadlines are all different costs one
look every so often, not one each). Reactor thread only.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["GRANULARITY_S", "LATE_GRACE_S", "QueueExpiry", "RequestExpired"]

#: The shortest interval between two looks at a queue, seconds: a job is failed at most
#: this long after its deadline (plus the reactor's lateness).
GRANULARITY_S = 0.1
#: How long a job handed to a queue at or after its request's deadline may wait, seconds:
#: a request that ran up to its deadline (its items stopped there, as documented) is
#: still answered with what it did once that is committed, unless the writer keeps it
#: waiting this long.
LATE_GRACE_S = 1.0


class RequestExpired(Exception):
    """A request's deadline passed while it waited in a queue: it did not run, nothing of
    it was written."""

    def __init__(self, queue: str) -> None:
        super().__init__(f"still waiting for the {queue} at the request deadline")


class QueueExpiry:
    """The timer of one queue. ``expire(now)`` (the queue's) takes out and fails every job
    whose deadline is ``now`` or earlier, and returns the earliest deadline of those still
    waiting (None: none has one). Deadlines are on ``clock`` (``reactor.seconds`` when not
    given), a clock running at the reactor's pace."""

    def __init__(self, reactor: IReactorTime, expire: Callable[[float], float | None],
                 clock: Callable[[], float] | None = None) -> None:
        self._reactor = reactor
        self._expire = expire
        self._clock = clock if clock is not None else reactor.seconds
        self._call: IDelayedCall | None = None
        self._at = 0.0

    def waits(self, deadline: float) -> None:
        """A job of ``deadline`` waits in the queue."""
        call = self._call
        if call is None:
            self._arm(deadline)
        elif deadline < self._at:
            self._at = deadline
            call.reset(max(0.0, deadline - self._clock()))

    def stop(self) -> None:
        """No more looks (the queue's owner stops)."""
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _arm(self, at: float) -> None:
        self._at = at
        self._call = self._reactor.callLater(max(0.0, at - self._clock()), self._fire)

    def _fire(self) -> None:
        self._call = None
        now = self._clock()
        earliest = self._expire(now)  # (a job it fails may make another wait: armed)
        if earliest is not None:
            self.waits(max(earliest, now + GRANULARITY_S))
