"""The stored form of an object's attributes: one private TTLV structure. Pure.

Attributes are kept in the internal representation of :mod:`kcm.kmip.attributes`
(value items tagged with the attribute's own tag), so nothing depends on the protocol
version a client used; extension tags (0x54xxxx, KMIP 1.4 §9.1.3.1) carry the index,
vendor and name that the internal form keeps beside the value.
"""

from __future__ import annotations

import struct

from kcm.kmip.attributes import Attribute
from kcm.ttlv import Item, ItemType, decode, encode

BLOB = 0x54A001
ENTRY = 0x54A002
INDEX = 0x54A003
VENDOR = 0x54A004
NAME = 0x54A005
VALUE = 0x54A006  # wraps the value so the value keeps its own tag

_S = ItemType.STRUCTURE
_TEXT = ItemType.TEXT_STRING


#: The encodings of :func:`kept_encoding`'s items, by identity; each item is kept alive
#: here beside its encoding, so no other item can ever have its identity.
_KEPT: dict[int, tuple[Item, bytes]] = {}


def kept_encoding(item: Item) -> Item:
    """``item``, its encoding kept for :func:`encode_attributes`: for the values the server
    sets alike on every new object. Items are values, never changed in place."""
    _KEPT[id(item)] = (item, encode(item))
    return item


def encode_attributes(attributes: list[Attribute]) -> bytes:
    """Encode ``attributes`` losslessly for storage: exactly ``encode`` of the structure
    :func:`reference_structure` builds, written without building it (every Create and
    every change of an object encodes its whole list)."""
    entries = []
    kept_encodings = _KEPT
    for attribute in attributes:
        value = attribute.value
        if value is None:
            raise ValueError("a stored attribute must have a value")
        kept = kept_encodings.get(id(value))
        encoded = kept[1] if kept is not None and kept[0] is value else encode(value)
        parts = [_HEADER(_VALUE_HEAD, len(encoded)), encoded]
        if attribute.index is not None:
            parts.append(encode(Item(INDEX, ItemType.INTEGER, attribute.index)))
        if attribute.vendor_identification is not None:
            parts.append(encode(Item(VENDOR, _TEXT, attribute.vendor_identification)))
        if attribute.name is not None:
            parts.append(encode(Item(NAME, _TEXT, attribute.name)))
        body = b"".join(parts)
        entries.append(_HEADER(_ENTRY_HEAD, len(body)))
        entries.append(body)
    blob = b"".join(entries)
    return _HEADER(_BLOB_HEAD, len(blob)) + blob


def reference_structure(attributes: list[Attribute]) -> Item:
    """The structure :func:`encode_attributes` writes, as items (for tests and tools)."""
    entries = []
    for attribute in attributes:
        if attribute.value is None:
            raise ValueError("a stored attribute must have a value")
        children = [Item(VALUE, _S, [attribute.value])]
        if attribute.index is not None:
            children.append(Item(INDEX, ItemType.INTEGER, attribute.index))
        if attribute.vendor_identification is not None:
            children.append(Item(VENDOR, _TEXT, attribute.vendor_identification))
        if attribute.name is not None:
            children.append(Item(NAME, _TEXT, attribute.name))
        entries.append(Item(ENTRY, _S, children))
    return Item(BLOB, _S, entries)


_HEADER = struct.Struct(">II").pack  # a TTLV item's tag and type, then its length
_VALUE_HEAD = VALUE << 8 | _S
_ENTRY_HEAD = ENTRY << 8 | _S
_BLOB_HEAD = BLOB << 8 | _S


def decode_attributes(blob: bytes) -> list[Attribute]:
    """The attributes stored by :func:`encode_attributes` (of any size: what was stored was
    bounded when it was written)."""
    attributes = []
    for entry in decode(blob, max_size=len(blob)).value:  # type: ignore[union-attr]
        value = index = vendor = name = None
        for child in entry.value:
            if child.tag == VALUE:
                value = child.value[0]
            elif child.tag == INDEX:
                index = child.value
            elif child.tag == VENDOR:
                vendor = child.value
            elif child.tag == NAME:
                name = child.value
        attributes.append(Attribute(value.tag, value, index, vendor, name))
    return attributes
