"""The codec's one error type."""

from __future__ import annotations


class TtlvError(ValueError):
    """Bytes that are not valid TTLV, or a value that cannot be encoded.

    ``offset`` is the byte offset (from the start of the decoded buffer) of the
    item or field that is wrong; ``reason`` says what was wrong.
    """

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


class MessageTooLarge(TtlvError):
    """A declared length exceeds the configured maximum message size."""
