"""A step of a host's wall clock (an NTP step, a resumed VM) while everything is healthy:
the link's heartbeats and the forwarded requests' deadlines run on the monotonic clock
(kcm.monotonic_reactor), so the link stays up and the requests in flight succeed; dates
(answers' time stamps, a new key's Initial Date) follow the stepped wall clock.

Each test steps one real process (tests/clock_step.py) by +120 s while a slow batch of
Locates is in flight through the gateway (about 1-3 s at the core)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from kcm.kmip.enums import ResultStatus
from kcm.kmip.messages import ResponseBatchItem
from kcm.kmip.tags import Tag
from kcm.testing.requests import create_l4, create_managed, get_attributes, request, response
from tests.clock_step import STEP, step_wall_clock, wall_clock_shim
from tests.e2e_support import (
    GatewayProcess,
    counting_locate,
    dead_links,
    deploy,
    populated,
    send_v21,
    succeeded_v21,
)

#: The core's request deadline here: shorter than the step (a deadline kept on the wall
#: clock would cut the batch), and far longer than the slow batch takes at the core (1-3 s
#: on a quiet machine, over 10 s seen on a loaded one).
SLOW_BATCH_DEADLINE = 60


def _slow_batch(gateway: GatewayProcess) -> tuple[threading.Thread, list[ResponseBatchItem]]:
    """A batch of Locates judging every object, sent through ``gateway`` on a thread."""
    answers: list[ResponseBatchItem] = []

    def send() -> None:
        with gateway.client() as client:
            answers.extend(send_v21(client, *[counting_locate()] * 24))

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    time.sleep(0.4)  # in flight at the core
    return thread, answers


def _failed(answers: list[ResponseBatchItem]) -> list[str | None]:
    return [a.result_message for a in answers if a.result_status != ResultStatus.SUCCESS]


def test_a_step_of_the_gateways_wall_clock_keeps_its_link_and_requests(
        tmp_path: Path, monkeypatch) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}",
                  request_deadline=SLOW_BATCH_DEADLINE)
    gateway = GatewayProcess(tmp_path / "gateway", core)
    core.start()
    try:
        populated(core, 1000)
        with wall_clock_shim(monkeypatch):  # the gateway only
            gateway.start()
        gateway.wait_linked()
        links = gateway.links()
        thread, answers = _slow_batch(gateway)
        step_wall_clock(gateway.process)
        thread.join(60)
        assert not thread.is_alive()
        assert "is dead: nothing received" not in gateway.log.read_text(), \
            "a healthy link was declared dead"
        assert len(answers) == 24 and _failed(answers) == []
        assert gateway.links() == links
        # Its own answers are dated by its (stepped) wall clock.
        before = int(time.time())
        with gateway.client() as client:
            answer = response(client.send(request(create_l4())))
        assert answer.batch_items[0].result_status == ResultStatus.SUCCESS
        assert answer.header.time_stamp >= before + STEP - 1
    finally:
        gateway.stop()
        core.stop()


def test_a_step_of_the_cores_wall_clock_keeps_every_link_and_request(
        tmp_path: Path, monkeypatch) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}",
                  request_deadline=SLOW_BATCH_DEADLINE)
    gateway = GatewayProcess(tmp_path / "gateway", core)
    with wall_clock_shim(monkeypatch):  # the core only
        core.start()
    try:
        populated(core, 1000)
        gateway.start()
        gateway.wait_linked()
        links = gateway.links()
        thread, answers = _slow_batch(gateway)
        step_wall_clock(core.process)
        thread.join(60)
        assert not thread.is_alive()
        assert dead_links(core) == 0, "the core dropped a live gateway's link"
        assert len(answers) == 24 and _failed(answers) == []
        assert gateway.links() == links
        # A key made now is dated by the core's (stepped) wall clock.
        before = int(time.time())
        with gateway.client() as client:
            [created] = succeeded_v21(client, create_managed())
            answer = response(client.send(request(
                get_attributes(created.unique_identifier, Tag.INITIAL_DATE))))
        assert answer.header.time_stamp >= before + STEP - 1
        [initial] = answer.batch_items[0].response_payload.attributes
        assert initial.typed >= before + STEP - 1
    finally:
        gateway.stop()
        core.stop()
