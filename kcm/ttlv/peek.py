"""Read routing facts straight from request bytes, without building the message tree.

The gateway's classifier needs, per request: the protocol version, the batch
count, and for each batch item its operation, where it lies in the buffer, and
sometimes its Unique Identifier or the attributes of a Create. Everything else
is skipped by length. Only what routing needs is checked (a Protocol Version to read,
well-formed lengths, an Operation first in each Batch Item); the rest (a Batch Count that
is missing or does not match, odd values) is reported as found, and the request is fully
validated by whoever executes it, with the same decoder on both planes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kcm.ttlv.codec import decode_item
from kcm.ttlv.errors import TtlvError
from kcm.ttlv.types import Item

_HEADER = struct.Struct(">II")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")

# Tags (KMIP 1.4 §9.1.3.1 / 2.1 §9.1.3.1), as wire headers (tag << 8 | type).
_REQUEST_MESSAGE = 0x42007801
_REQUEST_HEADER = 0x42007701
_PROTOCOL_VERSION = 0x42006901
_VERSION_MAJOR = 0x42006A02
_VERSION_MINOR = 0x42006B02
_BATCH_COUNT = 0x42000D02
_BATCH_ITEM = 0x42000F01
_OPERATION = 0x42005C05
_UNIQUE_BATCH_ITEM_ID = 0x42009308
_REQUEST_PAYLOAD = 0x42007901
_UNIQUE_IDENTIFIER = 0x42009407
_OBJECT_TYPE = 0x42005705
_TEMPLATE_ATTRIBUTE = 0x42009101
_ATTRIBUTES = 0x42012501
_OPERATION_CREATE = 0x01


@dataclass(slots=True)
class PeekedBatchItem:
    """One batch item as the classifier sees it.

    ``start``/``end`` delimit the whole Batch Item (header included) in the buffer.
    ``unique_identifier`` is filled when asked and present as a Text String;
    ``object_type`` and where the Template-Attribute or Attributes structure lies
    (``attributes_start``/``attributes_end``) are filled for a Create when asked. That
    structure is decoded only when :attr:`attributes` is read.
    """

    operation: int
    start: int
    end: int
    unique_batch_item_id: bytes | None = None
    unique_identifier: str | None = None
    object_type: int | None = None
    attributes_start: int = -1
    attributes_end: int = -1
    source: bytes | None = None

    @property
    def attributes(self) -> Item | None:
        """The Create's attribute structure, decoded now; TtlvError if it is malformed."""
        if self.source is None or self.attributes_start < 0:
            return None
        return decode_item(self.source, self.attributes_start)[0]

    def attributes_contain(self, needle: bytes) -> bool:
        """Whether the raw attribute structure contains ``needle`` (no decoding)."""
        if self.source is None or self.attributes_start < 0:
            return False
        return self.source.find(needle, self.attributes_start, self.attributes_end) >= 0


@dataclass(slots=True)
class PeekedRequest:
    """The routing facts of one Request Message."""

    version: tuple[int, int]
    batch_count: int | None  # as the header says (None: it has none); not checked here
    header_start: int
    header_end: int
    items: list[PeekedBatchItem]


@dataclass(slots=True)
class RequestHead:
    """A Request Message's header, and the heads of its first items after it."""

    version: tuple[int, int]
    batch_count: int | None  # as the header says (None: it has none); not checked here
    #: The items after the header, counted up to the bound it was read with, plus one.
    items: int
    #: The tag of the first of those items that is not a Batch Item, if one was seen.
    stranger: int | None


def peek_request_head(data: bytes, *, max_items: int) -> RequestHead:
    """The header of a Request Message, and how many items follow it, counted no further
    than ``max_items + 1``: the work is bounded by the header and ``max_items + 1`` item
    heads, however many items the request holds. Raise :class:`TtlvError` if what is read
    is wrong (what is not read is not judged)."""
    end, header_end = _message(data, _REQUEST_MESSAGE, _REQUEST_HEADER, "Request")
    version, batch_count = _read_request_header(data, 16, header_end)
    pos, items, stranger = header_end, 0, None
    while pos < end and items <= max_items:
        head, length = _item(data, pos, end)
        if head != _BATCH_ITEM and stranger is None:
            stranger = head >> 8
        items += 1
        pos += 8 + length
    return RequestHead(version, batch_count, items, stranger)


