"""Register, Re-key, Get and Locate through kcm-core's request handler, in process.

Requests are built with the KMIP model, encoded in KMIP 1.4 or 2.1, and answered by the
real handler over a real SQLite store (the ``core`` fixture). The last tests play the
OASIS test cases that exercise these operations.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from kcm.conformance.runner import run_case
from kcm.core.hierarchy import service_key_name
from kcm.core.policy import AccessPolicy, ApplicationObjects
from kcm.core.request_handler import CoreRequestHandler
from kcm.core.server_info import ServerInfo
from kcm.core.store import repository
from kcm.core.store.schema import LEVEL_SERVICE_KEY, ObjectAttributeKey
from kcm.identity import Principal, Role
from kcm.kernel.missing import object_not_found
from kcm.kmip.attributes import VENDOR_TAG, Attribute, AttributeReference, Link, Name
from kcm.kmip.enums import (
    CryptographicAlgorithm,
    CryptographicUsageMask,
    KeyFormatType,
    KeyWrapType,
    LinkType,
    NameType,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
    SecretDataType,
    State,
    StorageStatusMask,
    WrappingMethod,
)
from kcm.kmip.messages import (
    ProtocolVersion,
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    ResponseMessage,
    decode_response,
    encode_request,
)
from kcm.kmip.objects import (
    EncryptionKeyInformation,
    KeyBlock,
    KeyValue,
    KeyWrappingSpecification,
    OpaqueObject,
    SecretData,
    SymmetricKey,
    TransparentSymmetricKey,
)
from kcm.kmip.payloads import (
    ActivateRequest,
    AddAttributeRequest,
    DeleteAttributeRequest,
    DestroyRequest,
    GetAttributesRequest,
    GetRequest,
    LocateRequest,
    ModifyAttributeRequest,
    RegisterRequest,
    ReKeyRequest,
    RevocationReason,
    RevokeRequest,
)
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType, decode, encode
from tests.core_support import TRUST_DOMAIN, CoreHarness, admin_principal, service_principal

V14 = (1, 4)
V21 = (2, 1)
KEY = bytes(range(16))
KEK = bytes(range(16, 48))


# -- helpers --------------------------------------------------------------------------

def send(core: CoreHarness, *items: tuple[Operation, object], version=V21,
         principal=None) -> ResponseMessage:
    header = RequestHeader(protocol_version=ProtocolVersion.of(version), batch_count=len(items))
    batch = [RequestBatchItem(operation=op, request_payload=payload) for op, payload in items]
    wire = encode(encode_request(RequestMessage(header, batch)))
    answer = core.handler.respond(wire, core.caller(principal), int(time.time()))
    return decode_response(decode(answer))


def one(core: CoreHarness, op: Operation, payload: object, **kwargs):
    """The single batch item of the answer to one operation."""
    return send(core, (op, payload), **kwargs).batch_items[0]


def ok(core: CoreHarness, op: Operation, payload: object, **kwargs):
    item = one(core, op, payload, **kwargs)
    assert item.result_status == ResultStatus.SUCCESS, item.result_message
    return item.response_payload


def failed(core: CoreHarness, op: Operation, payload: object, reason: int, **kwargs) -> str:
    item = one(core, op, payload, **kwargs)
    assert item.result_status == ResultStatus.OPERATION_FAILED
    assert item.result_reason == reason, (ResultReason(item.result_reason), item.result_message)
    assert item.result_message
    return item.result_message


def name(text: str) -> Attribute:
    return Attribute.of(Tag.NAME, Name(value=text, type=NameType.UNINTERPRETED_TEXT_STRING))


def aes_key(key: bytes = KEY, fmt: int = KeyFormatType.RAW) -> SymmetricKey:
    material = key if fmt == KeyFormatType.RAW else TransparentSymmetricKey(key=key)
    return SymmetricKey(key_block=KeyBlock(
        key_format_type=fmt, key_value=KeyValue(key_material=material),
        cryptographic_algorithm=CryptographicAlgorithm.AES, cryptographic_length=len(key) * 8))


def register(core: CoreHarness, obj=None, attributes=(), *, object_type=ObjectType.SYMMETRIC_KEY,
             version=V21, principal=None) -> str:
    request = RegisterRequest(object_type=object_type, attributes=list(attributes),
                              object=obj if obj is not None else aes_key())
    return ok(core, Operation.REGISTER, request, version=version,
              principal=principal).unique_identifier


def row(core: CoreHarness, uid: str, tenant: str = "demo"):
    return core.store.run_sync(lambda s: repository.get_object(s, tenant, uid))


def attributes_of(core: CoreHarness, uid: str, *tags: int) -> dict[int, list]:
    payload = ok(core, Operation.GET_ATTRIBUTES, GetAttributesRequest(
        unique_identifier=uid, attribute_references=[AttributeReference(t) for t in tags]),
        principal=admin_principal())
    found: dict[int, list] = {}
    for attribute in payload.attributes or []:
        found.setdefault(attribute.tag, []).append(attribute.typed)
    return found


def locate(core: CoreHarness, *attributes: Attribute, version=V21, principal=None, **fields):
    return ok(core, Operation.LOCATE, LocateRequest(attributes=list(attributes), **fields),
              version=version, principal=principal)


PAST = Attribute.of(Tag.ACTIVATION_DATE, 946_684_800)  # 2000-01-01
WRAP_MASK = Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, CryptographicUsageMask.WRAP_KEY)


# -- Register ---------------------------------------------------------------------------

def test_a_request_naming_a_template_is_feature_not_supported(core: CoreHarness) -> None:
    """A Template registered is kept and found (1.x), but no request applies one: Create,
    Register and Re-key naming it are Feature Not Supported, not Item Not Found (the
    template exists)."""
    from kcm.kmip.payloads import CreateRequest

    template = Item(Tag.TEMPLATE, ItemType.STRUCTURE, [Item(Tag.ATTRIBUTE, ItemType.STRUCTURE, [
        Item(Tag.ATTRIBUTE_NAME, ItemType.TEXT_STRING, "Cryptographic Length"),
        Item(Tag.ATTRIBUTE_VALUE, ItemType.INTEGER, 128)])])
    uid = register(core, template, [name("tmpl1")], object_type=ObjectType.TEMPLATE,
                   version=V14)
    assert locate(core, name("tmpl1"), version=V14).unique_identifiers == [uid]
    named = [Name(value="tmpl1", type=NameType.UNINTERPRETED_TEXT_STRING)]
    key = register(core, version=V14)
    for operation, payload in (
            (Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                             attributes=[], template_names=named)),
            (Operation.REGISTER, RegisterRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                                 attributes=[], object=aes_key(),
                                                 template_names=named)),
            (Operation.RE_KEY, ReKeyRequest(unique_identifier=key, attributes=[],
                                            template_names=named))):
        message = failed(core, operation, payload, ResultReason.FEATURE_NOT_SUPPORTED,
                         version=V14)
        assert message == "templates are kept but not applied: send the attributes instead"


@pytest.mark.parametrize("version", [V14, V21])
def test_register_keeps_the_random_number_generator_the_client_names(
        core: CoreHarness, version) -> None:
    """An object registered was made elsewhere: its Random Number Generator is the
    client's to give (1.4 §3.44, TC-RNG-ATTR-1-14), once, with its RNG Algorithm."""
    drbg = Attribute(Tag.RANDOM_NUMBER_GENERATOR, Item(
        Tag.RANDOM_NUMBER_GENERATOR, ItemType.STRUCTURE,
        [Item(Tag.RNG_ALGORITHM, ItemType.ENUMERATION, 3)]))  # DRBG
    uid = register(core, attributes=[drbg], version=version)
    [fields] = attributes_of(core, uid, Tag.RANDOM_NUMBER_GENERATOR)[
        Tag.RANDOM_NUMBER_GENERATOR]
    assert [(f.tag, f.value) for f in fields] == [(Tag.RNG_ALGORITHM, 3)]
    empty = Attribute(Tag.RANDOM_NUMBER_GENERATOR, Item(
        Tag.RANDOM_NUMBER_GENERATOR, ItemType.STRUCTURE, []))
    for refused in ([drbg, drbg], [empty]):
        failed(core, Operation.REGISTER, RegisterRequest(
            object_type=ObjectType.SYMMETRIC_KEY, attributes=refused, object=aes_key()),
            ResultReason.INVALID_FIELD, version=version)


@pytest.mark.parametrize("version", [V14, V21])
def test_register_symmetric_key_then_get(core: CoreHarness, version) -> None:
    uid = register(core, aes_key(), [name("reg")], version=version)
    assert row(core, uid).state == State.PRE_ACTIVE
    payload = ok(core, Operation.GET, GetRequest(unique_identifier=uid), version=version)
    assert payload.object_type == ObjectType.SYMMETRIC_KEY
    assert payload.object.key_block.key_bytes == KEY
    assert payload.object.key_block.cryptographic_length == 128
    stored = row(core, uid)
    assert KEY not in stored.material  # stored only wrapped
    assert stored.cryptographic_algorithm == CryptographicAlgorithm.AES


def test_register_with_past_activation_date_is_active(core: CoreHarness) -> None:
    uid = register(core, aes_key(), [PAST])
    assert row(core, uid).state == State.ACTIVE


#: A 2048-bit RSA public key in PKCS#1 DER (material said to be RSA must be one).
_PUBLIC_PKCS1 = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(
).public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)


