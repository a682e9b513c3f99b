"""How a watched file is seen to have changed (``tls.crl``, and ``tls.cert``, ``tls.key``
and ``tls.ca`` while a process runs: :mod:`kcm.tls_refresh`): its inode, size and
modification time, so a file renamed over it, rewritten in place or touched is a change."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FileStamp", "file_stamp"]

#: A file's inode, size and modification time (nanoseconds).
FileStamp = tuple[int, int, int]


def file_stamp(path: str | Path) -> FileStamp | None:
    """The :data:`FileStamp` of the file at ``path``, or None if it cannot be looked at."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
