"""TCP listeners that share their address with SO_REUSEPORT (Linux): kcm-gateway's workers.

With ``workers = N`` every worker listens on the KMIP address itself, on a socket of its own
with ``SO_REUSEPORT`` set, and the kernel spreads new connections over the listening sockets
by a hash of each connection's addresses and ports. (One listening socket shared by the
workers instead gives each connection to whichever worker wakes first, which under load is
often the same one.)

* :func:`tcp_listener` reads the address of a ``tcp:``/``tcp6:`` endpoint string (port,
  ``interface``, ``backlog``), and :func:`reuse_port_description` writes the
  ``reuseport:`` description a worker is given: ``reuseport:PORT:interface=HOST`` (with
  ``backlog=N``), ``HOST`` escaped as endpoint strings escape colons.
* :func:`bind_reuse_port` binds such a socket without listening on it: the supervisor holds
  one for the port, so that a port in use is reported when it starts, a port ``0`` becomes
  one port for every worker, and the address stays reserved for its workers (only sockets
  of the same user with SO_REUSEPORT can bind it) while one of them restarts. A socket that
  does not listen is given no connections.
* :class:`ReusePortServerEndpoint` binds and listens on such a socket and hands it to the
  reactor (``adoptStreamPort``): a worker's listener.
"""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from zope.interface import implementer

__all__ = ["REUSE_PORT_PREFIX", "ReusePortServerEndpoint", "TcpAddress", "bind_reuse_port",
           "parse_reuse_port", "reuse_port_description", "supports_reuse_port",
           "tcp_listener"]

#: The kind of endpoint string a worker's listener is given.
REUSE_PORT_PREFIX = "reuseport"


def supports_reuse_port() -> bool:
    """Whether this platform spreads connections over SO_REUSEPORT listeners: Linux (the
    BSDs and macOS have the option, but it does not balance there)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


@dataclass(frozen=True, slots=True)
class TcpAddress:
    """Where a TCP listener binds: family, interface (empty: all) and port, and its
    backlog (None: the caller's default)."""

    family: int
    interface: str
    port: int
    backlog: int | None = None


def _split(description: str) -> list[str]:
    """An endpoint string's fields: split on colons not escaped with a backslash."""
    fields, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


def _address(family: int, fields: list[str], description: str) -> TcpAddress:
    if not fields or not fields[0].strip().isdigit():
        raise ValueError(f"{description!r}: a TCP listener names its port first")
    interface, backlog = "", None
    for field in fields[1:]:
        name, equals, value = field.partition("=")
        name = name.strip()
        if not equals:
            raise ValueError(f"{description!r}: {field!r} is not name=value")
        if name == "interface":
            interface = value.strip()
        elif name == "backlog" and value.strip().isdigit():
            backlog = int(value)
        else:
            raise ValueError(f"{description!r}: {name!r} is not a TCP listener setting here")
    if ":" in interface:
        family = socket.AF_INET6
    elif family == socket.AF_INET6 and not interface:
        interface = "::"  # (as Twisted's tcp6: listens; and the family shows in the text)
    return TcpAddress(family, interface, int(fields[0]), backlog)


def tcp_listener(description: str) -> TcpAddress | None:
    """The address of a ``tcp:``/``tcp6:`` listener ``description``; None for any other
    kind of endpoint; ValueError for a TCP one with settings other than ``interface`` and
    ``backlog``."""
    kind, *fields = _split(description)
    kind = kind.strip().lower()
    if kind not in ("tcp", "tcp6"):
        return None
    return _address(socket.AF_INET6 if kind == "tcp6" else socket.AF_INET, fields, description)


def reuse_port_description(address: TcpAddress) -> str:
    """The ``reuseport:`` endpoint string of ``address``."""
    interface = address.interface.replace("\\", "\\\\").replace(":", "\\:")
    description = f"{REUSE_PORT_PREFIX}:{address.port}:interface={interface}"
    if address.backlog is not None:
        description += f":backlog={address.backlog}"
    return description


def parse_reuse_port(description: str) -> TcpAddress | None:
    """The address of a ``reuseport:`` description; None for any other kind."""
    kind, *fields = _split(description)
    if kind.strip().lower() != REUSE_PORT_PREFIX:
        return None
    return _address(socket.AF_INET, fields, description)


def bind_reuse_port(address: TcpAddress) -> socket.socket:
    """A non-blocking TCP socket with SO_REUSEADDR and SO_REUSEPORT bound to ``address``,
    not listening; CannotListenError if it cannot be bound."""
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(False)
        sock.bind((address.interface, address.port))
    except OSError as e:
        sock.close()
        raise CannotListenError(address.interface, address.port, e) from None
    return sock


@implementer(IStreamServerEndpoint)
class ReusePortServerEndpoint:
    """Listens on ``address`` with a socket of its own that has SO_REUSEPORT set (see the
    module docstring); ``backlog`` unless the address names its own."""

    def __init__(self, reactor: Any, address: TcpAddress, backlog: int) -> None:
        self.reactor = reactor
        self.address = address
        self.backlog = address.backlog if address.backlog is not None else backlog

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        try:
            sock = bind_reuse_port(self.address)
        except CannotListenError:
            return fail()
        try:
            sock.listen(self.backlog)
            # adoptStreamPort takes a copy of the descriptor; ours closes with the socket.
            port = self.reactor.adoptStreamPort(sock.fileno(), self.address.family,
                                                protocolFactory)
        except OSError as e:
            return fail(CannotListenError(self.address.interface, self.address.port, e))
        finally:
            sock.close()
        return succeed(port)
