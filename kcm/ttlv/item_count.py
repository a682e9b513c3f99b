"""How many TTLV items a message holds, counted without decoding it. Pure: no I/O.

Decoding a request costs about half a microsecond of Python per item, and a 1 MiB request
can hold 130,000 of them: 70 ms of interpreter held by a request that a limit will refuse.
:func:`count_items` walks only the headers, in C where the install built
:mod:`kcm.ttlv._item_count`, and stops once past the bound it is given, so judging a request
by its number of items costs microseconds whatever it holds. The Python walk below is the
reference the compiled one is held to (tests/unit/test_item_count.py).
"""

from __future__ import annotations

import struct

from kcm.ttlv.codec import DEFAULT_MAX_DEPTH

try:
    from kcm.ttlv._item_count import count as _count
except ImportError:  # a source tree run without being installed
    _count = None

__all__ = ["MAX_DEPTH_LIMIT", "count_items", "compiled"]

#: The deepest ``max_depth`` taken (the C walk recurses once a level).
MAX_DEPTH_LIMIT = 256

_HEADER = struct.Struct(">II")
_STRUCTURE = 0x01


def compiled() -> bool:
    """Whether the C walk is in use."""
    return _count is not None


def count_items(data: bytes, most: int, *, max_depth: int = DEFAULT_MAX_DEPTH) -> int:
    """The items of the TTLV item that begins ``data`` (itself and everything its
    Structures hold), counted no further than ``most + 1``; -1 when the headers cannot be
    walked (cut short, a length overrunning its container, nested deeper than
    ``max_depth``): the decoder then says what is wrong."""
    if _count is not None and type(data) is bytes:
        return _count(data, most, max_depth)
    return count_items_python(data, most, max_depth=max_depth)


def count_items_python(data: bytes, most: int, *, max_depth: int = DEFAULT_MAX_DEPTH) -> int:
    """:func:`count_items` in Python alone."""
    if not 0 <= max_depth <= MAX_DEPTH_LIMIT:
        raise ValueError("max_depth must be from 0 to 256")
    size = len(data)
    if size < 8:
        return -1
    head, length = _HEADER.unpack_from(data, 0)
    end = 8 + (length if head & 0xFF == _STRUCTURE else (length + 7) & ~7)
    if end > size:
        return -1
    count = 0
    # (position, end of the container, depth left) of each level being walked
    stack = [(0, end, max_depth + 1)]
    while stack:
        pos, stop, depth = stack.pop()
        while pos < stop:
            if pos + 8 > stop:
                return -1
            head, length = _HEADER.unpack_from(data, pos)
            count += 1
            if count > most:
                return count
            if head & 0xFF == _STRUCTURE:
                inner = pos + 8 + length
                if inner > stop or depth <= 0:
                    return -1
                stack.append((inner, stop, depth))
                pos, stop, depth = pos + 8, inner, depth - 1
                continue
            after = pos + 8 + ((length + 7) & ~7)
            if after > stop:
                return -1
            pos = after
    return count
