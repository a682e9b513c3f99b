"""Files the ``kcm`` commands write (an audit export, a backup): whole or not at all, and
no one else's.

A command writes into a directory of its own, ``FILE.partial`` (mode 0700, made by the
command: it refuses to go on if anything already has that name), a new file (0600), syncs
it to disk, then links it to ``FILE`` (which fails if ``FILE`` has come to exist
meanwhile: nothing is ever written over) and syncs the directory. A command killed halfway
(SIGKILL, out of memory, a power cut) leaves at most a ``.partial`` directory, never a
``FILE`` that looks complete and is not; one that fails otherwise removes it.

The directory is the command's so that nothing of what it writes can be another user's:
a ``FILE.partial`` file made beforehand in a shared directory (or a symbolic link) was
written into and then published as ``FILE``, readable and changeable by whoever made it;
SQLite's journal of a backup is written beside its database, in that directory too.

A command's small output (``kcm key decrypt --out FILE``: a plaintext) is written by
:func:`write_private` instead, over an existing ``FILE`` only if it is the user's alone:
never through a symbolic link, into another user's file (made beforehand in a shared
directory, for the plaintext to land where its maker reads it), a file others may read, or
a second name of another file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from typing import IO

from kcm.cli import CommandError

__all__ = ["partial_file", "partial_name", "publish", "refuse_existing", "write_private",
           "writing"]


def partial_name(path: str) -> str:
    """The directory of its own in which the file that becomes ``path`` is written first."""
    return f"{path}.partial"


def refuse_existing(path: str) -> None:
    """CommandError if ``path`` exists (an earlier export, or anything else)."""
    if os.path.lexists(path):
        raise CommandError(f"{path} exists; give a new file name")


def publish(partial: str, path: str) -> None:
    """Make the written ``partial`` the file ``path``: synced, linked (never over an
    existing ``path``), the directory synced; ``partial`` is gone afterwards."""
    with open(partial, "rb") as written:
        os.fsync(written.fileno())
    try:
        os.link(partial, path)
    except FileExistsError as e:
        raise CommandError(f"{path} exists; give a new file name") from e
    os.unlink(partial)
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@contextlib.contextmanager
def partial_file(path: str) -> Iterator[str]:
    """The name of a new empty file (0600) in a new directory ``FILE.partial`` (0700), to
    write what becomes ``path`` into and :func:`publish`; the directory and whatever is
    left in it are removed when the block ends. CommandError if ``path`` exists, or if
    anything is named ``FILE.partial`` (left by a command stopped halfway, or not ours)."""
    refuse_existing(path)
    directory = partial_name(path)
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError as e:
        raise CommandError(f"{directory} exists (left by a command stopped halfway?); "
                           "remove it or give a new file name") from e
    except OSError as e:
        raise CommandError(f"cannot write {path}: {e.strerror}") from e
    try:
        partial = os.path.join(directory, os.path.basename(path))
        try:
            os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             0o600))
        except OSError as e:
            raise CommandError(f"cannot write {path}: {e.strerror}") from e
        yield partial
    finally:
        shutil.rmtree(directory, ignore_errors=True)  # a part of the file is no file


@contextlib.contextmanager
def writing(path: str) -> Iterator[IO[str]]:
    """A text file to write what becomes ``path`` into, published when the block ends
    without an error; removed if it raises (the error goes on, an OSError as a
    CommandError naming ``path``)."""
    with partial_file(path) as partial:
        try:
            with open(partial, "w", encoding="utf-8") as out:
                yield out
            publish(partial, path)
        except OSError as e:
            raise CommandError(f"cannot write {path}: {e.strerror}") from e


def write_private(path: str, data: bytes) -> None:
    """Write ``data`` to ``path``: a new file (0600), or an existing one that is this user's
    alone (a regular file of one name, owned by this user, nothing for group or others),
    emptied first. CommandError, with nothing written, for a symbolic link or any other
    file."""
    try:
        # O_NONBLOCK: a FIFO without a reader is refused, not waited on.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                     | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CommandError(f"{path} is a symbolic link; give a file name") from e
        raise CommandError(f"cannot write {path}: {e.strerror}") from e
    with os.fdopen(fd, "wb") as out:
        found = os.fstat(fd)
        if not stat.S_ISREG(found.st_mode) or found.st_nlink != 1:
            raise CommandError(f"{path} is not a file of one name; give a new file name")
        if found.st_uid != os.geteuid() or found.st_mode & 0o077:
            raise CommandError(f"{path} exists and is not this user's alone (owner "
                               f"{found.st_uid}, mode {stat.S_IMODE(found.st_mode):04o}); "
                               "give a new file name")
        try:
            out.truncate(0)
            out.write(data)
        except OSError as e:
            raise CommandError(f"cannot write {path}: {e.strerror}") from e
