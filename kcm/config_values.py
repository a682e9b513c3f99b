"""The checks of configuration values that every table shares (the services' ``[core]`` and
``[gateway]``, :mod:`kcm.config_file`; the SDK's ``[client]``, :mod:`kcm.client.config`),
so that a setting is refused in the same words wherever it is. Pure: no I/O, no Twisted."""

from __future__ import annotations

from typing import Any

__all__ = ["ConfigError", "whole_number"]


class ConfigError(ValueError):
    """The configuration is missing something or has a wrong value."""


def whole_number(setting: str, value: Any, *, least: int = 0,
                 most: int | None = None) -> int:
    """A whole-number setting (a TOML integer, or the command line's digits: 2.7 and "4"
    in TOML are refused, not converted), from ``least`` to ``most``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{setting} must be a whole number")
    if value < least or (most is not None and value > most):
        bound = f"from {least} to {most}" if most is not None else f"of at least {least}"
        raise ConfigError(f"{setting} must be a whole number {bound}")
    return value
