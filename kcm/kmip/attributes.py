"""One representation of a KMIP attribute for both wire forms (KMIP 1.x and 2.x). Pure.

An :class:`Attribute` holds its value as an :class:`Item` tagged with the attribute's
own tag (Cryptographic Algorithm is an Enumeration tagged 0x420028), whichever form it
arrived in:

* KMIP 1.x ``Attribute`` {Attribute Name, Attribute Index, Attribute Value}: the value,
  tagged Attribute Value on the wire, is retagged with the tag the name denotes
  (``registry.attribute_tag``). Custom 1.x names ("x-Foo", "y-Bar") become vendor
  attributes of vendor "x" / "y" named "Foo" / "Bar", as KMIP 2.x spells them.
* KMIP 2.x ``Attributes`` holds directly tagged values; a vendor attribute is an
  ``Attribute`` {Vendor Identification, Attribute Name, Attribute Value}.

Vendor attributes use :data:`VENDOR_TAG` (Attribute Value) as their tag.

Encoding follows the target version. The rule for what a version cannot express:
a 1.x encoding drops attributes that are not 1.x attributes (2.x-only ones such as
Sensitive or Short Unique Identifier) and vendor attributes of vendors other than
"x"/"y"; a 2.x encoding drops tags unknown to 2.x and 1.x custom names without an
"x-"/"y-" prefix, and never writes an Attribute Index (2.x has none).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from kcm.kmip import registry
from kcm.kmip.enums import (
    BlockCipherMode,
    CryptographicAlgorithm,
    DigitalSignatureAlgorithm,
    HashingAlgorithm,
    KeyRoleType,
    LinkType,
    MaskGenerator,
    NameType,
    PaddingMethod,
    ResultReason,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.fields import Codec, Field, Struct, Version, fld, kmip_struct, tag_label
from kcm.kmip.tags import Tag
from kcm.ttlv.types import Item, ItemType

VENDOR_TAG = int(Tag.ATTRIBUTE_VALUE)
_S = ItemType.STRUCTURE
_TEXT = ItemType.TEXT_STRING
_CUSTOM_VENDORS = ("x", "y")


@dataclass(slots=True)
class Attribute:
    """One attribute. ``value.tag == tag``; ``index`` is the 1.x Attribute Index.

    ``name`` is kept only when it is not the tag's spec name (always for vendor
    attributes); ``vendor_identification`` only for vendor attributes.
    """

    tag: int
    value: Item | None
    index: int | None = None
    vendor_identification: str | None = None
    name: str | None = None

    @classmethod
    def of(cls, tag: int, value: Any, item_type: ItemType | None = None) -> Attribute:
        """Build an attribute from a typed value (a model object, or a primitive)."""
        if isinstance(value, Struct):
            return cls(tag, value.to_item(tag=tag))
        item_type = item_type or ATTRIBUTE_TYPES[tag]
        if isinstance(value, int) and not isinstance(value, bool):
            value = int(value)  # a plain int: IntEnum members break Item equality
        return cls(tag, Item(tag, item_type, value))

    @classmethod
    def vendor(cls, vendor: str, name: str, value: Item) -> Attribute:
        """A vendor (2.x) or custom (1.x "x-name") attribute."""
        return cls(VENDOR_TAG, _retag(value, VENDOR_TAG), vendor_identification=vendor, name=name)

    @property
    def typed(self) -> Any:
        """The value as a model object (Name, Link, ...) or a Python primitive."""
        value = self.value
        if value is None:
            return None
        model = TYPED_ATTRIBUTES.get(self.tag)
        if model is not None and value.type is _S:
            return model.from_item(value)
        return value.value


@dataclass(slots=True, frozen=True)
class AttributeReference:
    """Which attribute a Get Attributes / Delete Attribute means (name or tag)."""

    tag: int
    vendor_identification: str | None = None
    name: str | None = None


def _retag(item: Item, tag: int) -> Item:
    return item if item.tag == tag else Item(tag, item.type, item.value, item.width)


#: The longest attribute name (characters) :func:`_from_v1_name` and :func:`_v1_name` keep
#: their answer for: the specification's longest is 40; a client's name of a megabyte
#: (refused or not) is worked out each time, never held by the cache of 4,096.
_NAME_KEPT = 128


def _from_v1_name(name: str, version: Version) -> tuple[int, str | None, str | None]:
    """(tag, vendor, name to keep) for a 1.x Attribute Name."""
    if len(name) > _NAME_KEPT:
        return _from_v1_name_now(name, version)
    return _from_v1_name_kept(name, version)


def _v1_name(tag: int, vendor: str | None, name: str | None, version: Version) -> str | None:
    """The 1.x Attribute Name, or None when 1.x cannot name this attribute."""
    if (name is not None and len(name) > _NAME_KEPT) or (vendor is not None
                                                         and len(vendor) > _NAME_KEPT):
        return _v1_name_now(tag, vendor, name, version)
    return _v1_name_kept(tag, vendor, name, version)


def _from_v1_name_now(name: str, version: Version) -> tuple[int, str | None, str | None]:
    tag = registry.attribute_tag(name, version)
    if tag is not None:
        return tag, None, (None if registry.tag_name(tag, version) == name else name)
    if len(name) > 2 and name[1] == "-" and name[0] in _CUSTOM_VENDORS:
        return VENDOR_TAG, name[0], name[2:]
    return VENDOR_TAG, None, name


def _v1_name_now(tag: int, vendor: str | None, name: str | None,
                 version: Version) -> str | None:
    if tag == VENDOR_TAG:
        if vendor is None:
            return name
        return f"{vendor}-{name}" if vendor in _CUSTOM_VENDORS else None
    spelled = name or registry.tag_name(tag, version)
    if spelled is None or registry.attribute_tag(spelled, version) != tag:
        return None
    return spelled


_from_v1_name_kept = lru_cache(maxsize=4096)(_from_v1_name_now)
_v1_name_kept = lru_cache(maxsize=4096)(_v1_name_now)


#: The attributes KMIP 2.0 added (2.0 §4: the Certificate Attributes, Key Format Type, NIST
#: Key Type, Opaque Data Type, the protection attributes, Quantum Safe, Short Unique
#: Identifier) and 2.1 added (2.1 §4: the rotation attributes). KMIP 2.x names no attribute
#: by text, so its tag tables alone do not say which tags are attributes; 2.0 dropped
#: Certificate Identifier/Subject/Issuer, Operation Policy Name and Custom Attribute, which
#: its tables lack.
_V2_ADDED_ATTRIBUTES: dict[Version, frozenset[int]] = {
    (2, 0): frozenset({
        *range(Tag.CERTIFICATE_SUBJECT_CN, Tag.CERTIFICATE_ISSUER_DN_QUALIFIER + 1),
        Tag.KEY_FORMAT_TYPE, Tag.NIST_KEY_TYPE, Tag.OPAQUE_DATA_TYPE, Tag.PROTECTION_LEVEL,
        Tag.PROTECTION_PERIOD, Tag.PROTECTION_STORAGE_MASKS, Tag.PROTECTION_STORAGE_MASK,
        Tag.QUANTUM_SAFE, Tag.SHORT_UNIQUE_IDENTIFIER}),
    (2, 1): frozenset({
        Tag.ROTATE_INTERVAL, Tag.ROTATE_AUTOMATIC, Tag.ROTATE_OFFSET, Tag.ROTATE_DATE,
        Tag.ROTATE_NAME, Tag.ROTATE_GENERATION, Tag.ROTATE_LATEST}),
}


@lru_cache(maxsize=16)
def attribute_tags(version: Version) -> frozenset[int]:
    """The tags of the attributes ``version`` defines: in 1.x those KMIP 1.x §3 lists up to
    that version (``registry.definitions``), less Custom Attribute (custom attributes are
    named "x-..." or "y-..."); in 2.x the 1.4 attributes and those 2.0 and 2.1 added that
    the version's tables define."""
    if version[0] < 2:
        return registry.definitions(version).attributes - {Tag.CUSTOM_ATTRIBUTE}
    added = [tags for minor, tags in _V2_ADDED_ATTRIBUTES.items() if minor <= version]
    candidates = registry.definitions((1, 4)).attributes.union(*added)
    return frozenset(tag for tag in candidates if registry.defines_tag(tag, version))


