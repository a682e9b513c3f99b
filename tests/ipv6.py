"""Whether the machine has an IPv6 loopback (``::1``) for the IPv6 tests.

Without one the IPv6 tests skip, saying why; under ``$CI`` they fail instead (CI has ``::1``:
a skip there would hide that IPv6 went untested), as :mod:`tests.pg` does for PostgreSQL.
"""

from __future__ import annotations

import os
import socket

import pytest

__all__ = ["require_ipv6_loopback"]


def require_ipv6_loopback() -> None:
    """Return if a TCP socket can listen on ``::1``; else skip the test (fail under CI)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
            sock.listen()
    except OSError as e:  # (no IPv6 in the kernel, or ::1 not on the loopback)
        reason = f"no IPv6 loopback on this machine (cannot listen on ::1: {e})"
        if os.environ.get("CI"):
            pytest.fail(f"IPv6 tests cannot run in CI: {reason}", pytrace=False)
        pytest.skip(f"IPv6 tests skipped: {reason}")
