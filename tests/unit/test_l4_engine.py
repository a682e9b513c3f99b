"""The L4 engine over a fake key source: the four operations, who may, the refusals and
their reasons per protocol version."""

from __future__ import annotations

import itertools
import uuid

import pytest
from cryptography.hazmat.primitives import keywrap
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kcm.identity import Principal, Role
from kcm.kernel.missing import object_not_found, wrapping_key_not_found
from kcm.kernel.result_reasons import error_reason
from kcm.kmip.attributes import VENDOR_TAG, Attribute, CryptographicParameters, Link, Name
from kcm.kmip.enums import (
    BlockCipherMode,
    CryptographicAlgorithm,
    CryptographicUsageMask,
    EncodingOption,
    KeyFormatType,
    LinkType,
    NameType,
    ObjectType,
    Operation,
    PaddingMethod,
    ResultReason,
    State,
    WrappingMethod,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.objects import (
    EncryptionKeyInformation,
    KeyWrappingSpecification,
    TransparentSymmetricKey,
)
from kcm.kmip.payloads import CreateRequest, DecryptRequest, EncryptRequest, GetRequest
from kcm.kmip.tags import Tag
from kcm.l4 import token
from kcm.l4.authorize import ServiceKeyUseDenied
from kcm.l4.engine import L4Engine, create_attributes, is_l4_create, l4_target
from kcm.l4.service_key import ServiceKey
from kcm.ttlv import Item, ItemType

TD = "kcm.test"
APP = Principal(Role.SERVICE, TD, tenant="demo", service="app", uri=f"spiffe://{TD}/a")
BILLING = Principal(Role.SERVICE, TD, tenant="demo", service="billing", uri=f"spiffe://{TD}/b")
ADMIN = Principal(Role.ADMIN, TD, tenant="demo", name="alice", uri=f"spiffe://{TD}/c")
STRANGER = Principal(Role.SERVICE, TD, tenant="other", service="app", uri=f"spiffe://{TD}/d")
GATEWAY = Principal(Role.GATEWAY, TD, name="gw", uri=f"spiffe://{TD}/gateway/gw")
V14, V21 = (1, 4), (2, 1)


def l3(n: int, state: State = State.ACTIVE, service: str = "app") -> ServiceKey:
    return ServiceKey(f"l3-{uuid.UUID(int=n)}", "demo", service, n, int(state),
                      bytes([n]) * 32)


class FakeKeys:
    """A KeySource over a dict, answering with KMIP 2.x reasons as the core's does."""

    def __init__(self, *keys: ServiceKey) -> None:
        self.keys = {key.uid: key for key in keys}
        self.tombstones: set[str] = set()

    def current_service_key(self, tenant: str, service: str) -> ServiceKey:
        for key in sorted(self.keys.values(), key=lambda k: -k.version):
            if (key.tenant, key.service, key.state) == (tenant, service, State.ACTIVE):
                return key
        raise KmipError(ResultReason.OBJECT_NOT_FOUND, f"no key for {tenant}/{service}")

    def service_key(self, uid: str) -> ServiceKey:
        # Who asks is the engine's check here: this source hands out any tenant's key, so
        # the engine's own check is what is tested.
        try:
            return self.keys[uid]
        except KeyError:
            raise object_not_found(uid) from None

    def is_tombstoned(self, token_id: str) -> bool:
        return token_id in self.tombstones


def counter_random():
    counter = itertools.count()
    return lambda n: bytes((next(counter) + i) % 256 for i in range(n))


@pytest.fixture
def keys() -> FakeKeys:
    return FakeKeys(l3(1), l3(2, service="billing"))


@pytest.fixture
def engine(keys: FakeKeys) -> L4Engine:
    return L4Engine(keys, counter_random())


def vendor(name: str, value: str) -> Attribute:
    return Attribute.vendor("x", name, Item(VENDOR_TAG, ItemType.TEXT_STRING, value))


LEVEL = vendor("kcm-level", "L4")


def create(engine, *attributes, principal=APP, version=V21) -> str:
    request = CreateRequest(object_type=ObjectType.SYMMETRIC_KEY, attributes=list(attributes))
    return engine.create(principal, version, request).unique_identifier


def refused(reason: ResultReason, call, *args, **kwargs) -> str:
    """``call`` raises the KmipError that a client of the call's protocol version is
    answered with ``reason`` (the kernel says 2.x reasons in 1.x words)."""
    with pytest.raises(KmipError) as caught:
        call(*args, **kwargs)
    version = kwargs.get("version") or next(
        (arg for arg in args if isinstance(arg, tuple) and len(arg) == 2), V21)
    assert error_reason(version, caught.value) == reason, caught.value.message
    return caught.value.message


# Marking ------------------------------------------------------------------------------
def test_marking() -> None:
    link = Attribute.of(Tag.LINK, Link(link_type=LinkType.PARENT_LINK,
                                       linked_object_identifier=l3(1).uid))
    other_link = Attribute.of(Tag.LINK, Link(link_type=LinkType.PARENT_LINK,
                                             linked_object_identifier="some-object"))
    assert is_l4_create([LEVEL]) and is_l4_create([link])
    assert not is_l4_create([]) and not is_l4_create(None) and not is_l4_create([other_link])
    assert not is_l4_create([vendor("kcm-level", "L3")])
    assert l4_target(APP, [LEVEL]) == ("demo", "app")
    assert l4_target(APP, [LEVEL, vendor("kcm-service", "billing")]) == ("demo", "billing")
    assert l4_target(ADMIN, [link]) == l3(1).uid
    refused(ResultReason.INVALID_FIELD, l4_target, ADMIN, [LEVEL])
    refused(ResultReason.PERMISSION_DENIED, l4_target, GATEWAY, [LEVEL])


@pytest.mark.parametrize("version", [V14, V21])
def test_create_attributes_from_a_peeked_container(version) -> None:
    from kcm.kmip.payloads import CreateRequest as Request
    request = Request(object_type=ObjectType.SYMMETRIC_KEY, attributes=[LEVEL])
    container = request.to_item(version).value[1]
    assert is_l4_create(create_attributes(container, version))
    assert create_attributes(Item(Tag.ATTRIBUTES, ItemType.INTEGER, 1), version) == []


# Create / Get -------------------------------------------------------------------------
def test_create_seals_under_the_current_active_l3(keys, engine) -> None:
    keys.keys[l3(3).uid] = l3(3)  # a newer version of app
    keys.keys[l3(4).uid] = l3(4, State.DEACTIVATED)  # newest, but not Active
    uid = create(engine, LEVEL)
    assert token.parse(uid).l3_uid == l3(3).uid
    assert len(token.open(uid, l3(3))) == 32


def test_create_lengths_and_refusals(keys, engine) -> None:
    uid = create(engine, LEVEL, Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 192),
                 Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
                 Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, 12))
    assert len(token.open(uid, l3(1))) == 24
    refused(ResultReason.INVALID_FIELD, create, engine, LEVEL,
            Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.DES3))
    refused(ResultReason.INVALID_FIELD, create, engine, LEVEL,
            Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 168))
    refused(ResultReason.INVALID_FIELD, engine.create, APP, V21, CreateRequest(
        object_type=ObjectType.SECRET_DATA, attributes=[LEVEL]))
    refused(ResultReason.PERMISSION_DENIED, create, engine, LEVEL,
            vendor("kcm-service", "billing"))
    refused(ResultReason.OBJECT_NOT_FOUND, create, engine, LEVEL, principal=STRANGER)
    refused(ResultReason.ITEM_NOT_FOUND, create, engine, LEVEL, principal=STRANGER,
            version=V14)
    link = Attribute.of(Tag.LINK, Link(link_type=LinkType.PARENT_LINK,
                                       linked_object_identifier=l3(1).uid))
    refused(ResultReason.INVALID_FIELD, create, engine, link, vendor("kcm-service", "billing"),
            principal=ADMIN)
    keys.keys[l3(1).uid] = l3(1, State.DEACTIVATED)
    refused(ResultReason.WRONG_KEY_LIFECYCLE_STATE, create, engine, link)
    refused(ResultReason.PERMISSION_DENIED, create, engine, link, version=V14)


