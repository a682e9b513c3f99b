"""Every operation that sets or changes a key's Extractable or Sensitive leaves its material
wrapped bound to the flags it has once the operation commits, and the key usable (wrap
format version 2, kcm.core.keyring.Flags; kcm.core.managed.save re-wraps on a change)."""

from __future__ import annotations

import os
import time

import pytest
from sqlalchemy import select

from kcm.core.keyring import Flags, WrappingMismatch, row_flags
from kcm.core.state_sweeper import sweep_due_states
from kcm.core.store import repository
from kcm.core.store.schema import LEVEL_SERVICE_KEY, LEVEL_TENANT_KEY, ManagedObject
from kcm.core.tenant_rotation import rewrap_step, rotate_tenant_key
from kcm.kmip.attributes import Attribute, CryptographicParameters
from kcm.kmip.enums import (
    AdjustmentType,
    BlockCipherMode,
    CryptographicAlgorithm,
    DerivationMethod,
    ObjectType,
    Operation,
    PaddingMethod,
    ResultReason,
    RevocationReasonCode,
)
from kcm.kmip.payloads import (
    ActivateRequest,
    AddAttributeRequest,
    DeleteAttributeRequest,
    DerivationParameters,
    DeriveKeyRequest,
    DestroyRequest,
    EncryptRequest,
    GetAttributesRequest,
    GetRequest,
    LocateRequest,
    ModifyAttributeRequest,
    ReKeyRequest,
    RevocationReason,
    RevokeRequest,
    SetAttributeRequest,
)
from kcm.kmip.tags import Tag
from tests.core_support import CoreHarness, admin_principal
from tests.integration.test_core_asymmetric import key_pair_request
from tests.integration.test_core_attributes import adjust, create_key, ref
from tests.integration.test_core_objects import (
    PAST,
    V14,
    V21,
    aes_key,
    failed,
    name,
    ok,
    register,
    send,
)

SENSITIVE, UNEXTRACTABLE = Attribute.of(Tag.SENSITIVE, True), Attribute.of(Tag.EXTRACTABLE, False)
CBC = CryptographicParameters(block_cipher_mode=BlockCipherMode.CBC,
                              padding_method=PaddingMethod.PKCS5)


def _bound(core: CoreHarness, uid: str, flags: Flags, tenant: str = "demo") -> None:
    """``uid``'s material opens bound to ``flags`` (what its stored attributes say) and to
    no other flags."""
    def check(session):  # noqa: ANN001, ANN202
        row = repository.get_object(session, tenant, uid)
        assert row_flags(row) == flags
        assert core.keyring.unwrap(session, row, flags)
        for other in (Flags(not flags[0], flags[1]), Flags(flags[0], not flags[1])):
            with pytest.raises(WrappingMismatch):
                core.keyring.unwrap(session, row, other)
    core.store.run_sync(check)


def _every_row_bound(core: CoreHarness) -> None:
    """Every stored key (the tenant's keys, its services' keys, its objects) opens bound to
    the flags of its stored attributes."""
    def check(session):  # noqa: ANN001, ANN202
        rows = session.scalars(select(ManagedObject).where(
            ManagedObject.material.is_not(None))).all()
        for row in rows:
            assert core.keyring.unwrap(session, row, row_flags(row)) is not None
        return {row.level for row in rows}
    assert core.store.run_sync(check) == {None, LEVEL_TENANT_KEY, LEVEL_SERVICE_KEY}


def _encrypts(core: CoreHarness, uid: str) -> None:
    ok(core, Operation.ENCRYPT, EncryptRequest(unique_identifier=uid, data=b"x" * 16,
                                                cryptographic_parameters=CBC))


def _key(core: CoreHarness, uid: str) -> bytes:
    return ok(core, Operation.GET, GetRequest(unique_identifier=uid)
              ).object.key_block.key_value.key_material


def test_create_and_register_bind_the_flags_they_store(core: CoreHarness) -> None:
    for extra, flags in (((), Flags(True, False)), ((SENSITIVE,), Flags(True, True)),
                         ((UNEXTRACTABLE,), Flags(False, False)),
                         ((SENSITIVE, UNEXTRACTABLE), Flags(False, True))):
        created = create_key(core, *extra, PAST)
        registered = register(core, aes_key(os.urandom(32)), [*extra, PAST])
        for uid in (created, registered):
            _bound(core, uid, flags)
            _encrypts(core, uid)


