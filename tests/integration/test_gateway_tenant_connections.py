"""One tenant cannot take every connection slot of a real `twistd kcm-gateway`: its
principals hold at most ``limits.max_connections_per_tenant`` connections at once (from
any addresses), one more is cut as soon as TLS names it, and another tenant's new
connections are served meanwhile, as are the first tenant's again once it closes some.
Without the cap, a tenant connecting from a few addresses took all ``max_connections``
and every other tenant's new connection was refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm.conformance.client import KmipClient, KmipClientError
from kcm.kmip.enums import ResultStatus
from kcm.testing.processes import free_port, running, scrape
from kcm.testing.requests import create_l4, request, response
from tests.e2e_support import GatewayProcess, deploy, wait_until

#: The gateway's caps: two tenants at their cap would fill it.
PER_TENANT = 3
MAX_CONNECTIONS = 2 * PER_TENANT


@pytest.fixture(params=["set", "unset"])
def gateway(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[GatewayProcess]:
    """A gateway whose tenant cap is PER_TENANT: set, or unset (half of max_connections:
    before, a fixed 450 that a max_connections of 6 made void)."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(tmp_path / "gateway", core, metrics_port=free_port())
    gateway.limits.update(max_connections=MAX_CONNECTIONS)
    if request.param == "set":
        gateway.limits.update(max_connections_per_tenant=PER_TENANT)
    with running(core, gateway):
        yield gateway


def served(client: KmipClient) -> bool:
    """Whether ``client`` has an L4 key created over its connection."""
    try:
        answer = response(client.send(request(create_l4())))
    except KmipClientError:
        return False
    return answer.batch_items[0].result_status == ResultStatus.SUCCESS


def refused_over_limit(gateway: GatewayProcess) -> float:
    _, body = scrape(gateway.metrics_port)
    line = next(line for line in body.decode().splitlines()
                if line.startswith('kcm_gateway_connections_refused_total{reason="limit"}'))
    return float(line.split()[-1])


def test_one_tenant_cannot_refuse_another_tenants_connections(gateway: GatewayProcess
                                                              ) -> None:
    # demo asks for every slot: it gets its cap, the rest are cut at the handshake.
    demo = [gateway.client("app") for _ in range(MAX_CONNECTIONS)]
    try:
        for client in demo:
            client.timeout = 5
        assert [served(client) for client in demo] == (
            [True] * PER_TENANT + [False] * (MAX_CONNECTIONS - PER_TENANT))
        wait_until(lambda: refused_over_limit(gateway) == MAX_CONNECTIONS - PER_TENANT,
                   "the refusals counted")
        wait_until(lambda: "tenant demo over limits.max_connections_per_tenant (3)"
                   in gateway.log.read_text(), "the refusal logged")
        # Another tenant's new connections are served meanwhile.
        others = [gateway.client("other_app") for _ in range(PER_TENANT)]
        try:
            assert all(served(client) for client in others)
        finally:
            for client in others:
                client.close()
        # The connections demo holds still work, and a slot it gives back is its own again.
        held = demo[:PER_TENANT]
        assert all(served(client) for client in held)
        held.pop().close()

        def served_anew() -> bool:
            with gateway.client("app") as again:
                return served(again)

        wait_until(served_anew, "a connection of demo served again", timeout=5)
    finally:
        for client in demo:
            client.close()
