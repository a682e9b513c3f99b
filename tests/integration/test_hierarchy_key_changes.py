"""Changes to tenant and service keys (L2, L3) that must leave the hierarchy whole: a
tenant key made by work that rolls back never wraps anything (the keyring's "current L2"
looked up inside the transaction is forgotten when the work rolls back); a replaced version
is not re-keyed again; a hierarchy key takes no other usage mask; a new version's
activation is not moved past its predecessor's end."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from kcm.core.store.schema import LEVEL_TENANT_KEY, ManagedObject
from kcm.kmip.enums import Operation, ResultStatus
from kcm.kmip.payloads import ReKeyRequest
from kcm.testing.requests import STOP, UNDO, create_managed, get, item, request, response
from tests.core_support import CoreHarness, admin_principal, core  # noqa: F401  (fixture)


def _l2s(harness: CoreHarness) -> list[str]:
    return harness.store.run_sync(lambda s: list(s.scalars(select(ManagedObject.uid).where(
        ManagedObject.tenant == "demo", ManagedObject.level == LEVEL_TENANT_KEY))))


def _wrapped_by(harness: CoreHarness, uid: str) -> str | None:
    return harness.store.run_sync(lambda s: s.scalar(select(ManagedObject.wrapped_by).where(
        ManagedObject.uid == uid)))


@pytest.mark.parametrize("how", ["undo", "response_too_large"])
def test_a_rolled_back_l2_rekey_wraps_no_later_object(core: CoreHarness,  # noqa: F811
                                                      how: str) -> None:
    [l2] = _l2s(core)
    rekey = item(Operation.RE_KEY, ReKeyRequest(unique_identifier=l2), b"R")
    if how == "undo":
        wire = request(rekey, create_managed(b"C"), get("no-such-object", b"X"),
                       continuation=UNDO)
    else:  # every success withheld (Response Too Large): the core undoes the request
        wire = request(rekey, create_managed(b"C"), continuation=STOP,
                       maximum_response_size=200)
    answers = response(core.client(admin_principal()).send(wire)).batch_items
    assert ResultStatus.SUCCESS not in [a.result_status for a in answers]
    assert _l2s(core) == [l2]  # the Re-key was rolled back

    made = response(core.client().send(request(create_managed(b"N")))).batch_items[0]
    assert made.result_status == ResultStatus.SUCCESS, made.result_message
    uid = made.response_payload.unique_identifier
    assert _wrapped_by(core, uid) == l2
    # and it reads back with nothing cached: as another core, or this one restarted, would
    core.keyring.forget_tenant("demo")
    got = response(core.client().send(request(get(uid)))).batch_items[0]
    assert got.result_status == ResultStatus.SUCCESS, got.result_message


def test_a_committed_l2_rekey_is_used_at_once(core: CoreHarness) -> None:  # noqa: F811
    [l2] = _l2s(core)
    wire = request(item(Operation.RE_KEY, ReKeyRequest(unique_identifier=l2), b"R"),
                   create_managed(b"C"))
    answers = response(core.client(admin_principal()).send(wire)).batch_items
    assert [a.result_status for a in answers] == [ResultStatus.SUCCESS] * 2
    new = answers[0].response_payload.unique_identifier
    assert sorted(_l2s(core)) == sorted([l2, new])
    assert _wrapped_by(core, answers[1].response_payload.unique_identifier) == new
    made = response(core.client().send(request(create_managed(b"N")))).batch_items[0]
    assert _wrapped_by(core, made.response_payload.unique_identifier) == new


def test_a_replaced_service_key_version_is_not_re_keyed_again(core: CoreHarness) -> None:  # noqa: F811
    """Two administrators' Re-keys of one service key version both answered Success: the
    second made a version deactivated from its birth (it copied the Deactivation Date the
    first had just set), announced as the service's newest."""
    from kcm.core.store.repository import find_l3

    [v1] = core.store.run_sync(lambda s: [row.uid for row in find_l3(s, "demo", "app")])
    wire = request(item(Operation.RE_KEY, ReKeyRequest(unique_identifier=v1), b"1"))
    [first] = response(core.client(admin_principal()).send(wire)).batch_items
    assert first.result_status == ResultStatus.SUCCESS, first.result_message
    [second] = response(core.client(admin_principal()).send(wire)).batch_items
    assert second.result_status == ResultStatus.OPERATION_FAILED
    assert first.response_payload.unique_identifier in second.result_message


