"""kcm.tcp_client: a host name's connection attempt, its resolution included, is bounded by
the endpoint's timeout (HostnameEndpoint bounds each address's TCP connection only)."""

from __future__ import annotations

from typing import Any

from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IHostnameResolver
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer

from kcm.tcp_client import plain_client_endpoint, tcp_client_endpoint


@implementer(IHostnameResolver)
class _Resolver:
    """Resolves every name to ``addresses`` once told to (``answer``), else never (a DNS
    server that does not answer)."""

    def __init__(self) -> None:
        self.receivers: list[Any] = []

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0,  # noqa: N802,N803
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> None:  # noqa: N803
        receiver.resolutionBegan(None)
        self.receivers.append((receiver, portNumber))

    def answer(self, *hosts: str) -> None:
        from twisted.internet.address import IPv4Address

        for receiver, port in self.receivers:
            for host in hosts:
                receiver.addressResolved(IPv4Address("TCP", host, port))
            receiver.resolutionComplete()


def _reactor() -> tuple[MemoryReactorClock, _Resolver]:
    reactor = MemoryReactorClock()
    resolver = _Resolver()
    reactor.nameResolver = resolver
    return reactor, resolver


def test_a_name_never_resolved_fails_within_the_timeout() -> None:
    reactor, _ = _reactor()
    outcome: list[Any] = []
    tcp_client_endpoint(reactor, "core1.example", 5697, timeout=3).connect(
        Factory.forProtocol(Protocol)).addBoth(outcome.append)
    reactor.advance(2.9)
    assert outcome == []
    reactor.advance(0.2)
    [failure] = outcome
    assert failure.check(ConnectTimeout)
    assert "core1.example:5697 not reached within 3 s" in failure.getErrorMessage()
    assert reactor.getDelayedCalls() == []


def test_an_endpoint_string_keeps_its_timeout_for_a_name() -> None:
    """The gateway's cores (``tcp:HOST:PORT:timeout=3``): the next core within 3 s."""
    reactor, _ = _reactor()
    outcome: list[Any] = []
    plain_client_endpoint(reactor, "tcp:core1.example:5697:timeout=3").connect(
        Factory.forProtocol(Protocol)).addBoth(outcome.append)
    reactor.advance(3.1)
    [failure] = outcome
    assert failure.check(ConnectTimeout)


def test_a_name_resolved_and_connected_in_time_leaves_no_timer() -> None:
    reactor, resolver = _reactor()
    outcome: list[Any] = []
    tcp_client_endpoint(reactor, "core1.example", 5697, timeout=3).connect(
        Factory.forProtocol(Protocol)).addBoth(outcome.append)
    reactor.advance(1)
    resolver.answer("192.0.2.7")
    [(host, port, factory, timeout, _)] = reactor.tcpClients
    assert (host, port, timeout) == ("192.0.2.7", 5697, 3)
    factory.buildProtocol(None).makeConnection(StringTransport())
    [protocol] = outcome
    assert isinstance(protocol, Protocol)
    assert reactor.getDelayedCalls() == []
    reactor.advance(10)
    assert outcome == [protocol]


def test_an_address_keeps_twisteds_plain_endpoint() -> None:
    reactor, _ = _reactor()
    for host in ("192.0.2.7", "2001:db8::7"):
        assert isinstance(tcp_client_endpoint(reactor, host, 5697), TCP4ClientEndpoint)
