"""IVs the server draws in :mod:`kcm.crypto.symmetric`: a generated GCM IV is never shorter
than 96 bits (NIST SP 800-38D §8.2.2), for any key; a client's own IV is its choice."""

from __future__ import annotations

import pytest

from kcm.crypto.symmetric import encrypt_iv, resolve_spec
from kcm.kmip.attributes import CryptographicParameters
from kcm.kmip.enums import BlockCipherMode, CryptographicAlgorithm, ResultReason
from kcm.kmip.errors import KmipError

_AES = CryptographicAlgorithm.AES
_GCM = BlockCipherMode.GCM


def _drawn(n: int) -> bytes:
    return bytes(range(n))


@pytest.mark.parametrize("random_iv", [None, True])
@pytest.mark.parametrize("bits", [8, 32, 64, 88])
def test_a_generated_gcm_iv_under_96_bits_is_refused(random_iv, bits: int) -> None:
    for stored, requested in (
            (None, CryptographicParameters(block_cipher_mode=_GCM, iv_length=bits,
                                           random_iv=random_iv)),
            (CryptographicParameters(iv_length=bits), None)):  # a managed key's own
        spec = resolve_spec(_AES, stored, requested)
        with pytest.raises(KmipError) as refused:
            encrypt_iv(spec, None, _drawn)
        assert refused.value.reason == ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS
        assert "96 bits" in refused.value.message and refused.value.message.isascii()


@pytest.mark.parametrize("bits", [96, 128, 256])
def test_a_generated_gcm_iv_of_96_bits_or_more_is_drawn(bits: int) -> None:
    spec = resolve_spec(_AES, None, CryptographicParameters(iv_length=bits, random_iv=True))
    iv, generated = encrypt_iv(spec, None, _drawn)
    assert iv == generated and len(iv) == bits // 8


def test_a_client_s_own_short_gcm_iv_is_still_taken() -> None:
    spec = resolve_spec(_AES, None, CryptographicParameters(iv_length=64))
    assert encrypt_iv(spec, bytes(8), _drawn) == (bytes(8), None)


def test_a_generated_chacha20_nonce_under_96_bits_is_refused_a_client_s_taken() -> None:
    chacha = resolve_spec(CryptographicAlgorithm.CHACHA20, None,
                          CryptographicParameters(iv_length=64))
    with pytest.raises(KmipError) as refused:
        encrypt_iv(chacha, None, _drawn)
    assert refused.value.reason == ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS
    assert "96 bits" in refused.value.message
    assert encrypt_iv(chacha, bytes(8), _drawn) == (bytes(8), None)
    chacha = resolve_spec(CryptographicAlgorithm.CHACHA20, None,
                          CryptographicParameters(iv_length=96))
    assert len(encrypt_iv(chacha, None, _drawn)[0]) == 12


@pytest.mark.parametrize(("mode", "bits"), [(BlockCipherMode.CBC, (1 << 31) - 8),
                                            (_GCM, (1 << 31) - 8), (_GCM, 129 * 8),
                                            (BlockCipherMode.CTR, 64)])
def test_an_iv_length_the_mode_never_takes_is_refused_before_anything_is_drawn(
        mode: int, bits: int) -> None:
    drawn: list[int] = []
    spec = resolve_spec(_AES, None, CryptographicParameters(block_cipher_mode=mode,
                                                            iv_length=bits))
    with pytest.raises(KmipError) as refused:
        encrypt_iv(spec, None, lambda n: drawn.append(n) or bytes(n))
    assert refused.value.reason == ResultReason.INVALID_FIELD
    assert drawn == []


def test_other_modes_keep_their_iv_lengths() -> None:
    cbc = resolve_spec(_AES, None, CryptographicParameters(block_cipher_mode=BlockCipherMode.CBC))
    assert len(encrypt_iv(cbc, None, _drawn)[0]) == 16
