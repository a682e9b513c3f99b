"""Service keys (L3) in the clear for a gateway: FETCH_SERVICE_KEY's work in the store.

The one place the core lets L3 material leave it (ARCHITECTURE §1): only to an authenticated
gateway over the link, on behalf of a caller allowed to use the service
(:func:`kcm.l4.authorize.check_service_key_use`). Every fetch, served or refused, leaves an
audit record naming the caller and the gateway. Blocking: runs on a store worker thread.
"""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from kcm.core.audit import AuditEvent, append_audit
from kcm.core.context import Caller
from kcm.core.keyring import Keyring
from kcm.core.l4_keys import service_key_of
from kcm.core.store import repository
from kcm.core.store.schema import LEVEL_SERVICE_KEY
from kcm.kmip.enums import ResultReason, State
from kcm.kmip.errors import KmipError
from kcm.l4.authorize import check_service_key_use
from kcm.l4.service_key import ServiceKey

AUDIT_OPERATION = "FetchServiceKey"


def fetch_service_keys(session: Session, keyring: Keyring, caller: Caller, tenant: str,
                       service: str, uid: str | None, *,
                       now: int) -> list[ServiceKey] | KmipError:
    """The Active versions of ``tenant``/``service``'s L3, newest first, or the one version
    ``uid`` in whatever state it is in (Destroyed has no material: refused).

    A refusal (Permission Denied, Item Not Found) is returned, not raised, so that its audit
    record commits: this runs in a write transaction, and audits every outcome.
    """
    correlation_id = uuid.uuid4().hex[:16]
    try:
        check_service_key_use(caller.principal, tenant, service)
        keys = (_current(session, keyring, tenant, service, now) if uid is None
                else [_one(session, keyring, tenant, service, uid, now)])
    except KmipError as e:
        _audit(session, caller, tenant, [uid] if uid else [], correlation_id, now, e.reason)
        return e
    _audit(session, caller, tenant, [k.uid for k in keys], correlation_id, now, None)
    return keys


def _current(session: Session, keyring: Keyring, tenant: str, service: str,
             now: int) -> list[ServiceKey]:
    keys = [service_key_of(session, keyring, row, now)
            for row in repository.find_l3(session, tenant, service)
            if row.material is not None]
    active = [key for key in keys if key.state == State.ACTIVE]
    if not active:
        raise KmipError(ResultReason.ITEM_NOT_FOUND,
                        f"service {tenant}/{service} has no active service key")
    return active


def _one(session: Session, keyring: Keyring, tenant: str, service: str, uid: str,
         now: int) -> ServiceKey:
    row = repository.get_object(session, tenant, uid)
    if row is None or row.level != LEVEL_SERVICE_KEY or row.service != service:
        raise KmipError(ResultReason.ITEM_NOT_FOUND,
                        f"no service key {uid!r} of service {tenant}/{service}")
    if row.material is None:
        raise KmipError(ResultReason.ITEM_NOT_FOUND, f"service key {uid!r} was destroyed")
    return service_key_of(session, keyring, row, now)


def _audit(session: Session, caller: Caller, tenant: str, uids: list[str],
           correlation_id: str, now: int, reason: int | None) -> None:
    append_audit(session, AuditEvent(
        principal=caller.principal.id,
        tenant=tenant,
        gateway=caller.gateway.id if caller.gateway is not None else None,
        source=caller.source,
        operation=AUDIT_OPERATION,
        object_ids=tuple(uids),
        result_status="SUCCESS" if reason is None else "OPERATION_FAILED",
        result_reason=None if reason is None else ResultReason(reason).name,
        correlation_id=correlation_id,
    ), clock=lambda: now)
