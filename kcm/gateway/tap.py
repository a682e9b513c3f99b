"""``twistd kcm-gateway``: options, and :func:`makeService`, which assembles the whole
service tree from them without reading a file or touching the network (the services do that
when they start; see :mod:`kcm.gateway.service`).

With ``workers`` other than 1 the tree is a supervisor's instead (:mod:`kcm.gateway.supervisor`),
whose workers run this same plugin with ``--worker INDEX`` on the connections it hands them,
or the listening socket it shares with them (:func:`worker_command`)."""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet import reactor as default_reactor
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python import usage

from kcm import monotonic_reactor
from kcm.config_file import ConfigError, ServiceOptions, limit_options
from kcm.connection_guard import ConnectionGuard
from kcm.connection_refusals import ConnectionRefusals
from kcm.drain import STOP_MARGIN
from kcm.gateway.config import GatewayConfig, load_config
from kcm.gateway.core_endpoints import CoreFailoverEndpoint, with_connect_timeout
from kcm.gateway.denied_uses import DeniedUses
from kcm.gateway.fast_path import FastPath
from kcm.gateway.handler import GatewayRequestHandler, new_correlation_id
from kcm.gateway.l3_cache import L3Cache
from kcm.gateway.link_certificates import LinkCertificates
from kcm.gateway.link_client import LinkClient
from kcm.gateway.local_batch import LocalRunner, gateway_engines
from kcm.gateway.metrics import GatewayMetrics
from kcm.gateway.placement import usable_cpus, worker_cpus, workers_by_cpu
from kcm.gateway.service import (
    GatewayIdentity,
    GatewayService,
    gateway_name_of,
    renamed_gateway,
)
from kcm.gateway.supervisor import (
    WORKER_LISTEN_FD,
    GatewaySupervisor,
    SharedListener,
    SighupIgnored,
    StartCheck,
    SupervisorLifeline,
    WorkerPool,
    worker_count,
)
from kcm.gateway.tenant_turns import TenantTurns
from kcm.gateway.tombstone_pages import TombstonePages
from kcm.gateway.usage_report import UsageCounter, UsageReporter
from kcm.gateway.worker_metrics import WorkerMetrics
from kcm.kmip_protocol import ConnectionLimits, KmipServerFactory
from kcm.l4.opened_keys import OpenedKeys
from kcm.link.frames import frame_size_limit
from kcm.reactor_dispatch import call_before_poll, spinning_wait
from kcm.tls import (
    TLSClientEndpoint,
    TLSListener,
    TlsMaterial,
    client_tls_from,
    listener_tls_options,
    min_tls_version,
    peer_principal,
    read_tls_material,
)
from kcm.tls_crl import RevocationLists
from kcm.tls_metrics import CertificateExpiry
from kcm.tls_policy import TLS_POLICY_OPTIONS
from kcm.tls_refresh import TlsRefresher


