"""The OASIS XML test-case encoding of TTLV, both ways. Pure: str in, str out.

The KMIP conformance test cases are written in the XML encoding of KMIP Profiles 2.1
§5.4.1 (first defined in KMIP Additional Message Encodings 1.0 §6): one element per
TTLV item, named by the CamelCase tag name, with ``type=`` (Structure when omitted)
and ``value=``:

* Integer, Long Integer, Interval: decimal; a mask Integer may be flag names
  separated by spaces (``"Encrypt Decrypt"``);
* Big Integer and Byte String: hex (two's complement, big endian, for Big Integer);
* Boolean: ``true`` / ``false``; Text String: the text;
* Date-Time (Extended): ``xsd:dateTime``, such as ``2012-04-27T08:12:55+00:00``;
* Enumeration: the CamelCase name, or ``0x`` and eight hex digits.

A tag without a name in the message's version is ``<TTLV tag="0x540001" ...>``.
Reading also accepts ``0x`` hex for every number and date, ``Z`` or any offset
for dates, decimal microseconds for a Date-Time Extended and ``1``/``0`` for a
Boolean. Writing is canonical: lowercase hex, UTC dates, mask flags low bit first.

Names and enumerations depend on the protocol version, which is read from the
``ProtocolVersion`` in each message's header (2.1 when there is none). Two
values are named by a sibling rather than by their own tag: a KMIP 1.x
``Attribute`` holds ``AttributeName`` and ``AttributeValue``, and the value's
enumeration or mask is that of the named attribute; and a 2.x
``AttributeReference`` enumeration is a tag, written as the tag's name.

Dynamic values (``$NOW``, ``$UNIQUE_IDENTIFIER_0``, …) stand for what a server
chooses; a :class:`PlaceholderResolver` turns them into concrete values and back.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Protocol
from xml.parsers import expat

from kcm.kmip import registry
from kcm.kmip.versions import Version
from kcm.ttlv.types import TYPE_NAMES, TYPES_BY_NAME, Item, ItemType, Value

__all__ = [
    "DEFAULT_VERSION", "FixedPlaceholders", "PlaceholderResolver", "XmlEncodingError",
    "attribute_value_tag", "item_to_xml", "items_from_xml", "items_to_xml", "message_version",
    "value_text",
]


#: The version assumed for an item without a message header around it.
DEFAULT_VERSION: Version = (2, 1)
_LAST_1X: Version = (1, 4)

# Tags fixed in every KMIP version (KMIP 1.4 §9.1.3.1, KMIP 2.1 §9.1.3.1).
_REQUEST_MESSAGE = 0x420078
_RESPONSE_MESSAGE = 0x42007B
_REQUEST_HEADER = 0x420077
_RESPONSE_HEADER = 0x42007A
_PROTOCOL_VERSION = 0x420069
_PROTOCOL_VERSION_MAJOR = 0x42006A
_PROTOCOL_VERSION_MINOR = 0x42006B
_ATTRIBUTE_NAME = 0x42000A
_ATTRIBUTE_VALUE = 0x42000B

_HEADERS = {_REQUEST_MESSAGE: _REQUEST_HEADER, _RESPONSE_MESSAGE: _RESPONSE_HEADER}
_MESSAGE_NAMES = {"RequestMessage": "RequestHeader", "ResponseMessage": "ResponseHeader"}
_WRAPPER = "KMIP"
# A tag without a name in the message's version is written <TTLV tag="0x540001" ...>,
# since "0x540001" is not a legal XML element name (KMIP Additional Message Encodings
# 1.0 §6.1.2); an optional name= attribute is only a comment.
_UNNAMED = "TTLV"
_LEAF_ATTRIBUTES = frozenset({"type", "value"})
_UNNAMED_ATTRIBUTES = frozenset({"type", "value", "tag", "name"})
_INDENT = "  "

_PLACEHOLDER = re.compile(r"\$[A-Z][A-Z0-9_]*(?:[+-][0-9]+)?\Z")
_DECIMAL = re.compile(r"[+-]?[0-9]+\Z")
_HEX_NUMBER = re.compile(r"0[xX][0-9A-Fa-f]{1,16}\Z")
_HEX_BYTES = re.compile(r"(?:[0-9A-Fa-f]{2})*\Z")
_TAG_NAME = re.compile(r"0[xX][0-9A-Fa-f]{6}\Z")
_DATE_TIME = re.compile(
    r"(?P<year>-?[0-9]{4,})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
    r"T(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]+))?"
    r"(?P<zone>Z|[+-][0-9]{2}:[0-9]{2})?\Z"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

_LIMITS = {
    ItemType.INTEGER: (-(1 << 31), (1 << 31) - 1),
    ItemType.LONG_INTEGER: (-(1 << 63), (1 << 63) - 1),
    ItemType.ENUMERATION: (0, (1 << 32) - 1),
    ItemType.INTERVAL: (0, (1 << 32) - 1),
    ItemType.DATE_TIME: (-(1 << 63), (1 << 63) - 1),
    ItemType.DATE_TIME_EXTENDED: (-(1 << 63), (1 << 63) - 1),
}


class XmlEncodingError(ValueError):
    """XML that is not a well-formed KMIP XML encoding, or an item that cannot be written.

    ``path`` is the slash-separated element path to the offending element (empty when
    the XML itself is malformed), ``line`` its 1-based line number when known, and
    ``reason`` what was wrong.
    """

    def __init__(self, reason: str, *, path: str = "", line: int | None = None) -> None:
        where = path
        if line is not None:
            where = f"{where} (line {line})" if where else f"line {line}"
        super().__init__(f"{where}: {reason}" if where else reason)
        self.reason = reason
        self.path = path
        self.line = line


# ---------------------------------------------------------------------------
# Placeholders


class PlaceholderResolver(Protocol):
    """Turns the test cases' dynamic values (``$NOW``, ``$UNIQUE_IDENTIFIER_0``) into values.

    ``resolve`` gives the concrete value of ``placeholder`` for an item of
    ``item_type`` (raising ``ValueError`` when it has none); ``placeholder_for``
    gives back the placeholder text a value was resolved from, or None, so that
    writing XML reproduces the placeholders that were read.
    """

    def resolve(self, placeholder: str, item_type: ItemType) -> Value: ...

    def placeholder_for(self, item_type: ItemType, value: Value) -> str | None: ...


class FixedPlaceholders:
    """Deterministic placeholder values around a fixed ``now`` (POSIX seconds).

    * Date-Time ``$NOW``, ``$NOW+N``, ``$NOW-N``: ``now`` plus or minus N seconds
      (Date-Time Extended: the same in microseconds); any other Date-Time
      placeholder is refused;
    * Text String: the placeholder text itself;
    * Byte String: the first 16 bytes of the SHA-256 of the placeholder text;
    * Integer, Long Integer, Interval, Enumeration, Big Integer: a non-negative
      number taken from the same hash; Boolean placeholders are refused.

    It remembers each substitution (``substituted``: placeholder → value) and maps
    values back to their placeholder. A literal value that happens to equal a
    substituted one is written back as the placeholder too, so pick a ``now`` far
    from the document's literal dates.
    """

    def __init__(self, now: int) -> None:
        self.now = now
        self.substituted: dict[str, Value] = {}
        self._by_value: dict[tuple[ItemType, Value], str] = {}

    def resolve(self, placeholder: str, item_type: ItemType) -> Value:
        """The value of ``placeholder`` for an item of ``item_type``."""
        value = self._value(placeholder, item_type)
        self.substituted.setdefault(placeholder, value)
        self._by_value.setdefault((item_type, value), placeholder)
        return value

    def placeholder_for(self, item_type: ItemType, value: Value) -> str | None:
        """The placeholder ``value`` was resolved from, if any."""
        if item_type is ItemType.TEXT_STRING:
            return None  # a Text String placeholder is its own value
        return self._by_value.get((item_type, value))

    def _value(self, placeholder: str, item_type: ItemType) -> Value:
        if item_type is ItemType.TEXT_STRING:
            return placeholder
        if item_type in (ItemType.DATE_TIME, ItemType.DATE_TIME_EXTENDED):
            match = re.fullmatch(r"\$NOW([+-][0-9]+)?", placeholder)
            if match is None:
                raise ValueError(f"no {TYPE_NAMES[item_type]} value for placeholder {placeholder}")
            seconds = self.now + int(match.group(1) or 0)
            return seconds if item_type is ItemType.DATE_TIME else seconds * 1_000_000
        digest = hashlib.sha256(placeholder.encode("utf-8")).digest()
        if item_type is ItemType.BYTE_STRING:
            return digest[:16]
        if item_type is ItemType.BIG_INTEGER:
            return int.from_bytes(digest[:16], "big")
        if item_type is ItemType.LONG_INTEGER:
            return int.from_bytes(digest[:8], "big") >> 1
        if item_type in (ItemType.INTEGER, ItemType.INTERVAL, ItemType.ENUMERATION):
            return int.from_bytes(digest[:4], "big") >> 1
        raise ValueError(f"no {TYPE_NAMES[item_type]} value for placeholder {placeholder}")


# ---------------------------------------------------------------------------
# Registry look-ups, cached: the same few hundred names recur in every message.


@lru_cache(maxsize=4096)
def _tag_from_name(name: str, version: Version) -> int:
    if _TAG_NAME.match(name):
        return int(name, 16)
    return registry.tag_from_name(name, version)


@lru_cache(maxsize=4096)
def _xml_name(tag: int, version: Version) -> str:
    return registry.xml_name(tag, version)


@lru_cache(maxsize=4096)
def _is_mask(tag: int, version: Version) -> bool:
    return registry.is_mask(tag, version)


@lru_cache(maxsize=4096)
def _attribute_tag(name: str, version: Version) -> int | None:
    return registry.attribute_tag(name, version)


# A 2.x Attribute Reference is an enumeration of tags (KMIP 2.1 §11 "Tag"): the
# registry names its values by the tags' names.
@lru_cache(maxsize=8192)
def _enum_value(tag: int, name: str, version: Version) -> int:
    return registry.enum_value(tag, name, version)


@lru_cache(maxsize=8192)
def _enum_name(tag: int, value: int, version: Version) -> str | None:
    return registry.enum_name(tag, value, version)


@lru_cache(maxsize=64)
def _supported(version: Version) -> Version:
    """``version`` if the registry knows it, else :data:`DEFAULT_VERSION`'s names are used."""
    return version if registry.has_tables(version) else DEFAULT_VERSION


