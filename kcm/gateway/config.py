"""kcm-gateway's configuration: a TOML file (a ``[gateway]`` table), then command-line
overrides. Pure (no I/O but reading the file it is given)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kcm.busy_poll import MAX_WINDOW
from kcm.config_file import (
    CLIENT_KINDS,
    LISTENER_KINDS,
    METRICS_KINDS,
    ConfigError,
    TlsFiles,
    check_distinct_ports,
    check_endpoint,
    load_section,
    seconds,
)
from kcm.config_values import whole_number
from kcm.drain import DRAIN_TIMEOUT, MAX_DRAIN_TIMEOUT
from kcm.gateway.core_endpoints import ORDERS
from kcm.gateway.placement import PIN_MODES
from kcm.gateway.tenant_turns import TURN_TIME
from kcm.identity import validate_trust_domain
from kcm.kmip_protocol import ConnectionLimits

__all__ = ["ConfigError", "GatewayConfig", "TlsFiles", "load_config"]

#: The most ``workers``: each is a whole gateway process with its own link to the core.
MAX_WORKERS = 1024
#: The default of ``hung_worker_timeout``, and its least value (seconds): a worker silent
#: 2 s already gets no new connections (kcm.gateway.balance.SILENT_AFTER).
HUNG_WORKER_TIMEOUT = 10.0
MIN_HUNG_WORKER_TIMEOUT = 3.0
#: The most ``tenant_turn_time`` (seconds): another tenant's request may wait that long.
MAX_TENANT_TURN_TIME = 1.0


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything kcm-gateway needs to start. Relative paths are relative to the working
    directory."""

    #: KMIP listener for applications; not 5696, so a core and a gateway share a host.
    listen: str = "tcp:5698:interface=127.0.0.1"
    trust_domain: str = "kcm.test"
    #: The cores' link listeners (docs/link-protocol.md §1), plain client endpoints: one,
    #: or several cores on one database to fail over between (kcm.gateway.core_endpoints).
    #: A TOML string or list; on the command line, endpoints separated by commas.
    core: tuple[str, ...] = ("tcp:127.0.0.1:5697",)
    #: Which listed core a gateway tries first: ``spread`` (a random one, so that gateways
    #: with the same list spread over the cores) or ``listed`` (the first).
    core_order: str = "spread"
    #: The name the core's certificate must carry (DNS or IP SAN).
    core_server_name: str = "localhost"
    tls: TlsFiles = field(default_factory=lambda: TlsFiles("var/pki/gateway.pem",
                                                           "var/pki/gateway.key",
                                                           "var/pki/ca.pem"))
    #: Seconds a cached L3 is fresh; after that it is refreshed in the background.
    l3_ttl: float = 300.0
    #: Seconds after the last successful refresh an L3 may still serve while the core is
    #: unreachable; beyond that the gateway fails closed.
    max_stale: float = 3600.0
    #: Seconds a cached service (or L3 version) may go unused by requests before it is no
    #: longer refreshed in the background; it is forgotten once also past max_stale, and
    #: fetched again if used later. 0: never idle (every L3 held is refreshed for as long as
    #: the gateway runs). At least l3_ttl otherwise.
    l3_idle: float = 86400.0
    #: L4 tombstones (revoked or destroyed tokens) held; beyond it the service key with the
    #: most has its L4 requests answered by the core instead (kcm.gateway.l3_cache).
    max_tombstones: int = 1_000_000
    #: Opened L4 DEKs kept between requests (kcm.l4.opened_keys), so that a token used again
    #: is not opened under its L3 again: at most this many (least recently used go first);
    #: 0 keeps none (every request opens its token).
    dek_cache_size: int = 10_000
    #: Seconds an opened DEK is kept after it was opened, used or not: how long a plaintext
    #: DEK may stay in the gateway's memory after a request used it.
    dek_cache_ttl: float = 300.0
    #: Services whose current L3 is fetched as soon as the link is up ("tenant/service").
    prewarm: tuple[str, ...] = ()
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    #: Requests forwarded to the core and not yet answered, across all clients.
    max_in_flight: int = 1024
    #: Events below this level are dropped (debug, info, warn, error, critical).
    log_level: str = "info"
    #: ``json`` (one object per line) or ``text`` (readable lines); see kcm.logging.
    log_format: str = "json"
    #: Where the log goes: ``-`` for standard output, else a file (appended to, created 0600).
    log_file: str = "-"
    #: Worker processes sharing the KMIP listener, each one whole gateway (its own link,
    #: L3 cache and event stream) under a supervisor: 1 (the default) is one process and no
    #: supervisor; 0 is one per CPU this process may run on. See kcm.gateway.supervisor.
    workers: int = 1
    #: The metrics and health listener (an endpoint string, ``tcp:9697:interface=...``):
    #: ``/metrics``, ``/healthz``, ``/readyz`` over plain HTTP; empty (the default): none.
    #: With workers, the supervisor's answers for all of them (kcm.gateway.worker_metrics).
    metrics_listen: str = ""
    #: Seconds between this gateway's reports to the core of how many encryptions it made
    #: under each service key version (the usage a rotation policy's cap counts).
    usage_report_interval: float = 0.25
    #: Microseconds the gateway (each worker) keeps asking the kernel for events without
    #: sleeping after a turn that had some (kcm.busy_poll): 0 (the default) sleeps at
    #: once. On a VM whose idle vCPUs halt, 700 takes the wake-ups off a forward (about
    #: 0.08 ms of it) at the cost of up to a CPU while requests come (docs/operations.md).
    busy_poll_us: int = 0
    #: With workers: ``auto`` (the default) pins each worker to a CPU of its own when there
    #: is one per CPU this process may run on; ``always`` pins them round robin over those
    #: CPUs; ``never`` leaves them to the kernel. Pinned workers are handed the connections
    #: whose packets arrive on their CPU (kcm.gateway.placement).
    pin_workers: str = "auto"
    #: With workers (on a TCP listener): seconds a worker may go without reporting to the
    #: supervisor before it is killed as hung and restarted (it gets no new connections
    #: after 2 s already: kcm.gateway.balance.SILENT_AFTER). At least 3.
    hung_worker_timeout: float = HUNG_WORKER_TIMEOUT
    #: Seconds a stopping gateway (SIGTERM, a worker of a rolling restart) waits for its
    #: clients' requests, forwarded ones included, before it cuts what is left: at least as
    #: long as the longest request the core answers (its ``limits.request_deadline``) for no
    #: stop to cut one. A supervisor kills a worker 5 s after that past its SIGTERM.
    drain_timeout: float = DRAIN_TIMEOUT
    #: Seconds of the reactor one tenant's requests may take in one turn before its further
    #: requests wait for the next turn, behind other tenants' (kcm.gateway.tenant_turns).
    tenant_turn_time: float = TURN_TIME

    def prewarm_services(self) -> list[tuple[str, str]]:
        """The prewarm list as (tenant, service) pairs."""
        return [_service_pair(entry) for entry in self.prewarm]


