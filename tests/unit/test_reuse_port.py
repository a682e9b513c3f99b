"""kcm.reuse_port: reading TCP listener descriptions, writing and reading the ``reuseport:``
description of kcm-gateway's workers, and binding with SO_REUSEPORT."""

from __future__ import annotations

import socket

import pytest
from twisted.internet import error, reactor
from twisted.internet.protocol import Factory, Protocol

from kcm.reuse_port import (
    ReusePortServerEndpoint,
    TcpAddress,
    bind_reuse_port,
    parse_reuse_port,
    reuse_port_description,
    tcp_listener,
)
from kcm.tls import LISTEN_BACKLOG, plain_server_endpoint


@pytest.mark.parametrize(("description", "address"), [
    ("tcp:5698", TcpAddress(socket.AF_INET, "", 5698)),
    ("tcp:5698:interface=127.0.0.1", TcpAddress(socket.AF_INET, "127.0.0.1", 5698)),
    ("tcp:0:interface=127.0.0.1:backlog=10", TcpAddress(socket.AF_INET, "127.0.0.1", 0, 10)),
    (r"tcp6:5698:interface=\:\:1", TcpAddress(socket.AF_INET6, "::1", 5698)),
    (r"tcp:5698:interface=\:\:", TcpAddress(socket.AF_INET6, "::", 5698)),
    ("TCP6:5698", TcpAddress(socket.AF_INET6, "::", 5698)),
])
def test_tcp_listeners_are_read(description: str, address: TcpAddress) -> None:
    assert tcp_listener(description) == address
    # What a worker is told, read back: the same address.
    assert parse_reuse_port(reuse_port_description(address)) == address


@pytest.mark.parametrize("description", ["unix:/tmp/kcm.sock", "fd:3", "ssl:5696"])
def test_other_listeners_are_not_tcp(description: str) -> None:
    assert tcp_listener(description) is None
    assert parse_reuse_port(description) is None


@pytest.mark.parametrize("description", ["tcp:", "tcp:http", "tcp:5698:reuse=1",
                                         "tcp:5698:interface", "tcp:5698:backlog=many"])
def test_a_tcp_listener_with_other_settings_is_refused(description: str) -> None:
    with pytest.raises(ValueError):
        tcp_listener(description)


def test_the_description_escapes_colons() -> None:
    address = TcpAddress(socket.AF_INET6, "::1", 7000, 64)
    assert reuse_port_description(address) == r"reuseport:7000:interface=\:\:1:backlog=64"


def test_two_sockets_bind_one_address_and_a_stranger_does_not() -> None:
    first = bind_reuse_port(TcpAddress(socket.AF_INET, "127.0.0.1", 0))
    try:
        port = first.getsockname()[1]
        second = bind_reuse_port(TcpAddress(socket.AF_INET, "127.0.0.1", port))
        second.close()
        with socket.socket() as stranger, pytest.raises(OSError):
            stranger.bind(("127.0.0.1", port))
    finally:
        first.close()


def test_the_endpoint_listens_with_the_default_backlog_unless_told() -> None:
    endpoint = plain_server_endpoint(reactor, "reuseport:0:interface=127.0.0.1")
    assert isinstance(endpoint, ReusePortServerEndpoint)
    assert endpoint.backlog == LISTEN_BACKLOG
    assert plain_server_endpoint(reactor, "reuseport:0:interface=127.0.0.1:backlog=7"
                                 ).backlog == 7


def test_the_endpoint_fails_on_an_address_it_cannot_bind() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = plain_server_endpoint(
            reactor, f"reuseport:{taken.getsockname()[1]}:interface=127.0.0.1")
        outcome: list = []
        endpoint.listen(Factory.forProtocol(Protocol)).addBoth(outcome.append)
    assert outcome[0].check(error.CannotListenError)


def test_reuse_port_is_used_on_linux_only(monkeypatch) -> None:
    from kcm import reuse_port

    monkeypatch.setattr(reuse_port.sys, "platform", "darwin")
    assert not reuse_port.supports_reuse_port()
    monkeypatch.setattr(reuse_port.sys, "platform", "linux")
    assert reuse_port.supports_reuse_port() == hasattr(socket, "SO_REUSEPORT")
