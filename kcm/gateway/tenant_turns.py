"""Each tenant's share of kcm-gateway's reactor: the L4 work it answers itself.

The gateway runs L4 requests on its reactor thread, a connection's requests one after the
other as they are read. Without a share, one reactor turn ran every ready connection's
requests: a tenant with many connections sending the largest batches made every other
tenant's request wait behind all of them (200 such connections: another tenant's p99 went
from 2.5 ms to 450 ms). What this module promises:

* A tenant's requests (its principals': those of no tenant count as one more) take at most
  ``turn_time`` seconds of the reactor, and one request more (the request that crosses it
  is not cut), before its connections wait, not reading, for the next turn (parked:
  :meth:`park`); the other tenants' requests are run meanwhile, each tenant under its own
  ``turn_time``. At that next turn every tenant's count starts again. A tenant's time is
  what answering a request takes on the reactor, its answer's write included (reading and
  TLS are not counted); the protocol adds it to :attr:`spent` (kcm.kmip_protocol).
* Work conserving: the next turn comes as soon as the reactor has handled the events of
  this one (``before_poll``, kcm.reactor_dispatch), not after a fixed period, and while
  connections are parked the reactor's poll does not wait for events (``wake``: parked
  connections read nothing, so none may come); a lone tenant is never held back, its work
  is only split over turns, at one poll each.
* At the start of each turn the parked connections are run in turn, one of each tenant at a
  time, while their tenant is under ``turn_time``, the oldest parked first; the rest wait for
  the next turn.
* Nothing is scheduled while no connection waits: per request, two clock reads, a
  dictionary read and a write (about 0.2 µs); the counts start again only at a turn that
  follows a wait, so a light tenant may wait one turn now and then, as a heavy one does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Protocol

__all__ = ["TURN_TIME", "TenantTurns"]

#: The default of ``tenant_turn_time`` (seconds): a tenant's reactor time in one turn.
TURN_TIME = 0.002


class Parked(Protocol):
    """A connection waiting for its tenant's next turn (kcm.kmip_protocol)."""

    def next_turn(self) -> None: ...


class TenantTurns:
    """The reactor time of each tenant in the current turn, and its parked connections."""

    __slots__ = ("_before_poll", "_parked", "_scheduled", "_wake", "clock", "spent",
                 "turn_time")

    def __init__(self, turn_time: float, before_poll: Callable[[Callable[[], None]], None],
                 wake: Callable[[], object], clock: Callable[[], float] = perf_counter
                 ) -> None:
        """``before_poll(run)``: calls ``run`` once the reactor's current turn is over;
        ``wake()``: the reactor's next poll does not wait (``callLater(0, ...)``)."""
        self.turn_time = turn_time
        self._wake = wake
        self.clock = clock
        #: Seconds each tenant has taken in this turn (by tenant name; None: no tenant).
        self.spent: dict[str | None, float] = {}
        self._parked: dict[str | None, deque[Parked]] = {}
        self._before_poll = before_poll
        self._scheduled = False

    def over(self, tenant: str | None) -> bool:
        """Whether ``tenant`` has had its time."""
        return self.spent.get(tenant, 0.0) >= self.turn_time

    def park(self, tenant: str | None, connection: Parked) -> None:
        """``connection`` waits (not reading) for ``tenant``'s next turn."""
        self._parked.setdefault(tenant, deque()).append(connection)
        if not self._scheduled:
            self._scheduled = True
            self._before_poll(self._next_turn)

    def parked(self, tenant: str | None) -> int:
        """How many of ``tenant``'s connections wait for its next turn."""
        return len(self._parked.get(tenant, ()))

    def _next_turn(self) -> None:
        self._scheduled = False
        self.spent.clear()
        parked = self._parked
        progress = True
        while parked and progress:
            progress = False
            for tenant in list(parked):
                if self.over(tenant):
                    continue
                queue = parked[tenant]
                connection = queue.popleft()
                if not queue:
                    del parked[tenant]
                progress = True
                connection.next_turn()  # (may park it again, at the end of its queue)
        if parked:
            if not self._scheduled:
                self._scheduled = True
                self._before_poll(self._next_turn)
            # (this runs just before a poll, which would wait for events none of the parked
            # connections can send)
            self._wake()
