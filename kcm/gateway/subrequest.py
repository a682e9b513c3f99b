"""Cut a forwardable request out of a mixed one, without decoding its batch items.

The sub-request keeps the client's Request Header (protocol version, Batch Error
Continuation Option, authentication, ...) with the Batch Count changed and the Maximum
Response Size the gateway gives it, followed by the chosen batch items' bytes exactly as
the client sent them. The client's Maximum Response Size (or the gateway's maximum message
size) bounds the whole answer, local and forwarded items together, as at the core: each
remote run is given what the merged answer has left of it, so that no answer the core sends
back is larger than what the gateway may still hold (:mod:`kcm.gateway.handler`).
"""

from __future__ import annotations

import struct

from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType, encode
from kcm.ttlv.peek import PeekedBatchItem

__all__ = ["sub_request"]

_REQUEST_MESSAGE_HEAD = (int(Tag.REQUEST_MESSAGE) << 8) | ItemType.STRUCTURE.value
_HEADER = struct.Struct(">II")


def sub_request(wire: bytes, header: Item, items: list[PeekedBatchItem],
                maximum_response_size: int) -> bytes:
    """A Request Message of ``items`` (some of the request's, in order) under the
    request's ``header`` (decoded once by the caller), with ``maximum_response_size`` as
    its Maximum Response Size (in place of the client's, right after the Protocol Version,
    where the specification's Request Header has it)."""
    size = Item(Tag.MAXIMUM_RESPONSE_SIZE, ItemType.INTEGER, maximum_response_size)
    children: list[Item] = []
    for child in header.value:  # type: ignore[union-attr]
        if child.tag == Tag.MAXIMUM_RESPONSE_SIZE:
            continue
        children.append(Item(Tag.BATCH_COUNT, ItemType.INTEGER, len(items))
                        if child.tag == Tag.BATCH_COUNT else child)
        if child.tag == Tag.PROTOCOL_VERSION:
            children.append(size)
    body = b"".join([encode(Item(header.tag, header.type, children)),
                     *(wire[item.start:item.end] for item in items)])
    return _HEADER.pack(_REQUEST_MESSAGE_HEAD, len(body)) + body
