"""Response messages as both planes build them: headers, failed items, the whole message.

A response is written as its header followed by its batch items, each already encoded
(TTLV bytes): items the server ran are encoded from their model, items relayed from another
server (the gateway's share of a mixed batch) are spliced in by byte range. The Maximum
Response Size (KMIP 1.4 §6.3, 2.1 §9) is enforced here: a response that would be larger has
every successful item replaced by a Response Too Large failure. So is the server's own
limit, its maximum message size, and that one strictly: a server never sends an answer
larger than it (ARCHITECTURE §12).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from kcm.kernel import version_fit
from kcm.kernel.result_messages import result_message
from kcm.kernel.result_reasons import error_reason, reason_in
from kcm.kmip.enums import Operation, ResultReason, ResultStatus
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import enum_label
from kcm.kmip.messages import ProtocolVersion, ResponseBatchItem, ResponseHeader
from kcm.kmip.tags import Tag
from kcm.kmip.versions import Version
from kcm.ttlv import ItemType, decode_item, encode

__all__ = [
    "encode_items", "fail_item", "fail_with", "failed_item", "failure_response",
    "header_bytes", "internal_error", "operation_name", "response_header", "response_wire",
]

_HEAD = struct.Struct(">II")
_RESPONSE_MESSAGE_HEAD = (int(Tag.RESPONSE_MESSAGE) << 8) | ItemType.STRUCTURE.value


def response_header(version: Version, now: int, correlation_id: str | None,
                    batch_count: int) -> ResponseHeader:
    """A response header. From KMIP 1.4 on it carries the request's correlation id as
    Server Correlation Value (KMIP 1.4 §6.19), the id that names the request in the
    audit log and the server log."""
    return ResponseHeader(
        protocol_version=ProtocolVersion.of(version), time_stamp=now,
        server_correlation_value=(correlation_id if correlation_id is not None
                                  and version >= (1, 4) else None),
        batch_count=batch_count)


def fail_item(response: ResponseBatchItem, version: Version, reason: int, message: str,
              v1_reason: int | None = None) -> None:
    """Make ``response`` a failed item with ``reason`` (said as ``version`` says it) and
    ``message`` (as :func:`~kcm.kernel.result_messages.result_message` bounds it), and no
    payload."""
    response.result_status = ResultStatus.OPERATION_FAILED
    response.result_reason = reason_in(version, reason, v1_reason)
    response.result_message = result_message(message)
    response.response_payload = None


def fail_with(response: ResponseBatchItem, version: Version, error: KmipError) -> None:
    """Make ``response`` the failed item that answers ``error`` in ``version``."""
    fail_item(response, version, error_reason(version, error), error.message)


def failed_item(operation: int | None, unique_batch_item_id: bytes | None, version: Version,
                reason: int, message: str) -> ResponseBatchItem:
    """A failed response batch item for an item that was not (or could not be) run."""
    item = ResponseBatchItem(operation=operation, unique_batch_item_id=unique_batch_item_id,
                             result_status=ResultStatus.OPERATION_FAILED)
    fail_item(item, version, reason, message)
    return item


#: The Result Message of what a server did not run of a request whose client disconnected
#: (audited at the core; at the gateway nobody reads it).
CLIENT_GONE = "request cancelled: the client disconnected"


def internal_error(correlation_id: str) -> str:
    """The Result Message of a General Failure: it names the correlation id of the log."""
    return f"internal error (correlation id {correlation_id})"


def encode_items(items: Sequence[ResponseBatchItem], version: Version) -> list[bytes]:
    """Each item's TTLV bytes, without what ``version`` does not define
    (:func:`kcm.kernel.version_fit.fit`: the one place answers are filtered by version)."""
    return [encode(version_fit.fit(item.to_item(version), version)) for item in items]


def _check_fits(version: Version, items: Sequence[bytes]) -> None:
    """The strict check of the test suites: no answer carries what its version does not
    define (an item encoded without :func:`encode_items` would)."""
    for raw in items:
        found = version_fit.faults(decode_item(raw)[0], version)
        if found:
            raise AssertionError(f"an answer in KMIP {version[0]}.{version[1]} carries "
                                 f"what that version does not define: {found}")


def response_wire(version: Version, now: int, correlation_id: str | None,
                  items: Sequence[bytes], maximum_response_size: int | None = None, *,
                  server_limit: int | None = None) -> bytes:
    """The Response Message of encoded ``items`` under a fresh header.

    Over the smaller of ``maximum_response_size`` (the client's Maximum Response Size) and
    ``server_limit`` (the server's maximum message size), every successful item answers
    Response Too Large, its Result Message naming the limit that applied. Should even that
    answer exceed ``server_limit`` (a batch of very many small items), the whole answer is
    one Response Too Large item: the result is never longer than ``server_limit``.
    """
    if version_fit.STRICT:
        _check_fits(version, items)
    wire = _assemble(version, now, correlation_id, items)
    if maximum_response_size is None or server_limit is None:
        limit = server_limit if maximum_response_size is None else maximum_response_size
    else:
        limit = min(maximum_response_size, server_limit)
    if limit is None or len(wire) <= limit:
        return wire
    message = too_large_message(limit, maximum_response_size)
    shrunk = []
    for raw in items:
        item = ResponseBatchItem.from_item(decode_item(raw)[0], version)
        if item.result_status == ResultStatus.SUCCESS:
            fail_item(item, version, ResultReason.RESPONSE_TOO_LARGE, message)
            raw = encode_items([item], version)[0]
        shrunk.append(raw)
    wire = _assemble(version, now, correlation_id, shrunk)
    if server_limit is not None and len(wire) > server_limit:
        return failure_response(version, ResultReason.RESPONSE_TOO_LARGE,
                                f"the response to {len(items)} batch items exceeds the "
                                f"server's maximum message size of {server_limit} bytes",
                                now, correlation_id)
    return wire


def withheld(version: Version, now: int, correlation_id: str | None, items: Sequence[bytes],
             maximum_response_size: int | None = None, *,
             server_limit: int | None = None) -> bool:
    """Whether :func:`response_wire` would withhold the successes among ``items`` (the
    answer passes the smaller limit): a server that did their work should undo it, so that
    nothing the client never saw (a Correlation Value spent, a usage counted, an object
    made) stands."""
    limits = [limit for limit in (maximum_response_size, server_limit) if limit is not None]
    if not limits:
        return False
    size = 8 + len(header_bytes(version, now, correlation_id, len(items))) + sum(map(len, items))
    return size > min(limits)


def too_large_message(limit: int, maximum_response_size: int | None) -> str:
    """The Result Message of a success withheld because the answer passed ``limit``: the
    client's Maximum Response Size when that is the limit, else the server's maximum
    message size (the gateway's mixed answers say it alike)."""
    if limit == maximum_response_size:
        return f"the response exceeds the Maximum Response Size of {limit} bytes"
    return f"the response exceeds the server's maximum message size of {limit} bytes"


def failure_response(version: Version, reason: int, message: str, now: int,
                     correlation_id: str | None = None) -> bytes:
    """A whole response of one failed item, for a request that could not be read or run."""
    item = failed_item(None, None, version, reason, message)
    return response_wire(version, now, correlation_id, encode_items([item], version))


def _assemble(version: Version, now: int, correlation_id: str | None,
              items: Sequence[bytes]) -> bytes:
    body = b"".join([header_bytes(version, now, correlation_id, len(items)), *items])
    return _HEAD.pack(_RESPONSE_MESSAGE_HEAD, len(body)) + body


_VALUE32 = struct.Struct(">iI")
_VALUE64 = struct.Struct(">q")
_PROTOCOL_VERSION_HEAD = (int(Tag.PROTOCOL_VERSION) << 8) | ItemType.STRUCTURE.value
_MAJOR_HEAD = (int(Tag.PROTOCOL_VERSION_MAJOR) << 8) | ItemType.INTEGER.value
_MINOR_HEAD = (int(Tag.PROTOCOL_VERSION_MINOR) << 8) | ItemType.INTEGER.value
_TIME_STAMP_HEAD = (int(Tag.TIME_STAMP) << 8) | ItemType.DATE_TIME.value
_CORRELATION_HEAD = (int(Tag.SERVER_CORRELATION_VALUE) << 8) | ItemType.TEXT_STRING.value
_BATCH_COUNT_HEAD = (int(Tag.BATCH_COUNT) << 8) | ItemType.INTEGER.value
_RESPONSE_HEADER_HEAD = (int(Tag.RESPONSE_HEADER) << 8) | ItemType.STRUCTURE.value


def _protocol_version_bytes(version: Version) -> bytes:
    """The Protocol Version structure of ``version``, with the Time Stamp's item header
    that follows it (the same for every answer in that version)."""
    protocol = (_HEAD.pack(_MAJOR_HEAD, 4) + _VALUE32.pack(version[0], 0)
                + _HEAD.pack(_MINOR_HEAD, 4) + _VALUE32.pack(version[1], 0))
    return (_HEAD.pack(_PROTOCOL_VERSION_HEAD, len(protocol)) + protocol
            + _HEAD.pack(_TIME_STAMP_HEAD, 8))


#: :func:`_protocol_version_bytes` by version, as answers are written.
_PROTOCOL_VERSION_BYTES: dict[Version, bytes] = {}


def header_bytes(version: Version, now: int, correlation_id: str | None,
                 batch_count: int) -> bytes:
    """:func:`response_header`, encoded: the same bytes as encoding the model, written
    directly (every answer has one; tests hold the two equal)."""
    start = _PROTOCOL_VERSION_BYTES.get(version)
    if start is None:
        start = _protocol_version_bytes(version)
        if len(_PROTOCOL_VERSION_BYTES) < 64:  # (answers are in a handful of versions)
            _PROTOCOL_VERSION_BYTES[tuple(version)] = start
    body = start + _VALUE64.pack(now)
    if correlation_id is not None and version >= (1, 4):
        text = correlation_id.encode()
        body += _HEAD.pack(_CORRELATION_HEAD, len(text)) + text + bytes(-len(text) & 7)
    body += _HEAD.pack(_BATCH_COUNT_HEAD, 4) + _VALUE32.pack(batch_count, 0)
    return _HEAD.pack(_RESPONSE_HEADER_HEAD, len(body)) + body


def operation_name(value: int) -> str:
    """The Operation's enum name, or its hex for an operation this server does not know."""
    return enum_label(Operation, value)