def test_create_naming_a_template_is_feature_not_supported(engine) -> None:
    """Templates are kept, never applied: a request naming one is Feature Not Supported
    at the gateway as at the core (kcm.kernel.templates)."""
    refused(ResultReason.FEATURE_NOT_SUPPORTED, engine.create, APP, V14, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY, attributes=[LEVEL],
        template_names=[Name(value="tmpl1", type=NameType.UNINTERPRETED_TEXT_STRING)]))


@pytest.mark.parametrize("mask", [0, CryptographicUsageMask.ENCRYPT,
                                  CryptographicUsageMask.DECRYPT,
                                  CryptographicUsageMask.SIGN | CryptographicUsageMask.DECRYPT])
def test_create_refuses_a_usage_mask_without_encrypt_and_decrypt(engine, mask) -> None:
    message = refused(ResultReason.INVALID_FIELD, create, engine, LEVEL,
                      Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, int(mask)))
    assert message == ("an L4 always encrypts and decrypts: its Cryptographic Usage Mask "
                       "must include Encrypt and Decrypt")
    wider = CryptographicUsageMask.ENCRYPT | CryptographicUsageMask.DECRYPT \
        | CryptographicUsageMask.EXPORT
    assert create(engine, LEVEL, Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, int(wider)))


def test_get_formats_and_wrapping(engine) -> None:
    uid = create(engine, LEVEL)
    dek = token.open(uid, l3(1))
    raw = engine.get(APP, V21, GetRequest(unique_identifier=uid)).object.key_block
    assert raw.key_format_type == KeyFormatType.RAW and raw.key_value.key_material == dek
    tsk = engine.get(APP, V21, GetRequest(
        unique_identifier=uid, key_format_type=KeyFormatType.TRANSPARENT_SYMMETRIC_KEY))
    assert tsk.object.key_block.key_value.key_material == TransparentSymmetricKey(key=dek)
    refused(ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED, engine.get, APP, V21, GetRequest(
        unique_identifier=uid, key_format_type=KeyFormatType.PKCS_8))
    padded = CryptographicParameters(block_cipher_mode=BlockCipherMode.AESKEYWRAPPADDING)
    spec = KeyWrappingSpecification(
        wrapping_method=WrappingMethod.ENCRYPT, encoding_option=EncodingOption.NO_ENCODING,
        encryption_key_information=EncryptionKeyInformation(
            unique_identifier=l3(1).uid, cryptographic_parameters=padded))
    wrapped = engine.get(APP, V21, GetRequest(unique_identifier=uid,
                                              key_wrapping_specification=spec))
    block = wrapped.object.key_block
    assert keywrap.aes_key_unwrap_with_padding(l3(1).key, block.key_value) == dek
    for wrapping_uid, reason in ((l3(2).uid, ResultReason.PERMISSION_DENIED),  # billing's
                                 (l3(9).uid, ResultReason.WRAPPING_OBJECT_NOT_FOUND),
                                 ("managed-key", ResultReason.FEATURE_NOT_SUPPORTED)):
        other = KeyWrappingSpecification(
            wrapping_method=WrappingMethod.ENCRYPT,
            encryption_key_information=EncryptionKeyInformation(unique_identifier=wrapping_uid))
        refused(reason, engine.get, APP, V21, GetRequest(unique_identifier=uid,
                                                         key_wrapping_specification=other))
    refused(ResultReason.PERMISSION_DENIED, engine.get, APP, V21,
            GetRequest(unique_identifier=l3(1).uid))


