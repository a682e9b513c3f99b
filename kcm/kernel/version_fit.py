"""What a response may carry in the request's protocol version: the one filter.

Operations build their answers from one model that knows every version's fields; what
an older version does not define must not reach its client (KMIP 1.0 has no Fresh
attribute, no Discover Versions operation, no Authenticated Encryption Tag field; KMIP
1.x has no Key Format Type attribute). :func:`fit` is applied to every batch item a
server encodes (:func:`kcm.kernel.responses.encode_items`) and nowhere else, and drops:

* an item whose tag the version does not define (a payload field, a Query answer part);
* an Enumeration whose value the version does not define (an Operation or Object Type
  a Query lists, a Link Type);
* a 1.x ``Attribute`` whose Attribute Name is not an attribute of the version (custom
  ``x-``/``y-`` attributes stay), and such a name in a Get Attribute List answer;
* the bits of a mask (Cryptographic Usage Mask) the version does not name.

An operation the request's version does not define is not run at all
(:func:`check_operation`, asked by :func:`kcm.kernel.batch.run_batch`): its answer could
not be said in that version (Encrypt's Data is a KMIP 1.2 tag), so it is Operation Not
Supported, saying from which version on it exists. Discover Versions is the exception: it
is how a client finds the version to speak (KMIP 1.1 §4.26), and its answer uses only
KMIP 1.0 tags.

:func:`faults` says what :func:`fit` would drop, for the strict check the tests run
(``KCM_STRICT_VERSIONS=1``: :func:`kcm.kernel.responses.response_wire` refuses to send an
answer with a fault, which catches an item that reached the wire without being fitted).
Which version defines what is :mod:`kcm.kmip.registry`'s (from the spec tables and their
1.x history). Pure: no I/O.
"""

from __future__ import annotations

import os

from kcm.kernel.versions import SUPPORTED_VERSIONS
from kcm.kmip import registry
from kcm.kmip.enums import Operation, ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import enum_label
from kcm.kmip.tags import Tag
from kcm.kmip.versions import Version
from kcm.ttlv import Item, ItemType

__all__ = ["STRICT", "check_operation", "faults", "fit"]

#: Whether answers are checked before they are sent (the test suites set it).
STRICT = os.environ.get("KCM_STRICT_VERSIONS", "") == "1"

_S = ItemType.STRUCTURE
_ENUM = ItemType.ENUMERATION
_INTEGER = ItemType.INTEGER
_TEXT = ItemType.TEXT_STRING
_CUSTOM = ("x-", "y-")
_ATTRIBUTE = int(Tag.ATTRIBUTE)  # plain ints: IntEnum comparisons cost, and this is hot
_ATTRIBUTE_NAME = int(Tag.ATTRIBUTE_NAME)
_ATTRIBUTE_VALUE = int(Tag.ATTRIBUTE_VALUE)
_RESPONSE_PAYLOAD = int(Tag.RESPONSE_PAYLOAD)
_VENDOR_TAGS = 0x540000  # KMIP 1.4 §9.1.3.1: extension tags, which no version forbids
_EXTENSION_VALUES = 0x80000000  # extension enumeration values (8XXXXXXX)


#: Operations answered in every version (see the module docstring).
_ANY_VERSION = frozenset({Operation.DISCOVER_VERSIONS})
_OLDEST_FIRST: tuple[Version, ...] = tuple(sorted(SUPPORTED_VERSIONS))


def check_operation(version: Version, operation: int) -> None:
    """Raise Operation Not Supported if ``version`` does not define ``operation``."""
    if operation in _ANY_VERSION or registry.defines_value(Tag.OPERATION, operation, version):
        return
    since = next((v for v in _OLDEST_FIRST if registry.defines_value(Tag.OPERATION, operation, v)),
                 None)
    name = registry.enum_name(Tag.OPERATION, operation) or enum_label(Operation, operation)
    if since is None:
        raise KmipError(ResultReason.OPERATION_NOT_SUPPORTED,
                        f"{name} is not an operation of KMIP {version[0]}.{version[1]}")
    raise KmipError(ResultReason.OPERATION_NOT_SUPPORTED,
                    f"{name} is an operation of KMIP {since[0]}.{since[1]} and later, "
                    f"not of KMIP {version[0]}.{version[1]}")


def fit(item: Item, version: Version) -> Item:
    """``item`` (a Response Batch Item, or any part of an answer) without what ``version``
    does not define. The item itself is kept even if its own tag is unknown. Of a batch
    item only the payload is judged: its Operation repeats the request's, and its Result
    Reason is :mod:`kcm.kernel.result_reasons`'."""
    fitted = _Fitter(version, None).children(item, _payload_only(item))
    return item if fitted is None else fitted


