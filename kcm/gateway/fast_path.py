"""The gateway's fast path: plain L4 Create, Encrypt, Decrypt and Get answered from bytes.

Most of what a data plane answers is one shape: a Request Message in KMIP 1.4, 2.0 or 2.1
whose batch items are Encrypt, Decrypt or Get of an L4 token (or Encrypt/Decrypt with an
L3), with the Unique Identifier given and nothing unusual, or the Create of an L4 (its
attributes, a few dozen bytes, are the one part decoded with the model, exactly as the
general path decodes them). For such a request this module reads the few fields the L4
engine needs straight from the bytes (no message tree: :mod:`kcm.kernel.plain_messages`,
which kcm-core uses too), runs the same :class:`kcm.l4.engine.L4Engine` the general path
runs, writes each response batch item with the engine's answer filled into a fixed layout,
and lets the kernel put the header on (:func:`kcm.kernel.responses.response_wire`, which
also applies the Maximum Response Size). Batches of many such items (bulk record
encryption) take the same path, item after item, in one call.

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

from collections.abc import Callable, Mapping
from functools import lru_cache

from kcm.gateway.l3_cache import L3Cache
from kcm.gateway.local_batch import EngineFactory
from kcm.identity import Principal
from kcm.kernel.plain_messages import (
    NOT_PLAIN,
    PLAIN_OPERATIONS,
    PLAIN_VERSIONS,
    integer_at,
    item_head,
    read_request,
    response_item,
    structure_at,
)
from kcm.kernel.responses import response_wire
from kcm.kmip.attributes import VENDOR_TAG
from kcm.kmip.payloads import CreateRequest
from kcm.kmip.tags import Tag
from kcm.l4.marking import is_l4_create
from kcm.metrics import Tally
from kcm.ttlv import ItemType, decode_item

__all__ = ["FAST_OPERATIONS", "FAST_VERSIONS", "FastPath"]

#: The protocol versions the fast path answers in (their L4 answers have one layout).
FAST_VERSIONS = PLAIN_VERSIONS
#: The operations the fast path answers.
FAST_OPERATIONS = PLAIN_OPERATIONS

_OBJECT_TYPE = item_head(Tag.OBJECT_TYPE, ItemType.ENUMERATION)
#: What an L4 Create may carry besides its markers and the key's algorithm and length (the
#: rest is refused by the engine, or means a stored key: the general path's to answer).
_CREATE_ATTRIBUTE_TAGS = frozenset({
    Tag.CRYPTOGRAPHIC_ALGORITHM, Tag.CRYPTOGRAPHIC_LENGTH, Tag.CRYPTOGRAPHIC_USAGE_MASK,
    VENDOR_TAG, Tag.LINK})
#: The attribute containers of a Create: KMIP 1.x Template-Attribute, 2.x Attributes.
_CREATE_CONTAINERS = {
    (1, 4): item_head(Tag.TEMPLATE_ATTRIBUTE, ItemType.STRUCTURE),
    (2, 0): item_head(Tag.ATTRIBUTES, ItemType.STRUCTURE),
    (2, 1): item_head(Tag.ATTRIBUTES, ItemType.STRUCTURE)}


class FastPath:
    """Answers plain L4 requests (see the module docstring), or declines with None."""

    def __init__(self, *, cache: L3Cache, engine_factory: EngineFactory,
                 clock: Callable[[], float], new_correlation_id: Callable[[], str],
                 max_message_size: int, max_batch_items: int,
                 served: Mapping[int, Tally] | None = None) -> None:
        """``clock``: the wall clock, read for the answers' time stamps (a date)."""
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
            # Over the limit is not plain (read no further): the general path refuses it.
            version, maximum_response_size, items = read_request(
                wire, _create_request, max_items=self._max_batch_items)
            keys = self._cache.key_source(principal, fetched={}, final=False, fast=True)
            engine = self._engine_factory(keys)
            answered = []
            for operation, batch_id, payload in items:
                result = engine.execute(operation, principal, version, payload)
                answered.append(response_item(operation, batch_id, result))
        except Exception:
            # Raising the one NOT_PLAIN adds this raise's frames to its traceback: dropped,
            # or it would grow with every request declined (every forwarded one).
            NOT_PLAIN.__traceback__ = None
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


# Reading an L4 Create ---------------------------------------------------------------

def _create_request(wire: bytes, payload_at: int, pos: int, end: int,
                    version: tuple[int, int]) -> CreateRequest:
    """An L4 Create's payload: Object Type, then the attribute container of ``version``,
    nothing else; decoded with the model, as the general path does."""
    pos, _ = integer_at(wire, pos, end, _OBJECT_TYPE)
    container_end = structure_at(wire, pos, end, _CREATE_CONTAINERS[version])[1]
    if container_end != end:
        raise NOT_PLAIN
    payload = bytes(wire[payload_at:end])
    if len(payload) > CREATE_KEPT_BYTES:
        return _decode_create(payload, version)
    return _decoded_create(payload, version)


#: The longest Create payload (bytes) :func:`_decoded_create` keeps: an L4 Create's is a
#: few hundred at most; a longer one (an attribute of a megabyte, which the engine then
#: refuses) is decoded each time, so that 256 of them cannot hold 256 MiB of a worker.
CREATE_KEPT_BYTES = 1024


def _decode_create(payload_bytes: bytes, version: tuple[int, int]) -> CreateRequest:
    """The Create payload ``payload_bytes`` decoded, if it is an L4 Create the fast path
    answers (else NOT_PLAIN or a KmipError: declined)."""
    payload, after = decode_item(payload_bytes, 0, max_depth=8)
    if after != len(payload_bytes):
        raise NOT_PLAIN
    request = CreateRequest.from_item(payload, version)  # KmipError declines
    attributes = request.attributes
    if (request.template_names or request.protection_storage_masks is not None
            or not attributes or not is_l4_create(attributes)
            or any(attribute.tag not in _CREATE_ATTRIBUTE_TAGS for attribute in attributes)):
        raise NOT_PLAIN
    return request


#: :func:`_decode_create` of the last 256 distinct payloads of at most
#: :data:`CREATE_KEPT_BYTES`: an application sends the same Create again and again
#: (nothing in it names the new key), and the engine only reads a request, never changes
#: it. A payload that declines is not kept.
_decoded_create = lru_cache(maxsize=256)(_decode_create)