# Encrypt / Decrypt --------------------------------------------------------------------
def test_encrypt_decrypt_with_an_l4_and_an_l3(engine) -> None:
    uid = create(engine, LEVEL)
    for key_uid, key in ((uid, token.open(uid, l3(1))), (l3(1).uid, l3(1).key)):
        answer = engine.encrypt(APP, V21, EncryptRequest(unique_identifier=key_uid,
                                                         data=b"record"))
        assert answer.unique_identifier == key_uid
        assert AESGCM(key).decrypt(answer.iv_counter_nonce,
                                   answer.data + answer.authenticated_encryption_tag,
                                   None) == b"record"
        plain = engine.decrypt(APP, V21, DecryptRequest(
            unique_identifier=key_uid, data=answer.data, iv_counter_nonce=answer.iv_counter_nonce,
            authenticated_encryption_tag=answer.authenticated_encryption_tag))
        assert plain.data == b"record"


def test_parameters_as_the_core_answers_them(engine) -> None:
    uid = create(engine, LEVEL)
    aad = b"header"
    iv = bytes(12)
    answer = engine.encrypt(APP, V21, EncryptRequest(
        unique_identifier=uid, data=b"r", iv_counter_nonce=iv,
        authenticated_encryption_additional_data=aad,
        cryptographic_parameters=CryptographicParameters(tag_length=12)))
    assert answer.iv_counter_nonce is None and len(answer.authenticated_encryption_tag) == 12
    short = CryptographicParameters(tag_length=12)  # an L4 keeps none: the request says
    assert engine.decrypt(APP, V21, DecryptRequest(
        unique_identifier=uid, data=answer.data, iv_counter_nonce=iv,
        authenticated_encryption_additional_data=aad, cryptographic_parameters=short,
        authenticated_encryption_tag=answer.authenticated_encryption_tag)).data == b"r"
    refused(ResultReason.CRYPTOGRAPHIC_FAILURE, engine.decrypt, APP, V21, DecryptRequest(
        unique_identifier=uid, data=answer.data, iv_counter_nonce=iv,
        authenticated_encryption_additional_data=aad,
        authenticated_encryption_tag=answer.authenticated_encryption_tag))
    cbc = CryptographicParameters(block_cipher_mode=BlockCipherMode.CBC,
                                  padding_method=PaddingMethod.PKCS5)
    answer = engine.encrypt(APP, V21, EncryptRequest(unique_identifier=uid, data=b"r",
                                                     cryptographic_parameters=cbc))
    assert len(answer.data) == 16 and len(answer.iv_counter_nonce) == 16
    refused(ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS, engine.encrypt, APP, V21,
            EncryptRequest(unique_identifier=uid, data=b"r", cryptographic_parameters=(
                CryptographicParameters(block_cipher_mode=BlockCipherMode.XTS))))
    refused(ResultReason.FEATURE_NOT_SUPPORTED, engine.encrypt, APP, V14,
            EncryptRequest(unique_identifier=uid, data=b"r", cryptographic_parameters=(
                CryptographicParameters(block_cipher_mode=BlockCipherMode.XTS))))
    refused(ResultReason.INVALID_MESSAGE, engine.decrypt, APP, V21,
            DecryptRequest(unique_identifier=uid, data=b"r"))
    refused(ResultReason.CRYPTOGRAPHIC_FAILURE, engine.decrypt, APP, V21, DecryptRequest(
        unique_identifier=uid, data=b"r", iv_counter_nonce=iv,
        authenticated_encryption_tag=bytes(16)))
    refused(ResultReason.FEATURE_NOT_SUPPORTED, engine.encrypt, APP, V21,
            EncryptRequest(unique_identifier=uid, data=b"r", init_indicator=True))
    refused(ResultReason.INVALID_MESSAGE, engine.encrypt, APP, V21,
            EncryptRequest(unique_identifier=uid))
    refused(ResultReason.INVALID_FIELD, engine.encrypt, APP, V21,
            EncryptRequest(unique_identifier="managed", data=b"r"))


