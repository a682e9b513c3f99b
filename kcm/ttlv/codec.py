"""Strict TTLV decoding and encoding (KMIP 1.4 §9.1, KMIP 2.1 §9.1). Pure: no I/O.

Decoding checks every rule the spec states for the wire form: a known type byte,
a length that fits the type and the enclosing structure, zero padding to a
multiple of eight, Boolean values 0 or 1, valid UTF-8 text, a bounded nesting
depth and a bounded total size. Every violation raises :class:`TtlvError` with
the byte offset of the offending item. Encoding is the exact inverse, so
decode→encode reproduces the input byte for byte.
"""

from __future__ import annotations

import struct

from kcm.ttlv.errors import MessageTooLarge, TtlvError
from kcm.ttlv.types import Item, ItemType

#: Defaults chosen for KMIP messages: real requests nest about ten deep.
DEFAULT_MAX_DEPTH = 32
DEFAULT_MAX_SIZE = 1 << 20

_HEADER = struct.Struct(">II")  # (tag << 8 | type, length)
_I32_PAD = struct.Struct(">iI")
_U32_PAD = struct.Struct(">II")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")

_S = ItemType.STRUCTURE
_INT = ItemType.INTEGER
_LONG = ItemType.LONG_INTEGER
_BIG = ItemType.BIG_INTEGER
_ENUM = ItemType.ENUMERATION
_BOOL = ItemType.BOOLEAN
_TEXT = ItemType.TEXT_STRING
_BYTES = ItemType.BYTE_STRING
_DT = ItemType.DATE_TIME
_IV = ItemType.INTERVAL
_DTX = ItemType.DATE_TIME_EXTENDED

_TYPES = {int(t): t for t in ItemType}
_FIXED_LENGTH = {
    _INT: 4, _LONG: 8, _ENUM: 4, _BOOL: 8, _DT: 8, _IV: 4, _DTX: 8,
}
_ZERO_PAD = bytes(8)


def decode(data: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH,
           max_size: int = DEFAULT_MAX_SIZE) -> Item:
    """Decode ``data``, which must hold exactly one TTLV item."""
    if len(data) > max_size:
        raise MessageTooLarge(0, f"message of {len(data)} bytes exceeds the maximum {max_size}")
    item, end = decode_item(data, 0, max_depth=max_depth)
    if end != len(data):
        raise TtlvError(end, f"{len(data) - end} bytes follow the item")
    return item


def decode_item(data: bytes, offset: int = 0, *,
                max_depth: int = DEFAULT_MAX_DEPTH) -> tuple[Item, int]:
    """Decode one item at ``offset``; return it and the offset just past it."""
    return _decode(data, offset, len(data), max_depth)


def _header(data: bytes, pos: int, end: int) -> tuple[int, ItemType, int]:
    if end - pos < 8:
        raise TtlvError(pos, f"truncated item header: {end - pos} of 8 bytes")
    tag_type, length = _HEADER.unpack_from(data, pos)
    tag = tag_type >> 8
    item_type = _TYPES.get(tag_type & 0xFF)
    if item_type is None:
        raise TtlvError(pos + 3, f"unknown item type 0x{tag_type & 0xFF:02X}")
    return tag, item_type, length