def test_register_secret_data_opaque_and_raw_objects(core: CoreHarness) -> None:
    secret = SecretData(secret_data_type=SecretDataType.PASSWORD, key_block=KeyBlock(
        key_format_type=KeyFormatType.OPAQUE, key_value=KeyValue(key_material=b"password")))
    opaque = OpaqueObject(opaque_data_type=0x80000001, opaque_data_value=b"\x01\x02\x03")
    public = Item(Tag.PUBLIC_KEY, ItemType.STRUCTURE, [Item(Tag.KEY_BLOCK, ItemType.STRUCTURE, [
        Item(Tag.KEY_FORMAT_TYPE, ItemType.ENUMERATION, int(KeyFormatType.PKCS_1)),
        Item(Tag.KEY_VALUE, ItemType.STRUCTURE, [
            Item(Tag.KEY_MATERIAL, ItemType.BYTE_STRING, _PUBLIC_PKCS1)]),
        Item(Tag.CRYPTOGRAPHIC_ALGORITHM, ItemType.ENUMERATION,
                 int(CryptographicAlgorithm.RSA)),
        Item(Tag.CRYPTOGRAPHIC_LENGTH, ItemType.INTEGER, 2048)])])
    for obj, object_type in ((secret, ObjectType.SECRET_DATA),
                             (opaque, ObjectType.OPAQUE_OBJECT),
                             (public, ObjectType.PUBLIC_KEY)):
        for version in (V14, V21):
            uid = register(core, obj, object_type=object_type, version=version)
            got = ok(core, Operation.GET, GetRequest(unique_identifier=uid), version=version)
            assert got.object_type == object_type
            assert got.object == obj
    uid = register(core, public, object_type=ObjectType.PUBLIC_KEY)
    assert attributes_of(core, uid, Tag.CRYPTOGRAPHIC_ALGORITHM, Tag.CRYPTOGRAPHIC_LENGTH) == {
        Tag.CRYPTOGRAPHIC_ALGORITHM: [CryptographicAlgorithm.RSA],
        Tag.CRYPTOGRAPHIC_LENGTH: [2048]}


def test_register_refuses_bad_input(core: CoreHarness) -> None:
    request = RegisterRequest(object_type=ObjectType.SECRET_DATA, attributes=[], object=aes_key())
    assert "does not match" in failed(core, Operation.REGISTER, request,
                                      ResultReason.INVALID_FIELD)
    short = aes_key()
    short.key_block.key_value.key_material = b"\x00" * 10  # 80 bits, said to be 128
    request = RegisterRequest(object_type=ObjectType.SYMMETRIC_KEY, attributes=[], object=short)
    assert "does not match" in failed(core, Operation.REGISTER, request,
                                      ResultReason.INVALID_FIELD)
    contradicting = [Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256)]
    request = RegisterRequest(object_type=ObjectType.SYMMETRIC_KEY, attributes=contradicting,
                              object=aes_key())
    failed(core, Operation.REGISTER, request, ResultReason.INVALID_FIELD)
    read_only = [Attribute.of(Tag.STATE, State.ACTIVE)]
    request = RegisterRequest(object_type=ObjectType.SYMMETRIC_KEY, attributes=read_only,
                              object=aes_key())
    failed(core, Operation.REGISTER, request, ResultReason.ATTRIBUTE_READ_ONLY)
    failed(core, Operation.REGISTER, request, ResultReason.PERMISSION_DENIED, version=V14)


def test_register_sets_the_id_placeholder(core: CoreHarness) -> None:
    request = RegisterRequest(object_type=ObjectType.SYMMETRIC_KEY, attributes=[],
                              object=aes_key())
    response = send(core, (Operation.REGISTER, request), (Operation.GET, GetRequest()))
    first, second = response.batch_items
    assert second.result_status == ResultStatus.SUCCESS
    assert second.response_payload.unique_identifier == first.response_payload.unique_identifier


# -- Get --------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [V14, V21])
def test_get_converts_between_raw_and_transparent(core: CoreHarness, version) -> None:
    uid = register(core, aes_key(fmt=KeyFormatType.TRANSPARENT_SYMMETRIC_KEY), version=version)
    raw = ok(core, Operation.GET, GetRequest(unique_identifier=uid,
                                             key_format_type=KeyFormatType.RAW), version=version)
    assert raw.object.key_block.key_format_type == KeyFormatType.RAW
    assert raw.object.key_block.key_value.key_material == KEY
    same = ok(core, Operation.GET, GetRequest(unique_identifier=uid), version=version)
    assert same.object.key_block.key_format_type == KeyFormatType.TRANSPARENT_SYMMETRIC_KEY
    failed(core, Operation.GET, GetRequest(unique_identifier=uid,
                                           key_format_type=KeyFormatType.PKCS_8),
           ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED, version=version)


@pytest.mark.parametrize("version", [(1, 0), V14, V21])
def test_get_returns_key_bytes_in_opaque_format(core: CoreHarness, version) -> None:
    """A storage array's Get of a Raw key in Opaque format (KMIP 1.4 §9.1.3.2.3): the
    same bytes; and back from Opaque to Raw and Transparent Symmetric Key."""
    uid = register(core, version=version)
    opaque = ok(core, Operation.GET, GetRequest(unique_identifier=uid,
                                                key_format_type=KeyFormatType.OPAQUE),
                version=version)
    assert opaque.object.key_block.key_format_type == KeyFormatType.OPAQUE
    assert opaque.object.key_block.key_value.key_material == KEY
    stored_opaque = register(core, SymmetricKey(key_block=KeyBlock(
        key_format_type=KeyFormatType.OPAQUE, key_value=KeyValue(key_material=KEY),
        cryptographic_algorithm=CryptographicAlgorithm.AES,
        cryptographic_length=len(KEY) * 8)), version=version)
    for fmt in (KeyFormatType.RAW, KeyFormatType.TRANSPARENT_SYMMETRIC_KEY):
        got = ok(core, Operation.GET, GetRequest(unique_identifier=stored_opaque,
                                                 key_format_type=fmt), version=version)
        assert got.object.key_block.key_format_type == fmt
        assert got.object.key_block.key_bytes == KEY


def test_get_of_a_destroyed_object_per_version(core: CoreHarness) -> None:
    uid = register(core)
    ok(core, Operation.DESTROY, DestroyRequest(unique_identifier=uid))
    failed(core, Operation.GET, GetRequest(unique_identifier=uid), ResultReason.OBJECT_DESTROYED)
    failed(core, Operation.GET, GetRequest(unique_identifier=uid), ResultReason.ITEM_NOT_FOUND,
           version=V14)


def test_get_of_a_missing_object(core: CoreHarness) -> None:
    failed(core, Operation.GET, GetRequest(unique_identifier="nope"),
           ResultReason.OBJECT_NOT_FOUND)
    failed(core, Operation.GET, GetRequest(unique_identifier="nope"), ResultReason.ITEM_NOT_FOUND,
           version=V14)
    failed(core, Operation.GET, GetRequest(), ResultReason.MISSING_DATA)


def _wrap_spec(kek_uid: str, **kwargs) -> KeyWrappingSpecification:
    return KeyWrappingSpecification(
        wrapping_method=WrappingMethod.ENCRYPT,
        encryption_key_information=EncryptionKeyInformation(unique_identifier=kek_uid), **kwargs)


@pytest.mark.parametrize("version", [V14, V21])
def test_get_wraps_with_a_tenant_key(core: CoreHarness, version) -> None:
    kek_uid = register(core, aes_key(KEK), [WRAP_MASK, PAST], version=version)
    uid = register(core, aes_key(), version=version)
    payload = ok(core, Operation.GET, GetRequest(unique_identifier=uid,
                                                 key_wrapping_specification=_wrap_spec(kek_uid)),
                 version=version)
    block = payload.object.key_block
    assert block.key_wrapping_data.encryption_key_information.unique_identifier == kek_uid
    # TTLV Encoding (the default): the wrapped bytes are the encoded Key Value structure.
    key_value = KeyValue.from_item(decode(keywrap.aes_key_unwrap(KEK, block.key_value)))
    assert key_value.key_material == KEY

    from kcm.kmip.enums import EncodingOption
    bare = ok(core, Operation.GET, GetRequest(unique_identifier=uid, key_wrapping_specification=(
        _wrap_spec(kek_uid, encoding_option=EncodingOption.NO_ENCODING))), version=version)
    wrapped = bare.object.key_block.key_value
    wrapped = wrapped.key_material if version < (2, 0) else wrapped
    assert keywrap.aes_key_unwrap(KEK, wrapped) == KEY


def test_get_wrapping_key_must_be_fit(core: CoreHarness) -> None:
    uid = register(core)
    no_wrap_usage = register(core, aes_key(KEK), [
        Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, CryptographicUsageMask.ENCRYPT), PAST])
    pre_active = register(core, aes_key(KEK), [WRAP_MASK])
    for kek_uid, reason, version in (
            (no_wrap_usage, ResultReason.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK, V21),
            (no_wrap_usage, ResultReason.PERMISSION_DENIED, V14),
            (pre_active, ResultReason.WRONG_KEY_LIFECYCLE_STATE, V21),
            ("missing", ResultReason.WRAPPING_OBJECT_NOT_FOUND, V21),
            ("missing", ResultReason.ITEM_NOT_FOUND, V14)):
        failed(core, Operation.GET, GetRequest(unique_identifier=uid,
                                               key_wrapping_specification=_wrap_spec(kek_uid)),
               reason, version=version)
    other_kek = register(core, aes_key(KEK), [WRAP_MASK, PAST],
                         principal=service_principal("other"))
    failed(core, Operation.GET, GetRequest(unique_identifier=uid,
                                           key_wrapping_specification=_wrap_spec(other_kek)),
           ResultReason.WRAPPING_OBJECT_NOT_FOUND)


def test_a_wrapping_key_is_judged_by_its_dates(core: CoreHarness) -> None:
    """Wrapping is applying protection: not with a key past its Protect Stop Date;
    unwrapping is processing: not with one before its Process Start Date (KMIP 2.1 §4.44,
    4.45). Encrypt and Decrypt were refused so, but a Get wrapped under such a key was not."""
    now = int(time.time())
    both = Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK,
                        CryptographicUsageMask.WRAP_KEY | CryptographicUsageMask.UNWRAP_KEY)
    uid = register(core)
    stopped = register(core, aes_key(KEK), [both, PAST,
                                           Attribute.of(Tag.PROTECT_STOP_DATE, now - 3600)])
    for version, reason in ((V21, ResultReason.WRONG_KEY_LIFECYCLE_STATE),
                            (V14, ResultReason.PERMISSION_DENIED)):
        failed(core, Operation.GET, GetRequest(unique_identifier=uid,
                                               key_wrapping_specification=_wrap_spec(stopped)),
               reason, version=version)
    # A KEK whose Process Start Date is ahead wraps (protects), but does not unwrap.
    kek = register(core, aes_key(KEK), [both, PAST,
                                       Attribute.of(Tag.PROCESS_START_DATE, now + 3600)])
    wrapped = ok(core, Operation.GET, GetRequest(
        unique_identifier=uid, key_wrapping_specification=_wrap_spec(kek))).object
    copy = register(core, wrapped)
    failed(core, Operation.GET, GetRequest(unique_identifier=copy,
                                           key_wrap_type=KeyWrapType.NOT_WRAPPED),
           ResultReason.WRONG_KEY_LIFECYCLE_STATE)


