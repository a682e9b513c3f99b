"""MAC and MAC Verify: HMAC with the SHA-2 and SHA-3 families, and CMAC with AES
(KMIP 1.4 §4.33, §4.34; 2.1 §6.1.30, §6.1.31). Pure, no I/O.

Which MAC runs is the Cryptographic Algorithm of the request's Cryptographic Parameters,
else of the key's stored Cryptographic Parameters, else the key's own algorithm (the OASIS
CS-AC-M-4..6 cases register an AES key whose Cryptographic Parameters name HMAC-SHA256):

* an HMAC algorithm (HMAC-SHA1 ... HMAC-SHA512, HMAC-SHA3-*) keys HMAC with the key's
  bytes, of any length (RFC 2104);
* AES is CMAC (NIST SP 800-38B); a Block Cipher Mode, if the request names one, must be
  CMAC. The key must be 128, 192 or 256 bits.

HMAC-MD5 and every other algorithm are Unsupported Cryptographic Parameters. Verification
compares in constant time.
"""

from __future__ import annotations

import hmac as std_hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import cmac, hashes, hmac
from cryptography.hazmat.primitives.ciphers import algorithms

from kcm.crypto.errors import cryptographic_failure, unsupported
from kcm.crypto.hashing import HASHES
from kcm.kmip.attributes import CryptographicParameters
from kcm.kmip.enums import BlockCipherMode, CryptographicAlgorithm, HashingAlgorithm
from kcm.kmip.labels import enum_label

__all__ = ["HMAC_HASHES", "MacSpec", "compute_mac", "resolve_mac", "verify_mac"]

_A = CryptographicAlgorithm
_H = HashingAlgorithm

#: HMAC algorithm -> the Hashing Algorithm it is built on.
HMAC_HASHES: dict[int, int] = {
    _A.HMAC_SHA1: _H.SHA_1,
    _A.HMAC_SHA224: _H.SHA_224,
    _A.HMAC_SHA256: _H.SHA_256,
    _A.HMAC_SHA384: _H.SHA_384,
    _A.HMAC_SHA512: _H.SHA_512,
    _A.HMAC_SHA3_224: _H.SHA3_224,
    _A.HMAC_SHA3_256: _H.SHA3_256,
    _A.HMAC_SHA3_384: _H.SHA3_384,
    _A.HMAC_SHA3_512: _H.SHA3_512,
}
_AES_KEY_BYTES = frozenset({16, 24, 32})


@dataclass(frozen=True, slots=True)
class MacSpec:
    """A resolved MAC: the Cryptographic Algorithm (an HMAC one, or AES for CMAC)."""

    algorithm: int

    @property
    def label(self) -> str:
        if self.algorithm == _A.AES:
            return "CMAC-AES"
        return enum_label(CryptographicAlgorithm, self.algorithm)


def resolve_mac(key_algorithm: int | None, stored: object,
                requested: CryptographicParameters | None) -> MacSpec:
    """The MAC a key of ``key_algorithm`` with stored Cryptographic Parameters ``stored``
    computes for a request with ``requested``: the request's algorithm over the key's
    parameters' over the key's own."""
    algorithm = None
    if requested is not None and requested.cryptographic_algorithm is not None:
        algorithm = requested.cryptographic_algorithm
    elif isinstance(stored, CryptographicParameters) and \
            stored.cryptographic_algorithm is not None:
        algorithm = stored.cryptographic_algorithm
    else:
        algorithm = key_algorithm
    if algorithm is None:
        raise unsupported("no MAC algorithm: name one in the Cryptographic Parameters")
    algorithm = int(algorithm)
    if algorithm in HMAC_HASHES:
        return MacSpec(algorithm)
    if algorithm == _A.AES:
        mode = None if requested is None else requested.block_cipher_mode
        if mode is not None and mode != BlockCipherMode.CMAC:
            raise unsupported(f"{enum_label(BlockCipherMode, mode)} is not a MAC mode; "
                              "AES MACs are CMAC")
        return MacSpec(algorithm)
    raise unsupported(f"{enum_label(CryptographicAlgorithm, algorithm)} MACs are not "
                      "supported")


def compute_mac(spec: MacSpec, key: bytes, data: bytes) -> bytes:
    """The MAC of ``data`` under ``key``."""
    if spec.algorithm == _A.AES:
        if len(key) not in _AES_KEY_BYTES:
            raise unsupported("CMAC needs an AES key of 128, 192 or 256 bits")
        with cryptographic_failure():
            c = cmac.CMAC(algorithms.AES(key))
            c.update(data)
            return c.finalize()
    if not key:
        raise unsupported("an HMAC key cannot be empty")
    h = hmac.HMAC(key, _hash(spec))
    h.update(data)
    return h.finalize()


def verify_mac(spec: MacSpec, key: bytes, data: bytes, mac: bytes) -> bool:
    """Whether ``mac`` is the MAC of ``data`` under ``key`` (constant-time comparison)."""
    return std_hmac.compare_digest(compute_mac(spec, key, data), mac)


def _hash(spec: MacSpec) -> hashes.HashAlgorithm:
    return HASHES[HMAC_HASHES[spec.algorithm]]()
