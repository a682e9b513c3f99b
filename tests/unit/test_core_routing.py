"""kcm-core's choice of path for a request (``_beside_writer``): its byte scan for a
Locate never answers otherwise than the peek would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kcm.core.operations import READ_ONLY
from kcm.core.request_handler import _beside_writer
from kcm.kmip.enums import Operation
from kcm.ttlv import Item, ItemType, encode
from kcm.ttlv.peek import operation_values, peek_request
from kcm.ttlv.types import structure
from tests.vectors import iter_v11_hex_messages

_LOCATE = int(Operation.LOCATE)
_OPERATIONS = sorted({int(operation) for operation in Operation})


def _by_peek(wire: bytes) -> bool:
    """The rule as stated: a readable batch of read-only operations with a Locate in it."""
    try:
        operations = [item.operation for item in peek_request(wire).items]
    except Exception:
        return False
    return _LOCATE in operations and all(operation in READ_ONLY for operation in operations)


def _request(items: list[tuple[int, int, bytes]]) -> bytes:
    header = structure(
        0x420077,
        structure(0x420069, Item(0x42006A, ItemType.INTEGER, 1),
                  Item(0x42006B, ItemType.INTEGER, 4)),
        Item(0x42000D, ItemType.INTEGER, len(items)))
    batch = []
    for operation, length, payload in items:
        wire = encode(Item(0x42005C, ItemType.ENUMERATION, operation))
        if length != 4:  # an Operation of another length, which the peek still reads
            wire = wire[:4] + length.to_bytes(4, "big") + wire[8:]
        batch.append((wire, payload))
    body = encode(header)
    for operation_wire, payload in batch:
        inner = operation_wire + encode(structure(
            0x420079, Item(0x420094, ItemType.BYTE_STRING, payload)))
        body += bytes.fromhex("42000f01") + len(inner).to_bytes(4, "big") + inner
    return bytes.fromhex("42007801") + len(body).to_bytes(4, "big") + body


_LOOKALIKE = bytes.fromhex("42005c05000000040000000800000000")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(
    st.one_of(st.sampled_from(_OPERATIONS), st.just(_LOCATE), st.integers(0, 2**32 - 1)),
    st.sampled_from([4, 4, 4, 1, 8]),
    st.one_of(st.binary(max_size=40), st.just(_LOOKALIKE),
              st.binary(max_size=8).map(lambda b: b + _LOOKALIKE))),
    min_size=1, max_size=4))
def test_the_scan_answers_as_the_peek(items: list[tuple[int, int, bytes]]) -> None:
    wire = _request(items)
    assert _beside_writer(wire) == _by_peek(wire)
    assert _beside_writer(wire, operation_values(wire)) == _by_peek(wire)
    if _by_peek(wire):
        assert _LOCATE.to_bytes(4, "big") in operation_values(wire)


def test_the_scan_answers_as_the_peek_on_every_v11_request() -> None:
    seen = 0
    for _name, wire in iter_v11_hex_messages():
        assert _beside_writer(wire) == _by_peek(wire)
        seen += 1
    assert seen > 100


@given(st.binary(max_size=200))
def test_garbage_takes_the_write_path(wire: bytes) -> None:
    assert _beside_writer(wire) == _by_peek(wire)


def test_a_locate_goes_beside_the_writer_unless_the_batch_writes() -> None:
    locate = (_LOCATE, 4, b"")
    assert _beside_writer(_request([locate]))
    assert _beside_writer(_request([(int(Operation.GET_ATTRIBUTES), 4, b""), locate]))
    assert not _beside_writer(_request([(int(Operation.GET), 4, b""), locate]))
    assert not _beside_writer(_request([(int(Operation.CREATE), 4, b""), locate]))
    assert not _beside_writer(_request([(int(Operation.GET), 4, _LOOKALIKE)]))
