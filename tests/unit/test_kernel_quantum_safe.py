"""Quantum Safe: which new keys the server may call quantum safe (kcm.kernel.quantum_safe)."""

from __future__ import annotations

import pytest

from kcm.kernel.quantum_safe import check_quantum_safe, is_quantum_safe
from kcm.kmip.enums import CryptographicAlgorithm as A
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError


def test_quantum_safe_keys_are_256_bit_symmetric_or_mac_keys() -> None:
    assert is_quantum_safe(A.AES, 256) and is_quantum_safe(A.HMAC_SHA512, 512)
    assert not is_quantum_safe(A.AES, 128) and not is_quantum_safe(A.RSA, 4096)
    assert not is_quantum_safe(A.DES3, 168) and not is_quantum_safe(A.AES, None)


def test_only_a_key_asked_to_be_quantum_safe_is_judged() -> None:
    check_quantum_safe(None, A.AES, 128)
    check_quantum_safe(False, A.RSA, 2048)
    check_quantum_safe(True, A.AES, 256)
    with pytest.raises(KmipError) as raised:
        check_quantum_safe(True, A.AES, 128)
    assert raised.value.reason == ResultReason.GENERAL_FAILURE
    assert "128" in str(raised.value)