@lru_cache(maxsize=4096)
def _mask_to_names(tag: int, value: int, version: Version) -> str | None:
    return registry.mask_to_names(tag, value, version)


@lru_cache(maxsize=4096)
def _mask_from_names(tag: int, text: str, version: Version) -> int:
    try:
        return registry.mask_from_names(tag, text, version)
    except KeyError:
        if version[0] < 2:
            raise
    # The KMIP 2.0 draft test cases (TC-CERTATTR-1-20, TC-PKCS12-1-20) still name the
    # 1.x usage flag ContentCommitment, which 2.x dropped: read it with its 1.4 bit.
    return registry.mask_from_names(tag, text, _LAST_1X)


# ---------------------------------------------------------------------------
# Reading


class _Node:
    """One XML element as parsed, before it is given meaning."""

    __slots__ = ("name", "attrs", "children", "line")

    def __init__(self, name: str, attrs: dict[str, str], line: int) -> None:
        self.name = name
        self.attrs = attrs
        self.children: list[_Node] = []
        self.line = line


def _parse_nodes(text: str) -> _Node:
    """Parse ``text`` into a :class:`_Node` tree (whitespace and comments dropped)."""
    parser = expat.ParserCreate()
    root: list[_Node] = []
    stack: list[_Node] = []

    def start(name: str, attrs: dict[str, str]) -> None:
        node = _Node(name, attrs, parser.CurrentLineNumber)
        (stack[-1].children if stack else root).append(node)
        stack.append(node)

    def end(name: str) -> None:
        stack.pop()

    def characters(data: str) -> None:
        # Some upstream files annotate the <KMIP> wrapper with "# [[title]]" lines between
        # messages; that text belongs to no item, so only text inside an item is refused.
        if len(stack) > 1 or (stack and stack[0].name != _WRAPPER):
            if data.isspace():
                return
            path = "/".join(n.name for n in stack)
            raise XmlEncodingError(
                f"unexpected text {data.strip()[:40]!r}", path=path,
                line=parser.CurrentLineNumber,
            )

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = characters
    try:
        parser.Parse(text, True)
    except expat.ExpatError as e:
        raise XmlEncodingError(
            f"malformed XML: {expat.ErrorString(e.code)} (column {e.offset + 1})", line=e.lineno,
        ) from None
    return root[0]


