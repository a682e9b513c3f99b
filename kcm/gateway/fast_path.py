"""The gateway's fast path: plain L4 Create, Encrypt, Decrypt and Get answered from bytes.

Most of what a data plane answers is one shape: a Request Message in KMIP 1.4, 2.0 or 2.1
whose batch items are Encrypt, Decrypt or Get of an L4 token (or Encrypt/Decrypt with an
L3), with the Unique Identifier given and nothing unusual, or the Create of an L4 (its
attributes, a few dozen bytes, are the one part decoded with the model, exactly as the
general path decodes them). For such a request this module
reads the few fields the L4 engine needs straight from the bytes (no message tree, no
typed request), runs the same :class:`kcm.l4.engine.L4Engine` the general path runs, writes
each response batch item with the engine's answer filled into a fixed layout, and lets the
kernel put the header on (:func:`kcm.kernel.responses.response_wire`, which also applies
the Maximum Response Size). Batches of many such items (bulk record encryption) take the
same path, item after item, in one call.

It answers only what it is sure of, and *declines* (returns None) everything else, for the
general path of :mod:`kcm.gateway.handler` to answer from scratch: any field it does not
expect, a field out of the specification's order or repeated, non-zero padding, a version
outside 1.4-2.1, more than ``max_batch_items`` items, a missing identifier (the ID
Placeholder), Cryptographic Parameters it cannot read, a Batch Count that does not match,
an answer it does not lay out (a wrapped or Transparent key), and any refusal at all: a
missing L3 (the general path fetches it), another tenant's token (the general path answers
and logs it), a wrong state, a bad tag. Nothing here has effects to undo, so declining
after some work is safe: only random bytes were drawn. The general path's answer to every
request this path answers is the same, byte for byte, given the same clock, correlation id
and random bytes (a property test holds the two to it: tests/unit/test_gateway_fast_path.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from kcm.gateway.l3_cache import L3Cache
from kcm.gateway.local_batch import EngineFactory
from kcm.identity import Principal
from kcm.kernel.responses import response_wire
from kcm.kmip.attributes import VENDOR_TAG, CryptographicParameters
from kcm.kmip.enums import KeyFormatType, ObjectType, Operation
from kcm.kmip.objects import KeyValue, SymmetricKey
from kcm.kmip.payloads import (
    CreateRequest,
    CreateResponse,
    DecryptRequest,
    DecryptResponse,
    EncryptRequest,
    EncryptResponse,
    GetRequest,
    GetResponse,
)
from kcm.kmip.tags import Tag
from kcm.l4.marking import is_l4_create
from kcm.metrics import Tally
from kcm.ttlv import ItemType, decode_item

__all__ = ["FAST_OPERATIONS", "FAST_VERSIONS", "FastPath"]

#: The protocol versions the fast path answers in (their L4 answers have one layout).
FAST_VERSIONS = frozenset({(1, 4), (2, 0), (2, 1)})

_HEADER = struct.Struct(">II")
_INT = struct.Struct(">iI")
_UINT = struct.Struct(">II")


def _head(tag: int, item_type: ItemType) -> int:
    """An item's wire header as read with ``_HEADER``: tag << 8 | type."""
    return int(tag) << 8 | item_type.value


