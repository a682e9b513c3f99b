"""kcm-core's configuration: a TOML file, then command-line overrides. Pure (no I/O but
reading the file it is given)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kcm.config_file import (
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
from kcm.core.policy import AccessPolicy, ApplicationObjects
from kcm.core.server_info import DEFAULT_MIN_ROTATE_INTERVAL
from kcm.core.store.object_cache import DEFAULT_MAX_BYTES
from kcm.core.store.quota import DEFAULT_MAX_OBJECTS
from kcm.drain import DRAIN_TIMEOUT, MAX_DRAIN_TIMEOUT
from kcm.identity import validate_trust_domain
from kcm.kmip_protocol import ConnectionLimits

__all__ = ["SECRET_QUERY_KEYS", "CoreConfig", "CoreLimits", "TlsFiles", "command_line_secret",
           "load_config"]

#: The libpq parameters of a database URL's query that are secrets (or name where one is).
SECRET_QUERY_KEYS = frozenset({"password", "sslpassword", "passfile"})


#: The longest ``limits.request_deadline``, seconds: a request running longer holds a
#: database worker that long.
MAX_REQUEST_DEADLINE = 3600
#: The most ``limits.requests_per_second_per_tenant`` and ``request_burst_per_tenant`` (and
#: a tenant's own): more is no limit at all.
MAX_REQUEST_RATE = 1_000_000_000
#: The most ``database_threads``: each holds a database connection.
MAX_DATABASE_THREADS = 256


@dataclass(frozen=True, slots=True)
class CoreLimits(ConnectionLimits):
    """``[core.limits]``: the limits every KMIP listener has (``max_batch_items`` among
    them), and the other bounds on the work one request may make the core do
    (docs/operations.md, "Limits and hostile clients")."""

    #: Unique Identifiers one Locate returns: a smaller Maximum Items is honoured, a larger
    #: or absent one is this (KMIP allows a server to return fewer than asked).
    max_locate_results: int = 1000
    #: Seconds a request may take, from its arrival; at the next batch-item boundary past
    #: it the remaining items fail (General Failure) without running.
    request_deadline: float = 10.0
    #: Of the ``database_threads`` request workers, how many the requests of one tenant may
    #: hold at once (kcm.core.fair_scheduler); the waiting tenants are served in turn.
    max_workers_per_tenant: int = 1
    #: Requests (or read-only requests' audit records) one group commit takes at most
    #: (kcm.core.group_commit); a group also ends after 25 ms of work or with no one waiting.
    max_group_commit: int = 64
    #: Seconds: the shortest Rotate Interval a client may give a managed key (Create,
    #: Register, Re-key, the attribute operations; kcm.core.managed), since every rotation
    #: makes a new object; 0 accepts any. A scope's ``managed_interval`` below it is raised
    #: to it.
    min_rotate_interval: int = DEFAULT_MIN_ROTATE_INTERVAL
    #: Connections the gateway-link listener holds at once, its own cap beside
    #: ``max_connections`` (which counts the KMIP listener's): KMIP clients can never take a
    #: gateway's slot, nor gateways a client's. One link per gateway worker (two for a few
    #: seconds while one reconnects); the process holds up to both caps added.
    max_link_connections: int = 64
    #: Rows one tenant may store (kcm.core.store.quota): its managed objects, destroyed ones
    #: until purged, and L4 tombstones; a Create, Register, Derive, L4 Revoke... past it is
    #: refused (Server Limit Exceeded). ``kcm core tenant limit`` sets a tenant's own; 0:
    #: no bound.
    max_objects_per_tenant: int = DEFAULT_MAX_OBJECTS
    #: Batch items a second one tenant's requests may make, sustained (kcm.core.request_rates:
    #: a token bucket per tenant, shared by the live cores, kcm.core.core_presence); a
    #: request over it is refused whole and unrun (Server Limit Exceeded), audited coalesced
    #: (kcm.core.throttle_records: one record per tenant a minute). ``kcm
    #: core tenant limit`` sets a tenant's own; 0: no limit.
    requests_per_second_per_tenant: float = 0.0
    #: Batch items one tenant may send at once above that rate (the bucket's size); 0: one
    #: second of its rate.
    request_burst_per_tenant: int = 0

    def __post_init__(self) -> None:
        # Named, not super(): a slots dataclass is a new class, which super() cannot find.
        ConnectionLimits.__post_init__(self)
        for name in ("max_locate_results", "max_workers_per_tenant", "max_group_commit",
                     "max_link_connections"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"limits.{name} must be a whole number of at least 1")
        most = self.max_objects_per_tenant
        if isinstance(most, bool) or not isinstance(most, int) or most < 0:
            raise ValueError("limits.max_objects_per_tenant must be a whole number of at "
                             "least 0 (0: no bound)")
        rate = self.requests_per_second_per_tenant
        if (isinstance(rate, bool) or not isinstance(rate, int | float)
                or not math.isfinite(rate) or not 0 <= rate <= MAX_REQUEST_RATE):
            raise ValueError("limits.requests_per_second_per_tenant must be a number of at "
                             f"least 0 (0: no limit), at most {MAX_REQUEST_RATE}")
        burst = self.request_burst_per_tenant
        if (isinstance(burst, bool) or not isinstance(burst, int)
                or not 0 <= burst <= MAX_REQUEST_RATE):
            raise ValueError("limits.request_burst_per_tenant must be a whole number of at "
                             f"least 0 (0: one second of the rate), at most {MAX_REQUEST_RATE}")
        minimum = self.min_rotate_interval
        if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 0:
            raise ValueError("limits.min_rotate_interval must be a whole number of seconds "
                             "of at least 0")
        deadline = self.request_deadline
        if (isinstance(deadline, bool) or not isinstance(deadline, int | float)
                or not math.isfinite(deadline) or not 0 < deadline <= MAX_REQUEST_DEADLINE):
            raise ValueError("limits.request_deadline must be a positive number of seconds, "
                             f"at most {MAX_REQUEST_DEADLINE}")


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Everything kcm-core needs to start. Relative paths are relative to the working
    directory."""

    listen: str = "tcp:5696:interface=127.0.0.1"
    #: The gateway link listener (docs/link-protocol.md); an empty string turns it off.
    link_listen: str = "tcp:5697:interface=127.0.0.1"
    trust_domain: str = "kcm.test"
    database: str = "sqlite:///var/kcm-core.db"
    l1_key_file: str = "var/l1.key"
    #: L1 in a PKCS#11 token instead of the key file: an RFC 7512 URI (kcm.core.l1_pkcs11).
    l1_pkcs11: str | None = None
    #: L1 given in this environment variable instead of the key file (its base64 text, as
    #: in a key file; kcm.core.l1_file.open_key_env): for a secret store that sets it.
    l1_key_env: str | None = None
    policy_file: str | None = None
    tls: TlsFiles = field(default_factory=lambda: TlsFiles("var/pki/core.pem",
                                                           "var/pki/core.key",
                                                           "var/pki/ca.pem"))
    limits: CoreLimits = field(default_factory=CoreLimits)
    database_threads: int = 4
    #: Events below this level are dropped (debug, info, warn, error, critical).
    log_level: str = "info"
    #: ``json`` (one object per line) or ``text`` (readable lines); see kcm.logging.
    log_format: str = "json"
    #: Where the log goes: ``-`` for standard output, else a file (appended to, created 0600).
    log_file: str = "-"
    #: Seconds between checkpoints of the audit chain's head in the log (and one at start).
    audit_checkpoint_interval: float = 300.0
    #: Which managed objects of its tenant an application may use: ``own-service`` (those
    #: of its own service and those of no service) or ``tenant`` (all); see kcm.core.policy.
    application_objects: str = ApplicationObjects.OWN_SERVICE.value
    #: The metrics and health listener (an endpoint string, ``tcp:9696:interface=...``):
    #: ``/metrics``, ``/healthz``, ``/readyz`` over plain HTTP; empty (the default): none.
    metrics_listen: str = ""
    #: Seconds between sweeps of the state sweeper (dates passed, automatic rotation).
    state_sweep_interval: float = 5.0
    #: Managed objects kept decoded in memory (kcm.core.store.object_cache); 0: none.
    object_cache_size: int = 10_000
    #: The memory they may take in all, as reckoned (kcm.core.store.object_cache.weight).
    object_cache_bytes: int = DEFAULT_MAX_BYTES
    #: Seconds an event is kept in the outbox for gateways that relink (7 days); older ones
    #: are deleted by the state sweeper (kcm.core.outbox_retention).
    outbox_retention: float = 7 * 24 * 3600.0
    #: Seconds a destroyed object is kept after its Destroy, then deleted with its names,
    #: groups and Locate keys by the state sweeper (kcm.core.destroyed_retention); None (the
    #: default): kept for ever, as KMIP lets a client Locate a destroyed object and get its
    #: attributes.
    destroyed_retention: float | None = None
    #: Seconds a stopping core (SIGTERM) waits for its clients' and gateways' requests
    #: before it cuts what is left (kcm.drain): at least ``limits.request_deadline`` for no
    #: stop to cut a request that runs to its deadline.
    drain_timeout: float = DRAIN_TIMEOUT
    #: Whether material wrapped in the version 1 format (bound to its tenant and uid only,
    #: not to its level, service, key version and object type) is still opened (and
    #: re-wrapped as version 2 by the state sweeper); false: refused like a tampered row.
    accept_v1_wrapping: bool = True
    #: Whether a managed object's row without a row MAC (written by an earlier release, and
    #: MACed by the state sweeper meanwhile) is taken as it is; false: refused like a
    #: tampered row (a database writer can null a MAC), and no longer MACed by the sweeper.
    accept_rows_without_mac: bool = True

    @property
    def access(self) -> AccessPolicy:
        """The configured access rules."""
        return AccessPolicy(ApplicationObjects(self.application_objects))


