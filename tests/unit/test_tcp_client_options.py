"""kcm.tcp_client: a host name is resolved to IPv6 and IPv4 addresses (HostnameEndpoint), an
IP address keeps Twisted's plain endpoint, and either connects within the timeout and from
the bind address it was given (an endpoint string's, the SDK's connect_timeout), over a
memory reactor."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock

from kcm.client.endpoints import Endpoint, TlsFiles
from kcm.client.pool import tls_endpoint_factory
from kcm.pki import init_pki
from kcm.tcp_client import plain_client_endpoint
from tests.ipv6 import IPv6OnlyNames


def _reactor() -> MemoryReactorClock:
    reactor = MemoryReactorClock()
    reactor.installNameResolver(IPv6OnlyNames())
    return reactor


def _attempts(reactor: MemoryReactorClock) -> list[tuple[str, int, float, Any]]:
    return [(host, port, timeout, bind) for host, port, _, timeout, bind in reactor.tcpClients]


def test_a_host_name_is_connected_to_within_the_strings_timeout_from_its_bind_address(
        ) -> None:
    reactor = _reactor()
    endpoint = plain_client_endpoint(
        reactor, "tcp:core.test:5697:timeout=7:bindAddress=\\:\\:1")
    endpoint.connect(Factory.forProtocol(Protocol))
    reactor.advance(1)  # (HostnameEndpoint's attempts start on the clock)
    assert _attempts(reactor) == [("::1", 5697, 7, ("::1", 0))]


@pytest.mark.parametrize("host", ["127.0.0.1", "\\:\\:1"])
def test_an_ip_address_keeps_twisteds_plain_endpoint(host: str) -> None:
    reactor = _reactor()
    endpoint = plain_client_endpoint(reactor, f"tcp:{host}:5697:timeout=7")
    assert type(endpoint) is TCP4ClientEndpoint
    endpoint.connect(Factory.forProtocol(Protocol))
    assert _attempts(reactor) == [(host.replace("\\", ""), 5697, 7, None)]


def test_other_endpoints_are_twisteds(tmp_path: Any) -> None:
    endpoint = plain_client_endpoint(_reactor(), f"unix:{tmp_path / 'core.sock'}")
    assert not isinstance(endpoint, TCP4ClientEndpoint)
    assert type(endpoint).__name__ == "UNIXClientEndpoint"


@pytest.mark.parametrize("host", ["core.test", "::1"])
def test_the_sdk_connects_each_endpoint_within_its_connect_timeout(tmp_path: Any,
                                                                    host: str) -> None:
    pki = init_pki(tmp_path / "pki")
    reactor = _reactor()
    endpoint = Endpoint(host, 5696)
    to = tls_endpoint_factory(reactor, TlsFiles(pki.app.cert, pki.app.key, pki.ca.cert),
                              [endpoint], connect_timeout=2.5)
    to(endpoint).connect(Factory.forProtocol(Protocol))
    reactor.advance(1)
    assert _attempts(reactor) == [("::1", 5696, 2.5, None)]
