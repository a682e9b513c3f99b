"""kcm's blocking KMIP client over a Unix stream socket (TLS as over TCP): for tests and
benchmarks of a ``unix:`` listener."""

from __future__ import annotations

import os
import socket
from typing import Any

from kcm.conformance.client import KmipClient

__all__ = ["UnixKmipClient"]


class UnixKmipClient(KmipClient):
    """A :class:`KmipClient` that connects to the Unix stream socket at ``path``."""

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__("localhost", 0, **kwargs)
        self.path = path

    def connect(self, deadline: float | None = None) -> None:
        if self._socket is not None:
            return
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.settimeout(self.timeout)
        raw.connect(self.path)
        self._socket = self._context.wrap_socket(raw, server_hostname="localhost")
        self._socket.settimeout(self.timeout)
        self._pid = os.getpid()