def items_from_xml(text: str, *, placeholders: PlaceholderResolver | None = None) -> list[Item]:
    """Parse an XML document into TTLV item trees, one per message.

    The document is either a ``<KMIP>`` wrapper around messages (or other items),
    or a single element. Each item is read with the names of the protocol
    version in its own header (2.1 without one). Placeholders need
    ``placeholders``; without it they are refused by name.

    Raises :class:`XmlEncodingError` for malformed XML or any unknown name or value.
    """
    root = _parse_nodes(text)
    if root.name == _WRAPPER and "type" not in root.attrs:
        if root.attrs:
            raise XmlEncodingError("KMIP takes no attributes", path=_WRAPPER, line=root.line)
        return [
            _read_top(node, f"{_WRAPPER}/{node.name}[{index}]", placeholders)
            for index, node in enumerate(root.children)
        ]
    return [_read_top(root, root.name, placeholders)]


def _read_top(node: _Node, path: str, placeholders: PlaceholderResolver | None) -> Item:
    reader = _Reader(_node_version(node), placeholders)
    return reader.read(node, path)


def _node_version(node: _Node) -> Version:
    """The protocol version a message element's header declares, else the default."""
    header_name = _MESSAGE_NAMES.get(node.name)
    if header_name is None:
        return DEFAULT_VERSION
    for header in node.children:
        if header.name != header_name:
            continue
        for version in header.children:
            if version.name != "ProtocolVersion":
                continue
            parts = {c.name: c.attrs.get("value", "") for c in version.children}
            try:
                major = int(parts["ProtocolVersionMajor"])
                minor = int(parts["ProtocolVersionMinor"])
            except (KeyError, ValueError):
                raise XmlEncodingError(
                    "ProtocolVersion needs decimal ProtocolVersionMajor and ProtocolVersionMinor",
                    path=f"{node.name}/{header_name}/ProtocolVersion", line=version.line,
                ) from None
            return _supported((major, minor))
    return DEFAULT_VERSION


