"""A stream's state carried by the client as its Correlation Value (KMIP 1.4 §2.1.15 ff.),
sealed so that any core can continue the stream and no client can forge or move one.

The state is sealed with AES-GCM under a key derived (HKDF-SHA256) from the object's own
key material, the stream's purpose and the object's identifier, which is also the
associated data: a Correlation Value opens only for the key and the kind of stream that
made it.

Each value also names its :class:`StreamPart`: the stream's random identifier, the part it
continues, and when it stops opening (:data:`STREAM_LIFETIME` after it was issued). The
seal alone cannot stop a client from presenting a value twice; the core records each part
it has taken (:mod:`kcm.core.stream_parts`) and refuses it the second time, so every value
is used at most once and a stream is one chain of parts. Pure: the random source and the
time are the caller's.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError

__all__ = ["MAX_CIPHER_STREAM_BYTES", "MAX_STREAM_BYTES", "STREAM_LIFETIME", "StreamPart",
           "check_stream_size", "open_state", "seal_state"]

T = TypeVar("T")

# Format 2 added the StreamPart; a format-1 value (sealed before) no longer opens.
_FORMAT = b"\x02"
_NONCE_LENGTH = 12
_PART = struct.Struct(">16sQQ")  # stream id, part, expires (epoch seconds)

#: Seconds a Correlation Value opens after it was issued: a stream may wait that long
#: between two parts.
STREAM_LIFETIME = 3600

#: Seconds by which the clocks of two cores may differ: a value issued by one opens at
#: another whose clock is that much behind (and is recorded that much longer once spent).
CLOCK_MARGIN = 600
#: A part number at or past this is no core's (the next would not fit a signed 64 bits).
_MAX_PART = (1 << 63) - 1

#: How much data a stream may accumulate in its Correlation Value: it carries the whole
#: input so far, so it (and each answer) stays small.
MAX_STREAM_BYTES = 1 << 20
#: The same for an Encrypt or Decrypt stream, whose every answer but the last carries the
#: input so far (in its Correlation Value) and the output so far released: under half the
#: default maximum message size (1 MiB), so that such an answer always fits in it.
MAX_CIPHER_STREAM_BYTES = 448 << 10


def check_stream_size(length: int, limit: int | None = None) -> None:
    """Refuse (Server Limit Exceeded) a stream that has accumulated ``length`` bytes,
    more than ``limit`` (None: :data:`MAX_STREAM_BYTES`)."""
    if limit is None:
        limit = MAX_STREAM_BYTES
    if length > limit:
        raise KmipError(ResultReason.SERVER_LIMIT_EXCEEDED,
                        f"streams are limited to {limit} bytes")


@dataclass(frozen=True, slots=True)
class StreamPart:
    """Which part of which stream a Correlation Value continues, and until when."""

    stream_id: bytes  # 16 random bytes, the same for every part of one stream
    part: int  # 0 for the value an Init Indicator's answer carries, then 1, 2, ...
    expires: int  # epoch seconds: the value opens before then

    @classmethod
    def first(cls, now: int, random_bytes: Callable[[int], bytes]) -> StreamPart:
        """The part a new stream's first Correlation Value names."""
        return cls(random_bytes(16), 0, now + STREAM_LIFETIME)

    def following(self, now: int) -> StreamPart:
        """The part the Correlation Value answered for this one names."""
        return StreamPart(self.stream_id, self.part + 1, now + STREAM_LIFETIME)


def seal_state(secret: bytes, purpose: bytes, uid: str, state: bytes,
               random_bytes: Callable[[int], bytes], *, part: StreamPart) -> bytes:
    """The Correlation Value that carries ``state`` for the object ``uid`` as ``part``."""
    nonce = random_bytes(_NONCE_LENGTH)
    head = _PART.pack(part.stream_id, part.part, part.expires)
    return _FORMAT + nonce + AESGCM(_state_key(secret, purpose, uid)).encrypt(
        nonce, head + state, uid.encode())


def open_state(secret: bytes, purpose: bytes, uid: str, value: bytes,
               unpack: Callable[[bytes], T], *, now: int) -> tuple[StreamPart, T]:
    """The part ``value`` names and the state it carries, read by ``unpack``; Invalid
    Correlation Value when it is not one of this key's streams of this purpose (or does
    not unpack), or has expired at ``now``. Whether it was used already is the caller's
    to ask (:mod:`kcm.core.stream_parts`)."""
    try:
        if value[:1] != _FORMAT:
            raise InvalidTag
        blob = AESGCM(_state_key(secret, purpose, uid)).decrypt(
            value[1:1 + _NONCE_LENGTH], value[1 + _NONCE_LENGTH:], uid.encode())
        part = StreamPart(*_PART.unpack_from(blob))
        state = unpack(blob[_PART.size:])
    except (InvalidTag, ValueError, struct.error):
        raise KmipError(ResultReason.INVALID_CORRELATION_VALUE,
                        "the Correlation Value is not one of this key's streams") from None
    if now >= part.expires:
        raise KmipError(ResultReason.INVALID_CORRELATION_VALUE,
                        "the Correlation Value has expired")
    # No core issues these (a client that holds the key's material can seal anything): a
    # part past what the store's BIGINT holds, or an expiry that would never be purged.
    if part.part >= _MAX_PART or part.expires > now + STREAM_LIFETIME + CLOCK_MARGIN:
        raise KmipError(ResultReason.INVALID_CORRELATION_VALUE,
                        "the Correlation Value is not one of this key's streams")
    return part, state


def _state_key(secret: bytes, purpose: bytes, uid: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=purpose + uid.encode()).derive(secret)
