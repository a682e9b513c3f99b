"""kcm-gateway with ``busy_poll_us`` set, end to end: a real supervisor and two workers in
front of a real kcm-core. Each worker (not the supervisor) polls before it sleeps, answers
L4 and forwarded requests as usual, and spends next to no CPU once its clients are idle
(the spin ends one window after the last event)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from kcm.testing.processes import running
from tests.e2e_support import (
    CoreProcess,
    GatewayProcess,
    decrypt_sealed,
    deploy,
    succeeded_v21,
)
from tests.gateway_support import create_l4, create_managed, encrypt, locate
from tests.integration.test_gateway_workers import one_client_per_worker

#: Reads CPU times and runs a gateway's workers; run alone, after the parallel part.
pytestmark = [pytest.mark.serial,
              pytest.mark.skipif(not Path("/proc/net/tcp").exists(),
                                 reason="reads which process serves a connection from /proc")]

WINDOW_US = 700


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[CoreProcess, GatewayProcess]]:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(tmp_path / "gateway", core, workers=2,
                             settings={"busy_poll_us": WINDOW_US})
    with running(core, gateway) as pair:
        assert len(gateway.worker_pids()) == 2
        yield pair


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _log_lines(gateway: GatewayProcess) -> list[dict]:
    return [json.loads(line) for line in gateway.log.read_text().splitlines()
            if line.startswith("{")]


def test_each_worker_polls_before_it_sleeps_serves_as_usual_and_rests_when_idle(
        deployment) -> None:
    _, gateway = deployment
    said = [line for line in _log_lines(gateway) if "busy_poll_us" in line.get("text", "")]
    # Each worker says it polls; the supervisor (which only hands connections over) does not.
    assert sorted(line.get("worker") for line in said) == [1, 2], said
    assert all(f"{WINDOW_US} us" in line["text"] for line in said)
    pids = list(gateway.worker_pids().values())
    with ExitStack() as stack:
        clients = one_client_per_worker(stack, gateway)
        for _ in range(20):
            for client in clients.values():
                [created] = succeeded_v21(client, create_l4())
                token = created.unique_identifier
                [sealed] = succeeded_v21(client, encrypt(token, b"a record"))
                [opened] = succeeded_v21(client, decrypt_sealed(token, sealed))
                assert opened.data == b"a record"
        for client in clients.values():  # forwarded whole to the core
            [managed] = succeeded_v21(client, create_managed())
            [found] = succeeded_v21(client, locate())
            assert managed.unique_identifier in found.unique_identifiers
        # Idle connections: a worker spins one window after its last event, then sleeps.
        time.sleep(0.2)
        before = {pid: _cpu_seconds(pid) for pid in pids}
        time.sleep(2.0)
        spent = {pid: _cpu_seconds(pid) - before[pid] for pid in pids}
    print(f"\nCPU seconds over 2 s idle, by worker: {spent}")
    # Spinning throughout would be 2 s each; timers (usage reports, key refresh) cost a
    # few ms, each followed by at most one window.
    assert all(seconds < 0.2 for seconds in spent.values()), spent
