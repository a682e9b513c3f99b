"""Correlation Values: a stream's state sealed under the key that runs the stream."""

from __future__ import annotations

import os

import pytest

from kcm.crypto.sealed_state import MAX_STREAM_BYTES, check_stream_size, open_state, seal_state
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError

SECRET = bytes(range(32))


def test_round_trip() -> None:
    value = seal_state(SECRET, b"purpose ", "uid-1", b"state", os.urandom)
    assert open_state(SECRET, b"purpose ", "uid-1", value, bytes) == b"state"


@pytest.mark.parametrize(("secret", "purpose", "uid"), [
    (bytes(32), b"purpose ", "uid-1"),  # another key's material
    (SECRET, b"other ", "uid-1"),  # another kind of stream
    (SECRET, b"purpose ", "uid-2"),  # another object
])
def test_a_value_opens_only_where_it_was_sealed(secret: bytes, purpose: bytes,
                                                 uid: str) -> None:
    value = seal_state(SECRET, b"purpose ", "uid-1", b"state", os.urandom)
    with pytest.raises(KmipError) as caught:
        open_state(secret, purpose, uid, value, bytes)
    assert caught.value.reason == ResultReason.INVALID_CORRELATION_VALUE


@pytest.mark.parametrize("value", [b"", b"\x02" + bytes(40), b"\x01short"])
def test_garbage_is_not_a_stream(value: bytes) -> None:
    with pytest.raises(KmipError) as caught:
        open_state(SECRET, b"purpose ", "uid-1", value, bytes)
    assert caught.value.reason == ResultReason.INVALID_CORRELATION_VALUE


def test_stream_size_is_bounded() -> None:
    check_stream_size(MAX_STREAM_BYTES)
    with pytest.raises(KmipError) as caught:
        check_stream_size(MAX_STREAM_BYTES + 1)
    assert caught.value.reason == ResultReason.SERVER_LIMIT_EXCEEDED