_TOP_LEVEL = {"listen", "trust_domain", "core", "core_order", "core_server_name", "l3_ttl",
              "max_stale", "l3_idle", "max_tombstones", "dek_cache_size", "dek_cache_ttl",
              "prewarm", "max_in_flight", "log_level", "log_format", "log_file", "workers",
              "metrics_listen", "usage_report_interval", "busy_poll_us", "pin_workers",
              "hung_worker_timeout", "drain_timeout", "tenant_turn_time"}
_GONE = {"policy_file": "gateway.policy_file is no longer read: the gateway uses the policy "
                        "the core pushes (set policy_file in the core's configuration)"}


def _service_pair(entry: str) -> tuple[str, str]:
    tenant, slash, service = entry.partition("/")
    if not slash or not tenant or not service or "/" in service:
        raise ConfigError(f"gateway.prewarm: {entry!r} is not \"tenant/service\"")
    return tenant, service


def load_config(path: str | Path | None,
                overrides: dict[str, Any] | None = None) -> GatewayConfig:
    """Read ``[gateway]`` (with ``[gateway.tls]`` and ``[gateway.limits]``) from the TOML
    file at ``path`` (None: defaults only), then apply ``overrides`` (keys of GatewayConfig,
    plus ``tls_cert``/``tls_key``/``tls_ca``; None values are ignored). Raises ConfigError
    naming the first wrong setting."""
    config = load_section(GatewayConfig(), "gateway", path, overrides, _TOP_LEVEL,
                          retired=_GONE, coerce=_typed)
    config.prewarm_services()
    check_endpoint("gateway.listen", config.listen, LISTENER_KINDS)
    check_endpoint("gateway.metrics_listen", config.metrics_listen, METRICS_KINDS, empty=True)
    check_distinct_ports([("gateway.listen", config.listen),
                          ("gateway.metrics_listen", config.metrics_listen)])
    for core in config.core:
        check_endpoint("gateway.core", core, CLIENT_KINDS, client=True)
    if not isinstance(config.trust_domain, str):
        raise ConfigError("gateway.trust_domain must be a string (a SPIFFE trust domain)")
    try:
        validate_trust_domain(config.trust_domain)
    except ValueError:
        raise ConfigError(f"gateway.trust_domain {config.trust_domain!r} is not a SPIFFE "
                          "trust domain (lower-case letters, digits, '.', '-', '_')") from None
    if not isinstance(config.core_server_name, str) or not config.core_server_name.strip():
        raise ConfigError("gateway.core_server_name must be the DNS name or IP address the "
                          "core's certificate carries")
    _check_server_name(config.core_server_name)
    if config.max_stale < config.l3_ttl:
        raise ConfigError("gateway: max_stale must be at least l3_ttl")
    if config.l3_idle and config.l3_idle < config.l3_ttl:
        raise ConfigError("gateway.l3_idle must be 0 (never idle) or at least l3_ttl")
    if config.core_order not in ORDERS:
        raise ConfigError(f"gateway.core_order must be one of {', '.join(ORDERS)}")
    if config.max_tombstones < 1:
        raise ConfigError("gateway.max_tombstones must be at least 1")
    if config.dek_cache_size < 0:
        raise ConfigError("gateway.dek_cache_size must be 0 (none kept) or more")
    if config.max_in_flight < 1:
        raise ConfigError("gateway.max_in_flight must be at least 1")
    if not 0 <= config.workers <= MAX_WORKERS:
        raise ConfigError(f"gateway.workers must be 0 (one per CPU) to {MAX_WORKERS}")
    if not 0 <= config.busy_poll_us <= MAX_WINDOW * 1e6:
        raise ConfigError(f"gateway.busy_poll_us must be 0 (none) to {MAX_WINDOW * 1e6:.0f}")
    if config.pin_workers not in PIN_MODES:
        raise ConfigError(f"gateway.pin_workers must be one of {', '.join(PIN_MODES)}")
    if config.hung_worker_timeout < MIN_HUNG_WORKER_TIMEOUT:
        raise ConfigError("gateway.hung_worker_timeout must be at least "
                          f"{MIN_HUNG_WORKER_TIMEOUT:g} (seconds)")
    if not 0 < config.drain_timeout <= MAX_DRAIN_TIMEOUT:
        raise ConfigError("gateway.drain_timeout must be more than 0 and at most "
                          f"{MAX_DRAIN_TIMEOUT:g} (seconds)")
    if not 0 < config.tenant_turn_time <= MAX_TENANT_TURN_TIME:
        raise ConfigError("gateway.tenant_turn_time must be more than 0 and at most "
                          f"{MAX_TENANT_TURN_TIME:g} (seconds)")
    return config


