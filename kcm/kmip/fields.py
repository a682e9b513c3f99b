"""Declarative field specs and the one generic codec for KMIP structures. Pure.

A model class is a dataclass decorated with :func:`kmip_struct`; each field says its
tag(s), its codec (an :class:`ItemType`, an IntEnum, a nested model class or a
:class:`Codec`) and whether it is required or repeated. ``from_item`` and ``to_item``
are generic. Fields are encoded in declaration order, which is the spec's order; a
structure received in another order remembers that order (``wire_order``) and is
re-encoded the same way, so decode→encode is byte-exact for every message.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from enum import IntEnum
from typing import Any, ClassVar, TypeVar

from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import tag_label
from kcm.kmip.versions import Version
from kcm.ttlv.types import TYPE_NAMES, Item, ItemType

DEFAULT_VERSION: Version = (2, 1)

_STRUCT = ItemType.STRUCTURE
T = TypeVar("T", bound="Struct")


class Codec:
    """How one field's value maps to wire items and back.

    ``types`` is the set of accepted item types (None: any). ``decode_into`` and
    ``encode_into`` may be overridden by codecs whose wire form is not one item per
    value (an attribute list, a Template-Attribute).
    """

    __slots__ = ()
    types: frozenset[ItemType] | None = None

    def decode(self, item: Item, version: Version) -> Any:
        return item

    def encode(self, value: Any, tag: int, version: Version) -> Item | None:
        return value

    def decode_into(self, values: dict, field: Field, item: Item, version: Version) -> None:
        value = self.decode(item, version)
        name = field.name
        if field.repeated:
            found = values.get(name)
            if found is None:
                values[name] = [value]
            else:
                found.append(value)
        elif name in values:
            raise KmipError(ResultReason.INVALID_FIELD, f"{tag_label(item.tag)} occurs twice")
        else:
            values[name] = value

    def encode_into(self, out: list[Item], field: Field, obj: Any, version: Version) -> None:
        value = getattr(obj, field.name)
        if value is None:
            return
        if field.repeated:
            for one in value:
                out.append(self.encode(one, field.tag, version))
        else:
            item = self.encode(value, field.tag, version)
            if item is not None:
                out.append(item)


class Raw(Codec):
    """Any item, kept as is (for rarely used or not modelled parts)."""

    __slots__ = ()


#: Enumeration values KMIP leaves to extensions (8XXXXXXX), which a server may take.
EXTENSION_VALUES = range(0x80000000, 0x90000000)


class Primitive(Codec):
    """A primitive item; its Python value, or an IntEnum member when ``enum`` knows it."""

    __slots__ = ("item_type", "members", "strict", "types")

    def __init__(self, item_type: ItemType, enum: type[IntEnum] | None = None, *,
                 strict: bool = True) -> None:
        self.item_type = item_type
        self.types = frozenset((item_type,))
        self.members = enum._value2member_map_ if enum is not None else None
        #: Whether a value ``enum`` does not define is refused (Unknown Enumeration); not
        #: for a field whose unknown values have an answer of their own (the Operation:
        #: Operation Not Supported).
        self.strict = strict

    def decode(self, item: Item, version: Version) -> Any:
        if self.members is not None:
            member = self.members.get(item.value)
            if member is not None:
                return member
            if self.strict and item.value not in EXTENSION_VALUES:
                # Neither a value any version defines nor an extension's (8XXXXXXX): a
                # request must not be answered as if it had said something it did not.
                raise KmipError(ResultReason.UNKNOWN_ENUMERATION,
                                f"{tag_label(item.tag)} {item.value:#010x} is not defined")
        return item.value

    def encode(self, value: Any, tag: int, version: Version) -> Item:
        # Items hold plain ints: an IntEnum member would not compare equal as a value.
        return Item(tag, self.item_type, value if self.members is None else int(value))


class TextOrRaw(Codec):
    """A Text String as ``str``; any other type (a 2.x placeholder reference) kept raw."""

    __slots__ = ()
    types = frozenset((ItemType.TEXT_STRING, ItemType.ENUMERATION, ItemType.INTEGER))

    def decode(self, item: Item, version: Version) -> Any:
        return item.value if item.type is ItemType.TEXT_STRING else item

    def encode(self, value: Any, tag: int, version: Version) -> Item:
        return Item(tag, ItemType.TEXT_STRING, value) if isinstance(value, str) else value


class BoolOrEnum(Codec):
    """A Boolean (1.x) or an Enumeration (2.x) of the same field, e.g. Asynchronous Indicator."""

    __slots__ = ()
    types = frozenset((ItemType.BOOLEAN, ItemType.ENUMERATION))

    def decode(self, item: Item, version: Version) -> Any:
        return item.value

    def encode(self, value: Any, tag: int, version: Version) -> Item:
        item_type = ItemType.BOOLEAN if type(value) is bool else ItemType.ENUMERATION
        return Item(tag, item_type, value)


class Nested(Codec):
    """A structure decoded to a model class."""

    __slots__ = ("cls",)
    types = frozenset((_STRUCT,))

    def __init__(self, cls: type[Struct]) -> None:
        self.cls = cls

    def decode(self, item: Item, version: Version) -> Any:
        return self.cls.from_item(item, version)

    def encode(self, value: Any, tag: int, version: Version) -> Item:
        return value.to_item(version, tag)


class OneOf(Codec):
    """A field whose item type picks the codec (Key Value: structure or wrapped bytes)."""

    __slots__ = ("by_type", "by_python", "types")

    def __init__(self, *codecs: tuple[ItemType, type, Codec]) -> None:
        self.by_type = {item_type: codec for item_type, _, codec in codecs}
        self.by_python = tuple((py, codec) for _, py, codec in codecs)
        self.types = frozenset(self.by_type)

    def decode(self, item: Item, version: Version) -> Any:
        return self.by_type[item.type].decode(item, version)

    def encode(self, value: Any, tag: int, version: Version) -> Item | None:
        for py, codec in self.by_python:
            if isinstance(value, py):
                return codec.encode(value, tag, version)
        return value  # a raw Item


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    """One field of a model: its name, wire tag(s), codec and cardinality."""

    name: str
    tags: tuple[int, ...]
    codec: Codec
    required: bool
    repeated: bool

    @property
    def tag(self) -> int:
        return self.tags[0]


def as_codec(kind: Any) -> Codec:
    """Normalise a field kind: ItemType, IntEnum class, model class or Codec."""
    if isinstance(kind, Codec):
        return kind
    if isinstance(kind, ItemType):
        return Primitive(kind)
    if isinstance(kind, type) and issubclass(kind, IntEnum):
        return Primitive(ItemType.ENUMERATION, kind)
    if isinstance(kind, type) and issubclass(kind, Struct):
        return Nested(kind)
    raise TypeError(f"not a field kind: {kind!r}")


def fld(tags: int | tuple[int, ...], kind: Any, *, required: bool = False,
        repeated: bool = False, secret: bool = False) -> Any:
    """Declare a model field. Required fields have no default; repeated ones default to [].
    A ``secret`` field (key material, a plaintext) is left out of the model's ``repr``, so
    a log line or an error report that shows a payload does not show it."""
    spec = {"tags": tags if isinstance(tags, tuple) else (tags,), "codec": as_codec(kind),
            "required": required, "repeated": repeated}
    shown = not secret
    if repeated:
        return dataclasses.field(default_factory=list, metadata={"kmip": spec}, repr=shown)
    if required:
        return dataclasses.field(metadata={"kmip": spec}, repr=shown)
    return dataclasses.field(default=None, metadata={"kmip": spec}, repr=shown)


@dataclasses.dataclass(slots=True, kw_only=True)
class Struct:
    """Base of every model class: the generic decoder and encoder."""

    TAG: ClassVar[int]
    FIELDS: ClassVar[tuple[Field, ...]]
    BY_TAG: ClassVar[dict[int, tuple[int, Field]]]
    REQUIRED: ClassVar[tuple[Field, ...]]

    #: The tags in received order when it differed from the spec's order, else None.
    wire_order: tuple[int, ...] | None = dataclasses.field(
        default=None, compare=False, repr=False)

    @classmethod
    def from_item(cls: type[T], item: Item, version: Version = DEFAULT_VERSION) -> T:
        """Decode ``item``; raise KmipError naming the field when it is malformed."""
        if item.type is not _STRUCT:
            raise KmipError(ResultReason.INVALID_FIELD,
                            f"{tag_label(item.tag)} must be a Structure")
        values: dict[str, Any] = {}
        by_tag = cls.BY_TAG
        last = -1
        disordered = False
        for child in item.value:  # type: ignore[union-attr]
            entry = by_tag.get(child.tag)
            if entry is None:
                raise KmipError(ResultReason.INVALID_FIELD,
                                f"unexpected field {tag_label(child.tag)} in {tag_label(item.tag)}")
            position, field = entry
            if position < last:
                disordered = True
            else:
                last = position
            codec = field.codec
            if codec.types is not None and child.type not in codec.types:
                expected = " or ".join(sorted(TYPE_NAMES[t] for t in codec.types))
                raise KmipError(ResultReason.INVALID_FIELD,
                                f"{tag_label(child.tag)} must be {expected}, "
                                f"not {TYPE_NAMES[child.type]}")
            codec.decode_into(values, field, child, version)
        for field in cls.REQUIRED:
            if field.name not in values:
                raise KmipError(ResultReason.INVALID_MESSAGE,
                                f"{tag_label(item.tag)} is missing the required field "
                                f"{tag_label(field.tag)}")
        obj = cls(**values)
        if disordered:
            obj.wire_order = tuple(child.tag for child in item.value)  # type: ignore[union-attr]
        return obj

    def to_item(self, version: Version = DEFAULT_VERSION, tag: int | None = None) -> Item:
        """Encode for protocol ``version``, tagged ``tag`` (default: the class's tag)."""
        out: list[Item] = []
        for field in self.FIELDS:
            field.codec.encode_into(out, field, self, version)
        if self.wire_order is not None:
            out = _reorder(out, self.wire_order)
        return Item(self.TAG if tag is None else tag, _STRUCT, out)


def _reorder(items: list[Item], order: tuple[int, ...]) -> list[Item]:
    """``items`` in the received tag order; any items beyond it keep the spec's order."""
    queues: dict[int, list[Item]] = {}
    for item in items:
        queues.setdefault(item.tag, []).append(item)
    result = []
    for tag in order:
        queue = queues.get(tag)
        if queue:
            result.append(queue.pop(0))
    if len(result) < len(items):
        used = {id(item) for item in result}
        result.extend(item for item in items if id(item) not in used)
    return result


def kmip_struct(tag: int) -> Callable[[type[T]], type[T]]:
    """Class decorator: make a keyword-only slotted dataclass with the generic codec."""

    def wrap(cls: type[T]) -> type[T]:
        cls = dataclasses.dataclass(slots=True, kw_only=True)(cls)
        fields = tuple(Field(name=f.name, **f.metadata["kmip"])
                       for f in dataclasses.fields(cls) if "kmip" in f.metadata)
        cls.TAG = tag
        cls.FIELDS = fields
        cls.BY_TAG = {t: (i, f) for i, f in enumerate(fields) for t in f.tags}
        cls.REQUIRED = tuple(f for f in fields if f.required)
        return cls

    return wrap
