"""What the core sends a scoped gateway on its link (docs/link-protocol.md, "Scoped
gateways"): a gateway's credential, stolen, must not tell its holder about the tenants it
may not act for.

* **Events.** A gateway scoped to a list of tenants is sent the events of its tenants as they
  are, and every other event that names a tenant as a ``redacted`` event: its sequence
  number alone (no tenant, an empty payload), so that the stream stays gapless and the
  gateway's checks by sequence and digest hold. The form depends on the number only, so a
  gateway that resumes under the same scope compares the same bytes.
* **Policy.** Every scoped gateway (``tenants = "*"`` too) is sent a policy document of the
  subjects it may assert (:meth:`GatewayScope.allows`): its tenants' applications, and their
  administrators with ``admins = true``; never an operator, never another tenant's.
* **View digest.** A short digest of the scope, sent to a gateway of link version 6 (VIEW):
  a gateway that finds it changed since its last link drops the keys it holds, which were
  fetched, and kept current by events, under another scope.

An unscoped gateway is sent what every gateway was sent before scopes: each event's frame as
the fan-out encoded it once for all, and the whole policy document. Everything here is
computed once per scope and change, never per event and link: the filtered document per
(scope, document), a policy event's frame per (scope, event), a redacted frame per event.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache

from kcm.core.event_fanout import EncodedEvent
from kcm.core.gateway_scopes import GatewayScope
from kcm.identity import parse_principal_path
from kcm.link.events import EventKind
from kcm.link.frames import Frame, FrameType, encode_frame

__all__ = ["GatewayViews", "redacted_event", "scoped_document", "view_digest"]

#: Entries each cache keeps at most (scopes are few; emptied when full).
_MAX_CACHED = 256


@lru_cache(maxsize=4096)
def redacted_event(sequence: int) -> bytes:
    """The EVENT frame a gateway is sent for event ``sequence`` of a tenant outside its
    scope: the number and the ``redacted`` kind, nothing else."""
    return encode_frame(Frame(FrameType.EVENT, sequence=sequence, kind=EventKind.REDACTED,
                              payload={}))


def scoped_document(document: str, scope: GatewayScope) -> str:
    """The policy document ``document`` (:meth:`kcm.identity.SubjectMap.document`) with only
    the subjects mapped to a principal ``scope`` allows, in the same canonical form."""
    try:
        subjects = json.loads(document)
    except ValueError:
        subjects = None
    if not isinstance(subjects, dict):
        return "{}"  # (never: the core writes the documents it sends)
    kept = {subject: path for subject, path in subjects.items()
            if isinstance(path, str) and _allowed(path, scope)}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _allowed(path: str, scope: GatewayScope) -> bool:
    principal = parse_principal_path(path, trust_domain="check", subject="-")
    return principal is not None and scope.allows(principal)


def view_digest(scope: GatewayScope | None) -> bytes:
    """16 bytes that differ between two scopes (and from no scope): what a gateway compares
    across its links (VIEW). The tenants' names are not sent, only their digest."""
    if scope is None:
        text = "unscoped"
    else:
        tenants = "*" if scope.tenants is None else ",".join(sorted(scope.tenants))
        text = f"tenants={tenants};admins={int(scope.admins)}"
    return hashlib.sha256(text.encode()).digest()[:16]


class GatewayViews:
    """The frames and documents of each scope, made once and kept (a link's factory holds
    one for all its links)."""

    def __init__(self) -> None:
        self._documents: dict[tuple[GatewayScope, str], str] = {}
        self._policy_events: dict[tuple[GatewayScope, int], bytes] = {}

    def document(self, document: str, scope: GatewayScope | None) -> str:
        """The policy document a gateway of ``scope`` is sent (None: unscoped, the whole)."""
        if scope is None:
            return document
        key = (scope, document)
        scoped = self._documents.get(key)
        if scoped is None:
            if len(self._documents) >= _MAX_CACHED:
                self._documents.clear()
            scoped = self._documents[key] = scoped_document(document, scope)
        return scoped

    def event(self, event: EncodedEvent, scope: GatewayScope) -> bytes:
        """The frame a gateway of ``scope`` (not None: unscoped links send ``event.wire``)
        is sent for ``event``."""
        if event.policy is not None:
            return self._policy_event(event, scope)
        tenant, tenants = event.tenant, scope.tenants
        if tenant is None or tenants is None or tenant in tenants:
            return event.wire
        return redacted_event(event.seq)

    def _policy_event(self, event: EncodedEvent, scope: GatewayScope) -> bytes:
        key = (scope, event.seq)
        wire = self._policy_events.get(key)
        if wire is None:
            if len(self._policy_events) >= _MAX_CACHED:
                self._policy_events.clear()
            wire = self._policy_events[key] = encode_frame(Frame(
                FrameType.EVENT, sequence=event.seq, kind=EventKind.POLICY,
                payload={"policy": self.document(event.policy or "", scope)}))
        return wire