def test_get_sensitive_and_not_extractable(core: CoreHarness) -> None:
    sensitive = register(core, attributes=[Attribute.of(Tag.SENSITIVE, True)])
    failed(core, Operation.GET, GetRequest(unique_identifier=sensitive), ResultReason.SENSITIVE)
    kek_uid = register(core, aes_key(KEK), [WRAP_MASK, PAST])
    ok(core, Operation.GET, GetRequest(unique_identifier=sensitive,
                                       key_wrapping_specification=_wrap_spec(kek_uid)))
    sealed = register(core, attributes=[Attribute.of(Tag.EXTRACTABLE, False)])
    failed(core, Operation.GET, GetRequest(unique_identifier=sealed), ResultReason.NOT_EXTRACTABLE)


def test_get_is_tenant_scoped(core: CoreHarness) -> None:
    uid = register(core)
    for version, reason in ((V14, ResultReason.ITEM_NOT_FOUND),
                            (V21, ResultReason.OBJECT_NOT_FOUND)):
        failed(core, Operation.GET, GetRequest(unique_identifier=uid), reason, version=version,
               principal=service_principal("other"))


def test_hierarchy_key_material_never_leaves_through_get(core: CoreHarness) -> None:
    l3 = core.store.run_sync(lambda s: repository.find_l3(s, "demo", "app"))[0].uid
    l2 = core.store.run_sync(lambda s: repository.find_l2(s, "demo")).uid
    for uid in (l2, l3):
        for principal in (service_principal(), admin_principal()):
            for version in (V14, V21):
                failed(core, Operation.GET, GetRequest(unique_identifier=uid),
                       ResultReason.PERMISSION_DENIED, version=version, principal=principal)


def test_hierarchy_keys_protect_nothing_for_a_client(core: CoreHarness) -> None:
    """The tenant key (L2) is no client's: it encrypts, decrypts, MACs and wraps nothing,
    for an application or its administrator."""
    from kcm.kmip.payloads import CheckRequest, DecryptRequest, EncryptRequest
    from kcm.kmip.payloads.mac_hash_rng import MacRequest

    l2 = core.store.run_sync(lambda s: repository.find_l2(s, "demo")).uid
    mine = register(core)
    for principal in (service_principal(), admin_principal()):
        for operation, payload in (
                (Operation.ENCRYPT, EncryptRequest(unique_identifier=l2, data=b"x" * 16)),
                (Operation.DECRYPT, DecryptRequest(unique_identifier=l2, data=b"x" * 32)),
                (Operation.MAC, MacRequest(unique_identifier=l2, data=b"x" * 16)),
                (Operation.CHECK, CheckRequest(unique_identifier=l2)),
                (Operation.GET, GetRequest(unique_identifier=mine,
                                           key_wrapping_specification=_wrap_spec(l2)))):
            message = failed(core, operation, payload, ResultReason.PERMISSION_DENIED,
                             principal=principal)
            assert message == "tenant keys are not for client use", (operation, message)

def test_get_clears_fresh(core: CoreHarness) -> None:
    uid = register(core, attributes=[Attribute.of(Tag.FRESH, True)])
    assert attributes_of(core, uid, Tag.FRESH) == {Tag.FRESH: [True]}
    ok(core, Operation.GET, GetRequest(unique_identifier=uid))
    assert attributes_of(core, uid, Tag.FRESH) == {Tag.FRESH: [False]}


# -- Locate -----------------------------------------------------------------------------

@pytest.mark.parametrize("version", [V14, V21])
def test_locate_by_name_and_type(core: CoreHarness, version) -> None:
    uid = register(core, attributes=[name("findme")], version=version)
    register(core, attributes=[name("other")], version=version)
    found = locate(core, Attribute.of(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY), name("findme"),
                   version=version)
    assert found.unique_identifiers == [uid]
    assert found.located_items is None
    assert locate(core, name("nobody"), version=version).unique_identifiers == []


def test_locate_copies_follow_every_save(core: CoreHarness) -> None:
    """A save rewrites the store's Name and Object Group copies only when they changed;
    whether it did or not, Locate finds what the attributes say, and a state change moves
    the row's revision once."""
    group = Attribute.of(Tag.OBJECT_GROUP, "g")
    uid = register(core, attributes=[name("keep"), group])
    before = row(core, uid).revision
    ok(core, Operation.ACTIVATE, ActivateRequest(unique_identifier=uid))
    stored = row(core, uid)
    assert (stored.state, stored.revision) == (State.ACTIVE, before + 1)
    assert locate(core, name("keep")).unique_identifiers == [uid]
    assert locate(core, group).unique_identifiers == [uid]
    assert locate(core, Attribute.of(Tag.STATE, State.ACTIVE)).unique_identifiers == [uid]
    ok(core, Operation.MODIFY_ATTRIBUTE, ModifyAttributeRequest(
        unique_identifier=uid, attribute=name("renamed")), version=V14)
    assert locate(core, name("keep")).unique_identifiers == []
    assert locate(core, name("renamed")).unique_identifiers == [uid]
    assert locate(core, group).unique_identifiers == [uid]
    ok(core, Operation.DELETE_ATTRIBUTE, DeleteAttributeRequest(
        unique_identifier=uid, attribute_reference=AttributeReference(Tag.OBJECT_GROUP)))
    assert locate(core, group).unique_identifiers == []
    assert locate(core, name("renamed")).unique_identifiers == [uid]
    assert core.store.run_sync(lambda s: (repository.names_of(s, uid),
                                          repository.groups_of(s, uid))) == (
        [("renamed", NameType.UNINTERPRETED_TEXT_STRING)], [])


def test_locate_filters(core: CoreHarness) -> None:
    both = Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK,
                        CryptographicUsageMask.ENCRYPT | CryptographicUsageMask.DECRYPT)
    enc = register(core, attributes=[both, PAST, Attribute.of(Tag.OBJECT_GROUP, "g1")])
    big = register(core, aes_key(KEK))
    mask = Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, CryptographicUsageMask.ENCRYPT)
    assert locate(core, mask).unique_identifiers == [enc]
    assert locate(core, Attribute.of(Tag.STATE, State.ACTIVE)).unique_identifiers == [enc]
    assert locate(core, Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256)).unique_identifiers == [big]
    assert locate(core, Attribute.of(Tag.OBJECT_GROUP, "g1")).unique_identifiers == [enc]
    assert locate(core, Attribute.of(Tag.UNIQUE_IDENTIFIER, big)).unique_identifiers == [big]
    # One date value matches that date; two are an inclusive range.
    assert locate(core, PAST).unique_identifiers == [enc]
    now = int(time.time())
    in_range = locate(core, Attribute.of(Tag.INITIAL_DATE, now - 60),
                      Attribute.of(Tag.INITIAL_DATE, now + 60))
    assert in_range.unique_identifiers == [big, enc]  # newest first
    assert locate(core, Attribute.of(Tag.INITIAL_DATE, now + 60),
                  Attribute.of(Tag.INITIAL_DATE, now + 120)).unique_identifiers == []


def test_locate_by_usage_mask_is_judged_and_counted_by_the_store(core: CoreHarness) -> None:
    """The store keeps a copy of each object's Cryptographic Usage Mask (migration 0007)
    and judges a Locate by it (every requested bit set), counting the matches too. A mask
    that is not an Integer is Invalid Field."""
    enc, dec = CryptographicUsageMask.ENCRYPT, CryptographicUsageMask.DECRYPT
    both = register(core, attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, enc | dec)])
    only_enc = register(core, attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, enc)])
    assert (row(core, both).cryptographic_usage_mask,
            row(core, only_enc).cryptographic_usage_mask) == (enc | dec, enc)

    def mask(bits: int) -> Attribute:
        return Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, bits)

    assert locate(core, mask(enc)).unique_identifiers == [only_enc, both]
    assert locate(core, mask(enc | dec)).unique_identifiers == [both]
    counted = locate(core, mask(enc), offset_items=0, maximum_items=1, version=V14)
    assert (counted.unique_identifiers, counted.located_items) == ([only_enc], 2)

    assert locate(core, mask(dec)).unique_identifiers == [both]
    # The mask is set at creation only (attribute_rules): a change is refused, the copy kept.
    failed(core, Operation.MODIFY_ATTRIBUTE, ModifyAttributeRequest(
        unique_identifier=only_enc, attribute=mask(dec)), ResultReason.PERMISSION_DENIED,
        version=V14)
    assert row(core, only_enc).cryptographic_usage_mask == enc

    text_mask = Attribute(Tag.CRYPTOGRAPHIC_USAGE_MASK,
                          Item(Tag.CRYPTOGRAPHIC_USAGE_MASK, ItemType.TEXT_STRING, "Encrypt"))
    failed(core, Operation.LOCATE, LocateRequest(attributes=[text_mask]),
           ResultReason.INVALID_FIELD)


def _structure(tag: int, *fields: Item) -> Attribute:
    """A structure-valued criterion with only ``fields`` (a partial Link, Name, ...)."""
    return Attribute(tag, Item(tag, ItemType.STRUCTURE, list(fields)))


@pytest.mark.parametrize("version", [V14, V21])
def test_locate_matches_structures_field_by_field(core: CoreHarness, version) -> None:
    """1.4 §4.9, 2.1 §6.1.27: a field the criterion leaves out matches anything."""
    parent = register(core, version=version)
    child = register(core, attributes=[name("child"), Attribute.of(Tag.LINK, Link(
        link_type=LinkType.PARENT_LINK, linked_object_identifier=parent))], version=version)
    register(core, attributes=[name("other")], version=version)
    only_id = _structure(Tag.LINK, Item(Tag.LINKED_OBJECT_IDENTIFIER, ItemType.TEXT_STRING,
                                        parent))
    assert locate(core, only_id, version=version).unique_identifiers == [child]
    only_type = _structure(Tag.LINK, Item(Tag.LINK_TYPE, ItemType.ENUMERATION,
                                          int(LinkType.PARENT_LINK)))
    assert locate(core, only_type, version=version).unique_identifiers == [child]
    other_type = _structure(Tag.LINK, Item(Tag.LINK_TYPE, ItemType.ENUMERATION,
                                           int(LinkType.CHILD_LINK)))
    assert locate(core, other_type, version=version).unique_identifiers == []
    # Fields in another order than the object's still match.
    reordered = _structure(
        Tag.LINK, Item(Tag.LINKED_OBJECT_IDENTIFIER, ItemType.TEXT_STRING, parent),
        Item(Tag.LINK_TYPE, ItemType.ENUMERATION, int(LinkType.PARENT_LINK)))
    assert locate(core, reordered, version=version).unique_identifiers == [child]
    name_value = _structure(Tag.NAME, Item(Tag.NAME_VALUE, ItemType.TEXT_STRING, "child"))
    assert locate(core, name_value, version=version).unique_identifiers == [child]
    name_type = _structure(Tag.NAME, Item(Tag.NAME_TYPE, ItemType.ENUMERATION,
                                          int(NameType.UNINTERPRETED_TEXT_STRING)))
    assert len(locate(core, name_type, version=version).unique_identifiers) == 2
    wrong_name_type = _structure(Tag.NAME, Item(Tag.NAME_VALUE, ItemType.TEXT_STRING, "child"),
                                 Item(Tag.NAME_TYPE, ItemType.ENUMERATION, int(NameType.URI)))
    assert locate(core, wrong_name_type, version=version).unique_identifiers == []


