"""Product flows replayed end to end (issue 8): the KMIP requests that real products send,
in the protocol version each sends them, against a real ``twistd kcm-core`` and through a
real ``twistd kcm-gateway`` in front of it.

The request shapes follow the products' public sources and documentation:

* MongoDB's field-level encryption (libmongocrypt's kms-message ``kms_kmip_request.c``):
  Register of a 96-byte Secret Data (Secret Data Type Seed, Key Format Type Opaque, a
  Template-Attribute with Cryptographic Usage Mask 0), Activate, Get at KMIP 1.0; Create of
  AES-256 with usage mask Encrypt|Decrypt, Activate, Encrypt (CBC, PKCS5, AES, Random IV)
  and Decrypt (CBC, PKCS5, AES, the IV returned) at KMIP 1.2.
* A MySQL/PostgreSQL keyring plugin at KMIP 1.4: Register of a Raw AES-256 key with a Name
  and an Object Group, Activate, Locate by Object Type + Name, paged Locate over the group,
  Get, Revoke (Cessation of Operation), Destroy, then Get of the destroyed key.
* A hypervisor key provider at KMIP 1.1: Discover Versions, Create AES-256 with a Name, Get
  Attributes of State, Get.
* A storage array's single KMIP 1.0 request: Query (Operations, Objects) + Locate by an
  ``x-`` custom attribute + Get in Opaque format + Get Attributes, the last two fed by the
  ID Placeholder that the Locate sets.

Every flow runs against the core and through the gateway; the gateway's answers must have
the core's Result Status, Result Reason and payload shape, item by item.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable, Iterator
from enum import Enum

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from kcm.kmip.attributes import (
    Attribute,
    AttributeReference,
    CryptographicParameters,
    Name,
)
from kcm.kmip.enums import (
    BlockCipherMode,
    CryptographicAlgorithm,
    KeyFormatType,
    NameType,
    ObjectType,
    Operation,
    PaddingMethod,
    QueryFunction,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
    SecretDataType,
    State,
)
from kcm.kmip.messages import ResponseBatchItem, ResponseMessage
from kcm.kmip.objects import KeyBlock, KeyValue, SecretData, SymmetricKey
from kcm.kmip.payloads import GetAttributesRequest
from kcm.kmip.payloads.crypto import DecryptRequest, EncryptRequest
from kcm.kmip.payloads.lifecycle import (
    ActivateRequest,
    CreateRequest,
    DestroyRequest,
    GetRequest,
    RegisterRequest,
    RevocationReason,
    RevokeRequest,
)
from kcm.kmip.payloads.service import DiscoverVersionsRequest, LocateRequest, QueryRequest
from kcm.kmip.tags import Tag
from kcm.testing.processes import CoreProcess, GatewayProcess, deploy, running
from kcm.testing.requests import item, request, response
from kcm.ttlv import Item, ItemType, encode

PLANES = ["core", "gateway"]
V10, V11, V12, V14 = (1, 0), (1, 1), (1, 2), (1, 4)

#: Cryptographic Usage Mask bits (KMIP 1.x §9.1.3.3.1).
ENCRYPT, DECRYPT = 0x04, 0x08

#: The shapes the core answered, per flow, for the gateway run to be compared with.
_CORE_SHAPES: dict[str, list] = {}


# Deployment, client, comparison ---------------------------------------------------------------
@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[dict[str, CoreProcess | GatewayProcess]]:
    root = tmp_path_factory.mktemp("flows")
    core = deploy(root / "core", f"sqlite:///{root / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(root / "gateway", core)
    with running(core, gateway):
        yield {"core": core, "gateway": gateway}


class Flow:
    """One product's conversation with one plane: sends requests, keeps every answer's shape."""

    def __init__(self, body: Callable[[Flow], None], plane: str,
                 deployment: dict[str, CoreProcess | GatewayProcess]) -> None:
        self.body, self.name, self.plane = body, body.__name__, plane
        self.deployment = deployment
        self.client = deployment[plane].client("admin")
        self.shapes: list = []

    def send(self, *items, version: tuple[int, int]) -> ResponseMessage:
        answer = response(self.client.send(request(*items, version=version)))
        assert answer.header.protocol_version.as_tuple() == version
        assert len(answer.batch_items) == len(items)
        self.shapes.append([shape_of_item(one) for one in answer.batch_items])
        return answer

    def ok(self, operation: Operation, payload: object, *, version: tuple[int, int]):
        """One batch item that must succeed; its response payload."""
        answered = self.send(item(operation, payload), version=version).batch_items[0]
        assert_success(answered)
        assert answered.operation == operation
        return answered.response_payload

    def compare(self) -> None:
        """The core's shapes are remembered; the gateway's must equal them. Where the core's
        run was not in this process (pytest-xdist sent it to another worker, or ``-k``
        left it out), the flow is run against the core here first."""
        if self.plane == "core":
            _CORE_SHAPES[self.name] = self.shapes
            return
        if self.name not in _CORE_SHAPES:
            reference = Flow(self.body, "core", self.deployment)
            try:
                self.body(reference)
            finally:
                reference.client.close()
        assert self.shapes == _CORE_SHAPES[self.name]


def assert_success(answered: ResponseBatchItem) -> None:
    assert answered.result_status == ResultStatus.SUCCESS, (
        answered.result_status, answered.result_reason, answered.result_message)


def shape(value: object) -> object:
    """What must be alike between the core's answer and the gateway's: structure, types,
    enumerations and lengths; not identifiers, dates or random bytes."""
    if isinstance(value, Attribute):
        return ("Attribute", value.tag, value.vendor_identification, value.name,
                shape(value.value))
    if isinstance(value, Item):
        inner = [shape(child) for child in value.value] if value.type is ItemType.STRUCTURE \
            else None
        return ("Item", value.tag, value.type, inner)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, tuple(
            (f.name, shape(getattr(value, f.name))) for f in dataclasses.fields(value)
            if getattr(value, f.name) not in (None, [])))
    if isinstance(value, list | tuple):
        return tuple(shape(one) for one in value)
    if isinstance(value, bytes):
        return ("bytes", len(value))
    if isinstance(value, str):
        return "str"
    if isinstance(value, Enum | bool):
        return value
    if isinstance(value, int):
        return int(value)
    return type(value).__name__


def shape_of_item(answered: ResponseBatchItem) -> tuple:
    return (answered.operation, answered.result_status, answered.result_reason,
            shape(answered.response_payload))


@pytest.fixture(params=PLANES)
def plane(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def flow(request: pytest.FixtureRequest, deployment, plane: str) -> Iterator[Flow]:
    opened = Flow(request.function, plane, deployment)
    try:
        yield opened
    finally:
        opened.client.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def name(text: str) -> Attribute:
    return Attribute.of(Tag.NAME, Name(value=text, type=NameType.UNINTERPRETED_TEXT_STRING))


def aes256(mask: int | None = ENCRYPT | DECRYPT) -> list[Attribute]:
    attributes = [Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
                  Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256)]
    if mask is not None:
        attributes.append(Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, mask))
    return attributes


def attribute_values(payload, tag: int) -> list:
    return [one.typed for one in payload.attributes or [] if one.tag == tag]


# 1. MongoDB field-level encryption ------------------------------------------------------------
def _s(tag: int, *children: Item) -> Item:
    return Item(tag, ItemType.STRUCTURE, list(children))


def libmongocrypt_register(secret: bytes) -> bytes:
    """libmongocrypt's Register request, item by item as kms_kmip_request.c writes it."""
    return encode(_s(
        Tag.REQUEST_MESSAGE,
        _s(Tag.REQUEST_HEADER,
           _s(Tag.PROTOCOL_VERSION, Item(Tag.PROTOCOL_VERSION_MAJOR, ItemType.INTEGER, 1),
              Item(Tag.PROTOCOL_VERSION_MINOR, ItemType.INTEGER, 0)),
           Item(Tag.BATCH_COUNT, ItemType.INTEGER, 1)),
        _s(Tag.BATCH_ITEM,
           Item(Tag.OPERATION, ItemType.ENUMERATION, 0x03),
           _s(Tag.REQUEST_PAYLOAD,
              Item(Tag.OBJECT_TYPE, ItemType.ENUMERATION, 0x07),
              _s(Tag.TEMPLATE_ATTRIBUTE, _s(
                  Tag.ATTRIBUTE,
                  Item(Tag.ATTRIBUTE_NAME, ItemType.TEXT_STRING, "Cryptographic Usage Mask"),
                  Item(Tag.ATTRIBUTE_VALUE, ItemType.INTEGER, 0))),
              _s(Tag.SECRET_DATA,
                 Item(Tag.SECRET_DATA_TYPE, ItemType.ENUMERATION, 0x02),
                 _s(Tag.KEY_BLOCK,
                    Item(Tag.KEY_FORMAT_TYPE, ItemType.ENUMERATION, 0x02),
                    _s(Tag.KEY_VALUE, Item(Tag.KEY_MATERIAL, ItemType.BYTE_STRING, secret))))))))


