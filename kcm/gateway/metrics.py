"""kcm-gateway's metrics and readiness (docs/operations.md, "Metrics and health").

What it promises:

* Requests are counted per batch item, by operation (``unknown`` for an item answering a
  whole request it refused), result (the item's Result Status) and path (``local``:
  answered by this gateway; ``forwarded``: answered by the core, or by the gateway for the
  core when the link could not carry it), and timed per request message by path
  (``local``, ``forwarded``, ``mixed``). On the fast path this costs an attribute update
  per item and one histogram child update per request, all bound in advance
  (:mod:`kcm.metrics`); the general path reads each item's Operation and Result Status
  from its answer with the peek (never a full decode).
* Everything else (the L3 cache's hits, misses, stale and expired reads, failed fetches,
  keys held and services forgotten as idle, the opened DEK cache's hits and misses, the
  link's state, in-flight calls and reconnects, open connections, and the TLS families of
  :mod:`kcm.tls_metrics`) is read when scraped from counters the parts keep themselves.
* :meth:`GatewayMetrics.readiness`: ready while the gateway can serve L4 operations, that
  is while it is linked to the core, or, unlinked, while a service key it holds is still
  within ``max_stale`` of its last confirmation; the body says whether it is linked. Not
  ready (503) while the core's last VIEW says its scope is of no tenant
  (:data:`kcm.link.views.SERVES_NOBODY`): it can serve nobody. Nor while its own
  certificate in force is past its notAfter (:meth:`kcm.tls_metrics.CertificateExpiry.
  expired`): no client completes a handshake with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector

from kcm.busy_poll import SPIN_ENDS, SpinningWait
from kcm.gateway.fast_path import FAST_OPERATIONS
from kcm.kmip.enums import ResultStatus
from kcm.link.views import SERVES_NOBODY
from kcm.metrics import (
    CallbackCounter,
    CallbackGauge,
    ReactorCounter,
    ReactorHistogram,
    Readiness,
    Tally,
    operation_label,
    result_label,
)
from kcm.tls_metrics import CertificateExpiry, tls_collectors
from kcm.ttlv import TtlvError
from kcm.ttlv.peek import peek_response

if TYPE_CHECKING:
    from kcm.connection_guard import ConnectionGuard
    from kcm.connection_refusals import ConnectionRefusals
    from kcm.gateway.l3_cache import L3Cache
    from kcm.gateway.link_client import LinkClient
    from kcm.tls_refresh import TlsRefresher

__all__ = ["GatewayMetrics"]

_SUCCESS = int(ResultStatus.SUCCESS)


class GatewayMetrics:
    """The gateway's registry and the request counters its handler updates."""

    def __init__(self, *, timer: Callable[[], float] = time.perf_counter,
                 process: bool = False) -> None:
        self.timer = timer
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = ReactorCounter(
            "kcm_gateway_requests",
            "KMIP batch items answered, by operation, result and path (local: answered by "
            "this gateway; forwarded: by the core).", ("operation", "result", "path"))
        self.duration = ReactorHistogram(
            "kcm_gateway_request_duration_seconds",
            "Time from a request's arrival to its answer, by path (local, forwarded, mixed).",
            ("path",))
        for collector in (self.requests, self.duration):
            self.registry.register(collector)
        if process:
            ProcessCollector(registry=self.registry)
        #: The fast path's successful items, by operation: bound once.
        self.fast_served: dict[int, Tally] = {
            operation: self.requests.labels(operation_label(operation), "success", "local")
            for operation in FAST_OPERATIONS}
        self.local_duration = self.duration.labels("local")
        self.forwarded_duration = self.duration.labels("forwarded")
        self.mixed_duration = self.duration.labels("mixed")
        self._items: dict[tuple[int | None, int | None, str], Tally] = {}
        self._link: LinkClient | None = None
        self._cache: L3Cache | None = None
        self._clock: Callable[[], float] = time.monotonic  # (the L3 cache's, by watch)
        #: The dates of the certificates in force (:meth:`watch_tls`; None: not yet).
        self._expiry: CertificateExpiry | None = None

    # The general path ---------------------------------------------------------------------
    def answered(self, answer: bytes, local: Sequence[bool] | bool) -> None:
        """Count the items of ``answer`` (a general-path answer) by their Operation and
        Result Status, read with the peek; ``local`` says for all items, or per item of the
        request (a mixed one: answer item ``i`` answers request item ``i``), whether the
        gateway answered it."""
        try:
            items = peek_response(answer).items
        except TtlvError:
            return
        for index, item in enumerate(items):
            here = local if isinstance(local, bool) else (
                local[index] if index < len(local) else True)
            self._item(item.operation, item.result_status,
                       "local" if here else "forwarded").value += 1

    def _item(self, operation: int | None, status: int | None, path: str) -> Tally:
        name = operation_label(operation)
        key = (name, status, path)  # (bounded: the client picks the operation's value)
        child = self._items.get(key)
        if child is None:
            child = self._items[key] = self.requests.labels(name, result_label(status), path)
        return child

    # Read when scraped ----------------------------------------------------------------------
    def watch(self, *, link: LinkClient, cache: L3Cache, guard: ConnectionGuard,
              clock: Callable[[], float]) -> None:
        """Report ``link``'s, ``cache``'s and ``guard``'s state when scraped; ``clock``
        (the reactor's) judges max-stale for readiness."""
        self._link, self._cache, self._clock = link, cache, clock
        register = self.registry.register
        register(CallbackGauge("kcm_gateway_link_up",
                               "1 while the link to the core is up (welcomed), else 0.", (),
                               lambda: [((), 1.0 if link.connected else 0.0)]))
        register(CallbackGauge("kcm_gateway_link_in_flight",
                               "Calls sent to the core on the link and not yet answered.", (),
                               lambda: [((), link.in_flight)]))
        register(CallbackCounter("kcm_gateway_link_reconnects",
                                  "Links to the core made after the first one.", (),
                                  lambda: [((), max(link.links_made - 1, 0))]))
        register(CallbackCounter("kcm_gateway_link_drains",
                                  "Links the core drained because it was stopping (DRAIN): "
                                  "their calls answered, new ones sent on the next link.", (),
                                  lambda: [((), link.links_drained)]))
        register(CallbackCounter(
            "kcm_gateway_link_renewals",
            "Links made again with this gateway's renewed certificate, by result: linked "
            "(the core welcomed it and it took over), refused (the core refused it before "
            "WELCOME; the link in use stays, and it is tried again).", ("result",),
            lambda: [(("linked",), link.links_renewed),
                     (("refused",), link.links_renew_refused)]))
        register(CallbackCounter(
            "kcm_gateway_link_lineage_refusals",
            "Links to a core refused because it serves another database than the one this "
            "gateway follows (ORIGIN, link version 7), by reason: older_copy (a lower restore "
            "generation), another_deployment.", ("reason",),
            lambda: [((reason,), count) for reason, count in link.followed.refusals.items()]))
        register(CallbackGauge("kcm_gateway_open_connections",
                               "Client connections open on the KMIP listener.", (),
                               lambda: [((), guard.connections)]))
        register(CallbackCounter(
            "kcm_gateway_l3_cache_lookups",
            "Reads of service keys (L3) by requests: hit (fresh), stale (past l3_ttl, served "
            "and refreshed in the background), miss (fetched from the core), expired (past "
            "max_stale with the core unreachable: refused).", ("result",),
            lambda: [(("hit",), cache.hits.value), (("stale",), cache.stale_hits.value),
                     (("miss",), cache.misses.value), (("expired",), cache.expired.value)]))
        register(CallbackGauge("kcm_gateway_l4_tombstones",
                               "Revoked or destroyed L4 tokens this gateway refuses itself.",
                               (), lambda: [((), cache.tombstone_count)]))
        register(CallbackGauge("kcm_gateway_l3_tombstones_overflowed",
                               "Service keys whose L4 requests go to the core because their "
                               "tombstones passed max_tombstones, or did not all come with "
                               "the key (those being paged in among them).", (),
                               lambda: [((), len(cache.overflowed))]))
        register(CallbackGauge("kcm_gateway_l3_tombstones_paging",
                               "Service keys whose L4 tombstones are being paged in from the "
                               "core (link version 9); their L4 requests go to the core "
                               "meanwhile.", (),
                               lambda: [((), cache.pages.pending if cache.pages else 0)]))
        register(CallbackGauge("kcm_gateway_l3_cache_keys",
                               "Service key versions held in memory (one no request used for "
                               "l3_idle is forgotten once past max_stale).", (),
                               lambda: [((), cache.size)]))
        register(CallbackCounter("kcm_gateway_l3_idle_forgotten",
                                  "Services (their current service key) forgotten because no "
                                  "request used them for l3_idle: no longer refreshed.", (),
                                  lambda: [((), cache.idle_forgotten.value)]))
        register(CallbackCounter("kcm_gateway_l3_refreshes_unchanged",
                                  "Service key fetches the core answered unchanged (link "
                                  "version 8): what was held was confirmed, no key sent.", (),
                                  lambda: [((), cache.refreshes_unchanged.value)]))
        register(CallbackGauge("kcm_gateway_opened_deks",
                               "Opened L4 DEKs held in memory (at most dek_cache_size).", (),
                               lambda: [((), len(cache.opened_keys or ()))]))
        register(CallbackCounter(
            "kcm_gateway_l3_fetch_failures",
            "Service key (L3) fetches from the core that failed, by reason: refused (the "
            "core's answer), link_down, timeout, busy, error.", ("reason",),
            lambda: [((why,), tally.value) for why, tally in cache.fetch_failures.items()]))

        def dek_lookups() -> list[tuple[tuple[str], float]]:
            opened = cache.opened_keys
            return [(("hit",), opened.hits.value if opened is not None else 0),
                    (("miss",), opened.misses.value if opened is not None else 0)]

        register(CallbackCounter(
            "kcm_gateway_dek_cache_lookups",
            "Lookups of opened L4 DEKs (dek_cache_size) by result: hit (served from "
            "memory), miss (the token opened).", ("result",), dek_lookups))

    def watch_tls(self, *, expiry: CertificateExpiry, refusals: ConnectionRefusals,
                  refresher: TlsRefresher) -> None:
        """Report the listener's and the link's certificate expiry, the connections
        refused, the TLS files taken again and, with ``tls.crl``, the CRLs' freshness
        when scraped (:mod:`kcm.tls_metrics`)."""
        self._expiry = expiry
        for collector in tls_collectors("kcm_gateway", expiry=expiry, refusals=refusals,
                                        refresher=refresher):
            self.registry.register(collector)

    def watch_busy_poll(self, wait: Callable[[], SpinningWait | None]) -> None:
        """Report the spins of the poll's :class:`SpinningWait` (``wait()``; None: none
        yet) when scraped (``busy_poll_us``)."""
        def spins() -> list[tuple[tuple[str], float]]:
            spinning = wait()
            counts = spinning.spins if spinning is not None else dict.fromkeys(SPIN_ENDS, 0)
            return [((end,), counts[end]) for end in SPIN_ENDS]

        def spun() -> list[tuple[tuple[()], float]]:
            spinning = wait()
            return [((), spinning.spun if spinning is not None else 0.0)]

        self.registry.register(CallbackCounter(
            "kcm_gateway_busy_poll_spins",
            "Times the reactor polled for events without sleeping after a turn that had some "
            "(busy_poll_us), by how the spin ended: event (events came), window (the window "
            "passed; it then slept), ceded (other threads wanted the CPU; it then slept).",
            ("ended",), spins))
        self.registry.register(CallbackCounter(
            "kcm_gateway_busy_poll_seconds",
            "Seconds the reactor spent polling without sleeping (busy_poll_us), the threads "
            "it gave the CPU to meanwhile included.", (), spun))

    def readiness(self) -> Readiness:
        """Ready while L4 operations can be served (see the module docstring)."""
        link, cache = self._link, self._cache
        if link is None or cache is None:
            return Readiness(False, {"linked": False, "reason": "not started"})
        expired = None if self._expiry is None else self._expiry.expired()
        if expired is not None:  # no client (nor the core) takes its certificate
            return Readiness(False, {"linked": link.connected, "reason": expired})
        if link.view in SERVES_NOBODY:  # the core's scope of it: no tenant (last link)
            return Readiness(False, {"linked": link.connected,
                                     "reason": "the core's gateway scope lets this gateway "
                                               "serve no tenant"})
        if link.connected:
            return Readiness(True, {"linked": True})
        if link.relinking:  # calls wait a few milliseconds for the next link: served
            return Readiness(True, {"linked": False, "relinking": True})
        left = cache.serving_left(self._clock())
        if left is None:
            return Readiness(False, {"linked": False,
                                     "reason": "the core is unreachable and no service key "
                                               "is held"})
        if left <= 0:
            return Readiness(False, {"linked": False,
                                     "reason": "the core is unreachable and every service key "
                                               "held is past max_stale"})
        return Readiness(True, {"linked": False, "max_stale_left": round(left, 3)})