def _vendor(name: str, item_type: ItemType, value: object) -> Attribute:
    return Attribute.vendor("x", name, Item(Tag.ATTRIBUTE_VALUE, item_type, value))


def test_locate_by_link_or_vendor_attribute_reads_only_the_objects_that_have_it(
        core: CoreHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store keys each object's Links and scalar vendor attributes (migration 0008):
    a Locate naming one decodes only the objects that have that key, not every object of
    the tenant, and still judges those in full. The keys follow every save."""
    from kcm.core.operations import locate as locate_module

    decoded: list[int] = []
    real_decode = locate_module.decode_attributes

    def counting(blob):
        decoded.append(1)
        return real_decode(blob)

    monkeypatch.setattr(locate_module, "decode_attributes", counting)

    def found(*criteria: Attribute, version=V21) -> tuple[list[str], int]:
        decoded.clear()
        return locate(core, *criteria, version=version).unique_identifiers, len(decoded)

    parent = register(core)
    long_text = "v" * 5000  # keyed by its digest
    child = register(core, attributes=[
        Attribute.of(Tag.LINK, Link(link_type=LinkType.PARENT_LINK,
                                    linked_object_identifier=parent)),
        _vendor("colour", ItemType.TEXT_STRING, "blue"),
        _vendor("size", ItemType.INTEGER, 5),
        _vendor("blob", ItemType.BYTE_STRING, b"\x00\x01"),
        _vendor("long", ItemType.TEXT_STRING, long_text)])
    for _ in range(20):
        register(core, attributes=[_vendor("colour", ItemType.TEXT_STRING, "red")])
    only_id = _structure(Tag.LINK, Item(Tag.LINKED_OBJECT_IDENTIFIER, ItemType.TEXT_STRING,
                                        parent))
    assert found(only_id) == ([child], 1)
    for version in (V14, V21):
        assert found(_vendor("colour", ItemType.TEXT_STRING, "blue"), version=version) == (
            [child], 1)
    assert found(_vendor("size", ItemType.INTEGER, 5)) == ([child], 1)
    assert found(_vendor("blob", ItemType.BYTE_STRING, b"\x00\x01")) == ([child], 1)
    assert found(_vendor("long", ItemType.TEXT_STRING, long_text)) == ([child], 1)
    # Equal only in the same type: the Text String "5" is not the Integer 5.
    assert found(_vendor("size", ItemType.TEXT_STRING, "5")) == ([], 0)
    assert found(_vendor("colour", ItemType.TEXT_STRING, "green")) == ([], 0)
    # Both criteria must match: the store keeps the objects with both keys.
    assert found(only_id, _vendor("colour", ItemType.TEXT_STRING, "red")) == ([], 0)
    reds, read = found(_vendor("colour", ItemType.TEXT_STRING, "red"))
    assert (len(reds), read) == (20, 20)
    # A criterion with no key (a Link Type alone) is judged on every object, as before.
    only_type = _structure(Tag.LINK, Item(Tag.LINK_TYPE, ItemType.ENUMERATION,
                                          int(LinkType.PARENT_LINK)))
    assert found(only_type)[0] == [child]

    # The keys follow every change of the attributes.
    ok(core, Operation.MODIFY_ATTRIBUTE, ModifyAttributeRequest(
        unique_identifier=child, attribute=_vendor("colour", ItemType.TEXT_STRING, "green")),
       version=V14)
    assert found(_vendor("colour", ItemType.TEXT_STRING, "blue")) == ([], 0)
    assert found(_vendor("colour", ItemType.TEXT_STRING, "green")) == ([child], 1)
    ok(core, Operation.DELETE_ATTRIBUTE, DeleteAttributeRequest(
        unique_identifier=child, attribute_reference=AttributeReference(Tag.LINK)))
    assert found(only_id) == ([], 0)
    ok(core, Operation.ADD_ATTRIBUTE, AddAttributeRequest(
        unique_identifier=parent, attribute=Attribute.of(Tag.LINK, Link(
            link_type=LinkType.CHILD_LINK, linked_object_identifier=child))), version=V14)
    to_child = _structure(Tag.LINK, Item(Tag.LINKED_OBJECT_IDENTIFIER, ItemType.TEXT_STRING,
                                         child))
    assert found(to_child) == ([parent], 1)
    keys = core.store.run_sync(lambda s: sorted(s.execute(select(
        ObjectAttributeKey.uid, ObjectAttributeKey.kind)).all()))
    assert sorted(kind for uid, kind in keys if uid == child) == [
        "v:x:blob", "v:x:colour", "v:x:long", "v:x:size"]
    assert [kind for uid, kind in keys if uid == parent] == ["Link"]


USAGE_LIMITS_OBJECT = 0x2  # the Usage Limits Unit "Object"


def _usage_limits(total: int, count: int | None = None) -> Attribute:
    fields = [Item(Tag.USAGE_LIMITS_TOTAL, ItemType.LONG_INTEGER, total)]
    if count is not None:
        fields.append(Item(Tag.USAGE_LIMITS_COUNT, ItemType.LONG_INTEGER, count))
    fields.append(Item(Tag.USAGE_LIMITS_UNIT, ItemType.ENUMERATION, USAGE_LIMITS_OBJECT))
    return _structure(Tag.USAGE_LIMITS, *fields)


@pytest.mark.parametrize("version", [V14, V21])
def test_locate_usage_limits_match_at_least_the_limits_asked(core: CoreHarness,
                                                            version) -> None:
    """2.1 §6.1.27: Usage Limits Count and Total equal to or larger than those requested."""
    hundred = register(core, attributes=[_usage_limits(100, 100)], version=version)
    ten = register(core, attributes=[_usage_limits(10, 10)], version=version)
    assert locate(core, _usage_limits(5, 5), version=version).unique_identifiers == [ten, hundred]
    assert locate(core, _usage_limits(50), version=version).unique_identifiers == [hundred]
    assert locate(core, _usage_limits(100, 100), version=version).unique_identifiers == [hundred]
    assert locate(core, _usage_limits(101), version=version).unique_identifiers == []


LARGEST_DATE = (1 << 63) - 1


@pytest.mark.parametrize("version", [V14, V21])
def test_locate_largest_date_stands_for_an_undefined_date(core: CoreHarness, version) -> None:
    """2.1 §6.1.27: a date criterion of the largest Date-Time is a date not defined."""
    now = int(time.time())
    open_ended = register(core, version=version)
    ending = register(core, attributes=[Attribute.of(Tag.DEACTIVATION_DATE, now + 3600)],
                      version=version)
    largest = Attribute.of(Tag.DEACTIVATION_DATE, LARGEST_DATE)
    assert locate(core, largest, version=version).unique_identifiers == [open_ended]
    # A range up to it takes in the objects without the date, and those within it.
    after_now = locate(core, Attribute.of(Tag.DEACTIVATION_DATE, now), largest, version=version)
    assert after_now.unique_identifiers == [ending, open_ended]
    later = locate(core, Attribute.of(Tag.DEACTIVATION_DATE, now + 7200), largest,
                   version=version)
    assert later.unique_identifiers == [open_ended]
    # An ordinary range still needs the date.
    bounded = locate(core, Attribute.of(Tag.DEACTIVATION_DATE, now),
                     Attribute.of(Tag.DEACTIVATION_DATE, now + 7200), version=version)
    assert bounded.unique_identifiers == [ending]


def test_locate_pages_and_counts(core: CoreHarness) -> None:
    uids = [register(core, attributes=[Attribute.of(Tag.OBJECT_GROUP, "page")]) for _ in range(5)]
    group = Attribute.of(Tag.OBJECT_GROUP, "page")
    first = locate(core, group, maximum_items=2)
    assert first.unique_identifiers == uids[::-1][:2]
    assert first.located_items is None
    page = locate(core, group, maximum_items=2, offset_items=2, version=V14)
    assert page.unique_identifiers == uids[::-1][2:4]
    assert page.located_items == 5
    failed(core, Operation.LOCATE, LocateRequest(maximum_items=-1), ResultReason.INVALID_FIELD)


def test_locate_sets_the_id_placeholder_for_one_result(core: CoreHarness) -> None:
    uid = register(core, attributes=[name("single")])
    response = send(core, (Operation.LOCATE, LocateRequest(attributes=[name("single")])),
                    (Operation.GET, GetRequest()))
    assert response.batch_items[1].response_payload.unique_identifier == uid
    register(core, attributes=[name("twice"), Attribute.of(Tag.OBJECT_GROUP, "t")])
    register(core, attributes=[Attribute.of(Tag.OBJECT_GROUP, "t")])
    response = send(core, (Operation.LOCATE, LocateRequest(
        attributes=[Attribute.of(Tag.OBJECT_GROUP, "t")])), (Operation.GET, GetRequest()))
    assert response.batch_items[1].result_reason == ResultReason.MISSING_DATA


def test_locate_id_placeholder_follows_maximum_items(core: CoreHarness) -> None:
    """KMIP 1.4 §4.9: one identifier returned is copied, but when several objects matched
    and Maximum Items was omitted or above one, the placeholder is emptied."""
    group = Attribute.of(Tag.OBJECT_GROUP, "m")
    uids = [register(core, attributes=[group]) for _ in range(3)]
    # Maximum Items 1 over three matches: the one returned (the newest) is copied.
    response = send(core, (Operation.LOCATE, LocateRequest(attributes=[group],
                                                           maximum_items=1)),
                    (Operation.GET, GetRequest()))
    assert response.batch_items[1].response_payload.unique_identifier == uids[-1]
    # A last page of one, without Maximum Items: three matched, so it is emptied.
    for maximum in (None, 5):
        response = send(core, (Operation.LOCATE, LocateRequest(
            attributes=[group], offset_items=2, maximum_items=maximum)),
            (Operation.GET, GetRequest()))
        assert response.batch_items[0].response_payload.unique_identifiers == [uids[0]]
        assert response.batch_items[1].result_reason == ResultReason.MISSING_DATA


def test_locate_storage_status_and_destroyed_objects(core: CoreHarness) -> None:
    uid = register(core, attributes=[name("gone")])
    ok(core, Operation.DESTROY, DestroyRequest(unique_identifier=uid))
    assert locate(core, name("gone")).unique_identifiers == []
    assert locate(core, name("gone"), version=V14).unique_identifiers == []
    found = locate(core, name("gone"), storage_status_mask=StorageStatusMask.DESTROYED_STORAGE)
    assert found.unique_identifiers == [uid]
    archived = locate(core, name("gone"), storage_status_mask=StorageStatusMask.ARCHIVAL_STORAGE)
    assert archived.unique_identifiers == []


def test_locate_is_tenant_scoped_and_hides_hierarchy_from_applications(core: CoreHarness) -> None:
    register(core, attributes=[name("mine")])
    assert locate(core, name("mine"), principal=service_principal("other")).unique_identifiers \
        == []
    l3_name = name(service_key_name("demo", "app"))
    assert locate(core, l3_name).unique_identifiers == []
    assert len(locate(core, l3_name, principal=admin_principal()).unique_identifiers) == 1
    everything = locate(core, principal=service_principal()).unique_identifiers
    assert len(everything) == 1  # the application's own ordinary object only
    # Another tenant's application of the same service name finds none of them, by no
    # criterion at all, by one the store judges, or counted (Located Items).
    stranger = service_principal("other")
    assert locate(core, principal=stranger).unique_identifiers == []
    by_type = Attribute.of(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY)
    assert locate(core, by_type, principal=stranger).unique_identifiers == []
    counted = locate(core, by_type, offset_items=0, version=V14, principal=stranger)
    assert (counted.unique_identifiers, counted.located_items) == ([], 0)
    theirs = locate(core, principal=admin_principal("other")).unique_identifiers
    assert len(theirs) == 2 and everything[0] not in theirs  # its own L2 and L3 only


# -- Re-key -----------------------------------------------------------------------------

@pytest.mark.parametrize("version", [V14, V21])
def test_re_key_replaces_and_links(core: CoreHarness, version) -> None:
    old = register(core, attributes=[name("rotating"), PAST,
                                     Attribute.of(Tag.CONTACT_INFORMATION, "ops")],
                   version=version)
    new = ok(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=old),
             version=version).unique_identifier
    assert new != old
    got = attributes_of(core, new, Tag.NAME, Tag.LINK, Tag.STATE, Tag.CONTACT_INFORMATION,
                        Tag.CRYPTOGRAPHIC_LENGTH, Tag.ACTIVATION_DATE)
    assert [n.value for n in got[Tag.NAME]] == ["rotating"]
    assert got[Tag.LINK] == [Link(link_type=LinkType.REPLACED_OBJECT_LINK,
                                  linked_object_identifier=old)]
    assert got[Tag.STATE] == [State.ACTIVE]  # Activation Date copied (no Offset)
    assert got[Tag.CONTACT_INFORMATION] == ["ops"]
    assert got[Tag.CRYPTOGRAPHIC_LENGTH] == [128]
    previous = attributes_of(core, old, Tag.NAME, Tag.LINK, Tag.STATE)
    assert Tag.NAME not in previous
    assert previous[Tag.LINK] == [Link(link_type=LinkType.REPLACEMENT_OBJECT_LINK,
                                       linked_object_identifier=new)]
    assert previous[Tag.STATE] == [State.ACTIVE]  # the spec leaves the existing key's state
    new_key = ok(core, Operation.GET, GetRequest(unique_identifier=new)).object.key_block
    assert new_key.key_bytes != KEY and len(new_key.key_bytes) == 16
    assert locate(core, name("rotating")).unique_identifiers == [new]


@pytest.mark.parametrize("version", [V14, V21])
def test_re_key_gives_the_replacement_one_of_each_single_valued_attribute(
        core: CoreHarness, version) -> None:
    """The replacement inherited the existing key's Lease Time, Key Format Type and
    Protection Storage Mask, and the server set its own as well: two of each (three after a
    Re-key of the replacement), though each is single-valued (KMIP 1.4 §3, 2.1 §4)."""
    old = register(core, version=version)
    new = ok(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=old),
             version=version).unique_identifier
    newer = ok(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=new),
               version=version).unique_identifier
    for uid in (new, newer):
        got = attributes_of(core, uid)
        assert {Tag.LEASE_TIME, Tag.KEY_FORMAT_TYPE, Tag.PROTECTION_STORAGE_MASK} <= set(got)
        assert {Tag(tag).name: len(values) for tag, values in got.items()
                if len(values) > 1 and tag != Tag.LINK} == {}


def test_re_key_keeps_the_other_links_and_replaces_only_its_own(core: CoreHarness) -> None:
    parent, certificate = register(core), register(core)
    kept = [Link(link_type=LinkType.PARENT_LINK, linked_object_identifier=parent),
            Link(link_type=LinkType.CERTIFICATE_LINK, linked_object_identifier=certificate)]
    old = register(core, attributes=[Attribute.of(Tag.LINK, link) for link in kept])
    first = ok(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=old)).unique_identifier
    second = ok(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=old)).unique_identifier
    # Link is multi-valued: a second Re-key moves the Replacement Object Link only.
    assert attributes_of(core, old, Tag.LINK)[Tag.LINK] == [*kept, Link(
        link_type=LinkType.REPLACEMENT_OBJECT_LINK, linked_object_identifier=second)]
    for new in (first, second):
        assert attributes_of(core, new, Tag.LINK)[Tag.LINK] == [Link(
            link_type=LinkType.REPLACED_OBJECT_LINK, linked_object_identifier=old)]
    replaced = Attribute.of(Tag.LINK, Link(link_type=LinkType.REPLACED_OBJECT_LINK,
                                           linked_object_identifier=parent))
    failed(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=old, attributes=[replaced]),
           ResultReason.INVALID_FIELD)


def test_re_key_offset_and_placeholder(core: CoreHarness) -> None:
    old = register(core, attributes=[PAST, Attribute.of(Tag.DEACTIVATION_DATE, 946_771_200)])
    response = send(core, (Operation.RE_KEY, ReKeyRequest(unique_identifier=old, offset=3600)),
                    (Operation.GET, GetRequest()))
    new = response.batch_items[0].response_payload.unique_identifier
    assert response.batch_items[1].response_payload.unique_identifier == new
    got = attributes_of(core, new, Tag.ACTIVATION_DATE, Tag.DEACTIVATION_DATE, Tag.STATE,
                        Tag.INITIAL_DATE)
    activation = got[Tag.ACTIVATION_DATE][0]
    assert activation == got[Tag.INITIAL_DATE][0] + 3600
    assert got[Tag.DEACTIVATION_DATE] == [activation + 86_400]  # same distance as before
    assert got[Tag.STATE] == [State.PRE_ACTIVE]


def test_re_key_offset_of_a_key_never_activated_keeps_its_dates_apart(
        core: CoreHarness) -> None:
    """No Activation Date to measure from: the other dates keep their distance to the old
    key's Initial Date. They were copied unshifted, so a replacement activated an Offset
    ahead was deactivated before it was activated, and never usable."""
    now = int(time.time())
    old = register(core, attributes=[Attribute.of(Tag.DEACTIVATION_DATE, now + 600)])
    old_initial = attributes_of(core, old, Tag.INITIAL_DATE)[Tag.INITIAL_DATE][0]
    new = ok(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=old, offset=3600)
             ).unique_identifier
    got = attributes_of(core, new, Tag.ACTIVATION_DATE, Tag.DEACTIVATION_DATE)
    activation = got[Tag.ACTIVATION_DATE][0]
    assert got[Tag.DEACTIVATION_DATE] == [activation + (now + 600 - old_initial)]
    assert got[Tag.DEACTIVATION_DATE][0] > activation


def test_re_key_shifts_no_date_past_the_end_of_time(core: CoreHarness) -> None:
    """A Deactivation Date of "never" (the latest Date-Time) shifted by the Offset
    overflowed it: General Failure, "internal error"."""
    never = (1 << 63) - 1
    for deactivation in (never, never - 5):
        old = register(core, attributes=[PAST, Attribute.of(Tag.DEACTIVATION_DATE, deactivation)])
        for offset in (None, 0, 1000):
            new = ok(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=old, offset=offset)
                     ).unique_identifier
            assert attributes_of(core, new, Tag.DEACTIVATION_DATE)[Tag.DEACTIVATION_DATE][0] \
                in (deactivation, never)


def test_re_key_refusals(core: CoreHarness) -> None:
    secret = register(core, SecretData(secret_data_type=SecretDataType.SEED, key_block=KeyBlock(
        key_format_type=KeyFormatType.OPAQUE, key_value=KeyValue(key_material=b"12345678"))),
        object_type=ObjectType.SECRET_DATA)
    failed(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=secret),
           ResultReason.INVALID_OBJECT_TYPE)
    gone = register(core)
    ok(core, Operation.DESTROY, DestroyRequest(unique_identifier=gone))
    failed(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=gone),
           ResultReason.WRONG_KEY_LIFECYCLE_STATE)
    failed(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=gone),
           ResultReason.PERMISSION_DENIED, version=V14)
    failed(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=register(core)),
           ResultReason.OBJECT_NOT_FOUND, principal=service_principal("other"))


def test_only_a_tenant_administrator_changes_a_hierarchy_keys_state(core: CoreHarness) -> None:
    """An application reaches its tenant's key and its own service's key (it reads their
    attributes), but may not revoke, destroy or activate them: that would crypto-erase its
    whole tenant, or its service's every L4."""
    l3 = core.store.run_sync(lambda s: repository.find_l3(s, "demo", "app"))[0].uid
    l2 = core.store.run_sync(lambda s: repository.find_l2(s, "demo")).uid
    for uid in (l3, l2):
        for operation, payload in (
                (Operation.REVOKE, RevokeRequest(unique_identifier=uid, revocation_reason=(
                    RevocationReason(code=RevocationReasonCode.KEY_COMPROMISE)))),
                (Operation.DESTROY, DestroyRequest(unique_identifier=uid)),
                (Operation.ACTIVATE, ActivateRequest(unique_identifier=uid))):
            message = failed(core, operation, payload, ResultReason.PERMISSION_DENIED)
            assert message == "only a tenant administrator may change a tenant or service key"
        assert row(core, uid).state == State.ACTIVE

def test_re_key_of_a_service_key_makes_the_next_version(core: CoreHarness) -> None:
    # Another tenant's service of the same name, at its third version: numbered apart.
    for _ in range(2):
        theirs = core.store.run_sync(lambda s: repository.find_l3(s, "other", "app"))[0].uid
        ok(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=theirs),
           principal=admin_principal("other"))
    l3 = core.store.run_sync(lambda s: repository.find_l3(s, "demo", "app"))[0].uid
    failed(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=l3),
           ResultReason.PERMISSION_DENIED)
    new = ok(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=l3),
             principal=admin_principal()).unique_identifier
    versions = core.store.run_sync(lambda s: [(r.uid, r.key_version, r.level, r.state)
                                              for r in repository.find_l3(s, "demo", "app")])
    assert versions == [(new, 2, LEVEL_SERVICE_KEY, State.ACTIVE),
                        (l3, 1, LEVEL_SERVICE_KEY, State.DEACTIVATED)]
    # The new version is wrapped under the tenant key like the first.
    assert row(core, new).wrapped_by == row(core, l3).wrapped_by
    failed(core, Operation.GET, GetRequest(unique_identifier=new), ResultReason.PERMISSION_DENIED,
           principal=admin_principal())


