"""A client configuration: where to connect and with which files, from a TOML ``[client]``
table or from arguments, and the clients it makes.

The ``[client]`` table (the same file ``kcm key --client-config`` reads)::

    [client]
    server = "127.0.0.1:5698"          # or a list: failover in order
    gateway = ["10.0.0.5:5698", "10.0.0.6:5698"]   # optional: L4 operations go here
    core = "10.0.1.1:5696"             # optional: everything else goes here
    cert = "app.pem"                   # relative paths: from the file's directory
    key = "app.key"
    ca = "ca.pem"
    timeout = 30                       # seconds: a whole call, failover included
    connect_timeout = 10               # seconds: each connection attempt (TCP and TLS);
                                       # default 10, or timeout / endpoints if less
    version = "1.4"                    # KMIP 1.0 .. 2.1
    pool_size = 2                      # Twisted client: connections per endpoint list

``gateway`` and ``core`` default to ``server``; :meth:`ClientConfig.session` and
:meth:`ClientConfig.twisted` give a :class:`~kcm.client.routing.SplitHorizon` when they
differ, else a plain client.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kcm.client.endpoints import Endpoint, parse_endpoint
from kcm.client.wire import DEFAULT_VERSION, SUPPORTED_VERSIONS, positive_timeout
from kcm.config_values import whole_number

__all__ = ["SETTINGS", "ClientConfig", "load_client_config"]

#: The settings a ``[client]`` table may hold.
SETTINGS = ("server", "gateway", "core", "cert", "key", "ca", "timeout", "connect_timeout",
            "version", "pool_size")


def _endpoints(value: Any, name: str) -> list[Endpoint]:
    items = [value] if isinstance(value, str) else list(value or [])
    out = []
    for item in items:
        for part in str(item).split(","):
            if part.strip():
                out.append(parse_endpoint(part))
    if value is not None and not out:
        raise ValueError(f"client.{name} names no endpoint")
    return out


def _version(value: Any) -> tuple[int, int]:
    if isinstance(value, tuple):
        version = value
    else:
        major, _, minor = str(value).partition(".")
        try:
            version = (int(major), int(minor or 0))
        except ValueError:
            raise ValueError(f"client.version {value!r} is not MAJOR.MINOR") from None
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"KMIP {version[0]}.{version[1]} is not one the client speaks")
    return version


def _connect_timeout(value: Any, timeout: float) -> float | None:
    """``client.connect_timeout``: None when not set; else a positive number of seconds
    no longer than ``client.timeout`` (an attempt is part of a call)."""
    if value is None:
        return None
    seconds = positive_timeout(value, "client.connect_timeout")
    if seconds > timeout:
        raise ValueError(f"client.connect_timeout {value!r} is more than client.timeout "
                         f"{timeout:g}: each attempt is part of a call")
    return seconds


@dataclass
class ClientConfig:
    """Endpoints, TLS files and options of a client; see the module's docstring."""

    cert: str
    key: str
    ca: str
    gateway: list[Endpoint] = field(default_factory=list)
    core: list[Endpoint] = field(default_factory=list)
    timeout: float = 30.0
    #: Seconds each connection attempt may take (None: 10, or ``timeout`` divided by the
    #: number of endpoints if less).
    connect_timeout: float | None = None
    version: tuple[int, int] = DEFAULT_VERSION
    pool_size: int = 2

    @classmethod
    def from_table(cls, table: Mapping[str, Any], base: str | Path = ".") -> ClientConfig:
        """From a ``[client]`` table; relative file names are taken from ``base``."""
        unknown = sorted(set(table) - set(SETTINGS))
        if unknown:
            raise ValueError(f"unknown setting client.{unknown[0]}")
        missing = [n for n in ("cert", "key", "ca") if not table.get(n)]
        if missing:
            raise ValueError(f"no client.{missing[0]}")
        server = _endpoints(table.get("server"), "server")
        gateway = _endpoints(table.get("gateway"), "gateway") or server
        core = _endpoints(table.get("core"), "core") or server or gateway
        if not gateway and not core:
            raise ValueError("no client.server (nor client.gateway or client.core)")
        files = {n: os.path.join(str(base), os.path.expanduser(str(table[n])))
                 for n in ("cert", "key", "ca")}
        timeout = positive_timeout(table.get("timeout", 30.0), "client.timeout")
        connect_timeout = _connect_timeout(table.get("connect_timeout"), timeout)
        return cls(gateway=gateway or core, core=core, timeout=timeout,
                   connect_timeout=connect_timeout,
                   version=_version(table.get("version", "1.4")),
                   pool_size=whole_number("client.pool_size", table.get("pool_size", 2),
                                          least=1), **files)

    # Clients ------------------------------------------------------------------------------

    def session(self) -> Any:
        """The blocking client: a Session, or a SplitHorizon of two when gateway and core
        differ."""
        from kcm.client.routing import SplitHorizon
        from kcm.client.session import Session

        def to(endpoints: Sequence[Endpoint]) -> Session:
            return Session.connect(endpoints, cert=self.cert, key=self.key, ca=self.ca,
                                   timeout=self.timeout, version=self.version,
                                   connect_timeout=self.connect_timeout)

        if self.gateway == self.core:
            return to(self.gateway)
        return SplitHorizon(to(self.gateway), to(self.core))

    def twisted(self, reactor: Any) -> Any:
        """The Twisted client (a KmipClient, or a SplitHorizon of two)."""
        from kcm.client.pool import KmipClient
        from kcm.client.routing import SplitHorizon

        def to(endpoints: Sequence[Endpoint]) -> KmipClient:
            return KmipClient.tls(reactor, endpoints, cert=self.cert, key=self.key,
                                  ca=self.ca, size=self.pool_size, version=self.version,
                                  timeout=self.timeout, connect_timeout=self.connect_timeout)

        if self.gateway == self.core:
            return to(self.gateway)
        return SplitHorizon(to(self.gateway), to(self.core))


def load_client_config(path: str | Path) -> ClientConfig:
    """The ``[client]`` table of the TOML file at ``path``; ValueError (or OSError) naming
    what is wrong."""
    import tomllib

    with open(path, "rb") as f:
        try:
            table = tomllib.load(f).get("client", {})
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: {e}") from e
    if not isinstance(table, dict):
        raise ValueError(f"{path}: client must be a table")
    try:
        return ClientConfig.from_table(table, os.path.dirname(os.path.abspath(path)))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