def test_create_key_pair_binds_both_keys(core: CoreHarness) -> None:
    request = key_pair_request()
    request.private_key_attributes.append(UNEXTRACTABLE)
    request.public_key_attributes.append(SENSITIVE)
    payload = ok(core, Operation.CREATE_KEY_PAIR, request)
    _bound(core, payload.private_key_unique_identifier, Flags(False, False))
    _bound(core, payload.public_key_unique_identifier, Flags(True, True))


def test_derive_and_rekey_bind_the_new_keys_flags(core: CoreHarness) -> None:
    base = create_key(core, PAST)
    derived = ok(core, Operation.DERIVE_KEY, DeriveKeyRequest(
        object_type=ObjectType.SYMMETRIC_KEY, unique_identifiers=[base],
        derivation_method=DerivationMethod.ENCRYPT,
        derivation_parameters=DerivationParameters(
            cryptographic_parameters=CryptographicParameters(
                block_cipher_mode=BlockCipherMode.ECB), derivation_data=b"d" * 32),
        attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
                    Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256), UNEXTRACTABLE, SENSITIVE,
                    PAST])).unique_identifier
    _bound(core, derived, Flags(False, True))
    _encrypts(core, derived)
    old = create_key(core, SENSITIVE, PAST)
    new = ok(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=old)).unique_identifier
    _bound(core, new, Flags(True, True))
    _encrypts(core, new)


@pytest.mark.parametrize("change", ["set", "modify", "modify-1.4"])
def test_a_change_of_the_flags_rewraps_and_the_key_stays_usable(
        core: CoreHarness, change: str) -> None:
    uid = create_key(core, SENSITIVE, UNEXTRACTABLE, PAST)
    _bound(core, uid, Flags(False, True))
    _encrypts(core, uid)  # (unwrapped and cached under the old flags)
    failed(core, Operation.GET, GetRequest(unique_identifier=uid), ResultReason.NOT_EXTRACTABLE)

    def to(attribute: Attribute) -> None:
        # (its administrator: an application may not make a key less protected)
        if change == "set":
            ok(core, Operation.SET_ATTRIBUTE, SetAttributeRequest(
                unique_identifier=uid, attribute=attribute), principal=admin_principal())
        else:
            ok(core, Operation.MODIFY_ATTRIBUTE, ModifyAttributeRequest(
                unique_identifier=uid, attribute=attribute),
                version=V14 if change == "modify-1.4" else V21, principal=admin_principal())

    to(Attribute.of(Tag.EXTRACTABLE, True))
    _bound(core, uid, Flags(True, True))
    _encrypts(core, uid)
    failed(core, Operation.GET, GetRequest(unique_identifier=uid), ResultReason.SENSITIVE)
    to(Attribute.of(Tag.SENSITIVE, False))
    _bound(core, uid, Flags(True, False))
    key = _key(core, uid)
    _encrypts(core, uid)
    to(Attribute.of(Tag.EXTRACTABLE, False))  # (and back: bound again)
    _bound(core, uid, Flags(False, False))
    _encrypts(core, uid)
    to(Attribute.of(Tag.EXTRACTABLE, True))
    assert _key(core, uid) == key
    _every_row_bound(core)


def test_add_attribute_of_a_flag_is_refused_it_is_always_stored(core: CoreHarness) -> None:
    """Every new key stores both flags (the defaults if not given): Add Attribute of one is
    refused, and the key stays as bound."""
    uid = register(core, aes_key(os.urandom(32)), [PAST])
    failed(core, Operation.ADD_ATTRIBUTE, AddAttributeRequest(
        unique_identifier=uid, attribute=SENSITIVE), ResultReason.ATTRIBUTE_SINGLE_VALUED)
    _bound(core, uid, Flags(True, False))
    _encrypts(core, uid)