_REQUEST_MESSAGE = _head(Tag.REQUEST_MESSAGE, ItemType.STRUCTURE)
_REQUEST_HEADER = _head(Tag.REQUEST_HEADER, ItemType.STRUCTURE)
_PROTOCOL_VERSION = _head(Tag.PROTOCOL_VERSION, ItemType.STRUCTURE)
_VERSION_MAJOR = _head(Tag.PROTOCOL_VERSION_MAJOR, ItemType.INTEGER)
_VERSION_MINOR = _head(Tag.PROTOCOL_VERSION_MINOR, ItemType.INTEGER)
_MAXIMUM_RESPONSE_SIZE = _head(Tag.MAXIMUM_RESPONSE_SIZE, ItemType.INTEGER)
_BATCH_COUNT = _head(Tag.BATCH_COUNT, ItemType.INTEGER)
_BATCH_ITEM = _head(Tag.BATCH_ITEM, ItemType.STRUCTURE)
_OPERATION = _head(Tag.OPERATION, ItemType.ENUMERATION)
_UNIQUE_BATCH_ITEM_ID = _head(Tag.UNIQUE_BATCH_ITEM_ID, ItemType.BYTE_STRING)
_REQUEST_PAYLOAD = _head(Tag.REQUEST_PAYLOAD, ItemType.STRUCTURE)
_RESPONSE_PAYLOAD = _head(Tag.RESPONSE_PAYLOAD, ItemType.STRUCTURE)
_RESULT_STATUS = _head(Tag.RESULT_STATUS, ItemType.ENUMERATION)
_UNIQUE_IDENTIFIER = _head(Tag.UNIQUE_IDENTIFIER, ItemType.TEXT_STRING)
_CRYPTOGRAPHIC_PARAMETERS = _head(Tag.CRYPTOGRAPHIC_PARAMETERS, ItemType.STRUCTURE)
_DATA = _head(Tag.DATA, ItemType.BYTE_STRING)
_IV_COUNTER_NONCE = _head(Tag.IV_COUNTER_NONCE, ItemType.BYTE_STRING)
_AAD = _head(Tag.AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, ItemType.BYTE_STRING)
_AE_TAG = _head(Tag.AUTHENTICATED_ENCRYPTION_TAG, ItemType.BYTE_STRING)
_KEY_FORMAT_TYPE = _head(Tag.KEY_FORMAT_TYPE, ItemType.ENUMERATION)
_OBJECT_TYPE = _head(Tag.OBJECT_TYPE, ItemType.ENUMERATION)
_SYMMETRIC_KEY = _head(Tag.SYMMETRIC_KEY, ItemType.STRUCTURE)
_KEY_BLOCK = _head(Tag.KEY_BLOCK, ItemType.STRUCTURE)
_KEY_VALUE = _head(Tag.KEY_VALUE, ItemType.STRUCTURE)
_KEY_MATERIAL = _head(Tag.KEY_MATERIAL, ItemType.BYTE_STRING)
_CRYPTOGRAPHIC_ALGORITHM = _head(Tag.CRYPTOGRAPHIC_ALGORITHM, ItemType.ENUMERATION)
_CRYPTOGRAPHIC_LENGTH = _head(Tag.CRYPTOGRAPHIC_LENGTH, ItemType.INTEGER)

_ENCRYPT, _DECRYPT, _GET = int(Operation.ENCRYPT), int(Operation.DECRYPT), int(Operation.GET)
_CREATE = int(Operation.CREATE)
#: The operations the fast path answers.
FAST_OPERATIONS = (_CREATE, _ENCRYPT, _DECRYPT, _GET)
#: What an L4 Create may carry besides its markers and the key's algorithm and length (the
#: rest is refused by the engine, or means a stored key: the general path's to answer).
_CREATE_ATTRIBUTE_TAGS = frozenset({
    Tag.CRYPTOGRAPHIC_ALGORITHM, Tag.CRYPTOGRAPHIC_LENGTH, Tag.CRYPTOGRAPHIC_USAGE_MASK,
    VENDOR_TAG, Tag.LINK})
#: The attribute containers of a Create: KMIP 1.x Template-Attribute, 2.x Attributes.
_CREATE_CONTAINERS = {
    (1, 4): _head(Tag.TEMPLATE_ATTRIBUTE, ItemType.STRUCTURE),
    (2, 0): _head(Tag.ATTRIBUTES, ItemType.STRUCTURE),
    (2, 1): _head(Tag.ATTRIBUTES, ItemType.STRUCTURE)}
_SYMMETRIC_KEY_TYPE = int(ObjectType.SYMMETRIC_KEY)
_RAW = int(KeyFormatType.RAW)

#: Per operation, the payload fields read, in the specification's order: wire header ->
#: the request model's field name.
_FIELDS: dict[int, tuple[tuple[int, str], ...]] = {
    _ENCRYPT: ((_UNIQUE_IDENTIFIER, "unique_identifier"),
               (_CRYPTOGRAPHIC_PARAMETERS, "cryptographic_parameters"),
               (_DATA, "data"), (_IV_COUNTER_NONCE, "iv_counter_nonce"),
               (_AAD, "authenticated_encryption_additional_data")),
    _DECRYPT: ((_UNIQUE_IDENTIFIER, "unique_identifier"),
               (_CRYPTOGRAPHIC_PARAMETERS, "cryptographic_parameters"),
               (_DATA, "data"), (_IV_COUNTER_NONCE, "iv_counter_nonce"),
               (_AAD, "authenticated_encryption_additional_data"),
               (_AE_TAG, "authenticated_encryption_tag")),
    _GET: ((_UNIQUE_IDENTIFIER, "unique_identifier"),
           (_KEY_FORMAT_TYPE, "key_format_type")),
    _CREATE: (),  # read by _create_request
}
_REQUESTS: dict[int, Callable[..., Any]] = {
    _ENCRYPT: EncryptRequest, _DECRYPT: DecryptRequest, _GET: GetRequest}


