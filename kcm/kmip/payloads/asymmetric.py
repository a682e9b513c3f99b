"""Payloads of Create Key Pair, Sign, Signature Verify and Derive Key
(KMIP 1.4 §4.2, §4.31, §4.32, §4.6; 2.1 §6.1.8, §6.1.49, §6.1.50, §6.1.11)."""

from __future__ import annotations

from dataclasses import field as dataclass_field
from typing import Any

from kcm.kmip.attributes import (
    Attribute,
    CryptographicParameters,
    Name,
    TemplateAttributes,
)
from kcm.kmip.enums import DerivationMethod, ObjectType, ValidityIndicator
from kcm.kmip.fields import Struct, fld, kmip_struct
from kcm.kmip.payloads._common import RAW, UID
from kcm.kmip.tags import Tag
from kcm.ttlv.types import Item, ItemType

_REQ = Tag.REQUEST_PAYLOAD
_RESP = Tag.RESPONSE_PAYLOAD
_BYTES = ItemType.BYTE_STRING
_BOOL = ItemType.BOOLEAN
_S = ItemType.STRUCTURE
_ATTRS = (Tag.TEMPLATE_ATTRIBUTE, Tag.ATTRIBUTES)


def _part(v1_tag: int, v2_tag: int | None, names_field: str, *, required: bool = False) -> Any:
    tags = (v1_tag,) if v2_tag is None else (v1_tag, v2_tag)
    return fld(tags, TemplateAttributes(v1_tag, v2_tag, names_field), required=required)


@kmip_struct(_REQ)
class CreateKeyPairRequest(Struct):
    """Create Key Pair: attributes for both keys, then for each key alone (these win)."""

    common_attributes: list[Attribute] | None = _part(
        Tag.COMMON_TEMPLATE_ATTRIBUTE, Tag.COMMON_ATTRIBUTES, "common_template_names")
    private_key_attributes: list[Attribute] | None = _part(
        Tag.PRIVATE_KEY_TEMPLATE_ATTRIBUTE, Tag.PRIVATE_KEY_ATTRIBUTES,
        "private_key_template_names")
    public_key_attributes: list[Attribute] | None = _part(
        Tag.PUBLIC_KEY_TEMPLATE_ATTRIBUTE, Tag.PUBLIC_KEY_ATTRIBUTES,
        "public_key_template_names")
    common_protection_storage_masks: Item | None = fld(Tag.COMMON_PROTECTION_STORAGE_MASKS, RAW)
    private_protection_storage_masks: Item | None = fld(
        Tag.PRIVATE_PROTECTION_STORAGE_MASKS, RAW)
    public_protection_storage_masks: Item | None = fld(Tag.PUBLIC_PROTECTION_STORAGE_MASKS, RAW)
    common_template_names: list[Name] = dataclass_field(default_factory=list)
    private_key_template_names: list[Name] = dataclass_field(default_factory=list)
    public_key_template_names: list[Name] = dataclass_field(default_factory=list)


@kmip_struct(_RESP)
class CreateKeyPairResponse(Struct):
    """Create Key Pair response: both identifiers; 1.x may echo implicitly set attributes."""

    private_key_unique_identifier: str = fld(Tag.PRIVATE_KEY_UNIQUE_IDENTIFIER, UID,
                                             required=True)
    public_key_unique_identifier: str = fld(Tag.PUBLIC_KEY_UNIQUE_IDENTIFIER, UID,
                                            required=True)
    private_key_attributes: list[Attribute] | None = _part(
        Tag.PRIVATE_KEY_TEMPLATE_ATTRIBUTE, None, "private_key_template_names")
    public_key_attributes: list[Attribute] | None = _part(
        Tag.PUBLIC_KEY_TEMPLATE_ATTRIBUTE, None, "public_key_template_names")
    private_key_template_names: list[Name] = dataclass_field(default_factory=list)
    public_key_template_names: list[Name] = dataclass_field(default_factory=list)


@kmip_struct(_REQ)
class SignRequest(Struct):
    """Sign: the key, how, and the data (or its digest), possibly streamed."""

    unique_identifier: str | Item | None = fld(Tag.UNIQUE_IDENTIFIER, UID)
    cryptographic_parameters: CryptographicParameters | None = fld(
        Tag.CRYPTOGRAPHIC_PARAMETERS, CryptographicParameters)
    data: bytes | None = fld(Tag.DATA, _BYTES)
    digested_data: bytes | None = fld(Tag.DIGESTED_DATA, _BYTES)
    correlation_value: bytes | None = fld(Tag.CORRELATION_VALUE, _BYTES)
    init_indicator: bool | None = fld(Tag.INIT_INDICATOR, _BOOL)
    final_indicator: bool | None = fld(Tag.FINAL_INDICATOR, _BOOL)


