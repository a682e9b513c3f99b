"""KMIP Hashing Algorithms as the ``cryptography`` library's hashes, and the Hash
operation's digest (pure, no I/O)."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes

from kcm.crypto.errors import unsupported
from kcm.kmip.enums import HashingAlgorithm
from kcm.kmip.labels import enum_label

__all__ = ["HASHES", "digest"]

#: Hashing Algorithm -> the library's hash, for the ones the server computes.
HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    HashingAlgorithm.SHA_1: hashes.SHA1,
    HashingAlgorithm.SHA_224: hashes.SHA224,
    HashingAlgorithm.SHA_256: hashes.SHA256,
    HashingAlgorithm.SHA_384: hashes.SHA384,
    HashingAlgorithm.SHA_512: hashes.SHA512,
    HashingAlgorithm.SHA_512_224: hashes.SHA512_224,
    HashingAlgorithm.SHA_512_256: hashes.SHA512_256,
    HashingAlgorithm.SHA3_224: hashes.SHA3_224,
    HashingAlgorithm.SHA3_256: hashes.SHA3_256,
    HashingAlgorithm.SHA3_384: hashes.SHA3_384,
    HashingAlgorithm.SHA3_512: hashes.SHA3_512,
}


def digest(algorithm: int | None, data: bytes) -> bytes:
    """The Hash operation's output (KMIP 1.4 §4.35, 2.1 §6.1.24): ``data``'s digest with
    the Hashing Algorithm ``algorithm``; one this server does not compute is Unsupported
    Cryptographic Parameters."""
    if algorithm is None:
        raise unsupported("Hash needs a Hashing Algorithm in its Cryptographic Parameters")
    hash_type = HASHES.get(int(algorithm))
    if hash_type is None:
        raise unsupported(f"hashing algorithm {enum_label(HashingAlgorithm, algorithm)} is "
                          "not supported")
    h = hashes.Hash(hash_type())
    h.update(data)
    return h.finalize()
