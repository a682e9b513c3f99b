"""A request of more TTLV items than any KMIP request needs, refused before it is decoded.

Decoding costs about half a microsecond of Python per item, and the maximum message size
(1 MiB) admits some 130,000 items: a request that the batch-item or attribute limits would
refuse after decoding it would still have held a plane's interpreter for some 70 ms, every
other request in the process waiting on it. :data:`MAX_REQUEST_ITEMS` bounds the items of
one request message, every field at any depth counted, far above what real requests hold
(a Create has about forty; 64 of them about 2,600; a Locate of 1,024 attributes in KMIP 1.x
about 4,100). :func:`over_item_limit` judges a request by it from its headers alone
(:func:`kcm.ttlv.item_count.count_items`, in C): microseconds, whatever the request holds.
kcm-core refuses such a request whole (Invalid Message); kcm-gateway forwards it whole, so
that the core refuses and audits it. An operator who raises ``max_batch_items`` raises the
bound with it: 256 fields for each batch item allowed (:func:`item_limit`).
"""

from __future__ import annotations

from kcm.kernel.versions import version_of
from kcm.kmip.enums import ResultReason
from kcm.kmip.versions import Version
from kcm.ttlv.item_count import count_items

__all__ = ["MAX_REQUEST_ITEMS", "item_limit", "over_item_limit"]

#: The most TTLV items (every field, at any depth) one request message may hold with the
#: default ``max_batch_items`` (64).
MAX_REQUEST_ITEMS = 16384
#: Fields allowed per batch item allowed, for a raised ``max_batch_items``.
ITEMS_PER_BATCH_ITEM = 256


def item_limit(max_batch_items: int) -> int:
    """The most TTLV items of one request where ``max_batch_items`` is the batch limit."""
    return max(MAX_REQUEST_ITEMS, ITEMS_PER_BATCH_ITEM * max_batch_items)


def over_item_limit(wire: bytes, most: int) -> tuple[Version, int, str] | None:
    """(version to answer in, Result Reason, Result Message) refusing ``wire`` when it holds
    more than ``most`` items; None when it holds no more (a request of at most ``8 * most``
    bytes is not even counted: an item takes 8 bytes at least), or when its headers cannot
    be walked that far (its decoder then says what is wrong)."""
    if len(wire) <= 8 * most or count_items(wire, most) <= most:
        return None
    return (version_of(wire), ResultReason.INVALID_MESSAGE,
            f"request too large: more than {most} fields; at most {most} are accepted in "
            "one request")
