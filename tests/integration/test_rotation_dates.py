"""Rotation judged by the right dates: an administrator's Re-key of the tenant key (L2),
which copies the old L2's Activation Date, is not rotated again by the tenant-key policy
at the next sweep (its age starts at its making, as a service key's does); one sweep after
a service key's Deactivation Date and its policy's interval retires it first and does not
rotate it back to life; a date of 0 (1970) is a date, not "none", for a managed key's
rotation due time. The core's handler and the sweeper's steps, in process, at given
wall-clock times."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from kcm.core import auto_rotation
from kcm.core.rotation_policy import PolicySettings, set_policy
from kcm.core.state_sweeper import sweep_once
from kcm.core.store import repository
from kcm.core.store.schema import ManagedObject
from kcm.core.tenant_rotation import rotate_tenant_keys_due
from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import Operation, ResultStatus, State
from kcm.kmip.payloads import ReKeyRequest, SetAttributeRequest
from kcm.kmip.tags import Tag
from kcm.testing.requests import item, request, response
from kcm.ttlv import ItemType
from tests.core_support import CoreHarness, admin_principal, core  # noqa: F401  (fixture)
from tests.integration.test_core_objects import V21, ok, register, row


def _rekey_at(core: CoreHarness, now: int, uid: str) -> str:  # noqa: F811
    wire = request(item(Operation.RE_KEY, ReKeyRequest(unique_identifier=uid)),
                   version=V21)
    [answer] = response(core.handler.respond(wire, core.caller(admin_principal()), now)
                        ).batch_items
    assert answer.result_status == ResultStatus.SUCCESS, answer.result_message
    return answer.response_payload.unique_identifier


def test_a_re_keyed_tenant_key_is_not_rotated_again_at_once(core: CoreHarness) -> None:  # noqa: F811
    old = core.store.run_sync(lambda s: repository.find_l2(s, "demo"))
    made = old.activation_date
    core.store.run_sync(lambda s: set_policy(s, "demo", "", PolicySettings(
        tenant_key_interval=3600), now=made))
    new = _rekey_at(core, made + 3000, old.uid)  # 50 minutes on, no Offset
    assert core.store.run_sync(lambda s: repository.find_l2(s, "demo")).uid == new
    # 10 minutes after, the new L2 is 10 minutes old, not an hour.
    assert core.store.run_sync(
        lambda s: rotate_tenant_keys_due(s, core.keyring, made + 3600)) == []
    done = core.store.run_sync(lambda s: rotate_tenant_keys_due(s, core.keyring, made + 6601))
    assert len(done) == 1  # an hour after it was made


def _versions(core: CoreHarness) -> list[tuple[int, str]]:  # noqa: F811
    return core.store.run_sync(lambda s: [(r.key_version, State(r.state).name)
                                          for r in s.scalars(select(ManagedObject).where(
                                              ManagedObject.service == "app",
                                              ManagedObject.tenant == "demo",
                                              ManagedObject.level == 3)
                                              .order_by(ManagedObject.key_version))])


@pytest.mark.parametrize("sweeps", [(3001, 3700), (3700,)], ids=["between", "once-after"])
def test_a_service_retired_by_its_date_is_not_rotated_back(core: CoreHarness,  # noqa: F811
                                                           sweeps) -> None:
    l3 = core.store.run_sync(lambda s: repository.find_l3(s, "demo", "app",
                                                          active_only=True)[0])
    t0 = l3.activation_date
    core.store.run_sync(lambda s: set_policy(s, "demo", "app", PolicySettings(interval=3600),
                                             now=t0))
    ok(core, Operation.SET_ATTRIBUTE, SetAttributeRequest(
        unique_identifier=l3.uid, attribute=Attribute.of(Tag.DEACTIVATION_DATE, t0 + 3000)),
        principal=admin_principal())

    def rotation(session, at):
        return auto_rotation.rotate_due(session, core.keyring, at)

    for after in sweeps:
        core.store.run_sync(lambda s, at=t0 + after: sweep_once(s, [rotation], at))
    assert _versions(core) == [(1, "DEACTIVATED")]


@pytest.mark.parametrize("when", [-1, 0, 1])
def test_a_managed_keys_rotation_is_due_an_interval_after_a_date_of_1970(
        core: CoreHarness, when: int) -> None:  # noqa: F811
    uid = register(core, attributes=[
        Attribute.of(Tag.ACTIVATION_DATE, when),
        Attribute.of(Tag.ROTATE_AUTOMATIC, True, ItemType.BOOLEAN),
        Attribute.of(Tag.ROTATE_INTERVAL, 3600, ItemType.INTERVAL)], version=V21)
    assert row(core, uid).rotate_due == when + 3600