def _decode(data: bytes, pos: int, end: int, depth: int) -> tuple[Item, int]:
    tag, item_type, length = _header(data, pos, end)
    vpos = pos + 8
    if item_type is _S:
        if depth <= 0:
            raise TtlvError(pos, "structures nested too deeply")
        stop = vpos + length
        if stop > end:
            raise TtlvError(pos, f"structure length {length} overruns its container")
        children = []
        append = children.append
        while vpos < stop:
            child, vpos = _decode(data, vpos, stop, depth - 1)
            append(child)
        return Item(tag, _S, children), stop
    fixed = _FIXED_LENGTH.get(item_type)
    if fixed is not None:
        if length != fixed:
            raise TtlvError(pos + 4, f"{item_type.name} length must be {fixed}, not {length}")
        if vpos + 8 > end:
            raise TtlvError(pos, f"{item_type.name} value overruns its container")
        if fixed == 4:
            if item_type is _INT:
                value, pad = _I32_PAD.unpack_from(data, vpos)
            else:
                value, pad = _U32_PAD.unpack_from(data, vpos)
            if pad:
                raise TtlvError(vpos + 4, "non-zero padding")
        elif item_type is _BOOL:
            raw = _U64.unpack_from(data, vpos)[0]
            if raw > 1:
                raise TtlvError(vpos, f"Boolean value must be 0 or 1, not {raw}")
            value = raw == 1
        else:
            value = _I64.unpack_from(data, vpos)[0]
        return Item(tag, item_type, value), vpos + 8
    # Variable length: Text String, Byte String, Big Integer.
    padded = (length + 7) & ~7
    stop = vpos + padded
    if stop > end:
        raise TtlvError(pos, f"{item_type.name} length {length} overruns its container")
    if padded != length and data[vpos + length:stop] != _ZERO_PAD[: padded - length]:
        raise TtlvError(vpos + length, "non-zero padding")
    raw = data[vpos:vpos + length]
    if item_type is _TEXT:
        try:
            return Item(tag, _TEXT, bytes(raw).decode("utf-8")), stop
        except UnicodeDecodeError as e:
            raise TtlvError(vpos + e.start, "Text String is not valid UTF-8") from None
    if item_type is _BYTES:
        return Item(tag, _BYTES, bytes(raw)), stop
    # Big Integer: two's complement, sign-extended to a multiple of 8 bytes.
    if length == 0 or length % 8:
        raise TtlvError(
            pos + 4, f"Big Integer length must be a positive multiple of 8, not {length}"
        )
    value = int.from_bytes(raw, "big", signed=True)
    width = length if length != _big_width(value) else None
    return Item(tag, _BIG, value, width), stop


def _big_width(value: int) -> int:
    bits = value.bit_length() if value >= 0 else (~value).bit_length()
    return max(8, ((bits + 1 + 63) // 64) * 8)


_PACK_HEADER = _HEADER.pack
_PACK_I32_PAD = _I32_PAD.pack
_PACK_U32_PAD = _U32_PAD.pack
_PACK_I64 = _I64.pack


def encode(item: Item) -> bytes:
    """Encode one item (and its children) to TTLV bytes."""
    parts: list[bytes] = []
    _encode(item, parts)
    return b"".join(parts)


def encode_into(item: Item, parts: list[bytes]) -> int:
    """Append the encoding of ``item`` to ``parts``, for a caller that joins them with
    others in one copy; return its encoded length."""
    return _encode(item, parts)


def _encode(item: Item, parts: list[bytes]) -> int:
    """Append the encoding of ``item`` to ``parts``; return its encoded length."""
    out = parts.append
    item_type = item.type
    head = item.tag << 8 | item_type
    value = item.value
    try:
        if item_type is _S:
            index = len(parts)
            out(b"")  # the header, once the children's length is known
            length = 0
            for child in value:
                length += _encode(child, parts)
            parts[index] = _PACK_HEADER(head, length)
            return length + 8
        if item_type is _INT:
            out(_PACK_HEADER(head, 4) + _PACK_I32_PAD(value, 0))
            return 16
        if item_type is _ENUM or item_type is _IV:
            out(_PACK_HEADER(head, 4) + _PACK_U32_PAD(value, 0))
            return 16
        if item_type is _LONG or item_type is _DT or item_type is _DTX:
            out(_PACK_HEADER(head, 8) + _PACK_I64(value))
            return 16
        if item_type is _BOOL:
            if type(value) is not bool:
                raise TypeError("Boolean value must be a bool")
            out(_PACK_HEADER(head, 8) + (b"\0\0\0\0\0\0\0\1" if value else _ZERO_PAD))
            return 16
        if item_type is _TEXT:
            raw = value.encode("utf-8")
        elif item_type is _BYTES:
            raw = bytes(value)
        elif item_type is _BIG:
            width = item.width or _big_width(value)
            raw = value.to_bytes(width, "big", signed=True)
        else:
            raise TypeError(f"unknown item type {item_type!r}")
    except (struct.error, TypeError, AttributeError, OverflowError, UnicodeEncodeError) as e:
        raise TtlvError(0, f"cannot encode tag 0x{item.tag:06X} as {item_type!r}: {e}") from None
    length = len(raw)
    pad = -length & 7
    if length <= _JOINED_BYTES:
        out(_PACK_HEADER(head, length) + raw + _ZERO_PAD[:pad])
    else:  # copied once, when the parts are joined
        out(_PACK_HEADER(head, length))
        out(raw)
        if pad:
            out(_ZERO_PAD[:pad])
    return 8 + length + pad


#: Values longer than this are appended as they are, not joined to their header first.
_JOINED_BYTES = 1024
