"""A restarted gateway learns every tombstone of a service key, in pages (link version 9),
real processes: 1,001 L4 tokens revoked under demo/app's version (more than one SERVICE_KEYS
carries), the gateway restarted; the version comes without its tombstones, is paged in, and
its L4 Encrypts are then served at the gateway (the core writes no audit record for them;
the gauge of overflowed versions goes back to 0), a revoked token refused there."""

from __future__ import annotations

from pathlib import Path

from kcm.kmip.enums import Operation, ResultReason, RevocationReasonCode
from kcm.kmip.messages import RequestBatchItem
from kcm.kmip.payloads.lifecycle import RevocationReason, RevokeRequest
from kcm.link.frames import MAX_SENT_TOMBSTONES
from kcm.testing.processes import free_port, scrape
from tests.e2e_support import (
    CoreProcess,
    GatewayProcess,
    audit_rows,
    last_seq,
    refusals,
    send_v21,
    succeeded_v21,
    wait_until,
)
from tests.gateway_support import create_l4, encrypt, get, item

BATCH = 50  # items per request (within max_batch_items)
REVOKED = MAX_SENT_TOMBSTONES + 1


def revoke(uid: str) -> RequestBatchItem:
    return item(Operation.REVOKE, RevokeRequest(
        unique_identifier=uid,
        revocation_reason=RevocationReason(code=RevocationReasonCode.CESSATION_OF_OPERATION)))


def metric(gateway: GatewayProcess, name: str) -> bytes:
    _, body = scrape(gateway.metrics_port)
    [line] = [line for line in body.splitlines() if line.startswith(name.encode() + b" ")]
    return line.split()[1]


def test_a_restarted_gateway_pages_in_1001_tombstones_and_serves_their_version_again(
        core_process: CoreProcess, tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path / "gateway", core_process, metrics_port=free_port())
    gateway.start()
    try:
        gateway.wait_linked()
        with gateway.client("app") as app:
            tokens: list[str] = []
            while len(tokens) < REVOKED + 1:
                tokens += [created.unique_identifier
                           for created in succeeded_v21(app, *[create_l4()] * BATCH)]
            revoked, live = tokens[:REVOKED], tokens[REVOKED]
            for at in range(0, REVOKED, BATCH):
                succeeded_v21(app, *[revoke(token) for token in revoked[at:at + BATCH]])

        gateway.stop()
        gateway.start()  # (a restart: it learns the tombstones from the core alone)
        gateway.wait_linked()
        wait_until(lambda: "L4 tombstones came in" in gateway.log.read_text(),
                   "the gateway to page the version's tombstones in", timeout=20)
        assert "without its L4 tombstones" in gateway.log.read_text()
        assert metric(gateway, "kcm_gateway_l3_tombstones_overflowed") == b"0.0"
        assert float(metric(gateway, "kcm_gateway_l4_tombstones")) == REVOKED

        before = last_seq(core_process)
        with gateway.client("app") as app:
            for _ in range(4):
                succeeded_v21(app, *[encrypt(live, b"a customer record")] * BATCH)
            assert refusals(send_v21(app, encrypt(revoked[0]), get(revoked[-1]),
                                     encrypt(revoked[REVOKED // 2]))) == [
                ResultReason.OBJECT_NOT_FOUND] * 3
        # Served at the gateway: no record of them at the core (a forwarded L4 request
        # is audited there, one record each).
        operations = [row["operation"] for row in audit_rows(core_process, before)]
        assert not {"ENCRYPT", "GET"} & set(operations), operations
    finally:
        gateway.stop()
