"""Whose job the store's writer thread runs next: shares of the writer's time. Pure.

kcm-core's group commits (:mod:`kcm.core.group_commit`) run every tenant's writes on one
thread. Taken one job per tenant in turn, a tenant whose every job holds the writer 15 ms
(changes of an object with 1 MiB of attributes) still made another tenant's one-record
job wait for one such job before it and, in the same group, for those after it: tens of
milliseconds, for a job of 0.1 ms. So the writer's time is shared instead, the way a
fair CPU scheduler shares a processor:

- Each *share key* (the caller's tenant) has a **virtual time**: the seconds of writer time
  its jobs have used. The key served next is the waiting key of least virtual time (ties:
  the one waiting longest), so a tenant that used less of the writer goes first.
- A key that begins to wait starts at the **floor**, the virtual time of the key served
  last (or at its own, if that is later): time it did not use while idle is not banked
  credit, and a key cannot shed its use by going idle between requests. A key is served
  only once it is the least, so it leads the floor by at most its last job: the lead that
  others then catch up is bounded by one job of each key.
- A key whose last job ran :attr:`WriterShares.alone_seconds` or longer is **expected to be
  long** (:meth:`WriterShares.expected`): the group commit starts a group with such a job
  rather than adding it to one, so that the short jobs taken before it are committed, and
  answered, without waiting for it. (It also adds no job of a key whose jobs in the group
  ran that long together.)

Memory is bounded: at most :data:`REMEMBERED` keys are remembered when not waiting
(forgetting one loses at most its lead of one job), besides the keys waiting.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from itertools import count

__all__ = ["REMEMBERED", "WriterShares"]

#: Keys remembered while they wait for nothing (their virtual time and last job's time).
REMEMBERED = 4096


class WriterShares:
    """The order in which waiting keys are served, by the writer time each has used.

    The caller (:class:`kcm.core.group_commit.GroupCommitter`, under its lock) says when a
    key begins to wait (:meth:`arrive`), takes the next key (:meth:`take`) and, once that
    key's job has run, charges its time (:meth:`charge`). A key is either waiting (in the
    order), running one job (taken and not yet charged), or neither.
    """

    def __init__(self, *, alone_seconds: float = 0.005) -> None:
        if alone_seconds <= 0:
            raise ValueError("need alone_seconds > 0")
        self.alone_seconds = alone_seconds
        #: The virtual time of the key served last: where a key that begins to wait starts.
        self.floor = 0.0
        #: (virtual time, arrival, key) of every waiting key.
        self._order: list[tuple[float, int, Hashable]] = []
        self._waiting: set[Hashable] = set()
        #: key -> [virtual time, seconds of its last job], for keys that ran a job.
        self._used: dict[Hashable, list[float]] = {}
        self._arrivals = count()

    def __len__(self) -> int:
        """Keys waiting."""
        return len(self._order)

    def arrive(self, key: Hashable) -> None:
        """``key`` begins to wait (it was neither waiting nor running)."""
        used = self._used.get(key)
        start = self.floor if used is None or used[0] < self.floor else used[0]
        self._wait(key, start)

    def next_key(self) -> Hashable | None:
        """The key :meth:`take` would take; None when none waits."""
        return self._order[0][2] if self._order else None

    def take(self) -> Hashable:
        """The next key, which stops waiting: its job runs, then :meth:`charge`."""
        virtual, _, key = heapq.heappop(self._order)
        self._waiting.discard(key)
        if virtual > self.floor:
            self.floor = virtual
        return key

    def charge(self, key: Hashable, seconds: float, *, waits_again: bool) -> None:
        """``key``'s job, taken, ran ``seconds``; ``waits_again``: it has more jobs waiting,
        and waits again."""
        used = self._used.pop(key, None)  # (re-inserted: the dict's order is by use)
        virtual = max(self.floor if used is None else used[0], self.floor) + seconds
        self._used[key] = [virtual, seconds]
        if waits_again:
            self._wait(key, virtual)
        elif len(self._used) - len(self._waiting) > REMEMBERED:
            self._forget()

    def expected(self, key: Hashable) -> bool:
        """Whether ``key``'s next job is expected to be long: its last one ran at least
        :attr:`alone_seconds`."""
        used = self._used.get(key)
        return used is not None and used[1] >= self.alone_seconds

    def leave(self, key: Hashable) -> None:
        """``key``, waiting, waits no more (its jobs were failed); its use is kept."""
        if key in self._waiting:
            self._waiting.discard(key)
            self._order = [entry for entry in self._order if entry[2] != key]
            heapq.heapify(self._order)

    def clear(self) -> None:
        """No key waits any more (their jobs were failed)."""
        self._order.clear()
        self._waiting.clear()

    def _wait(self, key: Hashable, virtual: float) -> None:
        heapq.heappush(self._order, (virtual, next(self._arrivals), key))
        self._waiting.add(key)

    def _forget(self) -> None:
        """Forget the keys least recently charged that are not waiting, down to half the
        bound (a key at or below the floor loses nothing: it would start there). Keys
        waiting are never forgotten, nor counted: with more of them than the bound, a
        charge would otherwise look through them all to free nothing."""
        excess = len(self._used) - len(self._waiting) - REMEMBERED // 2
        for key in [k for k in self._used if k not in self._waiting][:excess]:
            del self._used[key]
