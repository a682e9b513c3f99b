"""The envelope format: a record sealed under an L4 data key, byte for byte (docs/sdk.md,
"The envelope format"). Pure: no I/O, no clock; the nonce is given by the caller.

Version 1, algorithm 1 (AES-256-GCM, one record)::

    offset   size  field
    0        3     magic "KCM" (0x4B 0x43 0x4D)
    3        1     format version: 0x01
    4        1     algorithm: 0x01 AES-256-GCM record (0x02: a stream, kcm.client.stream)
    5        2     token length T, big-endian (1..65535)
    7        T     the L4 token: the Unique Identifier of the data key, UTF-8
    7+T      12    nonce
    19+T     n+16  AES-256-GCM ciphertext of the n-byte plaintext, then the 16-byte tag

The header is bytes 0 to 19+T (everything before the ciphertext); the GCM additional data
is the header followed by the caller's associated data, so no header byte (version,
algorithm, token, nonce) can change without the tag failing. The header's length is fixed
by T, so header || aad is unambiguous.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from kcm.client.errors import EnvelopeError

__all__ = ["ALGORITHM_AES_256_GCM", "ALGORITHM_AES_256_GCM_STREAM", "FORMAT_VERSION", "MAGIC",
           "NONCE_SIZE", "TAG_SIZE", "Header", "TruncatedHeader", "header_prefix", "parse_header"]

MAGIC = b"KCM"
FORMAT_VERSION = 1
ALGORITHM_AES_256_GCM = 1
ALGORITHM_AES_256_GCM_STREAM = 2
NONCE_SIZE = 12
TAG_SIZE = 16
#: magic, version, algorithm, token length.
_FIXED = struct.Struct(">3sBBH")


class TruncatedHeader(EnvelopeError):
    """The bytes end inside the header (a stream reader waits for more)."""


class Header(NamedTuple):
    """What a blob's header says; ``fields`` are the algorithm's own bytes after the token
    (a record's nonce), ``body`` the offset of the ciphertext. (A NamedTuple, not a frozen
    dataclass: made at every open, it costs half as much.)"""

    algorithm: int
    token: str
    fields: bytes
    body: int


def header_prefix(token: str, algorithm: int = ALGORITHM_AES_256_GCM) -> bytes:
    """The header up to and including the token (a sealer precomputes it once per key)."""
    raw = token.encode("utf-8")
    if not 0 < len(raw) < 65536:
        raise ValueError(f"a token of {len(raw)} bytes does not fit the header")
    return _FIXED.pack(MAGIC, FORMAT_VERSION, algorithm, len(raw)) + raw


#: The size of each algorithm's fields after the token.
FIELDS_SIZE = {ALGORITHM_AES_256_GCM: NONCE_SIZE, ALGORITHM_AES_256_GCM_STREAM: 4 + 7}


def parse_header(blob: bytes | bytearray | memoryview) -> Header:
    """The header of ``blob``; :class:`EnvelopeError` naming what is wrong when it is not an
    envelope of a known version and algorithm."""
    if len(blob) < _FIXED.size:
        raise TruncatedHeader(f"not an envelope: {len(blob)} bytes is shorter than any header")
    magic, version, algorithm, length = _FIXED.unpack_from(blob, 0)
    if magic != MAGIC:
        raise EnvelopeError("not an envelope: it does not start with 'KCM'")
    if version != FORMAT_VERSION:
        raise EnvelopeError(f"envelope format version {version} is not one this client reads "
                            f"({FORMAT_VERSION})")
    size = FIELDS_SIZE.get(algorithm)
    if size is None:
        raise EnvelopeError(f"envelope algorithm {algorithm} is unknown")
    end = _FIXED.size + length
    if length == 0 or len(blob) < end + size:
        raise TruncatedHeader("the envelope is truncated in its header")
    try:
        token = bytes(blob[_FIXED.size:end]).decode("utf-8")
    except UnicodeDecodeError:
        raise EnvelopeError("the envelope's token is not UTF-8") from None
    return Header(algorithm, token, bytes(blob[end:end + size]), end + size)