def faults(item: Item, version: Version) -> list[str]:
    """What in ``item`` ``version`` does not define, one line each (empty: it fits)."""
    found: list[str] = []
    _Fitter(version, found).children(item, _payload_only(item))
    return found


def _payload_only(item: Item) -> bool:
    return item.tag == Tag.BATCH_ITEM


class _Fitter:
    """One walk over an answer, with the version's definitions at hand."""

    __slots__ = ("version", "found", "tags", "values_of_tag", "mask_bits", "v1")

    def __init__(self, version: Version, found: list[str] | None) -> None:
        defined = registry.definitions(version)
        self.version = version
        self.found = found
        self.tags = defined.tags
        self.values_of_tag = defined.values_of_tag
        self.mask_bits = defined.mask_bits
        self.v1 = version < (2, 0)

    def drop(self, what: str) -> None:
        if self.found is not None:
            self.found.append(what)

    def children(self, item: Item, payload_only: bool = False) -> Item | None:
        """``item`` with its children fitted; None if nothing changed."""
        if item.type is not _S:
            return None
        children: list[Item] = item.value  # type: ignore[assignment]
        kept: list[Item] = []
        changed = False
        for child in children:
            if payload_only and child.tag != _RESPONSE_PAYLOAD:
                kept.append(child)
                continue
            fitted = self.one(child)
            if fitted is not child:
                changed = True
            if fitted is not None:
                kept.append(fitted)
        if not changed:
            return None
        return Item(item.tag, _S, kept)

    def one(self, item: Item) -> Item | None:
        """``item`` fitted: itself, a changed copy, or None (dropped)."""
        tag = item.tag
        if tag not in self.tags and tag < _VENDOR_TAGS:
            self.drop(f"tag 0x{tag:06X}")
            return None
        if self.v1:
            if tag == _ATTRIBUTE:
                return self.v1_attribute(item)
            if tag == _ATTRIBUTE_NAME and item.type is _TEXT:
                if not _v1_attribute_name(item.value, self.version):  # type: ignore[arg-type]
                    self.drop(f"attribute {item.value!r}")
                    return None
                return item
        return self.value(item, tag)

    def value(self, item: Item, meaning: int) -> Item | None:
        """``item`` judged as a value of tag ``meaning`` (an Attribute Value means its
        attribute's tag)."""
        kind = item.type
        if kind is _ENUM:
            allowed = self.values_of_tag.get(meaning)
            value: int = item.value  # type: ignore[assignment]
            if (allowed is None or value in allowed or value >= _EXTENSION_VALUES
                    or (allowed is self.tags and value >= _VENDOR_TAGS)):
                return item
            self.drop(f"value 0x{value:08X} of tag 0x{meaning:06X}")
            return None
        if kind is _S:
            fitted = self.children(item)
            return item if fitted is None else fitted
        if kind is _INTEGER:
            bits = self.mask_bits.get(meaning)
            if bits is not None and item.value & ~bits:  # type: ignore[operator]
                extra = item.value & ~bits  # type: ignore[operator]
                self.drop(f"mask bits 0x{extra:X} of tag 0x{meaning:06X}")
                return Item(item.tag, item.type, item.value & bits)  # type: ignore[operator]
        return item

    def v1_attribute(self, item: Item) -> Item | None:
        """A 1.x Attribute {Attribute Name, Attribute Index, Attribute Value}: dropped whole
        unless its name is an attribute of the version; its value judged as that
        attribute."""
        if item.type is not _S:
            return item
        children: list[Item] = item.value  # type: ignore[assignment]
        name = next((c.value for c in children if c.tag == _ATTRIBUTE_NAME), None)
        if not isinstance(name, str):
            return self.value(item, _ATTRIBUTE)
        if not _v1_attribute_name(name, self.version):
            self.drop(f"attribute {name!r}")
            return None
        meaning = registry.attribute_tag(name, self.version) or _ATTRIBUTE_VALUE
        kept = []
        changed = False
        for child in children:
            fitted = self.value(child, meaning) if child.tag == _ATTRIBUTE_VALUE else child
            if fitted is None:  # the value is not expressible: neither is the attribute
                return None
            changed = changed or fitted is not child
            kept.append(fitted)
        return Item(item.tag, _S, kept) if changed else item


def _v1_attribute_name(name: str, version: Version) -> bool:
    if name.startswith(_CUSTOM):
        return True
    tag = registry.attribute_tag(name, version)
    return tag is not None and registry.is_attribute(tag, version)
