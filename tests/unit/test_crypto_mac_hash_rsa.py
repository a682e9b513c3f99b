"""MAC, Hash and RSA encryption as :mod:`kcm.crypto` runs them: known answers from the
RFCs and NIST, the parameter rules, and the refusals as KMIP errors."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from kcm.crypto.hashing import digest
from kcm.crypto.mac import MacSpec, compute_mac, resolve_mac, verify_mac
from kcm.crypto.rsa_cipher import resolve_rsa_cipher, rsa_decrypt, rsa_encrypt
from kcm.kmip.attributes import CryptographicParameters
from kcm.kmip.enums import (
    BlockCipherMode,
    CryptographicAlgorithm,
    HashingAlgorithm,
    PaddingMethod,
    ResultReason,
)
from kcm.kmip.errors import KmipError

_A = CryptographicAlgorithm
_H = HashingAlgorithm


# MAC -------------------------------------------------------------------------------
def test_hmac_sha256_rfc4231_case_2() -> None:
    spec = MacSpec(_A.HMAC_SHA256)
    mac = compute_mac(spec, b"Jefe", b"what do ya want for nothing?")
    assert mac.hex() == ("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    assert verify_mac(spec, b"Jefe", b"what do ya want for nothing?", mac)
    assert not verify_mac(spec, b"Jefe", b"what do ya want for nothing!", mac)
    assert not verify_mac(spec, b"Jefe", b"what do ya want for nothing?", mac[:-1])


def test_cmac_aes128_sp800_38b_example_2() -> None:
    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    data = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
    spec = resolve_mac(_A.AES, None, None)
    assert compute_mac(spec, key, data).hex() == "070a16b46b4d4144f79bdd9dd04a287c"


def test_the_mac_algorithm_is_the_request_s_over_the_key_parameters_over_the_key() -> None:
    stored = CryptographicParameters(cryptographic_algorithm=_A.HMAC_SHA256)
    assert resolve_mac(_A.AES, stored, None).algorithm == _A.HMAC_SHA256
    asked = CryptographicParameters(cryptographic_algorithm=_A.HMAC_SHA512)
    assert resolve_mac(_A.AES, stored, asked).algorithm == _A.HMAC_SHA512
    assert resolve_mac(_A.HMAC_SHA384, None, None).algorithm == _A.HMAC_SHA384
    assert resolve_mac(_A.AES, None, None).label == "CMAC-AES"


@pytest.mark.parametrize("algorithm, requested", [
    (_A.HMAC_MD5, None),
    (_A.RSA, None),
    (None, None),
    (_A.AES, CryptographicParameters(block_cipher_mode=BlockCipherMode.CBC)),
])
def test_macs_not_run_are_unsupported_parameters(algorithm: int | None,
                                                 requested: CryptographicParameters | None
                                                 ) -> None:
    with pytest.raises(KmipError) as raised:
        resolve_mac(algorithm, None, requested)
    assert raised.value.reason == ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS


def test_cmac_refuses_a_key_that_is_not_aes_sized() -> None:
    with pytest.raises(KmipError) as raised:
        compute_mac(MacSpec(_A.AES), b"short", b"data")
    assert raised.value.reason == ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS


# Hash ------------------------------------------------------------------------------
def test_hash_sha2_known_answers() -> None:
    assert digest(_H.SHA_256, b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    assert digest(_H.SHA_512, b"abc").hex().startswith("ddaf35a193617aba")
    assert len(digest(_H.SHA_384, b"")) == 48


@pytest.mark.parametrize("algorithm", [None, _H.MD5])
def test_hash_refuses_no_or_unsupported_algorithm(algorithm: int | None) -> None:
    with pytest.raises(KmipError) as raised:
        digest(algorithm, b"abc")
    assert raised.value.reason == ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS


# RSA encryption --------------------------------------------------------------------
@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize("params", [
    None,
    CryptographicParameters(padding_method=PaddingMethod.OAEP, hashing_algorithm=_H.SHA_384,
                            mask_generator_hashing_algorithm=_H.SHA_256,
                            p_source=b"a label"),
    CryptographicParameters(padding_method=PaddingMethod.PKCS1_V1_5),
])
def test_rsa_round_trip(private_key: rsa.RSAPrivateKey,
                        params: CryptographicParameters | None) -> None:
    spec = resolve_rsa_cipher(_A.RSA, None, params)
    ciphertext = rsa_encrypt(private_key.public_key(), spec, b"secret")
    assert len(ciphertext) == 256
    assert rsa_decrypt(private_key, spec, ciphertext) == b"secret"


def test_rsa_default_is_oaep_sha256_and_mgf_follows_the_hash() -> None:
    spec = resolve_rsa_cipher(_A.RSA, None, None)
    assert (spec.padding, spec.hashing, spec.mgf_hashing, spec.label) == (
        PaddingMethod.OAEP, _H.SHA_256, _H.SHA_256, b"")
    stored = CryptographicParameters(padding_method=PaddingMethod.OAEP,
                                     hashing_algorithm=_H.SHA_384)
    assert resolve_rsa_cipher(_A.RSA, stored, None).mgf_hashing == _H.SHA_384


def test_rsa_wrong_label_or_garbage_fails_alike(private_key: rsa.RSAPrivateKey) -> None:
    labelled = resolve_rsa_cipher(_A.RSA, None, CryptographicParameters(p_source=b"x"))
    ciphertext = rsa_encrypt(private_key.public_key(), labelled, b"secret")
    messages = set()
    for spec, data in ((resolve_rsa_cipher(_A.RSA, None, None), ciphertext),
                       (labelled, b"\x00" * 256)):
        with pytest.raises(KmipError) as raised:
            rsa_decrypt(private_key, spec, data)
        assert raised.value.reason == ResultReason.CRYPTOGRAPHIC_FAILURE
        messages.add(str(raised.value))
    assert len(messages) == 1


def test_rsa_refuses_other_paddings_and_too_long_data(private_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(KmipError) as raised:
        resolve_rsa_cipher(_A.RSA, None, CryptographicParameters(
            padding_method=PaddingMethod.PSS))
    assert raised.value.reason == ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS
    spec = resolve_rsa_cipher(_A.RSA, None, None)
    with pytest.raises(KmipError) as raised:
        rsa_encrypt(private_key.public_key(), spec, b"x" * 300)
    assert raised.value.reason == ResultReason.CRYPTOGRAPHIC_FAILURE