# Who may, tombstones, states ----------------------------------------------------------
def denial(call, *args, **kwargs) -> ServiceKeyUseDenied:
    """The refusal of who asks that ``call`` raises (for the caller to log)."""
    with pytest.raises(ServiceKeyUseDenied) as caught:
        call(*args, **kwargs)
    return caught.value


@pytest.mark.parametrize("principal", [STRANGER, GATEWAY])
@pytest.mark.parametrize("state", [State.ACTIVE, State.COMPROMISED, State.DESTROYED])
def test_another_tenants_keys_answer_exactly_as_missing_ones(engine, keys, principal,
                                                            state) -> None:
    """Who asks comes first: whatever the L3's state, another tenant's token, L3, Parent
    Link or wrapping key is answered as an unknown one, in the same words."""
    uid = create(engine, LEVEL)
    app_l3 = l3(1).uid
    keys.keys[app_l3] = ServiceKey(app_l3, "demo", "app", 1, int(state),
                                   l3(1).key if state == State.ACTIVE else b"")
    link = Attribute.of(Tag.LINK, Link(link_type=LinkType.PARENT_LINK,
                                       linked_object_identifier=app_l3))
    wrapped_by = KeyWrappingSpecification(
        wrapping_method=WrappingMethod.ENCRYPT,
        encryption_key_information=EncryptionKeyInformation(unique_identifier=app_l3))
    unknown = object_not_found(app_l3)
    for version in (V14, V21):
        for call, *args in (
                (engine.get, principal, version, GetRequest(unique_identifier=uid)),
                (engine.encrypt, principal, version, EncryptRequest(unique_identifier=uid,
                                                                    data=b"x")),
                (engine.encrypt, principal, version, EncryptRequest(unique_identifier=app_l3,
                                                                    data=b"x")),
                (engine.tombstone, principal, version, uid),
                (create, engine, link)):
            kwargs = {"principal": principal, "version": version} if call is create else {}
            message = refused(ResultReason.OBJECT_NOT_FOUND if version >= (2, 0)
                              else ResultReason.ITEM_NOT_FOUND, call, *args, **kwargs)
            assert message == unknown.message
            assert denial(call, *args, **kwargs).why in ("another tenant's key",
                                                         "gateway principals use no service "
                                                         "keys")
    # A key of the stranger's own, wrapped with the application's L3: a missing wrapping key.
    theirs = ServiceKey(f"l3-{uuid.UUID(int=7)}", principal.tenant or "none", "app", 1,
                        State.ACTIVE, bytes(32))
    keys.keys[theirs.uid] = theirs
    if principal is STRANGER:
        token_uid = token.seal(theirs, bytes(32), bytes(12))
        request = GetRequest(unique_identifier=token_uid, key_wrapping_specification=wrapped_by)
        message = refused(ResultReason.WRAPPING_OBJECT_NOT_FOUND, engine.get, principal, V21,
                          request)
        assert message == wrapping_key_not_found(app_l3).message
        assert denial(engine.get, principal, V21, request).why == "another tenant's key"
    # The application may not use another tenant's L3 either.
    assert refused(ResultReason.OBJECT_NOT_FOUND, engine.encrypt, APP, V21, EncryptRequest(
        unique_identifier=theirs.uid, data=b"x")) == object_not_found(theirs.uid).message


