"""kcm-core's configuration: a TOML file, then command-line overrides. Pure (no I/O but
reading the file it is given)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from kcm.kmip_protocol import ConnectionLimits


class ConfigError(ValueError):
    """The configuration is missing something or has a wrong value."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files: this server's certificate and key, and the CA client certificates must
    chain to."""

    cert: str
    key: str
    ca: str


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
    log_level: str = "info"


_TOP_LEVEL = {"listen", "link_listen", "trust_domain", "database", "l1_key_file", "policy_file",
              "database_threads", "log_level"}


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> CoreConfig:
    """Read ``[core]`` (with ``[core.tls]`` and ``[core.limits]``) from the TOML file at
    ``path`` (None: defaults only), then apply ``overrides`` (keys of CoreConfig, plus
    ``tls_cert``/``tls_key``/``tls_ca``; None values are ignored)."""
    table: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as handle:
                table = tomllib.load(handle).get("core", {})
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from None
    config = CoreConfig()
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in _TOP_LEVEL:
            values[key] = value
        elif key not in ("tls", "limits"):
            raise ConfigError(f"unknown setting core.{key}")
    tls = dict(table.get("tls", {}))
    limits = dict(table.get("limits", {}))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key.startswith("tls_"):
            tls[key[4:]] = value
        elif key in _TOP_LEVEL:
            values[key] = value
        else:
            raise ConfigError(f"unknown override {key}")
    try:
        config = replace(config, **values)
        if tls:
            config = replace(config, tls=replace(config.tls, **tls))
        if limits:
            known = {f.name for f in fields(ConnectionLimits)}
            unknown = set(limits) - known
            if unknown:
                raise ConfigError(f"unknown setting core.limits.{sorted(unknown)[0]}")
            config = replace(config, limits=replace(config.limits, **limits))
    except TypeError as e:
        raise ConfigError(str(e)) from None
    return config
