"""``kcm ttlv``: look at TTLV messages, and convert them to and from the OASIS XML encoding.

* ``kcm ttlv dump [FILE|-] [--hex]``: an indented tree, one item per line,
  ``TagName (0x42XXXX) Type: value``, with enumeration and mask names of the
  protocol version in each message's header;
* ``kcm ttlv to-xml [FILE|-] [--hex]``: a ``<KMIP>`` document like the OASIS test cases;
* ``kcm ttlv from-xml [FILE|-] [--hex]``: the TTLV of every message in an XML
  document, binary (or one hex line per message with ``--hex``).

TTLV input is binary, or hex text (with ``--hex``, or when the input holds nothing
but hex digits and white space); several concatenated messages are allowed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import BinaryIO

from kcm.cli import CommandError, add_command
from kcm.kmip import registry
from kcm.kmip.xml_encoding import (
    FixedPlaceholders,
    XmlEncodingError,
    attribute_value_tag,
    items_from_xml,
    items_to_xml,
    message_version,
    value_text,
)
from kcm.ttlv import TtlvError, decode_item, encode
from kcm.ttlv.types import TYPE_NAMES, Item, ItemType

#: The clock placeholders are resolved against; a module attribute so tests can fix it.
clock = time.time

_ATTRIBUTE_VALUE = 0x42000B
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_WHITESPACE = frozenset(b" \t\r\n")
_HEX_TEXT = _HEX_DIGITS | _WHITESPACE


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``ttlv`` and its actions to the ``kcm`` parser."""
    actions = add_command(subparsers, "ttlv",
                          "dump TTLV, convert TTLV to and from the OASIS XML encoding", __doc__)
    for name, run, help_text, hex_help in (
        ("dump", _run_dump, "print TTLV messages as an indented tree",
         "the input is hex text (detected when it holds only hex digits and spaces)"),
        ("to-xml", _run_to_xml, "write TTLV messages in the OASIS XML encoding",
         "the input is hex text (detected when it holds only hex digits and spaces)"),
        ("from-xml", _run_from_xml, "encode the messages of an OASIS XML document as TTLV",
         "write hex text, one line per message, instead of binary"),
    ):
        action = actions.add_parser(name, help=help_text, description=help_text)
        action.add_argument("file", nargs="?", default="-", metavar="FILE",
                            help="input file; - or nothing for standard input")
        action.add_argument("--hex", action="store_true", help=hex_help)
        action.set_defaults(run=run, prog=f"kcm ttlv {name}")


# ---------------------------------------------------------------------------
# Input


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CommandError(f"cannot read {path}: {e.strerror}") from None


def _unhex(data: bytes) -> bytes:
    digits = bytearray()
    for index, byte in enumerate(data):
        if byte in _HEX_DIGITS:
            digits.append(byte)
        elif byte not in _WHITESPACE:
            raise CommandError(f"hex input: character {index} is not a hex digit ({byte:#04x})")
    if len(digits) % 2:
        raise CommandError("hex input: an odd number of hex digits")
    return bytes.fromhex(digits.decode("ascii"))


def read_messages(data: bytes, *, force_hex: bool = False) -> list[Item]:
    """Decode every concatenated TTLV message in ``data`` (binary or hex text).

    Raises :class:`CommandError` naming the byte offset of the first bad item.
    """
    if force_hex or (data.strip() and _HEX_TEXT.issuperset(data)):
        data = _unhex(data)
    if not data:
        raise CommandError("no TTLV input")
    items = []
    offset = 0
    while offset < len(data):
        try:
            item, offset = decode_item(data, offset)
        except TtlvError as e:
            raise CommandError(f"byte offset {e.offset}: {e.reason}") from None
        items.append(item)
    return items


# ---------------------------------------------------------------------------
# dump


def dump_lines(item: Item) -> list[str]:
    """``item`` as indented lines ``TagName (0x42XXXX) Type: value``."""
    version = message_version(item)
    lines: list[str] = []
    _dump(item, version, 0, None, lines)
    return lines


def _dump(item: Item, version: tuple[int, int], depth: int, value_tag: int | None,
          lines: list[str]) -> None:
    head = f"{'  ' * depth}{registry.xml_name(item.tag, version)} (0x{item.tag:06X}) "
    head += TYPE_NAMES[item.type]
    if item.type is ItemType.STRUCTURE:
        lines.append(head)
        children = item.value
        attribute_tag = attribute_value_tag(children, version)  # type: ignore[arg-type]
        for child in children:  # type: ignore[union-attr]
            _dump(child, version, depth + 1,
                  attribute_tag if child.tag == _ATTRIBUTE_VALUE else None, lines)
        return
    lines.append(f"{head}: {_describe(item, version, value_tag)}")


def _describe(item: Item, version: tuple[int, int], value_tag: int | None) -> str:
    text = value_text(item, version, value_tag)
    value = item.value
    item_type = item.type
    if item_type is ItemType.TEXT_STRING:
        return json.dumps(value, ensure_ascii=False)
    if item_type is ItemType.BYTE_STRING:
        return f"{text} ({len(value)} bytes)"  # type: ignore[arg-type]
    if item_type is ItemType.ENUMERATION and not text.startswith("0x"):
        return f"{text} (0x{value:08X})"
    if item_type in (ItemType.INTEGER, ItemType.DATE_TIME, ItemType.DATE_TIME_EXTENDED) and (
        text != str(value)
    ):
        return f"{text} ({value})"
    return text


def _run_dump(args: argparse.Namespace) -> int:
    items = read_messages(_read_input(args.file), force_hex=args.hex)
    blocks = ["\n".join(dump_lines(item)) for item in items]
    sys.stdout.write("\n\n".join(blocks) + "\n")
    return 0


# ---------------------------------------------------------------------------
# XML


def _run_to_xml(args: argparse.Namespace) -> int:
    items = read_messages(_read_input(args.file), force_hex=args.hex)
    try:
        sys.stdout.write(items_to_xml(items))
    except XmlEncodingError as e:
        raise CommandError(str(e)) from None
    return 0


def _run_from_xml(args: argparse.Namespace) -> int:
    data = _read_input(args.file)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CommandError(f"XML input: byte offset {e.start} is not UTF-8") from None
    now = int(clock())
    placeholders = FixedPlaceholders(now=now)
    try:
        items = items_from_xml(text, placeholders=placeholders)
        encoded = [encode(item) for item in items]
    except (XmlEncodingError, TtlvError) as e:
        raise CommandError(str(e)) from None
    if not encoded:
        raise CommandError("the XML document holds no messages")
    if placeholders.substituted:
        names = ", ".join(sorted(placeholders.substituted))
        print(f"{args.prog}: note: placeholders given fixed values (now={now}): {names}",
              file=sys.stderr)
    if args.hex:
        sys.stdout.write("".join(wire.hex().upper() + "\n" for wire in encoded))
    else:
        sys.stdout.flush()
        out: BinaryIO = sys.stdout.buffer
        out.write(b"".join(encoded))
        out.flush()
    return 0
