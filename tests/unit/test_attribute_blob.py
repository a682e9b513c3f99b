"""The stored attribute list (kcm.core.attribute_blob): written without building its item
tree, byte for byte what encoding the tree writes, and read back as it was."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcm.core.attribute_blob import (
    decode_attributes,
    encode_attributes,
    kept_encoding,
    reference_structure,
)
from kcm.kmip.attributes import Attribute
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, encode
from tests.unit.test_ttlv_properties import trees

attributes = st.builds(
    lambda value, index, vendor, name: Attribute(value.tag, value, index, vendor, name),
    trees, st.none() | st.integers(-(2**31), 2**31 - 1), st.none() | st.text(max_size=12),
    st.none() | st.text(max_size=12))


@given(st.lists(attributes, max_size=8))
def test_written_as_the_structure_is_encoded(listed: list[Attribute]) -> None:
    blob = encode_attributes(listed)
    assert blob == encode(reference_structure(listed))
    assert decode_attributes(blob) == listed


def test_an_attribute_without_a_value_is_refused() -> None:
    with pytest.raises(ValueError, match="must have a value"):
        encode_attributes([Attribute(0x42000A, None)])
    with pytest.raises(ValueError, match="must have a value"):
        reference_structure([Attribute(0x42000A, None)])


def test_an_empty_list() -> None:
    assert encode_attributes([]) == encode(Item(0x54A001, reference_structure([]).type, []))
    assert decode_attributes(encode_attributes([])) == []


@given(st.lists(attributes, max_size=8), st.lists(trees, min_size=1, max_size=4))
def test_kept_encodings_are_the_items_own(listed: list[Attribute], values: list[Item]) -> None:
    """Items whose encoding is kept (what the server sets on every new object) are written
    exactly as any other, beside items that are not kept."""
    kept = [Attribute(value.tag, kept_encoding(value), 1) for value in values]
    mixed = [*kept, *listed, *kept]
    blob = encode_attributes(mixed)
    assert blob == encode(reference_structure(mixed))
    assert decode_attributes(blob) == mixed


def test_the_server_set_attributes_of_a_create_are_stored_as_they_encode() -> None:
    from kcm.core.operations import create

    flags = [create._flag(tag, value) for (tag, value) in create._FLAGS]
    fixed = [Attribute(Tag.LEASE_TIME, create._LEASE),
             Attribute(Tag.RANDOM_NUMBER_GENERATOR, create._GENERATED),
             Attribute(Tag.OPERATION_POLICY_NAME, create._DEFAULT_POLICY), *flags]
    assert encode_attributes(fixed) == encode(reference_structure(fixed))
    decoded = decode_attributes(encode_attributes(fixed))
    assert decoded == fixed
    assert (decoded[0].typed, decoded[2].typed) == (create.LEASE_TIME, "default")
    assert {(a.tag, a.typed) for a in decoded[3:]} == set(create._FLAGS)


@given(st.lists(st.tuples(st.sampled_from([1023, 1024, 1025, 1031, 1032, 70_001]),
                          st.booleans()), min_size=1, max_size=4),
       st.lists(attributes, max_size=3))
def test_long_values_appended_whole_are_written_alike(
        lengths: list[tuple[int, bool]], listed: list[Attribute]) -> None:
    """Values over the codec's joining threshold (1 KiB) are appended to the parts as they
    are (one copy in all): byte for byte what the tree encodes, padding included."""
    from kcm.ttlv import ItemType

    long = [Attribute.vendor("x", f"v{n}", Item(0, ItemType.TEXT_STRING, "\u00e9" * (size // 2))
                             if text else Item(0, ItemType.BYTE_STRING, b"\x01" * size))
            for n, (size, text) in enumerate(lengths)]
    mixed = [*listed, *long]
    blob = encode_attributes(mixed)
    assert blob == encode(reference_structure(mixed))
    assert decode_attributes(blob) == mixed