def test_a_service_key_takes_no_other_usage_mask(core: CoreHarness) -> None:  # noqa: F811
    """A Decrypt-only mask was stored on a service key by Re-key (or Modify) and never
    enforced: the new version still sealed L4 tokens and encrypted."""
    from kcm.core.store.repository import find_l3
    from kcm.kmip.attributes import Attribute
    from kcm.kmip.enums import CryptographicUsageMask, ResultReason
    from kcm.kmip.payloads import ModifyAttributeRequest
    from kcm.kmip.tags import Tag

    [v1] = core.store.run_sync(lambda s: [row.uid for row in find_l3(s, "demo", "app")])
    decrypt_only = Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK,
                                int(CryptographicUsageMask.DECRYPT))
    admin = core.client(admin_principal())
    [rekeyed] = response(admin.send(request(item(Operation.RE_KEY, ReKeyRequest(
        unique_identifier=v1, attributes=[decrypt_only]), b"1")))).batch_items
    [modified] = response(admin.send(request(item(
        Operation.MODIFY_ATTRIBUTE, ModifyAttributeRequest(unique_identifier=v1,
                                                           attribute=decrypt_only),
        b"2")))).batch_items
    for refused in (rekeyed, modified):
        assert refused.result_reason in (ResultReason.ATTRIBUTE_READ_ONLY,  # (1.x: the other)
                                         ResultReason.PERMISSION_DENIED), refused.result_message
        assert "Cryptographic Usage Mask" in refused.result_message


def test_a_new_version_s_activation_is_not_moved_past_its_predecessor_s_end(
        core: CoreHarness) -> None:  # noqa: F811
    """Re-key with an Offset: the old version deactivates when the new one activates, set
    once. Moving the new one's Activation Date later left the service with no active key
    in between (every L4 Create refused: "no Active service key")."""
    import time

    from kcm.core.store.repository import find_l3
    from kcm.kmip.attributes import Attribute
    from kcm.kmip.enums import ResultReason
    from kcm.kmip.payloads import ModifyAttributeRequest
    from kcm.kmip.tags import Tag
    from kcm.ttlv import ItemType

    [v1] = core.store.run_sync(lambda s: [row.uid for row in find_l3(s, "demo", "app")])
    admin = core.client(admin_principal())
    [rekeyed] = response(admin.send(request(item(Operation.RE_KEY, ReKeyRequest(
        unique_identifier=v1, offset=3600), b"1")))).batch_items
    assert rekeyed.result_status == ResultStatus.SUCCESS, rekeyed.result_message
    v2 = rekeyed.response_payload.unique_identifier

    def activate_v2_at(when: int):
        [answer] = response(admin.send(request(item(
            Operation.MODIFY_ATTRIBUTE, ModifyAttributeRequest(
                unique_identifier=v2, attribute=Attribute.of(
                    Tag.ACTIVATION_DATE, when, ItemType.DATE_TIME)), b"2")))).batch_items
        return answer

    later = activate_v2_at(int(time.time()) + 86_400)
    assert later.result_reason == ResultReason.INVALID_FIELD, later.result_message
    assert "leaves no active key" in later.result_message
    earlier = activate_v2_at(int(time.time()) + 1800)  # an overlap is no gap
    assert earlier.result_status == ResultStatus.SUCCESS, earlier.result_message
