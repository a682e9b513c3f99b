"""What the core sends a scoped gateway on its link (docs/link-protocol.md, "Scoped
gateways"): a gateway's credential, stolen, must not tell its holder about the tenants it
may not act for.

* **Events.** A gateway scoped to a list of tenants is sent the events of its tenants as they
  are, and every other event that names a tenant as a ``redacted`` event: its sequence
  number and a digest of the event (no tenant; its UniqueIdentifier a keyed digest of the
  event's frame), so that the stream stays gapless and the gateway's checks by sequence and
  digest hold: a gateway that resumes under the same scope compares the same bytes (at any
  core: the key is derived from L1, which they share), and another event under the same
  number (a restored database's) differs. The digest's key is never sent, so it tells
  nothing of the event but whether it is the one sent before.
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
import hmac
import json
from collections.abc import Callable
from functools import lru_cache

from kcm.core.event_fanout import EncodedEvent
from kcm.core.gateway_scopes import GatewayScope
from kcm.identity import Principal, parse_principal_path
from kcm.kmip.errors import KmipError
from kcm.link.events import EventKind
from kcm.link.frames import Frame, FrameType, encode_frame
from kcm.link.views import UNSCOPED, scope_digest

__all__ = ["GatewayViews", "event_digest", "redacted_event", "scoped_document",
           "view_digest"]

#: Entries each cache keeps at most (scopes are few; emptied when full).
_MAX_CACHED = 256
#: Redacted frames kept, by the event's frame (a batch of the fan-out is sent to every
#: scoped link in turn; emptied when full).
_MAX_REDACTED = 4096
#: What the key of the redacted events' digests is derived from the cores' audit key with.
_REDACTION_LABEL = b"kcm link: redacted event digest"
#: Bytes of a redacted event's digest (sent as 32 hex digits).
_DIGEST_SIZE = 16


def redacted_event(sequence: int, digest: bytes | None = None) -> bytes:
    """The EVENT frame a gateway is sent for event ``sequence`` of a tenant outside its
    scope: the number, the ``redacted`` kind and ``digest`` (:func:`event_digest`; None:
    none, a core without L1), nothing else."""
    payload = {} if digest is None else {"unique_identifier": digest.hex()}
    return encode_frame(Frame(FrameType.EVENT, sequence=sequence, kind=EventKind.REDACTED,
                              payload=payload))


def event_digest(key: bytes, wire: bytes) -> bytes:
    """The digest under ``key`` of an event's frame ``wire`` (its number among the rest)."""
    return hmac.new(key, wire, hashlib.sha256).digest()[:_DIGEST_SIZE]


def scoped_document(document: str, scope: GatewayScope) -> str:
    """The policy document ``document`` (:meth:`kcm.identity.SubjectMap.document`) with only
    the subjects mapped to a principal ``scope`` allows, in the same canonical form.

    The document is read once (:func:`_subjects_by_tenant`, kept for the last few): each
    scope then looks at its own tenants' subjects only, so that a policy of thousands of
    subjects costs each of many scopes little, on the reactor."""
    by_tenant = _subjects_by_tenant(document)
    tenants = by_tenant if scope.tenants is None else scope.tenants
    kept = {subject: path for tenant in tenants
            for subject, path, principal in by_tenant.get(tenant, ())
            if scope.allows(principal)}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


#: (subject, principal path, principal) of each subject mapped to a tenant's principal.
_Subjects = tuple[tuple[str, str, Principal], ...]


@lru_cache(maxsize=4)
def _subjects_by_tenant(document: str) -> dict[str, _Subjects]:
    """The subjects of ``document`` mapped to a tenant's principal, by tenant (those of no
    tenant, an operator's or a gateway's, no scope allows)."""
    try:
        subjects = json.loads(document)
    except ValueError:
        subjects = None
    if not isinstance(subjects, dict):
        return {}  # (never: the core writes the documents it sends)
    by_tenant: dict[str, list[tuple[str, str, Principal]]] = {}
    for subject, path in subjects.items():
        principal = parse_principal_path(path, trust_domain="check", subject="-") \
            if isinstance(path, str) else None
        if principal is not None and principal.tenant is not None:
            by_tenant.setdefault(principal.tenant, []).append((subject, path, principal))
    return {tenant: tuple(kept) for tenant, kept in by_tenant.items()}


def view_digest(scope: GatewayScope | None) -> bytes:
    """16 bytes that differ between two scopes (and from no scope): what a gateway compares
    across its links (VIEW; :mod:`kcm.link.views`)."""
    if scope is None:
        return UNSCOPED
    return scope_digest(scope.tenants, scope.admins)


class GatewayViews:
    """The frames and documents of each scope, made once and kept (a link's factory holds
    one for all its links)."""

    def __init__(self, secret: Callable[[], bytes] | None = None) -> None:
        """``secret``: the key the redacted events' digest key is derived from (kcm-core:
        its keyring's audit key, from L1, the same at every core; None, or not loaded yet:
        redacted events carry no digest)."""
        self._secret = secret
        self._redaction_key: bytes | None = None
        self._documents: dict[tuple[GatewayScope, str], str] = {}
        #: By (scope, event's frame): the frame, not its number alone, since a database
        #: restored under the core puts another event under a number already sent.
        self._policy_events: dict[tuple[GatewayScope, bytes], bytes] = {}
        self._redacted: dict[bytes, bytes] = {}

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
        wire = self._redacted.get(event.wire)
        if wire is None:
            if len(self._redacted) >= _MAX_REDACTED:
                self._redacted.clear()
            key = self._key()
            wire = self._redacted[event.wire] = redacted_event(
                event.seq, None if key is None else event_digest(key, event.wire))
        return wire

    def _key(self) -> bytes | None:
        """The key of the redacted events' digests (None: no secret yet)."""
        if self._redaction_key is None and self._secret is not None:
            try:
                secret = self._secret()
            except KmipError:  # L1 not loaded (a core starting): no digest yet
                return None
            self._redaction_key = hmac.new(secret, _REDACTION_LABEL, hashlib.sha256).digest()
        return self._redaction_key

    def _policy_event(self, event: EncodedEvent, scope: GatewayScope) -> bytes:
        key = (scope, event.wire)
        wire = self._policy_events.get(key)
        if wire is None:
            if len(self._policy_events) >= _MAX_CACHED:
                self._policy_events.clear()
            wire = self._policy_events[key] = encode_frame(Frame(
                FrameType.EVENT, sequence=event.seq, kind=EventKind.POLICY,
                payload={"policy": self.document(event.policy or "", scope)}))
        return wire
