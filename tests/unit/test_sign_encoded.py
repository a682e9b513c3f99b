"""RSASSA-PKCS1-v1_5 over Digested Data with no hash named (:func:`_sign_encoded`): a
DigestInfo of a known hash is signed by OpenSSL, any other encoded value by the blinded
Chinese-remainder exponentiation; both are the scheme's one signature."""

from __future__ import annotations

import hashlib
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from kcm.crypto.signatures import _DIGEST_INFO_PREFIXES, _sign_encoded


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize("algorithm", [type(a) for a in _DIGEST_INFO_PREFIXES.values()])
def test_a_digest_info_is_signed_as_a_signature_over_its_digest(key, algorithm) -> None:
    prefix = next(p for p, a in _DIGEST_INFO_PREFIXES.items() if isinstance(a, algorithm))
    digest = hashlib.new(algorithm.name, b"message").digest()
    signature = _sign_encoded(key, prefix + digest, os.urandom)
    assert signature == key.sign(b"message", padding.PKCS1v15(), algorithm())


def test_any_other_encoded_value_is_signed_by_the_exponentiation(key) -> None:
    encoded = hashlib.md5(b"m").digest() + hashlib.sha1(b"m").digest()  # TLS 1.1's 36 bytes
    signature = _sign_encoded(key, encoded, os.urandom)
    public = key.public_key().public_numbers()
    recovered = pow(int.from_bytes(signature, "big"), public.e, public.n)
    size = key.key_size // 8
    assert recovered.to_bytes(size, "big") == (
        b"\x00\x01" + b"\xff" * (size - 3 - len(encoded)) + b"\x00" + encoded)
    # the same as a signature of the fixed exponent without the remainder form
    private = key.private_numbers()
    assert int.from_bytes(signature, "big") == pow(recovered, private.d, public.n)
