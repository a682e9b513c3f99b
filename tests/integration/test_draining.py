"""A stopping kcm-core or kcm-gateway answers what it was asked before it goes
(kcm.drain): a real process gets SIGTERM while it answers a client's batch of 64 durable
Creates (about 20 ms of work), or just before the client, connected already, sends it;
the client gets the whole answer either way, every key then held by the core, and the
process then closes the connection and exits."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from kcm.kmip.enums import ResultStatus, State
from kcm.kmip.tags import Tag
from kcm.testing.processes import running
from kcm.testing.requests import create_managed, get_attributes, request, response
from tests.e2e_support import CoreProcess, GatewayProcess, deploy, wait_until

BATCH = 64


def answered_through_a_stop(server: CoreProcess | GatewayProcess, moment: str) -> list[str]:
    """Send a batch of Creates to ``server`` and SIGTERM it while it answers (``moment``
    ``answering``) or just before (``before``); the keys created."""
    got: list[bytes] = []
    assert server.process is not None
    with server.client() as client:
        client.connect()
        sending = threading.Thread(
            target=lambda: got.append(client.send(request(*[create_managed()] * BATCH))))
        if moment == "before":
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.05)  # the stop has begun
            sending.start()
        else:
            sending.start()
            time.sleep(0.005)  # the request is being answered
            server.process.send_signal(signal.SIGTERM)
        sending.join(timeout=30)
        assert got, "no answer"
        items = response(got[0]).batch_items
        assert [item.result_status for item in items] == [ResultStatus.SUCCESS] * BATCH
        wait_until(lambda: server.process.poll() is not None, "the process to exit", 15.0)
        # (twistd ends by the signal it was stopped with, once it has stopped cleanly)
        assert server.process.returncode in (0, -signal.SIGTERM)
    server.process = None
    return [item.response_payload.unique_identifier for item in items]


def held(core: CoreProcess, identifiers: list[str]) -> None:
    with core.client() as client:
        for uid in identifiers[:: BATCH // 8]:
            [item] = response(client.send(request(get_attributes(uid, Tag.STATE)))).batch_items
            assert item.result_status == ResultStatus.SUCCESS, uid
            assert [a.value.value for a in item.response_payload.attributes
                    if a.tag == Tag.STATE] == [State.PRE_ACTIVE]


@pytest.mark.parametrize("moment", ["answering", "before"])
@pytest.mark.parametrize("stopped", ["core", "gateway"])
def test_a_stopping_server_answers_the_batch_it_was_sent(tmp_path: Path, stopped: str,
                                                         moment: str) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(tmp_path / "gateway", core)
    with running(core, gateway):
        if stopped == "core":
            identifiers = answered_through_a_stop(core, moment)
            core.start()
        else:
            identifiers = answered_through_a_stop(gateway, moment)
        held(core, identifiers)
