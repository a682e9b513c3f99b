"""Attribute values are read as their type: one of the wrong item type is refused as the
request is decoded (Invalid Field), in 1.x and 2.x forms, whatever operation carries it;
vendor and unknown attributes are kept as given (kcm.kmip.attributes.check_value_type)."""

from __future__ import annotations

import pytest

from kcm.kmip.attributes import attribute_from_item, attributes_from_container
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType

T = ItemType


def v1(name: str, value_type: ItemType, value) -> Item:
    return Item(Tag.ATTRIBUTE, T.STRUCTURE, [
        Item(Tag.ATTRIBUTE_NAME, T.TEXT_STRING, name),
        Item(Tag.ATTRIBUTE_VALUE, value_type, value)])


WRONG = [
    ("Cryptographic Algorithm", Tag.CRYPTOGRAPHIC_ALGORITHM, T.TEXT_STRING, "AES", "Enumeration"),
    ("Cryptographic Length", Tag.CRYPTOGRAPHIC_LENGTH, T.BYTE_STRING, b"\x01", "Integer"),
    ("Activation Date", Tag.ACTIVATION_DATE, T.TEXT_STRING, "now", "Date Time"),
    ("Deactivation Date", Tag.DEACTIVATION_DATE, T.INTEGER, 5, "Date Time"),
    ("Name", Tag.NAME, T.TEXT_STRING, "x", "Structure"),
    ("Link", Tag.LINK, T.TEXT_STRING, "x", "Structure"),
    ("Sensitive", Tag.SENSITIVE, T.INTEGER, 1, "Boolean"),
    ("Object Type", Tag.OBJECT_TYPE, T.TEXT_STRING, "x", "Enumeration"),
    ("State", Tag.STATE, T.BIG_INTEGER, 1 << 4000, "Enumeration"),
]


@pytest.mark.parametrize(("name", "tag", "value_type", "value", "expected"), WRONG)
def test_a_value_of_the_wrong_type_is_invalid_field_in_1_x(name, tag, value_type, value,
                                                             expected) -> None:
    with pytest.raises(KmipError) as refused:
        attribute_from_item(v1(name, value_type, value), (1, 4))
    assert (refused.value.reason, refused.value.message) == (
        ResultReason.INVALID_FIELD, f"{name} must be of type {expected}")


@pytest.mark.parametrize(("name", "tag", "value_type", "value", "expected"), WRONG)
def test_a_value_of_the_wrong_type_is_invalid_field_in_2_x(name, tag, value_type, value,
                                                             expected) -> None:
    container = Item(Tag.ATTRIBUTES, T.STRUCTURE, [Item(tag, value_type, value)])
    with pytest.raises(KmipError) as refused:
        attributes_from_container(container, (2, 1))
    assert (refused.value.reason, refused.value.message) == (
        ResultReason.INVALID_FIELD, f"{name} must be of type {expected}")


def test_values_of_the_right_type_and_vendor_or_unknown_ones_are_kept() -> None:
    container = Item(Tag.ATTRIBUTES, T.STRUCTURE, [
        Item(Tag.CRYPTOGRAPHIC_ALGORITHM, T.ENUMERATION, 3),
        Item(Tag.ACTIVATION_DATE, T.DATE_TIME, 5),
        Item(0x54FFFF, T.TEXT_STRING, "an extension's tag"),
        Item(Tag.ATTRIBUTE, T.STRUCTURE, [
            Item(Tag.VENDOR_IDENTIFICATION, T.TEXT_STRING, "x"),
            Item(Tag.ATTRIBUTE_NAME, T.TEXT_STRING, "anything"),
            Item(Tag.ATTRIBUTE_VALUE, T.STRUCTURE, [])])])
    assert len(attributes_from_container(container, (2, 1))) == 4
    assert attribute_from_item(v1("x-custom", T.INTEGER, 7), (1, 4)).value.value == 7


def test_a_payload_of_more_than_max_attributes_is_server_limit_exceeded() -> None:
    from kcm.kmip.attributes import MAX_ATTRIBUTES
    from kcm.kmip.payloads import CreateRequest, LocateRequest

    def custom(count: int) -> list[Item]:
        return [v1(f"x-{n}", T.INTEGER, n) for n in range(count)]

    def template(count: int) -> Item:
        return Item(Tag.REQUEST_PAYLOAD, T.STRUCTURE, [
            Item(Tag.OBJECT_TYPE, T.ENUMERATION, 2),
            Item(Tag.TEMPLATE_ATTRIBUTE, T.STRUCTURE, custom(count))])

    def container(count: int) -> Item:
        return Item(Tag.REQUEST_PAYLOAD, T.STRUCTURE, [Item(Tag.ATTRIBUTES, T.STRUCTURE, [
            Item(Tag.COMMENT, T.TEXT_STRING, str(n)) for n in range(count)])])

    def created(count: int) -> Item:
        return Item(Tag.REQUEST_PAYLOAD, T.STRUCTURE, [
            Item(Tag.OBJECT_TYPE, T.ENUMERATION, 2), *container(count).value])

    def repeated(count: int) -> Item:  # a 1.x Locate's Attribute items
        return Item(Tag.REQUEST_PAYLOAD, T.STRUCTURE, custom(count))

    for payload, model, version in ((template, CreateRequest, (1, 4)),
                                    (created, CreateRequest, (2, 1)),
                                    (container, LocateRequest, (2, 1)),
                                    (repeated, LocateRequest, (1, 4))):
        at_most = model.from_item(payload(MAX_ATTRIBUTES), version)
        assert len(at_most.attributes) == MAX_ATTRIBUTES
        with pytest.raises(KmipError) as refused:
            model.from_item(payload(MAX_ATTRIBUTES + 1), version)
        assert (refused.value.reason, refused.value.message) == (
            ResultReason.SERVER_LIMIT_EXCEEDED,
            f"{MAX_ATTRIBUTES + 1} attributes; at most {MAX_ATTRIBUTES} are accepted in one "
            "request payload")
