"""Whether the disk of a SQLite database is full: what kcm-core's readiness and its log
say when writes fail for want of space.

SQLite answers a write it has no room for "database or disk is full", and nothing says
which disk: the database file, its ``-wal`` and ``-shm`` are in one directory, and the
free space of that directory's file system is what they need. It is read with
``statvfs`` (one system call, no write): a process that may use the blocks reserved for
root (ext4 keeps 5 % for it) counts them, as its writes would. Below
:data:`DISK_FULL_BELOW` free, a group commit of a few hundred requests (a few hundred KB
of WAL frames) may not fit: the disk counts as full.

A running kcm-core asks :class:`DiskSpace` (one per database, shared by its readiness and
its log line): once full, the disk counts as full until :data:`DISK_FREE_AGAIN` is free
(hysteresis: a few bytes coming and going at the line do not flap ``/readyz`` between 200
and 503, which load balancers would follow), and the free space is read at most once a
:data:`READ_EVERY` (``statvfs`` took some 15 us on a local disk, and can block on a network
file system: each request the store fails asks, on the reactor).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from sqlalchemy.engine import make_url

__all__ = ["DISK_FREE_AGAIN", "DISK_FULL_BELOW", "READ_EVERY", "DiskSpace", "disk_full",
           "free_bytes"]

#: Bytes free under which the disk of a database counts as full.
DISK_FULL_BELOW = 1 << 20
#: Bytes free from which a disk that counted as full counts as not full again.
DISK_FREE_AGAIN = 2 << 20
#: Seconds a reading of the free space is used for.
READ_EVERY = 1.0


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


class DiskSpace:
    """Whether the disk of the SQLite database ``database_file`` counts as full
    (:meth:`full`), with the hysteresis of the module: full below ``full_below`` bytes
    free, then not full again from ``free_again``; the free space (``free``: this
    module's :func:`free_bytes`) read at most once every ``every`` seconds of ``clock``
    (and again whenever ``clock`` went back). Safe from any thread (the readiness
    check's and the reactor)."""

    def __init__(self, database_file: str, *, clock: Callable[[], float] = time.monotonic,
                 every: float = READ_EVERY, full_below: int = DISK_FULL_BELOW,
                 free_again: int = DISK_FREE_AGAIN,
                 free: Callable[[str], int] | None = None) -> None:
        self.directory = os.path.dirname(os.path.abspath(database_file))
        self._clock = clock
        self._every = every
        self._full_below = full_below
        self._free_again = free_again
        self._free = free
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._why: str | None = None

    @classmethod
    def of(cls, database_url: str, **options: object) -> DiskSpace | None:
        """The :class:`DiskSpace` of the SQLite database at ``database_url``; None for
        another database (or an in-memory one)."""
        url = make_url(database_url)
        if url.get_backend_name() != "sqlite" or not url.database:
            return None
        return cls(url.database, **options)  # type: ignore[arg-type]

    def full(self) -> str | None:
        """Why the disk counts as full (:func:`disk_full`'s words), or None: it does not,
        or its free space cannot be read (what was last decided stays then)."""
        with self._lock:
            now = self._clock()
            # (A clock set back is no reason to keep a reading: kcm-core's is the
            # reactor's, the wall clock, and it would have held /readyz as it was for as
            # long as the clock went back.)
            if self._read_at is not None and 0 <= now - self._read_at < self._every:
                return self._why
            self._read_at = now
            try:
                free = (self._free or free_bytes)(self.directory)
            except OSError:
                return self._why
            line = self._free_again if self._why is not None else self._full_below
            self._why = (f"the disk is full ({self.directory}: {free} bytes free)"
                         if free < line else None)
            return self._why
