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
    timeout = 30                       # seconds (a number, at most 86400): a whole call,
                                       # failover included
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

__all__ = ["SETTINGS", "ClientConfig", "load_client_config", "read_client_table"]

#: The settings a ``[client]`` table may hold.
SETTINGS = ("server", "gateway", "core", "cert", "key", "ca", "timeout", "connect_timeout",
            "version", "pool_size")


def _endpoints(value: Any, name: str) -> list[Endpoint]:
    items = [value] if isinstance(value, str) else list(value or [])
    out = []
    for item in items:
        for part in str(item).split(","):
            if part.strip():
                try:
                    out.append(parse_endpoint(part))
                except ValueError as e:
                    raise ValueError(f"{name}: {e}") from None
    if value is not None and not out:
        raise ValueError(f"{name} names no endpoint")
    return out


def _version(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, tuple):
        version = value
    else:
        major, _, minor = str(value).partition(".")
        try:
            version = (int(major), int(minor or 0))
        except ValueError:
            raise ValueError(f"{name} {value!r} is not MAJOR.MINOR") from None
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"{name}: KMIP {version[0]}.{version[1]} is not one the client "
                         "speaks")
    return version


def _connect_timeout(value: Any, timeout: float, name: str, timeout_name: str
                     ) -> float | None:
    """``client.connect_timeout``: None when not set; else a positive number of seconds
    no longer than ``client.timeout`` (an attempt is part of a call)."""
    if value is None:
        return None
    seconds = positive_timeout(value, name)
    if seconds > timeout:
        raise ValueError(f"{name} {value!r} is more than {timeout_name} {timeout:g}: each "
                         "attempt is part of a call")
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
    def from_table(cls, table: Mapping[str, Any], base: str | Path = ".", *,
                   names: Mapping[str, str] | None = None) -> ClientConfig:
        """From a ``[client]`` table; relative file names are taken from ``base`` (an
        absolute one is kept). The one rule of every setting, for the SDK, ``kcm key``,
        ``seal``, ``open`` and ``kcm config check``. ``names``: what errors call a setting
        (default ``client.NAME``), e.g. the command-line option that gave its value."""
        def name(setting: str) -> str:
            return (names or {}).get(setting, f"client.{setting}")

        unknown = sorted(set(table) - set(SETTINGS))
        if unknown:
            raise ValueError(f"unknown setting client.{unknown[0]}")
        missing = [n for n in ("cert", "key", "ca") if not table.get(n)]
        if missing:
            raise ValueError(f"no {name(missing[0])}")
        for n in ("cert", "key", "ca"):
            if not isinstance(table[n], str | os.PathLike):
                raise ValueError(f"{name(n)} must be a file name, not {table[n]!r}")
        server = _endpoints(table.get("server"), name("server"))
        gateway = _endpoints(table.get("gateway"), name("gateway")) or server
        core = _endpoints(table.get("core"), name("core")) or server or gateway
        if not gateway and not core:
            raise ValueError(f"no {name('server')} (nor {name('gateway')} or {name('core')})")
        files = {n: os.path.join(str(base), os.path.expanduser(os.fspath(table[n])))
                 for n in ("cert", "key", "ca")}
        timeout = positive_timeout(table.get("timeout", 30.0), name("timeout"))
        connect_timeout = _connect_timeout(table.get("connect_timeout"), timeout,
                                           name("connect_timeout"), name("timeout"))
        return cls(gateway=gateway or core, core=core, timeout=timeout,
                   connect_timeout=connect_timeout,
                   version=_version(table.get("version", "1.4"), name("version")),
                   pool_size=whole_number(name("pool_size"), table.get("pool_size", 2),
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


def read_client_table(path: str | Path) -> dict[str, Any]:
    """The ``[client]`` table of the TOML file at ``path`` as it is written (empty if it has
    none; nothing checked yet: :meth:`ClientConfig.from_table`); ValueError if the file is
    not TOML or ``client`` not a table, OSError if it cannot be read."""
    import tomllib

    with open(path, "rb") as f:
        try:
            table = tomllib.load(f).get("client", {})
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: {e}") from e
    if not isinstance(table, dict):
        raise ValueError(f"{path}: client must be a table")
    return table


def load_client_config(path: str | Path) -> ClientConfig:
    """The ``[client]`` table of the TOML file at ``path``; ValueError (or OSError) naming
    what is wrong."""
    table = read_client_table(path)
    try:
        return ClientConfig.from_table(table, os.path.dirname(os.path.abspath(path)))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
