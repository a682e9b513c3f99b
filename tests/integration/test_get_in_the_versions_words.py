"""A Get answers an object only in words the request's version has, at kcm-core and through
kcm-gateway: an object whose Object Type the version lacks (a PGP Key to KMIP 1.0, a
Template to 2.x, a Certificate Request to 1.x) is refused, where it was a Success whose
payload the version filter had emptied of the object; a key stored in a 1.x
elliptic-curve format is answered to 2.x in 2.x's Transparent EC format (the same fields),
where its Key Block lost its required Key Format Type; and a key of an algorithm the
version lacks (KMIP 1.4's ChaCha20 to 1.2) is refused, where kcm-core's fast writer sent the
1.4 value. The suite's strict version check is on: every Success here is checked to carry
nothing its version does not define."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from kcm.kmip.enums import KeyFormatType, ObjectType, Operation, ResultReason, ResultStatus
from kcm.kmip.tags import Tag
from kcm.testing.processes import CoreProcess, GatewayProcess, deploy, running
from kcm.ttlv import Item, ItemType, decode, encode

_S, _E, _I, _T, _B = (ItemType.STRUCTURE, ItemType.ENUMERATION, ItemType.INTEGER,
                      ItemType.TEXT_STRING, ItemType.BYTE_STRING)


def st(tag: int, *children: Item) -> Item:
    return Item(int(tag), _S, list(children))


def en(tag: int, value: int) -> Item:
    return Item(int(tag), _E, int(value))


def v1(name: str, kind: ItemType, value: object) -> Item:
    return st(Tag.ATTRIBUTE, Item(Tag.ATTRIBUTE_NAME, _T, name),
              Item(Tag.ATTRIBUTE_VALUE, kind, value))


def message(version: tuple[int, int], operation: int, *payload: Item) -> bytes:
    header = st(Tag.REQUEST_HEADER,
                st(Tag.PROTOCOL_VERSION, Item(Tag.PROTOCOL_VERSION_MAJOR, _I, version[0]),
                   Item(Tag.PROTOCOL_VERSION_MINOR, _I, version[1])),
                Item(Tag.BATCH_COUNT, _I, 1))
    item = st(Tag.BATCH_ITEM, en(Tag.OPERATION, operation), st(Tag.REQUEST_PAYLOAD, *payload))
    return encode(st(Tag.REQUEST_MESSAGE, header, item))


def first(item: Item, tag: int) -> Item | None:
    if item.tag == tag:
        return item
    if item.type is _S:
        for child in item.value:  # type: ignore[union-attr]
            found = first(child, tag)
            if found is not None:
                return found
    return None


@pytest.fixture(scope="module")
def planes(tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[dict[str, CoreProcess | GatewayProcess]]:
    root = tmp_path_factory.mktemp("versions-words")
    core = deploy(root / "core", f"sqlite:///{root / 'core' / 'kcm.db'}")
    with running(core, GatewayProcess(root / "gateway", core)) as (core, gateway):
        yield {"core": core, "gateway": gateway}


def ask(server: CoreProcess | GatewayProcess, wire: bytes) -> Item:
    with server.client("admin") as client:
        return decode(client.send(wire))


def register(planes: dict, version: tuple[int, int], object_type: int, attributes: Item,
             managed: Item) -> str:
    answer = ask(planes["core"], message(version, Operation.REGISTER,
                                         en(Tag.OBJECT_TYPE, object_type), attributes, managed))
    assert first(answer, Tag.RESULT_STATUS).value == ResultStatus.SUCCESS, answer
    return first(answer, Tag.UNIQUE_IDENTIFIER).value


def get(server: CoreProcess | GatewayProcess, version: tuple[int, int], uid: str) -> Item:
    return ask(server, message(version, Operation.GET, Item(Tag.UNIQUE_IDENTIFIER, _T, uid)))


def refused(answer: Item) -> tuple[int, str]:
    assert first(answer, Tag.RESULT_STATUS).value == ResultStatus.OPERATION_FAILED, answer
    assert first(answer, Tag.RESPONSE_PAYLOAD) is None
    return first(answer, Tag.RESULT_REASON).value, first(answer, Tag.RESULT_MESSAGE).value


def no_usage(version: tuple[int, int]) -> Item:
    if version >= (2, 0):
        return st(Tag.ATTRIBUTES, Item(Tag.CRYPTOGRAPHIC_USAGE_MASK, _I, 1))
    return st(Tag.TEMPLATE_ATTRIBUTE, v1("Cryptographic Usage Mask", _I, 1))


@pytest.fixture(scope="module")
def stored(planes: dict) -> dict[str, str]:
    """One object of each kind, registered in a version that has it."""
    raw = st(Tag.KEY_BLOCK, en(Tag.KEY_FORMAT_TYPE, KeyFormatType.RAW),
             st(Tag.KEY_VALUE, Item(Tag.KEY_MATERIAL, _B, os.urandom(32))))
    chacha = st(Tag.KEY_BLOCK, en(Tag.KEY_FORMAT_TYPE, KeyFormatType.RAW),
                st(Tag.KEY_VALUE, Item(Tag.KEY_MATERIAL, _B, os.urandom(32))),
                en(Tag.CRYPTOGRAPHIC_ALGORITHM, 0x1C), Item(Tag.CRYPTOGRAPHIC_LENGTH, _I, 256))
    ecdsa = st(Tag.KEY_BLOCK, en(Tag.KEY_FORMAT_TYPE, KeyFormatType.TRANSPARENT_ECDSA_PRIVATE_KEY),
               st(Tag.KEY_VALUE, st(Tag.KEY_MATERIAL, en(Tag.RECOMMENDED_CURVE, 7),
                                    Item(Tag.D, ItemType.BIG_INTEGER, 12345))),
               en(Tag.CRYPTOGRAPHIC_ALGORITHM, 6), Item(Tag.CRYPTOGRAPHIC_LENGTH, _I, 256))
    return {
        "pgp": register(planes, (1, 2), ObjectType.PGP_KEY, no_usage((1, 2)),
                        st(Tag.PGP_KEY, Item(Tag.PGP_KEY_VERSION, _I, 4), raw)),
        "template": register(planes, (1, 4), ObjectType.TEMPLATE, st(Tag.TEMPLATE_ATTRIBUTE),
                             st(Tag.TEMPLATE, v1("Cryptographic Algorithm", _E, 3))),
        "request": register(planes, (2, 0), ObjectType.CERTIFICATE_REQUEST, st(Tag.ATTRIBUTES),
                            st(Tag.CERTIFICATE_REQUEST, en(Tag.CERTIFICATE_REQUEST_TYPE, 2),
                               Item(Tag.CERTIFICATE_REQUEST_VALUE, _B, b"0\x03\x02\x01\x00"))),
        "ecdsa": register(planes, (1, 4), ObjectType.PRIVATE_KEY, no_usage((1, 4)),
                          st(Tag.PRIVATE_KEY, ecdsa)),
        "chacha": register(planes, (1, 4), ObjectType.SYMMETRIC_KEY,
                           st(Tag.TEMPLATE_ATTRIBUTE, v1("Cryptographic Usage Mask", _I, 12)),
                           st(Tag.SYMMETRIC_KEY, chacha)),
    }


@pytest.mark.parametrize("plane", ["core", "gateway"])
@pytest.mark.parametrize(("kind", "version", "reason", "says"), [
    ("pgp", (1, 0), ResultReason.ILLEGAL_OPERATION, "a PGP_KEY is not an object of KMIP 1.0"),
    ("pgp", (1, 1), ResultReason.ILLEGAL_OPERATION, "a PGP_KEY is not an object of KMIP 1.1"),
    ("template", (2, 0), ResultReason.INVALID_OBJECT_TYPE, "a TEMPLATE is not an object"),
    ("template", (2, 1), ResultReason.INVALID_OBJECT_TYPE, "a TEMPLATE is not an object"),
    ("request", (1, 0), ResultReason.ILLEGAL_OPERATION, "a CERTIFICATE_REQUEST is not an"),
    ("request", (1, 4), ResultReason.ILLEGAL_OPERATION, "a CERTIFICATE_REQUEST is not an"),
    ("chacha", (1, 2), ResultReason.FEATURE_NOT_SUPPORTED, "a CHACHA20 key cannot be said"),
    ("chacha", (1, 3), ResultReason.FEATURE_NOT_SUPPORTED, "a CHACHA20 key cannot be said"),
])
def test_an_object_the_version_cannot_say_is_refused(
        planes: dict, stored: dict, plane: str, kind: str, version: tuple[int, int],
        reason: int, says: str) -> None:
    got_reason, message_text = refused(get(planes[plane], version, stored[kind]))
    assert got_reason == reason and message_text.startswith(says), message_text


@pytest.mark.parametrize("plane", ["core", "gateway"])
@pytest.mark.parametrize(("kind", "version", "object_type"), [
    ("pgp", (1, 2), ObjectType.PGP_KEY), ("template", (1, 4), ObjectType.TEMPLATE),
    ("request", (2, 1), ObjectType.CERTIFICATE_REQUEST),
    ("chacha", (1, 4), ObjectType.SYMMETRIC_KEY),
])
def test_in_a_version_that_has_it_the_object_is_answered_whole(
        planes: dict, stored: dict, plane: str, kind: str, version: tuple[int, int],
        object_type: int) -> None:
    answer = get(planes[plane], version, stored[kind])
    assert first(answer, Tag.RESULT_STATUS).value == ResultStatus.SUCCESS
    assert first(answer, Tag.OBJECT_TYPE).value == object_type
    if kind == "chacha":
        assert first(answer, Tag.CRYPTOGRAPHIC_ALGORITHM).value == 0x1C


@pytest.mark.parametrize("plane", ["core", "gateway"])
@pytest.mark.parametrize(("version", "key_format"), [
    ((1, 4), KeyFormatType.TRANSPARENT_ECDSA_PRIVATE_KEY),
    ((2, 0), KeyFormatType.TRANSPARENT_EC_PRIVATE_KEY),
    ((2, 1), KeyFormatType.TRANSPARENT_EC_PRIVATE_KEY),
])
def test_a_1x_elliptic_curve_key_is_answered_to_2x_as_transparent_ec(
        planes: dict, stored: dict, plane: str, version: tuple[int, int],
        key_format: int) -> None:
    answer = get(planes[plane], version, stored["ecdsa"])
    assert first(answer, Tag.RESULT_STATUS).value == ResultStatus.SUCCESS
    block = first(answer, Tag.KEY_BLOCK)
    assert first(block, Tag.KEY_FORMAT_TYPE).value == key_format
    material = first(block, Tag.KEY_MATERIAL)
    assert first(material, Tag.RECOMMENDED_CURVE).value == 7
    assert first(material, Tag.D).value == 12345
