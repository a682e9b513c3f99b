"""KCM on IPv6: kcm-core's and kcm-gateway's listeners on ``::1`` (real twistd processes,
the gateway with one worker and with two), the gateway's link to a core on ``::1`` (its
certificate checked by IP address, failing over from an IPv4 core that is down), the
``kcm`` CLI and the blocking client to ``[::1]:PORT``, the metrics listeners, the audit
record's source, the per-address connection cap; and a host name that resolves to IPv6
addresses only, reached by the gateway's link endpoint and the SDK's (in this process).

Every test needs ``::1``: without it they skip, and fail under ``$CI`` (:mod:`tests.ipv6`).
"""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.address import IPv6Address
from twisted.internet.endpoints import TCP6ServerEndpoint

from kcm.cli import main
from kcm.client.endpoints import Endpoint, TlsFiles
from kcm.client.pool import tls_endpoint_factory
from kcm.eager_tls import EagerTLSFactory
from kcm.pki import PkiPaths, init_pki
from kcm.testing.processes import CoreProcess, GatewayProcess, deploy, free_port, scrape
from kcm.testing.requests import create_managed
from kcm.tls import TLSClientEndpoint, client_tls_options, server_tls_options
from tests.e2e_support import succeeded_v21, wait_until
from tests.ipv6 import IPv6OnlyNames, require_ipv6_loopback


@pytest.fixture(autouse=True, scope="module")
def ipv6_loopback() -> None:
    require_ipv6_loopback()


# Real processes on ::1 -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreProcess]:
    """kcm-core with every listener on ::1 (KMIP, link, metrics)."""
    root = tmp_path_factory.mktemp("ipv6")
    core = deploy(root / "core", f"sqlite:///{root / 'core' / 'kcm.db'}",
                  max_connections_per_address=3)
    core.host = "::1"
    core.metrics_port = free_port()
    core.write_config()
    core.start()
    try:
        yield core
    finally:
        core.stop()


def _sources(core: CoreProcess) -> list[str]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(core.database)
    try:
        with engine.connect() as connection:
            return list(connection.execute(sqlalchemy.text(
                "SELECT source FROM audit_log ORDER BY seq")).scalars())
    finally:
        engine.dispose()