def libmongocrypt_encrypt(uid: str, data: bytes) -> bytes:
    """libmongocrypt's Encrypt request (KMIP 1.2), as kms_kmip_request.c writes it."""
    return encode(_s(
        Tag.REQUEST_MESSAGE,
        _s(Tag.REQUEST_HEADER,
           _s(Tag.PROTOCOL_VERSION, Item(Tag.PROTOCOL_VERSION_MAJOR, ItemType.INTEGER, 1),
              Item(Tag.PROTOCOL_VERSION_MINOR, ItemType.INTEGER, 2)),
           Item(Tag.BATCH_COUNT, ItemType.INTEGER, 1)),
        _s(Tag.BATCH_ITEM,
           Item(Tag.OPERATION, ItemType.ENUMERATION, 0x1F),
           _s(Tag.REQUEST_PAYLOAD,
              Item(Tag.UNIQUE_IDENTIFIER, ItemType.TEXT_STRING, uid),
              _s(Tag.CRYPTOGRAPHIC_PARAMETERS,
                 Item(Tag.BLOCK_CIPHER_MODE, ItemType.ENUMERATION, 1),
                 Item(Tag.PADDING_METHOD, ItemType.ENUMERATION, 3),
                 Item(Tag.CRYPTOGRAPHIC_ALGORITHM, ItemType.ENUMERATION, 3),
                 Item(Tag.RANDOM_IV, ItemType.BOOLEAN, True)),
              Item(Tag.DATA, ItemType.BYTE_STRING, data)))))