def _typed(values: dict[str, Any]) -> dict[str, Any]:
    """Command-line overrides arrive as strings; the file gives TOML types."""
    out = dict(values)
    for key in ("l3_ttl", "max_stale", "usage_report_interval", "dek_cache_ttl",
                "hung_worker_timeout", "drain_timeout", "tenant_turn_time"):
        if key in out:
            out[key] = seconds(f"gateway.{key}", out[key])
    if "l3_idle" in out:
        out["l3_idle"] = _idle_seconds(out["l3_idle"])
    for key in ("max_in_flight", "max_tombstones"):
        if key in out:
            out[key] = whole_number(f"gateway.{key}", out[key], least=1)
    if "core" in out:
        out["core"] = _core_list(out["core"])
    if "prewarm" in out:
        prewarm = out["prewarm"]
        if isinstance(prewarm, str):
            prewarm = [p.strip() for p in prewarm.split(",") if p.strip()]
        if not isinstance(prewarm, list | tuple) or not all(isinstance(p, str)
                                                             for p in prewarm):
            raise ConfigError("gateway.prewarm must be a list of \"tenant/service\" strings")
        out["prewarm"] = tuple(prewarm)
    for key in ("workers", "dek_cache_size", "busy_poll_us"):
        if key in out:
            out[key] = whole_number(f"gateway.{key}", out[key])
    return out


def _idle_seconds(value: Any) -> float:
    """``l3_idle``: 0 (never idle) or a positive number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return 0.0
    try:
        return seconds("gateway.l3_idle", value)
    except ConfigError:
        raise ConfigError("gateway.l3_idle must be 0 (never idle) or a positive number of "
                          "seconds") from None


def _core_list(value: Any) -> tuple[str, ...]:
    """The ``core`` setting as a tuple of endpoint strings, from a TOML string or list or
    the command line's comma-separated endpoints."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if (not isinstance(value, list | tuple) or not value
            or not all(isinstance(v, str) and v for v in value)):
        raise ConfigError("gateway.core must be a link endpoint (tcp:HOST:PORT) or a list "
                          "of them")
    if len(set(value)) != len(value):
        raise ConfigError("gateway.core lists a core twice")
    return tuple(value)


def _check_server_name(name: str) -> None:
    """ConfigError unless the link's TLS client takes ``name``: Twisted's
    ``optionsForClientTLS``, which the link's options are made with
    (:func:`kcm.tls.client_tls_options`), run here (an IP address, or a name IDNA encodes;
    not ``kcm_core`` or ``a..b``)."""
    from twisted.internet.ssl import optionsForClientTLS

    try:
        optionsForClientTLS(name)
    except ValueError as e:  # (idna's errors are UnicodeErrors, so ValueErrors)
        reason = " ".join(str(e).split())[:120] or type(e).__name__
        raise ConfigError(f"gateway.core_server_name {name[:100]!r} is not a DNS name or IP "
                          f"address a TLS client can check: {reason}") from None
