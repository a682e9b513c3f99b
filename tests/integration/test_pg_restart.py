"""kcm-core outlives a PostgreSQL restart (a failover, a maintenance restart): with a real
cluster of its own, restarted under a running core and gateway, the core answers again at
once, its outbox listener and the sweeper's lease come back by themselves, and an event
committed after the restart reaches the gateway."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kcm.kmip.enums import Operation, ResultReason, ResultStatus
from kcm.kmip.payloads.lifecycle import DestroyRequest
from kcm.testing.postgres import Cluster
from kcm.testing.processes import CoreProcess, GatewayProcess, deploy
from tests.e2e_support import wait_until
from tests.gateway_support import create_l4, create_managed, get, item, request, response
from tests.pg import own_cluster  # noqa: F401  (fixture)

#: Waits for things that happen within seconds: run alone.
pytestmark = pytest.mark.serial


def status(client, wire: bytes) -> tuple[int, int | None]:
    [answer] = response(client.send(wire)).batch_items
    return answer.result_status, answer.result_reason


def test_the_core_and_its_gateway_outlive_a_postgresql_restart(own_cluster: Cluster,  # noqa: F811
                                                               tmp_path: Path) -> None:
    cluster = own_cluster
    core: CoreProcess = deploy(tmp_path / "core", cluster.url)
    gateway = GatewayProcess(tmp_path / "gateway", core)
    core.start()
    try:
        gateway.start()
        gateway.wait_linked()
        with gateway.client("app") as app:
            [created] = response(app.send(request(create_l4()))).batch_items
            token = created.response_payload.unique_identifier
            assert status(app, request(get(token)))[0] == ResultStatus.SUCCESS
        wait_until(lambda: "holds the state sweeper lease" in core.log.read_text(),
                   "the core to take the sweeper's lease")

        cluster.restart()
        restarted = time.monotonic()
        with core.client("app") as direct:
            # The pool's connections died with the server: each is replaced when next used.
            waited = wait_until(lambda: _answers(direct), "the core to answer again", 10)
            assert waited < 5
            assert status(direct, request(item(Operation.DESTROY, DestroyRequest(
                unique_identifier=token)))) == (ResultStatus.SUCCESS, None)
        committed = time.monotonic()
        with gateway.client("app") as app:
            wait_until(lambda: status(app, request(get(token), version=(2, 1))) == (
                ResultStatus.OPERATION_FAILED, ResultReason.OBJECT_NOT_FOUND),
                "the gateway to refuse the destroyed token", timeout=5)
        assert time.monotonic() - committed < 2
        wait_until(lambda: core.log.read_text().count("listening for outbox commits (") >= 2,
                   "the outbox listener to listen again", timeout=10)
        wait_until(lambda: core.log.read_text().count("holds the state sweeper lease") >= 2,
                   "the core to take the sweeper's lease again", timeout=15)
        print(f"\ncore answering {waited:.2f}s after the restart; "
              f"{time.monotonic() - restarted:.1f}s until the lease was held again")
    finally:
        gateway.stop()
        core.stop()


def _answers(client) -> bool:
    try:
        return status(client, request(create_managed()))[0] == ResultStatus.SUCCESS
    except Exception:  # noqa: BLE001 - a broken connection: try again
        client.close()
        return False
