"""Plain requests and answers, read and written straight from and to bytes.

Most requests a KMIP server answers in volume are one shape: a Request Message in KMIP 1.4,
2.0 or 2.1 whose batch items are Encrypt, Decrypt or Get with the Unique Identifier given
and nothing unusual (and a Create: for the gateway an L4's, for kcm-core any, its payload
read by the model, :func:`read_create_payload`). :func:`read_request` reads
such a request's header fields and typed payloads from the bytes, without the message
tree; :func:`response_item` writes a successful answer's batch item into a fixed layout.
The gateway's fast path (:mod:`kcm.gateway.fast_path`) answers its L4 requests with them,
and kcm-core decodes and encodes its plain requests and answers with them
(:mod:`kcm.core.request_handler`); kcm-core also reads a Discover Versions here
(:func:`read_discover_versions`, which the fast path never calls) and writes its answer.

Both are *sure or silent*: :func:`read_request` raises :data:`NOT_PLAIN` for any field it
does not expect, a field out of the specification's order or repeated, non-zero padding, a
version outside 1.4-2.1, a missing identifier (the ID Placeholder), Cryptographic
Parameters it cannot read, a Batch Count that does not match; :func:`response_item` for an
answer it does not lay out (a wrapped or Transparent key, a correlation value). The caller
then takes the general codec, whose results these equal wherever they answer (property
tests: tests/unit/test_gateway_fast_path.py, tests/unit/test_plain_messages.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from kcm.kernel.version_fit import fit
from kcm.kmip.attributes import (
    AttributeReference,
    CryptographicParameters,
    attribute_to_v1,
    attributes_to_container,
    reference_from_name,
)
from kcm.kmip.enums import CryptographicAlgorithm, KeyFormatType, ObjectType, Operation
from kcm.kmip.fields import EXTENSION_VALUES
from kcm.kmip.objects import KeyValue, SymmetricKey
from kcm.kmip.payloads import (
    CreateRequest,
    CreateResponse,
    DecryptRequest,
    DecryptResponse,
    DiscoverVersionsRequest,
    DiscoverVersionsResponse,
    EncryptRequest,
    EncryptResponse,
    GetAttributesRequest,
    GetAttributesResponse,
    GetRequest,
    GetResponse,
)
from kcm.kmip.protocol_version import ProtocolVersion
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType, decode_item, encode

__all__ = ["NOT_PLAIN", "PLAIN_OPERATIONS", "PLAIN_VERSIONS", "READABLE_VERSIONS",
           "CreateReader", "NotPlain", "answer_item", "attributes_payload",
           "integer_at", "item_head", "read_create_payload", "read_discover_versions",
           "read_get_attributes",
           "read_request",
           "read_request_python", "response_item", "structure_at"]

#: The protocol versions read and written here by default: an L4 answer has one layout in
#: all of them.
PLAIN_VERSIONS = frozenset({(1, 4), (2, 0), (2, 1)})
#: The versions whose plain requests are read alike (Encrypt, Decrypt and Get have had these
#: fields since KMIP 1.2; the model reads the AEAD ones in any version, as here).
READABLE_VERSIONS = frozenset({(1, 2), (1, 3), *PLAIN_VERSIONS})

_HEADER = struct.Struct(">II")
_INT = struct.Struct(">iI")
_UINT = struct.Struct(">II")


def item_head(tag: int, item_type: ItemType) -> int:
    """An item's wire header as read with ``_HEADER``: tag << 8 | type."""
    return int(tag) << 8 | item_type.value


