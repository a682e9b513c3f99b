"""Quantum Safe (KMIP 2.1 §4.48; the QS profile): which keys a server may call quantum
safe, and the refusal of a new key asked to be quantum safe that would not be. Pure.

A key is quantum safe here when Grover's algorithm leaves it at least 128 bits of
security: a symmetric cipher key (AES, Camellia, ARIA, ChaCha20, ...) or an HMAC key of
256 bits or more. Public-key algorithms the server makes (RSA, and every other one Shor's
algorithm breaks) never are. The refusal is General Failure, the answer the OASIS QS-M-2
case expects (KMIP names no more specific Result Reason for it).
"""

from __future__ import annotations

from kcm.kmip.enums import CryptographicAlgorithm, ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import enum_label

__all__ = ["QUANTUM_SAFE_BITS", "check_quantum_safe", "is_quantum_safe"]

_A = CryptographicAlgorithm
#: Symmetric and MAC key lengths from which a key is quantum safe.
QUANTUM_SAFE_BITS = 256
_PUBLIC_KEY_ALGORITHMS = frozenset({
    _A.RSA, _A.DSA, _A.ECDSA, _A.DH, _A.ECDH, _A.ECMQV, _A.EC, _A.ED25519, _A.ED448,
    _A.SM2,
})
_BROKEN_SYMMETRIC = frozenset({_A.DES, _A.DES3, _A.HMAC_MD5, _A.HMAC_SHA1})


def is_quantum_safe(algorithm: int, length: int | None) -> bool:
    """Whether a key of ``algorithm`` and ``length`` bits is quantum safe."""
    if algorithm in _PUBLIC_KEY_ALGORITHMS or algorithm in _BROKEN_SYMMETRIC:
        return False
    return length is not None and length >= QUANTUM_SAFE_BITS


def check_quantum_safe(wanted: object, algorithm: int, length: int | None) -> None:
    """Refuse a new key whose Quantum Safe attribute (``wanted``; None: not set) is True
    when the key would not be quantum safe."""
    if wanted is True and not is_quantum_safe(algorithm, length):
        raise KmipError(ResultReason.GENERAL_FAILURE,
                        f"a {length}-bit {enum_label(CryptographicAlgorithm, algorithm)} key "
                        "is not quantum safe")
