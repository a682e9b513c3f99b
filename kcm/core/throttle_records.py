"""The audit records of a tenant's requests refused over its request rate: coalesced, one
record per tenant per interval at most.

A request over its tenant's rate (:mod:`kcm.core.request_rates`) is refused as it arrives,
on the reactor, before it waits for anything; one audit record each would let a flooding
client grow the audit log as fast as without a rate. :class:`ThrottleRecords` counts them
instead, in memory: the first refusal of a tenant opens its interval (a timer), those that
follow are counted (a dictionary read and some arithmetic), and when the interval ends one
record stands for them all (:data:`THROTTLE_OPERATION`, written by ``record``: a group
commit, off the refusing path). ``detail``: ``count`` (requests), ``items`` (their batch
items), ``rate``, ``burst`` and ``cores`` (the tenant's rate and burst, whole, and the live
cores sharing them, as the last refusal found them), ``interval``, ``first`` and ``last``
(the wall-clock seconds of the first and last refusal counted), and who was refused:
``principals``, ``sources`` and ``gateways`` (each name with its count of requests, at
most :data:`MAX_NAMED` names; the requests of the names beyond counted in
``other_principals``, ``other_sources``, ``other_gateways``).

After its record a tenant holds nothing: its next refusal opens a new interval. So there is
at most one entry per tenant refused in the last interval, each of bounded size, and at
most one record per tenant per interval. :meth:`ThrottleRecords.flush` (kcm-core stops)
writes the intervals not yet ended.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from kcm.core.audit import JsonValue

__all__ = ["MAX_NAMED", "RECORD_INTERVAL", "THROTTLE_OPERATION", "ThrottleRecords"]

#: The audit operation of the record of a tenant's refusals over its rate.
THROTTLE_OPERATION = "ThrottleTenant"
#: Seconds a tenant's interval lasts: at most one record per tenant in it.
RECORD_INTERVAL = 60.0
#: The most principals (and sources, and gateways) a record names, each with its count.
MAX_NAMED = 5

#: Writes the record of ``tenant``'s refusals with these ``detail`` facts.
RecordThrottled = Callable[[str, Mapping[str, JsonValue]], object]


class _Named:
    """At most ``MAX_NAMED`` names with their counts; the others' requests together."""

    __slots__ = ("counts", "other")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.other = 0

    def add(self, name: str, most: int) -> None:
        counts = self.counts
        if name in counts:
            counts[name] += 1
        elif len(counts) < most:
            counts[name] = 1
        else:
            self.other += 1


class _Interval:
    """One tenant's refusals since its interval opened."""

    __slots__ = ("burst", "cores", "count", "first", "gateways", "items", "last",
                 "principals", "rate", "sources", "timer")

    def __init__(self, timer: IDelayedCall, first: int) -> None:
        self.timer = timer
        self.count = 0
        self.items = 0
        self.first = first
        self.last = first
        self.rate = 0.0
        self.burst = 0.0
        self.cores = 1
        self.principals = _Named()
        self.sources = _Named()
        self.gateways = _Named()


class ThrottleRecords:
    """The tenants' refusals over their rate, counted until their record (see the
    module)."""

    def __init__(self, reactor: IReactorTime, wall: Callable[[], float],
                 record: RecordThrottled, *, interval: float = RECORD_INTERVAL,
                 named: int = MAX_NAMED) -> None:
        """``reactor``: the intervals' timers; ``wall``: the dates a record gives
        (``first``, ``last``); ``record``: writes a tenant's record."""
        self._reactor = reactor
        self._wall = wall
        self._record = record
        self._interval = interval
        self._named = named
        self._tenants: dict[str, _Interval] = {}

    def __len__(self) -> int:
        return len(self._tenants)

    def note(self, tenant: str, items: int, *, rate: float, burst: float, cores: int,
             principal: str, source: str, gateway: str | None = None) -> None:
        """One request of ``items`` batch items of ``tenant`` refused (its rate ``rate``
        and ``burst``, shared by ``cores``), from ``principal`` at ``source``, relayed by
        ``gateway``: counted, in the record at the end of the tenant's interval."""
        now = int(self._wall())
        interval = self._tenants.get(tenant)
        if interval is None:
            interval = self._tenants[tenant] = _Interval(
                self._reactor.callLater(self._interval, self._ended, tenant), now)
        interval.count += 1
        interval.items += items
        interval.last = now
        interval.rate, interval.burst, interval.cores = rate, burst, cores
        named = self._named
        interval.principals.add(principal, named)
        interval.sources.add(source, named)
        if gateway is not None:
            interval.gateways.add(gateway, named)

    def _ended(self, tenant: str) -> None:
        self._record(tenant, self._facts(self._tenants.pop(tenant)))

    def flush(self) -> list[object]:
        """End every interval now (kcm-core stops): each tenant's record written, no timer
        left. What each record's writing returned (:data:`RecordThrottled`), in turn."""
        tenants, self._tenants = self._tenants, {}
        written = []
        for tenant, interval in tenants.items():
            if interval.timer.active():
                interval.timer.cancel()
            written.append(self._record(tenant, self._facts(interval)))
        return written

    def _facts(self, interval: _Interval) -> dict[str, JsonValue]:
        facts: dict[str, JsonValue] = {
            "count": interval.count, "items": interval.items, "rate": interval.rate,
            "burst": interval.burst, "cores": interval.cores,
            "interval": self._interval, "first": interval.first, "last": interval.last}
        for key, named in (("principals", interval.principals),
                           ("sources", interval.sources),
                           ("gateways", interval.gateways)):
            if named.counts:
                facts[key] = dict(named.counts)
            if named.other:
                facts[f"other_{key}"] = named.other
        return facts
