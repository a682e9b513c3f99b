"""Events for gateways, written to the outbox in the transaction of the change that causes
them (the transactional outbox of ARCHITECTURE §4; kinds and payloads: docs/link-protocol.md).

The payload is stored as the TTLV encoding of the EventPayload Structure the EVENT frame
carries, so the core's link listener forwards it without knowing its fields.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from kcm.core.store import repository
from kcm.link.events import EventKind
from kcm.link.frames import Payload, encode_payload


def emit(ctx: Any, kind: EventKind, tenant: str | None, payload: Payload) -> int:
    """Queue event ``kind`` in the current transaction; return its sequence number.

    ``ctx`` is an :class:`~kcm.core.context.OperationContext` or a bare SQLAlchemy
    ``Session`` (provisioning from the CLI has no operation context). The event commits, or
    not, with everything else the transaction does.
    """
    session = ctx if isinstance(ctx, Session) else ctx.session
    return repository.append_outbox(session, kind, tenant, encode_payload(payload))


def l3_rotated(ctx: Any, tenant: str, uid: str, service: str, version: int) -> int:
    """A new version ``version`` (object ``uid``) of ``tenant``/``service``'s L3 exists."""
    return emit(ctx, EventKind.L3_ROTATED, tenant,
                {"unique_identifier": uid, "service": service, "key_version": version})


def l3_state(ctx: Any, tenant: str, uid: str, service: str, state: int) -> int:
    """L3 object ``uid`` of ``tenant``/``service`` is now in KMIP state ``state``."""
    return emit(ctx, EventKind.L3_STATE, tenant,
                {"unique_identifier": uid, "service": service, "state": int(state)})


def l4_tombstone(ctx: Any, tenant: str, token_id: str, l3_uid: str) -> int:
    """L4 token ``token_id`` (under L3 object ``l3_uid``) of ``tenant`` is revoked or destroyed."""
    return emit(ctx, EventKind.L4_TOMBSTONE, tenant,
                {"token_id": token_id, "unique_identifier": l3_uid})


def policy(ctx: Any, document: str) -> int:
    """The core's policy is now ``document`` (:meth:`kcm.identity.SubjectMap.document`)."""
    return emit(ctx, EventKind.POLICY, None, {"policy": document})
