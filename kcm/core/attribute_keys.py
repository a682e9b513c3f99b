"""The Locate keys of an object's Links and vendor attributes (table ``object_attribute_keys``,
migration 0008).

Names, Object Groups and a handful of columns let the store find what a Locate asks for
without reading the objects. A Link or a vendor (custom, ``x-``) attribute had no such
copy: a Locate naming one decoded the attribute list of every object of the tenant the
caller may see (4.6 s at 50,000 objects). Each object now keeps one key per value the store
can compare by equality:

* a Link: ``("Link", its Linked Object Identifier)`` (a Text String);
* a vendor attribute with a scalar value: ``("v:VENDOR:NAME", "TYPE:VALUE")``, the TTLV
  type byte and the value as text (bytes in hex; Big Integers as the number they are,
  whatever their padding). A structure value has no key.

A key or kind longer than :data:`LONGEST` is replaced by a digest of it, so every row fits
a B-tree index entry whatever the attribute's size (64 KiB at most).

A key is a necessary condition only: a Locate keeps the objects that have its criteria's
keys (:func:`criterion_key`) and still judges each of them in full. So a Link criterion
that gives only the Link Type, or a vendor criterion whose value is a structure, has no
key and is judged on every object, as before.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from collections.abc import Iterable

from kcm.kmip.attributes import VENDOR_TAG, Attribute
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType

__all__ = ["LINK_KIND", "LONGEST", "criterion_key", "keys_of"]

#: The kind of a Link's key.
LINK_KIND = "Link"
#: The longest kind or key kept as it is (characters); a longer one, or one with a NUL
#: character, becomes ``#`` + its SHA-256 in hex.
LONGEST = 200


def keys_of(attributes: Iterable[Attribute],
            known: dict[tuple[int, str | None, str | None], tuple[object, object]] | None = None
            ) -> list[tuple[str, str]]:
    """The (kind, key) pairs of these attributes, each once, in their order. ``known``
    keeps each vendor attribute's key by its value's identity, vendor and name (with the
    value, so that no other can take its identity) for another call over mostly the same
    values: a change of an object computes the keys of its attributes before and after it,
    and a key of a large value hashes its text (64 KiB: 0.4 ms)."""
    keys: dict[tuple[str, str], None] = {}
    for attribute in attributes:
        tag = attribute.tag
        if tag == Tag.LINK:
            value = attribute.value
            if value is not None and value.type is ItemType.STRUCTURE:
                for field in value:
                    if (field.tag == Tag.LINKED_OBJECT_IDENTIFIER
                            and field.type is ItemType.TEXT_STRING):
                        keys[(LINK_KIND, _bounded(field.value))] = None
        elif tag == VENDOR_TAG:
            if known is None:
                key = _vendor_key(attribute)
            else:
                kept = known.get((id(attribute.value), attribute.vendor_identification,
                                  attribute.name))
                if kept is not None and kept[0] is attribute.value:
                    key = kept[1]  # type: ignore[assignment]
                else:
                    key = _vendor_key(attribute)
                    known[(id(attribute.value), attribute.vendor_identification,
                           attribute.name)] = (attribute.value, key)
            if key is not None:
                keys[key] = None
    return list(keys)


def criterion_key(attribute: Attribute) -> tuple[str, str] | None:
    """The key an object must have to match this Locate criterion, or None when the
    criterion has none (it is judged on every object)."""
    if attribute.tag == Tag.LINK:
        value = attribute.value
        if value is None or value.type is not ItemType.STRUCTURE:
            return None
        linked = value.find(Tag.LINKED_OBJECT_IDENTIFIER)
        if linked is None or linked.type is not ItemType.TEXT_STRING:
            return None
        return LINK_KIND, _bounded(linked.value)
    if attribute.tag == VENDOR_TAG:
        return _vendor_key(attribute)
    return None


def _vendor_key(attribute: Attribute) -> tuple[str, str] | None:
    value = attribute.value
    if value is None or value.type is ItemType.STRUCTURE:
        return None
    raw = value.value
    long = isinstance(raw, (bytes, str)) and len(raw) > LONGEST
    if long:
        memo = (attribute.vendor_identification, attribute.name, int(value.type), raw)
        key = _LONG_KEYS.get(memo)
        if key is not None:
            return key
    kind = _bounded(f"v:{attribute.vendor_identification or ''}:{attribute.name or ''}")
    key = kind, _bounded(f"{int(value.type)}:{_text(value)}")
    if long:
        _remember_long(memo, key)
    return key


#: The keys of long vendor values (over :data:`LONGEST`), by vendor, name, type and value:
#: each change of an object decodes its attributes anew, and the digest of a 64 KiB value's
#: text costs about 0.12 ms, its lookup here 0.02 ms. The entries take at most
#: :data:`LONG_KEYS_BYTES` as Python holds them (then all are forgotten); the store's object
#: cache holds most of the values anyway.
_LONG_KEYS: dict[tuple[str | None, str | None, int, bytes | str], tuple[str, str]] = {}
_long_keys_bytes = [0]
#: Taken by the store's threads to count and clear together (a clear on one thread, then
#: its count reset after others had counted their entries, held twice the bound).
_long_keys_lock = threading.Lock()
LONG_KEYS_BYTES = 8 << 20
#: What an entry takes besides its strings: the two tuples and the dictionary's slot.
_ENTRY_OVERHEAD = 256


def _remember_long(memo: tuple[str | None, str | None, int, bytes | str],
                   key: tuple[str, str]) -> None:
    size = (sys.getsizeof(memo[3]) + sys.getsizeof(memo[0]) + sys.getsizeof(memo[1])
            + sys.getsizeof(key[0]) + sys.getsizeof(key[1]) + _ENTRY_OVERHEAD)
    with _long_keys_lock:
        if _long_keys_bytes[0] + size > LONG_KEYS_BYTES:
            _LONG_KEYS.clear()
            _long_keys_bytes[0] = 0
        if memo not in _LONG_KEYS:  # (another thread may have kept it meanwhile)
            _LONG_KEYS[memo] = key
            _long_keys_bytes[0] += size


def _text(value: Item) -> str:
    raw = value.value
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw).hex()
    if isinstance(raw, bool):
        return "1" if raw else "0"
    return str(raw)


def _bounded(text: str) -> str:
    if len(text) <= LONGEST and "\x00" not in text:  # (PostgreSQL's text holds no NUL)
        return text
    return "#" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