def test_re_key_of_the_tenant_key_keeps_objects_readable(core: CoreHarness) -> None:
    uid = register(core)
    l2 = core.store.run_sync(lambda s: repository.find_l2(s, "demo")).uid
    new = ok(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=l2),
             principal=admin_principal()).unique_identifier
    assert core.store.run_sync(lambda s: repository.find_l2(s, "demo")).uid == new
    assert row(core, l2).state == State.DEACTIVATED
    assert ok(core, Operation.GET, GetRequest(unique_identifier=uid)).object.key_block.key_bytes \
        == KEY
    after = register(core)
    assert row(core, after).wrapped_by == new
    assert ok(core, Operation.GET, GetRequest(unique_identifier=after)).object.key_block \
        .key_bytes == KEY


def test_revoked_and_compromised_keys_can_be_re_keyed(core: CoreHarness) -> None:
    uid = register(core, attributes=[PAST])
    ok(core, Operation.REVOKE, RevokeRequest(unique_identifier=uid, revocation_reason=(
        RevocationReason(code=RevocationReasonCode.KEY_COMPROMISE))))
    new = ok(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=uid)).unique_identifier
    got = attributes_of(core, new, Tag.STATE, Tag.REVOCATION_REASON, Tag.COMPROMISE_DATE)
    assert got == {Tag.STATE: [State.ACTIVE]}
    ok(core, Operation.ACTIVATE, ActivateRequest(unique_identifier=register(core)))