_REQUEST_MESSAGE = item_head(Tag.REQUEST_MESSAGE, ItemType.STRUCTURE)
_REQUEST_HEADER = item_head(Tag.REQUEST_HEADER, ItemType.STRUCTURE)
_PROTOCOL_VERSION = item_head(Tag.PROTOCOL_VERSION, ItemType.STRUCTURE)
_VERSION_MAJOR = item_head(Tag.PROTOCOL_VERSION_MAJOR, ItemType.INTEGER)
_VERSION_MINOR = item_head(Tag.PROTOCOL_VERSION_MINOR, ItemType.INTEGER)
_MAXIMUM_RESPONSE_SIZE = item_head(Tag.MAXIMUM_RESPONSE_SIZE, ItemType.INTEGER)
_BATCH_COUNT = item_head(Tag.BATCH_COUNT, ItemType.INTEGER)
_BATCH_ITEM = item_head(Tag.BATCH_ITEM, ItemType.STRUCTURE)
_OPERATION = item_head(Tag.OPERATION, ItemType.ENUMERATION)
_UNIQUE_BATCH_ITEM_ID = item_head(Tag.UNIQUE_BATCH_ITEM_ID, ItemType.BYTE_STRING)
_REQUEST_PAYLOAD = item_head(Tag.REQUEST_PAYLOAD, ItemType.STRUCTURE)
_RESPONSE_PAYLOAD = item_head(Tag.RESPONSE_PAYLOAD, ItemType.STRUCTURE)
_RESULT_STATUS = item_head(Tag.RESULT_STATUS, ItemType.ENUMERATION)
_UNIQUE_IDENTIFIER = item_head(Tag.UNIQUE_IDENTIFIER, ItemType.TEXT_STRING)
_CRYPTOGRAPHIC_PARAMETERS = item_head(Tag.CRYPTOGRAPHIC_PARAMETERS, ItemType.STRUCTURE)
_DATA = item_head(Tag.DATA, ItemType.BYTE_STRING)
_IV_COUNTER_NONCE = item_head(Tag.IV_COUNTER_NONCE, ItemType.BYTE_STRING)
_AAD = item_head(Tag.AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, ItemType.BYTE_STRING)
_AE_TAG = item_head(Tag.AUTHENTICATED_ENCRYPTION_TAG, ItemType.BYTE_STRING)
_KEY_FORMAT_TYPE = item_head(Tag.KEY_FORMAT_TYPE, ItemType.ENUMERATION)
_OBJECT_TYPE = item_head(Tag.OBJECT_TYPE, ItemType.ENUMERATION)
_SYMMETRIC_KEY = item_head(Tag.SYMMETRIC_KEY, ItemType.STRUCTURE)
_KEY_BLOCK = item_head(Tag.KEY_BLOCK, ItemType.STRUCTURE)
_KEY_VALUE = item_head(Tag.KEY_VALUE, ItemType.STRUCTURE)
_KEY_MATERIAL = item_head(Tag.KEY_MATERIAL, ItemType.BYTE_STRING)
_CRYPTOGRAPHIC_ALGORITHM = item_head(Tag.CRYPTOGRAPHIC_ALGORITHM, ItemType.ENUMERATION)
_CRYPTOGRAPHIC_LENGTH = item_head(Tag.CRYPTOGRAPHIC_LENGTH, ItemType.INTEGER)
_ATTRIBUTE_NAME = item_head(Tag.ATTRIBUTE_NAME, ItemType.TEXT_STRING)
_ATTRIBUTE_REFERENCE = item_head(Tag.ATTRIBUTE_REFERENCE, ItemType.ENUMERATION)

_ENCRYPT, _DECRYPT, _GET = int(Operation.ENCRYPT), int(Operation.DECRYPT), int(Operation.GET)
_CREATE = int(Operation.CREATE)
_DISCOVER_VERSIONS = int(Operation.DISCOVER_VERSIONS)
_GET_ATTRIBUTES = int(Operation.GET_ATTRIBUTES)
#: The operations whose requests are read (a Create by the caller's reader) and answered.
PLAIN_OPERATIONS = (_CREATE, _ENCRYPT, _DECRYPT, _GET)
_SYMMETRIC_KEY_TYPE = int(ObjectType.SYMMETRIC_KEY)
_RAW = int(KeyFormatType.RAW)
#: The one algorithm the writer answers a Get of (every version defines it; another, such
#: as KMIP 1.4's ChaCha20, takes the general encoder, whose version filter judges it).
_AES = int(CryptographicAlgorithm.AES)

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
    _CREATE: (),  # read by the caller's CreateReader
}
_REQUESTS: dict[int, Callable[..., Any]] = {
    _ENCRYPT: EncryptRequest, _DECRYPT: DecryptRequest, _GET: GetRequest}

