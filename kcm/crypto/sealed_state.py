"""A stream's state carried by the client as its Correlation Value (KMIP 1.4 §2.1.15 ff.),
sealed so that any core can continue the stream and no client can forge or move one.

The state is sealed with AES-GCM under a key derived (HKDF-SHA256) from the object's own
key material, the stream's purpose and the object's identifier, which is also the
associated data: a Correlation Value opens only for the key and the kind of stream that
made it. Pure: the random source is the caller's.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError

__all__ = ["MAX_STREAM_BYTES", "check_stream_size", "open_state", "seal_state"]

T = TypeVar("T")

_FORMAT = b"\x01"
_NONCE_LENGTH = 12

#: How much data a stream may accumulate in its Correlation Value: it carries the whole
#: input so far, so it (and each answer) stays small.
MAX_STREAM_BYTES = 1 << 20


def check_stream_size(length: int) -> None:
    """Refuse (Server Limit Exceeded) a stream that has accumulated ``length`` bytes,
    more than :data:`MAX_STREAM_BYTES`."""
    if length > MAX_STREAM_BYTES:
        raise KmipError(ResultReason.SERVER_LIMIT_EXCEEDED,
                        f"streams are limited to {MAX_STREAM_BYTES} bytes")


def seal_state(secret: bytes, purpose: bytes, uid: str, state: bytes,
               random_bytes: Callable[[int], bytes]) -> bytes:
    """The Correlation Value that carries ``state`` for the object ``uid``."""
    nonce = random_bytes(_NONCE_LENGTH)
    return _FORMAT + nonce + AESGCM(_state_key(secret, purpose, uid)).encrypt(
        nonce, state, uid.encode())


def open_state(secret: bytes, purpose: bytes, uid: str, value: bytes,
               unpack: Callable[[bytes], T]) -> T:
    """The state ``value`` carries, read by ``unpack``; Invalid Correlation Value when it
    is not one of this key's streams of this purpose (or does not unpack)."""
    try:
        if value[:1] != _FORMAT:
            raise InvalidTag
        blob = AESGCM(_state_key(secret, purpose, uid)).decrypt(
            value[1:1 + _NONCE_LENGTH], value[1 + _NONCE_LENGTH:], uid.encode())
        return unpack(blob)
    except (InvalidTag, ValueError, struct.error):
        raise KmipError(ResultReason.INVALID_CORRELATION_VALUE,
                        "the Correlation Value is not one of this key's streams") from None


def _state_key(secret: bytes, purpose: bytes, uid: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=purpose + uid.encode()).derive(secret)
