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
from kcm.ttlv.codec import encode_into

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
    :func:`reference_structure` builds, written without building it, and copied once (every
    Create and every change of an object encodes its whole list: up to 1 MiB)."""
    parts: list[bytes] = [b""]  # the blob's header, once its length is known
    total = 0
    kept_encodings = _KEPT
    for attribute in attributes:
        value = attribute.value
        if value is None:
            raise ValueError("a stored attribute must have a value")
        at = len(parts)
        parts += (b"", b"")  # the entry's header and its value's
        kept = kept_encodings.get(id(value))
        if kept is not None and kept[0] is value:
            parts.append(kept[1])
            length = len(kept[1])
        else:
            length = encode_into(value, parts)
        parts[at + 1] = _HEADER(_VALUE_HEAD, length)
        body = 8 + length
        for extra in _extras(attribute):
            parts.append(extra)
            body += len(extra)
        parts[at] = _HEADER(_ENTRY_HEAD, body)
        total += 8 + body
    parts[0] = _HEADER(_BLOB_HEAD, total)
    return b"".join(parts)


def _extras(attribute: Attribute) -> list[bytes]:
    """The encoded index, vendor and name an entry keeps beside its value."""
    if attribute.index is None and attribute.vendor_identification is None \
            and attribute.name is None:
        return []
    extras = []
    if attribute.index is not None:
        extras.append(encode(Item(INDEX, ItemType.INTEGER, attribute.index)))
    if attribute.vendor_identification is not None:
        extras.append(encode(Item(VENDOR, _TEXT, attribute.vendor_identification)))
    if attribute.name is not None:
        extras.append(encode(Item(NAME, _TEXT, attribute.name)))
    return extras


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
