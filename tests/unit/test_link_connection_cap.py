"""kcm-core's gateway-link listener has a connection cap of its own (review 4, defect 2):
KMIP clients filling ``max_connections`` (one tenant's idle connections, or clients that
never finish TLS) leave every gateway its slot, and gateways never take a KMIP client's —
the per-address cap included. StringTransports, a Clock, real TLS options."""

from __future__ import annotations

import pytest
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from kcm.connection_guard import ConnectionGuard
from kcm.kmip_protocol import ConnectionLimits
from kcm.pki import init_pki
from kcm.tls import server_tls_options
from tests.unit.test_connection_guard import App, accept


@pytest.fixture(scope="module")
def tls_options(tmp_path_factory: pytest.TempPathFactory):
    paths = init_pki(tmp_path_factory.mktemp("pki"))
    return server_tls_options(paths.core.cert, paths.core.key, paths.ca.cert)


def listeners(tls_options, max_link_connections: int = 2, **limits):
    guard = ConnectionGuard(ConnectionLimits(**limits), Clock())
    link_guard = guard.reserve("max_link_connections", max_link_connections)
    kmip = guard.tls_factory(tls_options, Factory.forProtocol(App))
    link = link_guard.tls_factory(tls_options, Factory.forProtocol(App), bound_output=False)
    return guard, link_guard, kmip, link


def test_kmip_clients_at_their_cap_leave_the_gateways_their_slots(tls_options) -> None:
    guard, link_guard, kmip, link = listeners(tls_options, max_connections=3)
    held = [accept(kmip, host=f"10.0.0.{i}") for i in range(3)]
    assert accept(kmip, host="10.0.0.9")[0] is None  # the KMIP cap is reached
    gateways = [accept(link, host="10.0.1.1", port=50000 + i) for i in range(3)]
    assert [p is not None for p, _ in gateways] == [True, True, False]  # its own cap
    assert accept(kmip, host="10.0.0.10")[0] is None  # and gateways took no KMIP slot
    assert (guard.held, link_guard.held, guard.connections) == (3, 2, 5)
    held[0][0].connectionLost(None)
    assert accept(kmip, host="10.0.0.11")[0] is not None


def test_the_per_address_cap_is_counted_per_listener(tls_options) -> None:
    """A gateway on a host whose clients hold every KMIP slot of that address still links."""
    _, _, kmip, link = listeners(tls_options, max_connections_per_address=2)
    assert [accept(kmip, port=40000 + i)[0] is not None for i in range(3)] == [
        True, True, False]
    assert accept(link, port=41000)[0] is not None


def test_a_refusal_names_the_cap_that_refused(tls_options) -> None:
    seen: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "kcm.connection_guard":
            seen.append(formatEvent(event))

    _, _, kmip, link = listeners(tls_options, max_link_connections=1, max_connections=1)
    globalLogPublisher.addObserver(observe)
    try:
        for factory in (kmip, link):
            accept(factory, host="10.0.0.1")
            accept(factory, host="10.0.0.2")
    finally:
        globalLogPublisher.removeObserver(observe)
    assert any("over limits.max_connections (1)" in line for line in seen)
    assert any("over limits.max_link_connections (1)" in line for line in seen)


def test_descriptors_are_checked_for_both_caps_once(monkeypatch) -> None:
    import resource

    seen: list[dict] = []
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (1024, 4096))
    globalLogPublisher.addObserver(seen.append)
    try:
        guard = ConnectionGuard(ConnectionLimits(max_connections=900), Clock())
        link_guard = guard.reserve("max_link_connections", 64)
        link_guard.check_descriptors()  # the KMIP listener's guard checks for both
        guard.check_descriptors()
        guard.check_descriptors()
    finally:
        globalLogPublisher.removeObserver(seen.append)
    warned = [formatEvent(e) for e in seen if e.get("log_namespace") == "kcm.connection_guard"]
    assert len(warned) == 1
    assert "limits.max_connections + limits.max_link_connections (964)" in warned[0]
