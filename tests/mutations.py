"""Malformed requests made from well-formed ones (test support).

Each shape rewrites one thing a client controls in the Request Header — the protocol
version, the Batch Count, which header fields are there — and keeps the rest of the request
as it was, so the server meets the bad header with real batch items behind it (1.x
Template-Attributes, 2.x Attributes, ...). :func:`mutate_bytes` damages the bytes of the
body instead, anywhere, keeping only the message's own header so that it is still one
message on the wire.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator

from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType, decode, encode

__all__ = ["HEADER_SHAPES", "base_requests", "mutate", "mutate_bytes", "random_shape"]

Shape = Callable[[Item], None]  # rewrites a Request Message tree in place

INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)


def _header(tree: Item) -> Item:
    header = tree.find(Tag.REQUEST_HEADER)
    assert header is not None, "a base request has a header"
    return header


def _set_version(major: int, minor: int) -> Shape:
    def shape(tree: Item) -> None:
        version = _header(tree).find(Tag.PROTOCOL_VERSION)
        version.value = [Item(Tag.PROTOCOL_VERSION_MAJOR, ItemType.INTEGER, major),
                         Item(Tag.PROTOCOL_VERSION_MINOR, ItemType.INTEGER, minor)]
    shape.__name__ = f"version {major}.{minor}"
    return shape


def _set_batch_count(count: Callable[[int], int], name: str) -> Shape:
    def shape(tree: Item) -> None:
        items = len(tree.find_all(Tag.BATCH_ITEM))
        field = _header(tree).find(Tag.BATCH_COUNT)
        field.value = count(items)
    shape.__name__ = f"batch count {name}"
    return shape


def _drop(parent: Callable[[Item], Item], tag: int, name: str) -> Shape:
    def shape(tree: Item) -> None:
        node = parent(tree)
        node.value = [child for child in node.value if child.tag != tag]
    shape.__name__ = f"no {name}"
    return shape


def _version_item(tree: Item) -> Item:
    return _header(tree).find(Tag.PROTOCOL_VERSION)


def _both(first: Shape, second: Shape) -> Shape:
    def shape(tree: Item) -> None:
        first(tree)
        second(tree)
    shape.__name__ = f"{first.__name__}, {second.__name__}"
    return shape


#: Every malformed-header shape the fuzz test sends, each with a readable name.
HEADER_SHAPES: list[Shape] = [
    _set_version(0, 4), _set_version(1, 99), _set_version(3, 0), _set_version(INT32_MAX, 0),
    _set_version(INT32_MAX, INT32_MAX), _set_version(-1, 0), _set_version(1, -1),
    _set_version(INT32_MIN, INT32_MIN), _set_version(2, 5),
    _set_batch_count(lambda n: -1, "-1"), _set_batch_count(lambda n: 0, "0"),
    _set_batch_count(lambda n: n + 1, "one more"), _set_batch_count(lambda n: n - 1, "one less"),
    _set_batch_count(lambda n: INT32_MAX, "2**31-1"),
    _drop(_header, Tag.PROTOCOL_VERSION, "Protocol Version"),
    _drop(_version_item, Tag.PROTOCOL_VERSION_MINOR, "Protocol Version Minor"),
    _drop(_header, Tag.BATCH_COUNT, "Batch Count"),
    _drop(lambda tree: tree, Tag.REQUEST_HEADER, "Request Header"),
    _drop(lambda tree: tree, Tag.BATCH_ITEM, "Batch Item"),
    _both(_set_version(1, 99), _set_batch_count(lambda n: 0, "0")),
    _both(_set_version(3, 0), _drop(_header, Tag.BATCH_COUNT, "Batch Count")),
]


def random_shape(rng: random.Random) -> Shape:
    """A shape with random numbers where :data:`HEADER_SHAPES` has chosen ones."""
    if rng.random() < 0.5:
        return _set_version(rng.randint(INT32_MIN, INT32_MAX), rng.randint(INT32_MIN, INT32_MAX))
    wrong = rng.choice([rng.randint(INT32_MIN, -1), rng.randint(1, 5)])
    return _set_batch_count(lambda n: wrong if wrong < 0 else n + wrong, str(wrong))


def mutate(wire: bytes, shape: Shape) -> bytes:
    """``wire`` (a Request Message) with ``shape`` applied to a copy of its tree."""
    tree = copy.deepcopy(decode(wire))
    shape(tree)
    return encode(tree)


def mutate_bytes(wire: bytes, rng: random.Random) -> tuple[str, bytes]:
    """``wire`` (a Request Message) with its body damaged one random way — bytes flipped,
    a stretch overwritten with random bytes or zeros, or a stretch moved elsewhere — and a
    name for the damage. The 8-byte message header is kept, so the server reads exactly one
    message of the same length (whose inside no longer needs to make sense)."""
    body = bytearray(wire[8:])
    if not body:
        return "as sent", wire
    kind = rng.choice(("flip", "random", "zeros", "move"))
    start = rng.randrange(len(body))
    length = min(len(body) - start, rng.choice((1, 4, 8, 16, 64)))
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)
    elif kind == "random":
        body[start:start + length] = rng.randbytes(length)
    elif kind == "zeros":
        body[start:start + length] = bytes(length)
    else:
        stretch = body[start:start + length]
        del body[start:start + length]
        at = rng.randrange(len(body) + 1)
        body[at:at] = stretch
    return f"{kind} at {start}+{length}", wire[:8] + bytes(body)


def base_requests() -> Iterator[tuple[str, bytes]]:
    """Every request of the OASIS vectors as bytes, named by where it comes from: the KMIP
    1.1 test cases' hex messages, then the XML test cases (1.x and 2.x)."""
    from tests.vectors import iter_v11_hex_messages, iter_vector_messages

    for line, wire in iter_v11_hex_messages():
        if wire[:3] == bytes.fromhex("420078"):
            yield f"kmip-testcases-v1.1.txt:{line}", wire
    for path, index, tree in iter_vector_messages():
        if tree.tag == Tag.REQUEST_MESSAGE:
            yield f"{path.name}[{index}]", encode(tree)
