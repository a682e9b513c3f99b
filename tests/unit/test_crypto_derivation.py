"""Derive Key's HASH method (:mod:`kcm.crypto.derivation`): what it hashes, and what it
refuses."""

from __future__ import annotations

import pytest

from kcm.crypto.derivation import derive
from kcm.kmip.attributes import CryptographicParameters
from kcm.kmip.enums import CryptographicAlgorithm, DerivationMethod, HashingAlgorithm, ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip.payloads import DerivationParameters

_AES = CryptographicAlgorithm.AES


def test_hash_without_derivation_data_is_the_hash_of_the_base_key() -> None:
    """TC-DERIVEKEY-1 (KMIP 1.4 test cases): SHA-256 of the base key, cut to 128 bits."""
    key = bytes.fromhex("00112233445566778899aabbccddeeff")
    parameters = DerivationParameters(cryptographic_parameters=CryptographicParameters(
        hashing_algorithm=HashingAlgorithm.SHA_256))
    assert derive(DerivationMethod.HASH, parameters, key, None, 16, _AES) == bytes.fromhex(
        "a8faed6abbf35c12a4b26e40f6feb19d")
    assert derive(DerivationMethod.HASH, DerivationParameters(), b"\x01" * 32, None, 32,
                  _AES) != derive(DerivationMethod.HASH, DerivationParameters(),
                                  b"\x02" * 32, None, 32, _AES)


@pytest.mark.parametrize("data", [b"customer-42", b""])
def test_hash_with_derivation_data_is_refused(data: bytes) -> None:
    """HASH hashes "the derivation key or the derivation data" (KMIP 1.4 §4.6): a hash of
    the public Derivation Data alone would give every base key the same derived key, one
    anyone can compute. It is refused (as PyKMIP's server refuses both at once); no OASIS
    case sends Derivation Data with HASH."""
    with pytest.raises(KmipError) as refused:
        derive(DerivationMethod.HASH, DerivationParameters(derivation_data=data),
               b"\x01" * 32, data, 32, _AES)
    assert refused.value.reason == ResultReason.INVALID_FIELD
    assert refused.value.message == "HASH derivation takes no Derivation Data"