class _Decline(Exception):
    """The request is not one the fast path answers."""


_DECLINE = _Decline()


class FastPath:
    """Answers plain L4 requests (see the module docstring), or declines with None."""

    def __init__(self, *, cache: L3Cache, engine_factory: EngineFactory,
                 clock: Callable[[], float], new_correlation_id: Callable[[], str],
                 max_message_size: int, max_batch_items: int,
                 served: Mapping[int, Tally] | None = None) -> None:
        self._max_batch_items = max_batch_items
        #: Per operation, the counter of its items answered here (kcm.gateway.metrics).
        self._served = served
        self._cache = cache
        self._engine_factory = engine_factory
        self._clock = clock
        self._new_correlation_id = new_correlation_id
        self._max_message_size = max_message_size

    def answer(self, wire: bytes, principal: Principal) -> bytes | None:
        """The whole answer to ``wire``, or None to leave it to the general path."""
        if self._cache.overflowed:
            return None  # some L4s are the core's to answer: the general path knows which
        try:
            version, maximum_response_size, items = _read_request(wire)
            if len(items) > self._max_batch_items:
                return None  # the general path refuses it
            keys = self._cache.key_source(principal, fetched={}, final=False)
            engine = self._engine_factory(keys)
            answered = []
            for operation, batch_id, payload in items:
                result = engine.execute(operation, principal, version, payload)
                answered.append(_response_item(operation, batch_id, result))
        except Exception:
            # Raising the one _DECLINE adds this raise's frames to its traceback: dropped,
            # or it would grow with every request declined (every forwarded one).
            _DECLINE.__traceback__ = None
            return None
        answer = response_wire(version, int(self._clock()), self._new_correlation_id(),
                               answered, maximum_response_size,
                               server_limit=self._max_message_size)
        served = self._served
        if served is not None:  # (an item the Maximum Response Size turned into Response
            # Too Large is counted as answered: it was, and rarely is on this path)
            for operation, _, _ in items:
                served[operation].value += 1
        return answer


# Reading ------------------------------------------------------------------------------
_Items = list[tuple[int, bytes | None, Any]]


def _read_request(wire: bytes) -> tuple[tuple[int, int], int | None, _Items]:
    size = len(wire)
    head, length = _HEADER.unpack_from(wire, 0)
    if head != _REQUEST_MESSAGE or 8 + length != size:
        raise _DECLINE
    pos, header_end = _structure(wire, 8, size, _REQUEST_HEADER)
    pos, version_end = _structure(wire, pos, header_end, _PROTOCOL_VERSION)
    pos, major = _integer(wire, pos, version_end, _VERSION_MAJOR)
    pos, minor = _integer(wire, pos, version_end, _VERSION_MINOR)
    version = (major, minor)
    if pos != version_end or version not in FAST_VERSIONS:
        raise _DECLINE
    maximum_response_size = None
    if _HEADER.unpack_from(wire, pos)[0] == _MAXIMUM_RESPONSE_SIZE:
        pos, maximum_response_size = _integer(wire, pos, header_end, _MAXIMUM_RESPONSE_SIZE)
    pos, batch_count = _integer(wire, pos, header_end, _BATCH_COUNT)
    if pos != header_end:
        raise _DECLINE
    items = []
    while pos < size:
        pos, item_end = _structure(wire, pos, size, _BATCH_ITEM)
        pos, operation = _integer(wire, pos, item_end, _OPERATION)
        fields = _FIELDS.get(operation)
        if fields is None:
            raise _DECLINE
        batch_id = None
        if pos + 8 <= item_end and _HEADER.unpack_from(wire, pos)[0] == _UNIQUE_BATCH_ITEM_ID:
            pos, batch_id = _bytes(wire, pos, item_end)
        payload_at = pos
        pos, payload_end = _structure(wire, pos, item_end, _REQUEST_PAYLOAD)
        if payload_end != item_end:
            raise _DECLINE
        if operation == _CREATE:
            items.append((operation, batch_id,
                          _create_request(wire, payload_at, pos, payload_end, version)))
        else:
            values = _payload(wire, pos, payload_end, fields)
            if "unique_identifier" not in values:
                raise _DECLINE
            items.append((operation, batch_id, _REQUESTS[operation](**values)))
        pos = item_end
    if not items or batch_count != len(items):
        raise _DECLINE
    return version, maximum_response_size, items