class _Reader:
    """Converts the nodes of one message, all under one protocol version."""

    def __init__(self, version: Version, placeholders: PlaceholderResolver | None) -> None:
        self.version = version
        self.placeholders = placeholders

    def read(self, node: _Node, path: str, value_tag: int | None = None) -> Item:
        version = self.version
        attrs = node.attrs
        allowed = _LEAF_ATTRIBUTES
        name = node.name
        if name == _UNNAMED:
            allowed = _UNNAMED_ATTRIBUTES
            name = attrs.get("tag", "")
            if not _TAG_NAME.match(name):
                raise XmlEncodingError(
                    f"{_UNNAMED} needs a tag attribute of 0x and six hex digits, not {name!r}",
                    path=path, line=node.line,
                )
        try:
            tag = _tag_from_name(name, version)
        except KeyError:
            raise XmlEncodingError(
                f"unknown element name {name!r} in KMIP {version[0]}.{version[1]}",
                path=path, line=node.line,
            ) from None
        type_name = attrs.get("type", "Structure")
        item_type = TYPES_BY_NAME.get(type_name)
        if item_type is None:
            raise XmlEncodingError(f"unknown type {type_name!r}", path=path, line=node.line)
        extra = attrs.keys() - allowed
        if extra:
            raise XmlEncodingError(
                f"unexpected attribute {sorted(extra)[0]!r}", path=path, line=node.line,
            )
        if item_type is ItemType.STRUCTURE:
            if "value" in attrs:
                raise XmlEncodingError("a Structure has no value", path=path, line=node.line)
            return Item(tag, ItemType.STRUCTURE, self._children(node, path))
        if node.children:
            raise XmlEncodingError(
                f"a {type_name} has no child elements", path=path, line=node.line,
            )
        text = attrs.get("value")
        if text is None:
            raise XmlEncodingError(f"{type_name} needs a value", path=path, line=node.line)
        try:
            if text.startswith("$") and _PLACEHOLDER.match(text):
                if self.placeholders is None:
                    raise ValueError(f"placeholder {text} needs a resolver")
                return Item(tag, item_type, self.placeholders.resolve(text, item_type))
            return _leaf(tag, item_type, text, value_tag or tag, version)
        except (ValueError, KeyError, OverflowError) as e:
            reason = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise XmlEncodingError(
                f"bad {type_name} value {text[:60]!r}: {reason}", path=path, line=node.line,
            ) from None

    def _children(self, node: _Node, path: str) -> list[Item]:
        children = node.children
        attribute_tag = None
        names = [c for c in children if c.name == "AttributeName"]
        if names and any(c.name == "AttributeValue" for c in children):
            attribute_tag = _attribute_tag(names[0].attrs.get("value", ""), self.version)
        read = self.read
        return [
            read(
                child, f"{path}/{child.name}",
                attribute_tag if child.name == "AttributeValue" else None,
            )
            for child in children
        ]


