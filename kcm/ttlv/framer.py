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

    An unusable header ends the stream: nothing after it can be framed. The whole
    messages before it are still handed out (a client may send a request and the
    bad header in one write, and is owed the answer); the error is then kept in
    :attr:`error` for the caller to act on once it has dealt with them.
    """

    __slots__ = ("max_size", "_buffer", "error")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        #: Why the stream ended (an unusable header), or None while it is readable.
        self.error: TtlvError | None = None

    def clear(self) -> None:
        """Forget the bytes of a message begun (the connection is gone)."""
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the messages it completes (possibly none).

        When a header is unusable the stream cannot be resynchronised: the error
        (:class:`TtlvError`, or :class:`MessageTooLarge`) is kept in :attr:`error`
        and the bytes from it on are dropped. It is raised at once when no whole
        message precedes it in ``data``; otherwise the messages before it are
        returned and the caller finds it in :attr:`error` (answer them, then close
        the connection). Every later call raises it.
        """
        if self.error is not None:
            raise self.error
        buffer = self._buffer
        # The usual case, one whole message in one read: handed out as it came.
        if not buffer and type(data) is bytes and len(data) >= 8:
            try:
                total = 8 + self._length(*_HEADER.unpack_from(data, 0))
            except TtlvError as e:
                self.error = e
                raise
            if total == len(data):
                return [data]
        buffer += data
        messages = []
        while len(buffer) >= 8:
            try:
                total = 8 + self._length(*_HEADER.unpack_from(buffer, 0))
            except TtlvError as e:
                self.error = e
                self._buffer = bytearray()
                if not messages:
                    raise
                return messages
            if len(buffer) < total:
                break
            messages.append(bytes(buffer[:total]))
            del buffer[:total]
        return messages

    def _length(self, tag_type: int, length: int) -> int:
        """The body length of a message header; TtlvError if the header is unusable."""
        if tag_type & 0xFF != _STRUCTURE:
            kind = tag_type & 0xFF
            raise TtlvError(3, f"a message must be a Structure, not type {kind:#04x}")
        if length % 8:
            raise TtlvError(4, f"structure length {length} is not a multiple of 8")
        if 8 + length > self.max_size:
            raise MessageTooLarge(
                4, f"declared message size {8 + length} exceeds the maximum {self.max_size}"
            )
        return length
