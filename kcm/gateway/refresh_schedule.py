"""When each thing the gateway holds is next refreshed in the background: a schedule in
the order of those times, so that what is due is found without looking at what is not.

The L3 cache (:mod:`kcm.gateway.l3_cache`) holds thousands of service keys; its periodic
refresh looked at every one of them in one reactor turn (209 ms for 10,000). Here finding
the next due one costs O(log n), and nothing at all while none is due.

A key is scheduled again by scheduling it anew: the earlier time is forgotten (its heap
entry stays, and is skipped when it comes up; the heap is rebuilt when such entries
outnumber the live ones, so it stays within a small multiple of what is held).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from itertools import count
from typing import Generic, TypeVar

__all__ = ["RefreshSchedule"]

K = TypeVar("K", bound=Hashable)

#: Heap entries kept beyond twice the live ones before the heap is rebuilt.
_SLACK = 1024


class RefreshSchedule(Generic[K]):
    """Keys, each with the time it is next due; the due ones come out earliest first."""

    def __init__(self) -> None:
        self._due_at: dict[K, float] = {}
        # (time, order scheduled, key): the order breaks ties, so keys are never compared.
        self._heap: list[tuple[float, int, K]] = []
        self._order = count()

    def __len__(self) -> int:
        return len(self._due_at)

    def __contains__(self, key: object) -> bool:
        return key in self._due_at

    def due_at(self, key: K) -> float | None:
        """When ``key`` is due, or None: not scheduled."""
        return self._due_at.get(key)

    def schedule(self, key: K, at: float) -> None:
        """Make ``key`` due at ``at`` (instead of any time it had)."""
        self._due_at[key] = at
        heapq.heappush(self._heap, (at, next(self._order), key))
        if len(self._heap) > 2 * len(self._due_at) + _SLACK:
            self._rebuild()

    def forget(self, key: K) -> None:
        """``key`` is not due any more (it is no longer held)."""
        self._due_at.pop(key, None)

    def pop_due(self, now: float) -> K | None:
        """The key due earliest, if one is due at ``now`` (it leaves the schedule), else
        None."""
        heap, due_at = self._heap, self._due_at
        while heap and heap[0][0] <= now:
            at, _, key = heapq.heappop(heap)
            if due_at.get(key) == at:
                del due_at[key]
                return key
        return None

    def any_due(self, now: float) -> bool:
        """Whether a key is due at ``now`` (skipping what was scheduled again since)."""
        heap, due_at = self._heap, self._due_at
        while heap and heap[0][0] <= now:
            at, _, key = heap[0]
            if due_at.get(key) == at:
                return True
            heapq.heappop(heap)
        return False

    def clear(self) -> None:
        self._due_at.clear()
        self._heap.clear()

    def _rebuild(self) -> None:
        self._heap = [(at, next(self._order), key) for key, at in self._due_at.items()]
        heapq.heapify(self._heap)