#: How the scan returns each field's value (kcm/kernel/_plain_scan.c): 0 bytes, 1 text,
#: 2 an integer, 3 a Structure's (start, end) for the model to decode.
_KINDS = {_UNIQUE_IDENTIFIER: 1, _KEY_FORMAT_TYPE: 2, _CRYPTOGRAPHIC_PARAMETERS: 3}
#: The Key Format Types some version defines.
_KEY_FORMATS = frozenset(KeyFormatType._value2member_map_)
#: :data:`_FIELDS` as the scan takes it: (wire header, name, kind).
_SCAN_FIELDS = {operation: tuple((head, name, _KINDS.get(head, 0)) for head, name in fields)
                for operation, fields in _FIELDS.items()}

try:
    from kcm.kernel import _plain_scan
except ImportError:  # a checkout whose extension is not built: the Python reader
    _scan = None
else:
    _plain_scan.configure(
        _REQUEST_MESSAGE, _REQUEST_HEADER, _PROTOCOL_VERSION, _VERSION_MAJOR, _VERSION_MINOR,
        _MAXIMUM_RESPONSE_SIZE, _BATCH_COUNT, _BATCH_ITEM, _OPERATION, _UNIQUE_BATCH_ITEM_ID,
        _REQUEST_PAYLOAD)
    _scan = _plain_scan.scan


def compiled() -> bool:
    """Whether plain requests are walked by :mod:`kcm.kernel._plain_scan` (else in Python)."""
    return _scan is not None


class NotPlain(Exception):
    """Not a plain request or answer: the general codec's to read or write."""


#: The one exception raised (raising it adds frames to its traceback: a caller that keeps
#: going drops them, ``NOT_PLAIN.__traceback__ = None``, or they grow with every decline).
NOT_PLAIN = NotPlain()

# Reading ------------------------------------------------------------------------------
_Items = list[tuple[int, bytes | None, Any]]
#: Reads a Create's payload: ``(wire, payload_at, pos, payload_end, version)``.
CreateReader = Callable[[bytes, int, int, int, tuple[int, int]], Any]


def read_request(wire: bytes, create: CreateReader | None = None,
                 versions: frozenset[tuple[int, int]] = PLAIN_VERSIONS, *,
                 max_items: int | None = None
                 ) -> tuple[tuple[int, int], int | None, _Items]:
    """(version, Maximum Response Size or None, [(operation, Unique Batch Item ID or None,
    typed request payload)]) of a plain request; raises :data:`NOT_PLAIN` for any other,
    one whose Batch Count is over ``max_items`` included. No item is read past the Batch
    Count, so the work is bounded by ``max_items`` however many items the bytes hold.
    A Create is read by ``create`` (``create(wire, payload_at, pos, payload_end, version)``:
    the payload's Structure at ``payload_at``, its content from ``pos``), and without one
    is not plain. ``versions``: those read (a subset of :data:`READABLE_VERSIONS`).

    The bytes are walked by the compiled :mod:`kcm.kernel._plain_scan` where it is built
    (``pip install`` builds it), by :func:`read_request_python` otherwise; the two read
    alike (tests/unit/test_plain_scan.py)."""
    if max_items is not None and max_items < 0:  # (the scan takes -1 for "no bound")
        raise ValueError("max_items must not be negative")
    if _scan is None or type(wire) is not bytes:
        return read_request_python(wire, create, versions, max_items=max_items)
    version, maximum_response_size, scanned = _scan(
        wire, _SCAN_FIELDS, versions, _CREATE, NOT_PLAIN, -1 if max_items is None else max_items)
    _check_maximum_response_size(maximum_response_size)
    items = []
    for operation, batch_id, values in scanned:
        if operation == _CREATE:
            if create is None:
                raise NOT_PLAIN
            items.append((operation, batch_id, create(wire, *values, version)))
            continue
        if "unique_identifier" not in values:
            raise NOT_PLAIN
        _check_key_format(values)
        parameters = values.get("cryptographic_parameters")
        if parameters is not None:
            values["cryptographic_parameters"] = _parameters(wire, *parameters)
        items.append((operation, batch_id, _REQUESTS[operation](**values)))
    return version, maximum_response_size, items


