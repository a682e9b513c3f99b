"""Derive Key's bounds (:mod:`kcm.crypto.derivation`): the length of a derived key, and the
PBKDF2 work of one derivation, refused before any work (Server Limit Exceeded)."""

from __future__ import annotations

import time

import pytest

from kcm.crypto.derivation import MAX_DERIVED_BYTES, MAX_PBKDF2_ITERATIONS, derive
from kcm.kmip.attributes import CryptographicParameters
from kcm.kmip.enums import CryptographicAlgorithm, DerivationMethod, HashingAlgorithm, ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip.payloads import DerivationParameters

_AES = CryptographicAlgorithm.AES
KEY = b"\x01" * 32


def pbkdf2(count: int, hashing: int | None = None) -> DerivationParameters:
    return DerivationParameters(salt=b"salt", iteration_count=count,
                                cryptographic_parameters=None if hashing is None else
                                CryptographicParameters(hashing_algorithm=hashing))


@pytest.mark.parametrize("method, parameters, data", [
    (DerivationMethod.PBKDF2, pbkdf2(1), None),
    (DerivationMethod.HMAC, DerivationParameters(salt=b"salt"), b"info"),
    (DerivationMethod.NIST800_108_C, DerivationParameters(), b"label"),
    (DerivationMethod.HASH, DerivationParameters(), None),
])
def test_a_key_longer_than_the_limit_is_refused(method, parameters, data) -> None:
    """A 300-byte request once stored a 64 MiB derived key (up to 256 MiB): no message
    can carry it, and a batch of Gets of it cost GiBs."""
    assert MAX_DERIVED_BYTES == 512
    if method != DerivationMethod.HASH:
        assert len(derive(method, parameters, KEY, data, MAX_DERIVED_BYTES, _AES)) == 512
    with pytest.raises(KmipError) as refused:
        derive(method, parameters, KEY, data, MAX_DERIVED_BYTES + 1, _AES)
    assert (refused.value.reason, refused.value.message) == (
        ResultReason.SERVER_LIMIT_EXCEEDED, "Derive Key makes keys of at most 4096 bits")


@pytest.mark.parametrize("count, length, hashing, blocks", [
    (MAX_PBKDF2_ITERATIONS + 1, 32, None, 1),
    (2**31 - 1, 16, None, 1),
    (MAX_PBKDF2_ITERATIONS // 2 + 1, 64, HashingAlgorithm.SHA_256, 2),
    (MAX_PBKDF2_ITERATIONS // 26 + 1, 512, HashingAlgorithm.SHA_1, 26),
])
def test_pbkdf2_work_over_the_limit_is_refused_at_once(count, length, hashing, blocks) -> None:
    """PBKDF2 runs its Iteration Count for each hash-sized block of the key: 2**31 - 1
    iterations held the writer thread for minutes."""
    began = time.monotonic()
    with pytest.raises(KmipError) as refused:
        derive(DerivationMethod.PBKDF2, pbkdf2(count, hashing), KEY, None, length, _AES)
    assert time.monotonic() - began < 0.05
    assert (refused.value.reason, refused.value.message) == (
        ResultReason.SERVER_LIMIT_EXCEEDED,
        f"PBKDF2 Iteration Count {count} over {blocks} block(s) exceeds the server's limit "
        "of 1000000 iterations")


def test_pbkdf2_within_the_limit_still_derives() -> None:
    """RFC 6070's 4096-iteration case, and the most work allowed for two blocks."""
    assert derive(DerivationMethod.PBKDF2, pbkdf2(4096, HashingAlgorithm.SHA_1), b"password",
                  None, 20, _AES) == bytes.fromhex("4b007901b765489abead49d926f721d065a429c1")
    assert len(derive(DerivationMethod.PBKDF2, pbkdf2(MAX_PBKDF2_ITERATIONS // 4),
                      KEY, None, 64, _AES)) == 64


def test_a_request_s_derivations_share_one_pbkdf2_bound() -> None:
    """Each derivation within the bound, their sum not: the writer thread runs every
    tenant's writes, and a batch of them must not hold it for a batch's worth."""
    from kcm.core.context import RequestWork

    work = RequestWork()
    half = MAX_PBKDF2_ITERATIONS // 2
    work.charge_pbkdf2(half)
    work.charge_pbkdf2(half)
    with pytest.raises(KmipError) as refused:
        work.charge_pbkdf2(1)
    assert refused.value.reason == ResultReason.SERVER_LIMIT_EXCEEDED
    assert "in all" in str(refused.value)
