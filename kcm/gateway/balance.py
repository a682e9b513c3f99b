"""Which kcm-gateway worker the supervisor hands a new connection to: of the workers that
said they are ready (:data:`kcm.handoff.READY`), or of all when none has, the one with the
fewest open connections, ties in turn. No I/O: the supervisor tells it what it handed and
what the workers reported (:mod:`kcm.gateway.acceptor`).

A worker that has just started (or started again) is not ready until it is linked to the
core: while another is, it gets no connections it could only fail. When none is (every
worker starting, or the core unreachable at start), connections go to them all anyway,
to be answered with KMIP errors rather than wait unanswered.

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

from collections.abc import Collection
from dataclasses import dataclass

__all__ = ["NEAR_SLACK", "LeastConnections"]

#: Connections a worker near a new connection may hold above the least loaded worker and
#: still be tried first (taking it leaves it at most one more above). Measured with
#: benchmarks/workers_bench.py (8 connections, one to eight client threads): 2 keeps each
#: client thread's connections on one worker when threads on two CPUs open them together,
#: and costs little when one thread opens and drives all eight (5/3: 1.60-1.71x one worker,
#: against 1.68-1.70x at 4/4); 3 let them fall 6/2, which served 10 % less.
NEAR_SLACK = 2


@dataclass(slots=True)
class _Load:
    handed: int = 0
    received: int = 0
    open: int = 0

    def total(self) -> int:
        return self.open + self.handed - self.received


class LeastConnections:
    """The workers that can take connections (by index) and each one's load."""

    def __init__(self) -> None:
        self._loads: dict[int, _Load] = {}
        self._last: int = 0
        #: The workers that said they are ready.
        self.ready: set[int] = set()

    def __len__(self) -> int:
        return len(self._loads)

    def __contains__(self, worker: object) -> bool:
        return worker in self._loads

    def add(self, worker: int) -> None:
        """``worker`` (new, or restarted: its counts start afresh, and it is not ready) can
        take connections."""
        self._loads[worker] = _Load()
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
        """``worker`` holds ``open_connections`` and has received ``received`` in all."""
        load = self._loads.get(worker)
        if load is not None:
            load.open, load.received = open_connections, min(received, load.handed)

    def load(self, worker: int) -> int:
        """``worker``'s open connections as far as the supervisor knows."""
        return self._loads[worker].total()

    def ranked(self, near: Collection[int] = ()) -> list[int]:
        """The workers in the order to try them: the ready ones (all, when none is), fewest
        connections first; among equals, the next after the one last handed a connection,
        in index order (round robin). Those of ``near`` within :data:`NEAR_SLACK` of the
        fewest go before the rest, in that same order."""
        candidates = [worker for worker in self._loads if worker in self.ready] or list(
            self._loads)
        after = sorted(candidates, key=lambda worker: (worker <= self._last, worker))
        order = sorted(after, key=self.load)
        if near and order:
            limit = self.load(order[0]) + NEAR_SLACK
            first = [worker for worker in order if worker in near and self.load(worker) <= limit]
            if first:
                order = first + [worker for worker in order if worker not in first]
        return order