def test_another_services_keys_of_the_same_tenant_are_permission_denied(engine, keys) -> None:
    uid = create(engine, LEVEL)
    keys.keys[l3(1).uid] = l3(1, State.COMPROMISED)  # still: who asks comes first
    for version in (V14, V21):
        for call, *args in ((engine.get, BILLING, version, GetRequest(unique_identifier=uid)),
                            (engine.encrypt, BILLING, version,
                             EncryptRequest(unique_identifier=l3(1).uid, data=b"x")),
                            (engine.tombstone, BILLING, version, uid)):
            message = refused(ResultReason.PERMISSION_DENIED, call, *args)
            assert "own service" in message
            assert denial(call, *args).why == "another service's key"
    keys.keys[l3(1).uid] = l3(1)
    assert engine.get(ADMIN, V21, GetRequest(unique_identifier=uid)).unique_identifier == uid


def test_tombstoned_and_malformed_tokens_name_nothing(engine, keys) -> None:
    uid = create(engine, LEVEL)
    target = engine.tombstone(APP, V21, uid)
    assert (target.token_id, target.tenant, target.l3_uid) == (
        token.token_id(uid), "demo", l3(1).uid)
    keys.tombstones.add(target.token_id)
    refused(ResultReason.OBJECT_NOT_FOUND, engine.get, APP, V21, GetRequest(unique_identifier=uid))
    refused(ResultReason.ITEM_NOT_FOUND, engine.encrypt, APP, V14,
            EncryptRequest(unique_identifier=uid, data=b"x"))
    assert engine.tombstone(APP, V21, uid) == target  # Revoke then Destroy
    for bad in ("l4.1.nope", "l4.2." + uid[5:], uid[:-2]):
        refused(ResultReason.OBJECT_NOT_FOUND, engine.get, APP, V21,
                GetRequest(unique_identifier=bad))
        refused(ResultReason.OBJECT_NOT_FOUND, engine.tombstone, APP, V21, bad)


def test_l3_states(engine, keys) -> None:
    uid = create(engine, LEVEL)
    sealed = engine.encrypt(APP, V21, EncryptRequest(unique_identifier=uid, data=b"r"))
    decrypt = DecryptRequest(unique_identifier=uid, data=sealed.data,
                             iv_counter_nonce=sealed.iv_counter_nonce,
                             authenticated_encryption_tag=sealed.authenticated_encryption_tag)
    keys.keys[l3(1).uid] = l3(1, State.DEACTIVATED)  # decrypt-only
    assert engine.decrypt(APP, V21, decrypt).data == b"r"
    assert engine.get(APP, V21, GetRequest(unique_identifier=uid))
    refused(ResultReason.WRONG_KEY_LIFECYCLE_STATE, engine.encrypt, APP, V21,
            EncryptRequest(unique_identifier=uid, data=b"r"))
    refused(ResultReason.PERMISSION_DENIED, engine.encrypt, APP, V14,
            EncryptRequest(unique_identifier=l3(1).uid, data=b"r"))
    keys.keys[l3(1).uid] = l3(1, State.COMPROMISED)  # dropped: nothing at all
    refused(ResultReason.WRONG_KEY_LIFECYCLE_STATE, engine.decrypt, APP, V21, decrypt)
    refused(ResultReason.WRONG_KEY_LIFECYCLE_STATE, engine.get, APP, V21,
            GetRequest(unique_identifier=uid))
    refused(ResultReason.WRONG_KEY_LIFECYCLE_STATE, engine.encrypt, APP, V21,
            EncryptRequest(unique_identifier=uid, data=b"r"))
    keys.keys[l3(1).uid] = ServiceKey(l3(1).uid, "demo", "app", 1, State.DESTROYED, b"")
    refused(ResultReason.OBJECT_DESTROYED, engine.decrypt, APP, V21, decrypt)
    refused(ResultReason.ITEM_NOT_FOUND, engine.get, APP, V14, GetRequest(unique_identifier=uid))
    refused(ResultReason.WRONG_KEY_LIFECYCLE_STATE, engine.decrypt, APP, V21, DecryptRequest(
        unique_identifier=l3(1).uid, data=b"r", iv_counter_nonce=bytes(12),
        authenticated_encryption_tag=bytes(16)))
    # A destroyed L3 still lets its L4s be revoked (it says so: nothing to record).
    target = engine.tombstone(APP, V21, uid)
    assert (target.l3_uid, target.l3_destroyed) == (l3(1).uid, True)


