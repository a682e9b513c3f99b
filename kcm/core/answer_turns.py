"""The answers waiting for a link's transport, written in turns by tenant.

kcm-core writes a forwarded request's RESPONSE frame to its gateway's link as soon as it is
ready; while the link's transport is full (the gateway reads slowly: it relays large answers
to clients that read slowly, or not at all), the answers wait. In one queue, a tenant whose
clients asked for many large answers put every other tenant's answer behind all of its own
(a Get Attributes waited 2 s behind 1 MB answers). Here each share key (the caller's
tenant, as for :class:`kcm.core.fair_scheduler.FairScheduler`) has its own queue, and the
transport takes them in turn: an answer waits for at most one answer of each other busy
tenant. Within a tenant answers keep their order. Pure: no I/O.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

__all__ = ["AnswerTurns"]


class AnswerTurns:
    """Frames waiting, by share key, taken in turn."""

    __slots__ = ("_count", "_turns", "_waiting")

    def __init__(self) -> None:
        self._waiting: dict[Hashable, deque[bytes]] = {}
        #: Keys with frames waiting, in the order they will be served.
        self._turns: deque[Hashable] = deque()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def append(self, key: Hashable, frame: bytes) -> None:
        frames = self._waiting.get(key)
        if frames is None:
            frames = self._waiting[key] = deque()
            self._turns.append(key)
        frames.append(frame)
        self._count += 1

    def popleft(self) -> bytes:
        """The next frame in turn (IndexError when none waits)."""
        key = self._turns[0]
        frames = self._waiting[key]
        frame = frames.popleft()
        if frames:
            self._turns.rotate(-1)
        else:
            del self._waiting[key]
            self._turns.popleft()
        self._count -= 1
        return frame

    def clear(self) -> None:
        self._waiting.clear()
        self._turns.clear()
        self._count = 0