def _leaf(tag: int, item_type: ItemType, text: str, value_tag: int, version: Version) -> Item:
    """The item for a non-Structure element; ``value_tag`` names its enumeration or mask."""
    if item_type is ItemType.TEXT_STRING:
        return Item(tag, ItemType.TEXT_STRING, text)
    if item_type is ItemType.BYTE_STRING:
        if not _HEX_BYTES.match(text):
            raise ValueError("not an even number of hex digits")
        return Item(tag, ItemType.BYTE_STRING, bytes.fromhex(text))
    if item_type is ItemType.BOOLEAN:
        if text in ("true", "1"):
            return Item(tag, ItemType.BOOLEAN, True)
        if text in ("false", "0"):
            return Item(tag, ItemType.BOOLEAN, False)
        raise ValueError("not true or false")
    if item_type is ItemType.BIG_INTEGER:
        return _big_integer(tag, text)
    if item_type is ItemType.ENUMERATION:
        hex_form = _HEX_NUMBER.match(text)
        value = int(text, 16) if hex_form else _enum_value(value_tag, text, version)
    elif item_type is ItemType.INTEGER:
        if _DECIMAL.match(text):
            value = int(text)
        elif _HEX_NUMBER.match(text):
            value = _signed32(int(text, 16))
        elif _is_mask(value_tag, version):
            value = _mask_from_names(value_tag, text, version)
        else:
            raise ValueError("not a decimal integer")
    elif _DECIMAL.match(text) and item_type is not ItemType.DATE_TIME:
        value = int(text)  # for a Date-Time Extended: microseconds, as some encoders write it
    elif _HEX_NUMBER.match(text):
        value = int(text, 16)
        if item_type is not ItemType.INTERVAL and value >= 1 << 63:
            value -= 1 << 64  # 64-bit two's complement
    elif item_type is ItemType.DATE_TIME or item_type is ItemType.DATE_TIME_EXTENDED:
        value = _parse_date_time(text, item_type)
    else:
        raise ValueError("not a decimal integer")
    low, high = _LIMITS[item_type]
    if not low <= value <= high:
        raise ValueError(f"out of range for {TYPE_NAMES[item_type]}")
    return Item(tag, item_type, value)


def _signed32(value: int) -> int:
    if value >= 1 << 32:
        raise ValueError("more than 32 bits")
    return value - (1 << 32) if value >= 1 << 31 else value


