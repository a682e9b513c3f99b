"""kcm-core's configuration: a TOML file, then command-line overrides. Pure (no I/O but
reading the file it is given)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kcm.config_file import ConfigError, TlsFiles, load_section
from kcm.core.policy import AccessPolicy, ApplicationObjects
from kcm.kmip_protocol import ConnectionLimits

__all__ = ["CoreConfig", "TlsFiles", "load_config"]


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
    policy_file: str | None = None
    tls: TlsFiles = field(default_factory=lambda: TlsFiles("var/pki/core.pem",
                                                           "var/pki/core.key",
                                                           "var/pki/ca.pem"))
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    database_threads: int = 4
    #: Events below this level are dropped (debug, info, warn, error, critical).
    log_level: str = "info"
    #: ``json`` (one object per line) or ``text`` (readable lines); see kcm.logging.
    log_format: str = "json"
    #: Which managed objects of its tenant an application may use: ``own-service`` (those
    #: of its own service and those of no service) or ``tenant`` (all); see kcm.core.policy.
    application_objects: str = ApplicationObjects.OWN_SERVICE.value

    @property
    def access(self) -> AccessPolicy:
        """The configured access rules."""
        return AccessPolicy(ApplicationObjects(self.application_objects))


_TOP_LEVEL = {"listen", "link_listen", "trust_domain", "database", "l1_key_file", "policy_file",
              "database_threads", "log_level", "log_format", "application_objects"}


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> CoreConfig:
    """Read ``[core]`` (with ``[core.tls]`` and ``[core.limits]``) from the TOML file at
    ``path`` (None: defaults only), then apply ``overrides`` (keys of CoreConfig, plus
    ``tls_cert``/``tls_key``/``tls_ca``; None values are ignored)."""
    config = load_section(CoreConfig(), "core", path, overrides, _TOP_LEVEL)
    allowed = [choice.value for choice in ApplicationObjects]
    if config.application_objects not in allowed:
        raise ConfigError(f"core.application_objects must be one of {', '.join(allowed)}, "
                          f"not {config.application_objects!r}")
    return config
