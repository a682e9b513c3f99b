"""Payloads of the object lifecycle operations: Create, Register, Re-key, Get, Activate,
Revoke, Destroy, Check (KMIP 1.4 §4, 2.1 §6.1)."""

from __future__ import annotations

from dataclasses import field

from kcm.kmip.attributes import Attribute, Name, TemplateAttributes
from kcm.kmip.enums import (
    KeyCompressionType,
    KeyFormatType,
    KeyWrapType,
    ObjectType,
    RevocationReasonCode,
)
from kcm.kmip.fields import Struct, fld, kmip_struct
from kcm.kmip.objects import (
    OBJECT_TAGS,
    KeyWrappingSpecification,
    ManagedObject,
    ManagedObjectCodec,
)
from kcm.kmip.payloads._common import RAW, UID
from kcm.kmip.tags import Tag
from kcm.ttlv.types import Item, ItemType

_REQ = Tag.REQUEST_PAYLOAD
_RESP = Tag.RESPONSE_PAYLOAD
_ATTRS = (Tag.TEMPLATE_ATTRIBUTE, Tag.ATTRIBUTES)


@kmip_struct(_REQ)
class CreateRequest(Struct):
    """Create: object type and attributes (1.x Template-Attribute, 2.x Attributes)."""

    object_type: ObjectType | int = fld(Tag.OBJECT_TYPE, ObjectType, required=True)
    attributes: list[Attribute] | None = fld(_ATTRS, TemplateAttributes(), required=True)
    protection_storage_masks: Item | None = fld(Tag.PROTECTION_STORAGE_MASKS, RAW)
    template_names: list[Name] = field(default_factory=list)


@kmip_struct(_RESP)
class CreateResponse(Struct):
    """Create response; ``attributes`` are those the server set implicitly (1.x only)."""

    object_type: ObjectType | int = fld(Tag.OBJECT_TYPE, ObjectType, required=True)
    unique_identifier: str = fld(Tag.UNIQUE_IDENTIFIER, UID, required=True)
    attributes: list[Attribute] | None = fld(Tag.TEMPLATE_ATTRIBUTE, TemplateAttributes())
    template_names: list[Name] = field(default_factory=list)


@kmip_struct(_REQ)
class RegisterRequest(Struct):
    """Register: object type, attributes and the object itself."""

    object_type: ObjectType | int = fld(Tag.OBJECT_TYPE, ObjectType, required=True)
    attributes: list[Attribute] | None = fld(_ATTRS, TemplateAttributes(), required=True)
    object: ManagedObject = fld(OBJECT_TAGS, ManagedObjectCodec(), required=True)
    protection_storage_masks: Item | None = fld(Tag.PROTECTION_STORAGE_MASKS, RAW)
    template_names: list[Name] = field(default_factory=list)


@kmip_struct(_RESP)
class RegisterResponse(Struct):
    """Register response."""

    unique_identifier: str = fld(Tag.UNIQUE_IDENTIFIER, UID, required=True)
    attributes: list[Attribute] | None = fld(Tag.TEMPLATE_ATTRIBUTE, TemplateAttributes())
    template_names: list[Name] = field(default_factory=list)


@kmip_struct(_REQ)
class ReKeyRequest(Struct):
    """Re-key: the key to replace (placeholder if omitted), an offset, new attributes."""

    unique_identifier: str | Item | None = fld(Tag.UNIQUE_IDENTIFIER, UID)
    offset: int | None = fld(Tag.OFFSET, ItemType.INTERVAL)
    attributes: list[Attribute] | None = fld(_ATTRS, TemplateAttributes())
    protection_storage_masks: Item | None = fld(Tag.PROTECTION_STORAGE_MASKS, RAW)
    template_names: list[Name] = field(default_factory=list)


@kmip_struct(_RESP)
class ReKeyResponse(Struct):
    """Re-key response: the new key's identifier."""

    unique_identifier: str = fld(Tag.UNIQUE_IDENTIFIER, UID, required=True)
    attributes: list[Attribute] | None = fld(Tag.TEMPLATE_ATTRIBUTE, TemplateAttributes())
    template_names: list[Name] = field(default_factory=list)


