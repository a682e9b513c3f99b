"""AEAD Decrypt in :mod:`kcm.crypto.symmetric` takes a tag of exactly the Tag Length in
force (the request's, else the key's stored one, else 16), never a shorter prefix."""

from __future__ import annotations

import pytest

from kcm.crypto.symmetric import decrypt_once, encrypt_once, resolve_spec
from kcm.kmip.attributes import CryptographicParameters
from kcm.kmip.enums import CryptographicAlgorithm, ResultReason
from kcm.kmip.errors import KmipError

_KEY = bytes(range(32))
_IV = bytes(12)
_ALGORITHMS = [CryptographicAlgorithm.AES, CryptographicAlgorithm.CHACHA20POLY1305]


def _refused(spec, data: bytes, tag: bytes) -> KmipError:
    with pytest.raises(KmipError) as refused:
        decrypt_once(spec, _KEY, _IV, data, b"aad", tag)
    return refused.value


@pytest.mark.parametrize("algorithm", _ALGORITHMS)
def test_a_prefix_of_the_default_16_byte_tag_is_refused(algorithm: int) -> None:
    spec = resolve_spec(algorithm, None, None)
    data, tag = encrypt_once(spec, _KEY, _IV, b"record", b"aad")
    assert tag is not None and len(tag) == 16
    assert decrypt_once(spec, _KEY, _IV, data, b"aad", tag) == b"record"
    for length in (12, 8, 4):
        error = _refused(spec, data, tag[:length])
        assert error.reason == ResultReason.CRYPTOGRAPHIC_FAILURE
        assert error.message == f"the tag is {length} bytes; the Tag Length is 16"


@pytest.mark.parametrize("algorithm", _ALGORITHMS)
def test_the_key_s_tag_length_holds_unless_the_request_says(algorithm: int) -> None:
    stored = CryptographicParameters(tag_length=12)
    spec = resolve_spec(algorithm, stored, None)
    data, tag = encrypt_once(spec, _KEY, _IV, b"record", b"aad")
    assert tag is not None and len(tag) == 12
    assert decrypt_once(spec, _KEY, _IV, data, b"aad", tag) == b"record"
    assert _refused(spec, data, tag[:8]).reason == ResultReason.CRYPTOGRAPHIC_FAILURE
    asked = resolve_spec(algorithm, stored, CryptographicParameters(tag_length=8))
    assert decrypt_once(asked, _KEY, _IV, data, b"aad", tag[:8]) == b"record"
    assert _refused(asked, data, tag).reason == ResultReason.CRYPTOGRAPHIC_FAILURE
