"""Payloads of the attribute operations: Get Attributes, Get Attribute List, Add, Modify,
Delete, Set and Adjust Attribute (KMIP 1.4 §4.11-4.15, 2.1 §6.1.4-6.1.7, §6.1.23-24, §6.1.47).

1.x names attributes by Attribute Name text and carries single ``Attribute``
structures; 2.x uses Attribute Reference and New/Current Attribute. The models hold
:class:`Attribute` / :class:`AttributeReference` and encode per version.
"""

from __future__ import annotations

from kcm.kmip.attributes import (
    Attribute,
    AttributeList,
    AttributeReference,
    References,
    SingleAttribute,
)
from kcm.kmip.enums import AdjustmentType
from kcm.kmip.fields import Struct, fld, kmip_struct
from kcm.kmip.payloads._common import RAW, UID
from kcm.kmip.tags import Tag
from kcm.ttlv.types import Item, ItemType

_REQ = Tag.REQUEST_PAYLOAD
_RESP = Tag.RESPONSE_PAYLOAD
_REFS = (Tag.ATTRIBUTE_NAME, Tag.ATTRIBUTE_REFERENCE)
_NEW = SingleAttribute(v1=True, v2_tag=Tag.NEW_ATTRIBUTE)
_CURRENT = SingleAttribute(v1=False, v2_tag=Tag.CURRENT_ATTRIBUTE)
_ECHO = SingleAttribute(v1=True, v2_tag=None)


@kmip_struct(_REQ)
class GetAttributesRequest(Struct):
    """Get Attributes: which attributes (none listed: all of them)."""

    unique_identifier: str | Item | None = fld(Tag.UNIQUE_IDENTIFIER, UID)
    attribute_references: list[AttributeReference] = fld(_REFS, References(), repeated=True)


@kmip_struct(_RESP)
class GetAttributesResponse(Struct):
    """Get Attributes response: 1.x repeated Attribute, 2.x one Attributes structure."""

    unique_identifier: str = fld(Tag.UNIQUE_IDENTIFIER, UID, required=True)
    attributes: list[Attribute] | None = fld((Tag.ATTRIBUTE, Tag.ATTRIBUTES), AttributeList())


@kmip_struct(_REQ)
class GetAttributeListRequest(Struct):
    """Get Attribute List request."""

    unique_identifier: str | Item | None = fld(Tag.UNIQUE_IDENTIFIER, UID)


@kmip_struct(_RESP)
class GetAttributeListResponse(Struct):
    """Get Attribute List response: the attributes the object has."""

    unique_identifier: str = fld(Tag.UNIQUE_IDENTIFIER, UID, required=True)
    attribute_references: list[AttributeReference] = fld(_REFS, References(), repeated=True)


@kmip_struct(_REQ)
class AddAttributeRequest(Struct):
    """Add Attribute: 1.x ``Attribute``, 2.x ``New Attribute``."""

    unique_identifier: str | Item | None = fld(Tag.UNIQUE_IDENTIFIER, UID)
    attribute: Attribute = fld((Tag.ATTRIBUTE, Tag.NEW_ATTRIBUTE), _NEW, required=True)


@kmip_struct(_RESP)
class AttributeEchoResponse(Struct):
    """Response of Add/Modify/Delete Attribute: 1.x echoes the attribute, 2.x does not."""

    unique_identifier: str = fld(Tag.UNIQUE_IDENTIFIER, UID, required=True)
    attribute: Attribute | None = fld(Tag.ATTRIBUTE, _ECHO)


class AddAttributeResponse(AttributeEchoResponse):
    """Add Attribute response."""

    __slots__ = ()


class ModifyAttributeResponse(AttributeEchoResponse):
    """Modify Attribute response."""

    __slots__ = ()


class DeleteAttributeResponse(AttributeEchoResponse):
    """Delete Attribute response."""

    __slots__ = ()


@kmip_struct(_REQ)
class ModifyAttributeRequest(Struct):
    """Modify Attribute: 1.x ``Attribute`` (with index); 2.x optional Current, then New."""

    unique_identifier: str | Item | None = fld(Tag.UNIQUE_IDENTIFIER, UID)
    current_attribute: Attribute | None = fld(Tag.CURRENT_ATTRIBUTE, _CURRENT)
    attribute: Attribute = fld((Tag.ATTRIBUTE, Tag.NEW_ATTRIBUTE), _NEW, required=True)


@kmip_struct(_REQ)
class DeleteAttributeRequest(Struct):
    """Delete Attribute: 1.x Attribute Name + Index; 2.x Current Attribute or Reference."""

    unique_identifier: str | Item | None = fld(Tag.UNIQUE_IDENTIFIER, UID)
    current_attribute: Attribute | None = fld(Tag.CURRENT_ATTRIBUTE, _CURRENT)
    attribute_reference: AttributeReference | None = fld(_REFS, References())
    attribute_index: int | None = fld(Tag.ATTRIBUTE_INDEX, ItemType.INTEGER)


@kmip_struct(_REQ)
class SetAttributeRequest(Struct):
    """Set Attribute (2.x): set a single-valued attribute."""

    unique_identifier: str | Item | None = fld(Tag.UNIQUE_IDENTIFIER, UID)
    attribute: Attribute = fld(Tag.NEW_ATTRIBUTE, _NEW, required=True)


@kmip_struct(_REQ)
class AdjustAttributeRequest(Struct):
    """Adjust Attribute (2.x): increment, decrement or negate a numeric attribute."""

    unique_identifier: str | Item | None = fld(Tag.UNIQUE_IDENTIFIER, UID)
    attribute_reference: AttributeReference = fld(Tag.ATTRIBUTE_REFERENCE, References(),
                                                  required=True)
    adjustment_type: AdjustmentType | int = fld(Tag.ADJUSTMENT_TYPE, AdjustmentType,
                                                required=True)
    adjustment_value: Item | None = fld(Tag.ADJUSTMENT_VALUE, RAW)
