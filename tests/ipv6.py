"""Whether the machine has an IPv6 loopback (``::1``) for the IPv6 tests.

Without one the IPv6 tests skip, saying why; under ``$CI`` they fail instead (CI has ``::1``:
a skip there would hide that IPv6 went untested), as :mod:`tests.pg` does for PostgreSQL.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
from twisted.internet.address import IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IHostResolution
from zope.interface import implementer

__all__ = ["IPv6OnlyNames", "require_ipv6_loopback"]


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


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class IPv6OnlyNames:
    """A name resolver (``reactor.installNameResolver``) for which ``core.test`` is ::1
    alone, an AAAA record, whatever families are asked for (as DNS answers a name without
    A records); other names resolve to nothing."""

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0,  # noqa: N802,N803
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> Any:  # noqa: N803
        resolution = _Resolution(hostName)
        receiver.resolutionBegan(resolution)
        if hostName == "core.test" and (addressTypes is None or IPv6Address in addressTypes):
            receiver.addressResolved(IPv6Address("TCP", "::1", portNumber))
        receiver.resolutionComplete()
        return resolution