def _check_maximum_response_size(size: int | None) -> None:
    """A negative Maximum Response Size is not plain: the general decoder refuses the
    request whole (Invalid Field, :func:`kcm.kmip.messages.check_request_header`); read
    as a bound, it answered every success Response Too Large."""
    if size is not None and size < 0:
        raise NOT_PLAIN


def _check_key_format(values: dict[str, Any]) -> None:
    """A Key Format Type no version defines (and no extension value) is not plain: the
    general decoder refuses it (Unknown Enumeration), as every enumeration (before, this
    reader took it as a number, and the core answered what a gateway did not)."""
    kind = values.get("key_format_type")
    if kind is not None and kind not in _KEY_FORMATS and kind not in EXTENSION_VALUES:
        raise NOT_PLAIN


def read_request_python(wire: bytes, create: CreateReader | None = None,
                        versions: frozenset[tuple[int, int]] = PLAIN_VERSIONS, *,
                        max_items: int | None = None
                        ) -> tuple[tuple[int, int], int | None, _Items]:
    """:func:`read_request` in Python alone: the reference the compiled scan is held to."""
    size = len(wire)
    pos, version, maximum_response_size, batch_count = _read_header(wire, versions,
                                                                    max_items)
    _check_maximum_response_size(maximum_response_size)
    items = []
    while pos < size:
        if len(items) >= batch_count:
            raise NOT_PLAIN  # more items than it says: never read past the count
        operation, batch_id, payload_at, pos, payload_end = _batch_item(wire, pos, size)
        fields = _FIELDS.get(operation)
        if fields is None:
            raise NOT_PLAIN
        if operation == _CREATE:
            if create is None:
                raise NOT_PLAIN
            items.append((operation, batch_id,
                          create(wire, payload_at, pos, payload_end, version)))
        else:
            values = _payload(wire, pos, payload_end, fields)
            if "unique_identifier" not in values:
                raise NOT_PLAIN
            _check_key_format(values)
            items.append((operation, batch_id, _REQUESTS[operation](**values)))
        pos = payload_end
    if not items or batch_count != len(items):
        raise NOT_PLAIN
    return version, maximum_response_size, items


def _batch_item(wire: bytes, pos: int, size: int) -> tuple[int, bytes | None, int, int, int]:
    """(Operation, Unique Batch Item ID or None, where the Request Payload begins, where its
    content begins, where it and the batch item end) of the plain Batch Item at ``pos``:
    an Operation, an optional Unique Batch Item ID and a Request Payload, nothing else."""
    pos, item_end = structure_at(wire, pos, size, _BATCH_ITEM)
    pos, operation = integer_at(wire, pos, item_end, _OPERATION)
    batch_id = None
    if pos + 8 <= item_end and _HEADER.unpack_from(wire, pos)[0] == _UNIQUE_BATCH_ITEM_ID:
        pos, batch_id = _bytes(wire, pos, item_end)
    payload_at = pos
    pos, payload_end = structure_at(wire, pos, item_end, _REQUEST_PAYLOAD)
    if payload_end != item_end:
        raise NOT_PLAIN
    return operation, batch_id, payload_at, pos, payload_end


