"""Reading a service's TOML configuration section and its command-line overrides, the same
way for kcm-core and kcm-gateway. Pure but for reading the file it is given."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from kcm.logging import check_log_format, parse_level
from kcm.tls_policy import TlsPolicy


class ConfigError(ValueError):
    """The configuration is missing something or has a wrong value."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A section's ``[section.tls]`` table: the PEM files (this server's certificate and
    key, and the CA peer certificates must chain to), and which TLS versions and TLS 1.2
    cipher suites its KMIP listener accepts (:mod:`kcm.tls_policy`)."""

    cert: str
    key: str
    ca: str
    min_version: str = "1.2"
    profile: str = "default"
    ciphers: str | None = None

    def __post_init__(self) -> None:
        self.policy  # noqa: B018 - refuses a wrong setting now

    @property
    def policy(self) -> TlsPolicy:
        """The versions and suites: ``min_version``, ``profile`` and ``ciphers``."""
        return TlsPolicy(str(self.min_version), self.profile, self.ciphers)


C = TypeVar("C")


def load_section(default: C, section: str, path: str | Path | None,
                 overrides: Mapping[str, Any] | None, top_level: Collection[str], *,
                 retired: Mapping[str, str] | None = None,
                 coerce: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> C:
    """``default`` (a dataclass with ``tls``, ``limits``, ``log_level`` and ``log_format``
    fields) updated from the TOML
    table ``[section]`` (with ``[section.tls]`` and ``[section.limits]``) of the file at
    ``path`` (None: defaults only), then from ``overrides`` (top-level keys, plus
    ``tls_cert``/``tls_key``/``tls_ca``/``tls_min_version``/``tls_profile``/``tls_ciphers``;
    None values are ignored). ``retired`` maps settings
    that no longer exist to the error that explains it; ``coerce`` converts the top-level
    values (command-line overrides arrive as strings). Raises :class:`ConfigError` naming
    the first wrong setting."""
    table = _read(path, section)
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in top_level:
            values[key] = value
        elif retired and key in retired:
            raise ConfigError(retired[key])
        elif key not in ("tls", "limits"):
            raise ConfigError(f"unknown setting {section}.{key}")
    tls = dict(table.get("tls", {}))
    limits = dict(table.get("limits", {}))
    limit_names = {f.name for f in fields(default.limits)}  # type: ignore[attr-defined]
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key.startswith("tls_"):
            tls[key[4:]] = value
        elif key in top_level:
            values[key] = value
        elif key in limit_names:
            limits[key] = _limit_value(section, key, value, getattr(default.limits, key))
        else:
            raise ConfigError(f"unknown override {key}")
    if coerce is not None:
        values = coerce(values)
    # A section's limits are ConnectionLimits or an extension of them (kcm-core's).
    unknown = set(limits) - {f.name for f in fields(default.limits)}  # type: ignore[attr-defined]
    if unknown:
        raise ConfigError(f"unknown setting {section}.limits.{sorted(unknown)[0]}")
    try:
        config = replace(default, **values)
        if tls:
            config = replace(config, tls=replace(config.tls, **tls))
        if limits:
            config = replace(config, limits=replace(config.limits, **limits))
    except TypeError as e:
        raise ConfigError(str(e)) from None
    except ValueError as e:  # a value its dataclass refuses
        raise ConfigError(f"{section}.{e}") from None
    try:
        parse_level(config.log_level)  # type: ignore[attr-defined]
        check_log_format(config.log_format)  # type: ignore[attr-defined]
    except ValueError as e:
        raise ConfigError(f"{section}: {e}") from None
    return config


def _limit_value(section: str, name: str, value: Any, default: Any) -> Any:
    """A command-line limit (a string) as its default's type, int or float."""
    if not isinstance(value, str):
        return value
    try:
        return type(default)(value)
    except ValueError:
        kind = "a whole number" if isinstance(default, int) else "a number of seconds"
        raise ConfigError(f"{section}.limits.{name} must be {kind}, not {value!r}") from None


def limit_options(limits: Any) -> list[list[Any]]:
    """twistd ``optParameters`` for every field of the ``limits`` dataclass: ``--NAME``
    (``--max-message-size``), overriding ``limits.NAME`` of the configuration file (the
    overrides :func:`load_section` takes by the field's name)."""
    return [[f.name.replace("_", "-"), None, None,
             f"limits.{f.name} (default {getattr(limits, f.name)!r}); see docs/operations.md, "
             "Limits and hostile clients."] for f in fields(limits)]


def _read(path: str | Path | None, section: str) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle).get(section, {})
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
