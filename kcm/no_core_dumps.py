"""Keep a KCM process's memory out of core dumps and away from other processes of its user.

kcm-core holds the L1 key and opens tenant and service keys; kcm-gateway holds service keys
and opened DEKs. A core dump (``ulimit -c``, systemd-coredump) would write them to disk, and
any process of the same user could read them through ``ptrace`` or ``/proc/PID/mem``. At
start each process sets its core file size limit to 0 and makes itself not dumpable
(Linux ``prctl(PR_SET_DUMPABLE, 0)``, which also stops same-user ptrace), so neither can
happen whatever the environment allows.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys

__all__ = ["forbid_core_dumps", "dumpable"]

_PR_SET_DUMPABLE = 4
_PR_GET_DUMPABLE = 3


def _prctl() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return libc.prctl


def forbid_core_dumps() -> None:
    """No core file, and not dumpable (on Linux); raises OSError when either fails."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    prctl = _prctl()
    if prctl is not None and prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:  # type: ignore[operator]
        error = ctypes.get_errno()
        raise OSError(error, "prctl(PR_SET_DUMPABLE, 0) failed")


def dumpable() -> bool | None:
    """Whether this process may be dumped (None: not Linux)."""
    prctl = _prctl()
    if prctl is None:
        return None
    return bool(prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0))  # type: ignore[operator]