def _read_header(wire: bytes, versions: frozenset[tuple[int, int]],
                 max_items: int | None = None
                 ) -> tuple[int, tuple[int, int], int | None, int]:
    """(where the first batch item begins, version, Maximum Response Size or None, Batch
    Count) of a plain request's header: Protocol Version, Maximum Response Size, Batch
    Count (at most ``max_items``, when given) and nothing else."""
    size = len(wire)
    if size < 8:
        raise NOT_PLAIN
    head, length = _HEADER.unpack_from(wire, 0)
    if head != _REQUEST_MESSAGE or 8 + length != size:
        raise NOT_PLAIN
    pos, header_end = structure_at(wire, 8, size, _REQUEST_HEADER)
    pos, version_end = structure_at(wire, pos, header_end, _PROTOCOL_VERSION)
    pos, major = integer_at(wire, pos, version_end, _VERSION_MAJOR)
    pos, minor = integer_at(wire, pos, version_end, _VERSION_MINOR)
    version = (major, minor)
    if pos != version_end or version not in versions:
        raise NOT_PLAIN
    maximum_response_size = None
    if pos + 8 <= header_end and _HEADER.unpack_from(wire, pos)[0] == _MAXIMUM_RESPONSE_SIZE:
        pos, maximum_response_size = integer_at(wire, pos, header_end, _MAXIMUM_RESPONSE_SIZE)
    pos, batch_count = integer_at(wire, pos, header_end, _BATCH_COUNT)
    if pos != header_end or (max_items is not None and batch_count > max_items):
        raise NOT_PLAIN
    return pos, version, maximum_response_size, batch_count


#: The deepest nesting :func:`read_create_payload` decodes (a deeper payload takes the general
#: codec: a Name, a Link or Cryptographic Parameters as an attribute are four levels).
CREATE_PAYLOAD_DEPTH = 8


def read_create_payload(wire: bytes, payload_at: int, pos: int, end: int,
                        version: tuple[int, int]) -> CreateRequest:
    """A :data:`CreateReader` of any Create: its payload (the Structure at ``payload_at``,
    ending at ``end``) decoded alone and read by the model, as the general codec reads a
    Create's payload in ``version`` (what it refuses, a TTLV or KMIP error, or nesting
    deeper than :data:`CREATE_PAYLOAD_DEPTH`, is not plain: the general codec reads the
    request then). kcm-core reads its Creates with it: the message around the payload is
    not decoded into a tree."""
    payload, after = decode_item(wire, payload_at, max_depth=CREATE_PAYLOAD_DEPTH)
    if after != end:
        raise NOT_PLAIN
    return CreateRequest.from_item(payload, version)


def read_discover_versions(wire: bytes,
                           versions: frozenset[tuple[int, int]] = READABLE_VERSIONS, *,
                           max_items: int | None = None
                           ) -> tuple[tuple[int, int], int | None, _Items]:
    """:func:`read_request`'s answer for a plain request of Discover Versions only (each
    payload empty or Protocol Versions of two Integers); raises :data:`NOT_PLAIN` for any
    other, and for one whose Batch Count is over ``max_items`` (read no further). In
    Python: the payload's repeated structures are not the compiled scan's."""
    return _read_batch(wire, versions, max_items, _DISCOVER_VERSIONS, _discover_versions)


def read_get_attributes(wire: bytes,
                        versions: frozenset[tuple[int, int]] = READABLE_VERSIONS, *,
                        max_items: int | None = None
                        ) -> tuple[tuple[int, int], int | None, _Items]:
    """:func:`read_request`'s answer for a plain request of Get Attributes only: each
    payload a Unique Identifier, then any number of attributes named by a 1.x Attribute
    Name or a 2.x Attribute Reference by tag (none: all of them); raises
    :data:`NOT_PLAIN` for any other (a vendor attribute's reference structure, the ID
    Placeholder), and for one whose Batch Count is over ``max_items`` (read no further).
    In Python: the payload's repeated fields are not the compiled scan's."""
    return _read_batch(wire, versions, max_items, _GET_ATTRIBUTES, _get_attributes)