class Options(ServiceOptions):
    """Command line of ``twistd kcm-gateway``; every option overrides the config file."""

    command = "kcm-gateway"

    optParameters = [
        ["config", "c", None, "Configuration file (TOML, a [gateway] table)."],
        ["listen", None, None, "KMIP listener, an endpoint string (tcp:5698:interface=...)."],
        ["core", None, None, "The cores' link listeners, client endpoints (tcp:HOST:PORT) "
         "separated by commas."],
        ["core-order", None, None, "Which core to try first: spread (a random one) or "
         "listed (the first)."],
        ["core-server-name", None, None, "Name the core's certificate must carry."],
        ["trust-domain", None, None, "SPIFFE trust domain of client identities."],
        ["tls-cert", None, None, "Gateway certificate (PEM), for clients and the link."],
        ["tls-key", None, None, "Gateway private key (PEM)."],
        ["tls-ca", None, None, "CA certificates that peers' certificates must chain to."],
        *TLS_POLICY_OPTIONS,
        ["l3-ttl", None, None, "Seconds a cached service key (L3) is fresh."],
        ["max-stale", None, None, "Seconds a cached L3 may serve while the core is down."],
        ["l3-idle", None, None, "Seconds unused before a cached L3 is no longer refreshed "
                                "(forgotten past max-stale; 0: never)."],
        ["max-tombstones", None, None, "L4 tombstones held before the core answers for the "
         "service key with the most."],
        ["dek-cache-size", None, None, "Opened L4 DEKs kept between requests (0: none)."],
        ["dek-cache-ttl", None, None, "Seconds an opened L4 DEK is kept after it was opened."],
        ["usage-report-interval", None, None,
         "Seconds between usage reports to the core (default 0.25)."],
        ["prewarm", None, None, "Comma-separated tenant/service list to fetch at start."],
        ["max-in-flight", None, None, "Forwarded requests in flight before reading pauses."],
        ["log-level", None, None, "Log level (debug, info, warn, error, critical)."],
        ["log-format", None, None, "Log format: json (lines) or text."],
        ["log-file", None, None, "Log file (appended to, created 0600), or - for standard "
                                 "output."],
        ["metrics-listen", None, None, "Metrics and health listener (plain HTTP), an "
                                       "endpoint string (tcp:9697:interface=...); "
                                       "empty: none."],
        ["workers", None, None, "Worker processes sharing the KMIP listener (1: one process, "
                                "no supervisor; 0: one per CPU)."],
        ["busy-poll-us", None, None, "Microseconds to poll for events without sleeping "
                                     "after a turn that had some (0: none)."],
        ["pin-workers", None, None, "Pin each worker to a CPU: auto (when there is one per "
                                    "CPU), always, or never."],
        ["hung-worker-timeout", None, None, "Seconds a silent worker is given before it is "
                                            "restarted (default 10, at least 3)."],
        ["tenant-turn-time", None, None, "Seconds of the reactor one tenant's requests may "
                                         "take in one turn (default 0.002)."],
        ["drain-timeout", None, None, "Seconds a stopping gateway (or worker) waits for the "
                                      "requests in flight (default 5)."],
        ["worker", None, None, "Set by the supervisor: run as its worker INDEX (on the "
                               "connections or the listening socket it hands over)."],
        ["cpu", None, None, "Set by the supervisor: run this worker on CPU N only."],
        *limit_options(ConnectionLimits()),
    ]

    def postOptions(self) -> None:
        overrides = {key.replace("-", "_"): self[key] for key, *_ in self.optParameters
                     if key not in _NOT_SETTINGS}
        try:
            self["gateway_config"] = self.with_daemon_log(load_config(self["config"], overrides))
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        if self["config"] is not None:
            # As twistd was started: a daemon's --rundir changes directory before the
            # workers are started with this path.
            self["config"] = os.path.abspath(self["config"])
        if self["worker"] is not None:
            if not str(self["worker"]).isdigit() or int(self["worker"]) < 1:
                raise usage.UsageError("--worker takes a worker index (1, 2, ...)")
            self["worker"] = int(self["worker"])
        if self["cpu"] is not None:
            if self["worker"] is None or not str(self["cpu"]).isdigit():
                raise usage.UsageError("--cpu takes a CPU number, for a worker (--worker)")
            self["cpu"] = int(self["cpu"])


#: Options that are not settings of the configuration.
_NOT_SETTINGS = {"config", "worker", "cpu"}
#: Options a worker does not inherit from its supervisor's command line.
_SUPERVISOR_ONLY = {"config", "worker", "cpu", "workers", "listen", "metrics-listen"}


def worker_command(options: Options, index: int,
                   listen: str = f"fd:{WORKER_LISTEN_FD}",
                   metrics_listen: str | None = None, cpu: int | None = None) -> list[str]:
    """The command line of worker ``index``: ``twistd -n kcm-gateway`` with this process's
    configuration file (an absolute path: a daemonized supervisor changes directory) and
    command-line settings, as worker ``index`` listening on ``listen`` (the supervisor's
    :attr:`SharedListener.worker_listen`: the inherited listening socket by default), its
    metrics on ``metrics_listen`` (:meth:`WorkerMetrics.listen_for`) when the supervisor
    has a metrics listener (else none, whatever the configuration file says), pinned to
    ``cpu`` when given (:mod:`kcm.gateway.placement`)."""
    # -P: the working directory is not put on sys.path (python -c would), so a module there
    # cannot stand in for one of ours.
    # SIGHUP ignored from the interpreter's first statement (spawnProcess gives the child
    # the default action back; the plugin's import ignores it again only some 0.2 s later):
    # one sent to the whole unit is the supervisor's alone, even to a worker starting.
    command = [sys.executable, "-P", "-c", "import signal; "
               "signal.signal(signal.SIGHUP, signal.SIG_IGN); "
               "from twisted.scripts.twistd import run; run()",
               "--nodaemon", "--pidfile=", "kcm-gateway", "--worker", str(index),
               "--listen", listen]
    if options["config"] is not None:
        command += ["--config", options["config"]]  # (absolute: Options.postOptions)
    for key, *_ in Options.optParameters:
        if key not in _SUPERVISOR_ONLY and options[key] is not None:
            command += [f"--{key}", str(options[key])]
    command += ["--metrics-listen", metrics_listen or ""]
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    return command


