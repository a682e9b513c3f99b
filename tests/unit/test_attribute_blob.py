"""The stored attribute list (kcm.core.attribute_blob): written without building its item
tree, byte for byte what encoding the tree writes, and read back as it was."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kcm.core.attribute_blob import decode_attributes, encode_attributes, reference_structure
from kcm.kmip.attributes import Attribute
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
