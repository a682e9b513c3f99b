"""A tenant key (L2) revoked at a core stops wrapping there at once: the core that commits
the Revoke does not wait for its look-up of the tenant's current L2 to expire (5 s) before
it stops wrapping new objects under a compromised key."""

from __future__ import annotations

import time

from kcm.core.store import repository
from kcm.kmip.enums import Operation, ResultReason, ResultStatus, RevocationReasonCode
from kcm.kmip.payloads import RevocationReason, RevokeRequest
from kcm.testing.requests import create_managed, item, request, response
from tests.core_support import CoreHarness, admin_principal


def _answer(core: CoreHarness, batch_item, principal=None):
    wire = core.handler.respond(request(batch_item, version=(2, 1)), core.caller(principal),
                                int(time.time()))
    [answer] = response(wire).batch_items
    return answer


def _revoke(uid: str, code: RevocationReasonCode):
    return item(Operation.REVOKE, RevokeRequest(unique_identifier=uid,
                                                revocation_reason=RevocationReason(code=code)))


def test_a_create_right_after_a_key_compromise_of_the_tenant_key_is_not_wrapped_under_it(
        core: CoreHarness) -> None:
    l2 = core.store.run_sync(lambda session: repository.find_l2(session, "demo").uid)
    assert _answer(core, create_managed()).result_status == ResultStatus.SUCCESS  # (cached)
    revoked = _answer(core, _revoke(l2, RevocationReasonCode.KEY_COMPROMISE), admin_principal())
    assert revoked.result_status == ResultStatus.SUCCESS, revoked.result_message

    answer = _answer(core, create_managed())

    assert answer.result_reason == ResultReason.PERMISSION_DENIED, answer.result_message
    assert "no active tenant key" in answer.result_message