def test_mongodb_secret_data_at_1_0(flow: Flow) -> None:
    """libmongocrypt's KMIP key: Register 96 bytes of Secret Data (Seed, Opaque, Cryptographic
    Usage Mask 0), Activate, Get — each its own 1.0 request."""
    secret = os.urandom(96)
    register = RegisterRequest(
        object_type=ObjectType.SECRET_DATA,
        attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, 0)],
        object=SecretData(secret_data_type=SecretDataType.SEED, key_block=KeyBlock(
            key_format_type=KeyFormatType.OPAQUE, key_value=KeyValue(key_material=secret))))
    assert request(item(Operation.REGISTER, register), version=V10) == \
        libmongocrypt_register(secret)
    registered = flow.ok(Operation.REGISTER, register, version=V10)
    uid = registered.unique_identifier
    assert uid
    assert flow.ok(Operation.ACTIVATE, ActivateRequest(unique_identifier=uid),
                   version=V10).unique_identifier == uid
    got = flow.ok(Operation.GET, GetRequest(unique_identifier=uid), version=V10)
    assert got.object_type == ObjectType.SECRET_DATA
    assert got.unique_identifier == uid
    assert isinstance(got.object, SecretData)
    assert got.object.secret_data_type == SecretDataType.SEED
    block = got.object.key_block
    assert block.key_format_type in (KeyFormatType.OPAQUE, KeyFormatType.RAW)
    assert block.key_value.key_material == secret
    flow.compare()


