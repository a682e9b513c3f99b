"""Constants and small helpers shared by the object operations (Register, Re-key, Get,
Locate)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kcm.kmip import registry
from kcm.kmip.attributes import VENDOR_TAG, Attribute
from kcm.kmip.enums import (
    BlockCipherMode,
    ObjectType,
    ResultReason,
    State,
)
from kcm.kmip.tags import Tag
from kcm.kmip.versions import Version

#: The Object Type each managed-object structure stands for.
OBJECT_TYPE_OF_TAG: dict[int, ObjectType] = {
    Tag.CERTIFICATE: ObjectType.CERTIFICATE,
    Tag.SYMMETRIC_KEY: ObjectType.SYMMETRIC_KEY,
    Tag.PUBLIC_KEY: ObjectType.PUBLIC_KEY,
    Tag.PRIVATE_KEY: ObjectType.PRIVATE_KEY,
    Tag.SPLIT_KEY: ObjectType.SPLIT_KEY,
    Tag.TEMPLATE: ObjectType.TEMPLATE,
    Tag.SECRET_DATA: ObjectType.SECRET_DATA,
    Tag.OPAQUE_OBJECT: ObjectType.OPAQUE_OBJECT,
    Tag.PGP_KEY: ObjectType.PGP_KEY,
    Tag.CERTIFICATE_REQUEST: ObjectType.CERTIFICATE_REQUEST,
}



AES_KEY_BITS = frozenset({128, 192, 256})
DESTROYED = (State.DESTROYED, State.DESTROYED_COMPROMISED)
WRAP_MODES = (BlockCipherMode.NISTKEYWRAP, BlockCipherMode.AESKEYWRAPPADDING)




def value_of(attributes: Iterable[Attribute], tag: int) -> Any:
    for attribute in attributes:
        if attribute.tag == tag:
            return attribute.typed
    return None


def invalid_object_type(version: Version) -> ResultReason:
    return ResultReason.INVALID_OBJECT_TYPE


def tag_label(tag: int) -> str:
    return registry.tag_name(tag) or registry.tag_name(tag, (1, 4)) or f"0x{tag:06X}"


def enum_label(enum: Any, value: Any) -> str:
    if value is None:
        return "none"
    try:
        return enum(value).name
    except ValueError:
        return f"0x{int(value):08X}"

def attribute_identity(attribute: Attribute) -> tuple[int, str | None, str | None]:
    """What makes two attributes "the same attribute" (vendor ones by vendor and name)."""
    if attribute.tag == VENDOR_TAG:
        return (VENDOR_TAG, attribute.vendor_identification, attribute.name)
    return (attribute.tag, None, None)
