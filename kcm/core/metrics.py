"""kcm-core's metrics and readiness (docs/operations.md, "Metrics and health").

What it promises:

* Requests are counted per batch item, by operation and result (the item's Result
  Status; a request refused whole counts once as operation ``unknown``), on the store's
  worker threads with ``prometheus_client``'s thread-safe counters, and timed per request
  message from its arrival to its answer (queueing for a worker included) by source
  (``direct``: a KMIP client; ``gateway``: forwarded on a link).
* Database transactions are timed by kind (``write``, ``read``), and committed audit
  records counted, by the store (:attr:`kcm.core.store.engine.Store.on_transaction`).
* Open connections, the outbox head and each gateway's lag behind it are read when
  scraped, as are the TLS families (:mod:`kcm.tls_metrics`: certificate expiry,
  connections refused by reason, CRL freshness).
* No ``_created`` series: the metrics documented are all there is.
* :class:`DatabaseReadiness`: ready when the database answers, is at the newest
  migration and (SQLite) would let a write take its write lock now (a ``BEGIN IMMEDIATE``
  rolled back at once, waiting at most half of ``timeout``); the check runs on a thread of
  its own (never on the reactor), one at a time, and a check that takes longer than
  ``timeout`` answers not ready.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from kcm.kmip.enums import ResultStatus
from kcm.kmip.messages import ResponseBatchItem
from kcm.metrics import LATENCY_BUCKETS, CallbackGauge, Readiness, operation_label, result_label
from kcm.reactor_threads import RunInThread, in_reactor_threads
from kcm.tls_metrics import CertificateExpiry, tls_collectors

if TYPE_CHECKING:
    from kcm.connection_guard import ConnectionGuard
    from kcm.connection_refusals import ConnectionRefusals
    from kcm.core.event_fanout import EventFanout
    from kcm.core.link_server import LinkServerFactory
    from kcm.tls_crl import CrlRefresher

__all__ = ["CoreMetrics", "DatabaseReadiness", "database_state"]

_FAILED = int(ResultStatus.OPERATION_FAILED)

# prometheus_client's counters and histograms also export a ``<name>_created`` gauge per
# series, which the scrape does not need and kcm-gateway's metrics do not have. The switch
# is the library's, process wide (only kcm-core's metrics use those classes).
disable_created_metrics()


class CoreMetrics:
    """The core's registry and the metrics its parts update."""

    def __init__(self, *, process: bool = False,
                 timer: Callable[[], float] = time.perf_counter) -> None:
        self.timer = timer
        self.registry = registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "kcm_core_requests", "KMIP batch items answered, by operation and result.",
            ("operation", "result"), registry=registry)
        self.duration = Histogram(
            "kcm_core_request_duration_seconds",
            "Time from a request's arrival to its answer, by source (direct, gateway).",
            ("source",), buckets=LATENCY_BUCKETS, registry=registry)
        self.transactions = Histogram(
            "kcm_core_db_transaction_duration_seconds",
            "Time of one database transaction, by kind (write, read).", ("kind",),
            buckets=LATENCY_BUCKETS, registry=registry)
        self.audit_records = Counter(
            "kcm_core_audit_records", "Audit records committed.", registry=registry)
        self.store_unavailable = Counter(
            "kcm_core_store_unavailable",
            "Requests answered 'the key store is unavailable', by what was: the database, "
            "L1 (a PKCS#11 token), or the store stopped.", ("kind",), registry=registry)
        self.expired = Counter(
            "kcm_core_requests_expired",
            "Requests answered at their deadline while still queued: unrun (ran=false), or "
            "run, read-only, with their audit records not yet written (ran=true).",
            ("ran",), registry=registry)
        if process:
            ProcessCollector(registry=registry)
        self._items: dict[tuple[int | None, int], Any] = {}
        self.direct_duration = self.duration.labels("direct")
        self.gateway_duration = self.duration.labels("gateway")
        self._write_time = self.transactions.labels("write")
        self._read_time = self.transactions.labels("read")

    def answered(self, items: Iterable[ResponseBatchItem]) -> None:
        """Count a request's answered items (any thread)."""
        for item in items:
            operation = None if item.operation is None else int(item.operation)
            self.item(operation, int(item.result_status))

    def item(self, operation: int | None, status: int = _FAILED) -> None:
        """Count one answered item (``operation`` None: a request refused whole)."""
        name = operation_label(operation)
        key = (name, status)  # (bounded: the client picks the operation's value)
        child = self._items.get(key)
        if child is None:  # two threads may both bind it: labels() gives both the same child
            child = self._items[key] = self.requests.labels(name, result_label(status))
        child.inc()

    def unavailable(self, kind: str) -> None:
        """A request answered that the key store is unavailable (``kind``: ``database``,
        ``l1`` or ``stopped``)."""
        self.store_unavailable.labels(kind).inc()

    def expired_in_queue(self, ran: bool) -> None:
        """A request answered at its deadline while still queued."""
        self.expired.labels("true" if ran else "false").inc()

    def queues(self, waiting: Callable[[], Iterable[tuple[str, int]]]) -> None:
        """Report the requests waiting in each queue (``waiting()``: (queue, count) pairs)
        when scraped."""
        self.registry.register(CallbackGauge(
            "kcm_core_queued_requests", "Requests (and audit records) waiting for a store "
            "worker (workers) or for the writer's next group commit (writer).", ("queue",),
            lambda: [((queue,), count) for queue, count in waiting()]))

    def transaction(self, write: bool, seconds: float) -> None:
        """The store's ``on_transaction`` (a worker thread)."""
        (self._write_time if write else self._read_time).observe(seconds)

    def audit_written(self, count: int) -> None:
        """The store's ``on_audit_written`` (a worker thread)."""
        self.audit_records.inc(count)

    def watch(self, *, guard: ConnectionGuard, fanout: EventFanout | None,
              links: LinkServerFactory | None) -> None:
        """Report open connections and, with a link listener, the outbox and each
        gateway's lag when scraped."""
        register = self.registry.register
        register(CallbackGauge(
            "kcm_core_open_connections",
            "Connections open on the KMIP and link listeners.", (),
            lambda: [((), guard.connections)]))
        if fanout is None or links is None:
            return
        register(CallbackGauge(
            "kcm_core_outbox_head", "Sequence number of the newest event published to "
            "gateways.", (), lambda: [((), fanout.head or 0)]))

        def lags() -> list[tuple[tuple[str], float]]:
            head = fanout.head or 0
            worst: dict[str, int] = {}
            for link in list(links.links):
                name = link.gateway.id if link.gateway is not None else "unknown"
                worst[name] = max(worst.get(name, 0), max(head - link.delivered_seq, 0))
            return [((name,), lag) for name, lag in sorted(worst.items())]

        def counts() -> list[tuple[tuple[str], float]]:
            by_gateway: dict[str, int] = {}
            for link in list(links.links):
                name = link.gateway.id if link.gateway is not None else "unknown"
                by_gateway[name] = by_gateway.get(name, 0) + 1
            return [((name,), count) for name, count in sorted(by_gateway.items())]

        register(CallbackGauge(
            "kcm_core_outbox_lag_events",
            "Events published that a gateway's link has not been handed yet (the largest "
            "over its links), by gateway.", ("gateway",), lags))
        register(CallbackGauge(
            "kcm_core_gateway_links", "Links up, by gateway (one per gateway worker).",
            ("gateway",), counts))

    def watch_tls(self, *, expiry: CertificateExpiry, refusals: ConnectionRefusals,
                  crls: CrlRefresher | None) -> None:
        """Report the listeners' certificate expiry, the connections refused and, with
        ``tls.crl``, the CRLs' freshness when scraped (:mod:`kcm.tls_metrics`)."""
        for collector in tls_collectors("kcm_core", expiry=expiry, refusals=refusals,
                                        crls=crls):
            self.registry.register(collector)


