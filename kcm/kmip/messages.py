"""Request and response messages (KMIP 1.4 §6-§7, 2.1 §8-§9), typed. Pure.

``decode_request``/``decode_response`` turn a decoded TTLV tree into messages whose
batch items carry a typed payload when the operation is modelled
(:data:`kcm.kmip.payloads.PAYLOADS`), else the raw payload Item; ``encode_request`` /
``encode_response`` are the inverse, for the protocol version in the message header.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kcm.kmip import registry
from kcm.kmip.enums import (
    AsynchronousIndicator,
    AttestationType,
    BatchErrorContinuationOption,
    Operation,
    ResultReason,
    ResultStatus,
    UniqueIdentifier,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.fields import (
    BoolOrEnum,
    Codec,
    Field,
    Primitive,
    Raw,
    Struct,
    Version,
    fld,
    kmip_struct,
    tag_label,
)
from kcm.kmip.payloads import PAYLOADS
from kcm.kmip.protocol_version import ProtocolVersion
from kcm.kmip.tags import Tag
from kcm.ttlv.types import Item, ItemType

#: The Operation of a batch item: a value no version defines is still read, and answered
#: Operation Not Supported (KMIP 1.4 §11, 2.1 §11), not refused as an unknown enumeration.
OPERATION_CODEC = Primitive(ItemType.ENUMERATION, Operation, strict=False)

__all__ = [
    "IdPlaceholder", "ProtocolVersion", "RequestBatchItem", "RequestHeader", "RequestMessage",
    "ResponseBatchItem", "ResponseHeader", "ResponseMessage", "UnreadablePayload",
    "decode_request",
    "check_request_header", "decode_request_header", "decode_request_items",
    "decode_response", "encode_request", "encode_response",
]

_S = ItemType.STRUCTURE
_INT = ItemType.INTEGER
_TEXT = ItemType.TEXT_STRING
_BYTES = ItemType.BYTE_STRING
_BOOL = ItemType.BOOLEAN
_RAW = Raw()


class _Payload(Codec):
    """A batch item's payload: typed when the operation (already decoded) is modelled."""

    __slots__ = ("is_request",)
    types = frozenset((_S,))

    def __init__(self, is_request: bool) -> None:
        self.is_request = is_request

    def decode_into(self, values: dict, field: Field, item: Item, version: Version) -> None:
        if field.name in values:
            raise KmipError(ResultReason.INVALID_FIELD, f"{tag_label(item.tag)} occurs twice")
        model = PAYLOADS.get((values.get("operation"), self.is_request))  # type: ignore[arg-type]
        values[field.name] = item if model is None else model.from_item(item, version)

    def encode(self, value: Any, tag: int, version: Version) -> Item:
        return value.to_item(version, tag) if isinstance(value, Struct) else value


@kmip_struct(Tag.REQUEST_HEADER)
class RequestHeader(Struct):
    """Request Header. Authentication stays a raw Item (credential kinds vary)."""

    protocol_version: ProtocolVersion = fld(Tag.PROTOCOL_VERSION, ProtocolVersion, required=True)
    maximum_response_size: int | None = fld(Tag.MAXIMUM_RESPONSE_SIZE, _INT)
    client_correlation_value: str | None = fld(Tag.CLIENT_CORRELATION_VALUE, _TEXT)
    server_correlation_value: str | None = fld(Tag.SERVER_CORRELATION_VALUE, _TEXT)
    #: Boolean in 1.x, an Asynchronous Indicator enumeration in 2.1.
    asynchronous_indicator: bool | int | None = fld(Tag.ASYNCHRONOUS_INDICATOR, BoolOrEnum())
    attestation_capable_indicator: bool | None = fld(Tag.ATTESTATION_CAPABLE_INDICATOR, _BOOL)
    attestation_types: list[AttestationType | int] = fld(Tag.ATTESTATION_TYPE, AttestationType,
                                                         repeated=True)
    authentication: Item | None = fld(Tag.AUTHENTICATION, _RAW)
    batch_error_continuation_option: BatchErrorContinuationOption | int | None = fld(
        Tag.BATCH_ERROR_CONTINUATION_OPTION, BatchErrorContinuationOption)
    batch_order_option: bool | None = fld(Tag.BATCH_ORDER_OPTION, _BOOL)
    time_stamp: int | None = fld(Tag.TIME_STAMP, ItemType.DATE_TIME)
    batch_count: int = fld(Tag.BATCH_COUNT, _INT, required=True)

    @property
    def version(self) -> Version:
        """The protocol version as ``(major, minor)``."""
        return self.protocol_version.as_tuple()

    @property
    def effective_batch_order(self) -> bool:
        """Must the batch run in order? Absent: False in 1.x (KMIP 1.4 §6.12, "no implied
        ordering"), True in 2.x (KMIP 2.1 §9, Batch Order Option)."""
        if self.batch_order_option is not None:
            return self.batch_order_option
        return self.protocol_version.major >= 2

    @property
    def effective_error_continuation(self) -> BatchErrorContinuationOption | int:
        """What to do after a failed item. Absent: Stop (KMIP 1.4 §6.13, 2.1 §9)."""
        option = self.batch_error_continuation_option
        return BatchErrorContinuationOption.STOP if option is None else option