def defined_in(attribute: Attribute, version: Version) -> bool:
    """Whether ``attribute`` is one a request of ``version`` may carry: an attribute the
    version defines (:func:`attribute_tags`) or a custom one: in 1.x named "x-..." or
    "y-..." (1.4 §3.39), in 2.x a Vendor Attribute with its Vendor Identification and
    Attribute Name (2.1 §4.57). An unknown 1.x name without such a prefix is not one."""
    if attribute.tag == VENDOR_TAG:
        if version[0] < 2:
            return attribute.vendor_identification in _CUSTOM_VENDORS and bool(attribute.name)
        return bool(attribute.vendor_identification) and bool(attribute.name)
    return attribute.tag in attribute_tags(version)


def attribute_label(attribute: Attribute) -> str:
    """How messages name ``attribute`` ("x-Foo" for a 1.x custom one)."""
    if attribute.tag == VENDOR_TAG and attribute.vendor_identification:
        return f"{attribute.vendor_identification}-{attribute.name}"
    return attribute.name or tag_label(attribute.tag)


@lru_cache(maxsize=4096)
def _known_v2(tag: int, version: Version) -> bool:
    return registry.tag_name(tag, version) is not None


# -- one attribute ------------------------------------------------------------------

def attribute_from_item(item: Item, version: Version) -> Attribute:
    """Decode an ``Attribute`` structure (1.x form, or a 2.x vendor attribute)."""
    if item.type is not _S:
        raise KmipError(ResultReason.INVALID_FIELD, "Attribute must be a Structure")
    name = vendor = index = value = None
    expected = (Tag.VENDOR_IDENTIFICATION, Tag.ATTRIBUTE_NAME, Tag.ATTRIBUTE_INDEX,
                Tag.ATTRIBUTE_VALUE)
    last = -1
    for child in item.value:  # type: ignore[union-attr]
        tag = child.tag
        if tag not in expected or expected.index(tag) <= last:
            raise KmipError(ResultReason.INVALID_FIELD,
                            f"unexpected field {tag_label(tag)} in Attribute")
        last = expected.index(tag)
        if tag == Tag.ATTRIBUTE_VALUE:
            value = child
            continue
        want = ItemType.INTEGER if tag == Tag.ATTRIBUTE_INDEX else _TEXT
        if child.type is not want:
            raise KmipError(ResultReason.INVALID_FIELD, f"{tag_label(tag)} has the wrong type")
        if tag == Tag.ATTRIBUTE_NAME:
            name = child.value
        elif tag == Tag.VENDOR_IDENTIFICATION:
            vendor = child.value
        else:
            index = child.value
    if name is None:
        raise KmipError(ResultReason.INVALID_MESSAGE,
                        "Attribute is missing the required field Attribute Name")
    if value is not None and value.type is ItemType.DATE_TIME_EXTENDED and version[0] < 2:
        # (KMIP 1.x has the item types 0x01-0x0A only, 1.4 §9.1.1.2: a 1.x client cannot
        # read one back)
        raise KmipError(ResultReason.INVALID_FIELD,
                        "Date-Time Extended is not an item type of KMIP 1.x")
    if vendor is not None:
        return Attribute(VENDOR_TAG, value, index, vendor, name)
    tag, vendor, kept = _from_v1_name(name, version)
    attribute = Attribute(tag, None if value is None else _retag(value, tag), index, vendor,
                          kept)
    check_value_type(attribute, version, name)
    return attribute


