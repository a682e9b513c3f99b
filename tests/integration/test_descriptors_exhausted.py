"""kcm-core out of file descriptors (its ``ulimit -n`` below its caps, as its start warns,
and taken up by connections that hold them): the clients connected serve on, new ones
wait in the listen backlog, the log says so once (not a line per turn of the reactor),
and once connections go, new ones are served with no restart."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm.kmip.enums import ResultStatus
from kcm.testing.requests import create_managed, get, request, response
from tests.e2e_support import CoreProcess, deploy, wait_until

#: The core's soft limit on open files: well below its connection caps.
NOFILE = 128
#: Seconds the listener is held exhausted while the connected client works.
EXHAUSTED_FOR = 3.0


@pytest.fixture
def starved_core(tmp_path: Path) -> Iterator[CoreProcess]:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}",
                  handshake_timeout=60.0)
    core.nofile = NOFILE
    core.start()
    try:
        yield core
    finally:
        core.stop()


def open_fds(core: CoreProcess) -> int:
    assert core.process is not None
    return len(list(Path(f"/proc/{core.process.pid}/fd").iterdir()))


def creates_and_gets(client, count: int) -> list[str]:
    """``count`` Creates, each read back; the messages of those that failed."""
    failed = []
    for _ in range(count):
        [created] = response(client.send(request(create_managed()))).batch_items
        if created.result_status != ResultStatus.SUCCESS:
            failed.append(created.result_message)
            continue
        uid = created.response_payload.unique_identifier
        [got] = response(client.send(request(get(uid)))).batch_items
        if got.result_status != ResultStatus.SUCCESS:
            failed.append(got.result_message)
    return failed


def test_a_core_out_of_descriptors_serves_its_clients_and_logs_it_once(
        starved_core: CoreProcess) -> None:
    core = starved_core
    with core.client() as client:
        assert creates_and_gets(client, 2) == []
        # TCP connections that never start TLS hold a descriptor each (up to the handshake
        # deadline, a minute here): more of them than the process may open.
        holders = []
        try:
            for n in range(2 * NOFILE):
                sock = socket.socket()
                sock.bind((f"127.0.0.{2 + n // 90}", 0))
                sock.connect(("127.0.0.1", core.port))
                holders.append(sock)
            wait_until(lambda: open_fds(core) >= NOFILE - 2, "the core out of descriptors")
            log_before = len(core.log.read_text().splitlines())
            started = time.monotonic()
            failed = []
            while time.monotonic() - started < EXHAUSTED_FOR:
                failed += creates_and_gets(client, 5)
            assert open_fds(core) >= NOFILE - 2
            # The connected client was served throughout (its writes' statement journals
            # need no file of their own).
            assert failed == []
            log = core.log.read_text()
            new_lines = [line for line in log.splitlines()[log_before:]
                         if '"kcm.audit' not in line]
            # (Twisted's port wrote one to three lines a connection refused, and one on
            # each turn of the reactor once its reserved descriptor was gone.)
            assert "EMFILE" not in log and "Could not accept" not in log
            assert log.count("cannot accept connections on tcp:") == 1
            assert "Too many open files" in log
            # Besides the audit copies of the client's requests, next to nothing.
            assert len(new_lines) < 20, new_lines[:5]
        finally:
            for sock in holders:
                sock.close()
        # Descriptors free again: a new client is served, with no restart.
        with core.client() as newcomer:
            newcomer.timeout = 10
            assert creates_and_gets(newcomer, 1) == []
        assert creates_and_gets(client, 1) == []
    assert core.kcm("audit", "verify").returncode == 0