#: Reads one payload's content: ``(wire, pos, payload_end, version)`` -> its model.
_PayloadReader = Callable[[bytes, int, int, tuple[int, int]], Any]


def _read_batch(wire: bytes, versions: frozenset[tuple[int, int]], max_items: int | None,
                operation: int, read_payload: _PayloadReader
                ) -> tuple[tuple[int, int], int | None, _Items]:
    """A plain request whose every batch item is ``operation``, each payload read by
    ``read_payload``; no item is read past the Batch Count."""
    size = len(wire)
    pos, version, maximum_response_size, batch_count = _read_header(wire, versions,
                                                                    max_items)
    items: _Items = []
    while pos < size:
        if len(items) == batch_count:
            raise NOT_PLAIN  # more items than it says: never read past the count
        found, batch_id, _, pos, payload_end = _batch_item(wire, pos, size)
        if found != operation:
            raise NOT_PLAIN
        items.append((operation, batch_id, read_payload(wire, pos, payload_end, version)))
        pos = payload_end
    if not items or batch_count != len(items):
        raise NOT_PLAIN
    return version, maximum_response_size, items


def _discover_versions(wire: bytes, pos: int, end: int,
                       version: tuple[int, int]) -> DiscoverVersionsRequest:
    listed = []
    while pos < end:
        pos, version_end = structure_at(wire, pos, end, _PROTOCOL_VERSION)
        pos, major = integer_at(wire, pos, version_end, _VERSION_MAJOR)
        pos, minor = integer_at(wire, pos, version_end, _VERSION_MINOR)
        if pos != version_end:
            raise NOT_PLAIN
        listed.append(ProtocolVersion(major=major, minor=minor))
    return DiscoverVersionsRequest(protocol_versions=listed)


def _get_attributes(wire: bytes, pos: int, end: int,
                    version: tuple[int, int]) -> GetAttributesRequest:
    if pos + 8 > end or _HEADER.unpack_from(wire, pos)[0] != _UNIQUE_IDENTIFIER:
        raise NOT_PLAIN
    pos, raw = _bytes(wire, pos, end)
    references: list[AttributeReference] = []
    while pos < end:
        if pos + 8 > end:
            raise NOT_PLAIN
        head = _HEADER.unpack_from(wire, pos)[0]
        if head == _ATTRIBUTE_NAME:
            pos, name = _bytes(wire, pos, end)
            references.append(reference_from_name(name.decode(), version))
        elif head == _ATTRIBUTE_REFERENCE:
            pos, tag = integer_at(wire, pos, end, head)
            references.append(AttributeReference(tag))
        else:
            raise NOT_PLAIN
    return GetAttributesRequest(unique_identifier=raw.decode(),
                                attribute_references=references)


