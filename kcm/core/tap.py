"""``twistd kcm-core``: options, and :func:`makeService`, which assembles the whole service
tree from them without reading a file or touching the network (the services do that when
they start; see :mod:`kcm.core.service`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet import reactor as default_reactor
from twisted.python import usage

from kcm import monotonic_reactor
from kcm.config_file import ConfigError, ServiceOptions, limit_options
from kcm.connection_guard import ConnectionGuard
from kcm.connection_refusals import ConnectionRefusals
from kcm.core.audit_checkpoints import AuditCheckpoints
from kcm.core.auto_rotation import rotate_due
from kcm.core.config import CoreLimits, command_line_secret, load_config
from kcm.core.core_presence import CorePresence
from kcm.core.destroyed_retention import drop_tombstones, purge_destroyed
from kcm.core.event_fanout import STALE_AFTER, EventFanout
from kcm.core.events import TenantRemovals
from kcm.core.keyring import Keyring
from kcm.core.l1_before_migration import L1BeforeMigration
from kcm.core.link_server import LinkServerFactory, LinkSettings
from kcm.core.managed_rotation import rotate_managed_due
from kcm.core.metrics import CoreMetrics, DatabaseReadiness, database_state
from kcm.core.outbox_listener import OutboxListener
from kcm.core.outbox_retention import prune_outbox
from kcm.core.request_handler import SWEEPER_SHARE, CoreRequestHandler
from kcm.core.request_rates import RateReads, TenantRates
from kcm.core.row_mac_upgrade import COUNT_INTERVAL as ROW_MAC_COUNT_INTERVAL
from kcm.core.row_mac_upgrade import RowMacUpgrade, seal_step
from kcm.core.server_info import ServerInfo
from kcm.core.service import CoreService, MasterKey, PolicyFile
from kcm.core.session_pinning import SessionPinning
from kcm.core.sqlite_owner import SqliteOwner
from kcm.core.state_sweeper import StateSweeper
from kcm.core.store.engine import SILENCE_GRACE_S, Store
from kcm.core.stream_parts import purge_spent
from kcm.core.sweep_steps import SweepStep
from kcm.core.tenant_rotation import rewrap_step, rotate_tenant_keys_due
from kcm.core.tenant_stored import INTERVAL as STORED_INTERVAL
from kcm.core.tenant_stored import StoredByTenant
from kcm.core.usage_intake import UsageIntake
from kcm.core.wrap_upgrade import COUNT_INTERVAL as WRAP_COUNT_INTERVAL
from kcm.core.wrap_upgrade import WrapUpgrade, upgrade_step
from kcm.kmip_protocol import KmipServerFactory
from kcm.link.frames import frame_size_limit
from kcm.reactor_dispatch import call_before_poll
from kcm.tls import (
    TLSListener,
    TlsMaterial,
    listener_tls_options,
    min_tls_version,
    peer_principal,
    server_tls_from,
)
from kcm.tls_crl import RevocationLists
from kcm.tls_metrics import CertificateExpiry
from kcm.tls_policy import TLS_POLICY_OPTIONS
from kcm.tls_refresh import TlsRefresher


class Options(ServiceOptions):
    """Command line of ``twistd kcm-core``; every option overrides the config file."""

    command = "kcm-core"

    optParameters = [
        ["config", "c", None, "Configuration file (TOML, a [core] table)."],
        ["listen", None, None, "KMIP listener, an endpoint string (tcp:5696:interface=...)."],
        ["link-listen", None, None, "Gateway link listener, an endpoint string (tcp:5697:...)."],
        ["database", None, None, "SQLAlchemy database URL."],
        ["l1-key-file", None, None, "The L1 master key file."],
        ["l1-pkcs11", None, None, "The L1 key in a PKCS#11 token (an RFC 7512 pkcs11: URI); "
                                  "replaces the key file."],
        ["l1-key-env", None, None, "The environment variable that holds the L1 key (base64); "
                                   "replaces the key file."],
        ["trust-domain", None, None, "SPIFFE trust domain of client identities."],
        ["policy-file", None, None, "Policy file mapping certificate subjects to principals."],
        ["tls-cert", None, None, "Server certificate (PEM)."],
        ["tls-key", None, None, "Server private key (PEM)."],
        ["tls-ca", None, None, "CA certificates that client certificates must chain to."],
        *TLS_POLICY_OPTIONS,
        ["log-level", None, None, "Log level (debug, info, warn, error, critical)."],
        ["log-format", None, None, "Log format: json (lines) or text."],
        ["log-file", None, None, "Log file (appended to, created 0600), or - for standard "
                                 "output."],
        ["metrics-listen", None, None, "Metrics and health listener (plain HTTP), an "
                                       "endpoint string (tcp:9696:interface=...); "
                                       "empty: none."],
        ["audit-checkpoint-interval", None, None,
         "Seconds between audit checkpoints in the log (default 300)."],
        ["state-sweep-interval", None, None,
         "Seconds between state sweeps: passed dates, automatic rotation (default 5)."],
        ["outbox-retention", None, None,
         "Seconds an event is kept in the outbox for relinking gateways (default 604800: "
         "7 days)."],
        ["destroyed-retention", None, None,
         "Seconds a destroyed object is kept, then deleted by the state sweeper (default: "
         "kept for ever)."],
        ["drain-timeout", None, None,
         "Seconds a stopping core waits for the requests in flight (default 5)."],
        ["application-objects", None, None,
         "Which objects of its tenant an application may use: own-service or tenant."],
        ["database-threads", None, None, "Worker threads for database transactions."],
        ["object-cache-size", None, None,
         "Managed objects kept decoded in memory (default 10000; 0: none)."],
        ["object-cache-bytes", None, None,
         "Bytes those objects may take in memory at most (default 128 MiB)."],
        ["accept-v1-wrapping", None, None,
         "Whether key material wrapped in the version 1 format is still opened: true "
         "(default) or false."],
        ["accept-rows-without-mac", None, None,
         "Whether an object's row without a row MAC is still used: true (default) or "
         "false."],
        *limit_options(CoreLimits()),
    ]

    def postOptions(self) -> None:
        secret = command_line_secret(self["database"], self["l1-pkcs11"])
        if secret is not None:
            raise usage.UsageError(secret)
        overrides = {key.replace("-", "_"): self[key] for key, *_ in self.optParameters
                     if key != "config"}
        try:
            self["core_config"] = self.with_daemon_log(load_config(self["config"], overrides))
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def _sweep_step(fn: Callable[..., Sequence[object]], **bound: Any) -> SweepStep:
    """``fn(session, now=…, **bound)`` as a step of the state sweeper, named as ``fn`` (the
    name its failures are reported under)."""
    def step(session: Any, now: float) -> Sequence[object]:
        return fn(session, now=now, **bound)

    step.__name__ = fn.__name__
    return step


def makeService(options: Options, reactor: Any = default_reactor) -> CoreService:
    """The kcm-core service tree, assembled from parsed options; nothing is read yet.
    The reactor's time is made monotonic (:mod:`kcm.monotonic_reactor`): durations are
    measured on it, dates read from the wall clock (``time.time``). The object cache and
    the keyring take ``reactor.seconds`` as it is then (``time.monotonic`` plus a constant),
    which their callers on the store's threads may read too."""
    monotonic_reactor.install(reactor)
    config = options["core_config"]
    trust_domain = config.trust_domain
    store = Store(config.database, reactor=reactor, threads=config.database_threads,
                  migrate=True, object_cache_size=config.object_cache_size,
                  object_cache_bytes=config.object_cache_bytes,
                  silence_limit=config.limits.request_deadline + SILENCE_GRACE_S,
                  clock=reactor.seconds)
    store.max_objects_per_tenant = config.limits.max_objects_per_tenant
    metrics = CoreMetrics(process=True)
    store.on_transaction, store.on_audit_written = metrics.transaction, metrics.audit_written
    store.on_audit_head, store.on_lock_wait = metrics.audit_head_moved, metrics.lock_waited
    keyring = Keyring(clock=reactor.seconds, kept_ttl=store.objects.ttl,
                      accept_v1=config.accept_v1_wrapping,
                      accept_unsealed=config.accept_rows_without_mac)
    upgrade = WrapUpgrade(keyring)
    row_macs = RowMacUpgrade(keyring)
    rates = TenantRates(reactor, config.limits.requests_per_second_per_tenant,
                        config.limits.request_burst_per_tenant)
    metrics.tenant_rates(rates)
    handler = CoreRequestHandler(store, keyring, clock=time.time, timer=reactor.seconds,
                                 server_info=ServerInfo(
                                     access=config.access,
                                     min_rotate_interval=config.limits.min_rotate_interval),
                                 limits=config.limits, workers=config.database_threads,
                                 metrics=metrics,
                                 group_start=partial(call_before_poll, reactor),
                                 reactor=reactor, rates=rates)
    policy = PolicyFile(config.policy_file, store, reactor)
    core = CoreService(config, reactor=reactor, store=store, keyring=keyring, handler=handler,
                       policy=policy)
    tls = config.tls
    # KMIP clients get the configured versions and suites; the gateways' link keeps the
    # default suites (both ends are KCM) with the configured minimum version.
    # The TLS files, and client certificates checked against tls.crl, read as the
    # listeners start and again as the files change (the refresher starts before them).
    # Connections refused, by reason, wherever they are (guard, protocols, CRL watches);
    # the certificates' dates as each listener's options are built (kcm.tls_metrics).
    refusals = ConnectionRefusals()
    certificate_expiry = CertificateExpiry()
    refresher = TlsRefresher(tls.cert, tls.key, tls.ca, reactor, crl=tls.crl,
                             interval=tls.crl_refresh, refusals=refusals)
    policy.on_sighup.append(refresher.look_now)  # SIGHUP: the TLS files looked at too

    def kmip_options(material: TlsMaterial, lists: RevocationLists | None) -> Any:
        return listener_tls_options(material, tls.policy, lists,
                                    dates=certificate_expiry.seen("kmip"))

    def link_options(material: TlsMaterial, lists: RevocationLists | None) -> Any:
        return server_tls_from(material, min_version=min_tls_version(tls.policy), crls=lists,
                               dates=certificate_expiry.seen("link"))

    kmip_tls_options = refresher.options(kmip_options, name="KMIP")
    link_tls_options = refresher.options(link_options, name="gateway link")

    kmip_factory = KmipServerFactory(
        handler, config.limits,
        lambda transport: peer_principal(transport, trust_domain, policy.subject_map),
        reactor, refusals=refusals)
    # The KMIP listener's guard, and the link listener's reserved from it: caps of their
    # own (no KMIP client can take a gateway's slot), descriptors checked for both.
    guard = ConnectionGuard(config.limits, reactor, refusals=refusals)
    link_guard = (guard.reserve("max_link_connections", config.limits.max_link_connections)
                  if config.link_listen else None)

    master_key = MasterKey(keyring, store, config.l1_key_file, config.l1_pkcs11,
                           config.l1_key_env)
    # Before the store opens the file: one kcm-core per SQLite file.
    owner = SqliteOwner(config.database, store, clock=reactor)
    owner.setServiceParent(core)
    # Before anything else talks to the database (anything holds a lease or LISTENs):
    # refused through a transaction or statement pooler, in words that say so.
    SessionPinning(store).setServiceParent(core)
    # Before the store upgrades an older schema: the L1 key is the database's.
    L1BeforeMigration(master_key, config.database).setServiceParent(core)
    store.setServiceParent(core)
    # Keys in the clear leave the object cache and the keyring at their ttl, asked for
    # again or not (a key another core destroyed is never asked for here again).
    expiry = TimerService(store.objects.ttl / 10, partial(_expire_clear_keys, store, keyring))
    expiry.clock = reactor
    expiry.setName("kcm-object-cache-expiry")
    expiry.setServiceParent(core)
    master_key.setServiceParent(core)
    # The tenants' own request rates: read as the core starts (before its listeners) and
    # every few seconds, so that kcm core tenant limit reaches every running core.
    RateReads(rates, store, reactor).setServiceParent(core)
    # The cores on the database (PostgreSQL), counted as this one starts and every 5 s:
    # they share each tenant's rate.
    CorePresence(store, reactor, rates.set_cores).setServiceParent(core)
    checkpoints = AuditCheckpoints(store, keyring, reactor,
                                   interval=config.audit_checkpoint_interval)
    checkpoints.setServiceParent(core)
    metrics.audit_checkpoints(checkpoints)
    policy.setServiceParent(core)
    refresher.setServiceParent(core)
    TLSListener(reactor, config.listen, kmip_tls_options, kmip_factory,
                name="kcm-kmip-listener", guard=guard).setServiceParent(core)
    sweeper = StateSweeper(store, reactor, wall_clock=time.time,
                           interval=config.state_sweep_interval,
                           write=partial(handler.write_in_turn, SWEEPER_SHARE), steps=[
        _sweep_step(rotate_due, keyring=keyring),
        _sweep_step(rotate_managed_due, keyring=keyring, trust_domain=trust_domain,
                    min_rotate_interval=config.limits.min_rotate_interval),
        _sweep_step(rotate_tenant_keys_due, keyring=keyring),
        _sweep_step(rewrap_step, keyring=keyring, refused=set()),
        _sweep_step(upgrade_step, upgrade=upgrade),
        _sweep_step(seal_step, upgrade=row_macs),
        _sweep_step(purge_spent),
        _sweep_step(prune_outbox, retention=config.outbox_retention),
        # The tombstones of a destroyed L3 before the L3 itself (which they name).
        _sweep_step(drop_tombstones),
        *([_sweep_step(purge_destroyed, retention=config.destroyed_retention)]
          if config.destroyed_retention is not None else [])])
    if config.link_listen:
        # Woken on PostgreSQL by every core's commits that add events (OutboxListener), on
        # SQLite by this process's (the store's on_outbox_written); the poll finds the
        # events of other processes on SQLite (the kcm command, another core on the file).
        fanout = EventFanout(store, reactor, head=None,  # read from the outbox at start
                             poll_interval=fanout_poll_interval(config.database),
                             stale_after=STALE_AFTER if _notifies(config.database) else None)
        link_factory = LinkServerFactory(
            handler=handler, store=store, keyring=keyring, fanout=fanout,
            resolve_peer=lambda transport: peer_principal(transport, trust_domain),
            trust_domain=trust_domain, subject_map=None, clock=reactor, wall_clock=time.time,
            settings=LinkSettings(
                max_frame_size=frame_size_limit(config.limits.max_message_size),
                write_timeout=config.limits.write_timeout), refusals=refusals,
            lineage=lambda: master_key.lineage)  # (read as it starts, before the listener)
        policy.on_change.append(link_factory.set_subject_map)
        # The CRLs of tls.crl reach every gateway (link version 10), as they change.
        refresher.on_crls_taken.append(link_factory.set_crls)
        policy.on_scopes.append(link_factory.set_gateway_scopes)
        fanout.on_stale.append(link_factory.events_stale)
        fanout.on_went_back.append(link_factory.events_went_back)
        # Whoever removed a tenant (kcm core tenant remove), this core forgets it.
        fanout.subscribe(TenantRemovals([store.known.forget_tenant, keyring.forget_tenant]))
        link_factory.on_usage = UsageIntake(store, reactor, wall_clock=time.time,
                                            on_cap_reached=sweeper.sweep_soon).add
        core.fanout, core.link_factory = fanout, link_factory
        if not _notifies(config.database):  # there the commit's NOTIFY wakes it already
            store.on_outbox_written = _on_reactor(reactor, fanout.wake)
        fanout.setServiceParent(core)
        OutboxListener(store, fanout.wake, reactor).setServiceParent(core)
        TLSListener(reactor, config.link_listen, link_tls_options, link_factory,
                    name="kcm-link-listener", guard=link_guard,
                    bound_output=False).setServiceParent(core)
    else:
        fanout = link_factory = None
    sweeper.setServiceParent(core)
    metrics.sweeper(sweeper)
    metrics.watch(guard=guard, fanout=fanout, links=link_factory)
    metrics.queues(handler.queue_waiting)
    metrics.wrapping(keyring, upgrade, row_macs)
    metrics.watch_tls(expiry=certificate_expiry, refusals=refusals, refresher=refresher)
    if config.metrics_listen:
        # What each tenant stores against its bound: read every 30 s, off the writer.
        stored = StoredByTenant(store, config.limits.max_objects_per_tenant)
        metrics.tenants_stored(stored)
        reads = TimerService(STORED_INTERVAL, stored.refresh)
        reads.clock = reactor
        reads.setName("kcm-tenant-stored")
        reads.setServiceParent(core)
        # The version 1 blobs left, for the gauge: counted at start and every 5 minutes.
        counts = TimerService(WRAP_COUNT_INTERVAL, upgrade.refresh, store)
        counts.clock = reactor
        counts.setName("kcm-v1-wrapped-count")
        counts.setServiceParent(core)
        # The rows without a row MAC left, the same way.
        mac_counts = TimerService(ROW_MAC_COUNT_INTERVAL, row_macs.refresh, store)
        mac_counts.clock = reactor
        mac_counts.setName("kcm-rows-without-mac-count")
        mac_counts.setServiceParent(core)
    core.metrics = metrics
    core.kmip_factory = kmip_factory
    if config.metrics_listen:
        # (Twisted's web imported only for a metrics listener: 35 ms of every start)
        from kcm.metrics import unready_while
        from kcm.metrics_http import metrics_listener, metrics_site

        # (the check's write probe waits its turn behind this core's own writes)
        # (and shares the disk's reading with the log line: one hysteresis, one statvfs a
        # second at most)
        readiness = DatabaseReadiness(config.database, reactor, check=partial(
            database_state, write_lock=store.writers_lock,
            own_writer=store.file_write_lock_held_for,
            own_write_limit=config.limits.request_deadline, disk=handler.disk_space,
            file_refusal=owner.refusal))
        # (a core whose own certificate expired serves no new client, whatever its
        # database says)
        ready = unready_while(readiness, certificate_expiry.expired, "tls")
        metrics_listener(reactor, config.metrics_listen,
                         metrics_site(metrics.registry, ready,
                                      stopping=lambda: core.stopping)).setServiceParent(core)
    return core


def _on_reactor(reactor: Any, call: Callable[[], object]) -> Callable[[], None]:
    """``call`` made on the reactor thread, from any thread (the reactor is looked up when
    it is made: makeService only assembles)."""
    return lambda: reactor.callFromThread(call)


def _notifies(database: str) -> bool:
    """Whether commits that add events NOTIFY every core (PostgreSQL)."""
    return database.startswith("postgresql")


def fanout_poll_interval(database: str) -> float:
    """Seconds between the fan-out's reads of the outbox: on PostgreSQL a fallback behind
    the commits' NOTIFY (so 0.5); on SQLite, where only this process's own commits wake it,
    the way other processes' events are found (so 0.2: an idle core reads five times a
    second, not twenty)."""
    return 0.5 if _notifies(database) else 0.2


def _expire_clear_keys(store: Store, keyring: Keyring) -> None:
    """What the object cache and the keyring keep in the clear, dropped once ``ttl`` old."""
    store.objects.expire()
    keyring.expire()
