"""The Locate keys of vendor attributes, and the memo of long values' keys
(kcm.core.attribute_keys)."""

from __future__ import annotations

import tracemalloc

from kcm.core import attribute_keys
from kcm.core.attribute_keys import LONGEST, keys_of
from kcm.kmip.attributes import Attribute
from kcm.ttlv import Item, ItemType


def vendor(name: str, value: Item) -> Attribute:
    return Attribute.vendor("x", name, value)


def fresh_key(attribute: Attribute) -> list[tuple[str, str]]:
    attribute_keys._LONG_KEYS.clear()
    attribute_keys._long_keys_bytes[0] = 0
    return keys_of([attribute])


def test_a_remembered_key_is_the_key_computed_afresh() -> None:
    for value in (Item(0, ItemType.BYTE_STRING, b"\x00\x01" * 150),
                  Item(0, ItemType.TEXT_STRING, "\U0001F511" * (LONGEST + 1)),
                  Item(0, ItemType.TEXT_STRING, "a\x00" * LONGEST),
                  Item(0, ItemType.TEXT_STRING, "b" * LONGEST)):
        expected = fresh_key(vendor("n", value))
        assert keys_of([vendor("n", value)]) == expected  # from the memo, or not kept
        # a value equal but another object, and another name, another vendor
        copy = Item(0, value.type, type(value.value)(value.value))
        assert keys_of([vendor("n", copy)]) == expected
        assert keys_of([vendor("m", value)]) != expected
        assert keys_of([Attribute.vendor("y", "n", value)]) != expected


def test_the_memo_takes_about_its_bound_in_memory_whatever_the_values() -> None:
    """Counted as Python holds them: 4-byte characters and each entry's tuples included (a
    count of characters let it grow to six times its bound)."""
    attribute_keys._LONG_KEYS.clear()
    attribute_keys._long_keys_bytes[0] = 0
    values = [vendor(f"n{n}", Item(0, ItemType.TEXT_STRING, f"{n:08d}" + "\U0001F511" * 201))
              for n in range(30_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        peak = 0
        for attribute in values:
            keys_of([attribute])
            peak = max(peak, tracemalloc.get_traced_memory()[0] - before)
    finally:
        tracemalloc.stop()
    # (the values themselves were made before: the memo holds them, it did not allocate
    # them, yet it counts them, so what it allocated is below its bound)
    assert attribute_keys._long_keys_bytes[0] <= attribute_keys.LONG_KEYS_BYTES
    assert peak <= attribute_keys.LONG_KEYS_BYTES
    assert len(attribute_keys._LONG_KEYS) < 30_000