def test_execute_dispatches_the_four_operations(engine) -> None:
    uid = engine.execute(Operation.CREATE, APP, V21, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY, attributes=[LEVEL])).unique_identifier
    assert engine.execute(Operation.GET, APP, V21, GetRequest(unique_identifier=uid))
    refused(ResultReason.OPERATION_NOT_SUPPORTED, engine.execute, Operation.LOCATE, APP, V21,
            None)


def test_key_source_errors_pass_through(keys) -> None:
    class Down(FakeKeys):
        def service_key(self, uid):
            raise KmipError(ResultReason.GENERAL_FAILURE, "the core is unreachable")

    engine = L4Engine(Down(l3(1)), counter_random())
    uid = token.seal(l3(1), bytes(32), bytes(12))
    message = refused(ResultReason.GENERAL_FAILURE, engine.get, APP, V14,
                      GetRequest(unique_identifier=uid))
    assert "unreachable" in message


def test_an_l3_from_before_l3_identifiers_cannot_seal(keys, engine) -> None:
    legacy = ServiceKey(str(uuid.UUID(int=5)), "demo", "legacy", 1, State.ACTIVE, bytes(32))
    keys.keys[legacy.uid] = legacy
    message = refused(ResultReason.FEATURE_NOT_SUPPORTED, create, engine, LEVEL,
                      vendor("kcm-service", "legacy"), principal=ADMIN)
    assert "re-key" in message


# A service key wraps DEKs with AES-GCM only (docs/link-protocol.md §3) -------------------
GCM = CryptographicParameters(block_cipher_mode=BlockCipherMode.GCM, tag_length=16)


def _token_parts(uid: str) -> tuple[token.SealedToken, bytes]:
    """A token's parts and its associated data (the binding to demo/app and its L3)."""
    sealed = token.parse(uid)
    return sealed, token.associated_data(sealed.l3_uuid, "demo", "app")


@pytest.mark.parametrize("version", [V14, V21])
@pytest.mark.parametrize("parameters", [None, GCM])
def test_a_destroyed_token_s_dek_is_not_recovered_by_decrypt_with_its_l3(
        keys, engine, version, parameters) -> None:
    """The reviewer's attack: once tombstoned, a token names nothing; a Decrypt with its L3,
    the token's nonce as IV, its binding as AAD and its tag, would still open its DEK."""
    uid = create(engine, LEVEL)
    keys.tombstones.add(token.token_id(uid))
    refused(ResultReason.ITEM_NOT_FOUND if version == V14 else ResultReason.OBJECT_NOT_FOUND,
            engine.get, APP, version, GetRequest(unique_identifier=uid))
    sealed, binding = _token_parts(uid)
    message = refused(ResultReason.INVALID_FIELD, engine.decrypt, APP, version, DecryptRequest(
        unique_identifier=l3(1).uid, data=sealed.ciphertext[:-16],
        cryptographic_parameters=parameters, iv_counter_nonce=sealed.nonce,
        authenticated_encryption_additional_data=binding,
        authenticated_encryption_tag=sealed.ciphertext[-16:]))
    assert "l4.1" in message and message.isascii()
    # A KMIP 1.2 client sends the tag at the end of Data: refused alike.
    refused(ResultReason.INVALID_FIELD, engine.decrypt, APP, (1, 2), DecryptRequest(
        unique_identifier=l3(1).uid, data=sealed.ciphertext, iv_counter_nonce=sealed.nonce,
        authenticated_encryption_additional_data=binding))


@pytest.mark.parametrize("iv", [None, bytes(12)])
def test_no_token_is_minted_by_encrypt_with_its_l3(keys, engine, iv) -> None:
    """The reviewer's attack: an Encrypt with the L3 and the token binding as AAD (and a
    chosen IV) makes a token the core never issued, for a revoked DEK."""
    uid = create(engine, LEVEL)
    dek = token.open(uid, l3(1))
    keys.tombstones.add(token.token_id(uid))
    _, binding = _token_parts(uid)
    refused(ResultReason.INVALID_FIELD, engine.encrypt, APP, V21, EncryptRequest(
        unique_identifier=l3(1).uid, data=dek, cryptographic_parameters=GCM,
        iv_counter_nonce=iv, authenticated_encryption_additional_data=binding))
    # Any associated data that begins as a token's does is refused, not only a real one.
    for aad in (b"l4.1", b"l4.1" + bytes(40)):
        refused(ResultReason.INVALID_FIELD, engine.encrypt, APP, V21, EncryptRequest(
            unique_identifier=l3(1).uid, data=dek, authenticated_encryption_additional_data=aad))