def _big_integer(tag: int, text: str) -> Item:
    """A Big Integer from two's-complement hex; a padded width is kept for byte-exactness."""
    if not text or not _HEX_BYTES.match(text):
        raise ValueError("not a non-empty even number of hex digits")
    raw = bytes.fromhex(text)
    value = int.from_bytes(raw, "big", signed=True)
    width = -(-len(raw) // 8) * 8
    return Item(tag, ItemType.BIG_INTEGER, value, width if width != _big_width(value) else None)


def _big_width(value: int) -> int:
    bits = value.bit_length() if value >= 0 else (~value).bit_length()
    return max(8, ((bits + 1 + 63) // 64) * 8)


def _parse_date_time(text: str, item_type: ItemType) -> int:
    """POSIX seconds (Date-Time) or microseconds (Date-Time Extended) of an xsd:dateTime.

    A time without a zone is taken as UTC; a Date-Time refuses fractions of a second
    it cannot carry.
    """
    match = _DATE_TIME.match(text)
    if match is None:
        raise ValueError("not an xsd:dateTime such as 2012-04-27T08:12:55+00:00")
    year, month, day = int(match["year"]), int(match["month"]), int(match["day"])
    hour, minute, second = int(match["hour"]), int(match["minute"]), int(match["second"])
    if not (1 <= year <= 9999 and hour < 24 and minute < 60 and second < 60):
        raise ValueError("date or time out of range")
    days = date(year, month, day).toordinal() - _EPOCH_ORDINAL
    zone = match["zone"]
    offset = 0
    if zone and zone != "Z":
        zone_hours, zone_minutes = int(zone[1:3]), int(zone[4:6])
        if zone_hours > 14 or zone_minutes > 59:
            raise ValueError("time zone offset out of range")
        offset = (zone_hours * 3600 + zone_minutes * 60) * (-1 if zone[0] == "-" else 1)
    seconds = days * 86400 + hour * 3600 + minute * 60 + second - offset
    fraction = match["fraction"] or ""
    if item_type is ItemType.DATE_TIME:
        if fraction.strip("0"):
            raise ValueError("a Date-Time has no fractions of a second")
        return seconds
    if fraction[6:].strip("0"):
        raise ValueError("a Date-Time Extended has no finer unit than microseconds")
    return seconds * 1_000_000 + int(fraction[:6].ljust(6, "0"))


# ---------------------------------------------------------------------------
# Writing


def message_version(item: Item) -> Version:
    """The protocol version in a message item's header, or :data:`DEFAULT_VERSION`."""
    header_tag = _HEADERS.get(item.tag)
    if header_tag is None or item.type is not ItemType.STRUCTURE:
        return DEFAULT_VERSION
    header = item.find(header_tag)
    if header is None or header.type is not ItemType.STRUCTURE:
        return DEFAULT_VERSION
    version = header.find(_PROTOCOL_VERSION)
    if version is None or version.type is not ItemType.STRUCTURE:
        return DEFAULT_VERSION
    major = version.find(_PROTOCOL_VERSION_MAJOR)
    minor = version.find(_PROTOCOL_VERSION_MINOR)
    if major is None or minor is None or not (
        isinstance(major.value, int) and isinstance(minor.value, int)
    ):
        return DEFAULT_VERSION
    return _supported((major.value, minor.value))


def items_to_xml(items: list[Item], *, placeholders: PlaceholderResolver | None = None) -> str:
    """A ``<KMIP>`` document holding ``items``, laid out like the OASIS test-case files.

    With ``placeholders``, values that were resolved from placeholders are written as
    the placeholders again.
    """
    parts = ["<KMIP>\n\n"]
    for item in items:
        parts.append(item_to_xml(item, placeholders=placeholders))
        parts.append("\n")
    parts.append("</KMIP>\n")
    return "".join(parts)


def item_to_xml(item: Item, *, placeholders: PlaceholderResolver | None = None,
                version: Version | None = None) -> str:
    """One item as an XML element (newline-terminated, two-space indentation).

    Names follow ``version``, else the version in the item's own message header,
    else :data:`DEFAULT_VERSION`. Raises :class:`XmlEncodingError` for a value that
    does not fit its type.
    """
    writer = _Writer(version or message_version(item), placeholders)
    lines: list[str] = []
    writer.write(item, 0, None, lines, "")
    return "".join(lines)


class _Writer:
    """Writes the items of one message, all under one protocol version."""

    def __init__(self, version: Version, placeholders: PlaceholderResolver | None) -> None:
        self.version = version
        self.placeholders = placeholders

    def write(self, item: Item, depth: int, value_tag: int | None, out: list[str],
              parent_path: str) -> None:
        name = end_name = tag_name = _xml_name(item.tag, self.version)
        if name[0] == "0":
            name, end_name = f'{_UNNAMED} tag="{name}"', _UNNAMED
        indent = _INDENT * depth
        item_type = item.type
        if item_type is ItemType.STRUCTURE:
            children = item.value
            if not isinstance(children, list):
                raise XmlEncodingError("a Structure's value must be a list of items",
                                       path=_join(parent_path, tag_name))
            if not children:
                out.append(f"{indent}<{name}/>\n")
                return
            out.append(f"{indent}<{name}>\n")
            attribute_tag = attribute_value_tag(children, self.version)
            path = _join(parent_path, tag_name)
            for child in children:
                self.write(child, depth + 1,
                           attribute_tag if child.tag == _ATTRIBUTE_VALUE else None, out, path)
            out.append(f"{indent}</{end_name}>\n")
            return
        text = None
        if self.placeholders is not None:
            text = self.placeholders.placeholder_for(item_type, item.value)
        try:
            if text is None:
                text = value_text(item, self.version, value_tag)
            text = _escape(text)
        except (TypeError, ValueError, OverflowError, AttributeError) as e:
            raise XmlEncodingError(
                f"cannot write {TYPE_NAMES.get(item_type, item_type)} value "
                f"{item.value!r:.60}: {e}", path=_join(parent_path, tag_name),
            ) from None
        out.append(f'{indent}<{name} type="{TYPE_NAMES[item_type]}" value="{text}"/>\n')


def attribute_value_tag(children: list[Item], version: Version) -> int | None:
    """The tag whose enumeration or mask an ``AttributeValue`` among ``children`` takes.

    In KMIP 1.x an ``Attribute`` structure names its attribute in a sibling
    ``AttributeName`` text; None when there is no such pair or the name is unknown.
    """
    name = value = None
    for child in children:
        if child.tag == _ATTRIBUTE_NAME and name is None:
            name = child
        elif child.tag == _ATTRIBUTE_VALUE:
            value = child
    if name is None or value is None or not isinstance(name.value, str):
        return None
    return _attribute_tag(name.value, version)


_ATTRIBUTE_ESCAPES = str.maketrans({
    "&": "&amp;", "<": "&lt;", '"': "&quot;",
    # Literal white space in an attribute is normalized to spaces when read (XML 1.0 §3.3.3).
    "\t": "&#9;", "\n": "&#10;", "\r": "&#13;",
})
# Characters XML 1.0 cannot carry at all, not even as character references.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _escape(text: str) -> str:
    """``text`` for a double-quoted attribute, escaped as the OASIS files do (``>`` kept)."""
    bad = _NOT_XML.search(text)
    if bad:
        raise ValueError(f"character U+{ord(bad.group()):04X} cannot be written in XML")
    return text.translate(_ATTRIBUTE_ESCAPES)


def _join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def value_text(item: Item, version: Version, value_tag: int | None = None) -> str:
    """The ``value=`` text of a non-Structure item, as the OASIS files write it.

    Enumerations and mask Integers are named after ``value_tag`` (default: the
    item's own tag) in ``version``. Raises TypeError or ValueError for a value that
    does not fit the item's type.
    """
    value_tag = value_tag or item.tag
    item_type = item.type
    value = item.value
    if item_type is ItemType.TEXT_STRING:
        if not isinstance(value, str):
            raise TypeError("a Text String value must be a str")
        return value
    if item_type is ItemType.BYTE_STRING:
        if not isinstance(value, bytes | bytearray):
            raise TypeError("a Byte String value must be bytes")
        return value.hex()
    if item_type is ItemType.BOOLEAN:
        if type(value) is not bool:
            raise TypeError("a Boolean value must be a bool")
        return "true" if value else "false"
    if type(value) is not int:
        raise TypeError(f"a {TYPE_NAMES[item_type]} value must be an int")
    if item_type is ItemType.BIG_INTEGER:
        width = item.width or _big_width(value)
        return value.to_bytes(width, "big", signed=True).hex()
    low, high = _LIMITS[item_type]
    if not low <= value <= high:
        raise ValueError(f"out of range for {TYPE_NAMES[item_type]}")
    if item_type is ItemType.ENUMERATION:
        return _enum_name(value_tag, value, version) or f"0x{value:08X}"
    if item_type is ItemType.INTEGER and value > 0 and _is_mask(value_tag, version):
        return _mask_to_names(value_tag, value, version) or str(value)
    if item_type is ItemType.DATE_TIME or item_type is ItemType.DATE_TIME_EXTENDED:
        return _format_date_time(value, item_type)
    return str(value)


def _format_date_time(value: int, item_type: ItemType) -> str:
    """UTC xsd:dateTime, with microseconds for a Date-Time Extended that has them."""
    seconds, microseconds = ((value, 0) if item_type is ItemType.DATE_TIME
                             else divmod(value, 1_000_000))
    try:
        moment = _EPOCH + timedelta(seconds=seconds)
    except OverflowError:
        moment = None
    if moment is None or not 1 <= moment.year <= 9999:
        # Beyond xsd:dateTime's four-digit years: the hex form reads back exactly.
        return f"0x{value & 0xFFFFFFFFFFFFFFFF:016X}"
    text = f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}"
    if microseconds:
        text += f".{microseconds:06d}"
    return text + "+00:00"