_TOP_LEVEL = {"listen", "link_listen", "trust_domain", "database", "l1_key_file", "l1_pkcs11",
              "l1_key_env",
              "policy_file", "database_threads", "log_level", "log_format", "log_file",
              "audit_checkpoint_interval", "application_objects", "metrics_listen",
              "state_sweep_interval", "object_cache_size", "object_cache_bytes",
              "outbox_retention", "destroyed_retention", "drain_timeout",
              "accept_v1_wrapping", "accept_rows_without_mac"}


#: An environment variable's name, as POSIX shells take them.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> CoreConfig:
    """Read ``[core]`` (with ``[core.tls]`` and ``[core.limits]``) from the TOML file at
    ``path`` (None: defaults only), then apply ``overrides`` (keys of CoreConfig, plus
    ``tls_cert``/``tls_key``/``tls_ca``; None values are ignored)."""
    config = load_section(CoreConfig(), "core", path, _command_line_numbers(overrides),
                          _TOP_LEVEL, coerce=_typed)
    check_endpoint("core.listen", config.listen, LISTENER_KINDS)
    check_endpoint("core.link_listen", config.link_listen, LISTENER_KINDS, empty=True)
    check_endpoint("core.metrics_listen", config.metrics_listen, METRICS_KINDS, empty=True)
    check_distinct_ports([("core.listen", config.listen),
                          ("core.link_listen", config.link_listen),
                          ("core.metrics_listen", config.metrics_listen)])
    if not isinstance(config.trust_domain, str):
        raise ConfigError("core.trust_domain must be a string (a SPIFFE trust domain)")
    try:
        validate_trust_domain(config.trust_domain)
    except ValueError:
        raise ConfigError(f"core.trust_domain {config.trust_domain!r} is not a SPIFFE trust "
                          "domain (lower-case letters, digits, '.', '-', '_')") from None
    _check_database(config.database)
    for name in ("l1_key_file", "policy_file", "l1_pkcs11", "l1_key_env"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"core.{name} must be a non-empty string")
    if config.l1_key_env is not None:
        if not _ENV_NAME.fullmatch(config.l1_key_env):
            raise ConfigError("core.l1_key_env must name an environment variable (letters, "
                              "digits and '_', not first a digit)")
        if config.l1_pkcs11:
            raise ConfigError("core.l1_key_env and core.l1_pkcs11 name two L1 keys: set one")
    allowed = [choice.value for choice in ApplicationObjects]
    if config.application_objects not in allowed:
        raise ConfigError(f"core.application_objects must be one of {', '.join(allowed)}, "
                          f"not {config.application_objects!r}")
    for name in ("accept_v1_wrapping", "accept_rows_without_mac"):
        if not isinstance(getattr(config, name), bool):
            raise ConfigError(f"core.{name} must be true or false")
    if not 0 < config.drain_timeout <= MAX_DRAIN_TIMEOUT:
        raise ConfigError("core.drain_timeout must be more than 0 and at most "
                          f"{MAX_DRAIN_TIMEOUT:g} (seconds)")
    return config


