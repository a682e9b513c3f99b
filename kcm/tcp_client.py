"""TCP client endpoints that reach a host name over IPv6 as well as IPv4.

Twisted's ``tcp:HOST:PORT`` client endpoint (``TCP4ClientEndpoint``) connects to an IP
address of either family, but resolves a host name to IPv4 addresses only (the reactor's
``resolve``): a core or a KMIP server named by a host name that has only AAAA records (an
IPv6-only network, a Kubernetes IPv6 cluster) could never be reached, and a name with both
kinds of records was always reached over IPv4. :func:`tcp_client_endpoint` gives a host
name to Twisted's ``HostnameEndpoint`` instead, which resolves it to the addresses of both
families and connects to the first that answers; an IP address keeps Twisted's plain
endpoint. :func:`plain_client_endpoint` does the same for an endpoint string.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, clientFromString
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["plain_client_endpoint", "tcp_client_endpoint"]


def tcp_client_endpoint(reactor: Any, host: str, port: int, *, timeout: float = 30,
                        bind_address: tuple[str, int] | None = None) -> IStreamClientEndpoint:
    """A TCP client endpoint to ``host`` (an IP address of either family, or a host name
    resolved to both), connecting within ``timeout`` seconds."""
    if isIPAddress(host) or isIPv6Address(host):
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout,
                                  bindAddress=bind_address)
    return _WithinTimeout(reactor, HostnameEndpoint(reactor, host, port, timeout=timeout,
                                                    bindAddress=bind_address),
                          timeout, f"{host}:{port}")


def plain_client_endpoint(reactor: Any, description: str) -> IStreamClientEndpoint:
    """The client endpoint Twisted's endpoint string ``description`` names, a ``tcp:``
    one by :func:`tcp_client_endpoint` (a host name resolved to both families)."""
    endpoint = clientFromString(reactor, description)
    if not isinstance(endpoint, TCP4ClientEndpoint):
        return endpoint
    return tcp_client_endpoint(reactor, endpoint._host, endpoint._port,
                               timeout=endpoint._timeout, bind_address=endpoint._bindAddress)


@implementer(IStreamClientEndpoint)
class _WithinTimeout:
    """``endpoint`` (to ``name``), each connection attempt cancelled after ``timeout``
    seconds whatever it waits for (the name's resolution too), failing with Twisted's
    connect TimeoutError."""

    def __init__(self, reactor: Any, endpoint: IStreamClientEndpoint, timeout: float,
                 name: str) -> None:
        self._reactor = reactor
        self._endpoint = endpoint
        self._timeout = timeout
        self._name = name

    def __repr__(self) -> str:
        return repr(self._endpoint)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:  # noqa: N803
        why = f"{self._name} not reached within {self._timeout:g} s"

        def late(_: object, __: float) -> Failure:
            return Failure(ConnectTimeout(string=why))

        return self._endpoint.connect(protocolFactory).addTimeout(
            self._timeout, self._reactor, onTimeoutCancel=late)