@kmip_struct(Tag.BATCH_ITEM)
class RequestBatchItem(Struct):
    """One operation of a request; ``request_payload`` is a model or the raw Item, or,
    for an item a server could not read (:func:`decode_request` with ``per_item``), an
    :class:`UnreadablePayload`; its ``operation`` is then None when that was unreadable
    too."""

    operation: Operation | int = fld(Tag.OPERATION, OPERATION_CODEC, required=True)
    ephemeral: bool | None = fld(Tag.EPHEMERAL, _BOOL)
    unique_batch_item_id: bytes | None = fld(Tag.UNIQUE_BATCH_ITEM_ID, _BYTES)
    request_payload: Struct | Item = fld(Tag.REQUEST_PAYLOAD, _Payload(True), required=True)
    message_extensions: list[Item] = fld(Tag.MESSAGE_EXTENSION, _RAW, repeated=True)

    @property
    def critical_extension(self) -> Item | None:
        """The first Message Extension whose Criticality Indicator is True, or None. A
        server that does not support such an extension must fail the item (KMIP 1.4 §6.16,
        2.1 §9); one that is not critical may be ignored."""
        for extension in self.message_extensions:
            if extension.type is not _S:
                continue
            for child in extension.value:  # type: ignore[union-attr]
                if (child.tag == Tag.CRITICALITY_INDICATOR and child.type is _BOOL
                        and child.value is True):
                    return extension
        return None


class UnreadablePayload:
    """The payload of a batch item that could not be decoded (the item's own fields, or
    its payload): ``error`` says why. Such an item fails alone, under the batch's
    continuation option (KMIP 1.4 §11.1, "Error parsing batch item or payload within batch
    item": the batch item fails), when the kernel's batch runs it
    (:func:`kcm.kernel.batch.run_batch`)."""

    __slots__ = ("error",)

    def __init__(self, error: KmipError) -> None:
        self.error = error

    def __eq__(self, other: object) -> bool:
        return (type(other) is UnreadablePayload and other.error.reason == self.error.reason
                and other.error.message == self.error.message)

    def __repr__(self) -> str:
        return f"UnreadablePayload({self.error!r})"


@kmip_struct(Tag.RESPONSE_HEADER)
class ResponseHeader(Struct):
    """Response Header. Nonce stays a raw Item."""

    protocol_version: ProtocolVersion = fld(Tag.PROTOCOL_VERSION, ProtocolVersion, required=True)
    time_stamp: int = fld(Tag.TIME_STAMP, ItemType.DATE_TIME, required=True)
    nonce: Item | None = fld(Tag.NONCE, _RAW)
    server_hashed_password: bytes | None = fld(Tag.SERVER_HASHED_PASSWORD, _BYTES)
    attestation_types: list[AttestationType | int] = fld(Tag.ATTESTATION_TYPE, AttestationType,
                                                         repeated=True)
    client_correlation_value: str | None = fld(Tag.CLIENT_CORRELATION_VALUE, _TEXT)
    server_correlation_value: str | None = fld(Tag.SERVER_CORRELATION_VALUE, _TEXT)
    batch_count: int = fld(Tag.BATCH_COUNT, _INT, required=True)

    @property
    def version(self) -> Version:
        """The protocol version as ``(major, minor)``."""
        return self.protocol_version.as_tuple()


