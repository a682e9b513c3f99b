"""Where a process's log lines go: its log file (or standard output), written so that a
full disk costs lines, never the process, and says so.

A write the disk has no room for fails (``ENOSPC``) after writing part of what it was
given, perhaps half a line. Through Python's buffered streams the rest was kept in a
buffer and written whenever a later write got through, or dropped, so the next line began
in the middle of a cut one (a JSON line no reader parses), and nothing said lines were
missing. :class:`LogSink` writes to the file descriptor itself: what was not written is
counted as lost, a line cut short is ended before the next, and the first write that gets
through again begins with one line saying how many lines were lost and why (the line is
the caller's to render, in the log's format). It never raises and never waits for space.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from typing import IO

__all__ = ["LogSink"]


class LogSink:
    """Writes text made of whole lines to ``out``; ``note(lost, why)`` renders the line
    that says ``lost`` lines were not written (``why``: the file and the error)."""

    def __init__(self, out: IO[str], note: Callable[[int, str], str | None], *,
                 write: Callable[[int, bytes], int] = os.write) -> None:
        self._out = out
        self._note = note
        self._write = write
        try:
            self._fd: int | None = out.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._fd = None  # (a stream without a file: written as a stream)
        self._name = str(getattr(out, "name", "the log"))
        #: Lines lost since the last write that got through, and why.
        self.lost = 0
        self._why = ""
        #: Whether the last write stopped in the middle of a line.
        self._cut = False

    def write(self, text: str) -> None:
        """Write ``text`` (whole lines), or count what could not be written."""
        prefix = "\n" if self._cut else ""
        if self.lost:
            prefix += self._note(self.lost, self._why) or ""
        if self._fd is None:
            self._write_stream(prefix, text)
            return
        head = prefix.encode("utf-8", "replace")
        data = head + text.encode("utf-8", "replace")
        written = 0
        with contextlib.suppress(OSError, ValueError):
            self._out.flush()  # (whatever else wrote to it goes first)
        try:
            while written < len(data):
                written += self._write(self._fd, data[written:])
        except OSError as e:
            self._failed(e, head, data, written)
            return
        self.lost, self._cut = 0, False

    def _failed(self, error: OSError, head: bytes, data: bytes, written: int) -> None:
        if written >= len(head):
            self.lost = 0  # (the line saying so got out)
        body = data[len(head):]
        done = body[:max(0, written - len(head))]
        self.lost += body.count(b"\n") - done.count(b"\n")
        if written:  # (else the last line is still as cut, or not, as it was)
            self._cut = data[written - 1:written] != b"\n"
        self._why = f"{self._name}: {error.strerror or type(error).__name__}"

    def _write_stream(self, prefix: str, text: str) -> None:
        try:
            self._out.write(prefix + text)
            self._out.flush()
        except (OSError, ValueError) as e:
            self.lost += text.count("\n")
            self._why = f"{self._name}: {getattr(e, 'strerror', None) or type(e).__name__}"
        else:
            self.lost = 0