#: The most attributes one request payload may carry (a Create's, a Locate's, ...): more
#: is Server Limit Exceeded as it is decoded. Every operation's work grows with them, and
#: a 1 MiB request holds some 60,000 small ones.
MAX_ATTRIBUTES = 1024


def _too_many(count: int) -> KmipError:
    return KmipError(ResultReason.SERVER_LIMIT_EXCEEDED,
                     f"{count} attributes; at most {MAX_ATTRIBUTES} are accepted in one "
                     "request payload")


@lru_cache(maxsize=4096)
def expected_type(tag: int, version: Version) -> ItemType | None:
    """The item type a value of attribute ``tag`` must have in ``version``: a Structure for
    those with a model (Name, Link, ...), the specification's type for the primitive ones
    the server reads (:data:`ATTRIBUTE_TYPES`), an Enumeration for any other the version
    enumerates; None when the server does not judge it (a vendor or unknown attribute is
    kept as given)."""
    if tag == VENDOR_TAG:
        return None
    if tag in TYPED_ATTRIBUTES:
        return _S
    specified = SPECIFIED_TYPES.get(tag)
    if specified is not None:
        return specified if registry.is_attribute(tag, version) else None
    known = ATTRIBUTE_TYPES.get(tag)
    if known is None and registry.enumeration_of(tag, version) is not None:
        return ItemType.ENUMERATION
    return known