@kmip_struct(Tag.BATCH_ITEM)
class ResponseBatchItem(Struct):
    """The result of one operation; ``response_payload`` is a model, a raw Item or None."""

    operation: Operation | int | None = fld(Tag.OPERATION, OPERATION_CODEC)
    unique_batch_item_id: bytes | None = fld(Tag.UNIQUE_BATCH_ITEM_ID, _BYTES)
    result_status: ResultStatus | int = fld(Tag.RESULT_STATUS, ResultStatus, required=True)
    result_reason: ResultReason | int | None = fld(Tag.RESULT_REASON, ResultReason)
    result_message: str | None = fld(Tag.RESULT_MESSAGE, _TEXT)
    asynchronous_correlation_value: bytes | None = fld(Tag.ASYNCHRONOUS_CORRELATION_VALUE, _BYTES)
    response_payload: Struct | Item | None = fld(Tag.RESPONSE_PAYLOAD, _Payload(False))
    message_extension: Item | None = fld(Tag.MESSAGE_EXTENSION, _RAW)


@dataclass(slots=True)
class RequestMessage:
    """A request: its header and batch items."""

    header: RequestHeader
    batch_items: list[RequestBatchItem]


@dataclass(slots=True)
class ResponseMessage:
    """A response: its header and batch items."""

    header: ResponseHeader
    batch_items: list[ResponseBatchItem]


def _split(item: Item, message_tag: int, header_tag: int) -> tuple[Item, list[Item]]:
    name = tag_label(message_tag)
    if item.tag != message_tag or item.type is not _S:
        raise KmipError(ResultReason.INVALID_MESSAGE, f"not a {name}")
    children = item.value
    if not children or children[0].tag != header_tag:  # type: ignore[union-attr]
        raise KmipError(ResultReason.INVALID_MESSAGE,
                        f"{name} is missing the required field {tag_label(header_tag)}")
    batch = children[1:]  # type: ignore[index]
    if not batch:
        raise KmipError(ResultReason.INVALID_MESSAGE,
                        f"{name} is missing the required field Batch Item")
    for child in batch:
        if child.tag != Tag.BATCH_ITEM:
            raise KmipError(ResultReason.INVALID_FIELD,
                            f"unexpected field {tag_label(child.tag)} in {name}")
    return children[0], batch  # type: ignore[index]


def decode_request(item: Item, *, max_batch_items: int | None = None,
                   per_item: bool = False) -> RequestMessage:
    """Decode a Request Message tree; raise KmipError for a structurally wrong one,
    including one whose items cannot be read in its protocol version (Unsupported Protocol
    Version), one of more than ``max_batch_items`` Batch Items (Invalid Message,
    :func:`too_many_batch_items`; judged before any item is decoded) and one whose Batch
    Count is not the number of its Batch Items (Invalid Message: the message contradicts
    itself, and the gateway and the core must not guess differently which to believe). A
    server that judges the header first (kcm-core) uses the two halves below and says the
    same, in the same order. ``per_item``: a batch item that cannot be decoded does not
    fail the whole message (see :func:`decode_request_items`)."""
    header, batch = decode_request_header(item)
    major, minor = header.version
    if not registry.has_tables((major, minor)):
        # Its batch items cannot be read (no tag or attribute tables for it): say so, as
        # a server answers a version it does not speak, rather than fail reading them.
        raise KmipError(ResultReason.UNSUPPORTED_PROTOCOL_VERSION,
                        f"protocol version {major}.{minor} is not supported")
    if max_batch_items is not None and len(batch) > max_batch_items:
        raise KmipError(ResultReason.INVALID_MESSAGE,
                        too_many_batch_items(len(batch), max_batch_items))
    if header.batch_count != len(batch):
        raise KmipError(ResultReason.INVALID_MESSAGE, batch_count_mismatch(header, batch))
    return decode_request_items(header, batch, per_item=per_item)


