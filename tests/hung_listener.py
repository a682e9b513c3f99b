"""A TCP listener on 127.0.0.1 that accepts connections and never sends a byte (no TLS
handshake): a server that takes the connection and hangs, for clients' timeouts."""

from __future__ import annotations

import socket
import threading

__all__ = ["HungListener"]


class HungListener:
    """Accepts TCP connections and never sends a byte; :meth:`close` closes them all."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(raw)

    def close(self) -> None:
        self.listener.close()
        for raw in self.held:
            raw.close()
