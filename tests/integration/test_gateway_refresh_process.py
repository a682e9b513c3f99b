"""A gateway's refresh of a service key it holds (link version 8), against a real `twistd
kcm-core`:

* a real kcm-gateway with a short ``l3_ttl`` refreshing an unchanged key writes no
  FetchServiceKey audit record (the core counts the refreshes, answered from a read); a
  change no event tells of (a tombstone written straight into the database) is picked up
  by the next refresh, a full fetch, audited, and the gateway then refuses the token;
* a gateway whose tenant a SIGHUP takes out of its scope is refused at its next refresh,
  audited as any refusal of who asks, whatever digest it sends.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import sqlalchemy
from prometheus_client.parser import text_string_to_metric_families

from kcm.kmip.enums import ResultReason
from kcm.l4.token import token_id
from kcm.link.frames import LINK_VERSION, Frame, FrameType
from kcm.link.keys_digest import keys_digest
from kcm.testing.processes import free_port, scrape
from kcm.testing.requests import create_l4, get
from tests.e2e_support import (
    CoreProcess,
    GatewayProcess,
    deploy,
    last_seq,
    send_v21,
    wait_until,
)
from tests.integration.test_gateway_l3_idle_process import fetch_tenants
from tests.integration.test_gateway_scope_link import NOT_ACCEPTED, TD, RawLink, _reload


def refreshes(port: int, name: str) -> dict[str, float]:
    """The samples of counter ``name`` at metrics ``port``, by their labels' values."""
    status, body = scrape(port)
    assert status == 200
    return {",".join(sample.labels.values()): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples if sample.name == name}


def unchanged_at_core(core: CoreProcess) -> float:
    assert core.metrics_port is not None
    return refreshes(core.metrics_port, "kcm_core_service_key_refreshes_total").get(
        "unchanged", 0.0)


def test_an_unchanged_refresh_writes_no_audit_record_and_a_change_is_picked_up(
        core_process_with_metrics: CoreProcess, tmp_path: Path) -> None:
    core = core_process_with_metrics
    gateway = GatewayProcess(tmp_path / "gateway", core, l3_ttl=1.0, max_stale=10.0)
    gateway.metrics_port = free_port()
    try:
        gateway.start()
        gateway.wait_linked()
        with gateway.client("app") as client:
            [created] = send_v21(client, create_l4())
            token = created.response_payload.unique_identifier
            wait_until(lambda: "demo" in fetch_tenants(core), "demo/app fetched")
            after = last_seq(core)
            before = unchanged_at_core(core)
            time.sleep(4)  # four l3_ttl: about four refreshes, all of them unchanged
            assert fetch_tenants(core, after) == []
            assert unchanged_at_core(core) - before >= 2
            assert gateway.metrics_port is not None
            assert refreshes(gateway.metrics_port,
                             "kcm_gateway_l3_refreshes_unchanged_total")[""] >= 2

            # A change no event tells the gateway of: the next refresh fetches it whole.
            engine = sqlalchemy.create_engine(core.database)
            try:
                with engine.begin() as connection:
                    l3_uid = connection.execute(sqlalchemy.text(
                        "SELECT uid FROM managed_objects WHERE tenant = 'demo' "
                        "AND service = 'app' AND level IS NOT NULL "
                        "ORDER BY key_version DESC")).scalars().first()
                    connection.execute(sqlalchemy.text(
                        "INSERT INTO l4_tombstones (token_id, tenant, l3_uid, at, reason) "
                        "VALUES (:t, 'demo', :l3, :at, 'test')"),
                        {"t": token_id(token), "l3": l3_uid, "at": int(time.time())})
            finally:
                engine.dispose()
            wait_until(lambda: "demo" in fetch_tenants(core, after), "the change fetched",
                       timeout=5)
            # (The core's audit record is committed before its answer reaches the
            # gateway: the token is refused once the gateway has taken that answer.)
            def refused() -> bool:
                [answer] = send_v21(client, get(token))
                return answer.result_reason is ResultReason.OBJECT_NOT_FOUND

            wait_until(refused, "the token refused at the gateway", timeout=2, interval=0.05)
    finally:
        gateway.stop()


class Version8Link(RawLink):
    """A raw link of a gateway that names link version 8."""

    def __init__(self, core: CoreProcess) -> None:
        super().__init__(core)
        self.send(Frame(FrameType.VERSION, link_version=LINK_VERSION))

    def conditional(self, who: str, tenant: str, held: bytes) -> Frame:
        self.stream += 1
        self.send(Frame(FrameType.FETCH_SERVICE_KEY, stream_id=self.stream,
                        caller_identity=f"{TD}/{who}", tenant=tenant, service="app",
                        keys_digest=held))
        return self.until(FrameType.SERVICE_KEYS, self.stream)


def test_a_gateway_whose_tenant_left_its_scope_is_refused_at_its_refresh(
        tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.start()
    try:
        link = Version8Link(core)
        keys = link.fetch("tenant/demo/service/app", "demo")
        held = keys_digest(keys.service_keys)
        after = last_seq(core)
        unchanged = link.conditional("tenant/demo/service/app", "demo", held)
        assert (unchanged.keys_digest, unchanged.service_keys) == (held, [])
        assert last_seq(core) == after  # not audited

        _reload(core, '[gateways."gateway/gw1"]\ntenants = ["other"]\nadmins = false\n', 1)
        try:
            link.until(FrameType.SERVICE_KEYS)
        except ConnectionError as e:
            assert "scope changed" in str(e)
        link = Version8Link(core)
        refused = link.conditional("tenant/demo/service/app", "demo", held)
        assert refused.error == NOT_ACCEPTED and refused.keys_digest is None
        assert not refused.service_keys

        def refusal() -> list[dict]:
            engine = sqlalchemy.create_engine(core.database)
            try:
                with engine.connect() as connection:
                    return [json.loads(row[0]) for row in connection.execute(sqlalchemy.text(
                        "SELECT detail FROM audit_log WHERE seq > :after "
                        "AND principal = 'unidentified' AND gateway = :gw"),
                        {"after": after, "gw": f"{TD}/gateway/gw1"})]
            finally:
                engine.dispose()

        wait_until(lambda: refusal() != [], "the refusal's audit record")
        assert refusal()[0]["claimed"] == f"{TD}/tenant/demo/service/app"
    finally:
        core.stop()