def _typed(values: dict[str, Any]) -> dict[str, Any]:
    """Command-line overrides arrive as strings; the file gives TOML types."""
    out = dict(values)
    if "object_cache_size" in out:
        out["object_cache_size"] = whole_number("core.object_cache_size",
                                                out["object_cache_size"])
    if "object_cache_bytes" in out:
        out["object_cache_bytes"] = whole_number("core.object_cache_bytes",
                                                 out["object_cache_bytes"], least=1 << 20)
    if "database_threads" in out:
        out["database_threads"] = whole_number("core.database_threads",
                                               out["database_threads"], least=1,
                                               most=MAX_DATABASE_THREADS)
    for name in ("accept_v1_wrapping", "accept_rows_without_mac"):
        if isinstance(out.get(name), str):  # (the command line's)
            choice = {"true": True, "false": False}.get(out[name].lower())
            if choice is None:
                raise ConfigError(f"core.{name} must be true or false")
            out[name] = choice
    for name in ("audit_checkpoint_interval", "state_sweep_interval", "outbox_retention",
                 "drain_timeout"):
        if name in out:
            out[name] = seconds(f"core.{name}", out[name])
    if out.get("destroyed_retention") is not None:
        out["destroyed_retention"] = seconds("core.destroyed_retention",
                                             out["destroyed_retention"])
    return out


