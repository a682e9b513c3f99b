"""Fixtures of the unit tests: the gateway's supervisor's (its acceptor and worker watch), and
the pytest process's own core-dump limit kept as it was."""

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


@pytest.fixture(autouse=True)
def _core_dumps_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A KCM process started in the test's own process (ProcessService.startService) would
    lower the pytest process's core-file limit to 0 for good, its hard limit too, which
    nothing can raise again: a later test that starts a program with core dumps allowed (to
    see it forbid them itself) then failed to start it. Unit tests keep the limit; the
    forbidding is tested in processes of its own (test_no_core_dumps, the services'
    process tests)."""
    monkeypatch.setattr("kcm.process.forbid_core_dumps", lambda: None)
