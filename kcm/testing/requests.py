"""KMIP request messages as applications send them, for tests and benchmarks.

:func:`request` encodes a Request Message of batch items; the item builders make the items the
gateway and the core are exercised with (an L4 or a managed AES-256 key, Get, Encrypt, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kcm.kmip.attributes import Attribute, AttributeReference, Link
from kcm.kmip.enums import (
    BatchErrorContinuationOption,
    CryptographicAlgorithm,
    LinkType,
    ObjectType,
    Operation,
    QueryFunction,
)
from kcm.kmip.messages import (
    ProtocolVersion,
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    ResponseMessage,
    decode_response,
    encode_request,
)
from kcm.kmip.payloads import GetAttributesRequest
from kcm.kmip.payloads.crypto import DecryptRequest, EncryptRequest
from kcm.kmip.payloads.lifecycle import ActivateRequest, CreateRequest, GetRequest
from kcm.kmip.payloads.service import LocateRequest, QueryRequest
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType, decode, encode

STOP = BatchErrorContinuationOption.STOP
CONTINUE = BatchErrorContinuationOption.CONTINUE
UNDO = BatchErrorContinuationOption.UNDO


def request(*items: RequestBatchItem, version: tuple[int, int] = (1, 4),
            continuation: int | None = None,
            maximum_response_size: int | None = None) -> bytes:
    """A Request Message of ``items``."""
    header = RequestHeader(protocol_version=ProtocolVersion.of(version),
                           maximum_response_size=maximum_response_size,
                           batch_error_continuation_option=continuation,
                           batch_count=len(items))
    return encode(encode_request(RequestMessage(header, list(items))))


def with_header(batch_item: RequestBatchItem, version: tuple[int, int], **fields: object
                ) -> bytes:
    """A request of ``batch_item`` whose Request Header has ``fields`` (RequestHeader's)."""
    header = RequestHeader(protocol_version=ProtocolVersion.of(version), batch_count=1,
                           **fields)  # type: ignore[arg-type]
    return encode(encode_request(RequestMessage(header, [batch_item])))


def with_critical_extension(batch_item: RequestBatchItem) -> RequestBatchItem:
    """``batch_item`` with a critical Message Extension of a vendor KCM does not know."""
    batch_item.message_extensions = [Item(Tag.MESSAGE_EXTENSION, ItemType.STRUCTURE, [
        Item(Tag.VENDOR_IDENTIFICATION, ItemType.TEXT_STRING, "acme"),
        Item(Tag.CRITICALITY_INDICATOR, ItemType.BOOLEAN, True),
        Item(Tag.VENDOR_EXTENSION, ItemType.STRUCTURE, [])])]
    return batch_item


#: A header field :func:`odd_request` leaves out.
OMIT = object()


def odd_request(*items: RequestBatchItem, version: tuple[int, int] = (1, 4),
                batch_count: object = None, batch_count_type: ItemType = ItemType.INTEGER,
                minor: object = None, header_extra: Sequence[Item] = (),
                trailing: Sequence[Item] = ()) -> bytes:
    """A Request Message of ``items`` as a careless or hostile client may send it:
    ``batch_count`` other than the number of items (:data:`OMIT`: none) and of another
    type, a Protocol Version ``minor`` other than ``version``'s (:data:`OMIT`: none),
    ``header_extra`` fields after the header's own, ``trailing`` children after the batch
    items. (The gateway and the core must answer it alike.)"""
    header = RequestHeader(protocol_version=ProtocolVersion.of(version),
                           batch_count=len(items)).to_item(version)
    children: list[Item] = []
    for child in header.value:  # type: ignore[union-attr]
        if child.tag == Tag.BATCH_COUNT:
            if batch_count is OMIT:
                continue
            child = Item(Tag.BATCH_COUNT, batch_count_type,
                         len(items) if batch_count is None else batch_count)
        elif child.tag == Tag.PROTOCOL_VERSION and minor is not None:
            major_item = child.value[0]  # type: ignore[index]
            child = Item(Tag.PROTOCOL_VERSION, ItemType.STRUCTURE, [major_item] + (
                [] if minor is OMIT else [Item(Tag.PROTOCOL_VERSION_MINOR, ItemType.INTEGER,
                                               minor)]))
        children.append(child)
    children.extend(header_extra)
    body = [item.to_item(version) for item in items]
    return encode(Item(Tag.REQUEST_MESSAGE, ItemType.STRUCTURE,
                       [Item(Tag.REQUEST_HEADER, ItemType.STRUCTURE, children), *body,
                        *trailing]))


def item(operation: Operation, payload: object, batch_id: bytes | None = None
         ) -> RequestBatchItem:
    return RequestBatchItem(operation=operation, request_payload=payload,
                            unique_batch_item_id=batch_id)


def response(wire: bytes) -> ResponseMessage:
    """The decoded Response Message."""
    return decode_response(decode(wire))


def aes256(extra: Sequence[Attribute] = ()) -> list[Attribute]:
    """The attributes of an AES-256 key, then ``extra``."""
    return [Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
            Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256), *extra]


