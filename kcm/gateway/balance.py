"""Which kcm-gateway worker the supervisor hands a new connection to: of the workers that
are ready (they said :data:`kcm.handoff.READY`, and have not reported
:data:`kcm.handoff.NOT_READY` since) and are not silent, or of all when none is, the one
with the fewest open connections, ties in turn. No I/O: the supervisor tells it what it
handed and what the workers reported (:mod:`kcm.gateway.acceptor`).

A worker that has just started (or started again) is not ready until it is linked to the
core, and one whose link is down with its keys past ``max_stale`` is not ready until it
links again: while another is, it gets no connections it could only fail. When none is
(every worker starting, or the core unreachable), connections go to the workers that are
not silent, else to them all, to be answered with KMIP errors rather than wait unanswered.

A worker reports every :data:`kcm.handoff.REPORT_INTERVAL` seconds; one that has not for
:data:`SILENT_AFTER` seconds (since its last report, or since it was added) is *silent*:
hung (stopped, a busy loop) or not yet listening. It counts as not ready until it reports
again (the supervisor kills one silent for long, :mod:`kcm.gateway.supervisor`). Silence
is told only with a ``clock``.

A connection may come with the workers *near* it (pinned to the CPU its packets arrive on,
:mod:`kcm.gateway.placement`): they are tried first while they hold at most
:data:`NEAR_SLACK` connections more than the least loaded worker, so that connections
opened in a burst from one CPU stay near it without piling up on one worker (eight from
one CPU fall 5/3 on two workers).

A worker's load is the number of open connections it last reported plus the connections
handed to it that it had not yet received when it reported (each report says how many it
has received in all), so a report that crosses a handoff in flight neither loses nor
counts twice the connection handed.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from kcm.handoff import read_open

__all__ = ["NEAR_SLACK", "SILENT_AFTER", "LeastConnections"]

#: Connections a worker near a new connection may hold above the least loaded worker and
#: still be tried first (taking it leaves it at most one more above). Measured with
#: benchmarks/workers_bench.py (8 connections, one to eight client threads): 2 keeps each
#: client thread's connections on one worker when threads on two CPUs open them together,
#: and costs little when one thread opens and drives all eight (5/3: 1.60-1.71x one worker,
#: against 1.68-1.70x at 4/4); 3 let them fall 6/2, which served 10 % less.
NEAR_SLACK = 2
#: Seconds without a report after which a worker is silent (ten reports missed).
SILENT_AFTER = 2.0


@dataclass(slots=True)
class _Load:
    #: When the worker was added (started).
    added: float
    handed: int = 0
    received: int = 0
    open: int = 0
    #: When it last reported (None: not since it was added).
    heard: float | None = None

    def total(self) -> int:
        return self.open + self.handed - self.received


class LeastConnections:
    """The workers that can take connections (by index) and each one's load; with a
    ``clock``, which are silent (none without one)."""

    def __init__(self, clock: Callable[[], float] | None = None,
                 silent_after: float = SILENT_AFTER) -> None:
        self.clock = clock
        self.silent_after = silent_after
        self._loads: dict[int, _Load] = {}
        self._last: int = 0
        #: The workers that said they are ready (and have not reported NOT_READY since).
        self.ready: set[int] = set()

    def __len__(self) -> int:
        return len(self._loads)

    def __contains__(self, worker: object) -> bool:
        return worker in self._loads

    def add(self, worker: int) -> None:
        """``worker`` (new, or restarted: its counts start afresh, and it is not ready) can
        take connections."""
        self._loads[worker] = _Load(self._now())
        self.ready.discard(worker)

    def remove(self, worker: int) -> None:
        """``worker`` can take no more connections (it exited)."""
        self._loads.pop(worker, None)
        self.ready.discard(worker)

    def mark_ready(self, worker: int) -> None:
        """``worker`` said it is ready."""
        if worker in self._loads:
            self.ready.add(worker)

    def handed(self, worker: int) -> None:
        """A connection was handed to ``worker``."""
        self._loads[worker].handed += 1
        self._last = worker

    def reported(self, worker: int, open_connections: int, received: int) -> None:
        """``worker`` reported: it holds ``open_connections`` (a report's first field: with
        :data:`kcm.handoff.NOT_READY` when it cannot serve, and then it is ready no more)
        and has received ``received`` in all."""
        load = self._loads.get(worker)
        if load is None:
            return
        count, ready = read_open(open_connections)
        load.open, load.received = count, min(received, load.handed)
        load.heard = self._now()
        if not ready:
            self.ready.discard(worker)

    def load(self, worker: int) -> int:
        """``worker``'s open connections as far as the supervisor knows."""
        return self._loads[worker].total()

    def last_heard(self, worker: int) -> float | None:
        """When ``worker`` last reported (None: not since it was added, or unknown)."""
        load = self._loads.get(worker)
        return None if load is None else load.heard

    def silent(self, worker: int) -> bool:
        """Whether ``worker`` has not reported for :attr:`silent_after` seconds (since it
        was added, if it never has); never without a clock."""
        load = self._loads.get(worker)
        if load is None or self.clock is None:
            return False
        since = load.added if load.heard is None else load.heard
        return self.clock() - since > self.silent_after

    def _now(self) -> float:
        return 0.0 if self.clock is None else self.clock()

    def ranked(self, near: Collection[int] = ()) -> list[int]:
        """The workers in the order to try them: the ready ones that are not silent (when
        none is: those not silent; when all are: all), fewest connections first; among
        equals, the next after the one last handed a connection, in index order (round
        robin). Those of ``near`` within :data:`NEAR_SLACK` of the fewest go before the
        rest, in that same order."""
        heard = [worker for worker in self._loads if not self.silent(worker)]
        candidates = [worker for worker in heard if worker in self.ready] or heard or list(
            self._loads)
        after = sorted(candidates, key=lambda worker: (worker <= self._last, worker))
        order = sorted(after, key=self.load)
        if near and order:
            limit = self.load(order[0]) + NEAR_SLACK
            first = [worker for worker in order if worker in near and self.load(worker) <= limit]
            if first:
                order = first + [worker for worker in order if worker not in first]
        return order