def check_value_type(attribute: Attribute, version: Version, label: str | None = None) -> None:
    """Refuse (Invalid Field) a value of the wrong item type for a known attribute, as it
    is read from a request: every operation after reads the value as its type."""
    value = attribute.value
    if value is None:
        return
    expected = expected_type(attribute.tag, version)
    if expected is not None and value.type is not expected:
        label = label or tag_label(attribute.tag)
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"{label} must be of type {expected.name.replace('_', ' ').title()}")


def attribute_to_v1(attribute: Attribute, version: Version) -> Item | None:
    """The 1.x ``Attribute`` structure, or None when 1.x cannot express it."""
    name = _v1_name(attribute.tag, attribute.vendor_identification, attribute.name, version)
    if name is None:
        return None
    children = [Item(Tag.ATTRIBUTE_NAME, _TEXT, name)]
    if attribute.index is not None:
        children.append(Item(Tag.ATTRIBUTE_INDEX, ItemType.INTEGER, attribute.index))
    value = attribute.value
    if value is not None:
        if value.type is ItemType.DATE_TIME_EXTENDED:
            # A 2.x client's value, in 1.x words (which have no such type): its second.
            value = Item(value.tag, ItemType.DATE_TIME, value.value // 1_000_000)
        children.append(_retag(value, Tag.ATTRIBUTE_VALUE))
    return Item(Tag.ATTRIBUTE, _S, children)


def attribute_to_v2(attribute: Attribute, version: Version) -> Item | None:
    """The 2.x form: the tagged value, or a vendor ``Attribute``; None if not expressible."""
    if attribute.tag == VENDOR_TAG:
        if attribute.vendor_identification is None:
            return None
        children = [Item(Tag.VENDOR_IDENTIFICATION, _TEXT, attribute.vendor_identification),
                    Item(Tag.ATTRIBUTE_NAME, _TEXT, attribute.name)]
        if attribute.value is not None:
            children.append(_retag(attribute.value, Tag.ATTRIBUTE_VALUE))
        return Item(Tag.ATTRIBUTE, _S, children)
    if attribute.value is None or not _known_v2(attribute.tag, version):
        return None
    return attribute.value


def attribute_to_item(attribute: Attribute, version: Version) -> Item | None:
    """The attribute in ``version``'s wire form, or None when that version drops it."""
    if version[0] < 2:
        return attribute_to_v1(attribute, version)
    return attribute_to_v2(attribute, version)


def attributes_from_container(item: Item, version: Version) -> list[Attribute]:
    """The attributes of a 2.x ``Attributes`` (or Current/New Attribute) structure."""
    if item.type is not _S:
        raise KmipError(ResultReason.INVALID_FIELD, f"{tag_label(item.tag)} must be a Structure")
    if len(item.value) > MAX_ATTRIBUTES:  # type: ignore[arg-type]
        raise _too_many(len(item.value))  # type: ignore[arg-type]
    attributes = []
    for child in item.value:  # type: ignore[union-attr]
        if child.tag == Tag.ATTRIBUTE:  # (checked as it is read)
            attributes.append(attribute_from_item(child, version))
        else:
            attribute = Attribute(child.tag, child)
            check_value_type(attribute, version)
            attributes.append(attribute)
    return attributes


def attributes_to_container(attributes: list[Attribute], version: Version,
                            tag: int = Tag.ATTRIBUTES) -> Item:
    """A 2.x ``Attributes`` structure; attributes 2.x cannot express are dropped."""
    children = []
    for attribute in attributes:
        item = attribute_to_v2(attribute, version)
        if item is not None:
            children.append(item)
    return Item(tag, _S, children)


# -- attribute references -----------------------------------------------------------

def reference_from_item(item: Item, version: Version) -> AttributeReference:
    """Decode a 1.x Attribute Name or a 2.x Attribute Reference (tag or vendor structure)."""
    if item.tag == Tag.ATTRIBUTE_NAME:
        if item.type is not _TEXT:
            raise KmipError(ResultReason.INVALID_FIELD, "Attribute Name must be a Text String")
        return reference_from_name(item.value, version)  # type: ignore[arg-type]
    if item.type is ItemType.ENUMERATION:
        return AttributeReference(item.value)  # type: ignore[arg-type]
    if item.type is _S:
        vendor = item.find(Tag.VENDOR_IDENTIFICATION)
        name = item.find(Tag.ATTRIBUTE_NAME)
        if vendor is None or name is None or len(item) != 2:
            raise KmipError(ResultReason.INVALID_FIELD,
                            "Attribute Reference needs Vendor Identification and Attribute Name")
        return AttributeReference(VENDOR_TAG, vendor.value, name.value)  # type: ignore[arg-type]
    raise KmipError(ResultReason.INVALID_FIELD, "Attribute Reference has the wrong type")


def reference_from_name(name: str, version: Version) -> AttributeReference:
    """The attribute a 1.x Attribute Name (or one in a 2.x Attribute Reference's place)
    names."""
    return AttributeReference(*_from_v1_name(name, version))


def reference_to_item(ref: AttributeReference, version: Version) -> Item | None:
    """The reference in ``version``'s form, or None when that version cannot express it."""
    if version[0] < 2:
        name = _v1_name(ref.tag, ref.vendor_identification, ref.name, version)
        return None if name is None else Item(Tag.ATTRIBUTE_NAME, _TEXT, name)
    if ref.tag != VENDOR_TAG:
        return Item(Tag.ATTRIBUTE_REFERENCE, ItemType.ENUMERATION, ref.tag)
    if ref.vendor_identification is None:
        return None
    return Item(Tag.ATTRIBUTE_REFERENCE, _S, [
        Item(Tag.VENDOR_IDENTIFICATION, _TEXT, ref.vendor_identification),
        Item(Tag.ATTRIBUTE_NAME, _TEXT, ref.name)])


# -- codecs for payload fields ------------------------------------------------------

class AttributeList(Codec):
    """``list[Attribute]``: 1.x repeated ``Attribute`` items, or a 2.x ``Attributes``.

    None means absent; 2.x writes an (empty) ``Attributes`` for any list.
    """

    __slots__ = ()

    def decode_into(self, values: dict, field: Field, item: Item, version: Version) -> None:
        found = values.setdefault(field.name, [])
        if item.tag == Tag.ATTRIBUTE:
            if len(found) == MAX_ATTRIBUTES:
                raise _too_many(len(found) + 1)
            found.append(attribute_from_item(item, version))
        else:
            found.extend(attributes_from_container(item, version))
            if len(found) > MAX_ATTRIBUTES:
                raise _too_many(len(found))

    def encode_into(self, out: list[Item], field: Field, obj: Any, version: Version) -> None:
        attributes = getattr(obj, field.name)
        if attributes is None:
            return
        if version[0] >= 2:
            out.append(attributes_to_container(attributes, version))
            return
        for attribute in attributes:
            item = attribute_to_v1(attribute, version)
            if item is not None:
                out.append(item)


class TemplateAttributes(Codec):
    """1.x ``Template-Attribute`` {Name*, Attribute*} under ``v1_tag``, or a 2.x
    ``Attributes``-like structure under ``v2_tag``.

    The attributes go to the field; the 1.x Names (references to Template objects,
    deprecated) go to the model's ``names_field``. ``v2_tag`` None: the field does not
    exist in 2.x (a key pair's response templates), and encoding for 2.x omits it.
    """

    __slots__ = ("v1_tag", "v2_tag", "names_field")

    def __init__(self, v1_tag: int = Tag.TEMPLATE_ATTRIBUTE, v2_tag: int | None = Tag.ATTRIBUTES,
                 names_field: str = "template_names") -> None:
        self.v1_tag = v1_tag
        self.v2_tag = v2_tag
        self.names_field = names_field

    def decode_into(self, values: dict, field: Field, item: Item, version: Version) -> None:
        if field.name in values:
            raise KmipError(ResultReason.INVALID_FIELD, f"{tag_label(item.tag)} occurs twice")
        if item.type is not ItemType.STRUCTURE:
            raise KmipError(ResultReason.INVALID_FIELD,
                            f"{tag_label(item.tag)} must be a Structure")
        if item.tag != self.v1_tag:
            values[field.name] = attributes_from_container(item, version)
            return
        if len(item.value) > MAX_ATTRIBUTES:  # type: ignore[arg-type]
            raise _too_many(len(item.value))  # type: ignore[arg-type]
        attributes: list[Attribute] = []
        names: list[Name] = []
        for child in item.value:  # type: ignore[union-attr]
            if child.tag == Tag.ATTRIBUTE:
                attributes.append(attribute_from_item(child, version))
            elif child.tag == Tag.NAME:
                names.append(Name.from_item(child, version))
            else:
                raise KmipError(ResultReason.INVALID_FIELD,
                                f"unexpected field {tag_label(child.tag)} in "
                                f"{tag_label(item.tag)}")
        values[field.name] = attributes
        if names:
            values[self.names_field] = names

    def encode_into(self, out: list[Item], field: Field, obj: Any, version: Version) -> None:
        attributes = getattr(obj, field.name)
        if attributes is None:
            return
        if version[0] >= 2:
            if self.v2_tag is not None:
                out.append(attributes_to_container(attributes, version, self.v2_tag))
            return
        children = [name.to_item(version) for name in getattr(obj, self.names_field, ())]
        for attribute in attributes:
            item = attribute_to_v1(attribute, version)
            if item is not None:
                children.append(item)
        out.append(Item(self.v1_tag, ItemType.STRUCTURE, children))


class SingleAttribute(Codec):
    """One attribute: 1.x ``Attribute`` and/or 2.x wrapped in ``v2_tag`` (New/Current Attribute).

    ``v1`` False: the field does not exist in 1.x; ``v2_tag`` None: not in 2.x (the
    attribute echoed by 1.x responses). Encoding for a version without the field omits it.
    """

    __slots__ = ("v1", "v2_tag")
    types = frozenset((_S,))

    def __init__(self, *, v1: bool, v2_tag: int | None) -> None:
        self.v1 = v1
        self.v2_tag = v2_tag

    def decode(self, item: Item, version: Version) -> Any:
        if item.tag == Tag.ATTRIBUTE:
            return attribute_from_item(item, version)
        found = attributes_from_container(item, version)
        if len(found) != 1:
            raise KmipError(ResultReason.INVALID_FIELD,
                            f"{tag_label(item.tag)} must hold exactly one attribute")
        return found[0]

    def encode(self, value: Any, tag: int, version: Version) -> Item | None:
        if version[0] < 2:
            return attribute_to_v1(value, version) if self.v1 else None
        if self.v2_tag is None:
            return None
        inner = attribute_to_v2(value, version)
        return None if inner is None else Item(self.v2_tag, _S, [inner])


class References(Codec):
    """``AttributeReference``s: 1.x Attribute Name (Text) or 2.x Attribute Reference."""

    __slots__ = ()

    def decode(self, item: Item, version: Version) -> Any:
        return reference_from_item(item, version)

    def encode(self, value: Any, tag: int, version: Version) -> Item | None:
        return reference_to_item(value, version)

    def encode_into(self, out: list[Item], field: Field, obj: Any, version: Version) -> None:
        value = getattr(obj, field.name)
        if value is None:
            return
        for ref in (value if field.repeated else (value,)):
            item = reference_to_item(ref, version)
            if item is not None:
                out.append(item)


# -- typed attribute values ---------------------------------------------------------

@kmip_struct(Tag.NAME)
class Name(Struct):
    """Name attribute (KMIP 1.4 §3.2, 2.1 §4.40)."""

    value: str = fld(Tag.NAME_VALUE, _TEXT, required=True)
    type: NameType | int = fld(Tag.NAME_TYPE, NameType, required=True)


@kmip_struct(Tag.LINK)
class Link(Struct):
    """Link attribute: a link type and the linked object's identifier."""

    link_type: LinkType | int = fld(Tag.LINK_TYPE, LinkType, required=True)
    linked_object_identifier: str | Item = fld(Tag.LINKED_OBJECT_IDENTIFIER, _TEXT, required=True)


@kmip_struct(Tag.CRYPTOGRAPHIC_PARAMETERS)
class CryptographicParameters(Struct):
    """Cryptographic Parameters (KMIP 1.4 §3.6, 2.1 §4.15)."""

    block_cipher_mode: BlockCipherMode | int | None = fld(Tag.BLOCK_CIPHER_MODE, BlockCipherMode)
    padding_method: PaddingMethod | int | None = fld(Tag.PADDING_METHOD, PaddingMethod)
    hashing_algorithm: HashingAlgorithm | int | None = fld(Tag.HASHING_ALGORITHM, HashingAlgorithm)
    key_role_type: KeyRoleType | int | None = fld(Tag.KEY_ROLE_TYPE, KeyRoleType)
    digital_signature_algorithm: int | None = fld(Tag.DIGITAL_SIGNATURE_ALGORITHM,
                                                  DigitalSignatureAlgorithm)
    cryptographic_algorithm: int | None = fld(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm)
    random_iv: bool | None = fld(Tag.RANDOM_IV, ItemType.BOOLEAN)
    iv_length: int | None = fld(Tag.IV_LENGTH, ItemType.INTEGER)
    tag_length: int | None = fld(Tag.TAG_LENGTH, ItemType.INTEGER)
    fixed_field_length: int | None = fld(Tag.FIXED_FIELD_LENGTH, ItemType.INTEGER)
    invocation_field_length: int | None = fld(Tag.INVOCATION_FIELD_LENGTH, ItemType.INTEGER)
    counter_length: int | None = fld(Tag.COUNTER_LENGTH, ItemType.INTEGER)
    initial_counter_value: int | None = fld(Tag.INITIAL_COUNTER_VALUE, ItemType.INTEGER)
    salt_length: int | None = fld(Tag.SALT_LENGTH, ItemType.INTEGER)
    mask_generator: int | None = fld(Tag.MASK_GENERATOR, MaskGenerator)
    mask_generator_hashing_algorithm: int | None = fld(Tag.MASK_GENERATOR_HASHING_ALGORITHM,
                                                       HashingAlgorithm)
    p_source: bytes | None = fld(Tag.P_SOURCE, ItemType.BYTE_STRING)
    trailer_field: int | None = fld(Tag.TRAILER_FIELD, ItemType.INTEGER)


#: Structure-valued attributes with a model class (``Attribute.typed``).
TYPED_ATTRIBUTES: dict[int, type[Struct]] = {
    Tag.NAME: Name, Tag.LINK: Link, Tag.CRYPTOGRAPHIC_PARAMETERS: CryptographicParameters,
}

_DATES = (Tag.ACTIVATION_DATE, Tag.DEACTIVATION_DATE, Tag.DESTROY_DATE, Tag.COMPROMISE_DATE,
          Tag.COMPROMISE_OCCURRENCE_DATE, Tag.INITIAL_DATE, Tag.LAST_CHANGE_DATE,
          Tag.PROCESS_START_DATE, Tag.PROTECT_STOP_DATE, Tag.ARCHIVE_DATE,
          Tag.ORIGINAL_CREATION_DATE)

#: The item type of common primitive attributes (``Attribute.of``).
ATTRIBUTE_TYPES: dict[int, ItemType] = {
    Tag.UNIQUE_IDENTIFIER: _TEXT, Tag.OBJECT_TYPE: ItemType.ENUMERATION,
    Tag.CRYPTOGRAPHIC_ALGORITHM: ItemType.ENUMERATION, Tag.CRYPTOGRAPHIC_LENGTH: ItemType.INTEGER,
    Tag.CRYPTOGRAPHIC_USAGE_MASK: ItemType.INTEGER, Tag.STATE: ItemType.ENUMERATION,
    Tag.OBJECT_GROUP: _TEXT, Tag.CONTACT_INFORMATION: _TEXT, Tag.DESCRIPTION: _TEXT,
    Tag.COMMENT: _TEXT, Tag.SENSITIVE: ItemType.BOOLEAN, Tag.EXTRACTABLE: ItemType.BOOLEAN,
    Tag.ALWAYS_SENSITIVE: ItemType.BOOLEAN, Tag.NEVER_EXTRACTABLE: ItemType.BOOLEAN,
    Tag.FRESH: ItemType.BOOLEAN, Tag.LEASE_TIME: ItemType.INTERVAL,
    Tag.KEY_FORMAT_TYPE: ItemType.ENUMERATION, Tag.SHORT_UNIQUE_IDENTIFIER: ItemType.BYTE_STRING,
    # KMIP 2.1 §4: the rotation attributes.
    Tag.ROTATE_AUTOMATIC: ItemType.BOOLEAN, Tag.ROTATE_INTERVAL: ItemType.INTERVAL,
    Tag.ROTATE_OFFSET: ItemType.INTERVAL, Tag.ROTATE_DATE: ItemType.DATE_TIME,
    Tag.ROTATE_GENERATION: ItemType.INTEGER, Tag.ROTATE_LATEST: ItemType.BOOLEAN,
    **{tag: ItemType.DATE_TIME for tag in _DATES},
}

#: The other attributes of the specifications (1.4 §3, 2.1 §4) and their types, judged in
#: the versions that define them (in another, the attribute is refused as none of its):
#: a value of another type was stored, and clients (PyKMIP) then could not read the
#: object's attributes.
SPECIFIED_TYPES: dict[int, ItemType] = {
    Tag.OPERATION_POLICY_NAME: _TEXT, Tag.PKCS_12_FRIENDLY_NAME: _TEXT,
    Tag.QUANTUM_SAFE: ItemType.BOOLEAN, Tag.PROTECTION_PERIOD: ItemType.INTERVAL,
    Tag.CERTIFICATE_LENGTH: ItemType.INTEGER, Tag.KEY_VALUE_PRESENT: ItemType.BOOLEAN,
    Tag.PROTECTION_STORAGE_MASK: ItemType.INTEGER,
    **dict.fromkeys((
        Tag.APPLICATION_SPECIFIC_INFORMATION, Tag.ALTERNATIVE_NAME, Tag.KEY_VALUE_LOCATION,
        Tag.ROTATE_NAME, Tag.DIGEST, Tag.USAGE_LIMITS, Tag.CERTIFICATE_IDENTIFIER,
        Tag.CERTIFICATE_SUBJECT, Tag.CERTIFICATE_ISSUER, Tag.X_509_CERTIFICATE_IDENTIFIER,
        Tag.X_509_CERTIFICATE_SUBJECT, Tag.X_509_CERTIFICATE_ISSUER,
        Tag.CRYPTOGRAPHIC_DOMAIN_PARAMETERS, Tag.RANDOM_NUMBER_GENERATOR), _S),
}


def find_attribute(attributes: list[Attribute] | None, tag: int) -> Attribute | None:
    """The first attribute with ``tag``, or None."""
    for attribute in attributes or ():
        if attribute.tag == tag:
            return attribute
    return None


def attribute_values(attributes: list[Attribute] | None, tag: int) -> list[Any]:
    """The typed values of every attribute with ``tag`` (multi-valued attributes)."""
    return [a.typed for a in attributes or () if a.tag == tag]
