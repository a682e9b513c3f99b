"""Split the link's byte stream into frames; a frame over the size limit is skipped, not
fatal. Pure: the protocol feeds it bytes.

A frame's size is known from its 8-byte TTLV header, so, as with
:class:`kcm.ttlv.framer.Framer`, the body of a frame over ``max_size`` is never buffered.
Unlike a KMIP connection, which serves one client and is closed then, a link carries every
tenant's streams, and the header is enough to find where the next frame begins: an
oversized frame is *skipped*. Its first :data:`~kcm.link.frames.FRAME_HEAD_SIZE` bytes are
kept to name its type and stream, the rest is counted off as it arrives and dropped, and
:meth:`LinkFramer.feed` reports it as an :class:`OversizedFrame` in its place, so that the
end fails that one stream and the link goes on. A header that cannot be a frame (not a
Structure, a length not a multiple of 8) still ends the stream: after one, where the next
frame begins is unknown. The frames before it are handed out all the same (answers the
peer sent whole are delivered), and the error is kept in :attr:`LinkFramer.error`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kcm.link.frames import FRAME_HEAD_SIZE, FrameType, peek_frame_head
from kcm.ttlv.errors import TtlvError

_HEADER = struct.Struct(">II")
_STRUCTURE = 0x01


@dataclass(frozen=True, slots=True)
class OversizedFrame:
    """A frame that was skipped for its size (``size`` bytes, header included): its type
    and stream as its first bytes named them (None and 0 when they could not be read)."""

    size: int
    frame_type: FrameType | None
    stream_id: int


class LinkFramer:
    """Buffer received bytes; hand out whole frames, and oversized ones as skipped."""

    __slots__ = ("max_size", "big", "_buffer", "_discard", "error")

    def __init__(self, max_size: int, big: tuple[FrameType, int] | None = None) -> None:
        self.max_size = max_size
        #: A frame type taken up to a larger size than ``max_size`` (a gateway's CRLS), and
        #: that size; None: none.
        self.big = big
        self._buffer = bytearray()
        self._discard = 0  # bytes of a skipped frame yet to arrive, to be dropped
        #: Why the stream ended (a header that cannot be a frame's), or None.
        self.error: TtlvError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held: of a frame not yet complete, or of the head of an oversized one."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | OversizedFrame]:
        """Add ``data``; return, in stream order, the frames it completes (their bytes) and
        the oversized frames whose head it completes.

        A header that cannot be a frame's ends the stream (it cannot be resynchronised:
        the caller should close the link): its :class:`TtlvError` is kept in :attr:`error`
        and raised at once when nothing precedes it in ``data``; otherwise the frames
        before it are returned and the caller finds it in :attr:`error`. Every later call
        raises it.
        """
        if self.error is not None:
            raise self.error
        buffer = self._buffer
        # The usual case, one whole frame in one read: handed out as it came, uncopied.
        if not buffer and not self._discard and type(data) is bytes and len(data) >= 8:
            tag_type, length = _HEADER.unpack_from(data, 0)
            if (tag_type & 0xFF == _STRUCTURE and not length % 8
                    and 8 + length == len(data) <= self.max_size):
                return [data]
        if self._discard:
            skipped = min(self._discard, len(data))
            self._discard -= skipped
            data = data[skipped:]
        buffer += data
        frames: list[bytes | OversizedFrame] = []
        while len(buffer) >= 8:
            tag_type, length = _HEADER.unpack_from(buffer, 0)
            error = None
            if tag_type & 0xFF != _STRUCTURE:
                kind = tag_type & 0xFF
                error = TtlvError(3, f"a frame must be a Structure, not type {kind:#04x}")
            elif length % 8:
                error = TtlvError(4, f"structure length {length} is not a multiple of 8")
            if error is not None:
                self.error = error
                self._buffer = bytearray()
                if not frames:
                    raise error
                return frames
            total = 8 + length
            if total <= self.max_size:
                if len(buffer) < total:
                    break
                frames.append(bytes(buffer[:total]))
                del buffer[:total]
                continue
            head = min(total, FRAME_HEAD_SIZE)
            if len(buffer) < head:
                break  # wait for the bytes that say whose frame it is
            frame_type, stream_id = peek_frame_head(bytes(buffer[:head]))
            big = self.big
            if big is not None and frame_type is big[0] and total <= big[1]:
                if len(buffer) < total:
                    break
                frames.append(bytes(buffer[:total]))
                del buffer[:total]
                continue
            frames.append(OversizedFrame(total, frame_type, stream_id))
            dropped = min(total, len(buffer))
            del buffer[:dropped]
            self._discard = total - dropped
        return frames
