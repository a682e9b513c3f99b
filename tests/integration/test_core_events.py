"""The core's outbox events for gateways, written with the change that causes them: new L3
versions (provisioning, Re-key) and every L3 state change, and nothing for a change that
did not commit or for ordinary objects."""

from __future__ import annotations

import pytest_twisted

from kcm.core.hierarchy import provision_service
from kcm.core.store import repository
from kcm.kmip.enums import (
    ObjectType,
    Operation,
    ResultStatus,
    RevocationReasonCode,
    State,
)
from kcm.kmip.payloads import (
    CreateRequest,
    DestroyRequest,
    ReKeyRequest,
    RevocationReason,
    RevokeRequest,
)
from kcm.link.frames import decode_payload
from tests.core_support import CoreHarness, admin_principal
from tests.integration.test_core_handler import AES256, send, wire


def events_after(core: CoreHarness, seq: int) -> list[tuple]:
    rows = core.store.run_sync(lambda s: repository.outbox_since(s, seq), write=False)
    return [(r.seq, r.kind, r.tenant, decode_payload(r.payload)) for r in rows]


def head(core: CoreHarness) -> int:
    return core.store.run_sync(repository.outbox_head, write=False)


def current_l3(core: CoreHarness) -> str:
    return core.store.run_sync(
        lambda s: repository.find_l3(s, "demo", "app", active_only=True)[0].uid, write=False)


def test_provisioning_a_service_emits_l3_rotated(core: CoreHarness) -> None:
    provisioned = events_after(core, 0)  # the fixture's three services
    assert [(kind, tenant, payload["service"]) for _, kind, tenant, payload in provisioned] == [
        ("l3.rotated", "demo", "app"), ("l3.rotated", "demo", "billing"),
        ("l3.rotated", "other", "app")]
    seq, kind, tenant, payload = provisioned[0]
    assert (seq, kind, tenant) == (1, "l3.rotated", "demo")
    assert payload == {"unique_identifier": current_l3(core), "service": "app", "key_version": 1}
    uid = core.store.run_sync(lambda s: provision_service(s, core.keyring, "demo", "app", now=1))
    assert events_after(core, len(provisioned))[0][3] == {"unique_identifier": uid,
                                                          "service": "app", "key_version": 2}


@pytest_twisted.ensureDeferred
async def test_rekey_of_an_l3_emits_the_new_version_and_the_old_ones_state(
        core: CoreHarness) -> None:
    old, start = current_l3(core), head(core)
    response = await send(core, wire((Operation.RE_KEY, ReKeyRequest(unique_identifier=old))),
                          admin_principal())
    assert response.batch_items[0].result_status == ResultStatus.SUCCESS
    new = response.batch_items[0].response_payload.unique_identifier
    kinds = {(kind, p["unique_identifier"]): p for _, kind, _, p in events_after(core, start)}
    assert kinds[("l3.rotated", new)]["key_version"] == 2
    assert kinds[("l3.state", old)]["state"] == State.DEACTIVATED


@pytest_twisted.ensureDeferred
async def test_revoke_and_destroy_of_an_l3_emit_l3_state(core: CoreHarness) -> None:
    uid, start = current_l3(core), head(core)
    reason = RevocationReason(code=RevocationReasonCode.KEY_COMPROMISE)
    await send(core, wire((Operation.REVOKE, RevokeRequest(unique_identifier=uid,
                                                           revocation_reason=reason))),
               admin_principal())
    await send(core, wire((Operation.DESTROY, DestroyRequest(unique_identifier=uid))),
               admin_principal())
    assert [(k, p["state"]) for _, k, _, p in events_after(core, start)] == [
        ("l3.state", State.COMPROMISED), ("l3.state", State.DESTROYED_COMPROMISED)]


@pytest_twisted.ensureDeferred
async def test_refused_changes_and_ordinary_objects_emit_nothing(core: CoreHarness) -> None:
    uid, start = current_l3(core), head(core)
    reason = RevocationReason(code=RevocationReasonCode.CESSATION_OF_OPERATION)
    response = await send(core, wire((Operation.REVOKE, RevokeRequest(
        unique_identifier=uid, revocation_reason=reason))))  # an application may not
    assert response.batch_items[0].result_status == ResultStatus.OPERATION_FAILED
    created = await send(core, wire((Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY, attributes=AES256))))
    key = created.batch_items[0].response_payload.unique_identifier
    await send(core, wire((Operation.REVOKE, RevokeRequest(unique_identifier=key,
                                                           revocation_reason=reason))))
    assert head(core) == start
