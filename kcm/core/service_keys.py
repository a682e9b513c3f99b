"""Service keys (L3) in the clear for a gateway: FETCH_SERVICE_KEY's work in the store.

The one place the core lets L3 material leave it (ARCHITECTURE §1): only to an authenticated
gateway over the link, on behalf of a caller allowed to use the service
(:func:`kcm.l4.authorize.check_service_key_use`). Every fetch, served or refused, leaves an
audit record naming the caller and the gateway, save a gateway's refresh of what it holds
that finds nothing changed (link version 8, :func:`unchanged_since`): it hands over no key
material, and is answered from a read. Blocking: runs on a store worker thread.

Refusals carry the KMIP 2.x reasons and the messages the core's own L4 engine would give
for the same key (:class:`kcm.core.l4_keys.StoreKeySource`), so that the gateway, which hands
them to the same engine and lets it translate them for 1.x requests, answers exactly as the
core does.
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from kcm.core import policy
from kcm.core.audit import AuditEvent, append_audit
from kcm.core.context import Caller
from kcm.core.keyring import Keyring
from kcm.core.l4_keys import l3_for, material_of, service_key_of
from kcm.core.store import repository
from kcm.core.store.schema import L4Tombstone
from kcm.kernel.correlation import new_correlation_id
from kcm.kernel.missing import identifier_label
from kcm.kmip.enums import ResultReason, State
from kcm.kmip.errors import KmipError
from kcm.l4.authorize import ServiceKeyUseDenied, check_service_key_use, no_service_key
from kcm.l4.service_key import DESTROYED_STATES, WITHOUT_MATERIAL_STATES, ServiceKey
from kcm.link.frames import MAX_SENT_TOMBSTONES
from kcm.link.keys_digest import keys_digest

AUDIT_OPERATION = "FetchServiceKey"


def fetch_service_keys(session: Session, keyring: Keyring, caller: Caller, tenant: str,
                       service: str, uid: str | None, *,
                       now: int) -> list[ServiceKey] | KmipError:
    """Without ``uid``: the Active versions of ``tenant``/``service``'s L3, newest first.
    With ``uid``: that version, of whichever tenant and service (``tenant`` and ``service``
    are then ignored), in whatever state it is in now; a Compromised or Destroyed one comes
    without its material (the gateway drops it and answers by its state, as the core's
    engine does).

    Each version comes with its tombstones (:attr:`ServiceKey.tombstones`): the TokenIds of
    the L4s revoked or destroyed under it, all of them, or None for a version whose do not
    all fit in the :data:`MAX_SENT_TOMBSTONES` of the answer (newest version first) and for
    a destroyed one (every token under it is Object Destroyed). Read in this transaction,
    after the gateway's WELCOME: with the events after it, the gateway then knows every
    tombstone of the version (docs/link-protocol.md §2).

    Who asks is decided first (:func:`kcm.core.l4_keys.l3_for`): another tenant's key is
    refused exactly as a missing one, as a :class:`ServiceKeyUseDenied` naming the key's
    tenant and service, which the link passes on so that the gateway logs the attempt.

    A refusal (Object Not Found, Permission Denied, Wrong Key Lifecycle State) is returned,
    not raised, so that its audit record commits: this runs in a write transaction, and
    audits every outcome (a refusal of who asks with ``denied`` in its detail).
    """
    correlation_id = new_correlation_id()
    # The caller's own tenant names the record, whether the key was asked by uid or by its
    # service's name: a refused attempt on another tenant's key is that caller's doing.
    audited = caller.principal.tenant or tenant
    answer = service_keys_answer(session, keyring, caller, tenant, service, uid, now=now)
    if isinstance(answer, KmipError):
        detail = {"denied": answer.why} if isinstance(answer, ServiceKeyUseDenied) else None
        _audit(session, caller, audited, [uid] if uid else [], correlation_id, now,
               answer.reason, detail)
        return answer
    _audit(session, caller, audited, [k.uid for k in answer], correlation_id, now, None)
    return answer


def service_keys_answer(session: Session, keyring: Keyring, caller: Caller, tenant: str,
                        service: str, uid: str | None, *,
                        now: int) -> list[ServiceKey] | KmipError:
    """What :func:`fetch_service_keys` answers, read only: no audit record (the caller
    audits). Who asks is decided first, exactly as there."""
    try:
        keys = (_current(session, keyring, caller, tenant, service, now) if uid is None
                else [_one(session, keyring, caller, uid, now)])
    except KmipError as e:
        return e
    return _with_tombstones(session, keys)


def unchanged_since(session: Session, keyring: Keyring, caller: Caller, tenant: str,
                    service: str, uid: str | None, held: bytes, *, now: int) -> bool:
    """Whether the answer :func:`fetch_service_keys` would give (to a gateway of link version
    5 or later) is exactly what ``held`` digests (:func:`kcm.link.keys_digest.keys_digest`):
    a refresh that delivers nothing, answered "unchanged" from a read transaction, with no
    audit record (it hands over no key material). False for anything else, a refusal
    included, which the caller then fetches in full (a write, audited as ever). The answer
    is the one sent, within :data:`MAX_SENT_TOMBSTONES` (a version whose tombstones do not
    fit is taken without them, as the gateway digests it: those come as events and, at link
    version 9, in pages), so the judgement reads at most that many tombstones.

    Never on a PostgreSQL standby (``pg_is_in_recovery()``: a core pointed at one, or a
    demoted primary that no longer replicates): what it reads may be behind the primary,
    so the refresh goes to the full fetch, whose write fails there, and the gateway stops
    using the key at ``max_stale`` as it did before conditional fetches."""
    if session.get_bind().dialect.name == "postgresql" and session.execute(
            _IN_RECOVERY).scalar():
        return False
    answer = service_keys_answer(session, keyring, caller, tenant, service, uid, now=now)
    return not isinstance(answer, KmipError) and keys_digest(answer) == held


#: Whether a PostgreSQL server is a standby (it replays a primary's log).
_IN_RECOVERY = text("SELECT pg_is_in_recovery()")


def without_tombstones(answer: list[ServiceKey] | KmipError) -> list[ServiceKey] | KmipError:
    """``answer`` for a gateway of link version 4 or earlier: its versions without their
    tombstones, which such a gateway cannot read (docs/link-protocol.md §2, "Versions")."""
    if isinstance(answer, KmipError):
        return answer
    return [replace(key, tombstones=None) for key in answer]


def _with_tombstones(session: Session, keys: list[ServiceKey]) -> list[ServiceKey]:
    """``keys`` with their tombstones (see :func:`fetch_service_keys`)."""
    room = MAX_SENT_TOMBSTONES
    answered = []
    for key in keys:
        if key.state in DESTROYED_STATES:
            answered.append(replace(key, tombstones=None))
            continue
        # No ORDER BY: any room + 1 of them tell whether they all fit, and an ordering
        # would read every one of a version's tombstones first (the frame sorts them).
        token_ids = session.scalars(
            select(L4Tombstone.token_id).where(L4Tombstone.l3_uid == key.uid)
            .limit(room + 1)).all()
        if len(token_ids) > room:
            answered.append(replace(key, tombstones=None))
            continue
        room -= len(token_ids)
        answered.append(replace(key, tombstones=frozenset(token_ids)))
    return answered


def _current(session: Session, keyring: Keyring, caller: Caller, tenant: str, service: str,
             now: int) -> list[ServiceKey]:
    check_service_key_use(caller.principal, tenant, service,
                          known=policy.is_provisioned(session, caller.principal))
    if "\x00" in tenant or "\x00" in service:
        # No service has one; PostgreSQL's text could not even be asked for it.
        raise no_service_key(tenant, service)
    # Only the versions that may be Active are read, and only the Active ones unwrapped:
    # the older versions a service keeps (deactivated, decrypt-only) cost nothing here.
    active = [(bare, row) for row in repository.find_l3_activatable(session, tenant, service)
              if row.material is not None
              and (bare := service_key_of(session, keyring, row, now,
                                          with_material=False)).state == State.ACTIVE]
    if not active:
        if not repository.newest_l3_version(session, tenant, service):
            raise no_service_key(tenant, service)
        raise KmipError(ResultReason.WRONG_KEY_LIFECYCLE_STATE,
                        f"service {tenant}/{identifier_label(service)} has no Active "
                        "service key")
    return [replace(bare, key=material_of(session, keyring, row).key_block.key_bytes or b"")
            for bare, row in active]


def _one(session: Session, keyring: Keyring, caller: Caller, uid: str,
         now: int) -> ServiceKey:
    row = l3_for(session, caller.principal, uid)
    bare = service_key_of(session, keyring, row, now, with_material=False)
    if bare.state in WITHOUT_MATERIAL_STATES:
        return bare  # the gateway drops it; its state is all it needs to answer
    return service_key_of(session, keyring, row, now)


def _audit(session: Session, caller: Caller, tenant: str | None, uids: list[str],
           correlation_id: str, now: int, reason: int | None,
           detail: dict[str, object] | None = None) -> None:
    append_audit(session, AuditEvent(
        principal=caller.principal.id,
        tenant=tenant or None,
        gateway=caller.gateway.id if caller.gateway is not None else None,
        source=caller.source,
        operation=AUDIT_OPERATION,
        object_ids=tuple(uids),
        result_status="SUCCESS" if reason is None else "OPERATION_FAILED",
        result_reason=None if reason is None else ResultReason(reason).name,
        correlation_id=correlation_id,
        detail=detail,
    ), clock=lambda: now)
