"""A tenant at its bound of stored objects (``[core.limits] max_objects_per_tenant``,
kcm.core.store.quota), through kcm-core's request handler in process: the item that would
store one more fails with Server Limit Exceeded (Feature Not Supported in 1.x) and is
audited so, the others of its batch as usual; a Create Key Pair needing two rows with one
left fails whole and frees its row for the next item; an L4 Revoke (a tombstone) is
refused too; another tenant is served."""

from __future__ import annotations

import time

from sqlalchemy import select, update

from kcm.core.store.schema import AuditLog, Tenant
from kcm.kmip.enums import BatchErrorContinuationOption, ObjectType, Operation, ResultReason
from kcm.kmip.payloads import CreateRequest, RegisterRequest
from kcm.testing.requests import aes256
from tests.core_support import CoreHarness, service_principal
from tests.integration.test_core_asymmetric import key_pair_request
from tests.integration.test_core_crypto import call, failed, ok
from tests.integration.test_core_l4 import revoke_request
from tests.integration.test_core_objects import aes_key

CONTINUE = BatchErrorContinuationOption.CONTINUE
MESSAGE = "tenant demo is at its bound of {} stored objects (max_objects_per_tenant)"
CREATE = (Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                          attributes=aes256()))
REGISTER = (Operation.REGISTER, RegisterRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                                attributes=[], object=aes_key()))


def _stored(core: CoreHarness, tenant: str = "demo") -> int:
    return core.store.run_sync(lambda s: s.scalar(select(Tenant.stored).where(
        Tenant.name == tenant)), write=False)


def _bound_at(core: CoreHarness, room: int) -> int:
    """Leave demo ``room`` more rows; the bound."""
    bound = core.store.max_objects_per_tenant = _stored(core) + room
    return bound


def _over(item, bound: int, reason=ResultReason.SERVER_LIMIT_EXCEEDED) -> None:
    failed(item, reason)
    assert item.result_message == MESSAGE.format(bound)


def test_the_items_over_the_bound_fail_and_the_rest_are_served(core: CoreHarness) -> None:
    bound = _bound_at(core, 2)
    first, second, third, fourth = call(core, CREATE, REGISTER, CREATE, REGISTER,
                                        continuation=CONTINUE)
    ok(first), ok(second)
    _over(third, bound)
    _over(fourth, bound)
    assert _stored(core) == bound
    # 1.x has no Server Limit Exceeded: the reason of the same kind.
    [old] = call(core, CREATE, version=(1, 4))
    _over(old, bound, ResultReason.FEATURE_NOT_SUPPORTED)
    # Another tenant is served; the refusals were audited as refusals are.
    ok(call(core, CREATE, principal=service_principal("other"))[0])
    refused = core.store.run_sync(lambda s: s.execute(select(
        AuditLog.operation, AuditLog.result_status, AuditLog.result_reason, AuditLog.detail)
        .where(AuditLog.tenant == "demo", AuditLog.result_status != "SUCCESS")
        .order_by(AuditLog.seq)).all(), write=False)
    assert [(op, status, reason) for op, status, reason, _ in refused] == [
        ("CREATE", "OPERATION_FAILED", "SERVER_LIMIT_EXCEEDED"),
        ("REGISTER", "OPERATION_FAILED", "SERVER_LIMIT_EXCEEDED"),
        ("CREATE", "OPERATION_FAILED", "FEATURE_NOT_SUPPORTED")]


def test_a_key_pair_with_one_row_left_fails_whole_and_leaves_it(core: CoreHarness) -> None:
    bound = _bound_at(core, 1)
    pair, single = call(core, (Operation.CREATE_KEY_PAIR, key_pair_request()), CREATE,
                        continuation=CONTINUE)
    _over(pair, bound)
    ok(single)  # the pair's first row was rolled back with it: room for this one
    assert _stored(core) == bound


