"""A small blocking KMIP client: one method per operation, each one request of one batch item.

It stands on the project's own codec and model (:mod:`kcm.ttlv`, :mod:`kcm.kmip`) and on the
blocking TLS transport of :mod:`kcm.conformance.client`; what the ``kcm key`` commands use.
A failed batch item is raised as :class:`KmipOperationFailed` (its Result Reason and Result
Message); a connection that cannot be made or breaks is :class:`KmipClientError`. The fuller
SDK (issue 14) is to grow from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

from kcm.conformance.client import DEFAULT_TIMEOUT, KmipClient, KmipClientError
from kcm.kmip.attributes import Attribute, AttributeReference, CryptographicParameters
from kcm.kmip.enums import (
    CryptographicAlgorithm,
    KeyFormatType,
    ObjectType,
    Operation,
    QueryFunction,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import enum_label
from kcm.kmip.messages import (
    ProtocolVersion,
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    ResponseBatchItem,
    decode_response,
    encode_request,
)
from kcm.kmip.objects import KeyBlock, KeyValue, SymmetricKey
from kcm.kmip.payloads import GetAttributesRequest
from kcm.kmip.payloads.crypto import DecryptRequest, EncryptRequest, EncryptResponse
from kcm.kmip.payloads.lifecycle import (
    ActivateRequest,
    CreateRequest,
    DestroyRequest,
    GetRequest,
    GetResponse,
    RegisterRequest,
    RevocationReason,
    RevokeRequest,
)
from kcm.kmip.payloads.service import LocateRequest, QueryRequest, QueryResponse
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType, TtlvError, decode, encode

__all__ = ["KmipClientError", "KmipOperationFailed", "Session", "l4_marker"]

#: The protocol version of every request (what PyKMIP speaks; both servers answer it).
DEFAULT_VERSION = (1, 4)


class KmipOperationFailed(Exception):
    """The server answered a request with a failed batch item."""

    def __init__(self, operation: Operation | int, status: ResultStatus | int,
                 reason: ResultReason | int | None, message: str | None) -> None:
        self.operation = operation
        self.status = status
        self.reason = reason
        self.message = message or ""
        super().__init__(f"{enum_label(ResultReason, reason)}: {self.message}")


def l4_marker() -> Attribute:
    """The custom attribute that makes a Create an L4 (a DEK served by kcm-gateway)."""
    return Attribute.vendor("x", "kcm-level", Item(Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING, "L4"))


def symmetric_attributes(algorithm: CryptographicAlgorithm | int, length: int,
                         extra: Sequence[Attribute] = ()) -> list[Attribute]:
    """The Cryptographic Algorithm and Length of a symmetric key, then ``extra``."""
    return [Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, algorithm),
            Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, length), *extra]


class Session:
    """Requests to one KMIP server over one connection (opened on the first request).

    ``transport`` is anything with ``send(bytes) -> bytes`` and ``close()``; :meth:`connect`
    makes the usual one, mutual TLS. Usable as a context manager. Not thread-safe.
    """

    def __init__(self, transport: Any, version: tuple[int, int] = DEFAULT_VERSION) -> None:
        self.transport = transport
        self.version = version

    @classmethod
    def connect(cls, host: str, port: int, *, cert: str, key: str, ca: str,
                timeout: float = DEFAULT_TIMEOUT) -> Session:
        """A session over mutual TLS to ``host:port`` (connected on the first request)."""
        try:
            transport = KmipClient(host, port, cert=cert, key=key, ca=ca, timeout=timeout)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            raise KmipClientError(f"cannot load the client's certificate, key or CA: {e}") from e
        return cls(transport)

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # One request, one answer --------------------------------------------------------------

    def call(self, operation: Operation, payload: Any) -> Any:
        """Send ``operation`` with ``payload``; the response payload of a successful answer.

        Raises :class:`KmipOperationFailed` for a failed batch item and
        :class:`KmipClientError` when the answer is not a KMIP response."""
        header = RequestHeader(protocol_version=ProtocolVersion.of(self.version), batch_count=1)
        message = RequestMessage(header, [RequestBatchItem(operation=operation,
                                                           request_payload=payload)])
        answer = self.transport.send(encode(encode_request(message)))
        try:
            response = decode_response(decode(answer))
        except (TtlvError, KmipError, ValueError, LookupError) as e:
            raise KmipClientError(f"the server's answer is not a KMIP response: {e}") from e
        if len(response.batch_items) != 1:
            raise KmipClientError(f"the server answered {len(response.batch_items)} batch items "
                                  "to a request of one")
        item: ResponseBatchItem = response.batch_items[0]
        if item.result_status != ResultStatus.SUCCESS:
            raise KmipOperationFailed(operation, item.result_status, item.result_reason,
                                      item.result_message)
        return item.response_payload

    # Operations --------------------------------------------------------------------------

    def create(self, algorithm: CryptographicAlgorithm | int = CryptographicAlgorithm.AES,
               length: int = 256, attributes: Sequence[Attribute] = ()) -> str:
        """Create a symmetric key; its Unique Identifier."""
        return self.call(Operation.CREATE, CreateRequest(
            object_type=ObjectType.SYMMETRIC_KEY,
            attributes=symmetric_attributes(algorithm, length, attributes))).unique_identifier

    def create_l4(self, algorithm: CryptographicAlgorithm | int = CryptographicAlgorithm.AES,
                  length: int = 256) -> str:
        """Create an L4 at kcm-gateway; its token (the Unique Identifier)."""
        return self.create(algorithm, length, [l4_marker()])

    def register_symmetric(self, key: bytes,
                           algorithm: CryptographicAlgorithm | int = CryptographicAlgorithm.AES,
                           attributes: Sequence[Attribute] = ()) -> str:
        """Register the raw symmetric ``key``; its Unique Identifier."""
        block = KeyBlock(key_format_type=KeyFormatType.RAW, key_value=KeyValue(key_material=key),
                         cryptographic_algorithm=algorithm, cryptographic_length=len(key) * 8)
        return self.call(Operation.REGISTER, RegisterRequest(
            object_type=ObjectType.SYMMETRIC_KEY,
            attributes=symmetric_attributes(algorithm, len(key) * 8, attributes),
            object=SymmetricKey(key_block=block))).unique_identifier

    def get(self, uid: str) -> GetResponse:
        return self.call(Operation.GET, GetRequest(unique_identifier=uid))

    def locate(self, attributes: Sequence[Attribute] = (),
               maximum_items: int | None = None) -> list[str]:
        """The Unique Identifiers of the objects that have every one of ``attributes``."""
        return list(self.call(Operation.LOCATE, LocateRequest(
            maximum_items=maximum_items, attributes=list(attributes))).unique_identifiers)

    def get_attributes(self, uid: str, tags: Sequence[int] = ()) -> list[Attribute]:
        """The attributes ``tags`` name (all of them when none is named)."""
        payload = self.call(Operation.GET_ATTRIBUTES, GetAttributesRequest(
            unique_identifier=uid,
            attribute_references=[AttributeReference(tag) for tag in tags]))
        return list(payload.attributes or [])

    def activate(self, uid: str) -> None:
        self.call(Operation.ACTIVATE, ActivateRequest(unique_identifier=uid))

    def revoke(self, uid: str, code: RevocationReasonCode | int = RevocationReasonCode.UNSPECIFIED,
               message: str | None = None, compromise_date: int | None = None) -> None:
        self.call(Operation.REVOKE, RevokeRequest(
            unique_identifier=uid,
            revocation_reason=RevocationReason(code=code, message=message),
            compromise_occurrence_date=compromise_date))

    def destroy(self, uid: str) -> None:
        self.call(Operation.DESTROY, DestroyRequest(unique_identifier=uid))

    def encrypt(self, uid: str, data: bytes, parameters: CryptographicParameters | None = None,
                iv: bytes | None = None, aad: bytes | None = None) -> EncryptResponse:
        """Encrypt ``data``; the response carries the ciphertext, the IV the server chose (if
        any) and the AEAD tag (AES-GCM)."""
        return self.call(Operation.ENCRYPT, EncryptRequest(
            unique_identifier=uid, cryptographic_parameters=parameters, data=data,
            iv_counter_nonce=iv, authenticated_encryption_additional_data=aad))

    def decrypt(self, uid: str, data: bytes, parameters: CryptographicParameters | None = None,
                iv: bytes | None = None, tag: bytes | None = None,
                aad: bytes | None = None) -> bytes:
        """Decrypt ``data``; the plaintext."""
        payload = self.call(Operation.DECRYPT, DecryptRequest(
            unique_identifier=uid, cryptographic_parameters=parameters, data=data,
            iv_counter_nonce=iv, authenticated_encryption_tag=tag,
            authenticated_encryption_additional_data=aad))
        return payload.data or b""

    def query(self, functions: Sequence[QueryFunction] = (
            QueryFunction.QUERY_OPERATIONS, QueryFunction.QUERY_OBJECTS,
            QueryFunction.QUERY_SERVER_INFORMATION)) -> QueryResponse:
        return self.call(Operation.QUERY, QueryRequest(query_functions=list(functions)))
