"""The core bounds the service key fetches of its links (kcm.core.link_server.FetchTurns):
each is a write transaction on one of the store's few workers, so one tenant's misses (a
flood of forged L4 tokens through a gateway) hold at most ``max_fetches_per_tenant`` of
them, wait their turn in order beyond that, and past ``max_waiting_fetches`` on a link are
refused at once, while another tenant's fetch runs at once."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from kcm.core.link_server import FETCHES_BUSY, LinkSettings
from kcm.gateway.link_client import LinkClient, ServiceKeyRefused
from kcm.identity import Principal, Role
from kcm.kmip.enums import ResultReason
from tests.unit.test_link_session import APP, KEY, TD, World, results

OTHER = Principal(Role.SERVICE, TD, tenant="other", service="app",
                  uri=f"spiffe://{TD}/tenant/other/service/app")


def _world(max_waiting: int) -> tuple[World, list[tuple[str, str | None, Deferred]]]:
    world = World()
    world.client = LinkClient(None, clock=world.clock, max_in_flight=64, request_timeout=10)
    world.factory.settings = LinkSettings(max_waiting_fetches=max_waiting)
    started: list[tuple[str, str | None, Deferred]] = []

    def fetch(caller, tenant, service, uid, now) -> Deferred:
        d: Deferred = Deferred()
        started.append((caller.principal.tenant, uid, d))
        return d

    world.factory.fetch_keys = fetch  # type: ignore[method-assign]
    world.connect()
    return world, started


def test_a_tenants_fetches_take_turns_and_a_flood_is_refused_not_queued() -> None:
    world, started = _world(max_waiting=3)
    flood = results([world.client.fetch_service_keys(APP, "", "", uid=f"l3-{i}")
                     for i in range(6)])
    world.flush()
    # Two run, three wait in order, the sixth is refused at once.
    assert [uid for _, uid, _ in started] == ["l3-0", "l3-1"]
    assert flood[:5] == [None] * 5
    assert flood[5].check(ServiceKeyRefused)
    assert (flood[5].value.reason, flood[5].value.message) == (
        ResultReason.GENERAL_FAILURE, FETCHES_BUSY)
    # Another tenant's fetch is not behind them.
    other = results([world.client.fetch_service_keys(OTHER, "other", "app")])
    world.flush()
    assert started[-1][:2] == ("other", None)
    started[-1][2].callback([KEY])
    world.flush()
    assert other == [[KEY]]
    # One over, the next in line runs.
    started[0][2].callback([KEY])
    world.flush()
    assert flood[0] == [KEY]
    assert [uid for tenant, uid, _ in started if tenant == "demo"] == ["l3-0", "l3-1", "l3-2"]
    # A failed fetch gives its turn up too.
    started[1][2].errback(RuntimeError("the store failed"))
    world.flush()
    assert flood[1].check(ServiceKeyRefused)
    assert [uid for tenant, uid, _ in started if tenant == "demo"][-1] == "l3-3"
    # The link lost, what waited is never run.
    world.drop()
    for _, _, d in started:
        if not d.called:
            d.callback([KEY])
    assert [uid for tenant, uid, _ in started if tenant == "demo"] == [
        "l3-0", "l3-1", "l3-2", "l3-3"]
    assert world.factory.fetches.running("demo") == 0
