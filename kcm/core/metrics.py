"""kcm-core's metrics and readiness (docs/operations.md, "Metrics and health").

What it promises:

* Requests are counted per batch item, by operation and result (the item's Result
  Status; a request refused whole counts once as operation ``unknown``), on the store's
  worker threads with ``prometheus_client``'s thread-safe counters, and timed per request
  message from its arrival to its answer (queueing for a worker included) by source
  (``direct``: a KMIP client; ``gateway``: forwarded on a link).
* Database transactions are timed by kind (``write``, ``read``), and committed audit
  records counted, by the store (:attr:`kcm.core.store.engine.Store.on_transaction`).
* Group commits are timed from their first job taken to their commit's answer, by result
  (``committed``, ``failed``), and their sizes (jobs) counted in buckets of their own
  (:data:`GROUP_SIZE_BUCKETS`), on the reactor thread (where they are answered); the wait
  of each write transaction for the writers' lock is timed by lock (``process``: this
  process's SQLite write lock; ``database``: SQLite's file lock or PostgreSQL's writers'
  lock), on its own thread, failed waits included.
* The audit chain's head (the newest record this process committed, or the head its
  newest checkpoint read, whichever is later), the newest checkpoint, and the state
  sweeper's lease, last sweep and failures are kept in memory by their owners and read
  when scraped: a scrape never reads the database.
* Open connections, the outbox head and each gateway's lag behind it are read when
  scraped, as are the TLS families (:mod:`kcm.tls_metrics`: certificate expiry,
  connections refused by reason, CRL freshness).
* No ``_created`` series: the metrics documented are all there is. The counters an alert
  watches for any increase (the store unavailable, requests expired) have every label
  value from 0.
* :class:`DatabaseReadiness`: ready when the database answers, is at the newest
  migration and (SQLite) would let a write take its write lock now (a ``BEGIN IMMEDIATE``
  rolled back at once, waiting at most half of ``timeout``, its turn taken behind the
  core's own writes); the check runs on a thread of
  its own (never on the reactor), one at a time, and a check that takes longer than
  ``timeout`` answers not ready.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, Metric
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from kcm.kmip.enums import ResultStatus
from kcm.kmip.messages import ResponseBatchItem
from kcm.metrics import (
    LATENCY_BUCKETS,
    CallbackGauge,
    ReactorHistogram,
    Readiness,
    operation_label,
    result_label,
)
from kcm.reactor_threads import RunInThread, in_reactor_threads
from kcm.tls_metrics import CertificateExpiry, tls_collectors

if TYPE_CHECKING:
    from kcm.connection_guard import ConnectionGuard
    from kcm.connection_refusals import ConnectionRefusals
    from kcm.core.audit_checkpoints import AuditCheckpoints
    from kcm.core.event_fanout import EventFanout
    from kcm.core.keyring import Keyring
    from kcm.core.link_server import LinkServerFactory
    from kcm.core.request_rates import TenantRates
    from kcm.core.row_mac_upgrade import RowMacUpgrade
    from kcm.core.state_sweeper import StateSweeper
    from kcm.core.store.disk_space import DiskSpace
    from kcm.core.tenant_stored import StoredByTenant
    from kcm.core.wrap_upgrade import WrapUpgrade
    from kcm.tls_refresh import TlsRefresher

__all__ = ["GROUP_SIZE_BUCKETS", "UNAVAILABLE_KINDS", "CoreMetrics", "DatabaseReadiness",
           "database_state"]

#: Buckets of a group commit's size (jobs): one job (a lone request) up to the largest
#: ``limits.max_group_commit`` is likely to be (64 by default).
GROUP_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

_FAILED = int(ResultStatus.OPERATION_FAILED)

#: The ``kind`` label of ``kcm_core_store_unavailable_total``: what was unavailable.
UNAVAILABLE_KINDS = ("database", "l1", "stopped")

#: What SQLite says of a write lock it could not take in time.
_LOCKED = "database is locked"

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
        self.lock_wait = Histogram(
            "kcm_core_writer_lock_wait_seconds",
            "Wait of a write transaction for the writers' lock, by lock: process (this "
            "process's SQLite write lock), database (SQLite's file lock, PostgreSQL's "
            "writers' lock); failed waits included.", ("lock",),
            buckets=LATENCY_BUCKETS, registry=registry)
        self.group_duration = ReactorHistogram(
            "kcm_core_group_commit_duration_seconds",
            "Time from a group commit's first job taken to its commit's answer, by result "
            "(committed, failed).", ("result",))
        self.group_jobs = ReactorHistogram(
            "kcm_core_group_commit_jobs", "Jobs (requests, audit records, sweeps) in one "
            "group commit.", (), buckets=GROUP_SIZE_BUCKETS)
        registry.register(self.group_duration)
        registry.register(self.group_jobs)
        #: The newest audit record this process committed (None: none yet).
        self._audit_head: int | None = None
        self._audit_head_lock = threading.Lock()
        self._checkpoints: AuditCheckpoints | None = None
        registry.register(CallbackGauge(
            "kcm_core_audit_head", "Sequence number of the audit chain's newest record, as "
            "this core last saw it (its own commits, its checkpoints' reads).", (),
            self._audit_head_now))
        if process:
            ProcessCollector(registry=registry)
        self._items: dict[tuple[int | None, int], Any] = {}
        self.direct_duration = self.duration.labels("direct")
        self.gateway_duration = self.duration.labels("gateway")
        self._write_time = self.transactions.labels("write")
        self._read_time = self.transactions.labels("read")
        self._lock_waits = {lock: self.lock_wait.labels(lock) for lock in ("process",
                                                                           "database")}
        self._group_committed = self.group_duration.labels("committed")
        self._group_failed = self.group_duration.labels("failed")
        self._group_size = self.group_jobs.labels()
        # Every kind from 0: an alert on any increase sees the first (a series born at 1
        # has no increase for Prometheus, and the first outage of a process went unseen).
        for kind in UNAVAILABLE_KINDS:
            self.store_unavailable.labels(kind)
        for ran in ("false", "true"):
            self.expired.labels(ran)

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

    def tenants_stored(self, counts: StoredByTenant) -> None:
        """Report what each tenant stores and its bound (as last read) when scraped."""
        self.registry.register(CallbackGauge(
            "kcm_core_tenant_stored_objects", "Objects (destroyed ones until purged) and L4 "
            "tombstones each tenant stores, as read at most 30 s ago.", ("tenant",),
            counts.stored))
        self.registry.register(CallbackGauge(
            "kcm_core_tenant_max_objects", "Each tenant's bound on what it stores (its own "
            "or max_objects_per_tenant; 0: none).", ("tenant",), counts.bounds))

    def wrapping(self, keyring: Keyring, upgrade: WrapUpgrade,
                 row_macs: RowMacUpgrade | None = None) -> None:
        """Report the rows refused as not matching their wrapping or their row MAC, the
        version 1 blobs left and the rows without a row MAC left, when scraped."""
        self.registry.register(_CallbackCounter(
            "kcm_core_wrapping_mismatches", "Stored objects refused because their row does "
            "not match their wrapping or its row MAC (changed in the database; a version 1 "
            "blob while accept_v1_wrapping is false; a row without a MAC while "
            "accept_rows_without_mac is false).", lambda: keyring.mismatches))
        if row_macs is not None:
            self.registry.register(CallbackGauge(
                "kcm_core_objects_without_row_mac", "Objects whose row has no row MAC yet "
                "(written by an earlier release), as last counted (every 5 minutes, and "
                "when the state sweeper's walk ends).", (),
                lambda: [] if row_macs.left is None else [((), float(row_macs.left))]))
        self.registry.register(CallbackGauge(
            "kcm_core_v1_wrapped_objects", "Objects whose material is still wrapped in the "
            "version 1 format, as last counted (every 5 minutes, and when the state "
            "sweeper's walk ends).", (),
            lambda: [] if upgrade.left is None else [((), float(upgrade.left))]))

    def tenant_rates(self, rates: TenantRates) -> None:
        """Report the requests each tenant's rate refused, and the live cores sharing the
        rates, when scraped."""
        self.registry.register(_CallbackCounter(
            "kcm_core_tenant_requests_throttled", "Requests refused whole and unrun "
            "(audited coalesced: ThrottleTenant), over their tenant's request rate on this "
            "core, by tenant.",
            rates.counts, ("tenant",)))
        self.registry.register(CallbackGauge(
            "kcm_core_live_cores", "Cores serving the database as this core last counted "
            "them (itself included; 1 on SQLite): each allows a tenant this share of its "
            "request rate.", (), lambda: [((), float(rates.cores))]))

    def transaction(self, write: bool, seconds: float) -> None:
        """The store's ``on_transaction`` (a worker thread)."""
        (self._write_time if write else self._read_time).observe(seconds)

    def audit_written(self, count: int) -> None:
        """The store's ``on_audit_written`` (a worker thread)."""
        self.audit_records.inc(count)

    def lock_waited(self, lock: str, seconds: float) -> None:
        """The store's ``on_lock_wait`` (the write transaction's thread)."""
        self._lock_waits[lock].observe(seconds)

    def group_answered(self, jobs: int, seconds: float, committed: bool) -> None:
        """The group committer's ``on_group`` (the reactor thread)."""
        (self._group_committed if committed else self._group_failed).observe(seconds)
        self._group_size.observe(jobs)

    def audit_head_moved(self, seq: int) -> None:
        """The store's ``on_audit_head`` (the committing thread)."""
        with self._audit_head_lock:  # (two threads' commits may end crossed)
            if self._audit_head is None or seq > self._audit_head:
                self._audit_head = seq

    def _audit_head_now(self) -> list[tuple[tuple[()], float]]:
        heads = [self._audit_head]
        if self._checkpoints is not None and self._checkpoints.newest is not None:
            heads.append(self._checkpoints.newest.seq)
        known = [head for head in heads if head is not None]
        return [((), max(known))] if known else []

    def audit_checkpoints(self, checkpoints: AuditCheckpoints) -> None:
        """Report the newest audit checkpoint ``checkpoints`` made (its head, and when) when
        scraped; its head counts toward ``kcm_core_audit_head`` too."""
        self._checkpoints = checkpoints

        def newest(value: Callable[[AuditCheckpoints], float]
                   ) -> Callable[[], list[tuple[tuple[()], float]]]:
            return lambda: ([] if checkpoints.newest is None
                            else [((), value(checkpoints))])

        self.registry.register(CallbackGauge(
            "kcm_core_audit_checkpoint_head", "Sequence number of the audit record the "
            "newest checkpoint names (none: no checkpoint yet).", (),
            newest(lambda c: c.newest.seq)))  # type: ignore[union-attr]
        self.registry.register(CallbackGauge(
            "kcm_core_audit_checkpoint_timestamp_seconds", "When the newest audit "
            "checkpoint was logged (unix seconds).", (), newest(lambda c: c.newest_at)))

    def sweeper(self, sweeper: StateSweeper) -> None:
        """Report the state sweeper's lease, last sweep and failed sweeps when scraped."""
        register = self.registry.register
        register(CallbackGauge(
            "kcm_core_sweeper_lease_held", "1 if this core held the state sweeper's lease "
            "at its last ask (it sweeps), else 0.", (),
            lambda: [((), 1.0 if sweeper.lease_held else 0.0)]))
        register(CallbackGauge(
            "kcm_core_sweeper_last_sweep_timestamp_seconds", "When this core's last state "
            "sweep committed (unix seconds; 0: none since the start).", (),
            lambda: [((), sweeper.last_sweep)]))
        register(_CallbackCounter(
            "kcm_core_sweeps_failed", "State sweeps that failed (the lease's ask or the "
            "sweep's transaction).", lambda: sweeper.failed))

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
        register(_CallbackCounter(
            "kcm_core_service_key_refreshes", "Gateways' conditional refreshes of service "
            "keys they hold (link version 8), by outcome: unchanged (answered from a read, "
            "no audit record), changed (fetched in full, audited).",
            lambda: [((outcome,), count) for outcome, count in links.refreshes.items()],
            ("outcome",)))

    def watch_tls(self, *, expiry: CertificateExpiry, refusals: ConnectionRefusals,
                  refresher: TlsRefresher) -> None:
        """Report the listeners' certificate expiry, the connections refused, the TLS
        files taken again and, with ``tls.crl``, the CRLs' freshness when scraped
        (:mod:`kcm.tls_metrics`)."""
        for collector in tls_collectors("kcm_core", expiry=expiry, refusals=refusals,
                                        refresher=refresher):
            self.registry.register(collector)