@pytest.mark.parametrize("version", [V14, V21])
def test_a_compromise_is_recorded_once(core: CoreHarness, version) -> None:
    """A Revoke for compromise sets the Compromise Date and, when the request gives none,
    the Compromise Occurrence Date to the object's Initial Date (2.1 §6.1.46: "SHOULD be
    set to the Initial Date"). A second one is refused Wrong Key Lifecycle State, whether
    the object is Compromised or Destroyed Compromised (no transition leaves it there), and
    the first report's dates stay. (1.x says Permission Denied, as for every wrong state.)"""
    wrong_state = (ResultReason.WRONG_KEY_LIFECYCLE_STATE if version == V21
                   else ResultReason.PERMISSION_DENIED)
    uid = register(core, attributes=[PAST], version=version)
    initial = attributes_of(core, uid, Tag.INITIAL_DATE)[Tag.INITIAL_DATE][0]

    def compromise(occurred: int | None = None) -> RevokeRequest:
        return RevokeRequest(unique_identifier=uid, compromise_occurrence_date=occurred,
                             revocation_reason=RevocationReason(
                                 code=RevocationReasonCode.KEY_COMPROMISE))

    ok(core, Operation.REVOKE, compromise(), version=version)
    first = attributes_of(core, uid, Tag.STATE, Tag.COMPROMISE_DATE,
                          Tag.COMPROMISE_OCCURRENCE_DATE)
    assert first[Tag.STATE] == [State.COMPROMISED]
    assert first[Tag.COMPROMISE_OCCURRENCE_DATE] == [initial]
    failed(core, Operation.REVOKE, compromise(5000), wrong_state, version=version)
    ok(core, Operation.DESTROY, DestroyRequest(unique_identifier=uid), version=version)
    failed(core, Operation.REVOKE, compromise(5000), wrong_state, version=version)
    last = attributes_of(core, uid, Tag.STATE, Tag.COMPROMISE_DATE,
                         Tag.COMPROMISE_OCCURRENCE_DATE)
    assert last == {**first, Tag.STATE: [State.DESTROYED_COMPROMISED]}
    # A destroyed object reported compromised moves to Destroyed Compromised, with the
    # date the request gives.
    gone = register(core, version=version)
    ok(core, Operation.DESTROY, DestroyRequest(unique_identifier=gone), version=version)
    ok(core, Operation.REVOKE, RevokeRequest(
        unique_identifier=gone, compromise_occurrence_date=1000,
        revocation_reason=RevocationReason(code=RevocationReasonCode.KEY_COMPROMISE)),
       version=version)
    assert attributes_of(core, gone, Tag.STATE, Tag.COMPROMISE_OCCURRENCE_DATE) == {
        Tag.STATE: [State.DESTROYED_COMPROMISED], Tag.COMPROMISE_OCCURRENCE_DATE: [1000]}


@pytest.mark.parametrize("version", [V14, V21])
def test_an_enumeration_no_version_defines_is_refused(core: CoreHarness, version) -> None:
    """A request field whose enumeration value no KMIP version defines, and which is no
    extension value (8XXXXXXX), is refused (2.x Unknown Enumeration, 1.x Invalid Field)
    rather than read as if it had said something else: an Object Group Member, a Key Wrap
    Type, a Query Function (KMIP 2.1 §11). An extension value is taken."""
    from kcm.kmip.payloads import QueryRequest

    reason = (ResultReason.UNKNOWN_ENUMERATION if version == V21
              else ResultReason.INVALID_FIELD)
    uid = register(core, version=version)

    def enumeration(payload: Item, tag: int, value: int) -> Item:
        return Item(payload.tag, ItemType.STRUCTURE, [
            *payload, Item(tag, ItemType.ENUMERATION, value)])

    empty = Item(Tag.REQUEST_PAYLOAD, ItemType.STRUCTURE, [])
    named = Item(Tag.REQUEST_PAYLOAD, ItemType.STRUCTURE, [
        Item(Tag.UNIQUE_IDENTIFIER, ItemType.TEXT_STRING, uid)])
    for operation, payload, tag in (
            (Operation.LOCATE, empty, Tag.OBJECT_GROUP_MEMBER),
            (Operation.GET, named, Tag.KEY_WRAP_TYPE),
            (Operation.QUERY, empty, Tag.QUERY_FUNCTION)):
        message = failed(core, operation, enumeration(payload, tag, 99), reason,
                         version=version)
        assert message.endswith(" 0x00000063 is not defined"), message
    ok(core, Operation.QUERY, QueryRequest(query_functions=[0x80000001]), version=version)


def test_revoke_refuses_an_undefined_reason_code_and_takes_an_extension(
        core: CoreHarness) -> None:
    uid = register(core, attributes=[PAST])
    for code in (0, 0x7FFFFFFF, 0x90000000):
        message = failed(core, Operation.REVOKE, RevokeRequest(
            unique_identifier=uid, revocation_reason=RevocationReason(code=code)),
            ResultReason.INVALID_FIELD, version=V14)
        assert message == f"Revocation Reason Code {code:#010x} is not defined"
    assert attributes_of(core, uid, Tag.STATE) == {Tag.STATE: [State.ACTIVE]}
    ok(core, Operation.REVOKE, RevokeRequest(unique_identifier=uid, revocation_reason=(
        RevocationReason(code=0x80000001))))
    assert attributes_of(core, uid, Tag.STATE) == {Tag.STATE: [State.DEACTIVATED]}


# -- OASIS test cases, in process ---------------------------------------------------------

_PROFILES = "oasis-kmip-profiles-v{}-os/mandatory/{}.xml"
_TESTCASES = "oasis-kmip-testcases-v1.4-cnprd01/{}.xml"
CASES = [
    *(_PROFILES.format("2.1", f"BL-M-{n}-21") for n in (2, 3, 4, 5, 6, 8, 9, 10, 11, 13)),
    *(_PROFILES.format(v, f"SKFF-M-{n}-{s}") for v, s in (("1.4", 14), ("2.1", 21))
      for n in (5, 7, 8)),
    *(_PROFILES.format(v, f"AX-M-2-{s}") for v, s in (("1.4", 14), ("2.1", 21))),
    *(_PROFILES.format(v, f"CS-BC-M-{n}-{s}") for v, s in (("1.4", 14), ("2.1", 21))
      for n in (4, 5, 6)),
    *(_TESTCASES.format(name) for name in (
        "TC-WRAP-1-14", "TC-WRAP-2-14", "TC-WRAP-3-14", "TC-REKEY-1-14", "TC-OFFSET-1-14",
        "TC-OFFSET-2-14", "TC-MDO-1-14", "TC-MDO-2-14", "TC-EXTRACTABLE-1-14",
        "TC-RNG-ATTR-1-14")),
    "oasis-kmip-testcases-v2.0-cnd02/TC-WRAP-3-20.xml",
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: Path(c).stem)
def test_oasis_case_in_process(core: CoreHarness, vectors: Path, case: str) -> None:
    result = run_case(vectors / case, core.client(service_principal()))
    assert result.passed, result.line() + "\n" + "\n".join(
        result.failure.findings if result.failure else ())


