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


def test_the_long_keys_memo_holds_no_more_than_its_bound_across_threads(monkeypatch) -> None:
    """The store's threads remember long values' keys together: one thread's clear, with
    its count reset after others had counted what they added, held twice the bound and
    more. Hammered from four threads with switches forced often, what the memo holds never
    passes the bound."""
    import os
    import sys
    import threading
    import time

    from kcm.core import attribute_keys as ak

    monkeypatch.setattr(ak, "LONG_KEYS_BYTES", 64 << 10)
    monkeypatch.setattr(ak, "_LONG_KEYS", {})
    monkeypatch.setattr(ak, "_long_keys_bytes", [0])

    def size(memo: tuple, key: tuple) -> int:
        return (sys.getsizeof(memo[3]) + sys.getsizeof(memo[0]) + sys.getsizeof(memo[1])
                + sys.getsizeof(key[0]) + sys.getsizeof(key[1]) + ak._ENTRY_OVERHEAD)

    values = [os.urandom(300) for _ in range(2000)]
    key = ("v:x:y", "#" + "0" * 64)
    stop = time.monotonic() + 1.5

    def work(offset: int) -> None:
        n = offset
        while time.monotonic() < stop:
            memo = ("x", "y", 8, values[n % len(values)])
            if ak._LONG_KEYS.get(memo) is None:
                ak._remember_long(memo, key)
            n += 4

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    worst = 0
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            held = sum(size(m, k) for m, k in ak._LONG_KEYS.copy().items())
            worst = max(worst, held)
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    assert 0 < worst <= ak.LONG_KEYS_BYTES