def test_every_operation_on_a_sensitive_unextractable_key_leaves_every_row_bound(
        core: CoreHarness) -> None:
    """A review's walk: the operations that change a key without changing its flags (and a
    batch that changes both), the state sweeper, a tenant key rotation and its re-wrap, a
    Re-key and a Destroy; every stored row opens bound to its stored flags after each."""
    uid = create_key(core, SENSITIVE, UNEXTRACTABLE)  # (pre-active)
    later = create_key(core, SENSITIVE, UNEXTRACTABLE, PAST)
    both = Flags(False, True)
    ok(core, Operation.ACTIVATE, ActivateRequest(unique_identifier=uid))
    ok(core, Operation.ADD_ATTRIBUTE, AddAttributeRequest(unique_identifier=uid,
                                                           attribute=name("k1")))
    ok(core, Operation.SET_ATTRIBUTE, SetAttributeRequest(
        unique_identifier=uid, attribute=Attribute.of(Tag.COMMENT, "c")))
    ok(core, Operation.MODIFY_ATTRIBUTE, ModifyAttributeRequest(
        unique_identifier=uid, attribute=Attribute.of(Tag.COMMENT, "d")))
    ok(core, Operation.DELETE_ATTRIBUTE, DeleteAttributeRequest(
        unique_identifier=uid, current_attribute=name("k1")))
    failed(core, Operation.DELETE_ATTRIBUTE, DeleteAttributeRequest(
        unique_identifier=uid, current_attribute=SENSITIVE), ResultReason.ATTRIBUTE_READ_ONLY)
    ok(core, Operation.GET_ATTRIBUTES, GetAttributesRequest(unique_identifier=uid))
    ok(core, Operation.LOCATE, LocateRequest())
    _encrypts(core, uid)
    _bound(core, uid, both)
    negated = create_key(core, SENSITIVE, PAST)  # (Adjust Attribute negates a Boolean)
    ok(core, Operation.ADJUST_ATTRIBUTE, adjust(negated, ref(Tag.SENSITIVE),
                                                AdjustmentType.NEGATE),
       principal=admin_principal())
    _bound(core, negated, Flags(True, False))
    assert _key(core, negated)
    # The state sweeper: a service key's Deactivation Date that passes, the key made
    # Sensitive by its administrator.
    admin = admin_principal()
    l3 = core.store.run_sync(lambda s: s.scalars(select(ManagedObject.uid).where(
        ManagedObject.level == LEVEL_SERVICE_KEY, ManagedObject.tenant == "demo")).first())
    for attribute in (SENSITIVE, Attribute.of(Tag.DEACTIVATION_DATE, int(time.time()) + 5)):
        ok(core, Operation.SET_ATTRIBUTE, SetAttributeRequest(
            unique_identifier=l3, attribute=attribute), principal=admin)
    assert core.store.run_sync(lambda s: sweep_due_states(s, int(time.time()) + 10)) == [l3]
    _bound(core, l3, Flags(True, True))
    # A tenant key rotation and its re-wrap.
    new_l2, _ = core.store.run_sync(lambda s: rotate_tenant_key(
        s, core.keyring, "demo", now=int(time.time()), by="test", reason="test"))
    for _ in range(10):
        if not core.store.run_sync(lambda s: rewrap_step(s, core.keyring, time.time())):
            break
    assert core.store.run_sync(lambda s: repository.get_object(s, "demo", uid).wrapped_by) \
        == new_l2  # (moved, not left as refused)
    # A tenant key Re-keyed by its administrator (wrapped under L1 bound to its flags).
    ok(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=new_l2), principal=admin)
    _bound(core, uid, both)
    _every_row_bound(core)
    # One request changing both flags, between uses of the key (its administrator's: an
    # application may not make a key less protected).
    answer = send(core, (Operation.ENCRYPT, EncryptRequest(
        unique_identifier=uid, data=b"x" * 16, cryptographic_parameters=CBC)),
        (Operation.SET_ATTRIBUTE, SetAttributeRequest(
            unique_identifier=uid, attribute=Attribute.of(Tag.EXTRACTABLE, True))),
        (Operation.ENCRYPT, EncryptRequest(
            unique_identifier=uid, data=b"x" * 16, cryptographic_parameters=CBC)),
        (Operation.SET_ATTRIBUTE, SetAttributeRequest(
            unique_identifier=uid, attribute=Attribute.of(Tag.SENSITIVE, False))),
        (Operation.GET, GetRequest(unique_identifier=uid)), principal=admin)
    assert [i.result_status for i in answer.batch_items] == [0] * 5, [
        i.result_message for i in answer.batch_items]
    _bound(core, uid, Flags(True, False))
    new = ok(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=later)).unique_identifier
    _bound(core, new, both)
    ok(core, Operation.REVOKE, RevokeRequest(
        unique_identifier=later, revocation_reason=RevocationReason(
            code=RevocationReasonCode.CESSATION_OF_OPERATION)))
    ok(core, Operation.DESTROY, DestroyRequest(unique_identifier=later))
    # A destroyed key's flags change with nothing to wrap again.
    ok(core, Operation.SET_ATTRIBUTE, SetAttributeRequest(
        unique_identifier=later, attribute=Attribute.of(Tag.SENSITIVE, False)),
       principal=admin)
    _every_row_bound(core)