def test_an_l4_revoke_is_served_at_the_bound_and_refused_past_its_headroom(
        core: CoreHarness) -> None:
    from kcm.core.store.quota import revocation_headroom
    from kcm.testing.requests import create_l4

    tokens = [ok(made).unique_identifier for made in call(
        core, *[(Operation.CREATE, create_l4().request_payload)] * 2)]
    assert all(token.startswith("l4.") for token in tokens)
    bound = _bound_at(core, 0)  # an L4 itself stores nothing: Create answers
    ok(call(core, (Operation.REVOKE, revoke_request(tokens[0])))[0])
    assert _stored(core) == bound + 1
    # Past the headroom (the count set there by hand: a thousand revocations otherwise).
    extra = revocation_headroom(bound)
    core.store.run_sync(lambda s: s.execute(update(Tenant).where(Tenant.name == "demo")
                                            .values(stored=bound + extra)))
    [refused] = call(core, (Operation.REVOKE, revoke_request(tokens[1])))
    failed(refused, ResultReason.SERVER_LIMIT_EXCEEDED)
    assert refused.result_message == (MESSAGE.format(bound)
                                      + f" and {extra} more for L4 revocations")
    ok(call(core, (Operation.REVOKE, revoke_request(tokens[0])))[0])  # already revoked


def test_a_re_key_of_a_service_key_by_request_is_refused_but_provisioning_is_not(
        core: CoreHarness) -> None:
    """A tenant administrator's Re-key of its service key stores a new version: refused at
    the bound like any object a request makes. The operator's ``kcm core service rotate``
    and automatic rotation (kcm.core.hierarchy) are not: the key is counted all the same."""
    from kcm.core.hierarchy import provision_service
    from kcm.core.store import repository
    from kcm.kmip.payloads import ReKeyRequest
    from tests.core_support import admin_principal

    l3 = core.store.run_sync(lambda s: repository.find_l3(s, "demo", "app")[0].uid)
    bound = _bound_at(core, 0)
    [rekeyed] = call(core, (Operation.RE_KEY, ReKeyRequest(unique_identifier=l3)),
                     principal=admin_principal())
    _over(rekeyed, bound)
    core.store.run_sync(lambda s: provision_service(s, core.keyring, "demo", "app",
                                                    now=int(time.time())))
    assert _stored(core) == bound + 1
    core.store.max_objects_per_tenant = bound + 2
    ok(call(core, (Operation.RE_KEY, ReKeyRequest(unique_identifier=l3)),
            principal=admin_principal())[0])


def test_at_the_bound_what_stores_nothing_is_served(core: CoreHarness) -> None:
    """docs/operations.md: a tenant at its bound still reads, revokes and destroys its
    objects, revokes its L4 tokens (within the revocation headroom), and may revoke its
    service key as compromised (what stops every L4 under it)."""
    from kcm.core.store import repository
    from kcm.kmip.payloads import DestroyRequest, GetRequest
    from kcm.testing.requests import create_l4
    from tests.core_support import admin_principal

    made = ok(call(core, CREATE)[0]).unique_identifier
    [l4] = call(core, (Operation.CREATE, create_l4().request_payload))
    bound = _bound_at(core, 0)
    got, revoked, destroyed, token = call(
        core, (Operation.GET, GetRequest(unique_identifier=made)),
        (Operation.REVOKE, revoke_request(made)),
        (Operation.DESTROY, DestroyRequest(unique_identifier=made)),
        (Operation.CREATE, create_l4().request_payload), continuation=CONTINUE)
    ok(got), ok(revoked), ok(destroyed), ok(token)
    ok(call(core, (Operation.REVOKE, revoke_request(ok(l4).unique_identifier)))[0])
    assert _stored(core) == bound + 1  # (its tombstone)
    l3 = core.store.run_sync(lambda s: repository.find_l3(s, "demo", "app")[0].uid)
    ok(call(core, (Operation.REVOKE, revoke_request(l3)), principal=admin_principal())[0])
    assert _stored(core) == bound + 1
