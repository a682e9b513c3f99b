"""Correlation Values: a stream's state sealed under the key that runs the stream."""

from __future__ import annotations

import os

import pytest

from kcm.crypto.sealed_state import (
    MAX_STREAM_BYTES,
    STREAM_LIFETIME,
    StreamPart,
    check_stream_size,
    open_state,
    seal_state,
)
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError

SECRET = bytes(range(32))
NOW = 1_800_000_000
PART = StreamPart(b"i" * 16, 3, NOW + 10)


def test_round_trip() -> None:
    value = seal_state(SECRET, b"purpose ", "uid-1", b"state", os.urandom, part=PART)
    assert open_state(SECRET, b"purpose ", "uid-1", value, bytes, now=NOW) == (PART, b"state")


def test_a_stream_names_its_parts_in_order() -> None:
    first = StreamPart.first(NOW, lambda n: b"\x07" * n)
    assert first == StreamPart(b"\x07" * 16, 0, NOW + STREAM_LIFETIME)
    assert first.following(NOW + 5) == StreamPart(b"\x07" * 16, 1, NOW + 5 + STREAM_LIFETIME)
    # Each seal has its own nonce: two values of one part differ, and both name it.
    one, two = (seal_state(SECRET, b"p ", "u", b"", os.urandom, part=first) for _ in "ab")
    assert one != two
    assert open_state(SECRET, b"p ", "u", two, bytes, now=NOW)[0] == first


def test_an_expired_value_does_not_open() -> None:
    value = seal_state(SECRET, b"purpose ", "uid-1", b"state", os.urandom, part=PART)
    open_state(SECRET, b"purpose ", "uid-1", value, bytes, now=PART.expires - 1)
    with pytest.raises(KmipError) as caught:
        open_state(SECRET, b"purpose ", "uid-1", value, bytes, now=PART.expires)
    assert caught.value.reason == ResultReason.INVALID_CORRELATION_VALUE
    assert caught.value.message == "the Correlation Value has expired"


@pytest.mark.parametrize(("secret", "purpose", "uid"), [
    (bytes(32), b"purpose ", "uid-1"),  # another key's material
    (SECRET, b"other ", "uid-1"),  # another kind of stream
    (SECRET, b"purpose ", "uid-2"),  # another object
])
def test_a_value_opens_only_where_it_was_sealed(secret: bytes, purpose: bytes,
                                                 uid: str) -> None:
    value = seal_state(SECRET, b"purpose ", "uid-1", b"state", os.urandom, part=PART)
    with pytest.raises(KmipError) as caught:
        open_state(secret, purpose, uid, value, bytes, now=NOW)
    assert caught.value.reason == ResultReason.INVALID_CORRELATION_VALUE


@pytest.mark.parametrize("value", [b"", b"\x01" + bytes(40), b"\x02" + bytes(40), b"\x02short"])
def test_garbage_is_not_a_stream(value: bytes) -> None:
    with pytest.raises(KmipError) as caught:
        open_state(SECRET, b"purpose ", "uid-1", value, bytes, now=NOW)
    assert caught.value.reason == ResultReason.INVALID_CORRELATION_VALUE


def test_stream_size_is_bounded() -> None:
    check_stream_size(MAX_STREAM_BYTES)
    with pytest.raises(KmipError) as caught:
        check_stream_size(MAX_STREAM_BYTES + 1)
    assert caught.value.reason == ResultReason.SERVER_LIMIT_EXCEEDED