def _create_request(wire: bytes, payload_at: int, pos: int, end: int,
                    version: tuple[int, int]) -> CreateRequest:
    """An L4 Create's payload: Object Type, then the attribute container of ``version``,
    nothing else; decoded with the model, as the general path does."""
    pos, _ = _integer(wire, pos, end, _OBJECT_TYPE)
    container_end = _structure(wire, pos, end, _CREATE_CONTAINERS[version])[1]
    if container_end != end:
        raise _DECLINE
    return _decoded_create(bytes(wire[payload_at:end]), version)


@lru_cache(maxsize=256)
def _decoded_create(payload_bytes: bytes, version: tuple[int, int]) -> CreateRequest:
    """The Create payload ``payload_bytes`` decoded, if it is an L4 Create the fast path
    answers. An application sends the same Create again and again (nothing in it names the
    new key), so the last 256 distinct payloads decoded are kept: the engine only reads a
    request, never changes it. A payload that declines is not kept."""
    payload, after = decode_item(payload_bytes, 0, max_depth=8)
    if after != len(payload_bytes):
        raise _DECLINE
    request = CreateRequest.from_item(payload, version)  # KmipError declines
    attributes = request.attributes
    if (request.template_names or request.protection_storage_masks is not None
            or not attributes or not is_l4_create(attributes)
            or any(attribute.tag not in _CREATE_ATTRIBUTE_TAGS for attribute in attributes)):
        raise _DECLINE
    return request


