"""Managed objects and key blocks (KMIP 1.4 §2.2, 2.1 §2.2-§2.3). Pure.

Modelled: Symmetric Key, Secret Data, Opaque Object, and the Key Block parts they use.
Other managed objects (certificates, asymmetric and split keys, templates, PGP keys)
stay raw :class:`Item` trees wherever an object may appear, so they round-trip intact.
"""

from __future__ import annotations

from typing import Any

from kcm.kmip.attributes import Attribute, AttributeList, CryptographicParameters
from kcm.kmip.enums import (
    CryptographicAlgorithm,
    EncodingOption,
    KeyCompressionType,
    KeyFormatType,
    SecretDataType,
    WrappingMethod,
)
from kcm.kmip.fields import (
    Codec,
    Nested,
    OneOf,
    Primitive,
    Struct,
    TextOrRaw,
    Version,
    fld,
    kmip_struct,
)
from kcm.kmip.tags import Tag
from kcm.ttlv.types import Item, ItemType

_BYTES = ItemType.BYTE_STRING


@kmip_struct(Tag.KEY_MATERIAL)
class TransparentSymmetricKey(Struct):
    """Key Material of a Transparent Symmetric Key: just the key bytes."""

    key: bytes = fld(Tag.KEY, _BYTES, required=True, secret=True)


class KeyMaterial(Codec):
    """Key Material: ``bytes`` (Raw/Opaque/PKCS formats), a TransparentSymmetricKey,
    or, for other transparent structures (RSA, EC, ...), the raw structure Item."""

    __slots__ = ()
    types = frozenset((_BYTES, ItemType.STRUCTURE))

    def decode(self, item: Item, version: Version) -> Any:
        if item.type is _BYTES:
            return item.value
        children = item.value
        if len(children) == 1 and children[0].tag == Tag.KEY and children[0].type is _BYTES:
            return TransparentSymmetricKey.from_item(item, version)
        return item

    def encode(self, value: Any, tag: int, version: Version) -> Item:
        if isinstance(value, bytes):
            return Item(tag, _BYTES, value)
        if isinstance(value, Struct):
            return value.to_item(version, tag)
        return value


@kmip_struct(Tag.KEY_VALUE)
class KeyValue(Struct):
    """Key Value: the key material and, optionally, attributes bound to it."""

    key_material: bytes | TransparentSymmetricKey | Item = fld(
        Tag.KEY_MATERIAL, KeyMaterial(), required=True, secret=True)
    attributes: list[Attribute] | None = fld((Tag.ATTRIBUTE, Tag.ATTRIBUTES), AttributeList())


@kmip_struct(Tag.ENCRYPTION_KEY_INFORMATION)
class EncryptionKeyInformation(Struct):
    """The key that wraps (encrypts) a key value, and how."""

    unique_identifier: str | Item = fld(Tag.UNIQUE_IDENTIFIER, TextOrRaw(), required=True)
    cryptographic_parameters: CryptographicParameters | None = fld(
        Tag.CRYPTOGRAPHIC_PARAMETERS, CryptographicParameters)


@kmip_struct(Tag.MAC_SIGNATURE_KEY_INFORMATION)
class MacSignatureKeyInformation(Struct):
    """The key that MACs or signs a wrapped key value, and how."""

    unique_identifier: str | Item = fld(Tag.UNIQUE_IDENTIFIER, TextOrRaw(), required=True)
    cryptographic_parameters: CryptographicParameters | None = fld(
        Tag.CRYPTOGRAPHIC_PARAMETERS, CryptographicParameters)


@kmip_struct(Tag.KEY_WRAPPING_DATA)
class KeyWrappingData(Struct):
    """How a key block's Key Value was wrapped (KMIP 1.4 §2.1.5, 2.1 §2.1.5)."""

    wrapping_method: WrappingMethod | int = fld(Tag.WRAPPING_METHOD, WrappingMethod,
                                                required=True)
    encryption_key_information: EncryptionKeyInformation | None = fld(
        Tag.ENCRYPTION_KEY_INFORMATION, EncryptionKeyInformation)
    mac_signature_key_information: MacSignatureKeyInformation | None = fld(
        Tag.MAC_SIGNATURE_KEY_INFORMATION, MacSignatureKeyInformation)
    mac_signature: bytes | None = fld(Tag.MAC_SIGNATURE, _BYTES)
    iv_counter_nonce: bytes | None = fld(Tag.IV_COUNTER_NONCE, _BYTES)
    encoding_option: EncodingOption | int | None = fld(Tag.ENCODING_OPTION, EncodingOption)