@kmip_struct(_RESP)
class SignResponse(Struct):
    """Sign response: the signature (absent while a stream continues)."""

    unique_identifier: str = fld(Tag.UNIQUE_IDENTIFIER, UID, required=True)
    signature_data: bytes | None = fld(Tag.SIGNATURE_DATA, _BYTES)
    correlation_value: bytes | None = fld(Tag.CORRELATION_VALUE, _BYTES)


@kmip_struct(_REQ)
class SignatureVerifyRequest(Struct):
    """Signature Verify: the key, how, the data (or its digest) and the signature."""

    unique_identifier: str | Item | None = fld(Tag.UNIQUE_IDENTIFIER, UID)
    cryptographic_parameters: CryptographicParameters | None = fld(
        Tag.CRYPTOGRAPHIC_PARAMETERS, CryptographicParameters)
    data: bytes | None = fld(Tag.DATA, _BYTES)
    digested_data: bytes | None = fld(Tag.DIGESTED_DATA, _BYTES)
    signature_data: bytes | None = fld(Tag.SIGNATURE_DATA, _BYTES)
    correlation_value: bytes | None = fld(Tag.CORRELATION_VALUE, _BYTES)
    init_indicator: bool | None = fld(Tag.INIT_INDICATOR, _BOOL)
    final_indicator: bool | None = fld(Tag.FINAL_INDICATOR, _BOOL)


@kmip_struct(_RESP)
class SignatureVerifyResponse(Struct):
    """Signature Verify response: Valid, Invalid or Unknown."""

    unique_identifier: str = fld(Tag.UNIQUE_IDENTIFIER, UID, required=True)
    validity_indicator: ValidityIndicator | int | None = fld(Tag.VALIDITY_INDICATOR,
                                                             ValidityIndicator)
    data: bytes | None = fld(Tag.DATA, _BYTES)
    correlation_value: bytes | None = fld(Tag.CORRELATION_VALUE, _BYTES)


@kmip_struct(Tag.DERIVATION_PARAMETERS)
class DerivationParameters(Struct):
    """Derivation Parameters (KMIP 1.4 §4.6, 2.1 §6.1.11): what a method needs."""

    cryptographic_parameters: CryptographicParameters | None = fld(
        Tag.CRYPTOGRAPHIC_PARAMETERS, CryptographicParameters)
    initialization_vector: bytes | None = fld(Tag.INITIALIZATION_VECTOR, _BYTES)
    derivation_data: bytes | None = fld(Tag.DERIVATION_DATA, _BYTES, secret=True)
    salt: bytes | None = fld(Tag.SALT, _BYTES)
    iteration_count: int | None = fld(Tag.ITERATION_COUNT, ItemType.INTEGER)


@kmip_struct(_REQ)
class DeriveKeyRequest(Struct):
    """Derive Key: the new object's type and attributes, the base objects and the method."""

    object_type: ObjectType | int = fld(Tag.OBJECT_TYPE, ObjectType, required=True)
    unique_identifiers: list[str | Item] = fld(Tag.UNIQUE_IDENTIFIER, UID, repeated=True)
    derivation_method: DerivationMethod | int = fld(Tag.DERIVATION_METHOD, DerivationMethod,
                                                    required=True)
    derivation_parameters: DerivationParameters = fld(Tag.DERIVATION_PARAMETERS,
                                                      DerivationParameters, required=True)
    attributes: list[Attribute] | None = fld(_ATTRS, TemplateAttributes())
    template_names: list[Name] = dataclass_field(default_factory=list)


@kmip_struct(_RESP)
class DeriveKeyResponse(Struct):
    """Derive Key response: the new object's identifier."""

    unique_identifier: str = fld(Tag.UNIQUE_IDENTIFIER, UID, required=True)
    attributes: list[Attribute] | None = fld(Tag.TEMPLATE_ATTRIBUTE, TemplateAttributes())
    template_names: list[Name] = dataclass_field(default_factory=list)
