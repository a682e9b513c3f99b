"""Each tenant's request rate: a token bucket per tenant, counted in batch items.

``[core.limits] requests_per_second_per_tenant`` (the sustained rate, items a second; 0:
none) and ``request_burst_per_tenant`` (what the bucket holds; 0: one second of the rate,
at least one item); a tenant's own (``tenants.requests_per_second``,
``tenants.request_burst``: ``kcm core tenant limit``) in their place when set, its own
rate 0 meaning none. :class:`TenantRates` is asked as a request arrives, on the reactor
thread, before it waits for a worker or touches the database
(:meth:`kcm.core.request_handler.CoreRequestHandler._answer`, direct and forwarded
requests alike); a request of n batch items takes n. One the bucket cannot pay is refused
whole and unrun (Server Limit Exceeded; the metrics count it, a log line a tenant at most
once an interval says so, and one audit record a tenant at most once a minute counts it:
:mod:`kcm.core.throttle_records`, which the request handler keeps). A request of more
items than the burst passes when the bucket is full, which it leaves in debt: the
sustained rate holds all the same.

The tenants' own rates are read from the database at start and every
:data:`READ_INTERVAL` seconds (:meth:`TenantRates.read`, a read-only transaction off the
reactor): a request never reads them.

Several cores on one database share each tenant's rate: :class:`kcm.core.core_presence.
CorePresence` counts the live cores every few seconds and gives the count N to
:meth:`TenantRates.set_cores`; each core then allows a tenant its rate / N and a bucket of
its burst / N (at least one item), so the cores together allow it its rate (and a burst of
at most max(burst, N)), however its requests are spread between them. The share is even:
a tenant whose requests all reach one of N cores gets rate / N there (see
docs/operations.md, "Request rate per tenant").

Memory: a bucket that has filled up again is the same as none, and is dropped at the next
read, as are the buckets, counts and log lines of tenants that no longer exist; what is
held is bounded by the tenants that exist (and those principals named since the last read).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel

from kcm.core.store.schema import Tenant
from kcm.throttled_line import ThrottledLine

__all__ = ["LOG_INTERVAL", "READ_INTERVAL", "RateReads", "TenantRates", "burst_of",
           "throttled_message"]

#: Seconds between two reads of the tenants' own rates: a ``kcm core tenant limit
#: --requests-per-second`` takes effect on every running core within it.
READ_INTERVAL = 5.0
#: Seconds: a tenant's refusals make at most one log line each.
LOG_INTERVAL = 60.0

_log = Logger()

_LINE = ("tenant {tenant}: {count} requests over its rate of {rate} items/s refused in "
         "{interval} s (kcm_core_tenant_requests_throttled_total)")


def burst_of(rate: float, burst: int) -> float:
    """The items a bucket of ``rate`` holds: ``burst``, or (0) one second of ``rate``, at
    least one item."""
    return float(burst) if burst > 0 else max(rate, 1.0)


def throttled_message(rate: float, retry: float) -> str:
    """The refused request's message (short ASCII): its tenant's rate, when to retry."""
    return (f"the tenant's request rate of {rate:g} items/s was exceeded; retry in "
            f"{max(math.ceil(retry * 10) / 10, 0.1):g} s")


class TenantRates:
    """The tenants' token buckets. ``clock``: a monotonic one (the reactor's);
    ``rate``, ``burst``: the core's ``[core.limits]``."""

    def __init__(self, reactor: IReactorTime, rate: float, burst: int, *,
                 clock: Callable[[], float] | None = None) -> None:
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor.seconds
        self._rate = float(rate)
        self._burst = burst
        #: (rate, bucket size) of a tenant without its own.
        self._default = (self._rate, burst_of(self._rate, burst))
        #: tenant -> (rate, bucket size), the tenants with their own rate or burst.
        self._own: dict[str, tuple[float, float]] = {}
        #: tenant -> [items in its bucket, when counted]; absent: full.
        self._buckets: dict[str, list[float]] = {}
        #: tenant -> requests refused (the metrics' counter).
        self.throttled: dict[str, int] = {}
        self._lines: dict[str, ThrottledLine] = {}
        #: A read that fails (a database down: every READ_INTERVAL) says so once a minute.
        self._unread = ThrottledLine(
            reactor, "tenants' request rates not read ({count} in {interval} s), the last "
            "read kept: {why}", interval=LOG_INTERVAL, level=LogLevel.warn, logger=_log)
        #: Whether any tenant is limited (else :meth:`admit` returns at once).
        self._any = self._rate > 0
        #: The live cores sharing each tenant's rate (:meth:`set_cores`; 1: this one alone).
        self.cores = 1

    def set_cores(self, cores: int) -> None:
        """``cores`` cores (this one among them) serve the database: each allows a tenant
        1/``cores`` of its rate and burst from now on (a fuller bucket is cut down to it)."""
        self.cores = max(int(cores), 1)

    def share(self, tenant: str) -> tuple[float, float]:
        """``tenant``'s (rate, bucket size) on this core: its :meth:`limit` divided by the
        live cores, the bucket at least one item; rate 0: none."""
        rate, size = self._own.get(tenant, self._default)
        cores = self.cores
        if cores > 1 and rate:
            return rate / cores, max(size / cores, 1.0)
        return rate, size

    def limit(self, tenant: str) -> tuple[float, float]:
        """``tenant``'s (rate, bucket size); rate 0: none."""
        return self._own.get(tenant, self._default)

    def admit(self, tenant: str, items: int) -> str | None:
        """Take ``items`` from ``tenant``'s bucket: None; or, when it cannot pay them
        (nothing taken), the refusal's message."""
        if not self._any:
            return None
        whole, size = self._own.get(tenant, self._default)
        if not whole:
            return None
        rate, cores = whole, self.cores
        if cores > 1:
            rate, size = whole / cores, max(size / cores, 1.0)
        now = self._clock()
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = [size, now]
            held = size
        else:
            held = min(size, bucket[0] + max(now - bucket[1], 0.0) * rate)
        bucket[0], bucket[1] = held, now
        need = min(items, size)
        if held >= need:
            bucket[0] = held - items
            return None
        self._refused(tenant, whole)
        return throttled_message(whole, (need - held) / rate)

    def _refused(self, tenant: str, rate: float) -> None:
        self.throttled[tenant] = self.throttled.get(tenant, 0) + 1
        line = self._lines.get(tenant)
        if line is None:
            line = self._lines[tenant] = ThrottledLine(
                self._reactor, _LINE, interval=LOG_INTERVAL, level=LogLevel.warn,
                logger=_log)
        line.note(tenant=tenant, rate=f"{rate:g}")

    def counts(self) -> list[tuple[tuple[str], float]]:
        """The requests refused, by tenant (the metrics' read)."""
        return [((tenant,), count) for tenant, count in sorted(self.throttled.items())]

    def flush(self) -> None:
        """Write the log lines counted and not yet written (the core stops)."""
        for line in self._lines.values():
            line.flush()
        self._unread.flush()

    # The tenants' own rates ------------------------------------------------------------
    def read(self, run: Callable[..., Any]) -> Any:
        """Read the tenants' own rates again: ``run(fn, write=False)`` runs ``fn(session)``
        off the reactor (the store's ``run``) and gives a Deferred, which never fails (else
        the reads every interval stopped): a failure, the read's or the rows', is logged (once
        a minute at most) and the rates last read kept."""
        def failed(failure: Any) -> None:
            # (its first line: SQLAlchemy adds libpq's hint and a web address after it)
            why = failure.getErrorMessage().strip()
            self._unread.note(why=(why.splitlines() or [""])[0][:200])

        return run(_read_own, write=False).addCallback(self.take).addErrback(failed)

    def take(self, rows: list[tuple[str, float | None, int | None]]) -> None:
        """The tenants (name, own rate or None, own burst or None) as read: their limits
        kept; the buckets of tenants gone, and the full ones, dropped."""
        default_rate = self._rate
        own: dict[str, tuple[float, float]] = {}
        for name, rate, burst in rows:
            if rate is None and burst is None:
                continue
            mine = default_rate if rate is None else float(rate)
            own[name] = (mine, burst_of(mine, self._burst if burst is None else burst))
        self._own = own
        self._any = default_rate > 0 or any(rate > 0 for rate, _ in own.values())
        names = {row[0] for row in rows}
        now = self._clock()
        for tenant, bucket in list(self._buckets.items()):
            rate, size = self.share(tenant)
            if (tenant not in names or not rate
                    or bucket[0] + max(now - bucket[1], 0.0) * rate >= size):
                del self._buckets[tenant]
        for tenant in [tenant for tenant in self._lines if tenant not in names]:
            self._lines.pop(tenant).flush()
        for tenant in [tenant for tenant in self.throttled if tenant not in names]:
            del self.throttled[tenant]


def _read_own(session: Session) -> list[tuple[str, float | None, int | None]]:
    return [(name, rate, burst) for name, rate, burst in session.execute(
        select(Tenant.name, Tenant.requests_per_second, Tenant.request_burst))]


class RateReads(Service):
    """The tenants' own rates read into ``rates``: as the core starts, before its listeners
    (blocking: the reactor does not run yet), then every ``interval`` seconds off the
    reactor. ``store``: the core's :class:`~kcm.core.store.engine.Store` (``run_sync``,
    ``run``)."""

    name = "kcm-tenant-rates"

    def __init__(self, rates: TenantRates, store: Any, reactor: IReactorTime,
                 interval: float = READ_INTERVAL) -> None:
        self._rates = rates
        self._store = store
        self._interval = interval
        self._loop = LoopingCall(rates.read, store.run)
        self._loop.clock = reactor

    def startService(self) -> None:
        self._rates.take(self._store.run_sync(_read_own, write=False))
        super().startService()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> Any:
        if self._loop.running:
            self._loop.stop()
        return super().stopService()