def test_mongodb_encrypt_decrypt_at_1_2(flow: Flow) -> None:
    """libmongocrypt's KMIP "delegated" mode: Create AES-256 (Encrypt|Decrypt), Activate,
    Encrypt with CBC + PKCS5 and a server-made random IV, Decrypt with that IV."""
    created = flow.ok(Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                                      attributes=aes256()), version=V12)
    assert created.object_type == ObjectType.SYMMETRIC_KEY
    uid = created.unique_identifier
    flow.ok(Operation.ACTIVATE, ActivateRequest(unique_identifier=uid), version=V12)
    plaintext = os.urandom(96)
    encrypt = EncryptRequest(
        unique_identifier=uid, cryptographic_parameters=CryptographicParameters(
            block_cipher_mode=BlockCipherMode.CBC, padding_method=PaddingMethod.PKCS5,
            cryptographic_algorithm=CryptographicAlgorithm.AES, random_iv=True),
        data=plaintext)
    assert request(item(Operation.ENCRYPT, encrypt), version=V12) == \
        libmongocrypt_encrypt(uid, plaintext)
    encrypted = flow.ok(Operation.ENCRYPT, encrypt, version=V12)
    assert encrypted.unique_identifier == uid
    assert len(encrypted.iv_counter_nonce or b"") == 16
    assert len(encrypted.data) == 112  # 96 bytes + a full block of PKCS5 padding
    assert encrypted.authenticated_encryption_tag is None  # a 1.4 field
    decrypted = flow.ok(Operation.DECRYPT, DecryptRequest(
        unique_identifier=uid, cryptographic_parameters=CryptographicParameters(
            block_cipher_mode=BlockCipherMode.CBC, padding_method=PaddingMethod.PKCS5,
            cryptographic_algorithm=CryptographicAlgorithm.AES),
        data=encrypted.data, iv_counter_nonce=encrypted.iv_counter_nonce), version=V12)
    assert decrypted.data == plaintext
    # The ciphertext is AES-256-CBC with PKCS#7 padding under the stored key.
    key = flow.ok(Operation.GET, GetRequest(unique_identifier=uid),
                  version=V12).object.key_block.key_value.key_material
    assert len(key) == 32
    decryptor = Cipher(algorithms.AES(key), modes.CBC(encrypted.iv_counter_nonce)).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    padded = decryptor.update(encrypted.data) + decryptor.finalize()
    assert unpadder.update(padded) + unpadder.finalize() == plaintext
    flow.compare()


