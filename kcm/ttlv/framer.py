"""Split a byte stream into whole TTLV messages. Pure: the protocol feeds it bytes."""

from __future__ import annotations

import struct

from kcm.ttlv.errors import MessageTooLarge, TtlvError

_HEADER = struct.Struct(">II")
_STRUCTURE = 0x01


class Framer:
    """Buffer received bytes and hand out complete top-level TTLV messages.

    A message's size is known from its 8-byte header, so a declared length over
    ``max_size`` is refused before any of its body is buffered. Each message
    must be a Structure; the framer checks only the header, not the body.
    """

    __slots__ = ("max_size", "_buffer")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the messages it completes (possibly none).

        Raises :class:`TtlvError` (or :class:`MessageTooLarge`) when a header is
        unusable; the stream cannot be resynchronised after that and the caller
        should close the connection.
        """
        buffer = self._buffer
        buffer += data
        messages = []
        while len(buffer) >= 8:
            tag_type, length = _HEADER.unpack_from(buffer, 0)
            if tag_type & 0xFF != _STRUCTURE:
                kind = tag_type & 0xFF
                raise TtlvError(3, f"a message must be a Structure, not type {kind:#04x}")
            if length % 8:
                raise TtlvError(4, f"structure length {length} is not a multiple of 8")
            total = 8 + length
            if total > self.max_size:
                raise MessageTooLarge(
                    4, f"declared message size {total} exceeds the maximum {self.max_size}"
                )
            if len(buffer) < total:
                break
            messages.append(bytes(buffer[:total]))
            del buffer[:total]
        return messages