@pytest.mark.parametrize("mode", [BlockCipherMode.ECB, BlockCipherMode.CBC,
                                  BlockCipherMode.CTR])
@pytest.mark.parametrize("version", [V14, V21])
def test_no_other_mode_runs_with_an_l3(engine, mode, version) -> None:
    """ECB of 0^128 under the L3 is the GHASH key of every token under it; CTR with a
    token's nonce is its keystream; CBC is a block oracle: all refused (Unsupported
    Cryptographic Parameters; Feature Not Supported in 1.x), for Encrypt and Decrypt."""
    reason = (ResultReason.FEATURE_NOT_SUPPORTED if version == V14
              else ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS)
    uid = create(engine, LEVEL)
    sealed, _ = _token_parts(uid)
    for parameters in (CryptographicParameters(block_cipher_mode=mode),
                       CryptographicParameters(block_cipher_mode=mode,
                                               padding_method=PaddingMethod.PKCS5)):
        for iv in (None, sealed.nonce + bytes(4)):
            with pytest.raises(KmipError) as caught:
                engine.encrypt(APP, version, EncryptRequest(
                    unique_identifier=l3(1).uid, data=bytes(16), iv_counter_nonce=iv,
                    cryptographic_parameters=parameters))
            assert error_reason(version, caught.value) == reason
        message = refused(reason, engine.decrypt, APP, version, DecryptRequest(
            unique_identifier=l3(1).uid, data=bytes(16), iv_counter_nonce=bytes(16),
            cryptographic_parameters=CryptographicParameters(block_cipher_mode=mode)))
        assert "AES-GCM only" in message
    refused(reason, engine.encrypt, APP, version, EncryptRequest(
        unique_identifier=l3(1).uid, data=bytes(16),
        cryptographic_parameters=CryptographicParameters(block_cipher_mode=mode)))


def test_an_l3_encrypt_takes_no_client_iv(engine) -> None:
    for parameters in (None, GCM, CryptographicParameters(random_iv=True)):
        refused(ResultReason.INVALID_FIELD, engine.encrypt, APP, V21, EncryptRequest(
            unique_identifier=l3(1).uid, data=b"dek", iv_counter_nonce=bytes(12),
            cryptographic_parameters=parameters))
    message = refused(ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS, engine.encrypt, APP,
                      V21, EncryptRequest(unique_identifier=l3(1).uid, data=b"dek",
                                          cryptographic_parameters=CryptographicParameters(
                                              random_iv=False)))
    assert "Random IV" in message


@pytest.mark.parametrize("tag_length", [4, 8, 12, 15])
def test_an_l3_takes_only_16_byte_tags(engine, tag_length) -> None:
    short = CryptographicParameters(tag_length=tag_length)
    refused(ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS, engine.encrypt, APP, V21,
            EncryptRequest(unique_identifier=l3(1).uid, data=b"dek",
                           cryptographic_parameters=short))
    sealed = engine.encrypt(APP, V21, EncryptRequest(unique_identifier=l3(1).uid, data=b"dek"))
    refused(ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS, engine.decrypt, APP, V21,
            DecryptRequest(unique_identifier=l3(1).uid, data=sealed.data,
                           iv_counter_nonce=sealed.iv_counter_nonce,
                           cryptographic_parameters=short,
                           authenticated_encryption_tag=sealed.authenticated_encryption_tag[
                               :tag_length]))
    # A prefix of the tag under the default Tag Length does not verify.
    refused(ResultReason.CRYPTOGRAPHIC_FAILURE, engine.decrypt, APP, V21, DecryptRequest(
        unique_identifier=l3(1).uid, data=sealed.data, iv_counter_nonce=sealed.iv_counter_nonce,
        authenticated_encryption_tag=sealed.authenticated_encryption_tag[:tag_length]))