def test_the_cores_listeners_on_ipv6(core: CoreProcess,
                                     capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    """kcm config check takes the tcp6 listeners; the CLI reaches [::1]:PORT and checks the
    development certificate's IP SAN ::1; the audit record names the client [::1]:PORT."""
    checked = core.kcm("config", "check", check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    pair = core.pki.app
    status = main(["key", "create", "--server", f"[::1]:{core.port}", "--cert", str(pair.cert),
                   "--key", str(pair.key), "--ca", str(core.pki.ca.cert)])
    out, err = capsysbinary.readouterr()
    assert (status, err) == (0, b""), err
    assert out.strip()
    source = _sources(core)[-1]
    assert source.startswith("[::1]:") and source[6:].isdigit(), source
    assert scrape(core.metrics_port, host="::1")[0] == 200


def test_connections_from_one_ipv6_address_are_capped(core: CoreProcess) -> None:
    """limits.max_connections_per_address counts an IPv6 client by its address."""
    _over_the_cap(core, "::1", "last from ::1", cap=3)


def test_ipv4_clients_of_a_dual_stack_listener_are_capped_by_their_address(
        tmp_path: Path) -> None:
    """A tcp6 listener that takes IPv4 connections (here bound to ::ffff:127.0.0.1, as a
    dual-stack ``tcp6:PORT`` takes them on every address) counts a client reaching it at
    127.0.0.1 towards limits.max_connections_per_address under 127.0.0.1 (the cap was
    checked under the mapped name ::ffff:127.0.0.1 and never refused)."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}",
                  max_connections_per_address=2)
    core.host = "::ffff:127.0.0.1"
    core.write_config()
    core.start()
    try:
        _over_the_cap(core, "127.0.0.1", "last from 127.0.0.1")
    finally:
        core.stop()


def _over_the_cap(core: CoreProcess, host: str, line: str, *, cap: int = 2) -> None:
    """With ``cap`` connections from ``host`` held, one more is closed at accept (the cap
    per address or network), and the refusal line holds ``line``."""
    held = [socket.create_connection((host, core.port), timeout=5) for _ in range(cap)]
    try:
        with socket.create_connection((host, core.port), timeout=5) as over:
            assert over.recv(1) == b""  # closed at accept
        wait_until(lambda: line in core.log.read_text(), "the refusal line", timeout=5)
    finally:
        for sock in held:
            sock.close()


def test_ipv6_clients_are_capped_by_their_network_with_an_address_prefix(
        tmp_path: Path) -> None:
    """limits.ipv6_address_prefix: kcm config check accepts 64 and refuses 16, kcm-core
    starts with 64 and counts ::1 towards limits.max_connections_per_address under its
    /64, which the refusal line names (the grouping of several addresses of one /64:
    tests/unit/test_connection_guard.py; one host here has one address)."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}",
                  max_connections_per_address=2, ipv6_address_prefix=16)
    core.host = "::1"
    core.write_config()
    refused = core.kcm("config", "check", check=False)
    assert refused.returncode == 1
    assert ("error: core.limits.ipv6_address_prefix must be a whole number from 32 to 128"
            in refused.stdout.splitlines()), refused.stdout
    core.limits["ipv6_address_prefix"] = 64
    core.write_config()
    checked = core.kcm("config", "check", check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    core.start()
    try:
        _over_the_cap(core, "::1", "over limits.max_connections_per_address (2) in the last "
                       "10s; last from ::/64")
    finally:
        core.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_gateway_on_ipv6_links_to_a_core_on_ipv6(core: CoreProcess, workers: int,
                                                    tmp_path: Path) -> None:
    """The gateway listens on ::1 (one process; a supervisor handing connections to two
    workers), tries an IPv4 core that is down, then links to the core on ::1, checking its
    certificate for the IP address ::1; a client reaches it at ::1 with the name checked."""
    down = CoreProcess(tmp_path / "down", core.database)  # (never started: 127.0.0.1)
    gateway = GatewayProcess(tmp_path / "gateway", core, workers=workers, cores=[down, core],
                             host="::1", core_server_name="::1", metrics_port=free_port())
    gateway.start()
    try:
        gateway.wait_linked()
        log = gateway.log.read_text()
        assert "linked to core kcm-core at [::1]:" in log
        checked = core.kcm("config", "check", "-c", str(gateway.config), check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        client = gateway.client()
        client.server_hostname, client.host = "::1", "::1"
        with client:
            for _ in range(workers * 2):  # (each worker in turn, with two)
                succeeded_v21(client, create_managed())
                client.close()
        assert scrape(gateway.metrics_port, host="::1")[0] == 200
    finally:
        gateway.stop()


# A host name with IPv6 addresses only (in this process, its resolver faked) ---------------

@pytest.fixture
def ipv6_only_name() -> Iterator[None]:
    previous = reactor.installNameResolver(IPv6OnlyNames())
    try:
        yield
    finally:
        reactor.installNameResolver(previous)


@pytest.fixture(scope="module")
def named_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(tmp_path_factory.mktemp("named-pki"), hosts=("core.test",))


@defer.inlineCallbacks
def _reached(pki: PkiPaths, connect) -> defer.Deferred:
    """Listen with TLS on ::1; ``connect(port)``'s connection's peer, once closed."""
    factory = EagerTLSFactory(server_tls_options(pki.core.cert, pki.core.key, pki.ca.cert),
                              False, protocol.Factory.forProtocol(protocol.Protocol))
    port = yield TCP6ServerEndpoint(reactor, 0, interface="::1").listen(factory)
    try:
        connected = yield connect(port.getHost().port)
        peer = connected.transport.getPeer()
        connected.transport.loseConnection()
    finally:
        yield port.stopListening()
    return peer


@pytest_twisted.inlineCallbacks
def test_the_gateways_link_reaches_a_core_named_by_an_ipv6_only_name(
        ipv6_only_name: None, named_pki: PkiPaths) -> None:
    """``core = "tcp:core.test:PORT"``: Twisted's tcp: endpoint resolved the name to IPv4
    addresses only (a DNS lookup error here); the link's endpoint asks for both."""
    pair = named_pki.gateway
    tls = functools.partial(client_tls_options, pair.cert, pair.key, named_pki.ca.cert,
                            "core.test")

    def connect(port: int) -> defer.Deferred:
        endpoint = TLSClientEndpoint(reactor, f"tcp:core.test:{port}:timeout=5", tls)
        endpoint.load()
        return endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))

    started = time.monotonic()
    peer = yield _reached(named_pki, connect)
    assert (type(peer), peer.host) == (IPv6Address, "::1")
    assert time.monotonic() - started < 5


@pytest_twisted.inlineCallbacks
def test_the_sdk_reaches_a_server_named_by_an_ipv6_only_name(
        ipv6_only_name: None, named_pki: PkiPaths) -> None:
    pair = named_pki.app
    files = TlsFiles(pair.cert, pair.key, named_pki.ca.cert)

    def connect(port: int) -> defer.Deferred:
        endpoint = Endpoint("core.test", port)
        to = tls_endpoint_factory(reactor, files, [endpoint], connect_timeout=5)
        return to(endpoint).connect(protocol.Factory.forProtocol(protocol.Protocol))

    peer = yield _reached(named_pki, connect)
    assert (type(peer), peer.host) == (IPv6Address, "::1")
