"""Large data under an L4 data key: chunked AEAD in the STREAM construction (Hoang,
Reyhanitabar, Rogaway, Vizár, "Online Authenticated-Encryption and its Nonce-Reuse
Misuse-Resistance", CRYPTO 2015), for files and sockets.

A stream is an envelope of algorithm 2 (docs/sdk.md, "Streams")::

    offset   size  field
    0        7+T   as a record: "KCM", version 0x01, algorithm 0x02, T, the token
    7+T      4     chunk size C: plaintext bytes per chunk, big-endian (1..2^24)
    11+T     7     nonce prefix P (random)
    18+T     ...   chunks: AES-256-GCM of C plaintext bytes + 16-byte tag each; the last
                   chunk holds 1..C bytes, 0 only when the plaintext is empty (an
                   opener also takes an empty last chunk after full ones)

Chunk i (from 0) is sealed with nonce P || i (4 bytes, big-endian) || f, where f is 0x01 for
the last chunk and 0x00 otherwise, and additional data header || aad. Reordering, dropping
or duplicating chunks fails a tag; truncation at a chunk boundary fails because no chunk
with f = 1 arrives (:meth:`StreamOpener.finish` raises). Plaintext is released chunk by
chunk once each chunk is authentic — before the end is: a consumer must not act on it
until :meth:`StreamOpener.finish` has returned.

Every stream gets a data key of its own (an L4 Create and a Get), so that 7 random prefix
bytes never have to be unique across streams; the key is cached for opening like any other.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kcm.client.envelope import (
    ALGORITHM_AES_256_GCM_STREAM,
    TAG_SIZE,
    TruncatedHeader,
    parse_header,
)
from kcm.client.errors import EnvelopeError
from kcm.client.sealer import Envelope

__all__ = ["DEFAULT_CHUNK_SIZE", "StreamOpener", "StreamSealer", "open_stream", "seal_stream"]

#: Plaintext bytes per chunk unless the caller chooses.
DEFAULT_CHUNK_SIZE = 64 * 1024
MAX_CHUNK_SIZE = 2 ** 24
_MAX_CHUNKS = 2 ** 32
_CHUNK_SIZE = struct.Struct(">I")
_NONCE_TAIL = struct.Struct(">IB")


def _blocking(envelope: object) -> None:
    """TypeError unless ``envelope`` is a blocking :class:`Envelope`: a stream asks for its
    key in its constructor or at its header, which a DeferredEnvelope cannot answer."""
    if not callable(getattr(envelope, "new_key_and_aead", None)):
        raise TypeError(f"streams need a blocking Envelope (over a Session), not "
                        f"{type(envelope).__name__}; in a Twisted program, run them in a "
                        "thread (threads.deferToThread)")


class StreamSealer:
    """Seal a stream incrementally: :attr:`header`, then :meth:`update` with the plaintext
    as it comes (each call returns the chunks it completes), then :meth:`finish` (the last
    chunk). Write everything returned, in order."""

    def __init__(self, envelope: Envelope, aad: bytes = b"",
                 chunk_size: int = DEFAULT_CHUNK_SIZE,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        if not 0 < chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size {chunk_size} is not in 1..{MAX_CHUNK_SIZE}")
        _blocking(envelope)
        # Our own reference to the AES-GCM object: the cache may evict (and zeroize) the
        # key mid-stream.
        self._key, self._aead = envelope.new_key_and_aead(ALGORITHM_AES_256_GCM_STREAM)
        self._prefix = random(7)
        self.header = self._key.prefix + _CHUNK_SIZE.pack(chunk_size) + self._prefix
        self._aad = self.header + aad
        self._chunk_size = chunk_size
        self._buffer = bytearray()
        self._index = 0
        self._finished = False

    @property
    def token(self) -> str:
        return self._key.token

    def _chunk(self, plaintext: bytes, last: bool) -> bytes:
        if self._index >= _MAX_CHUNKS:
            raise ValueError("a stream holds at most 2^32 chunks")
        nonce = self._prefix + _NONCE_TAIL.pack(self._index, 1 if last else 0)
        self._index += 1
        return self._aead.encrypt(nonce, plaintext, self._aad)

    def update(self, data: bytes) -> bytes:
        if self._finished:
            raise ValueError("the stream is finished")
        self._buffer += data
        out = []
        size = self._chunk_size
        # Keep at least one byte back: the last chunk must be sealed as the last.
        while len(self._buffer) > size:
            out.append(self._chunk(bytes(self._buffer[:size]), False))
            del self._buffer[:size]
        return b"".join(out)

    def finish(self) -> bytes:
        if self._finished:
            raise ValueError("the stream is finished")
        self._finished = True
        last = self._chunk(bytes(self._buffer), True)
        self._buffer.clear()
        return last


class StreamOpener:
    """Open a stream incrementally: :meth:`update` with the bytes as they come (each call
    returns the plaintext of the chunks now authentic), then :meth:`finish`, which raises
    :class:`EnvelopeError` unless the last chunk arrived whole and authentic."""

    def __init__(self, envelope: Envelope, aad: bytes = b"") -> None:
        _blocking(envelope)
        self._envelope = envelope
        self._aad_tail = aad
        self._buffer = bytearray()
        self._aead: AESGCM | None = None
        self._done = False
        self._index = 0

    def _start(self) -> bool:
        try:
            header = parse_header(self._buffer)
        except TruncatedHeader:
            return False  # only the header's start has arrived
        if header.algorithm != ALGORITHM_AES_256_GCM_STREAM:
            raise EnvelopeError("this envelope is a record, not a stream: use Envelope.open")
        (self._chunk_size,) = _CHUNK_SIZE.unpack_from(header.fields, 0)
        if not 0 < self._chunk_size <= MAX_CHUNK_SIZE:
            raise EnvelopeError(f"stream chunk size {self._chunk_size} is out of range")
        self._prefix = header.fields[4:]
        self._aad = bytes(self._buffer[:header.body]) + self._aad_tail
        # Kept even if the cache evicts the key mid-stream.
        self._aead = self._envelope.aead_for(header.token)
        del self._buffer[:header.body]
        return True

    def _open(self, sealed: bytes, last: bool) -> bytes:
        nonce = self._prefix + _NONCE_TAIL.pack(self._index, 1 if last else 0)
        try:
            plain = self._aead.decrypt(nonce, sealed, self._aad)
        except InvalidTag:
            raise EnvelopeError(f"stream chunk {self._index} is not authentic (changed, "
                                "reordered, or the stream was cut)") from None
        self._index += 1
        return plain

    def update(self, data: bytes) -> bytes:
        if self._done:
            if data:
                raise EnvelopeError("data after the last chunk of the stream")
            return b""
        self._buffer += data
        if self._aead is None and not self._start():
            return b""
        out = []
        whole = self._chunk_size + TAG_SIZE
        # A full chunk is not the last only if more bytes follow it.
        while len(self._buffer) > whole:
            out.append(self._open(bytes(self._buffer[:whole]), False))
            del self._buffer[:whole]
        return b"".join(out)

    def finish(self) -> bytes:
        if self._done:
            return b""
        if self._aead is None and not self._start():
            raise EnvelopeError("the stream ends inside its header")
        if len(self._buffer) < TAG_SIZE:
            raise EnvelopeError("the stream is truncated: its last chunk is missing")
        plain = self._open(bytes(self._buffer), True)
        self._buffer.clear()
        self._done = True
        return plain


def seal_stream(envelope: Envelope, source: BinaryIO, sink: BinaryIO, aad: bytes = b"",
                chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Seal everything ``source`` yields to ``sink``; the plaintext bytes read."""
    sealer = StreamSealer(envelope, aad, chunk_size)
    sink.write(sealer.header)
    total = 0
    while block := source.read(chunk_size):
        total += len(block)
        sink.write(sealer.update(block))
    sink.write(sealer.finish())
    return total


def open_stream(envelope: Envelope, source: BinaryIO, sink: BinaryIO, aad: bytes = b"",
                read_size: int = DEFAULT_CHUNK_SIZE + TAG_SIZE) -> int:
    """Open the stream ``source`` yields into ``sink``; the plaintext bytes written. Raises
    :class:`EnvelopeError` at the first bad chunk or at a cut end (what was written before
    is authentic but incomplete)."""
    opener = StreamOpener(envelope, aad)
    total = 0
    while block := source.read(read_size):
        plain = opener.update(block)
        total += len(plain)
        sink.write(plain)
    plain = opener.finish()
    sink.write(plain)
    return total + len(plain)