def database_state(url: str, timeout: float = 2.0) -> dict[str, Any]:
    """Whether the database at ``url`` answers now, on a fresh connection, is at the
    newest migration and (SQLite) would let a write take its write lock:
    ``{"database": "ok", "revision": R}``, else ``{"database": why}``. Blocking: run it on
    a thread. A missing SQLite file is not created.

    SQLite: a file another process keeps locked (a ``sqlite3`` shell in ``BEGIN
    EXCLUSIVE``, a stuck backup) still answers reads in WAL mode, while every write waits
    for it and fails; so the check begins a write transaction (``BEGIN IMMEDIATE``,
    waiting at most half of ``timeout`` for the lock) and rolls it back at once, writing
    nothing. PostgreSQL is not asked: its writers' lock is held by another core's commit
    in the ordinary course, and a write waits for it (a core whose writes fail is not
    ready by its database's answer)."""
    head = _head_revision()
    try:
        revision, not_writable = _revision(url, timeout)
    except Exception as e:  # noqa: BLE001 - any failure to read is "not reachable"
        return {"database": f"unreachable: {_first_line(e)}"}
    if revision != head:
        return {"database": f"not migrated: at {revision or 'no revision'}, the code needs "
                            f"{head} (run kcm core init or restart kcm-core)",
                "revision": revision}
    if not_writable is not None:
        return {"database": f"not writable: {not_writable}", "revision": revision}
    return {"database": "ok", "revision": revision}


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _head_revision() -> str:
    """The newest packaged migration."""
    from kcm.core.store.migrate import HEAD_REVISION

    return HEAD_REVISION


