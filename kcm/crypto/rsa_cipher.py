"""Encrypt and Decrypt with RSA keys: RSAES-OAEP and RSAES-PKCS1-v1_5 (RFC 8017 §7;
KMIP 1.4 §4.29, §4.30, 2.1 §6.1.18, §6.1.12). Pure, no I/O.

The scheme is the request's Cryptographic Parameters over the key's stored ones
(:func:`kcm.crypto.parameters.merge_parameters`) over the default, OAEP with SHA-256 and
MGF1-SHA-256 (a Padding Method of OAEP without a hash takes SHA-256 too; the MGF1 hash is
the OAEP hash unless named). The OAEP label is the P Source, empty when absent. Encrypt
uses a Public Key, Decrypt a Private Key; a ciphertext that does not decrypt is
Cryptographic Failure with one message for every cause (no padding oracle in the words).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa

from kcm.crypto.errors import unsupported
from kcm.crypto.hashing import HASHES
from kcm.crypto.parameters import merge_parameters
from kcm.kmip.attributes import CryptographicParameters
from kcm.kmip.enums import (
    CryptographicAlgorithm,
    HashingAlgorithm,
    MaskGenerator,
    PaddingMethod,
    ResultReason,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import enum_label

__all__ = ["RsaCipherSpec", "rsa_decrypt", "rsa_encrypt", "resolve_rsa_cipher"]

_FIELDS = ("padding_method", "hashing_algorithm", "cryptographic_algorithm",
           "mask_generator", "mask_generator_hashing_algorithm", "p_source")
_DEFAULT_HASH = HashingAlgorithm.SHA_256


@dataclass(frozen=True, slots=True)
class RsaCipherSpec:
    """A resolved RSA encryption scheme."""

    padding: int  # PaddingMethod.OAEP or PKCS1_V1_5
    hashing: int  # OAEP: the label hash
    mgf_hashing: int  # OAEP: the MGF1 hash
    label: bytes  # OAEP: the P Source

    def padding_scheme(self) -> asym_padding.AsymmetricPadding:
        if self.padding == PaddingMethod.PKCS1_V1_5:
            return asym_padding.PKCS1v15()
        return asym_padding.OAEP(mgf=asym_padding.MGF1(HASHES[self.mgf_hashing]()),
                                 algorithm=HASHES[self.hashing](),
                                 label=self.label or None)


def resolve_rsa_cipher(key_algorithm: int | None, stored: object,
                       requested: CryptographicParameters | None) -> RsaCipherSpec:
    """The scheme an RSA key (stored Cryptographic Parameters ``stored``) encrypts or
    decrypts with for a request with ``requested``."""
    params = merge_parameters(stored, requested, _FIELDS)
    algorithm = params.cryptographic_algorithm
    if key_algorithm is not None and int(key_algorithm) != CryptographicAlgorithm.RSA:
        raise unsupported("only RSA keys encrypt asymmetrically here")
    if algorithm is not None and int(algorithm) != CryptographicAlgorithm.RSA:
        raise unsupported(f"an RSA key cannot run {enum_label(CryptographicAlgorithm, algorithm)}")
    padding = PaddingMethod.OAEP if params.padding_method is None else int(params.padding_method)
    if padding not in (PaddingMethod.OAEP, PaddingMethod.PKCS1_V1_5):
        raise unsupported(f"padding method {enum_label(PaddingMethod, padding)} is not "
                          "supported for RSA encryption; OAEP or PKCS1 v1.5")
    hashing = _DEFAULT_HASH if params.hashing_algorithm is None else int(params.hashing_algorithm)
    mgf = hashing if params.mask_generator_hashing_algorithm is None \
        else int(params.mask_generator_hashing_algorithm)
    if params.mask_generator is not None and params.mask_generator != MaskGenerator.MGF1:
        raise unsupported("the mask generator must be MGF1")
    for name, value in (("hashing", hashing), ("MGF1", mgf)):
        if padding == PaddingMethod.OAEP and value not in HASHES:
            raise unsupported(f"OAEP {name} algorithm {enum_label(HashingAlgorithm, value)} "
                              "is not supported")
    label = params.p_source or b""
    if padding == PaddingMethod.PKCS1_V1_5 and label:
        raise KmipError(ResultReason.INVALID_FIELD, "P Source applies to OAEP only")
    return RsaCipherSpec(padding, hashing, mgf, label)


def rsa_encrypt(key: rsa.RSAPublicKey, spec: RsaCipherSpec, data: bytes) -> bytes:
    """``data`` encrypted to ``key``; too long for the key is Cryptographic Failure."""
    try:
        return key.encrypt(data, spec.padding_scheme())
    except ValueError:
        raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE,
                        "the data is too long for this key and padding") from None


def rsa_decrypt(key: rsa.RSAPrivateKey, spec: RsaCipherSpec, data: bytes) -> bytes:
    """``data`` decrypted with ``key``; anything that does not decrypt is Cryptographic
    Failure, always with the same message."""
    try:
        return key.decrypt(data, spec.padding_scheme())
    except ValueError:
        raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE, "decryption failed") from None