@kmip_struct(Tag.KEY_WRAPPING_SPECIFICATION)
class KeyWrappingSpecification(Struct):
    """How a Get response should wrap the key (KMIP 1.4 §2.1.6, 2.1 §2.1.6)."""

    wrapping_method: WrappingMethod | int = fld(Tag.WRAPPING_METHOD, WrappingMethod,
                                                required=True)
    encryption_key_information: EncryptionKeyInformation | None = fld(
        Tag.ENCRYPTION_KEY_INFORMATION, EncryptionKeyInformation)
    mac_signature_key_information: MacSignatureKeyInformation | None = fld(
        Tag.MAC_SIGNATURE_KEY_INFORMATION, MacSignatureKeyInformation)
    attribute_names: list[str] = fld(Tag.ATTRIBUTE_NAME, ItemType.TEXT_STRING, repeated=True)
    encoding_option: EncodingOption | int | None = fld(Tag.ENCODING_OPTION, EncodingOption)


#: Key Value: a structure when in the clear, a Byte String when wrapped (§2.1.4).
_KEY_VALUE = OneOf((ItemType.STRUCTURE, KeyValue, Nested(KeyValue)),
                   (_BYTES, bytes, Primitive(_BYTES)))


@kmip_struct(Tag.KEY_BLOCK)
class KeyBlock(Struct):
    """Key Block (KMIP 1.4 §2.1.3, 2.1 §2.1.3). ``key_value`` is bytes when wrapped."""

    key_format_type: KeyFormatType | int = fld(Tag.KEY_FORMAT_TYPE, KeyFormatType,
                                               required=True)
    key_compression_type: KeyCompressionType | int | None = fld(Tag.KEY_COMPRESSION_TYPE,
                                                                KeyCompressionType)
    key_value: KeyValue | bytes | None = fld(Tag.KEY_VALUE, _KEY_VALUE)
    cryptographic_algorithm: CryptographicAlgorithm | int | None = fld(
        Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm)
    cryptographic_length: int | None = fld(Tag.CRYPTOGRAPHIC_LENGTH, ItemType.INTEGER)
    key_wrapping_data: KeyWrappingData | None = fld(Tag.KEY_WRAPPING_DATA, KeyWrappingData)

    @property
    def key_bytes(self) -> bytes | None:
        """The plain key bytes (Raw or Transparent Symmetric Key), else None."""
        value = self.key_value
        if not isinstance(value, KeyValue) or self.key_wrapping_data is not None:
            return None
        material = value.key_material
        if isinstance(material, bytes):
            return material
        if isinstance(material, TransparentSymmetricKey):
            return material.key
        return None


@kmip_struct(Tag.SYMMETRIC_KEY)
class SymmetricKey(Struct):
    """Symmetric Key managed object."""

    key_block: KeyBlock = fld(Tag.KEY_BLOCK, KeyBlock, required=True)


@kmip_struct(Tag.SECRET_DATA)
class SecretData(Struct):
    """Secret Data managed object (a password, a seed, ...)."""

    secret_data_type: SecretDataType | int = fld(Tag.SECRET_DATA_TYPE, SecretDataType,
                                                 required=True)
    key_block: KeyBlock = fld(Tag.KEY_BLOCK, KeyBlock, required=True)


@kmip_struct(Tag.OPAQUE_OBJECT)
class OpaqueObject(Struct):
    """Opaque Object managed object: bytes the server does not interpret."""

    opaque_data_type: int = fld(Tag.OPAQUE_DATA_TYPE, ItemType.ENUMERATION, required=True)
    opaque_data_value: bytes = fld(Tag.OPAQUE_DATA_VALUE, _BYTES, required=True)


ManagedObject = SymmetricKey | SecretData | OpaqueObject | Item

_MODELLED: dict[int, type[Struct]] = {
    Tag.SYMMETRIC_KEY: SymmetricKey, Tag.SECRET_DATA: SecretData, Tag.OPAQUE_OBJECT: OpaqueObject,
}

#: The tags a managed object may have in a Register request or a Get response.
OBJECT_TAGS: tuple[int, ...] = (
    Tag.CERTIFICATE, Tag.SYMMETRIC_KEY, Tag.PUBLIC_KEY, Tag.PRIVATE_KEY, Tag.SPLIT_KEY,
    Tag.TEMPLATE, Tag.SECRET_DATA, Tag.OPAQUE_OBJECT, Tag.PGP_KEY, Tag.CERTIFICATE_REQUEST,
)


class ManagedObjectCodec(Codec):
    """A managed object: a model for the modelled kinds, the raw Item for the others."""

    __slots__ = ()
    types = frozenset((ItemType.STRUCTURE,))

    def decode(self, item: Item, version: Version) -> Any:
        cls = _MODELLED.get(item.tag)
        return item if cls is None else cls.from_item(item, version)

    def encode(self, value: Any, tag: int, version: Version) -> Item:
        return value.to_item(version) if isinstance(value, Struct) else value