def test_an_l3_takes_only_12_byte_ivs(engine) -> None:
    for bits in (64, 128):
        refused(ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS, engine.encrypt, APP, V21,
                EncryptRequest(unique_identifier=l3(1).uid, data=b"dek",
                               cryptographic_parameters=CryptographicParameters(
                                   iv_length=bits)))
    key = AESGCM(l3(1).key)
    for size in (8, 16):
        iv = bytes(size)
        sealed = key.encrypt(iv, b"dek", None) if size == 12 else b"x" * 19
        refused(ResultReason.INVALID_FIELD, engine.decrypt, APP, V21, DecryptRequest(
            unique_identifier=l3(1).uid, data=sealed[:-16], iv_counter_nonce=iv,
            authenticated_encryption_tag=sealed[-16:]))


def test_what_an_l3_still_does(engine) -> None:
    """Wrapping a DEK the documented ways: no parameters (AES-GCM), or AES-GCM spelled out
    (Tag Length 16, IV Length 96, Random IV True), with any associated data of the
    client's own; and Get of an L4 wrapped with the L3 (key wrap), unchanged."""
    key = AESGCM(l3(1).key)
    spelled = [None, GCM,
               CryptographicParameters(cryptographic_algorithm=CryptographicAlgorithm.AES,
                                       block_cipher_mode=BlockCipherMode.GCM,
                                       padding_method=PaddingMethod.NONE, tag_length=16,
                                       iv_length=96, random_iv=True)]
    for parameters, aad, version in itertools.product(
            spelled, [None, b"", b"row 7", b"l4", b"x-l4.1"], [V14, V21, (1, 2)]):
        sealed = engine.encrypt(APP, version, EncryptRequest(
            unique_identifier=l3(1).uid, data=b"k" * 32, cryptographic_parameters=parameters,
            authenticated_encryption_additional_data=aad))
        tag = sealed.authenticated_encryption_tag
        data = sealed.data if tag is not None else sealed.data[:-16]
        tag = tag if tag is not None else sealed.data[-16:]
        assert len(sealed.iv_counter_nonce) == 12 and len(tag) == 16
        assert key.decrypt(sealed.iv_counter_nonce, data + tag, aad or None) == b"k" * 32
        assert engine.decrypt(APP, version, DecryptRequest(
            unique_identifier=l3(1).uid, data=sealed.data, cryptographic_parameters=parameters,
            iv_counter_nonce=sealed.iv_counter_nonce,
            authenticated_encryption_additional_data=aad,
            authenticated_encryption_tag=sealed.authenticated_encryption_tag)).data == b"k" * 32
    uid = create(engine, LEVEL)
    spec = KeyWrappingSpecification(
        wrapping_method=WrappingMethod.ENCRYPT, encoding_option=EncodingOption.NO_ENCODING,
        encryption_key_information=EncryptionKeyInformation(unique_identifier=l3(1).uid))
    wrapped = engine.get(APP, V21, GetRequest(unique_identifier=uid,
                                              key_wrapping_specification=spec))
    assert keywrap.aes_key_unwrap(l3(1).key, wrapped.object.key_block.key_value) \
        == token.open(uid, l3(1))


def test_an_l4_keeps_every_mode_iv_and_aad(engine) -> None:
    """Records under an L4's DEK are the client's own: client IVs, other modes, short
    tags and any associated data, as before."""
    uid = create(engine, LEVEL)
    _, binding = _token_parts(uid)
    for parameters, iv in ((CryptographicParameters(block_cipher_mode=BlockCipherMode.CBC,
                                                    padding_method=PaddingMethod.PKCS5),
                            bytes(16)),
                           (CryptographicParameters(block_cipher_mode=BlockCipherMode.CTR),
                            bytes(16)),
                           (CryptographicParameters(tag_length=8), bytes(12))):
        sealed = engine.encrypt(APP, V21, EncryptRequest(
            unique_identifier=uid, data=b"record", iv_counter_nonce=iv,
            cryptographic_parameters=parameters, authenticated_encryption_additional_data=binding))
        assert engine.decrypt(APP, V21, DecryptRequest(
            unique_identifier=uid, data=sealed.data, iv_counter_nonce=iv,
            cryptographic_parameters=parameters, authenticated_encryption_additional_data=binding,
            authenticated_encryption_tag=sealed.authenticated_encryption_tag)).data == b"record"


def test_refused_l3_encrypts_are_not_counted(keys) -> None:
    used: list[str] = []
    engine = L4Engine(keys, counter_random(), used=used.append)
    refused(ResultReason.INVALID_FIELD, engine.encrypt, APP, V21, EncryptRequest(
        unique_identifier=l3(1).uid, data=b"dek", iv_counter_nonce=bytes(12)))
    assert used == []
    engine.encrypt(APP, V21, EncryptRequest(unique_identifier=l3(1).uid, data=b"dek"))
    assert used == [l3(1).uid]