# -- who may use which object of the tenant (kcm.core.policy) --------------------------

BILLING = service_principal("demo", "billing")
GHOST = service_principal("demo", "ghost")  # a service demo never provisioned


def with_access(core: CoreHarness, application_objects: ApplicationObjects) -> CoreHarness:
    """The same store and keys, under another ``application_objects`` setting."""
    return CoreHarness(core.store, core.keyring, CoreRequestHandler(
        core.store, core.keyring, clock=time.time,
        server_info=ServerInfo(access=AccessPolicy(application_objects))))


def test_objects_belong_to_the_service_that_made_them(core: CoreHarness) -> None:
    mine = register(core)  # by demo/app
    admins = register(core, principal=admin_principal())
    assert row(core, mine).service == "app" and row(core, admins).service is None
    replacement = ok(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=mine)
                     ).unique_identifier
    assert row(core, replacement).service == "app"  # a replacement is its predecessor's
    # Another service of the tenant: Permission Denied (its own tenant: nothing leaks).
    for operation, payload in ((Operation.GET, GetRequest(unique_identifier=mine)),
                               (Operation.DESTROY, DestroyRequest(unique_identifier=mine)),
                               (Operation.GET_ATTRIBUTES,
                                GetAttributesRequest(unique_identifier=mine))):
        message = failed(core, operation, payload, ResultReason.PERMISSION_DENIED,
                         principal=BILLING)
        assert "belongs to service 'app'" in message
    # Objects of no service are the tenant's: every application uses them.
    ok(core, Operation.GET, GetRequest(unique_identifier=admins), principal=BILLING)
    located = ok(core, Operation.LOCATE, LocateRequest(), principal=BILLING).unique_identifiers
    assert admins in located and mine not in located and replacement not in located
    # A tenant administrator uses everything in the tenant.
    ok(core, Operation.GET, GetRequest(unique_identifier=mine), principal=admin_principal())
    # Another service's key cannot wrap either (it is not missing: Permission Denied).
    failed(core, Operation.GET, GetRequest(unique_identifier=admins,
                                           key_wrapping_specification=_wrap_spec(mine)),
           ResultReason.PERMISSION_DENIED, principal=BILLING)


def test_application_objects_tenant_shares_every_object(core: CoreHarness) -> None:
    mine = register(core)
    shared = with_access(core, ApplicationObjects.TENANT)
    ok(shared, Operation.GET, GetRequest(unique_identifier=mine), principal=BILLING)
    assert mine in ok(shared, Operation.LOCATE, LocateRequest(),
                      principal=BILLING).unique_identifiers
    ok(shared, Operation.DESTROY, DestroyRequest(unique_identifier=mine), principal=BILLING)


def test_sharing_objects_shares_no_service_key(core: CoreHarness) -> None:
    """Under ``application_objects = "tenant"`` an application uses every object of its
    tenant, but another service's key (L3) stays that service's: it wraps nothing for it."""
    shared = with_access(core, ApplicationObjects.TENANT)
    theirs = register(core)  # demo/app's
    l3s = core.store.run_sync(lambda session: [
        r.uid for r in repository.find_l3(session, "demo", "app")], write=False)
    for uid in l3s:
        message = failed(shared, Operation.GET, GetRequest(
            unique_identifier=theirs, key_wrapping_specification=_wrap_spec(uid)),
            ResultReason.PERMISSION_DENIED, principal=BILLING)
        assert message == "an application may use only its own service's keys, not 'app''s"
    ok(shared, Operation.GET, GetRequest(unique_identifier=theirs), principal=BILLING)

@pytest.mark.parametrize("application_objects", list(ApplicationObjects))
def test_a_service_that_is_not_provisioned_holds_nothing(core: CoreHarness,
                                                         application_objects) -> None:
    """Like a principal of an unknown tenant, whatever the sharing setting."""
    core = with_access(core, application_objects)
    mine = register(core)
    admins = register(core, principal=admin_principal())
    for uid in (mine, admins, "no-such-object"):
        for operation, payload in ((Operation.GET, GetRequest(unique_identifier=uid)),
                                   (Operation.DESTROY, DestroyRequest(unique_identifier=uid))):
            message = failed(core, operation, payload, ResultReason.OBJECT_NOT_FOUND,
                             principal=GHOST)
            assert message == object_not_found(uid).message
    assert ok(core, Operation.LOCATE, LocateRequest(), principal=GHOST).unique_identifiers == []
    message = failed(core, Operation.REGISTER, RegisterRequest(
        object_type=ObjectType.SYMMETRIC_KEY, attributes=[], object=aes_key()),
        ResultReason.PERMISSION_DENIED, principal=GHOST)
    assert message == "service demo/ghost is not provisioned (it has no service key)"
    ok(core, Operation.GET, GetRequest(unique_identifier=mine))  # untouched



def test_operators_and_gateways_hold_no_objects(core: CoreHarness) -> None:
    """A principal of no tenant sent straight to the core (an operator's or a gateway's
    certificate on the KMIP port) is refused every object, its own tenant's or none."""
    mine = register(core)
    for role, name in ((Role.OPERATOR, "ops"), (Role.GATEWAY, "gw1")):
        who = Principal(role, TRUST_DOMAIN, name=name,
                        uri=f"spiffe://{TRUST_DOMAIN}/{role.value}/{name}")
        for operation, payload in (
                (Operation.GET, GetRequest(unique_identifier=mine)),
                (Operation.DESTROY, DestroyRequest(unique_identifier=mine)),
                (Operation.LOCATE, LocateRequest()),
                (Operation.REGISTER, RegisterRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                                     attributes=[], object=aes_key()))):
            message = failed(core, operation, payload, ResultReason.PERMISSION_DENIED,
                             principal=who)
            assert message == (f"{role.value} principals hold no objects; "
                               "connect with a tenant identity")
    ok(core, Operation.GET, GetRequest(unique_identifier=mine))  # untouched

def _vector_value(vectors: Path, case: str, element: str, attribute: str | None = None
                  ) -> bytes:
    """The first ``element``'s value (hex) in an OASIS case, as bytes; with ``attribute``,
    the one within the first Attribute of that Attribute Name."""
    import xml.etree.ElementTree as ET

    root = ET.parse(vectors / case).getroot()
    if attribute is not None:
        root = next(a for a in root.iter("Attribute")
                    if a.find("AttributeName").get("value") == attribute)
    found = root.find(f".//{element}")
    assert found is not None, element
    return bytes.fromhex(found.get("value"))


@pytest.mark.parametrize("version", [V14, V21])
def test_register_describes_an_x509_certificate_as_kmip_says(
        core: CoreHarness, vectors: Path, version) -> None:
    """X.509 Certificate Identifier, Subject and Issuer are structures of DER names (and
    the serial number as a DER INTEGER), Digital Signature Algorithm and the public key's
    algorithm and length are set (1.4 §3.4, §3.5, §3.10-§3.16): what TC-CERTATTR-1-14
    expects of its certificate, read from that case. A Locate by the Subject's structure
    finds it."""
    case = "oasis-kmip-testcases-v1.4-cnprd01/TC-CERTATTR-1-14.xml"
    der = _vector_value(vectors, case, "CertificateValue")
    uid = register(core, Item(Tag.CERTIFICATE, ItemType.STRUCTURE, [
        Item(Tag.CERTIFICATE_TYPE, ItemType.ENUMERATION, 1),  # X.509
        Item(Tag.CERTIFICATE_VALUE, ItemType.BYTE_STRING, der)]),
        object_type=ObjectType.CERTIFICATE, version=version)
    wanted = (Tag.X_509_CERTIFICATE_IDENTIFIER, Tag.X_509_CERTIFICATE_SUBJECT,
              Tag.X_509_CERTIFICATE_ISSUER, Tag.DIGITAL_SIGNATURE_ALGORITHM,
              Tag.CRYPTOGRAPHIC_ALGORITHM, Tag.CRYPTOGRAPHIC_LENGTH)
    payload = ok(core, Operation.GET_ATTRIBUTES, GetAttributesRequest(
        unique_identifier=uid, attribute_references=[AttributeReference(t) for t in wanted]),
        version=version)
    got = {a.tag: a.value for a in payload.attributes}

    def fields(tag: int) -> list[tuple[int, bytes]]:
        assert got[tag].type is ItemType.STRUCTURE
        return [(f.tag, f.value) for f in got[tag]]

    issuer = _vector_value(vectors, case, "IssuerDistinguishedName", "X.509 Certificate Issuer")
    subject = _vector_value(vectors, case, "SubjectDistinguishedName",
                            "X.509 Certificate Subject")
    serial = _vector_value(vectors, case, "CertificateSerialNumber")
    assert fields(Tag.X_509_CERTIFICATE_IDENTIFIER) == [
        (Tag.ISSUER_DISTINGUISHED_NAME, issuer), (Tag.CERTIFICATE_SERIAL_NUMBER, serial)]
    assert fields(Tag.X_509_CERTIFICATE_SUBJECT) == [(Tag.SUBJECT_DISTINGUISHED_NAME, subject)]
    assert fields(Tag.X_509_CERTIFICATE_ISSUER) == [(Tag.ISSUER_DISTINGUISHED_NAME, issuer)]
    assert got[Tag.DIGITAL_SIGNATURE_ALGORITHM].value == 5  # SHA-256 with RSA Encryption
    assert (got[Tag.CRYPTOGRAPHIC_ALGORITHM].value, got[Tag.CRYPTOGRAPHIC_LENGTH].value) == (
        CryptographicAlgorithm.RSA, 1024)
    by_subject = _structure(Tag.X_509_CERTIFICATE_SUBJECT, Item(
        Tag.SUBJECT_DISTINGUISHED_NAME, ItemType.BYTE_STRING, subject))
    assert locate(core, by_subject, version=version).unique_identifiers == [uid]