@kmip_struct(_REQ)
class GetRequest(Struct):
    """Get: which object, in which format, optionally wrapped."""

    unique_identifier: str | Item | None = fld(Tag.UNIQUE_IDENTIFIER, UID)
    key_format_type: KeyFormatType | int | None = fld(Tag.KEY_FORMAT_TYPE, KeyFormatType)
    key_wrap_type: KeyWrapType | int | None = fld(Tag.KEY_WRAP_TYPE, KeyWrapType)
    key_compression_type: KeyCompressionType | int | None = fld(Tag.KEY_COMPRESSION_TYPE,
                                                                KeyCompressionType)
    key_wrapping_specification: KeyWrappingSpecification | None = fld(
        Tag.KEY_WRAPPING_SPECIFICATION, KeyWrappingSpecification)


@kmip_struct(_RESP)
class GetResponse(Struct):
    """Get response: the object (a model, or the raw Item for unmodelled kinds)."""

    object_type: ObjectType | int = fld(Tag.OBJECT_TYPE, ObjectType, required=True)
    unique_identifier: str = fld(Tag.UNIQUE_IDENTIFIER, UID, required=True)
    object: ManagedObject = fld(OBJECT_TAGS, ManagedObjectCodec(), required=True)


@kmip_struct(_REQ)
class UniqueIdentifierPayload(Struct):
    """A payload of only an optional Unique Identifier (Activate, Destroy requests)."""

    unique_identifier: str | Item | None = fld(Tag.UNIQUE_IDENTIFIER, UID)


@kmip_struct(_RESP)
class UniqueIdentifierResponse(Struct):
    """A response of only the object's Unique Identifier (Activate, Revoke, Destroy, ...)."""

    unique_identifier: str = fld(Tag.UNIQUE_IDENTIFIER, UID, required=True)


class ActivateRequest(UniqueIdentifierPayload):
    """Activate request."""

    __slots__ = ()


class DestroyRequest(UniqueIdentifierPayload):
    """Destroy request."""

    __slots__ = ()


@kmip_struct(Tag.REVOCATION_REASON)
class RevocationReason(Struct):
    """Why an object is revoked."""

    code: RevocationReasonCode | int = fld(Tag.REVOCATION_REASON_CODE, RevocationReasonCode,
                                           required=True)
    message: str | None = fld(Tag.REVOCATION_MESSAGE, ItemType.TEXT_STRING)


@kmip_struct(_REQ)
class RevokeRequest(Struct):
    """Revoke: the reason and, for a compromise, when it happened."""

    unique_identifier: str | Item | None = fld(Tag.UNIQUE_IDENTIFIER, UID)
    revocation_reason: RevocationReason = fld(Tag.REVOCATION_REASON, RevocationReason,
                                              required=True)
    compromise_occurrence_date: int | None = fld(Tag.COMPROMISE_OCCURRENCE_DATE,
                                                 ItemType.DATE_TIME)


@kmip_struct(_REQ)
class CheckRequest(Struct):
    """Check: could the object be used this way (usage count, mask, lease)?"""

    unique_identifier: str | Item | None = fld(Tag.UNIQUE_IDENTIFIER, UID)
    usage_limits_count: int | None = fld(Tag.USAGE_LIMITS_COUNT, ItemType.LONG_INTEGER)
    cryptographic_usage_mask: int | None = fld(Tag.CRYPTOGRAPHIC_USAGE_MASK, ItemType.INTEGER)
    lease_time: int | None = fld(Tag.LEASE_TIME, ItemType.INTERVAL)


@kmip_struct(_RESP)
class CheckResponse(Struct):
    """Check response: the identifier, and the fields that failed the check."""

    unique_identifier: str = fld(Tag.UNIQUE_IDENTIFIER, UID, required=True)
    usage_limits_count: int | None = fld(Tag.USAGE_LIMITS_COUNT, ItemType.LONG_INTEGER)
    cryptographic_usage_mask: int | None = fld(Tag.CRYPTOGRAPHIC_USAGE_MASK, ItemType.INTEGER)
    lease_time: int | None = fld(Tag.LEASE_TIME, ItemType.INTERVAL)
