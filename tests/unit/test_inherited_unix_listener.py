"""An inherited listening Unix socket (``fd:N``: a gateway worker's, systemd's socket
activation) is adopted non-blocking, as Twisted's adoption of a TCP one is: the workers
share it, and one that lost a connection to another waited in accept() with its reactor."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from kcm.tls import plain_server_endpoint


def test_an_inherited_unix_listener_is_adopted_non_blocking(tmp_path: Path) -> None:
    shared = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    shared.bind(str(tmp_path / "kmip.sock"))
    shared.listen(16)
    assert os.get_blocking(shared.fileno())  # as systemd hands it over
    outcome: list = []
    plain_server_endpoint(reactor, f"fd:{os.dup(shared.fileno())}").listen(
        Factory.forProtocol(Protocol)).addBoth(outcome.append)
    [port] = outcome
    try:
        assert not os.get_blocking(port.fileno())
        port.doRead()  # readable or not: returns at once, nothing to accept
    finally:
        port.stopReading()
        port.socket.close()
        shared.close()
