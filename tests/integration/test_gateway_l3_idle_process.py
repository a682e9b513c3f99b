"""A real kcm-gateway in front of a real kcm-core stops refreshing a service no request uses
(``l3_idle``) and forgets it once past ``max_stale``: the core receives no more fetches for
it, while a service in use keeps being refreshed (counted by the core: unchanged ones write
no audit record); a request for the forgotten one fetches it again."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from kcm.conformance.client import KmipClient
from kcm.testing.processes import free_port, scrape
from tests.e2e_support import (
    ClientLoad,
    CoreProcess,
    GatewayProcess,
    last_seq,
    send_v21,
    succeeded_v21,
    wait_until,
)
from tests.gateway_support import create_l4, encrypt


def fetch_tenants(core: CoreProcess, after: int = 0) -> list[str]:
    """The tenant of each service key fetch (FetchServiceKey) the core audited after
    ``after``, in order."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(core.database)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text(
                "SELECT tenant FROM audit_log WHERE operation = 'FetchServiceKey' "
                "AND seq > :after ORDER BY seq"), {"after": after}).all()
    finally:
        engine.dispose()
    return [row[0] for row in rows]


def gateway_metric(gateway: GatewayProcess, name: str) -> float:
    assert gateway.metrics_port is not None
    status, body = scrape(gateway.metrics_port)
    assert status == 200
    return sum(sample.value for family in text_string_to_metric_families(body.decode())
               for sample in family.samples if sample.name == name)


def forgotten(gateway: GatewayProcess) -> float:
    return gateway_metric(gateway, "kcm_gateway_l3_idle_forgotten_total")


def use_demo_app(client: KmipClient) -> str | None:
    """A Create and an Encrypt of demo/app (its current L3, then the version by uid)."""
    answers = send_v21(client, create_l4())
    if answers[0].response_payload is None:
        return answers[0].result_message
    token = answers[0].response_payload.unique_identifier
    [sealed] = send_v21(client, encrypt(token, b"record"))
    time.sleep(0.1)
    return None if sealed.response_payload is not None else sealed.result_message


def core_refreshes(core: CoreProcess) -> float:
    """The gateways' conditional refreshes the core answered, changed or not (link version
    8: an unchanged one writes no audit record)."""
    assert core.metrics_port is not None
    status, body = scrape(core.metrics_port)
    assert status == 200
    return sum(sample.value for family in text_string_to_metric_families(body.decode())
               for sample in family.samples
               if sample.name == "kcm_core_service_key_refreshes_total")


def test_an_unused_service_is_no_longer_refreshed_and_a_used_one_is(
        core_process_with_metrics: CoreProcess, tmp_path: Path) -> None:
    core = core_process_with_metrics
    gateway = GatewayProcess(tmp_path / "gateway", core, l3_ttl=1.0, max_stale=2.0,
                             prewarm=("demo/app", "other/app"), settings={"l3_idle": 2.0})
    gateway.metrics_port = free_port()
    load = ClientLoad(gateway, use_demo_app)
    try:
        gateway.start()
        gateway.wait_linked()
        wait_until(lambda: "other" in fetch_tenants(core), "other/app prewarmed")
        load.start()
        # other/app: prewarmed, then used by nothing: refreshed for l3_idle, then forgotten
        # once past max_stale.
        wait_until(lambda: forgotten(gateway) == 1, "other/app forgotten", timeout=20)
        # ... and its version too: only demo/app's is held, and so refreshed.
        wait_until(lambda: gateway_metric(gateway, "kcm_gateway_l3_cache_keys") == 1,
                   "other/app's version forgotten", timeout=10)
        after, before = last_seq(core), core_refreshes(core)
        time.sleep(4)  # four l3_ttl
        later = fetch_tenants(core, after)
        assert later.count("other") == 0, later
        # demo/app, in use, refreshed every l3_ttl, unchanged (unaudited) or not.
        assert core_refreshes(core) - before >= 3, later
        assert gateway_metric(gateway, "kcm_gateway_l3_cache_keys") == 1
        load.done.set()
        load.join(10)
        assert load.steps > 0 and load.failures == []
        # Used again, the forgotten service is a miss: fetched from the core again.
        after = last_seq(core)
        with gateway.client("other_app") as client:
            succeeded_v21(client, create_l4())
        assert "other" in fetch_tenants(core, after)
    finally:
        load.done.set()
        gateway.stop()