# 2. A MySQL/PostgreSQL keyring plugin ---------------------------------------------------------
def test_keyring_plugin_at_1_4(flow: Flow) -> None:
    """Register a Raw AES-256 key with Name and Object Group, Locate it by Object Type +
    Name, page through the group, Get, Revoke, Destroy, and Get it once more."""
    group = Attribute.of(Tag.OBJECT_GROUP, unique("keyring-group"))
    key_name = unique("mysql-keyring-key")
    material = os.urandom(32)

    def register(key: bytes, attributes: list[Attribute]) -> str:
        return flow.ok(Operation.REGISTER, RegisterRequest(
            object_type=ObjectType.SYMMETRIC_KEY, attributes=aes256() + attributes,
            object=SymmetricKey(key_block=KeyBlock(
                key_format_type=KeyFormatType.RAW, key_value=KeyValue(key_material=key),
                cryptographic_algorithm=CryptographicAlgorithm.AES,
                cryptographic_length=256))), version=V14).unique_identifier

    uid = register(material, [name(key_name), group])
    flow.ok(Operation.ACTIVATE, ActivateRequest(unique_identifier=uid), version=V14)

    found = flow.ok(Operation.LOCATE, LocateRequest(attributes=[
        Attribute.of(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY), name(key_name)]), version=V14)
    assert found.unique_identifiers == [uid]

    other = register(os.urandom(32), [name(unique("mysql-keyring-key")), group])
    pages = []
    for offset in (0, 1):
        page = flow.ok(Operation.LOCATE, LocateRequest(
            maximum_items=1, offset_items=offset, attributes=[group]), version=V14)
        assert len(page.unique_identifiers) == 1
        assert page.located_items in (None, 2)
        pages += page.unique_identifiers
    assert sorted(pages) == sorted([uid, other])

    got = flow.ok(Operation.GET, GetRequest(unique_identifier=uid), version=V14)
    assert got.object_type == ObjectType.SYMMETRIC_KEY
    assert got.object.key_block.key_format_type == KeyFormatType.RAW
    assert got.object.key_block.key_value.key_material == material

    flow.ok(Operation.REVOKE, RevokeRequest(unique_identifier=uid, revocation_reason=(
        RevocationReason(code=RevocationReasonCode.CESSATION_OF_OPERATION))), version=V14)
    flow.ok(Operation.DESTROY, DestroyRequest(unique_identifier=uid), version=V14)

    # KMIP 1.4 has no Object Destroyed reason (2.0 added it): a destroyed object is not found.
    refused = flow.send(item(Operation.GET, GetRequest(unique_identifier=uid)),
                        version=V14).batch_items[0]
    assert refused.result_status == ResultStatus.OPERATION_FAILED
    assert refused.result_reason == ResultReason.ITEM_NOT_FOUND, refused.result_message
    assert refused.result_message and refused.result_message.isascii()
    flow.compare()


# 3. A hypervisor key provider -----------------------------------------------------------------
def test_hypervisor_key_provider_at_1_1(flow: Flow) -> None:
    """Discover Versions, Create AES-256 with a Name, Get Attributes of State, Get."""
    versions = flow.ok(Operation.DISCOVER_VERSIONS, DiscoverVersionsRequest(), version=V11)
    offered = [one.as_tuple() for one in versions.protocol_versions]
    assert V11 in offered
    assert offered == sorted(offered, reverse=True)  # the server's preference first

    created = flow.ok(Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY,
        attributes=aes256() + [name(unique("vm-key"))]), version=V11)
    uid = created.unique_identifier

    attributes = flow.ok(Operation.GET_ATTRIBUTES, GetAttributesRequest(
        unique_identifier=uid, attribute_references=[AttributeReference(Tag.STATE)]),
        version=V11)
    assert attributes.unique_identifier == uid
    assert [one.tag for one in attributes.attributes] == [Tag.STATE]
    assert attribute_values(attributes, Tag.STATE) == [State.PRE_ACTIVE]  # no Activation Date

    got = flow.ok(Operation.GET, GetRequest(unique_identifier=uid), version=V11)
    assert got.unique_identifier == uid
    assert got.object_type == ObjectType.SYMMETRIC_KEY
    block = got.object.key_block
    assert block.cryptographic_algorithm == CryptographicAlgorithm.AES
    assert block.cryptographic_length == 256
    assert len(block.key_value.key_material) == 32
    flow.compare()


