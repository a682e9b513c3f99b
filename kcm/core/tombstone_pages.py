"""A version's L4 tombstones in pages, for a gateway (FETCH_TOMBSTONES, link version 9;
docs/link-protocol.md §2, "Tombstones in pages"). Blocking: runs on a store worker thread.

A version whose tombstones do not fit in a SERVICE_KEYS (:data:`MAX_SENT_TOMBSTONES`) is sent
without them; a gateway of version 9 then asks for them here, a page at a time: the TokenIds
after a cursor (the last one of the page before), in TokenId order, each page read in its own
transaction. Who asks is decided exactly as for a fetch of that version by uid
(:func:`kcm.core.l4_keys.l3_for`), before anything about the version is looked at, and a
refusal is the fetch's (the same reason and message) and is audited as the fetch's would
be. A page served hands over no key material and writes no audit record.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from kcm.core.audit import AuditEvent, append_audit
from kcm.core.context import Caller
from kcm.core.keyring import Keyring
from kcm.core.l4_keys import l3_for, service_key_of
from kcm.core.service_keys import AUDIT_OPERATION
from kcm.core.store.schema import (
    STATE_DESTROYED,
    STATE_DESTROYED_COMPROMISED,
    L4Tombstone,
    ManagedObject,
)
from kcm.kernel.correlation import new_correlation_id
from kcm.kernel.missing import identifier_label
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError
from kcm.l4.authorize import ServiceKeyUseDenied
from kcm.l4.service_key import DESTROYED_STATES
from kcm.link.frames import MAX_SENT_TOMBSTONES


class VersionDestroyed(KmipError):
    """The version is destroyed: it has no tombstones to send (every token under it is
    Object Destroyed). A refusal, so that a gateway that reads it before the version's
    ``l3.state`` event leaves the version to the core rather than serve it whole with
    tombstones the state sweeper may have deleted meanwhile; not audited (nobody is
    refused anything)."""

    def __init__(self, uid: str) -> None:
        super().__init__(ResultReason.OBJECT_DESTROYED,
                         f"service key {identifier_label(uid)} is destroyed")


#: ``managed_objects.state`` of a destroyed version.
STORED_DESTROYED = (STATE_DESTROYED, STATE_DESTROYED_COMPROMISED)


@dataclass(frozen=True, slots=True)
class TombstonePage:
    """One page: TokenIds in increasing order, and whether more follow."""

    token_ids: list[str]
    more: bool


def tombstone_page(session: Session, keyring: Keyring, caller: Caller, uid: str,
                   after: str | None, *, now: int,
                   size: int = MAX_SENT_TOMBSTONES) -> TombstonePage | KmipError:
    """The tombstones of version ``uid`` after ``after`` (None: from the first), at most
    ``size`` of them, in TokenId order; a refusal (returned, not raised) when ``caller`` may
    not use the version or there is none, as a fetch of it by uid answers, and
    :class:`VersionDestroyed` for a destroyed one. Read only: no audit record
    (:func:`audit_refused_page` records a refusal)."""
    try:
        row = l3_for(session, caller.principal, uid)
    except KmipError as e:
        return e
    if service_key_of(session, keyring, row, now, with_material=False).state \
            in DESTROYED_STATES:
        return VersionDestroyed(uid)
    query = select(L4Tombstone.token_id).where(L4Tombstone.l3_uid == uid)
    if after is not None:
        query = query.where(L4Tombstone.token_id > after)
    token_ids = list(session.scalars(query.order_by(L4Tombstone.token_id).limit(size + 1)))
    # Its state read again after its tombstones: on PostgreSQL (READ COMMITTED) each
    # statement sees what committed before it, and a destroy, then the state sweeper's
    # delete of its tombstones, may have committed since the look above. The destroy came
    # first: a page missing a swept tombstone sees it here (or the row gone: its tenant
    # removed, which deletes its tombstones with it).
    state = session.scalar(select(ManagedObject.state).where(ManagedObject.uid == uid))
    if state is None or state in STORED_DESTROYED:
        return VersionDestroyed(uid)
    return TombstonePage(token_ids[:size], len(token_ids) > size)


def audit_refused_page(session: Session, caller: Caller, uid: str, error: KmipError, *,
                       now: int) -> None:
    """The audit record of a refused page: the record a refused fetch of ``uid`` writes
    (operation ``FetchServiceKey``, a refusal of who asks with ``denied`` in its detail)."""
    detail: dict[str, object] = {"tombstones": True}
    if isinstance(error, ServiceKeyUseDenied):
        detail["denied"] = error.why
    append_audit(session, AuditEvent(
        principal=caller.principal.id,
        tenant=caller.principal.tenant or None,
        gateway=caller.gateway.id if caller.gateway is not None else None,
        source=caller.source,
        operation=AUDIT_OPERATION,
        object_ids=(uid,),
        result_status="OPERATION_FAILED",
        result_reason=ResultReason(error.reason).name,
        correlation_id=new_correlation_id(),
        detail=detail,
    ), clock=lambda: now)
