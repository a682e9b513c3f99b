"""L4 requests sent straight to kcm-core (ARCHITECTURE §2: every operation works at the core
too, at control-plane speed).

Each operation handler asks here first; a function returns the response payload when the
request is an L4 one and None when it is not (the handler then goes on as before):

* Create with L4 markers, Get of an ``l4.`` identifier, Encrypt/Decrypt with an ``l4.`` or
  ``l3-`` identifier: the L4 engine, over the store (:mod:`kcm.core.l4_keys`), so the core
  answers exactly as a gateway would.
* Revoke/Destroy of an ``l4.`` identifier: a tombstone and an ``l4.tombstone`` event, in the
  request's transaction, so the audit record, the tombstone and the event commit together;
  neither under a destroyed L3 (its tokens are all refused as crypto-erased).

Only an L4 Create sets the ID Placeholder (its new token), as at a gateway
(:data:`kcm.l4.engine.SETS_ID_PLACEHOLDER`); the others leave it as it was (KMIP 1.4 §4,
2.1 §6).

Audit records name the L3 involved and the token's TokenId, never the token itself (it
carries the sealed DEK). A refusal because of who asks (another tenant's token or L3,
answered exactly as a missing one; another service's; any, to an application whose service
is not provisioned) is recorded in the item's audit detail as ``denied``, with the
identifier asked for as ``requested`` (a Create names a service, not a key: none).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from kcm.core import events
from kcm.core.context import OperationContext, about_to_write
from kcm.core.l4_keys import StoreKeySource
from kcm.core.store import repository
from kcm.core.usage import add_uses
from kcm.kmip.enums import RevocationReasonCode
from kcm.kmip.errors import KmipError
from kcm.kmip.payloads import (
    CreateRequest,
    CreateResponse,
    DecryptRequest,
    DecryptResponse,
    DestroyRequest,
    EncryptRequest,
    EncryptResponse,
    GetRequest,
    GetResponse,
    RevokeRequest,
    UniqueIdentifierResponse,
)
from kcm.l4 import token
from kcm.l4.authorize import ServiceKeyUseDenied
from kcm.l4.engine import L4Engine, is_l4_create
from kcm.l4.identifiers import is_l3, is_l4


def create(ctx: OperationContext, request: CreateRequest) -> CreateResponse | None:
    """Create of an L4 (docs/link-protocol.md §3 markers), else None."""
    if not is_l4_create(request.attributes):
        return None
    response = _audited(ctx, _engine(ctx).create, request, requested=None)
    _note_token(ctx, response.unique_identifier)
    ctx.id_placeholder.set(response.unique_identifier)
    return response


def get(ctx: OperationContext, request: GetRequest) -> GetResponse | None:
    """Get of an L4, else None."""
    uid = _resolved(ctx, request.unique_identifier)
    if not is_l4(uid):
        return None
    about_to_write(ctx.session, counting=uid)  # (each use is counted: _engine)
    _note_token(ctx, uid)
    return _audited(ctx, _engine(ctx).get, _with_uid(request, uid), requested=uid)


def encrypt(ctx: OperationContext, request: EncryptRequest) -> EncryptResponse | None:
    """Encrypt with an L4 (a record) or an L3 (a DEK), else None."""
    return _with_service_key(ctx, request, L4Engine.encrypt)


def decrypt(ctx: OperationContext, request: DecryptRequest) -> DecryptResponse | None:
    """Decrypt with an L4 or an L3, else None."""
    return _with_service_key(ctx, request, L4Engine.decrypt)


def _with_service_key(ctx: OperationContext, request: Any, operation: Callable[..., Any]
                      ) -> Any:
    """``operation`` of the engine when ``request`` names an L4 or an L3, else None."""
    uid = _resolved(ctx, request.unique_identifier)
    if not (is_l4(uid) or is_l3(uid)):
        return None
    about_to_write(ctx.session, counting=uid)  # (each use is counted: _engine)
    _note_token(ctx, uid)
    return _audited(ctx, lambda principal, version, payload: operation(
        _engine(ctx), principal, version, payload), _with_uid(request, uid), requested=uid)


def revoke(ctx: OperationContext, request: RevokeRequest) -> UniqueIdentifierResponse | None:
    """Revoke of an L4: tombstone it, else None."""
    uid = _resolved(ctx, request.unique_identifier)
    if not is_l4(uid):
        return None
    code = request.revocation_reason.code
    try:
        reason = f"revoked: {RevocationReasonCode(code).name}"
    except ValueError:
        reason = f"revoked: {int(code)}"
    return _tombstone(ctx, uid, reason)


def destroy(ctx: OperationContext, request: DestroyRequest) -> UniqueIdentifierResponse | None:
    """Destroy of an L4: tombstone it, else None."""
    uid = _resolved(ctx, request.unique_identifier)
    if not is_l4(uid):
        return None
    return _tombstone(ctx, uid, "destroyed")


def _tombstone(ctx: OperationContext, uid: str, reason: str) -> UniqueIdentifierResponse:
    _note_token(ctx, uid)
    target = _audited(ctx, _engine(ctx).tombstone, uid, requested=uid)
    if target.l3_destroyed:
        # Refused as crypto-erased already, revoked or not: a tombstone would say nothing
        # (those made before the Destroy are deleted: kcm.core.destroyed_retention).
        ctx.audit_detail["l4_tombstone"] = "not needed: its service key is destroyed"
        return UniqueIdentifierResponse(unique_identifier=uid)
    added = repository.add_tombstone(ctx.session, token_id=target.token_id,
                                     tenant=target.tenant, l3_uid=target.l3_uid, reason=reason,
                                     clock=lambda: ctx.now)
    if added:
        events.l4_tombstone(ctx, target.tenant, target.token_id, target.l3_uid)
    ctx.audit_detail["l4_tombstone"] = "recorded" if added else "already recorded"
    return UniqueIdentifierResponse(unique_identifier=uid)


def _audited(ctx: OperationContext, call: Callable[..., Any], argument: Any, *,
             requested: str | None) -> Any:
    """``call(principal, version, argument)``; a refusal of who asks is noted for the audit
    record: why, and the identifier the item asked for (``requested``; None for a Create,
    which names a service, not a key). The client is answered as if the key were missing."""
    try:
        return call(ctx.principal, ctx.version, argument)
    except ServiceKeyUseDenied as e:
        if requested is None:
            ctx.audit_detail["denied"] = e.why
        else:
            ctx.refused(requested, e.why)
        raise


def _engine(ctx: OperationContext) -> L4Engine:
    # The core's own L4 work counts towards a rotation policy's usage cap, as a gateway's
    # reports do (kcm.core.usage), in the request's transaction.
    about_to_write(ctx.session)
    return L4Engine(StoreKeySource(ctx), ctx.random_bytes,  # type: ignore[arg-type]
                    lambda uid: add_uses(ctx.session, {uid: 1}, now=ctx.now))


def _resolved(ctx: OperationContext, unique_identifier: Any) -> str | None:
    """The identifier the item means, or None when it has none (the handler's own
    resolution then reports that)."""
    try:
        return ctx.id_placeholder.resolve(unique_identifier)
    except KmipError:
        return None


def _with_uid(request: Any, uid: str) -> Any:
    if request.unique_identifier == uid:
        return request
    return dataclasses.replace(request, unique_identifier=uid)


def _note_token(ctx: OperationContext, uid: str) -> None:
    """Audit an L4 by its TokenId (the token itself carries the sealed DEK)."""
    if is_l4(uid):
        try:
            ctx.audit_detail["l4_token_id"] = token.token_id(uid)
        except token.TokenError:
            ctx.audit_detail["l4_token_id"] = "malformed"
