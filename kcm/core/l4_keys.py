"""The L4 engine's key source inside kcm-core: service keys (L3) and tombstones read from
the store, in the transaction of the request being executed (no cache: control-plane speed).

Who asks is decided as soon as the key's owner is known and before anything else is done
with it (its material unwrapped, its state said, the uid named in the audit record):
another tenant's L3 costs one look-up and answers exactly as an unknown one
(:mod:`kcm.l4.authorize`).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from kcm.core import policy
from kcm.core.context import OperationContext
from kcm.core.keyring import Keyring
from kcm.core.managed import decode_material
from kcm.core.store import repository
from kcm.core.store.schema import ManagedObject
from kcm.identity import Principal
from kcm.kernel import lifecycle
from kcm.kernel.missing import identifier_label, object_not_found
from kcm.kmip.enums import ResultReason, State
from kcm.kmip.errors import KmipError
from kcm.kmip.objects import SymmetricKey
from kcm.l4.authorize import check_service_key_use, no_service_key
from kcm.l4.service_key import ServiceKey


class StoreKeySource:
    """:class:`kcm.l4.engine.KeySource` over the store, for one batch item.

    Refusals use the KMIP 2.x reasons (the engine translates them for 1.x requests). Every
    L3 it hands out is recorded as touched, for the item's audit record.
    """

    __slots__ = ("_ctx",)

    def __init__(self, ctx: OperationContext) -> None:
        self._ctx = ctx

    def current_service_key(self, tenant: str, service: str) -> ServiceKey:
        ctx = self._ctx
        # An application whose service is not provisioned has no key to find: refused with
        # the very answer a missing one gets, and why for the audit record.
        check_service_key_use(ctx.principal, tenant, service,
                              known=policy.is_provisioned(ctx.session, ctx.principal))
        return self._loaded(current_l3(ctx.session, tenant, service, ctx.now))

    def service_key(self, uid: str) -> ServiceKey:
        ctx = self._ctx
        row = l3_for(ctx.session, ctx.principal, uid)
        return self._loaded(row)

    def is_tombstoned(self, token_id: str) -> bool:
        return repository.is_tombstoned(self._ctx.session, token_id)

    def _loaded(self, row: ManagedObject) -> ServiceKey:
        self._ctx.touched(row.uid)
        return service_key_of(self._ctx.session, self._ctx.keyring, row, self._ctx.now)


def l3_for(session: Session, principal: Principal, uid: str) -> ManagedObject:
    """The stored L3 ``uid`` if ``principal`` may use it: Object Not Found when there is none,
    and the same answer (a :class:`ServiceKeyUseDenied`, for the audit) when it is another
    tenant's, or the caller names a service its tenant has not provisioned; Permission Denied
    for another service's of the caller's tenant. Nothing about the key (its state, its
    material) is looked at before that is decided."""
    # No L3 has a NUL in its identifier, and PostgreSQL's text could not even be asked for
    # one (a gateway's fetch by a client's identifier: General Failure, with a traceback).
    row = repository.get_l3(session, uid) if "\x00" not in uid else None
    if row is None:
        raise object_not_found(uid)
    check_service_key_use(principal, row.tenant, row.service or "", uid=uid,
                          known=policy.is_provisioned(session, principal))
    return row


def current_l3(session: Session, tenant: str, service: str, now: int) -> ManagedObject:
    """The newest Active version of ``tenant``/``service``'s L3 (the caller was checked)."""
    for row in repository.find_l3_activatable(session, tenant, service):
        if row.material is not None and _state_now(row, now) == State.ACTIVE:
            return row
    if not repository.newest_l3_version(session, tenant, service):
        raise no_service_key(tenant, service)
    raise KmipError(ResultReason.WRONG_KEY_LIFECYCLE_STATE,
                    f"service {tenant}/{identifier_label(service)} has no Active service key")


def service_key_of(session: Session, keyring: Keyring, row: ManagedObject, now: int, *,
                   with_material: bool = True) -> ServiceKey:
    """The stored L3 ``row`` as a :class:`ServiceKey`, in the state it is in at ``now``;
    a destroyed one (or any, without ``with_material``) has no key bytes."""
    keyring.check_row(row)  # (its state and dates are the row's: checked at each use)
    key = b""
    if row.material is not None and with_material:
        stored = material_of(session, keyring, row)
        key = stored.key_block.key_bytes or b""
    return ServiceKey(uid=row.uid, tenant=row.tenant, service=row.service or "",
                      version=row.key_version or 0, state=int(_state_now(row, now)), key=key)


def material_of(session: Session, keyring: Keyring, row: ManagedObject) -> SymmetricKey:
    """An L3's Symmetric Key in the clear (General Failure if the store holds another kind)."""
    stored = decode_material(keyring.unwrap(session, row))
    if not isinstance(stored, SymmetricKey):
        raise KmipError(ResultReason.GENERAL_FAILURE, f"service key {row.uid} is malformed")
    return stored


def _state_now(row: ManagedObject, now: int) -> State:
    return lifecycle.state_at(State(row.state), lifecycle.LifecycleDates(
        row.activation_date, row.deactivation_date), now)
