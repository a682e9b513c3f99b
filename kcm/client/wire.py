"""Requests to bytes and answers to results: the one place the client encodes a request
message and judges a response, shared by the blocking session and the Twisted protocol.

Pure: no I/O. Every request carries the protocol version the caller chose (KMIP 1.0 to 2.1;
the model encodes each version's own tags and attribute containers), and each batch item may
carry a Unique Batch Item ID that the server echoes, which is how pipelined answers are
matched (KMIP 1.4 §6.4, 2.1 §8.4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kcm.client.errors import KmipClientError, KmipOperationFailed
from kcm.kernel.responses import operation_name
from kcm.kmip.enums import Operation, ResultStatus
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import (
    ProtocolVersion,
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    ResponseBatchItem,
    ResponseMessage,
    decode_response,
    encode_request,
)
from kcm.kmip.payloads import PAYLOADS
from kcm.ttlv import TtlvError, decode, encode

__all__ = ["DEFAULT_VERSION", "IDEMPOTENT", "MAX_TIMEOUT", "SUPPORTED_VERSIONS", "encode_items",
           "parse_response", "result_of"]

#: The protocol version of requests unless the caller chooses (what PyKMIP speaks too).
DEFAULT_VERSION = (1, 4)
#: The versions the client's model encodes and decodes.
SUPPORTED_VERSIONS = ((1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 0), (2, 1))


#: The longest timeout a client takes (seconds): a day; more is a mistake, not a wait (and
#: from about 3e10 s the blocking client's first call failed with OverflowError).
MAX_TIMEOUT = 86400.0


def positive_timeout(timeout: float, name: str = "timeout") -> float:
    """``timeout`` if it is a positive number of seconds (a number, not text), at most
    :data:`MAX_TIMEOUT`, else ValueError: the blocking client failed its first request with
    a misleading error on 0, while the Twisted one took 0 for no deadline at all."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not timeout > 0 or timeout == float("inf"):
        raise ValueError(f"{name} must be a positive number of seconds, not {timeout!r}")
    if timeout > MAX_TIMEOUT:
        raise ValueError(f"{name} must be at most {MAX_TIMEOUT:g} seconds (a day), not "
                         f"{timeout!r}")
    return float(timeout)


def encode_items(version: tuple[int, int], items: Sequence[RequestBatchItem]) -> bytes:
    """One request message of ``items`` in protocol ``version``, as TTLV bytes."""
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"KMIP {version[0]}.{version[1]} is not one of the client's versions")
    header = RequestHeader(protocol_version=ProtocolVersion.of(version),
                           batch_count=len(items))
    try:
        return encode(encode_request(RequestMessage(header, list(items))))
    except TtlvError as e:  # a field of the wrong type (bytes for a str), or too long
        raise ValueError(f"the request cannot be encoded: {e}") from e


def parse_response(wire: bytes) -> ResponseMessage:
    """The response message in ``wire``; :class:`KmipClientError` when it is not one."""
    try:
        return decode_response(decode(wire))
    except (TtlvError, KmipError, ValueError, LookupError) as e:
        raise KmipClientError(f"the server's answer is not a KMIP response: {e}") from e


def result_of(operation: Operation | int, item: ResponseBatchItem) -> Any:
    """The response payload of a successful ``item``; :class:`KmipOperationFailed` when it
    failed (or is pending or undone)."""
    if item.result_status != ResultStatus.SUCCESS:
        raise KmipOperationFailed(item.operation if item.operation is not None else operation,
                                  item.result_status, item.result_reason, item.result_message)
    if item.operation is None:
        # (Required in an answer to a request that named it, KMIP 1.4 §7.2 and 2.1 §9.2.)
        raise KmipClientError(f"the server's answer to {operation_name(int(operation))} "
                              "does not say which operation it answers")
    if int(item.operation) != int(operation):
        raise KmipClientError(f"the server answered {operation_name(int(item.operation))} "
                              f"to a request of {operation_name(int(operation))}")
    payload = item.response_payload
    model = PAYLOADS.get((int(operation), False))
    if model is not None and not isinstance(payload, model):
        raise KmipClientError(f"the server's answer to {operation_name(int(operation))} has "
                              + ("no response payload" if payload is None
                                 else "a response payload that is not one"))
    return payload


#: Operations that may run twice harmlessly: a client sends one again, once, when its
#: connection breaks under it (:mod:`kcm.client.pool`, :mod:`kcm.client.endpoints`).
IDEMPOTENT = frozenset({
    Operation.GET, Operation.GET_ATTRIBUTES, Operation.GET_ATTRIBUTE_LIST, Operation.LOCATE,
    Operation.CHECK, Operation.QUERY, Operation.DISCOVER_VERSIONS, Operation.ENCRYPT,
    Operation.DECRYPT, Operation.SIGN, Operation.SIGNATURE_VERIFY, Operation.MAC,
    Operation.MAC_VERIFY, Operation.HASH, Operation.RNG_RETRIEVE,
})
