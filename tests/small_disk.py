"""Small file systems for tests of a full disk: a tmpfs of a given size mounted on a
directory, always unmounted afterwards (test support). Mounting needs root: the tests that
use one skip with a reason when not root and not in CI (CI runs them as root, where they
must run)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["fill", "needs_mount", "small_disk"]

#: Skips a test that mounts a file system where it cannot (not root), except in CI.
needs_mount = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"),
    reason="mounts a small tmpfs to fill it: needs root (CI runs it as root)")


@contextmanager
def small_disk(directory: Path, size: str = "4m") -> Iterator[Path]:
    """``directory`` (made if need be) with a tmpfs of ``size`` (``mount -o size=``)
    mounted on it, mode 0700; unmounted on the way out, whatever happened."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                    str(directory)], check=True, capture_output=True)
    try:
        yield directory
    finally:
        # (lazy: a process still holding a file there must not keep it mounted)
        subprocess.run(["umount", "-l", str(directory)], check=False, capture_output=True)


def fill(directory: Path, name: str = "filler") -> Path:
    """Fill the file system of ``directory`` with the file ``name`` (as a ``dd`` that ran
    out of space would); the file, to remove when space is to be freed."""
    path = directory / name
    chunk = bytes(64 * 1024)
    with open(path, "wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError:  # (no space left on device)
            pass
    return path