class _CallbackCounter:
    """A counter read when scraped: without ``labels``, ``read()`` is its value; with them,
    ``read()`` gives (label values, value) pairs."""

    def __init__(self, name: str, documentation: str, read: Callable[[], Any],
                 labels: tuple[str, ...] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self._read = read
        self._labels = labels

    def collect(self) -> Iterator[Metric]:
        if not self._labels:
            yield CounterMetricFamily(self.name, self.documentation, value=float(self._read()))
            return
        family = CounterMetricFamily(self.name, self.documentation, labels=self._labels)
        for values, value in self._read():
            family.add_metric(list(values), float(value))
        yield family


def database_state(url: str, timeout: float = 2.0, *,
                   write_lock: threading.Lock | None = None,
                   own_writer: Callable[[], float | None] | None = None,
                   own_write_limit: float = 10.0,
                   disk: DiskSpace | None = None,
                   file_refusal: Callable[[], str | None] | None = None) -> dict[str, Any]:
    """Whether the database at ``url`` answers now, on a fresh connection, is at the
    newest migration and (SQLite) would let a write take its write lock and has room for
    it (``disk``, the process's :class:`kcm.core.store.disk_space.DiskSpace` of it, with
    its hysteresis; None: :func:`kcm.core.store.disk_space.disk_full` read now):
    ``{"database": "ok", "revision": R}``, else ``{"database": why}``. Blocking: run it on
    a thread. A missing SQLite file is not created.

    SQLite: a file another process keeps locked (a ``sqlite3`` shell in ``BEGIN
    EXCLUSIVE``, a stuck backup) still answers reads in WAL mode, while every write waits
    for it and fails; so the check begins a write transaction (``BEGIN IMMEDIATE``,
    waiting at most half of ``timeout`` for the lock) and rolls it back at once, writing
    nothing. ``write_lock`` is the core's own writers' lock
    (:attr:`kcm.core.store.engine.Store.writers_lock`): the check takes it first, within
    that same half, so that it waits its turn behind the core's own writes (woken as one
    ends) rather than poll the file's lock on SQLite's back-off (1, 2, 5 ... 100 ms apart),
    which missed the moments between a busy core's group commits. ``own_writer`` tells
    how long the core's own write transaction has held the file's write lock
    (:meth:`kcm.core.store.engine.Store.file_write_lock_held_for`; None: it does not hold
    it): held for less than ``own_write_limit`` seconds (the requests' deadline), the file
    is writable, by the core (a core busy writing is not taken out of a load balancer);
    held longer (a write stuck in the disk: every request waiting behind it fails), or a
    transaction of the core still waiting for the lock (another process holds it), is not
    writable. PostgreSQL is not
    asked: its writers' lock is held by another core's commit in the ordinary course, and
    a write waits for it (a core whose writes fail is not ready by its database's
    answer); but a PostgreSQL session that is read-only (a standby, or
    ``default_transaction_read_only`` set for the database or role) is not writable.

    A SQLite file of more than one name (a hard link made while the core runs:
    :mod:`kcm.core.store.sqlite_links`) is ``{"database": "refused: ..."}``, why and what to
    do; so is, with ``file_refusal`` (the core's
    :meth:`kcm.core.sqlite_owner.SqliteOwner.refusal`, which then decides both), a file
    moved, replaced or removed while the core runs."""
    linked = _sqlite_linked(url) if file_refusal is None else file_refusal()
    if linked is not None:
        return {"database": f"refused: {linked}"}
    head = _head_revision()
    try:
        revision, not_writable = _revision(url, timeout, write_lock, disk,
                                           own_writer, own_write_limit)
    except Exception as e:  # noqa: BLE001 - any failure to read is "not reachable"
        return {"database": f"unreachable: {_first_line(e)}"}
    if revision != head:
        if revision is not None and not _known_revision(revision):
            # (a later release upgraded it: neither kcm core init nor a restart of this one
            # helps)
            return {"database": f"newer than this kcm-core: at {revision}, the code writes "
                                f"{head} (restart it on the release that upgraded the "
                                f"database)", "revision": revision}
        return {"database": f"not migrated: at {revision or 'no revision'}, the code needs "
                            f"{head} (run kcm core init or restart kcm-core)",
                "revision": revision}
    if not_writable is not None:
        return {"database": f"not writable: {not_writable}", "revision": revision}
    return {"database": "ok", "revision": revision}


def _sqlite_linked(url: str) -> str | None:
    """Why the SQLite file ``url`` names may not be used (a second name), or None."""
    from sqlalchemy.engine import make_url

    from kcm.core.store.sqlite_links import linked_refusal

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - the check itself says what is wrong with it
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return linked_refusal(str(parsed.database))


def _first_line(error: BaseException) -> str:
    from kcm.core.store.unavailable import first_line

    return first_line(error)


def _known_revision(revision: str) -> bool:
    from kcm.core.store.migrate import is_known_revision

    return is_known_revision(revision)


def _head_revision() -> str:
    """The newest packaged migration."""
    from kcm.core.store.migrate import HEAD_REVISION

    return HEAD_REVISION


def _revision(url: str, timeout: float, write_lock: threading.Lock | None = None,
              disk: DiskSpace | None = None,
              own_writer: Callable[[], float | None] | None = None,
              own_write_limit: float = 10.0) -> tuple[str | None, str | None]:
    """The revision the database is at, and why a write could not begin now (SQLite: its
    write lock not had; PostgreSQL: a new session is read-only; None: it could)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    from kcm.core.store.disk_space import disk_full
    from kcm.core.store.unavailable import READ_ONLY

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        # Read-write, for the write lock (a read-only connection's BEGIN IMMEDIATE takes
        # none); ``mode=rw`` creates no missing file either.
        uri = f"file:{quote(os.path.abspath(str(parsed.database or '')))}?mode=rw"
        connection = sqlite3.connect(uri, uri=True, timeout=timeout / 2,
                                     isolation_level=None)
        try:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            refused = _write_lock_refused(connection, write_lock, timeout / 2, own_writer,
                                          own_write_limit)
        finally:
            connection.close()
        # The write lock is had on a full disk too (BEGIN IMMEDIATE writes nothing), but
        # every commit then fails: "database or disk is full".
        return None if row is None else str(row[0]), refused or (
            disk.full() if disk is not None else disk_full(str(parsed.database or "")))
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    engine = create_engine(parsed, poolclass=NullPool,
                           connect_args={"connect_timeout": max(int(timeout), 1)})
    try:
        with engine.connect() as connection:
            # A new session's default: read-only on a standby, or where a DBA set
            # default_transaction_read_only (every write of the core fails there).
            revision, read_only = connection.execute(text(
                "SELECT version_num, current_setting('transaction_read_only') "
                "FROM alembic_version")).one()
            return revision, READ_ONLY if read_only == "on" else None
    finally:
        engine.dispose()


def _write_lock_refused(connection: sqlite3.Connection, write_lock: threading.Lock | None,
                        wait: float,
                        own_writer: Callable[[], float | None] | None = None,
                        own_write_limit: float = 10.0) -> str | None:
    """Why a write transaction could not begin on ``connection`` (SQLite, autocommit)
    within ``wait`` seconds, ``write_lock`` (the core's writers') held first; None: it
    began, and was rolled back, or (``own_writer()``) the core's own write has held the
    file's lock for less than ``own_write_limit`` seconds."""
    if write_lock is None:
        return _begin_refused(connection)
    deadline = time.monotonic() + wait
    if not write_lock.acquire(timeout=wait):
        held = None if own_writer is None else own_writer()
        if held is not None and held < own_write_limit:
            return None  # (the core's own long write holds the file's lock: writable)
        if held is not None:
            return (f"{_LOCKED}: this core's own write has held it for {held:.1f} s "
                    f"(more than the request deadline, {own_write_limit:g} s)")
        return _LOCKED  # (the core's own write waits that long for the file's lock)
    try:
        left = max(deadline - time.monotonic(), 0.0)
        connection.execute(f"PRAGMA busy_timeout = {int(left * 1000)}")
        return _begin_refused(connection)
    finally:
        write_lock.release()


def _begin_refused(connection: sqlite3.Connection) -> str | None:
    try:
        connection.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as e:
        return _first_line(e)
    connection.execute("ROLLBACK")
    return None


def _hosts(url: str) -> int:
    """How many hosts libpq tries in turn for ``url`` (``?host=a&host=b``, or ``host=a,b``;
    1 for any other), each within the check's connect timeout."""
    from sqlalchemy.engine import make_url

    try:
        hosts = make_url(url).query.get("host", ())
    except Exception:  # noqa: BLE001 - the check itself says what is wrong with it
        return 1
    if isinstance(hosts, str):
        hosts = (hosts,)
    return max(1, sum(len(host.split(",")) for host in hosts))


class DatabaseReadiness:
    """kcm-core's readiness check (see the module docstring): ``check()`` is
    :func:`database_state` run by ``run_in_thread`` (default: the reactor's thread pool).
    It has ``timeout`` for each host the URL names: libpq tries them in turn, each within
    ``timeout``, so a first host that does not answer at all (a former primary powered off
    after a failover) took the whole of one host's time and every check answered 503, on
    every core, while their connections to the next host served."""

    def __init__(self, url: str, reactor: Any, *, timeout: float = 2.0,
                 run_in_thread: RunInThread | None = None,
                 check: Callable[[str, float], dict[str, Any]] = database_state) -> None:
        self.url = url
        self.timeout = timeout
        #: The time a check has to answer: ``timeout`` for each host of ``url``.
        self.budget = timeout * _hosts(url)
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
                                                       f"not returned in {self.budget:g} s"}))
            return d
        self._thread_busy = True
        running = self._run(self._check, self.url, self.timeout)

        def returned(result: object) -> object:
            self._thread_busy = False
            return result

        running.addBoth(returned)
        answer: Deferred[dict[str, Any]] = Deferred()
        timer = self._reactor.callLater(self.budget, lambda: answer.called or answer.callback(
            {"database": f"unreachable: no answer in {self.budget:g} s"}))

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
