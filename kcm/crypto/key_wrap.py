"""AES key wrapping as KMIP's Key Wrapping Specification uses it (NIST SP 800-38F):
NIST Key Wrap (RFC 3394) and AES Key Wrap with Padding (RFC 5649)."""

from __future__ import annotations

from cryptography.hazmat.primitives import keywrap

from kcm.kmip.enums import BlockCipherMode, ResultReason
from kcm.kmip.errors import KmipError

#: The Block Cipher Modes that name a key wrap.
WRAP_MODES = frozenset({BlockCipherMode.NISTKEYWRAP, BlockCipherMode.AESKEYWRAPPADDING})


def aes_wrap(kek: bytes, plaintext: bytes, mode: int) -> bytes:
    """``plaintext`` wrapped under ``kek`` (NIST Key Wrap unless ``mode`` asks for padding)."""
    if mode == BlockCipherMode.AESKEYWRAPPADDING:
        return keywrap.aes_key_wrap_with_padding(kek, plaintext)
    if len(plaintext) < 16 or len(plaintext) % 8:
        raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE,
                        f"NIST Key Wrap needs a multiple of 8 bytes (at least 16), not "
                        f"{len(plaintext)}; use AES Key Wrap with Padding")
    return keywrap.aes_key_wrap(kek, plaintext)


def aes_unwrap(kek: bytes, wrapped: bytes, mode: int) -> bytes:
    """The plaintext of ``wrapped``; Cryptographic Failure if it does not unwrap."""
    try:
        if mode == BlockCipherMode.AESKEYWRAPPADDING:
            return keywrap.aes_key_unwrap_with_padding(kek, wrapped)
        return keywrap.aes_key_unwrap(kek, wrapped)
    except (keywrap.InvalidUnwrap, ValueError) as e:
        raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE,
                        "the key value does not unwrap with the named wrapping key") from e
