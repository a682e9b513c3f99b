"""Fixtures of the unit tests of the gateway's supervisor (its acceptor and worker watch)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    """A listening TCP socket on 127.0.0.1, non-blocking, as the supervisor's acceptor reads."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sock.setblocking(False)
        yield sock