#: An Operation item's tag and type, as every batch item begins.
OPERATION_HEAD = _OPERATION.to_bytes(4, "big")


def operation_values(data: bytes, most: int | None = None) -> list[bytes]:
    """The four bytes 8 on from every Operation head (:data:`OPERATION_HEAD`) in ``data``,
    in order, found without peeking. Every batch item's Operation is among them, as
    :func:`peek_request` reads it (the four bytes after the item's length, whatever that
    length says); so may be look-alikes inside strings, which can only add values.
    ``most``: stop once more than that many are found (the list is then ``most + 1``
    long, and the search bounded however many ``data`` holds)."""
    found = []
    at = data.find(OPERATION_HEAD)
    while at >= 0:
        found.append(data[at + 8:at + 12])
        if most is not None and len(found) > most:
            break
        at = data.find(OPERATION_HEAD, at + 1)
    return found


def peek_request(data: bytes, *, unique_identifier: bool = False,
                 create_attributes: bool = False) -> PeekedRequest:
    """Peek at a Request Message; raise :class:`TtlvError` if what is read is wrong."""
    end, header_end = _message(data, _REQUEST_MESSAGE, _REQUEST_HEADER, "Request")
    pos = header_start = 8
    version, batch_count = _read_request_header(data, pos + 8, header_end)
    pos = header_end
    items = []
    while pos < end:
        head, length = _item(data, pos, end)
        item_end = pos + 8 + length
        if head == _BATCH_ITEM:
            items.append(
                _read_batch_item(data, pos, item_end, unique_identifier, create_attributes)
            )
        pos = item_end
    return PeekedRequest(version, batch_count, header_start, header_end, items)


def _message(data: bytes, message_head: int, header_head: int, kind: str) -> tuple[int, int]:
    """Where the message that begins ``data`` ends, and where its header (at 8) ends."""
    size = len(data)
    if size < 8:
        raise TtlvError(0, "truncated message header")
    head, length = _HEADER.unpack_from(data, 0)
    if head != message_head:
        raise TtlvError(0, f"not a {kind} Message")
    end = 8 + length
    if end > size:
        raise TtlvError(4, f"message length {length} overruns the {size}-byte buffer")
    head, length = _item(data, 8, end)
    if head != header_head:
        raise TtlvError(8, f"a {kind} Message must begin with its {kind} Header")
    return end, 16 + length