def _payload(wire: bytes, pos: int, end: int,
             fields: tuple[tuple[int, str], ...]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    index = 0
    while pos < end:
        head = _HEADER.unpack_from(wire, pos)[0] if pos + 8 <= end else None
        while index < len(fields) and fields[index][0] != head:
            index += 1
        if index == len(fields):
            raise _DECLINE  # unexpected, repeated or out of order
        name = fields[index][1]
        index += 1
        if head == _UNIQUE_IDENTIFIER:
            pos, raw = _bytes(wire, pos, end)
            values[name] = raw.decode()  # UnicodeDecodeError declines
        elif head == _KEY_FORMAT_TYPE:
            pos, values[name] = _integer(wire, pos, end, head)
        elif head == _CRYPTOGRAPHIC_PARAMETERS:
            item, after = decode_item(wire, pos)
            if after > end:
                raise _DECLINE
            values[name] = CryptographicParameters.from_item(item)
            pos = after
        else:
            pos, values[name] = _bytes(wire, pos, end)
    return values


def _structure(wire: bytes, pos: int, end: int, expected: int) -> tuple[int, int]:
    """(where its content begins, where it ends) of the Structure ``expected`` at ``pos``."""
    if pos + 8 > end:
        raise _DECLINE
    head, length = _HEADER.unpack_from(wire, pos)
    if head != expected or length & 7 or pos + 8 + length > end:
        raise _DECLINE
    return pos + 8, pos + 8 + length


def _integer(wire: bytes, pos: int, end: int, expected: int) -> tuple[int, int]:
    """An Integer or Enumeration ``expected`` at ``pos`` (zero padding checked)."""
    if pos + 16 > end:
        raise _DECLINE
    head, length = _HEADER.unpack_from(wire, pos)
    value, padding = (_UINT if head & 0xFF == 0x05 else _INT).unpack_from(wire, pos + 8)
    if head != expected or length != 4 or padding:
        raise _DECLINE
    return pos + 16, value


def _bytes(wire: bytes, pos: int, end: int) -> tuple[int, bytes]:
    """A Text or Byte String at ``pos`` (zero padding checked)."""
    length = _HEADER.unpack_from(wire, pos)[1]
    after = pos + 8 + ((length + 7) & ~7)
    if after > end or any(wire[pos + 8 + length:after]):
        raise _DECLINE
    return after, wire[pos + 8:pos + 8 + length]


# Writing ------------------------------------------------------------------------------
#: Zero padding by length (a Byte or Text String is padded to a multiple of 8).
_PADDING = tuple(bytes(n) for n in range(8))


def _response_item(operation: int, batch_id: bytes | None, result: Any) -> bytes:
    if isinstance(result, EncryptResponse):
        if result.correlation_value is not None:
            raise _DECLINE
        payload = _text(_UNIQUE_IDENTIFIER, result.unique_identifier)
        for head, value in ((_DATA, result.data), (_IV_COUNTER_NONCE, result.iv_counter_nonce),
                            (_AE_TAG, result.authenticated_encryption_tag)):
            if value is not None:
                payload += _byte_string(head, value)
    elif isinstance(result, DecryptResponse):
        if result.correlation_value is not None:
            raise _DECLINE
        payload = _text(_UNIQUE_IDENTIFIER, result.unique_identifier)
        if result.data is not None:
            payload += _byte_string(_DATA, result.data)
    elif isinstance(result, CreateResponse):
        if result.attributes or result.template_names:
            raise _DECLINE
        payload = (_enumeration(_OBJECT_TYPE, int(result.object_type))
                   + _text(_UNIQUE_IDENTIFIER, result.unique_identifier))
    elif isinstance(result, GetResponse):
        payload = (_enumeration(_OBJECT_TYPE, _SYMMETRIC_KEY_TYPE)
                   + _text(_UNIQUE_IDENTIFIER, result.unique_identifier)
                   + _symmetric_key(result.object))
    else:
        raise _DECLINE
    if batch_id is None:
        body = b"".join((_OPERATION_ITEMS[operation], _SUCCESS_ITEM,
                         _HEADER.pack(_RESPONSE_PAYLOAD, len(payload)), payload))
    else:
        body = b"".join((_OPERATION_ITEMS[operation],
                         _byte_string(_UNIQUE_BATCH_ITEM_ID, batch_id), _SUCCESS_ITEM,
                         _HEADER.pack(_RESPONSE_PAYLOAD, len(payload)), payload))
    return _HEADER.pack(_BATCH_ITEM, len(body)) + body


def _symmetric_key(obj: object) -> bytes:
    """A Raw, unwrapped AES key block; anything else declines."""
    if not isinstance(obj, SymmetricKey):
        raise _DECLINE
    block = obj.key_block
    value = block.key_value
    if (block.key_format_type != _RAW or block.key_wrapping_data is not None
            or block.key_compression_type is not None or not isinstance(value, KeyValue)
            or not isinstance(value.key_material, bytes) or value.attributes
            or block.cryptographic_algorithm is None or block.cryptographic_length is None):
        raise _DECLINE
    material = value.key_material
    key_block = (_enumeration(_KEY_FORMAT_TYPE, _RAW)
                 + _struct(_KEY_VALUE, _byte_string(_KEY_MATERIAL, material))
                 + _enumeration(_CRYPTOGRAPHIC_ALGORITHM, int(block.cryptographic_algorithm))
                 + _integer_item(_CRYPTOGRAPHIC_LENGTH, int(block.cryptographic_length)))
    return _struct(_SYMMETRIC_KEY, _struct(_KEY_BLOCK, key_block))


def _struct(head: int, body: bytes) -> bytes:
    return _HEADER.pack(head, len(body)) + body


def _enumeration(head: int, value: int) -> bytes:
    return _HEADER.pack(head, 4) + _UINT.pack(value, 0)


def _integer_item(head: int, value: int) -> bytes:
    return _HEADER.pack(head, 4) + _INT.pack(value, 0)


def _byte_string(head: int, value: bytes) -> bytes:
    length = len(value)
    return b"".join((_HEADER.pack(head, length), value, _PADDING[-length & 7]))


def _text(head: int, value: str) -> bytes:
    return _byte_string(head, value.encode())


#: The first item of every answered batch item (its Operation), and its Result Status.
_OPERATION_ITEMS = {operation: _enumeration(_OPERATION, operation)
                    for operation in FAST_OPERATIONS}
_SUCCESS_ITEM = _enumeration(_RESULT_STATUS, 0)
