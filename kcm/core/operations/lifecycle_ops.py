"""Activate, Revoke and Destroy (KMIP 1.4 §4.19–§4.21, 2.1 §6.1.1, §6.1.46, §6.1.18).

The state rules themselves are :mod:`kcm.kernel.lifecycle`'s; these handlers apply
them to a stored object and record the dates the spec asks for.
"""

from __future__ import annotations

from kcm.core import l4_requests, managed, policy
from kcm.core.context import OperationContext
from kcm.core.store.schema import LEVEL_TENANT_KEY
from kcm.kernel import lifecycle
from kcm.kmip.enums import RevocationReasonCode, State
from kcm.kmip.labels import enum_label
from kcm.kmip.payloads import (
    ActivateRequest,
    DestroyRequest,
    RevokeRequest,
    UniqueIdentifierResponse,
)
from kcm.kmip.tags import Tag
from kcm.ttlv.types import Item


def _load(ctx: OperationContext, unique_identifier: str | Item | None) -> managed.StoredObject:
    uid = ctx.id_placeholder.resolve(unique_identifier)
    obj = managed.load(ctx, uid)
    policy.check_lifecycle_change(ctx.principal, obj.level)
    return obj


def _answer(obj: managed.StoredObject) -> UniqueIdentifierResponse:
    """The object's identifier. The ID Placeholder is left as it was (KMIP 1.4 §4, 2.1 §6:
    only an operation that makes or finds an object sets it), so an item naming another
    object does not redirect the later items that mean the placeholder."""
    return UniqueIdentifierResponse(unique_identifier=obj.uid)


def activate(ctx: OperationContext, request: ActivateRequest) -> UniqueIdentifierResponse:
    obj = _load(ctx, request.unique_identifier)
    obj.set(Tag.STATE, int(lifecycle.activate(obj.state)))
    obj.set(Tag.ACTIVATION_DATE, ctx.now)
    managed.save(ctx, obj)
    return _answer(obj)


def revoke(ctx: OperationContext, request: RevokeRequest) -> UniqueIdentifierResponse:
    lifecycle.check_revocation_reason(request.revocation_reason.code)
    if (l4_answer := l4_requests.revoke(ctx, request)) is not None:
        return l4_answer
    obj = _load(ctx, request.unique_identifier)
    reason = request.revocation_reason
    before = obj.state
    after = lifecycle.revoke(before, reason.code)
    obj.set(Tag.STATE, int(after))
    obj.set(Tag.REVOCATION_REASON, reason)
    if after in (State.COMPROMISED, State.DESTROYED_COMPROMISED):
        obj.set(Tag.COMPROMISE_DATE, ctx.now)
        occurred = request.compromise_occurrence_date
        if occurred is None:
            # "if a value is not provided ... SHOULD be set to the Initial Date for the
            # object" (KMIP 2.1 §6.1.46): the earliest it may have been compromised.
            initial = obj.value(Tag.INITIAL_DATE)
            occurred = ctx.now if initial is None else initial
        obj.set(Tag.COMPROMISE_OCCURRENCE_DATE, occurred)
        # Not kept in the clear for its next use: a compromised key is seldom used again
        # (an L3 never), and a destroyed one's material is gone.
        ctx.keyring.forget_material(obj.tenant, obj.uid)
    elif before == State.ACTIVE:
        obj.set(Tag.DEACTIVATION_DATE, ctx.now)
    managed.save(ctx, obj)
    if obj.level == LEVEL_TENANT_KEY:
        # Not the tenant's current key any more: wrap nothing else under it here (nor at
        # another core once this commits: managed.save counted it).
        ctx.keyring.forget_current(obj.tenant)
    ctx.audit_detail["revocation_reason"] = enum_label(RevocationReasonCode, reason.code)
    return _answer(obj)


def destroy(ctx: OperationContext, request: DestroyRequest) -> UniqueIdentifierResponse:
    if (l4_answer := l4_requests.destroy(ctx, request)) is not None:
        return l4_answer
    obj = _load(ctx, request.unique_identifier)
    state = lifecycle.destroy(obj.state)
    if obj.level == LEVEL_TENANT_KEY:
        # What an L2 still wraps would be lost with it. (An L3 wraps nothing stored: the
        # L4 tokens sealed under it are the clients', and destroying it is how they are
        # crypto-erased.) Imported here: kcm.core.hierarchy, which tenant_rotation uses,
        # is imported while the operations are.
        from kcm.core import tenant_rotation

        tenant_rotation.check_destroy(ctx.session, obj.tenant, obj.uid, _retired_at(obj),
                                      ctx.now)
    obj.set(Tag.STATE, int(state))
    obj.set(Tag.DESTROY_DATE, ctx.now)
    managed.save(ctx, obj)
    managed.destroy_material(ctx, obj)
    if obj.level == LEVEL_TENANT_KEY:
        ctx.keyring.forget_tenant_key(obj.tenant, obj.uid)
    return _answer(obj)


def _retired_at(obj: managed.StoredObject) -> int | None:
    """When a key stopped being Active (its Deactivation or Compromise Date, the earlier
    one that has been reached), or None if it never was."""
    if obj.state == State.PRE_ACTIVE:
        return None
    dates = [int(date) for date in (obj.value(Tag.DEACTIVATION_DATE),
                                    obj.value(Tag.COMPROMISE_DATE)) if date is not None]
    return min(dates) if dates else None