def create_l4(batch_id: bytes | None = None, *, via_link: str | None = None) -> RequestBatchItem:
    """Create of an L4: ``x-kcm-level = L4``, or a Parent Link to ``via_link``."""
    if via_link is not None:
        marker = Attribute.of(Tag.LINK, Link(link_type=LinkType.PARENT_LINK,
                                             linked_object_identifier=via_link))
    else:
        marker = Attribute.vendor("x", "kcm-level",
                                  Item(Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING, "L4"))
    return item(Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                                attributes=aes256([marker])), batch_id)


def create_managed(batch_id: bytes | None = None) -> RequestBatchItem:
    """Create of a managed AES-256 key (stored by the core; Pre-Active)."""
    return item(Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                                attributes=aes256()), batch_id)


def get(uid: str | None, batch_id: bytes | None = None) -> RequestBatchItem:
    return item(Operation.GET, GetRequest(unique_identifier=uid), batch_id)


def get_attributes(uid: str | None, *tags: int, batch_id: bytes | None = None
                   ) -> RequestBatchItem:
    """Get Attributes of ``uid``: the attributes ``tags`` name."""
    return item(Operation.GET_ATTRIBUTES, GetAttributesRequest(
        unique_identifier=uid, attribute_references=[AttributeReference(tag) for tag in tags]),
        batch_id)


def encrypt(uid: str | None, data: bytes = b"record", batch_id: bytes | None = None
            ) -> RequestBatchItem:
    return item(Operation.ENCRYPT, EncryptRequest(unique_identifier=uid, data=data), batch_id)


def decrypt(uid: str | None, data: bytes, batch_id: bytes | None = None) -> RequestBatchItem:
    return item(Operation.DECRYPT, DecryptRequest(unique_identifier=uid, data=data), batch_id)


def activate(uid: str | None, batch_id: bytes | None = None) -> RequestBatchItem:
    return item(Operation.ACTIVATE, ActivateRequest(unique_identifier=uid), batch_id)


def locate(batch_id: bytes | None = None) -> RequestBatchItem:
    return item(Operation.LOCATE, LocateRequest(), batch_id)


def query(batch_id: bytes | None = None) -> RequestBatchItem:
    """Query for the operations and object types the server supports."""
    return item(Operation.QUERY, QueryRequest(query_functions=[
        QueryFunction.QUERY_OPERATIONS, QueryFunction.QUERY_OBJECTS]), batch_id)


def largest(build: Callable[[int], bytes], limit: int = (1 << 20) - 64) -> bytes:
    """``build(n)``, a request of ``n`` of something, for the largest ``n`` that fits in
    ``limit`` bytes (the default maximum message size, less room for slack): what a
    hostile client sends to make a plane read the most small things for one request."""
    one, two = len(build(1)), len(build(2))
    return build((limit - one) // (two - one) + 1)
