"""The kinds of event the core sends its gateways (docs/link-protocol.md §2, event kinds).

One enumeration for both planes: the core writes these kinds to its outbox and into EVENT
frames, the gateway's cache dispatches on them. Each value is the wire string itself (an
EVENT frame's EventKind field and the outbox row's ``kind`` column), so comparing a decoded
frame's ``kind`` with a member works and nothing on the wire or in the database changes.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["EventKind"]


class EventKind(StrEnum):
    """What changed at the core; the value is the EventKind text on the wire."""

    #: A new L3 version exists (service added, Re-key of an L3).
    L3_ROTATED = "l3.rotated"
    #: An L3's stored state changed (Activate, Revoke, Destroy, dates).
    L3_STATE = "l3.state"
    #: An L4 token was revoked or destroyed: every gateway refuses it from then on.
    L4_TOMBSTONE = "l4.tombstone"
    #: The core's policy (subject map) changed; the payload carries the new document.
    POLICY = "policy"
    #: A tenant was removed with its whole key hierarchy (``kcm core tenant remove``), after
    #: the ``l3.state`` (Destroyed) of each of its L3s: what is kept of the tenant goes.
    TENANT_REMOVED = "tenant.removed"
    #: An event of a tenant outside the gateway's scope (link version 6): only its number
    #: and a keyed digest of it are sent (no tenant), so that the stream stays gapless and
    #: a restore is noticed across it; the gateway applies nothing for it
    #: (docs/link-protocol.md, "Scoped gateways").
    REDACTED = "redacted"
