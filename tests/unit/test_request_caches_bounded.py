"""The caches that keep what a request decoded to (the fast path's L4 Creates, the plain
reader's Cryptographic Parameters, the 1.x attribute names) keep only small keys: a client
sending distinct payloads of a megabyte (refused or not) pinned 490 MiB of a gateway
worker with 256 Creates, 128 MiB of the core with 63 Encrypts, and 200 MiB with 200
attribute names, until other requests pushed them out."""

from __future__ import annotations

import contextlib

from kcm.gateway import fast_path
from kcm.kernel import plain_messages
from kcm.kmip import attributes
from kcm.kmip.attributes import VENDOR_TAG, Attribute, CryptographicParameters
from kcm.kmip.enums import ObjectType
from kcm.kmip.payloads import CreateRequest
from kcm.kmip.tags import Tag
from kcm.testing.requests import aes256
from kcm.ttlv import Item, ItemType, encode

V21 = (2, 1)


def _create_wire(note: bytes) -> bytes:
    level = Attribute(VENDOR_TAG, Item(Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING, "L4"),
                      None, "x", "kcm-level")
    junk = Attribute(VENDOR_TAG, Item(Tag.ATTRIBUTE_VALUE, ItemType.BYTE_STRING, note),
                     None, "x", "junk")
    return encode(CreateRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                attributes=aes256([level, junk])).to_item(V21))


def _decode(wire: bytes) -> None:
    with contextlib.suppress(Exception):  # declined or refused: the cache is looked at
        fast_path._create_request(wire, 0, 8, len(wire), V21)


def test_the_fast_paths_create_cache_keeps_small_payloads_only() -> None:
    fast_path._decoded_create.cache_clear()
    _decode(_create_wire(b"n" * 16))
    assert fast_path._decoded_create.cache_info().currsize == 1
    for i in range(4):
        _decode(_create_wire(bytes([i]) * 100_000))
    assert fast_path._decoded_create.cache_info().currsize == 1


def test_the_plain_readers_parameters_cache_keeps_small_encodings_only() -> None:
    plain_messages._PARAMETERS.clear()
    for p_source in (b"p" * 16, b"q" * 100_000):
        wire = encode(CryptographicParameters(p_source=p_source).to_item(V21))
        parameters = plain_messages._parameters(wire, 0, len(wire))
        assert parameters.p_source == p_source
    assert [len(key) for key in plain_messages._PARAMETERS] == [32]  # the small one only


def test_long_attribute_names_are_not_kept() -> None:
    attributes._from_v1_name_kept.cache_clear()
    attributes._v1_name_kept.cache_clear()
    for i in range(3):
        name = f"x-{i}" + "a" * 100_000
        assert attributes._from_v1_name(name, (1, 4)) == (VENDOR_TAG, "x", name[2:])
        assert attributes._v1_name(VENDOR_TAG, "x", name[2:], (1, 4)) == name
    assert attributes._from_v1_name("x-note", (1, 4)) == (VENDOR_TAG, "x", "note")
    assert attributes._from_v1_name_kept.cache_info().currsize == 1
    assert attributes._v1_name_kept.cache_info().currsize == 0
