"""kcm-core's configuration: a TOML file, then command-line overrides. Pure (no I/O but
reading the file it is given)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kcm.config_file import ConfigError, TlsFiles, load_section
from kcm.core.policy import AccessPolicy, ApplicationObjects
from kcm.core.server_info import DEFAULT_MIN_ROTATE_INTERVAL
from kcm.kmip_protocol import ConnectionLimits

__all__ = ["CoreConfig", "CoreLimits", "TlsFiles", "load_config"]


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

    def __post_init__(self) -> None:
        # Named, not super(): a slots dataclass is a new class, which super() cannot find.
        ConnectionLimits.__post_init__(self)
        for name in ("max_locate_results", "max_workers_per_tenant", "max_group_commit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"limits.{name} must be a whole number of at least 1")
        minimum = self.min_rotate_interval
        if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 0:
            raise ValueError("limits.min_rotate_interval must be a whole number of seconds "
                             "of at least 0")
        deadline = self.request_deadline
        if isinstance(deadline, bool) or not isinstance(deadline, int | float) or deadline <= 0:
            raise ValueError("limits.request_deadline must be a positive number of seconds")


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

    @property
    def access(self) -> AccessPolicy:
        """The configured access rules."""
        return AccessPolicy(ApplicationObjects(self.application_objects))


_TOP_LEVEL = {"listen", "link_listen", "trust_domain", "database", "l1_key_file", "l1_pkcs11",
              "policy_file", "database_threads", "log_level", "log_format", "log_file",
              "audit_checkpoint_interval", "application_objects", "metrics_listen",
              "state_sweep_interval", "object_cache_size"}


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> CoreConfig:
    """Read ``[core]`` (with ``[core.tls]`` and ``[core.limits]``) from the TOML file at
    ``path`` (None: defaults only), then apply ``overrides`` (keys of CoreConfig, plus
    ``tls_cert``/``tls_key``/``tls_ca``; None values are ignored)."""
    config = load_section(CoreConfig(), "core", path, overrides, _TOP_LEVEL, coerce=_typed)
    if not config.audit_checkpoint_interval > 0:
        raise ConfigError("core.audit_checkpoint_interval must be a positive number of seconds")
    if not config.state_sweep_interval > 0:
        raise ConfigError("core.state_sweep_interval must be a positive number of seconds")
    if not isinstance(config.metrics_listen, str):
        raise ConfigError("core.metrics_listen must be an endpoint string (or empty)")
    allowed = [choice.value for choice in ApplicationObjects]
    if config.application_objects not in allowed:
        raise ConfigError(f"core.application_objects must be one of {', '.join(allowed)}, "
                          f"not {config.application_objects!r}")
    return config


def _typed(values: dict[str, Any]) -> dict[str, Any]:
    """Command-line overrides arrive as strings; the file gives TOML types."""
    out = dict(values)
    if "object_cache_size" in out:
        size = out["object_cache_size"]
        try:
            size = int(size) if not isinstance(size, bool) else -1
        except (TypeError, ValueError):
            size = -1
        if size < 0:
            raise ConfigError("core.object_cache_size must be a whole number (0: no cache)")
        out["object_cache_size"] = size
    if "database_threads" in out:
        threads = out["database_threads"]
        try:
            threads = int(threads) if not isinstance(threads, bool) else 0
        except (TypeError, ValueError):
            threads = 0
        if threads < 1:
            raise ConfigError("core.database_threads must be a whole number of at least 1")
        out["database_threads"] = threads
    for name in ("audit_checkpoint_interval", "state_sweep_interval"):
        if name in out:
            try:
                out[name] = float(out[name])
            except (TypeError, ValueError):
                raise ConfigError(f"core.{name} must be a number") from None
    return out