# 4. A storage array's one-request batch -------------------------------------------------------
#: KMIP 1.0's operations (1.0 §9.1.3.2.26), for what a 1.0 Query may list.
OPERATIONS_1_0 = {
    Operation.CREATE, Operation.CREATE_KEY_PAIR, Operation.REGISTER, Operation.RE_KEY,
    Operation.DERIVE_KEY, Operation.CERTIFY, Operation.RE_CERTIFY, Operation.LOCATE,
    Operation.CHECK, Operation.GET, Operation.GET_ATTRIBUTES, Operation.GET_ATTRIBUTE_LIST,
    Operation.ADD_ATTRIBUTE, Operation.MODIFY_ATTRIBUTE, Operation.DELETE_ATTRIBUTE,
    Operation.OBTAIN_LEASE, Operation.GET_USAGE_ALLOCATION, Operation.ACTIVATE,
    Operation.REVOKE, Operation.DESTROY, Operation.ARCHIVE, Operation.RECOVER,
    Operation.VALIDATE, Operation.QUERY, Operation.CANCEL, Operation.POLL, Operation.NOTIFY,
    Operation.PUT,
}


def test_storage_array_batch_at_1_0(flow: Flow) -> None:
    """Query (Operations, Objects) + Locate by an ``x-`` attribute + Get in Opaque format +
    Get Attributes in ONE 1.0 request; Get and Get Attributes name no object: the Locate's
    ID Placeholder does."""
    serial = unique("array-serial")
    marker = Attribute.vendor("x", "ArrayKeyId",
                              Item(Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING, serial))
    uid = flow.ok(Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                                  attributes=aes256() + [marker]),
                  version=V10).unique_identifier
    flow.ok(Operation.ACTIVATE, ActivateRequest(unique_identifier=uid), version=V10)

    answer = flow.send(
        item(Operation.QUERY, QueryRequest(query_functions=[
            QueryFunction.QUERY_OPERATIONS, QueryFunction.QUERY_OBJECTS]), b"\x01"),
        item(Operation.LOCATE, LocateRequest(attributes=[
            Attribute.of(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY), marker]), b"\x02"),
        item(Operation.GET, GetRequest(key_format_type=KeyFormatType.OPAQUE), b"\x03"),
        item(Operation.GET_ATTRIBUTES, GetAttributesRequest(attribute_references=[
            AttributeReference(Tag.CRYPTOGRAPHIC_ALGORITHM),
            AttributeReference(Tag.CRYPTOGRAPHIC_LENGTH), AttributeReference(Tag.STATE),
            AttributeReference(marker.tag, "x", "ArrayKeyId")]), b"\x04"),
        version=V10)
    query, located, got, attributes = answer.batch_items
    for answered, operation, batch_id in zip(
            answer.batch_items,
            (Operation.QUERY, Operation.LOCATE, Operation.GET, Operation.GET_ATTRIBUTES),
            (b"\x01", b"\x02", b"\x03", b"\x04"), strict=True):
        assert_success(answered)
        assert answered.operation == operation
        assert answered.unique_batch_item_id == batch_id

    offered = set(query.response_payload.operations)
    assert {Operation.LOCATE, Operation.GET, Operation.GET_ATTRIBUTES, Operation.CREATE,
            Operation.REGISTER, Operation.QUERY} <= offered
    assert offered <= OPERATIONS_1_0, offered - OPERATIONS_1_0
    assert ObjectType.SYMMETRIC_KEY in query.response_payload.object_types

    assert located.response_payload.unique_identifiers == [uid]

    key = got.response_payload
    assert key.unique_identifier == uid
    assert key.object_type == ObjectType.SYMMETRIC_KEY
    assert key.object.key_block.key_format_type == KeyFormatType.OPAQUE
    assert len(key.object.key_block.key_value.key_material) == 32

    payload = attributes.response_payload
    assert payload.unique_identifier == uid
    assert attribute_values(payload, Tag.CRYPTOGRAPHIC_ALGORITHM) == [
        CryptographicAlgorithm.AES]
    assert attribute_values(payload, Tag.CRYPTOGRAPHIC_LENGTH) == [256]
    assert attribute_values(payload, Tag.STATE) == [State.ACTIVE]
    custom = [one for one in payload.attributes if one.tag == marker.tag]
    assert [(one.vendor_identification, one.name, one.typed) for one in custom] == [
        ("x", "ArrayKeyId", serial)]
    flow.compare()
