"""KMIP Hashing Algorithms as the ``cryptography`` library's hashes (pure, no I/O)."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes

from kcm.kmip.enums import HashingAlgorithm

__all__ = ["HASHES"]

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