def too_many_batch_items(count: int | None, maximum: int) -> str:
    """The Result Message for a request of ``count`` Batch Items, over a server's
    ``maximum`` (``limits.max_batch_items``); None: more than ``maximum``, not all counted
    (:func:`kcm.kernel.batch_limit.over_batch_limit`)."""
    many = f"more than {maximum}" if count is None else str(count)
    return f"{many} batch items; at most {maximum} are accepted in one request"


def batch_count_mismatch(header: RequestHeader, batch: list[Item]) -> str:
    """The Result Message for a Batch Count that is not the number of Batch Items."""
    count = len(batch)
    return (f"Batch Count is {header.batch_count}, but the request holds {count} "
            f"Batch Item{'s' if count != 1 else ''}")


def decode_request_header(item: Item) -> tuple[RequestHeader, list[Item]]:
    """The first half of :func:`decode_request`: the decoded Request Header and the batch
    items still undecoded, so a server can judge the header (protocol version, how many
    items) before it decodes any item in that version."""
    header_item, batch = _split(item, Tag.REQUEST_MESSAGE, Tag.REQUEST_HEADER)
    return RequestHeader.from_item(header_item), batch


def decode_request_items(header: RequestHeader, batch: list[Item], *,
                         per_item: bool = False) -> RequestMessage:
    """The second half of :func:`decode_request`: the header's fields that only its
    version can judge (:func:`check_request_header`), then the batch items, in the header's
    version. Both servers call it once the version is known to be one they speak, with
    ``per_item``: a batch item that cannot be decoded (a field of the wrong type, one
    unknown or missing, in it or in its payload) is kept as an item whose payload is an
    :class:`UnreadablePayload`, with its Operation and Unique Batch Item ID when those
    could be read, and fails alone when the batch runs (KMIP 1.4 §11.1); without it, the
    whole message fails (a codec's strict reading). The header's errors fail the whole
    message either way."""
    check_request_header(header)
    version = header.version
    try:
        return RequestMessage(header, [RequestBatchItem.from_item(b, version) for b in batch])
    except KmipError:
        if not per_item:
            raise
    # Read again item by item only when one failed: a well-formed request pays nothing.
    return RequestMessage(header, [_batch_item_or_unreadable(b, version) for b in batch])


def _batch_item_or_unreadable(item: Item, version: Version) -> RequestBatchItem:
    try:
        return RequestBatchItem.from_item(item, version)
    except KmipError as e:
        operation, batch_id = _item_head(item)
        return RequestBatchItem(operation=operation,  # type: ignore[arg-type]
                                unique_batch_item_id=batch_id,
                                # (its traceback, a cycle through this frame, dropped)
                                request_payload=UnreadablePayload(e.with_traceback(None)))


_OPERATIONS = Operation._value2member_map_


def _item_head(item: Item) -> tuple[Operation | int | None, bytes | None]:
    """The Operation and Unique Batch Item ID of a Batch Item that could not be decoded, as
    far as they can be read (the first of each, of its type; None otherwise): the answer to
    the item carries them (KMIP 1.4 §7.2, 2.1 §9)."""
    operation = batch_id = None
    if item.type is not _S:
        return None, None
    for child in item.value:  # type: ignore[union-attr]
        if (operation is None and child.tag == Tag.OPERATION
                and child.type is ItemType.ENUMERATION):
            operation = _OPERATIONS.get(child.value, child.value)  # type: ignore[arg-type]
        elif (batch_id is None and child.tag == Tag.UNIQUE_BATCH_ITEM_ID
                and child.type is _BYTES):
            batch_id = child.value
    return operation, batch_id  # type: ignore[return-value]


_CONTINUATION_OPTIONS = frozenset(BatchErrorContinuationOption)
_ASYNCHRONOUS_INDICATORS = frozenset(AsynchronousIndicator)


