"""TTLV item types and the in-memory item tree (KMIP 1.4 §9.1, KMIP 2.1 §9.1)."""

from __future__ import annotations

from collections.abc import Iterator
from enum import IntEnum
from typing import Union


class ItemType(IntEnum):
    """The TTLV type byte."""

    STRUCTURE = 0x01
    INTEGER = 0x02
    LONG_INTEGER = 0x03
    BIG_INTEGER = 0x04
    ENUMERATION = 0x05
    BOOLEAN = 0x06
    TEXT_STRING = 0x07
    BYTE_STRING = 0x08
    DATE_TIME = 0x09
    INTERVAL = 0x0A
    DATE_TIME_EXTENDED = 0x0B  # KMIP 2.x only


#: The XML / spec name of each type (KMIP Profiles 2.1 §5.4.1).
TYPE_NAMES: dict[ItemType, str] = {
    ItemType.STRUCTURE: "Structure",
    ItemType.INTEGER: "Integer",
    ItemType.LONG_INTEGER: "LongInteger",
    ItemType.BIG_INTEGER: "BigInteger",
    ItemType.ENUMERATION: "Enumeration",
    ItemType.BOOLEAN: "Boolean",
    ItemType.TEXT_STRING: "TextString",
    ItemType.BYTE_STRING: "ByteString",
    ItemType.DATE_TIME: "DateTime",
    ItemType.INTERVAL: "Interval",
    ItemType.DATE_TIME_EXTENDED: "DateTimeExtended",
}
TYPES_BY_NAME: dict[str, ItemType] = {v: k for k, v in TYPE_NAMES.items()}

Value = Union[list["Item"], int, bool, str, bytes]  # noqa: UP007 - a runtime alias


class Item:
    """One TTLV item.

    ``value`` by type:

    * Structure: ``list[Item]`` (children, in wire order)
    * Integer, Long Integer, Big Integer, Enumeration, Interval: ``int``
    * Date-Time: ``int`` seconds since the POSIX epoch
    * Date-Time Extended: ``int`` microseconds since the POSIX epoch
    * Boolean: ``bool``
    * Text String: ``str``
    * Byte String: ``bytes``

    ``width`` is used only by Big Integer: the encoded length in bytes when the
    sender padded it beyond the minimum (a multiple of 8), so decode→encode is
    byte-exact. ``None`` means "the minimum".
    """

    __slots__ = ("tag", "type", "value", "width")

    def __init__(self, tag: int, type: ItemType, value: Value, width: int | None = None) -> None:
        self.tag = tag
        self.type = type
        self.value = value
        self.width = width

    # Structures -----------------------------------------------------------
    def find(self, tag: int) -> Item | None:
        """The first child with ``tag``, or None."""
        for child in self.value:  # type: ignore[union-attr]
            if child.tag == tag:
                return child
        return None

    def find_all(self, tag: int) -> list[Item]:
        """Every child with ``tag``, in order."""
        return [c for c in self.value if c.tag == tag]  # type: ignore[union-attr]

    def __iter__(self) -> Iterator[Item]:
        return iter(self.value)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.value)  # type: ignore[arg-type]

    # Value semantics ------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Item):
            return NotImplemented
        return (
            self.tag == other.tag
            and self.type == other.type
            and type(self.value) is type(other.value)
            and self.value == other.value
            and (self.width or 0) == (other.width or 0)
        )

    def __hash__(self) -> int:  # pragma: no cover - items are not meant as keys
        raise TypeError("Item is mutable and unhashable")

    def __repr__(self) -> str:
        return f"Item(0x{self.tag:06X}, {TYPE_NAMES[self.type]}, {self.value!r})"


def structure(tag: int, *children: Item) -> Item:
    """Build a Structure item."""
    return Item(tag, ItemType.STRUCTURE, list(children))
