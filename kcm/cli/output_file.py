"""Files the ``kcm`` commands write (an audit export, a backup): whole or not at all.

A command writes ``FILE.partial``, syncs it to disk, then links it to ``FILE`` (which
fails if ``FILE`` has come to exist meanwhile: nothing is ever written over) and syncs the
directory. A command killed halfway (SIGKILL, out of memory, a power cut) leaves at most a
``.partial`` file, never a ``FILE`` that looks complete and is not; one that fails
otherwise removes its ``.partial``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import IO

from kcm.cli import CommandError

__all__ = ["partial_name", "publish", "refuse_existing", "writing"]


def partial_name(path: str) -> str:
    """Where the file that becomes ``path`` is written first."""
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
def writing(path: str) -> Iterator[IO[str]]:
    """A text file to write what becomes ``path`` into, published when the block ends
    without an error; removed if it raises (the error goes on, an OSError as a
    CommandError naming ``path``)."""
    refuse_existing(path)
    partial = partial_name(path)
    try:
        out = open(partial, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as e:
        raise CommandError(f"cannot write {path}: {e.strerror}") from e
    try:
        with out:
            yield out
        publish(partial, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(partial)  # a part of the file is no file
        if isinstance(e, OSError):
            raise CommandError(f"cannot write {path}: {e.strerror}") from e
        raise
