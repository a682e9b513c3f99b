"""Events for gateways, written to the outbox in the transaction of the change that causes
them (the transactional outbox of ARCHITECTURE §4; kinds and payloads: docs/link-protocol.md).

The payload is stored as the TTLV encoding of the EventPayload Structure the EVENT frame
carries, so the core's link listener forwards it without knowing its fields.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session
from twisted.logger import Logger

from kcm.core.store import repository
from kcm.link.events import EventKind
from kcm.link.frames import FrameError, Payload, decode_frame, encode_payload

if TYPE_CHECKING:
    from kcm.core.event_fanout import EncodedEvent

log = Logger()


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


def tenant_removed(ctx: Any, tenant: str) -> int:
    """``tenant`` is removed with its whole key hierarchy (after the ``l3.state`` event of
    each of its L3s, in the same transaction): every core and gateway forgets it."""
    return emit(ctx, EventKind.TENANT_REMOVED, tenant, {})


#: How a ``tenant.removed`` EVENT frame spells its kind (a Text String, so verbatim in it).
_TENANT_REMOVED_TEXT = EventKind.TENANT_REMOVED.value.encode()


class TenantRemovals:
    """An :class:`kcm.core.event_fanout.EventSubscriber` that has this core forget each
    tenant removed (by whichever process: ``kcm core tenant remove`` runs as another core)
    as soon as the fan-out reads its ``tenant.removed`` event: ``forget(tenant)`` is called
    for each (the store's :class:`kcm.core.store.known.KnownFacts`, the keyring). A write
    transaction never trusts what was known of a removed tenant anyway (the count of
    removals it reads: :func:`kcm.core.store.repository.tenant_removals`); this frees it
    at once, for reads too."""

    def __init__(self, forget: Iterable[Callable[[str], None]]) -> None:
        self._forget = list(forget)

    def deliver(self, events: list[EncodedEvent]) -> None:
        for event in events:
            sequence, frame_bytes = event[0], event[1]
            if _TENANT_REMOVED_TEXT not in frame_bytes:
                continue  # the common case: another kind, not decoded again
            try:
                frame = decode_frame(frame_bytes)
            except FrameError:
                continue  # logged where it was encoded
            if frame.kind != EventKind.TENANT_REMOVED or not frame.tenant:
                continue
            for forget in self._forget:
                forget(frame.tenant)
            log.info("tenant {tenant} was removed (event {seq}): forgot what this core "
                     "kept of it", tenant=frame.tenant, seq=sequence)
