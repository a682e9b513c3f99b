"""Whether the disk of a SQLite database is full: what kcm-core's readiness and its log
say when writes fail for want of space.

SQLite answers a write it has no room for "database or disk is full", and nothing says
which disk: the database file, its ``-wal`` and ``-shm`` are in one directory, and the
free space of that directory's file system is what they need. It is read with
``statvfs`` (one system call, no write): a process that may use the blocks reserved for
root (ext4 keeps 5 % for it) counts them, as its writes would. Below
:data:`DISK_FULL_BELOW` free, a group commit of a few hundred requests (a few hundred KB
of WAL frames) may not fit: the disk counts as full.
"""

from __future__ import annotations

import os

__all__ = ["DISK_FULL_BELOW", "disk_full", "free_bytes"]

#: Bytes free under which the disk of a database counts as full.
DISK_FULL_BELOW = 1 << 20


def free_bytes(directory: str) -> int:
    """Bytes this process may still write in the file system of ``directory``."""
    status = os.statvfs(directory)
    blocks = status.f_bfree if os.geteuid() == 0 else status.f_bavail
    return blocks * status.f_frsize


def disk_full(database_file: str) -> str | None:
    """Why the disk of the SQLite database ``database_file`` counts as full (short ASCII,
    naming its directory and the bytes free), or None: it does not, or its free space
    cannot be read (a missing directory says so elsewhere)."""
    directory = os.path.dirname(os.path.abspath(database_file))
    try:
        free = free_bytes(directory)
    except OSError:
        return None
    if free >= DISK_FULL_BELOW:
        return None
    return f"the disk is full ({directory}: {free} bytes free)"
