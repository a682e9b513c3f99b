"""Cut a forwardable request out of a mixed one, without decoding its batch items.

The sub-request keeps the client's Request Header (protocol version, Batch Error
Continuation Option, authentication, ...) with the Batch Count changed and no Maximum
Response Size, followed by the chosen batch items' bytes exactly as the client sent them.
The client's Maximum Response Size bounds the whole answer, local and forwarded items
together, as at the core: the gateway applies it once, to the merged answer.
"""

from __future__ import annotations

import struct

from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType, encode
from kcm.ttlv.peek import PeekedBatchItem

__all__ = ["sub_request"]

_REQUEST_MESSAGE_HEAD = (int(Tag.REQUEST_MESSAGE) << 8) | ItemType.STRUCTURE.value
_HEADER = struct.Struct(">II")


def sub_request(wire: bytes, header: Item, items: list[PeekedBatchItem]) -> bytes:
    """A Request Message of ``items`` (some of the request's, in order) under the
    request's ``header`` (decoded once by the caller)."""
    children = [Item(Tag.BATCH_COUNT, ItemType.INTEGER, len(items))
                if child.tag == Tag.BATCH_COUNT else child
                for child in header.value  # type: ignore[union-attr]
                if child.tag != Tag.MAXIMUM_RESPONSE_SIZE]
    body = b"".join([encode(Item(header.tag, header.type, children)),
                     *(wire[item.start:item.end] for item in items)])
    return _HEADER.pack(_REQUEST_MESSAGE_HEAD, len(body)) + body
