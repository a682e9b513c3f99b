"""The codec against material nobody here wrote: the spec's examples and the KMIP 1.1 test cases."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from kcm.ttlv import TtlvError, decode, encode
from kcm.ttlv.types import TYPES_BY_NAME
from tests.vectors import iter_v11_hex_messages

V11_MESSAGES = list(iter_v11_hex_messages())


def _spec_examples(vectors: Path) -> list[dict]:
    path = vectors / "oasis-spec-ttlv-examples" / "ttlv-encoding-examples.json"
    return json.loads(path.read_text())["examples"]


def test_every_spec_example_encodes_byte_for_byte(vectors: Path) -> None:
    examples = _spec_examples(vectors)
    assert len(examples) == 10
    for example in examples:
        wire = bytes.fromhex(example["hex"])
        item = decode(wire)
        assert item.type == TYPES_BY_NAME[example["type"]]
        assert item.tag == int(example["tag"], 16)
        assert encode(item) == wire, example["description"]
        if item.type.name in ("INTEGER", "LONG_INTEGER", "ENUMERATION", "INTERVAL"):
            assert item.value == example["value"]


def test_the_v11_text_holds_520_messages() -> None:
    assert len(V11_MESSAGES) == 520
    requests = sum(1 for _, m in V11_MESSAGES if m[2] == 0x78)
    assert requests == 260
    print(f"\nKMIP 1.1 test-case text: {len(V11_MESSAGES)} TTLV messages checked")


@pytest.mark.parametrize(("line", "wire"), V11_MESSAGES, ids=[f"line{n}" for n, _ in V11_MESSAGES])
def test_v11_message_round_trips_byte_for_byte(line: int, wire: bytes) -> None:
    assert encode(decode(wire)) == wire


def _item_offsets(wire: bytes) -> list[int]:
    """Offsets of every item header in a well-formed message."""
    offsets, stack = [], [(0, len(wire))]
    while stack:
        pos, end = stack.pop()
        while pos < end:
            offsets.append(pos)
            tag_type, length = struct.unpack_from(">II", wire, pos)
            if tag_type & 0xFF == 1:
                stack.append((pos + 8, pos + 8 + length))
                pos += 8 + length
            else:
                pos += 8 + ((length + 7) & ~7)
    return offsets


@pytest.mark.parametrize(("line", "wire"), V11_MESSAGES, ids=[f"line{n}" for n, _ in V11_MESSAGES])
def test_v11_message_truncated_or_corrupted_is_refused(line: int, wire: bytes) -> None:
    for cut in sorted({1, 7, 8, 9, len(wire) // 2, len(wire) - 8, len(wire) - 1}):
        with pytest.raises(TtlvError):
            decode(wire[:cut])
    grown = bytearray(wire)
    struct.pack_into(">I", grown, 4, len(wire) - 8 + 8)
    with pytest.raises(TtlvError, match="overruns"):
        decode(bytes(grown))
    for offset in _item_offsets(wire)[1:]:
        bad_type = bytearray(wire)
        bad_type[offset + 3] = 0xEE
        with pytest.raises(TtlvError) as caught:
            decode(bytes(bad_type))
        assert caught.value.offset == offset + 3