def _payload(wire: bytes, pos: int, end: int,
             fields: tuple[tuple[int, str], ...]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    index = 0
    while pos < end:
        head = _HEADER.unpack_from(wire, pos)[0] if pos + 8 <= end else None
        while index < len(fields) and fields[index][0] != head:
            index += 1
        if index == len(fields):
            raise NOT_PLAIN  # unexpected, repeated or out of order
        name = fields[index][1]
        index += 1
        if head == _UNIQUE_IDENTIFIER:
            pos, raw = _bytes(wire, pos, end)
            values[name] = raw.decode()  # UnicodeDecodeError declines
        elif head == _KEY_FORMAT_TYPE:
            pos, values[name] = integer_at(wire, pos, end, head)
        elif head == _CRYPTOGRAPHIC_PARAMETERS:
            item, after = decode_item(wire, pos)
            if after > end:
                raise NOT_PLAIN
            values[name] = CryptographicParameters.from_item(item)
            pos = after
        else:
            pos, values[name] = _bytes(wire, pos, end)
    return values


def _parameters(wire: bytes, start: int, end: int) -> CryptographicParameters:
    """The Cryptographic Parameters the scan found from ``start`` to ``end``.

    A client sends the same few over and over: the model of each is made once and shared
    by the requests that carry those bytes (nothing changes a request's model once it is
    read), up to :data:`_PARAMETERS_KEPT` of them, each of at most
    :data:`_PARAMETERS_KEPT_BYTES`."""
    encoded = wire[start:end]
    known = _PARAMETERS.get(encoded)
    if known is not None:
        return known
    item, after = decode_item(wire, start)
    if after != end:
        raise NOT_PLAIN
    parameters = CryptographicParameters.from_item(item)
    if len(encoded) > _PARAMETERS_KEPT_BYTES:
        return parameters  # (a megabyte of P Source is not kept 64 times)
    if len(_PARAMETERS) >= _PARAMETERS_KEPT:
        _PARAMETERS.clear()  # (a client that varies them pays the decoding, not memory)
    _PARAMETERS[encoded] = parameters
    return parameters


#: Encoded Cryptographic Parameters -> their model (:func:`_parameters`); at most
#: :data:`_PARAMETERS_KEPT` entries.
_PARAMETERS: dict[bytes, CryptographicParameters] = {}
_PARAMETERS_KEPT = 64
#: The longest encoding (bytes) :func:`_parameters` keeps; real ones are under 100.
_PARAMETERS_KEPT_BYTES = 512


def structure_at(wire: bytes, pos: int, end: int, expected: int) -> tuple[int, int]:
    """(where its content begins, where it ends) of the Structure ``expected`` at ``pos``."""
    if pos + 8 > end:
        raise NOT_PLAIN
    head, length = _HEADER.unpack_from(wire, pos)
    if head != expected or length & 7 or pos + 8 + length > end:
        raise NOT_PLAIN
    return pos + 8, pos + 8 + length


def integer_at(wire: bytes, pos: int, end: int, expected: int) -> tuple[int, int]:
    """An Integer or Enumeration ``expected`` at ``pos`` (zero padding checked)."""
    if pos + 16 > end:
        raise NOT_PLAIN
    head, length = _HEADER.unpack_from(wire, pos)
    value, padding = (_UINT if head & 0xFF == 0x05 else _INT).unpack_from(wire, pos + 8)
    if head != expected or length != 4 or padding:
        raise NOT_PLAIN
    return pos + 16, value


def _bytes(wire: bytes, pos: int, end: int) -> tuple[int, bytes]:
    """A Text or Byte String at ``pos`` (zero padding checked)."""
    length = _HEADER.unpack_from(wire, pos)[1]
    after = pos + 8 + ((length + 7) & ~7)
    if after > end or any(wire[pos + 8 + length:after]):
        raise NOT_PLAIN
    return after, wire[pos + 8:pos + 8 + length]


# Writing ------------------------------------------------------------------------------
#: Zero padding by length (a Byte or Text String is padded to a multiple of 8).
_PADDING = tuple(bytes(n) for n in range(8))


def response_item(operation: int, batch_id: bytes | None, result: Any,
                  version: tuple[int, int] | None = None) -> bytes:
    """The successful Response Batch Item answering ``operation`` with the typed payload
    ``result``: an Encrypt, Decrypt, Create or Discover Versions answer, a Get of a Raw,
    unwrapped symmetric key, or (given the answer's ``version``) a Get Attributes answer;
    raises :data:`NOT_PLAIN` for any other."""
    if isinstance(result, EncryptResponse):
        if result.correlation_value is not None:
            raise NOT_PLAIN
        payload = _text(_UNIQUE_IDENTIFIER, result.unique_identifier)
        for head, value in ((_DATA, result.data), (_IV_COUNTER_NONCE, result.iv_counter_nonce),
                            (_AE_TAG, result.authenticated_encryption_tag)):
            if value is not None:
                payload += _byte_string(head, value)
    elif isinstance(result, DecryptResponse):
        if result.correlation_value is not None:
            raise NOT_PLAIN
        payload = _text(_UNIQUE_IDENTIFIER, result.unique_identifier)
        if result.data is not None:
            payload += _byte_string(_DATA, result.data)
    elif isinstance(result, CreateResponse):
        if result.attributes or result.template_names:
            raise NOT_PLAIN
        payload = (_enumeration(_OBJECT_TYPE, int(result.object_type))
                   + _text(_UNIQUE_IDENTIFIER, result.unique_identifier))
    elif isinstance(result, GetResponse):
        payload = (_enumeration(_OBJECT_TYPE, _SYMMETRIC_KEY_TYPE)
                   + _text(_UNIQUE_IDENTIFIER, result.unique_identifier)
                   + _symmetric_key(result.object))
    elif isinstance(result, GetAttributesResponse):
        if version is None:
            raise NOT_PLAIN
        payload = attributes_payload(result, version)
    elif isinstance(result, DiscoverVersionsResponse):
        payload = b"".join(_struct(_PROTOCOL_VERSION,
                                   _integer_item(_VERSION_MAJOR, int(version.major))
                                   + _integer_item(_VERSION_MINOR, int(version.minor)))
                           for version in result.protocol_versions)
    else:
        raise NOT_PLAIN
    return answer_item(operation, batch_id, payload)


def answer_item(operation: int, batch_id: bytes | None, payload: bytes) -> bytes:
    """The successful Response Batch Item answering ``operation`` whose Response Payload's
    content is ``payload`` (as :func:`response_item` and :func:`attributes_payload` write
    it)."""
    if batch_id is None:
        body = b"".join((_OPERATION_ITEMS[operation], _SUCCESS_ITEM,
                         _HEADER.pack(_RESPONSE_PAYLOAD, len(payload)), payload))
    else:
        body = b"".join((_OPERATION_ITEMS[operation],
                         _byte_string(_UNIQUE_BATCH_ITEM_ID, batch_id), _SUCCESS_ITEM,
                         _HEADER.pack(_RESPONSE_PAYLOAD, len(payload)), payload))
    return _HEADER.pack(_BATCH_ITEM, len(body)) + body


def attributes_payload(result: GetAttributesResponse, version: tuple[int, int]) -> bytes:
    """A Get Attributes answer's payload content (NOT_PLAIN for one it does not write): its
    attributes in ``version``'s form (:mod:`kcm.kmip.attributes`' functions, which the
    payload's codec calls) and fitted to it (:func:`kcm.kernel.version_fit.fit`, as every
    answer is), without the message's model around them."""
    uid = result.unique_identifier
    if type(uid) is not str:
        raise NOT_PLAIN
    children = [Item(Tag.UNIQUE_IDENTIFIER, ItemType.TEXT_STRING, uid)]
    attributes = result.attributes
    if attributes is not None:
        if version[0] >= 2:
            children.append(attributes_to_container(attributes, version))
        else:
            for attribute in attributes:
                item = attribute_to_v1(attribute, version)
                if item is not None:
                    children.append(item)
    return encode(fit(Item(Tag.RESPONSE_PAYLOAD, ItemType.STRUCTURE, children), version))[8:]


def _symmetric_key(obj: object) -> bytes:
    """A Raw, unwrapped AES key block; anything else declines."""
    if not isinstance(obj, SymmetricKey):
        raise NOT_PLAIN
    block = obj.key_block
    value = block.key_value
    if (block.key_format_type != _RAW or block.key_wrapping_data is not None
            or block.key_compression_type is not None or not isinstance(value, KeyValue)
            or not isinstance(value.key_material, bytes) or value.attributes
            or block.cryptographic_algorithm != _AES or block.cryptographic_length is None):
        raise NOT_PLAIN
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
                    for operation in (*PLAIN_OPERATIONS, _DISCOVER_VERSIONS, _GET_ATTRIBUTES)}
_SUCCESS_ITEM = _enumeration(_RESULT_STATUS, 0)