def test_a_key_block_or_certificate_field_of_the_wrong_type_is_invalid_field(
        core: CoreHarness) -> None:
    """What Register reads from an object it keeps as sent (a private key, a certificate)
    is read as its type: a Text String Cryptographic Algorithm was a General Failure."""
    from kcm.ttlv import Item, ItemType

    def key(algorithm: Item) -> Item:
        return Item(Tag.PRIVATE_KEY, ItemType.STRUCTURE, [Item(Tag.KEY_BLOCK, ItemType.STRUCTURE, [
            Item(Tag.KEY_FORMAT_TYPE, ItemType.ENUMERATION, int(KeyFormatType.PKCS_8)),
            Item(Tag.KEY_VALUE, ItemType.STRUCTURE, [
                Item(Tag.KEY_MATERIAL, ItemType.BYTE_STRING, b"not a key")]),
            algorithm,
            Item(Tag.CRYPTOGRAPHIC_LENGTH, ItemType.INTEGER, 2048)])])

    message = failed(core, Operation.REGISTER, RegisterRequest(
        object_type=ObjectType.PRIVATE_KEY, attributes=[],
        object=key(Item(Tag.CRYPTOGRAPHIC_ALGORITHM, ItemType.TEXT_STRING, "RSA"))),
        ResultReason.INVALID_FIELD, version=V21)
    assert message == "Cryptographic Algorithm in Key Block must be of type Enumeration"
    certificate = Item(Tag.CERTIFICATE, ItemType.STRUCTURE, [
        Item(Tag.CERTIFICATE_TYPE, ItemType.TEXT_STRING, "X.509"),
        Item(Tag.CERTIFICATE_VALUE, ItemType.BYTE_STRING, b"not DER")])
    message = failed(core, Operation.REGISTER, RegisterRequest(
        object_type=ObjectType.CERTIFICATE, attributes=[], object=certificate),
        ResultReason.INVALID_FIELD, version=V21)
    assert message == "Certificate Type in Certificate must be of type Enumeration"


def test_an_object_keeps_a_bounded_number_of_attributes(core: CoreHarness) -> None:
    """A request carries at most MAX_ATTRIBUTES, and an object keeps at most a few more (its
    server-set ones): attributes added one at a time cannot grow it without bound either
    (every later load, Locate and Get Attributes reads them all)."""
    from kcm.core.managed import MAX_STORED_ATTRIBUTES
    from kcm.kmip.attributes import MAX_ATTRIBUTES

    def custom(name: str) -> Attribute:
        return Attribute.vendor("x", name, Item(Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING, "v"))

    uid = register(core, attributes=[custom(f"c{n}") for n in range(MAX_ATTRIBUTES - 10)])
    stored = len(row_attributes(core, uid))
    assert stored <= MAX_STORED_ATTRIBUTES
    adds = [(Operation.ADD_ATTRIBUTE, AddAttributeRequest(
        unique_identifier=uid, attribute=custom(f"more{n}")))
        for n in range(MAX_STORED_ATTRIBUTES - stored + 1)]
    # (Two items a request: a request may read and write an object of a thousand
    # attributes only a few times: MAX_REQUEST_ATTRIBUTE_UNITS.)
    answer = send(core, *adds[:2])
    while len(answer.batch_items) == 2 and adds[2:]:
        adds = adds[2:]
        answer = send(core, *adds[:2])
    last = answer.batch_items[-1]
    assert (last.result_status, last.result_reason, last.result_message) == (
        ResultStatus.OPERATION_FAILED, ResultReason.SERVER_LIMIT_EXCEEDED,
        f"an object keeps at most {MAX_STORED_ATTRIBUTES} attributes")
    assert len(row_attributes(core, uid)) == MAX_STORED_ATTRIBUTES


def test_a_request_reads_and_writes_a_bounded_amount_of_large_objects_attributes(
        core: CoreHarness) -> None:
    """Every change of an object reads and rewrites all its attributes on the writer that
    every tenant shares: 64 changes of an object of a thousand attributes in one request
    held it 3.5 s. A request may read and write a few such objects' attributes; objects of
    at most FREE_ATTRIBUTE_UNITS (attributes plus KiB) are never counted."""
    from kcm.core.context import FREE_ATTRIBUTE_UNITS, MAX_REQUEST_ATTRIBUTE_UNITS

    def custom(name: str, value: str = "v") -> Attribute:
        return Attribute.vendor("x", name, Item(Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING,
                                                value))

    def modify(uid: str, n: int) -> tuple[Operation, object]:
        return Operation.MODIFY_ATTRIBUTE, ModifyAttributeRequest(
            unique_identifier=uid, attribute=custom("c0", str(n)))

    small = register(core, attributes=[custom(f"c{n}") for n in range(20)])
    answer = send(core, *[modify(small, n) for n in range(64)])
    assert {i.result_status for i in answer.batch_items} == {ResultStatus.SUCCESS}

    large = register(core, attributes=[custom(f"c{n}") for n in range(1000)])
    answer = send(core, *[modify(large, n) for n in range(64)])
    statuses = [(i.result_status, i.result_reason) for i in answer.batch_items]
    # Each change reads and writes about 1,000 units beyond the free ones.
    allowed = MAX_REQUEST_ATTRIBUTE_UNITS // (2 * (1000 - FREE_ATTRIBUTE_UNITS))
    assert statuses == [(ResultStatus.SUCCESS, None)] * allowed + [
        (ResultStatus.OPERATION_FAILED, ResultReason.SERVER_LIMIT_EXCEEDED)]
    assert answer.batch_items[-1].result_message == (
        "the request reads and writes more attributes of large objects than one request "
        "may; send its items in several requests")
    # The next request starts afresh.
    answer = send(core, modify(large, 100))
    assert answer.batch_items[0].result_status == ResultStatus.SUCCESS


def test_the_first_item_of_a_request_runs_whatever_its_objects_size(core: CoreHarness) -> None:
    """An object stored over the bounds (by an earlier release; here written behind the
    server's back) costs more than a request's bound in one read and write: a request of
    one Revoke, Destroy or Delete Attribute of it still runs."""
    from kcm.core.attribute_blob import decode_attributes, encode_attributes
    from kcm.core.context import MAX_REQUEST_ATTRIBUTE_UNITS

    def custom(name: str) -> Attribute:
        return Attribute.vendor("x", name, Item(Tag.ATTRIBUTE_VALUE, ItemType.BYTE_STRING,
                                                b"x" * 120_000))

    uid = register(core)
    ok(core, Operation.ACTIVATE, ActivateRequest(unique_identifier=uid))

    def grow(session) -> None:
        found = repository.get_object(session, "demo", uid)
        repository.update_columns(session, found, attributes=encode_attributes(
            decode_attributes(found.attributes) + [custom(f"old{n}") for n in range(40)]))

    core.store.run_sync(grow)
    assert len(row(core, uid).attributes) // 1024 > MAX_REQUEST_ATTRIBUTE_UNITS
    ok(core, Operation.DELETE_ATTRIBUTE, DeleteAttributeRequest(
        unique_identifier=uid, attribute_reference=AttributeReference(VENDOR_TAG, "x", "old0")))
    ok(core, Operation.REVOKE, RevokeRequest(unique_identifier=uid, revocation_reason=(
        RevocationReason(code=RevocationReasonCode.KEY_COMPROMISE))))
    ok(core, Operation.DESTROY, DestroyRequest(unique_identifier=uid))


def row_attributes(core: CoreHarness, uid: str) -> list[Attribute]:
    from kcm.core.managed import decode_attributes
    return decode_attributes(row(core, uid).attributes)


# -- Locate by what the version does not define -----------------------------------------

def _raw_v1_locate(core, version, attribute_name: str, value: Item):
    """A 1.x Locate whose one criterion is Attribute {Attribute Name, Attribute Value}, as a
    client writes it (the test encoder drops attributes the version does not define)."""
    header = RequestHeader(protocol_version=ProtocolVersion.of(version), batch_count=1)
    message = encode_request(RequestMessage(header, [RequestBatchItem(
        operation=Operation.LOCATE, request_payload=LocateRequest())]))

    def payload_of(item):
        if item.tag == Tag.REQUEST_PAYLOAD:
            return item
        if item.type is ItemType.STRUCTURE:
            for child in item.value:
                found = payload_of(child)
                if found is not None:
                    return found
        return None

    payload_of(message).value.append(Item(Tag.ATTRIBUTE, ItemType.STRUCTURE, [
        Item(Tag.ATTRIBUTE_NAME, ItemType.TEXT_STRING, attribute_name),
        Item(Tag.ATTRIBUTE_VALUE, value.type, value.value)]))
    answer = core.handler.respond(encode(message), core.caller(None), int(time.time()))
    return decode_response(decode(answer)).batch_items[0]


def test_a_1_3_locate_by_description_is_refused_like_every_other_1_3_use_of_it(
        core: CoreHarness) -> None:
    """It was answered: a 1.3 client found objects by an attribute it can neither set
    nor see."""
    uid = register(core, attributes=[name("a"), Attribute.of(Tag.DESCRIPTION, "payroll")])
    # Add Attribute at 1.3 refuses Description, and Get Attributes at 1.3 does not show it:
    item = one(core, Operation.ADD_ATTRIBUTE, AddAttributeRequest(
        unique_identifier=uid, attribute=Attribute.of(Tag.DESCRIPTION, "x")), version=(1, 3))
    assert (item.result_status, item.result_reason) == (ResultStatus.OPERATION_FAILED,
                                                        ResultReason.INVALID_FIELD)
    shown = ok(core, Operation.GET_ATTRIBUTES, GetAttributesRequest(unique_identifier=uid),
               version=(1, 3))
    assert Tag.DESCRIPTION not in {a.tag for a in shown.attributes}
    # ... but a 1.3 Locate by it succeeds and finds the object by it.
    item = _raw_v1_locate(core, (1, 3), "Description", Item(0, ItemType.TEXT_STRING, "payroll"))
    assert (item.result_status, item.result_reason) == (ResultStatus.OPERATION_FAILED,
                                                        ResultReason.INVALID_FIELD)
    assert item.result_message == "Description is not an attribute of KMIP 1.3"


def test_a_1_4_locate_by_an_unknown_attribute_name_is_invalid_field(core: CoreHarness) -> None:
    """It was a Success finding nothing (the name read as a vendor attribute of no
    vendor)."""
    register(core, attributes=[name("a")])
    item = _raw_v1_locate(core, (1, 4), "Foo Bar", Item(0, ItemType.TEXT_STRING, "x"))
    assert (item.result_status, item.result_reason) == (ResultStatus.OPERATION_FAILED,
                                                        ResultReason.INVALID_FIELD), (
        item.result_status, item.response_payload)
