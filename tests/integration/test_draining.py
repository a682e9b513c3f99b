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
from kcm.testing.postgres import fresh_database
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


class ForwardedLoad(threading.Thread):
    """A client of ``gateway`` sending durable Creates (answered by a core) one after
    another on one connection; every failure is kept."""

    def __init__(self, gateway: GatewayProcess) -> None:
        super().__init__(daemon=True)
        self.gateway = gateway
        self.done = threading.Event()
        self.answered = 0
        self.failures: list[str] = []

    def run(self) -> None:
        try:
            with self.gateway.client() as client:
                client.connect()
                while not self.done.is_set():
                    [answer] = response(client.send(request(create_managed()))).batch_items
                    if answer.result_status != ResultStatus.SUCCESS:
                        self.failures.append(f"{answer.result_reason}: {answer.result_message}")
                    self.answered += 1
        except Exception as e:  # noqa: BLE001 - every failure is the test's business
            self.failures.append(f"{type(e).__name__}: {e}")


def test_a_stopping_core_moves_its_gateways_to_another_without_failing_a_request(
        tmp_path: Path, postgres_url: str) -> None:
    """Two cores on one database, a gateway linked to the first (listing both), clients
    forwarding durable writes through it without pause. The first core gets SIGTERM: it
    sends DRAIN, the gateway answers its requests in flight on the old link and sends the
    new ones to the second core; no client sees a failure, and the first core stops
    without cutting anything."""
    url = fresh_database(postgres_url, "kcm_drain_link")
    first = deploy(tmp_path / "core1", url)
    second = first.replica(tmp_path / "core2")
    gateway = GatewayProcess(tmp_path / "gateway", first, cores=[first, second])
    second.start()
    try:
        with running(first, gateway):
            moved_without_a_failure(first, second, gateway)
    finally:
        second.stop()


def moved_without_a_failure(first: CoreProcess, second: CoreProcess,
                            gateway: GatewayProcess) -> None:
    """SIGTERM ``first`` (the core ``gateway`` is linked to) under load; see above."""
    loads = [ForwardedLoad(gateway) for _ in range(3)]
    for load in loads:
        load.start()
    wait_until(lambda: all(load.answered >= 20 for load in loads), "load to run", 20.0)
    before = [load.answered for load in loads]
    assert first.process is not None
    first.process.send_signal(signal.SIGTERM)
    wait_until(lambda: first.process.poll() is not None, "core 1 to exit", 15.0)
    assert first.process.returncode in (0, -signal.SIGTERM)
    first.process = None
    stopped_at = [load.answered for load in loads]
    wait_until(lambda: all(load.answered >= n + 20
                           for load, n in zip(loads, stopped_at, strict=True)),
               "load to go on at core 2", 20.0)
    for load in loads:
        load.done.set()
    for load in loads:
        load.join(timeout=30)
    assert [load.failures for load in loads] == [[], [], []]
    assert all(n > m for n, m in zip(stopped_at, before, strict=True))
    log = gateway.log.read_text()
    assert "is stopping" in log
    assert f"127.0.0.1:{second.link_port};" in log[log.index("is stopping"):]
    assert "cutting what is left" not in first.log.read_text()
