"""Key derivation as KMIP's Derive Key defines it (KMIP 1.4 §4.6, 2.1 §6.1.11).
Pure: key material in, derived bytes out; no stored objects, no I/O.

Methods: PBKDF2 (a Salt and a positive Iteration Count), HASH (of the base key; Derivation
Data is refused, see ``derive``), HMAC (the HMAC-based KDF of RFC 5869, as PyKMIP's reference
server and its suite read it: the Salt, then the Derivation Data as info), ENCRYPT (AES,
3DES or Blowfish in ECB, CBC or CTR, PKCS#5 padding on request) and NIST800-108-C (SP
800-108 counter mode, HMAC, a 32-bit counter before the Derivation Data). The hash is the
parameters' Hashing Algorithm, SHA-256 when they name none. A method that yields fewer bytes
than asked is Cryptographic Failure, as is what the library refuses; parameters the server
cannot run are Unsupported Cryptographic Parameters.

Bounds (Server Limit Exceeded; KMIP 1.x: Feature Not Supported): a request of a few hundred
bytes must not make the core store an object larger than any message can carry, nor hold
the writer thread that runs every tenant's writes for long. A derived key is at most
:data:`MAX_DERIVED_BYTES`; PBKDF2 computes at most :data:`MAX_PBKDF2_ITERATIONS` iterations
in all (the Iteration Count once per hash-sized block of the derived key), and a request's
derivations together no more (:class:`kcm.core.context.RequestWork`).
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.decrepit.ciphers.algorithms import Blowfish, TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, CipherAlgorithm, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from kcm.crypto.errors import cryptographic_failure, unsupported
from kcm.crypto.hashing import HASHES
from kcm.kmip.attributes import CryptographicParameters
from kcm.kmip.enums import (
    BlockCipherMode,
    CryptographicAlgorithm,
    DerivationMethod,
    HashingAlgorithm,
    PaddingMethod,
    ResultReason,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import enum_label
from kcm.kmip.payloads import DerivationParameters

__all__ = ["MAX_DERIVED_BYTES", "MAX_PBKDF2_ITERATIONS", "derive"]

#: The longest key Derive Key makes: 4096 bits (the OASIS cases derive at most 256).
MAX_DERIVED_BYTES = 512
#: The most PBKDF2 iterations one derivation computes, its Iteration Count times the blocks
#: of the hash's length it yields: about 0.15 s of the writer thread with SHA-256, 0.7 s
#: with SHA-3.
MAX_PBKDF2_ITERATIONS = 1_000_000


#: Computes PBKDF2: (the HMAC's hash, length, salt, iteration count, password) → the key.
Pbkdf2 = Callable[[hashes.HashAlgorithm, int, bytes, int, bytes], bytes]


def pbkdf2(algorithm: hashes.HashAlgorithm, length: int, salt: bytes, count: int,
           key: bytes) -> bytes:
    """PBKDF2-HMAC (RFC 8018) of ``key``: what :func:`derive` computes unless given another
    way to."""
    return PBKDF2HMAC(algorithm=algorithm, length=length, salt=salt,
                      iterations=count).derive(key)


def derive(method: int, parameters: DerivationParameters, key: bytes, data: bytes | None,
           length: int, key_algorithm: int | None, *,
           charge_pbkdf2: Callable[[int], None] | None = None,
           compute_pbkdf2: Pbkdf2 = pbkdf2) -> bytes:
    """``length`` bytes derived from ``key`` (whose Cryptographic Algorithm is
    ``key_algorithm``) and ``data`` (the Derivation Data) by ``method``. ``charge_pbkdf2``
    is told the PBKDF2 iterations a derivation will compute, before it does, and may refuse
    them (raise): what a request's derivations may compute in all is the caller's bound.
    ``compute_pbkdf2`` computes a PBKDF2 derivation (the caller's may have computed it
    already, elsewhere)."""
    if length > MAX_DERIVED_BYTES:
        raise KmipError(ResultReason.SERVER_LIMIT_EXCEEDED,
                        f"Derive Key makes keys of at most {MAX_DERIVED_BYTES * 8} bits")
    params = parameters.cryptographic_parameters or CryptographicParameters()
    salt = parameters.salt
    with cryptographic_failure(TypeError):
        if method == DerivationMethod.ENCRYPT:
            if data is None:
                raise KmipError(ResultReason.INVALID_FIELD,
                                "derivation by encryption needs Derivation Data")
            derived = _encrypt(params, key_algorithm, key, parameters.initialization_vector,
                               data)
        else:
            hash_cls = _hash(params)
            if method == DerivationMethod.PBKDF2:
                count = parameters.iteration_count
                if salt is None or count is None or count <= 0:
                    raise KmipError(ResultReason.INVALID_FIELD,
                                    "PBKDF2 needs a Salt and a positive Iteration Count")
                algorithm = hash_cls()
                work = _pbkdf2_work(count, length, algorithm.digest_size)
                if charge_pbkdf2 is not None:
                    charge_pbkdf2(work)
                return compute_pbkdf2(algorithm, length, salt, count, key)
            if method == DerivationMethod.HASH:
                # KMIP 1.4 §4.6 / 2.1 §6.1.11: HASH hashes "the derivation key or the
                # derivation data". A hash of the Derivation Data alone would owe nothing
                # to the secret base key (anyone holding the public data gets the key), so
                # only the key is hashed and Derivation Data is refused, as PyKMIP's
                # reference server does. No OASIS test case sends Derivation Data with HASH.
                if data is not None:
                    raise KmipError(ResultReason.INVALID_FIELD,
                                    "HASH derivation takes no Derivation Data")
                digest = hashes.Hash(hash_cls())
                digest.update(key)
                derived = digest.finalize()
            elif method == DerivationMethod.HMAC:
                # PyKMIP's reference server and its integration suite read "HMAC" as the
                # HMAC-based KDF of RFC 5869 (salt, then the Derivation Data as info).
                return HKDF(algorithm=hash_cls(), length=length, salt=salt or None,
                            info=data or b"").derive(key)
            elif method == DerivationMethod.NIST800_108_C:
                if data is None:
                    raise KmipError(ResultReason.INVALID_FIELD,
                                    "NIST 800-108 counter mode needs Derivation Data")
                return KBKDFHMAC(algorithm=hash_cls(), mode=Mode.CounterMode, length=length,
                                 rlen=4, llen=None, location=CounterLocation.BeforeFixed,
                                 label=None, context=None, fixed=data).derive(key)
            else:
                raise KmipError(ResultReason.FEATURE_NOT_SUPPORTED,
                                f"derivation method {enum_label(DerivationMethod, method)} is "
                                "not supported")
    if len(derived) < length:
        raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE,
                        f"the method yields {len(derived)} bytes; {length} were asked")
    return derived[:length]


def _pbkdf2_work(count: int, length: int, digest_size: int) -> int:
    """The iterations a PBKDF2 derivation computes (RFC 8018 §5.2 runs the Iteration Count
    for each ``digest_size`` block of the key); more than :data:`MAX_PBKDF2_ITERATIONS` is
    refused."""
    blocks = -(-length // digest_size)
    if count * blocks > MAX_PBKDF2_ITERATIONS:
        raise KmipError(ResultReason.SERVER_LIMIT_EXCEEDED,
                        f"PBKDF2 Iteration Count {count} over {blocks} block(s) exceeds the "
                        f"server's limit of {MAX_PBKDF2_ITERATIONS} iterations")
    return count * blocks


def _hash(params: CryptographicParameters) -> type[hashes.HashAlgorithm]:
    hashing = params.hashing_algorithm
    # KMIP 1.4 §4.6: without a Hashing Algorithm, SHA-256 is used.
    hashing = HashingAlgorithm.SHA_256 if hashing is None else int(hashing)
    found = HASHES.get(hashing)
    if found is None:
        raise unsupported(f"hashing algorithm {enum_label(HashingAlgorithm, hashing)} "
                          "is not supported for derivation")
    return found


def _encrypt(params: CryptographicParameters, key_algorithm: int | None, key: bytes,
             iv: bytes | None, data: bytes) -> bytes:
    algorithm = params.cryptographic_algorithm
    if algorithm is None:
        algorithm = key_algorithm
    cipher_algorithm: CipherAlgorithm
    if algorithm == CryptographicAlgorithm.AES:
        cipher_algorithm = algorithms.AES(key)
    elif algorithm == CryptographicAlgorithm.DES3:
        cipher_algorithm = TripleDES(key)
    elif algorithm == CryptographicAlgorithm.BLOWFISH:
        cipher_algorithm = Blowfish(key)
    else:
        raise unsupported(f"derivation by {enum_label(CryptographicAlgorithm, algorithm)}"
                          " encryption is not supported")
    mode_name = params.block_cipher_mode
    mode_name = BlockCipherMode.CBC if mode_name is None else int(mode_name)
    block_bytes = cipher_algorithm.block_size // 8
    if mode_name != BlockCipherMode.ECB and (iv is None or len(iv) != block_bytes):
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"this mode needs an Initialization Vector of {block_bytes} bytes")
    if mode_name == BlockCipherMode.ECB:
        mode: modes.Mode = modes.ECB()
    elif mode_name == BlockCipherMode.CBC:
        mode = modes.CBC(iv)  # type: ignore[arg-type]
    elif mode_name == BlockCipherMode.CTR:
        mode = modes.CTR(iv)  # type: ignore[arg-type]
    else:
        raise unsupported(f"block cipher mode {enum_label(BlockCipherMode, mode_name)} "
                          "is not supported for derivation")
    padding = params.padding_method
    if padding == PaddingMethod.PKCS5:
        padder = sym_padding.PKCS7(cipher_algorithm.block_size).padder()
        data = padder.update(data) + padder.finalize()
    elif padding not in (None, PaddingMethod.NONE):
        raise unsupported(f"padding method {enum_label(PaddingMethod, padding)} is not "
                          "supported for derivation")
    encryptor = Cipher(cipher_algorithm, mode).encryptor()
    return encryptor.update(data) + encryptor.finalize()
