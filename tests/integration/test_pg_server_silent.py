"""A PostgreSQL server that stops answering (every one of its processes stopped: a paused
VM, storage hung under it; its kernel still acknowledges TCP, so no keepalive fires) holds
a kcm-core request no longer than ``limits.request_deadline`` plus a grace: the connection
waiting on it is shut down (kcm.core.store.server_silence), the request is answered
General Failure "the key store is unavailable" (one in its transaction), a request queued
behind it is answered at its own deadline without running (kcm.core.queue_expiry), and once
the server answers again, so does the core. A core stopped while its server is silent stops
too. A real cluster of its own."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm.core.store.engine import SILENCE_GRACE_S
from kcm.kmip.enums import ResultReason, ResultStatus
from kcm.testing.postgres import Cluster
from kcm.testing.processes import CoreProcess, deploy
from tests.gateway_support import create_managed, request, response
from tests.pg import own_cluster  # noqa: F401  (fixture)

#: Stops a PostgreSQL server and measures seconds: run alone.
pytestmark = pytest.mark.serial

#: The deployment's request deadline, seconds (short, to keep the test short).
DEADLINE = 1.0
#: Seconds a new connection waits for the server (libpq's connect_timeout, in the URL).
CONNECT_TIMEOUT = 2


@pytest.fixture
def cluster(own_cluster: Cluster) -> Iterator[Cluster]:  # noqa: F811
    try:
        yield own_cluster
    finally:
        _signal_server(own_cluster, signal.SIGCONT)  # (stopped as it was left, else)


def _server_pids(cluster: Cluster) -> list[int]:
    """The postmaster and every process it started."""
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                pids.append(int(entry))
    return pids


def _signal_server(cluster: Cluster, sig: int) -> None:
    try:
        pids = _server_pids(cluster)
    except (OSError, ValueError):
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _create(core: CoreProcess) -> tuple[float, int, int | None, str]:
    """Seconds one Create took at ``core``, and its status, reason and message."""
    started = time.monotonic()
    with core.client("app") as app:
        [answer] = response(app.send(request(create_managed()))).batch_items
    return (time.monotonic() - started, answer.result_status, answer.result_reason,
            answer.result_message or "")


def _create_or_nothing(core: CoreProcess) -> None:
    with contextlib.suppress(Exception):  # the core went away: what the test makes it do
        _create(core)


def test_a_silent_postgresql_server_holds_a_request_no_longer_than_its_deadline(
        cluster: Cluster, tmp_path: Path) -> None:
    # (a new connection waits CONNECT_TIMEOUT for the silent server, not libpq's 10 s)
    core = deploy(tmp_path / "core", f"{cluster.url}?connect_timeout={CONNECT_TIMEOUT}",
                  request_deadline=DEADLINE)
    core.start()
    try:
        assert _create(core)[1] == ResultStatus.SUCCESS
        _signal_server(cluster, signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            first: list[tuple[float, int, int | None, str]] = []
            holding = threading.Thread(target=lambda: first.append(_create(core)))
            holding.start()  # its group commit waits on the silent server
            time.sleep(0.3)
            queued = _create(core)  # and this one waits for that group to end
            holding.join()
            # Each is answered at its own deadline, unrun (the group waits for the writers'
            # lock before it takes them), not when the group's wait is cut.
            for took, status, reason, message in (*first, queued):
                assert (status, reason) == (ResultStatus.OPERATION_FAILED,
                                            ResultReason.GENERAL_FAILURE), message
                assert message.startswith(
                    f"request deadline of {DEADLINE:g} s exceeded before it ran"), message
                assert DEADLINE - 0.1 < took < DEADLINE + 0.6, took
            # The wait itself is cut at the deadline plus the grace (looked at twice a
            # second).
            while "left a statement unanswered for" not in core.log.read_text():
                assert time.monotonic() - stopped < DEADLINE + SILENCE_GRACE_S + 3
                time.sleep(0.1)
            assert time.monotonic() - stopped > DEADLINE + SILENCE_GRACE_S - 0.5
        finally:
            _signal_server(cluster, signal.SIGCONT)
        # The server answers again: so does the core, on a new connection.
        took, status, _, message = _create(core)
        assert status == ResultStatus.SUCCESS, message
        assert took < 2, took

        # A core stopped while its server is silent and a request waits on it stops by
        # itself (not killed), once that wait is cut.
        _signal_server(cluster, signal.SIGSTOP)
        try:
            waiting = threading.Thread(target=_create_or_nothing, args=(core,), daemon=True)
            waiting.start()
            time.sleep(0.5)
            process, started = core.process, time.monotonic()
            core.stop()
            stopped = time.monotonic() - started
        finally:
            _signal_server(cluster, signal.SIGCONT)
        # twistd ends with the signal that stopped it; SIGKILL would have come at 20 s. The
        # wait is cut, then a new connection may wait its connect_timeout.
        assert process.returncode == -signal.SIGTERM, process.returncode
        assert stopped < DEADLINE + SILENCE_GRACE_S + CONNECT_TIMEOUT + 2, stopped
    finally:
        core.stop()