def _item(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """The (tag << 8 | type, length) header at ``pos``, checked to fit before ``end``."""
    if pos + 8 > end:
        raise TtlvError(pos, "truncated item header")
    head, length = _HEADER.unpack_from(data, pos)
    padded = (length + 7) & ~7
    if pos + 8 + padded > end:
        raise TtlvError(pos, f"item length {length} overruns its container")
    return head, padded


def _read_request_header(data: bytes, pos: int,
                         end: int) -> tuple[tuple[int, int], int | None]:
    major: int | None = None
    minor: int | None = None
    batch_count: int | None = None
    while pos < end:
        head, length = _item(data, pos, end)
        if head == _PROTOCOL_VERSION:
            inner, inner_end = pos + 8, pos + 8 + length
            while inner < inner_end:
                ihead, ilength = _item(data, inner, inner_end)
                if ihead == _VERSION_MAJOR and ilength == 8:
                    major = _I32.unpack_from(data, inner + 8)[0]
                elif ihead == _VERSION_MINOR and ilength == 8:
                    minor = _I32.unpack_from(data, inner + 8)[0]
                inner += 8 + ilength
        elif head == _BATCH_COUNT and length == 8:
            batch_count = _I32.unpack_from(data, pos + 8)[0]
        pos += 8 + length
    if major is None or minor is None:
        raise TtlvError(pos, "Request Header has no usable Protocol Version")
    return (major, minor), batch_count


def _read_batch_item(data: bytes, start: int, end: int, want_uid: bool,
                     want_attributes: bool) -> PeekedBatchItem:
    pos = start + 8
    head, length = _item(data, pos, end)
    if head != _OPERATION or length != 8:
        raise TtlvError(pos, "a Batch Item must begin with its Operation")
    peeked = PeekedBatchItem(_U32.unpack_from(data, pos + 8)[0], start, end)
    pos += 16
    while pos < end:
        head, length = _item(data, pos, end)
        if head == _UNIQUE_BATCH_ITEM_ID:
            raw_length = _U32.unpack_from(data, pos + 4)[0]
            peeked.unique_batch_item_id = bytes(data[pos + 8:pos + 8 + raw_length])
        elif head == _REQUEST_PAYLOAD and (want_uid or want_attributes):
            _read_payload(data, pos + 8, pos + 8 + length, peeked, want_uid, want_attributes)
        pos += 8 + length
    return peeked


def _read_payload(data: bytes, pos: int, end: int, peeked: PeekedBatchItem, want_uid: bool,
                  want_attributes: bool) -> None:
    is_create = peeked.operation == _OPERATION_CREATE
    while pos < end:
        head, length = _item(data, pos, end)
        if head == _UNIQUE_IDENTIFIER and want_uid:
            raw_length = _U32.unpack_from(data, pos + 4)[0]
            try:
                peeked.unique_identifier = bytes(data[pos + 8:pos + 8 + raw_length]).decode()
            except UnicodeDecodeError:
                raise TtlvError(pos + 8, "Unique Identifier is not valid UTF-8") from None
            if not want_attributes or not is_create:
                return
        elif is_create and want_attributes:
            if head == _OBJECT_TYPE and length == 8:
                peeked.object_type = _U32.unpack_from(data, pos + 8)[0]
            elif head in (_TEMPLATE_ATTRIBUTE, _ATTRIBUTES):
                peeked.source = data
                peeked.attributes_start, peeked.attributes_end = pos, pos + 8 + length
        pos += 8 + length


# Responses ------------------------------------------------------------------------------
_RESPONSE_MESSAGE = 0x42007B01
_RESPONSE_HEADER = 0x42007A01
_SERVER_CORRELATION_VALUE = 0x42010607
_RESULT_STATUS = 0x42007F05
_RESPONSE_OPERATION = 0x42005C05


@dataclass(slots=True)
class PeekedResponseItem:
    """One response batch item: where it lies in the buffer, its Result Status, and its
    Operation (None when it has none, as an item refusing a whole request)."""

    start: int
    end: int
    result_status: int | None
    operation: int | None = None


@dataclass(slots=True)
class PeekedResponse:
    """What a relay needs of a Response Message to splice its batch items into another."""

    server_correlation_value: str | None
    items: list[PeekedResponseItem]


def peek_response(data: bytes) -> PeekedResponse:
    """Peek at a Response Message: its Server Correlation Value and, per batch item, the
    byte range, Result Status and Operation. Raises :class:`TtlvError` if what is read is wrong."""
    end, header_end = _message(data, _RESPONSE_MESSAGE, _RESPONSE_HEADER, "Response")
    correlation = None
    inner = 16
    while inner < header_end:
        ihead, ilength = _item(data, inner, header_end)
        if ihead == _SERVER_CORRELATION_VALUE:
            raw_length = _U32.unpack_from(data, inner + 4)[0]
            try:
                correlation = bytes(data[inner + 8:inner + 8 + raw_length]).decode()
            except UnicodeDecodeError:
                raise TtlvError(inner + 8, "Server Correlation Value is not UTF-8") from None
        inner += 8 + ilength
    pos = header_end
    items = []
    while pos < end:
        head, length = _item(data, pos, end)
        if head != _BATCH_ITEM:
            raise TtlvError(pos, "a Response Message holds only Batch Items after its header")
        item_end = pos + 8 + length
        status = operation = None
        inner = pos + 8
        while inner < item_end:
            ihead, ilength = _item(data, inner, item_end)
            if ihead == _RESULT_STATUS and ilength == 8:
                status = _U32.unpack_from(data, inner + 8)[0]
                break
            if ihead == _RESPONSE_OPERATION and ilength == 8:  # it precedes the status
                operation = _U32.unpack_from(data, inner + 8)[0]
            inner += 8 + ilength
        items.append(PeekedResponseItem(pos, item_end, status, operation))
        pos = item_end
    return PeekedResponse(correlation, items)
