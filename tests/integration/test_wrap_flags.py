"""Every operation that sets or changes a key's Extractable or Sensitive leaves its material
wrapped bound to the flags it has once the operation commits, and the key usable (wrap
format version 2, kcm.core.keyring.Flags; kcm.core.managed.save re-wraps on a change)."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import select

from kcm.core.keyring import Flags, WrappingMismatch, row_flags
from kcm.core.store import repository
from kcm.core.store.schema import LEVEL_SERVICE_KEY, LEVEL_TENANT_KEY, ManagedObject
from kcm.kmip.attributes import Attribute, CryptographicParameters
from kcm.kmip.enums import (
    BlockCipherMode,
    CryptographicAlgorithm,
    DerivationMethod,
    ObjectType,
    Operation,
    PaddingMethod,
    ResultReason,
)
from kcm.kmip.payloads import (
    AddAttributeRequest,
    DerivationParameters,
    DeriveKeyRequest,
    EncryptRequest,
    GetRequest,
    ModifyAttributeRequest,
    ReKeyRequest,
    SetAttributeRequest,
)
from kcm.kmip.tags import Tag
from tests.core_support import CoreHarness
from tests.integration.test_core_asymmetric import key_pair_request
from tests.integration.test_core_attributes import create_key
from tests.integration.test_core_objects import PAST, V14, V21, aes_key, failed, ok, register

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
        if change == "set":
            ok(core, Operation.SET_ATTRIBUTE, SetAttributeRequest(
                unique_identifier=uid, attribute=attribute))
        else:
            ok(core, Operation.MODIFY_ATTRIBUTE, ModifyAttributeRequest(
                unique_identifier=uid, attribute=attribute),
                version=V14 if change == "modify-1.4" else V21)

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