def _revision(url: str, timeout: float) -> tuple[str | None, str | None]:
    """The revision the database is at, and why a write could not take the write lock now
    (SQLite; None: it could, or PostgreSQL)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        # Read-write, for the write lock (a read-only connection's BEGIN IMMEDIATE takes
        # none); ``mode=rw`` creates no missing file either.
        uri = f"file:{quote(os.path.abspath(str(parsed.database or '')))}?mode=rw"
        connection = sqlite3.connect(uri, uri=True, timeout=timeout / 2,
                                     isolation_level=None)
        try:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            return None if row is None else str(row[0]), _write_lock_refused(connection)
        finally:
            connection.close()
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine = create_engine(parsed, poolclass=NullPool,
                           connect_args={"connect_timeout": max(int(timeout), 1)})
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")
                                      ).scalar(), None
    finally:
        engine.dispose()


def _write_lock_refused(connection: sqlite3.Connection) -> str | None:
    """Why a write transaction could not begin on ``connection`` (SQLite, autocommit),
    waiting its busy timeout for the write lock; None: it began, and was rolled back."""
    try:
        connection.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as e:
        return _first_line(e)
    connection.execute("ROLLBACK")
    return None


class DatabaseReadiness:
    """kcm-core's readiness check (see the module docstring): ``check()`` is
    :func:`database_state` run by ``run_in_thread`` (default: the reactor's thread pool)."""

    def __init__(self, url: str, reactor: Any, *, timeout: float = 2.0,
                 run_in_thread: RunInThread | None = None,
                 check: Callable[[str, float], dict[str, Any]] = database_state) -> None:
        self.url = url
        self.timeout = timeout
        self._reactor = reactor
        self._run = run_in_thread or in_reactor_threads(reactor)
        self._check = check
        self._waiters: list[Deferred[Readiness]] = []
        self._thread_busy = False

    def __call__(self) -> Deferred[Readiness]:
        d: Deferred[Readiness] = Deferred()
        self._waiters.append(d)
        if len(self._waiters) > 1:
            return d  # answered with the check already running
        if self._thread_busy:  # an earlier check timed out and has not come back
            self._answer(Readiness(False, {"database": "unreachable: an earlier check has "
                                                       f"not returned in {self.timeout:g} s"}))
            return d
        self._thread_busy = True
        running = self._run(self._check, self.url, self.timeout)

        def returned(result: object) -> object:
            self._thread_busy = False
            return result

        running.addBoth(returned)
        answer: Deferred[dict[str, Any]] = Deferred()
        timer = self._reactor.callLater(self.timeout, lambda: answer.called or answer.callback(
            {"database": f"unreachable: no answer in {self.timeout:g} s"}))

        def forward(result: dict[str, Any] | Failure) -> None:
            if timer.active():
                timer.cancel()
            if answer.called:
                return
            if isinstance(result, Failure):
                answer.callback({"database": f"check failed: {result.getErrorMessage()}"})
            else:
                answer.callback(result)

        running.addBoth(forward)
        answer.addCallback(lambda state: self._answer(
            Readiness(state.get("database") == "ok", state)))
        return d

    def _answer(self, readiness: Readiness) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(readiness)