def check_request_header(header: RequestHeader) -> None:
    """Raise KmipError for a Request Header the server cannot honour as it stands:

    * a Batch Error Continuation Option that is not Continue, Stop or Undo: Invalid Field
      (rather than running the batch under a rule the client did not ask for);
    * an Asynchronous Indicator of a type its version does not define (a Boolean in 1.x,
      an Enumeration in 2.x: KMIP 1.4 §6.7, 2.1 §9) or of an undefined value: Invalid Field;
    * Asynchronous Indicator Mandatory (2.x): Feature Not Supported. The server answers
      every request synchronously (its Capability Information says Asynchronous
      Capability False), so it cannot honour a client that requires otherwise;
    * a negative Maximum Response Size: Invalid Field (no answer has a negative size; read
      as a bound, it answered every success Response Too Large, as if the answer had
      been too long).
    """
    size = header.maximum_response_size
    if size is not None and size < 0:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"Maximum Response Size {size} is negative")
    option = header.batch_error_continuation_option
    if option is not None and option not in _CONTINUATION_OPTIONS:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"Batch Error Continuation Option {int(option)} is not defined")
    indicator = header.asynchronous_indicator
    if indicator is None:
        return
    major, minor = header.version
    as_boolean = registry.enumeration_of(Tag.ASYNCHRONOUS_INDICATOR, (major, minor)) is None
    if as_boolean != (type(indicator) is bool):
        wanted, got = ("Boolean", "Enumeration") if as_boolean else ("Enumeration", "Boolean")
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"Asynchronous Indicator must be {wanted} in KMIP {major}.{minor}, "
                        f"not {got}")
    if as_boolean:
        return  # True or False: either way the answer comes synchronously
    if indicator not in _ASYNCHRONOUS_INDICATORS:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"Asynchronous Indicator {int(indicator)} is not defined")
    if indicator == AsynchronousIndicator.MANDATORY:
        raise KmipError(ResultReason.FEATURE_NOT_SUPPORTED,
                        "asynchronous processing is not supported: every request is "
                        "answered synchronously (Asynchronous Indicator Mandatory)")


def decode_response(item: Item) -> ResponseMessage:
    """Decode a Response Message tree; raise KmipError for a structurally wrong one."""
    header_item, batch = _split(item, Tag.RESPONSE_MESSAGE, Tag.RESPONSE_HEADER)
    header = ResponseHeader.from_item(header_item)
    version = header.version
    return ResponseMessage(header, [ResponseBatchItem.from_item(b, version) for b in batch])


def encode_request(message: RequestMessage) -> Item:
    """The Request Message tree, encoded for the header's protocol version."""
    version = message.header.version
    return Item(Tag.REQUEST_MESSAGE, _S, [message.header.to_item(version)]
                + [b.to_item(version) for b in message.batch_items])


def encode_response(message: ResponseMessage) -> Item:
    """The Response Message tree, encoded for the header's protocol version."""
    version = message.header.version
    return Item(Tag.RESPONSE_MESSAGE, _S, [message.header.to_item(version)]
                + [b.to_item(version) for b in message.batch_items])


class IdPlaceholder:
    """The ID Placeholder of one request's batch (the "ID Placeholder" of KMIP 1.4 §4 and 2.1 §6).

    An operation that creates or finds an object ``set``s it; a later batch item whose
    Unique Identifier is omitted (or, in 2.x, is the ID Placeholder enumeration)
    ``resolve``s to it. A new request starts with a fresh, empty placeholder.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: str | None = None

    def set(self, unique_identifier: str) -> None:
        """Remember the identifier a batch item produced."""
        self.value = unique_identifier

    def resolve(self, unique_identifier: str | Item | None) -> str:
        """The identifier a payload means: its own, else the placeholder's."""
        if isinstance(unique_identifier, str):
            return unique_identifier
        if unique_identifier is not None and not (
                unique_identifier.type is ItemType.ENUMERATION
                and unique_identifier.value == UniqueIdentifier.ID_PLACEHOLDER):
            raise KmipError(ResultReason.INVALID_FIELD,
                            "unsupported Unique Identifier reference")
        if self.value is None:
            raise KmipError(ResultReason.MISSING_DATA,
                            "no Unique Identifier given and no ID Placeholder set")
        return self.value

