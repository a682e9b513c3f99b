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

from kcm.conformance.client import KmipClient
from kcm.drain import DRAIN_TIMEOUT
from kcm.kmip.enums import ResultStatus, State
from kcm.kmip.tags import Tag
from kcm.testing.postgres import fresh_database
from kcm.testing.processes import running
from kcm.testing.requests import create_managed, get_attributes, locate, request, response
from tests.e2e_support import ClientLoad, CoreProcess, GatewayProcess, deploy, wait_until

BATCH = 64


def answered_through_a_stop(server: CoreProcess | GatewayProcess, moment: str) -> list[str]:
    """Send a batch of Creates to ``server`` and SIGTERM it while it answers (``moment``
    ``answering``) or just before (``before``); the keys created."""
    got: list[bytes] = []
    assert server.process is not None
    # (Encoded before the SIGTERM: the stopping server closes a connection idle 0.5 s, and
    # the batch must be sent well within that even on a loaded machine.)
    batch = request(*[create_managed()] * BATCH)
    with server.client() as client:
        client.connect()
        sending = threading.Thread(target=lambda: got.append(client.send(batch)))
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


def forwarded_create(client: KmipClient) -> str | None:
    """A durable Create (a core answers it through the gateway): what failed, or None."""
    [answer] = response(client.send(request(create_managed()))).batch_items
    if answer.result_status != ResultStatus.SUCCESS:
        return f"{answer.result_reason}: {answer.result_message}"
    return None


def test_a_rolling_restart_of_the_cores_fails_no_forwarded_request(
        tmp_path: Path, postgres_url: str) -> None:
    """Two cores on one database, a gateway linked to the first (listing both), clients
    forwarding durable writes through it without pause, while the cores are restarted one
    at a time. Each core, stopped with SIGTERM, sends DRAIN: the gateway answers its
    requests in flight on the old link and sends the new ones to the other core. No client
    sees a failure, and no core cuts anything when it stops."""
    url = fresh_database(postgres_url, "kcm_drain_link")
    first = deploy(tmp_path / "core1", url)
    second = first.replica(tmp_path / "core2")
    gateway = GatewayProcess(tmp_path / "gateway", first, cores=[first, second])
    second.start()
    loads = [ClientLoad(gateway, forwarded_create) for _ in range(3)]
    try:
        with running(first, gateway):
            for load in loads:
                load.start()
            restarted_under_load(first, second, gateway, loads)
            restarted_under_load(second, first, gateway, loads)
            for load in loads:
                load.done.set()
            for load in loads:
                load.join(timeout=30)
            assert [load.failures for load in loads] == [[], [], []]
            drains = [line for line in gateway.log.read_text().splitlines()
                      if "new calls wait up to" in line]
            assert len(drains) == 2, drains
    finally:
        for load in loads:
            load.done.set()
        second.stop()


def restarted_under_load(stopped: CoreProcess, other: CoreProcess, gateway: GatewayProcess,
                         loads: list[ClientLoad]) -> None:
    """SIGTERM ``stopped`` (the core ``gateway`` is linked to) while ``loads`` run; the load
    goes on at ``other``; then ``stopped`` starts again."""
    wait_until(lambda: all(load.steps >= 20 for load in loads), "load to run", 20.0)
    linked_before = gateway.log.read_text().count("linked to core")
    assert stopped.process is not None
    stopped.process.send_signal(signal.SIGTERM)
    wait_until(lambda: stopped.process.poll() is not None, "the core to exit", 15.0)
    assert stopped.process.returncode in (0, -signal.SIGTERM)
    stopped.process = None
    at_stop = [load.steps for load in loads]
    wait_until(lambda: all(load.steps >= n + 20
                           for load, n in zip(loads, at_stop, strict=True)),
               "load to go on at the other core", 20.0)
    assert [load.failures for load in loads] == [[], [], []]
    log = gateway.log.read_text()
    assert log.count("linked to core") == linked_before + 1
    assert log.rsplit("linked to core", 1)[1].split(";")[0].endswith(f":{other.link_port}")
    assert "cutting what is left" not in stopped.log.read_text()
    stopped.start()  # back, and ready for the next core's restart


def test_a_connection_sending_back_to_back_is_closed_between_two_requests(
        tmp_path: Path) -> None:
    """A client that keeps one connection busy (a database's) through a gateway's stop: it
    never idles for the grace, and was cut at the drain's timeout, a forwarded Create in
    flight answered "may or may not have happened" (one made, its answer lost). Now the
    connection closes between two requests: every answer is a success, the next request
    finds the connection closed, and the core holds exactly the keys acknowledged."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(tmp_path / "gateway", core)
    with running(core, gateway):
        made: list[str] = []
        ended: list[BaseException] = []
        answers: list[ResultStatus] = []
        stop = threading.Event()

        def send() -> None:
            with gateway.client() as client:
                while not stop.is_set():
                    try:
                        [item] = response(client.send(request(create_managed()))).batch_items
                    except Exception as error:  # noqa: BLE001 - what the stop does
                        ended.append(error)
                        return
                    answers.append(item.result_status)
                    if item.result_status == ResultStatus.SUCCESS:
                        made.append(item.response_payload.unique_identifier)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        wait_until(lambda: len(made) >= 20, "the client to be served")
        assert gateway.process is not None
        started = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        sender.join(timeout=15)
        stop.set()
        assert ended, "the connection was not closed"
        # between two requests, not cut at the drain's timeout (5 s)
        assert time.monotonic() - started < DRAIN_TIMEOUT - 1
        assert set(answers) == {ResultStatus.SUCCESS}, answers
        wait_until(lambda: gateway.process.poll() is not None, "the gateway to exit", 15.0)
        gateway.process = None
        with core.client() as client:
            [located] = response(client.send(request(locate()))).batch_items
        assert sorted(located.response_payload.unique_identifiers or []) == sorted(made)