def _command_line_numbers(overrides: dict[str, Any] | None) -> dict[str, Any] | None:
    """``overrides`` with a ``destroyed_retention`` string (the command line's) as the
    number it spells: its default (None) gives no type to take it as, as the others' do
    (:func:`kcm.config_file.load_section`). One that spells none stays, to be refused."""
    value = (overrides or {}).get("destroyed_retention")
    if not isinstance(value, str):
        return overrides
    try:
        number = float(value)
    except ValueError:
        return overrides
    return {**(overrides or {}), "destroyed_retention": number}


def _check_database(database: Any) -> None:
    """A SQLAlchemy URL whose port (if any) is a port number; the message does not repeat
    the URL, which may hold a password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if not isinstance(database, str) or not database:
        raise ConfigError("core.database must be a database URL (sqlite:///PATH or "
                          "postgresql+psycopg://...)")
    try:
        url = make_url(database)
    except ArgumentError:
        raise ConfigError("core.database is not a database URL (sqlite:///PATH or "
                          "postgresql+psycopg://...)") from None
    except ValueError:  # SQLAlchemy's int() of the port
        raise ConfigError("core.database: the port of the URL is not a number") from None
    if url.port is not None and not 1 <= url.port <= 65535:
        raise ConfigError("core.database: the port of the URL must be from 1 to 65535")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"core.database: unsupported database {url.get_backend_name()[:20]!r} "
                          f"(use sqlite:///PATH or postgresql+psycopg://...)")


def command_line_secret(database: str | None, l1_pkcs11: str | None) -> str | None:
    """Why the command line's ``--database`` or ``--l1-pkcs11`` may not be taken: a database
    URL with a password, a PKCS#11 URI with the PIN (``pin-value``). A process's command
    line is every local user's to read (``ps``, ``/proc/PID/cmdline``). None when neither
    holds a secret."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if database:
        try:
            url = make_url(database)
        except (ArgumentError, ValueError):
            url = None  # (refused by the configuration's own check, without repeating it)
        if url is not None and (url.password is not None or any(
                key.lower() in SECRET_QUERY_KEYS for key in url.query)):
            return ("--database: the URL holds a password, and a command line shows in ps "
                    "to every local user: give it in the configuration file (core.database, "
                    "the file readable by kcm alone) or in libpq's ~/.pgpass")
    if l1_pkcs11:
        query = l1_pkcs11.partition("?")[2]
        if any(part.partition("=")[0].strip().lower() == "pin-value"
               for part in query.split("&")):
            return ("--l1-pkcs11: the URI holds the PIN (pin-value), and a command line shows "
                    "in ps to every local user: use pin-source=file:PATH, or give the URI in "
                    "the configuration file (core.l1_pkcs11, the file readable by kcm alone)")
    return None
