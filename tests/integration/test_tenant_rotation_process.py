"""A tenant key (L2) rotated under load, end to end: a real `twistd kcm-core` (state sweeps
every 0.2 s) and a real `twistd kcm-gateway`, clients creating, reading and encrypting
through both while `kcm core tenant rotate demo` runs and kcm-core re-wraps the tenant's
service keys and objects in batches. No request fails, everything made before and during
still opens, and `kcm audit verify` passes afterwards."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm.conformance.client import KmipClient
from kcm.core.keyring import CURRENT_L2_TTL
from kcm.kmip.enums import Operation, ResultStatus
from kcm.kmip.messages import RequestBatchItem
from kcm.testing.processes import deploy, running
from tests.e2e_support import CoreProcess, GatewayProcess, audit_rows, populated, wait_until
from tests.gateway_support import create_l4, create_managed, encrypt, get, request, response

V21 = (2, 1)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[CoreProcess, GatewayProcess]]:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.state_sweep_interval = 0.2
    core.write_config()
    with running(core, GatewayProcess(tmp_path / "gateway", core)) as both:
        yield both


def tenant_keys(core: CoreProcess) -> dict[str, dict]:
    shown = json.loads(core.kcm("core", "tenant", "show", "demo", "--json").stdout)
    return {key["unique_identifier"]: key for key in shown["tenant_keys"]}


def wraps(core: CoreProcess, l2: str) -> int:
    """How many keys and objects ``l2`` wraps now, read from the core's database."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(core.database)
    try:
        with engine.connect() as connection:
            return connection.execute(sqlalchemy.text(
                "SELECT count(*) FROM managed_objects WHERE wrapped_by = :l2 "
                "AND material IS NOT NULL"), {"l2": l2}).scalar_one()
    finally:
        engine.dispose()


class Load(threading.Thread):
    """Sends ``items(i)`` over and over until stopped; counts the answers and the failures."""

    def __init__(self, connect, items) -> None:
        super().__init__(daemon=True)
        self.connect, self.items = connect, items
        self.stop = threading.Event()
        self.sent = 0
        self.failures: list[str] = []
        self.made: list[str] = []

    def run(self) -> None:
        try:
            with self.connect() as client:
                while not self.stop.is_set():
                    self.step(client)
        except Exception as e:  # a lost connection is a lost request
            self.failures.append(repr(e))

    def step(self, client: KmipClient) -> None:
        items: list[RequestBatchItem] = self.items(self)
        answers = response(client.send(request(*items, version=V21))).batch_items
        self.sent += len(items)
        for answer in answers:
            if answer.result_status != ResultStatus.SUCCESS:
                self.failures.append(f"{answer.result_reason}: {answer.result_message}")
            elif answer.operation == Operation.CREATE:
                self.made.append(answer.response_payload.unique_identifier)


def test_a_tenant_key_rotation_under_load_loses_no_request(deployment) -> None:
    core, gateway = deployment
    populated(core, 400)
    with core.client("app") as app:
        [seed] = [a.response_payload.unique_identifier
                  for a in response(app.send(request(create_managed(), version=V21)))
                  .batch_items]
    with gateway.client("app") as app:
        [token] = [a.response_payload.unique_identifier
                   for a in response(app.send(request(create_l4(), version=V21))).batch_items]
    [old_l2] = [uid for uid, key in tenant_keys(core).items() if key["state"] == "ACTIVE"]
    assert wraps(core, old_l2) >= 400

    def direct(load: Load) -> list[RequestBatchItem]:
        target = load.made[-1] if load.made else seed
        return [create_managed(), get(target), get(seed)]

    def through_gateway(load: Load) -> list[RequestBatchItem]:
        return [create_l4(), encrypt(token), get(seed), create_managed()]

    loads = [Load(lambda: core.client("app"), direct),
             Load(lambda: gateway.client("app"), through_gateway)]
    for load in loads:
        load.start()
    time.sleep(0.5)
    rotated_at = time.monotonic()
    rotated = core.kcm("core", "tenant", "rotate", "demo")
    assert "tenant key" in rotated.stdout
    # New objects are wrapped under the new L2 once the core looks its current one up again
    # (at most CURRENT_L2_TTL later); the sweeper moves everything else.
    wait_until(lambda: time.monotonic() - rotated_at > CURRENT_L2_TTL + 0.5
               and wraps(core, old_l2) == 0,
               "nothing left under the old tenant key", timeout=20, interval=0.2)
    for load in loads:
        load.stop.set()
    for load in loads:
        load.join(10)
    sent = [load.sent for load in loads]
    print(f"\nrequests' items during the rotation: {sent}")
    assert all(count > 50 for count in sent), sent
    assert [load.failures for load in loads] == [[], []]

    keys = tenant_keys(core)
    [new_l2] = [uid for uid, key in keys.items() if key["state"] == "ACTIVE"]
    assert keys[old_l2]["state"] == "DEACTIVATED" and keys[new_l2]["wraps"] > 400
    batches = [r for r in audit_rows(core) if r["operation"] == "RewrapObjects"]
    assert len(batches) >= 3 and all(b["detail"]["count"] <= 200 for b in batches)
    # Everything made before and during the rotation still opens, at the core and through
    # the gateway.
    made = loads[0].made + loads[1].made
    with core.client("app") as app, gateway.client("app") as via:
        for client in (app, via):
            for start in range(0, len(made), 50):
                answers = response(client.send(request(
                    *[get(uid) for uid in made[start:start + 50]], version=V21))).batch_items
                assert {a.result_status for a in answers} == {ResultStatus.SUCCESS}
    verified = core.kcm("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