def makeService(options: Options,
                reactor: Any = default_reactor) -> GatewayService | GatewaySupervisor:
    """The kcm-gateway service tree, assembled from parsed options; nothing is read yet.
    One gateway (``workers = 1``, or a supervisor's worker), else a supervisor of
    ``workers`` gateway processes. Either way the reactor's time is made monotonic
    (:mod:`kcm.monotonic_reactor`): durations are measured on it, dates (an answer's time
    stamp) read from the wall clock (``time.time``)."""
    monotonic_reactor.install(reactor)
    config = options["gateway_config"]
    worker = options["worker"]
    if worker is None:
        workers = worker_count(config.workers)
        if workers != 1:
            return make_supervisor(options, workers, reactor)
    tls = config.tls
    trust_domain = config.trust_domain
    gateway = GatewayService(config, reactor=reactor, log_fields=None if worker is None else
                             {"worker": worker, "pid": os.getpid()}, cpu=options["cpu"])
    # Connections refused, by reason, wherever they are (guard, protocol, CRL watch); the
    # certificates' dates as the listener's and the link's options are built.
    refusals = ConnectionRefusals()
    certificate_expiry = CertificateExpiry()
    # The TLS files (the listener's and the link's), and client certificates checked
    # against tls.crl, read as it starts and again as the files change; a
    # renewed certificate must still name this gateway (its name on the link).
    tls_files = TlsRefresher(tls.cert, tls.key, tls.ca, reactor, crl=tls.crl,
                             interval=tls.crl_refresh, refusals=refusals, pushed=True,
                             check=lambda cert: renamed_gateway(cert, trust_domain,
                                                                link.gateway_name))

    def link_options(material: TlsMaterial, lists: RevocationLists | None) -> Any:
        return client_tls_from(material, config.core_server_name,
                               min_version=min_tls_version(tls.policy),
                               dates=certificate_expiry.seen("link"))

    # The link's connections present the certificate the core last took; a renewed one is
    # presented by a second link (make-before-break) until the core welcomes it.
    newest_link_options = tls_files.client(link_options)
    certificates = LinkCertificates(newest_link_options, tls_files.certificate)
    link_endpoint = core_link_endpoint(reactor, config, certificates.accepted)
    renewal_endpoint = core_link_endpoint(reactor, config, certificates.newest)
    link = LinkClient(link_endpoint, clock=reactor, max_in_flight=config.max_in_flight,
                      max_frame_size=frame_size_limit(config.limits.max_message_size),
                      renewal_endpoint=renewal_endpoint, certificates=certificates)
    # A renewed certificate moves the link to it at once, make-before-break (a second link
    # first; the old one drains once the core welcomes it, and stays if the core refuses
    # it), not at its next reconnection: the old certificate can then be revoked with no cut.
    tls_files.on_certificate_renewed.append(
        lambda: link.relink("this gateway's certificate was renewed"))
    opened_keys = (OpenedKeys(clock=reactor.seconds, max_entries=config.dek_cache_size,
                              ttl=config.dek_cache_ttl) if config.dek_cache_size else None)
    # (the core counts as reachable while calls wait for the next link after a DRAIN)
    cache = L3Cache(link.fetch_service_keys,
                    connected=lambda: link.connected or link.relinking,
                    clock=reactor.seconds, ttl=config.l3_ttl, max_stale=config.max_stale,
                    idle=config.l3_idle,
                    max_tombstones=config.max_tombstones, opened_keys=opened_keys,
                    call_later=reactor.callLater, random=random.random,
                    max_fetches=max(1, link.max_fetches // 2), conditional=True)
    # A version sent without its tombstones (too many) has them paged in (link version 9).
    # (and, once linked to a core that pages them, one a core of an earlier release sent so)
    pages = TombstonePages(cache, link.fetch_tombstones, connected=lambda: link.connected,
                           taken=lambda: link.pages_taken, call_later=reactor.callLater)
    link.on_linked = pages.linked
    link.on_event = cache.apply_event
    link.on_resync = cache.resync
    link.on_policy = gateway.apply_policy
    # The core's CRLs (link version 10) checked beside this gateway's own tls.crl.
    link.on_crls = tls_files.take_pushed
    usage_counter = UsageCounter()
    engines = gateway_engines(usage_counter.used, opened_keys)
    runner = LocalRunner(new_correlation_id=new_correlation_id, engine_factory=engines)
    metrics = GatewayMetrics(process=True)
    fast_path = FastPath(cache=cache, engine_factory=engines,
                         clock=time.time,
                         new_correlation_id=new_correlation_id,
                         max_message_size=config.limits.max_message_size,
                         max_batch_items=config.limits.max_batch_items,
                         served=metrics.fast_served)
    handler = GatewayRequestHandler(runner=runner, cache=cache, link=link,
                                    clock=time.time,
                                    max_message_size=config.limits.max_message_size,
                                    max_batch_items=config.limits.max_batch_items,
                                    fast_path=fast_path, metrics=metrics,
                                    later=partial(call_before_poll, reactor),
                                    denied_uses=DeniedUses(reactor.seconds, reactor.callLater))
    kmip_factory = KmipServerFactory(
        handler, config.limits,
        lambda transport: peer_principal(transport, trust_domain, gateway.subject_map),
        reactor, upstream=link, refusals=refusals,
        share=TenantTurns(config.tenant_turn_time, partial(call_before_poll, reactor),
                          partial(reactor.callLater, 0, _nothing)))
    refresher = TimerService(cache.refresh_period, cache.refresh_due)
    refresher.clock = reactor
    guard = ConnectionGuard(config.limits, reactor, refusals=refusals)
    metrics.watch(link=link, cache=cache, guard=guard, clock=reactor.seconds)
    if config.busy_poll_us:
        metrics.watch_busy_poll(partial(spinning_wait, reactor))
    gateway.link, gateway.cache, gateway.handler = link, cache, handler
    gateway.kmip_factory = kmip_factory
    gateway.metrics = metrics

    # First, so that a SIGHUP does not end the process as the rest starts.
    # One gateway process (workers = 1): SIGHUP makes the TLS files' look at once.
    SighupIgnored(reactor, None if worker is not None else
                  "kcm-gateway: SIGHUP: one gateway process (workers = 1) looks at its TLS "
                  "files now; other changes take a restart",
                  reload=tls_files.look_now).setServiceParent(gateway)
    tls_files.setServiceParent(gateway)  # (before the identity loads the link's options)
    GatewayIdentity(tls.cert, trust_domain, link, link_endpoint,
                    renewal_endpoint).setServiceParent(gateway)
    link.setServiceParent(gateway)
    metrics.watch_tls(expiry=certificate_expiry, refusals=refusals, refresher=tls_files)

    def kmip_options(material: TlsMaterial, lists: RevocationLists | None) -> Any:
        return listener_tls_options(material, tls.policy, lists,
                                    dates=certificate_expiry.seen("kmip"))

    TLSListener(reactor, config.listen, tls_files.options(kmip_options, name="KMIP"),
                kmip_factory,
                name="kcm-kmip-listener", guard=guard,
                # A worker tells its supervisor once it can serve: linked, or holding keys.
                ready=lambda: metrics.readiness().ready).setServiceParent(gateway)
    refresher.setServiceParent(gateway)
    if opened_keys is not None:
        # Expired DEKs are never served; this takes them out of memory soon after.
        sweeper = TimerService(max(config.dek_cache_ttl / 10, 0.5), opened_keys.expire)
        sweeper.clock = reactor
        sweeper.setName("kcm-dek-cache-expiry")
        sweeper.setServiceParent(gateway)
    UsageReporter(usage_counter, link, reactor,
                  interval=config.usage_report_interval).setServiceParent(gateway)
    if config.metrics_listen:
        # (Twisted's web imported only for a metrics listener: 35 ms of every start)
        from kcm.metrics_http import metrics_listener, metrics_site

        metrics_listener(reactor, config.metrics_listen,
                         metrics_site(metrics.registry, metrics.readiness,
                                      stopping=lambda: gateway.stopping)
                         ).setServiceParent(gateway)
    if worker is not None:
        SupervisorLifeline(reactor).setServiceParent(gateway)
    return gateway


def core_link_endpoint(reactor: Any, config: GatewayConfig,
                       core_tls: Callable[[], IOpenSSLClientConnectionCreator] | None = None
                       ) -> CoreFailoverEndpoint:
    """The endpoint of the gateway's link to its cores, its TLS options made by
    ``core_tls`` when ``load`` is called (None: from the TLS files as they are then)."""
    tls = config.tls
    if core_tls is None:
        def core_tls() -> IOpenSSLClientConnectionCreator:
            return client_tls_from(read_tls_material(tls.cert, tls.key, tls.ca),
                                   config.core_server_name,
                                   min_version=min_tls_version(tls.policy))
    return CoreFailoverEndpoint(
        [TLSClientEndpoint(reactor, with_connect_timeout(core), core_tls)
         for core in config.core], config.core, order=config.core_order)


def check_worker_identity(reactor: Any, config: GatewayConfig) -> None:
    """What a worker's :class:`GatewayIdentity` checks as it starts, checked in the
    supervisor: the certificate names a gateway, and the link's TLS files load. A
    configuration that fails it would only make every worker exit, again and again."""
    gateway_name_of(config.tls.cert, config.trust_domain)
    core_link_endpoint(reactor, config).load()


def make_supervisor(options: Options, workers: int,
                    reactor: Any = default_reactor) -> GatewaySupervisor:
    """A supervisor of ``workers`` gateway processes sharing the configured listener (its
    restarts and stops timed on the reactor, made monotonic by :func:`makeService`)."""
    monotonic_reactor.install(reactor)
    config = options["gateway_config"]
    tls = config.tls
    pinned = worker_cpus(workers, config.pin_workers, usable_cpus())
    supervisor = GatewaySupervisor(config, workers=workers, pinned=pinned)
    # What would stop each worker's start stops the supervisor's, with the same line.
    StartCheck(partial(check_worker_identity, reactor, config),
               name="kcm-gateway-identity").setServiceParent(supervisor)
    StartCheck(lambda: listener_tls_options(
        read_tls_material(tls.cert, tls.key, tls.ca), tls.policy,
        RevocationLists(tls.crl, tls.ca) if tls.crl else None),
        name="kcm-tls-files").setServiceParent(supervisor)
    listener = SharedListener(reactor, config.listen, near=workers_by_cpu(pinned))
    listener.setServiceParent(supervisor)
    worker_metrics: WorkerMetrics | None = None
    pool = WorkerPool(workers, lambda index: worker_command(
        options, index, listener.worker_listen,
        worker_metrics.listen_for(index) if worker_metrics is not None else None,
        pinned.get(index)),
        listener, reactor=reactor, hung_after=config.hung_worker_timeout,
        stop_timeout=config.drain_timeout + STOP_MARGIN)
    listener.on_worker_up = pool.worker_up  # a rolling restart waits for each to be up
    if config.metrics_listen:
        from kcm.metrics_http import metrics_listener, metrics_site

        # Before the pool: its directory is there when the first worker starts.
        worker_metrics = WorkerMetrics(
            reactor, lambda: pool.workers, pool.restarts,
            lambda: listener.acceptor.handoffs if listener.acceptor is not None else {},
            configured=lambda: range(1, pool.count + 1),
            unplaced=lambda: listener.acceptor.unplaced if listener.acceptor is not None else 0)
        worker_metrics.setServiceParent(supervisor)
        # It answers (/readyz 503, "stopping") until the workers have stopped.
        metrics_listener(reactor, config.metrics_listen,
                         metrics_site(None, worker_metrics.readiness,
                                      exposition=worker_metrics.exposition,
                                      stopping=lambda: supervisor.stopping),
                         stop_after=pool.when_stopped).setServiceParent(supervisor)
    pool.setServiceParent(supervisor)
    return supervisor


def _nothing() -> None:
    """A timed call that only makes the reactor's poll not wait (kcm.gateway.tenant_turns)."""
