"""The gateway link against a real `twistd kcm-core`: an in-process LinkClient with the
development PKI's gateway certificate forwards requests, fetches service keys and follows the
event stream across a core restart; heartbeats notice a core that stops answering."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pytest_twisted
import sqlalchemy
from twisted.internet import reactor, task, threads

from kcm.core.store.schema import AuditLog
from kcm.gateway.link_client import LinkClient, LinkDown, ServiceKeyRefused
from kcm.identity import Principal, Role
from kcm.kernel.missing import object_not_found
from kcm.kmip.enums import Operation, QueryFunction, ResultReason, State
from kcm.kmip.messages import (
    ProtocolVersion,
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    encode_request,
)
from kcm.kmip.payloads import QueryRequest
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, decode, encode
from tests.e2e_support import CoreProcess

TD = "kcm.test"
APP = Principal(Role.SERVICE, TD, tenant="demo", service="app",
                uri=f"spiffe://{TD}/tenant/demo/service/app")
OTHER_APP = Principal(Role.SERVICE, TD, tenant="other", service="app",
                      uri=f"spiffe://{TD}/tenant/other/service/app")
GATEWAY_ID = f"spiffe://{TD}/gateway/gw1"
TIMEOUT = 15.0


def link_client(core: CoreProcess, who: str = "gateway", **kwargs) -> LinkClient:
    pair = getattr(core.pki, who)
    return LinkClient.over_tls(reactor, f"tcp:127.0.0.1:{core.link_port}", cert=str(pair.cert),
                               key=str(pair.key), ca=str(core.pki.ca.cert),
                               server_name="127.0.0.1", **kwargs)


@pytest.fixture
def events() -> list[tuple]:
    return []


@pytest.fixture
def link(core_process: CoreProcess, events: list[tuple]) -> Iterator[LinkClient]:
    client = link_client(core_process, on_event=lambda *event: events.append(event))
    client.startService()
    pytest_twisted.blockon(client.when_connected().addTimeout(TIMEOUT, reactor))
    try:
        yield client
    finally:
        pytest_twisted.blockon(client.stopService())


async def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await task.deferLater(reactor, 0.05, lambda: None)


def query_request() -> bytes:
    header = RequestHeader(protocol_version=ProtocolVersion.of((1, 4)), batch_count=1)
    item = RequestBatchItem(operation=Operation.QUERY, request_payload=QueryRequest(
        query_functions=[QueryFunction.QUERY_OPERATIONS, QueryFunction.QUERY_OBJECTS]))
    return encode(encode_request(RequestMessage(header, [item])))


def without_time(answer: bytes) -> Item:
    """The response without Time Stamp and Server Correlation Value (which always differ)."""
    message = decode(answer)
    header = message.value[0]
    header.value = [c for c in header.value
                    if c.tag not in (Tag.TIME_STAMP, Tag.SERVER_CORRELATION_VALUE)]
    return message


def audit_rows(core: CoreProcess) -> list[AuditLog]:
    engine = sqlalchemy.create_engine(core.database)
    try:
        with engine.connect() as connection:
            return list(connection.execute(sqlalchemy.select(AuditLog).order_by(AuditLog.seq)))
    finally:
        engine.dispose()


@pytest_twisted.ensureDeferred
async def test_a_forwarded_request_gets_the_answer_the_core_gives_directly(
        core_process: CoreProcess, link: LinkClient) -> None:
    request = query_request()
    via_link = await link.forward(request, APP, "192.0.2.7:40001")

    def direct() -> bytes:
        with core_process.client("app") as client:
            return client.send(request)

    direct_answer = await threads.deferToThread(direct)
    assert without_time(via_link) == without_time(direct_answer)
    forwarded = [row for row in audit_rows(core_process) if row.gateway is not None]
    assert forwarded[-1].principal == APP.uri
    assert forwarded[-1].gateway == GATEWAY_ID
    assert forwarded[-1].source == "192.0.2.7:40001"


@pytest_twisted.ensureDeferred
async def test_a_non_gateway_certificate_is_refused(core_process: CoreProcess) -> None:
    client = link_client(core_process, who="app")
    client.startService()
    try:
        await task.deferLater(reactor, 1.5, lambda: None)
        assert not client.connected
        with pytest.raises(LinkDown):
            await client.forward(query_request(), APP, "h:1")
    finally:
        await client.stopService()
    assert "is not a gateway" in core_process.log.read_text()


@pytest_twisted.ensureDeferred
async def test_service_keys_are_served_to_the_gateway_for_an_allowed_caller(
        core_process: CoreProcess, link: LinkClient) -> None:
    [key] = await link.fetch_service_keys(APP, "demo", "app")
    assert key.uid.startswith("l3-") and (key.tenant, key.service) == ("demo", "app")
    assert key.version == 1 and key.state == State.ACTIVE and len(key.key) == 32
    [same] = await link.fetch_service_keys(APP, "demo", "app", uid=key.uid)
    assert same == key
    # Another tenant's caller: refused as if there were no such key, the refusal naming the
    # key's owner for the gateway's log only (docs/link-protocol.md §2).
    with pytest.raises(ServiceKeyRefused) as refused:
        await link.fetch_service_keys(OTHER_APP, "demo", "app")
    assert refused.value.reason == ResultReason.OBJECT_NOT_FOUND
    assert refused.value.owner == ("demo", "app")
    with pytest.raises(ServiceKeyRefused) as refused:
        await link.fetch_service_keys(OTHER_APP, "", "", uid=key.uid)
    assert (refused.value.reason, refused.value.message) == (
        ResultReason.OBJECT_NOT_FOUND, object_not_found(key.uid).message)
    assert refused.value.owner == ("demo", "app")
    fetches = [row for row in audit_rows(core_process) if row.operation == "FetchServiceKey"]
    assert [row.result_status for row in fetches] == ["SUCCESS", "SUCCESS", "OPERATION_FAILED",
                                                      "OPERATION_FAILED"]
    assert {row.gateway for row in fetches} == {GATEWAY_ID}
    assert [json.loads(row.detail) for row in fetches[2:]] == [
        {"denied": "another tenant's key"}] * 2


@pytest_twisted.ensureDeferred
async def test_events_follow_the_core_and_resume_after_a_restart_without_gaps(
        core_process: CoreProcess, link: LinkClient, events: list[tuple]) -> None:
    start = link.last_sequence

    def add_version() -> None:
        core_process.kcm("core", "service", "add", "demo", "app")

    await threads.deferToThread(add_version)
    await wait_for(lambda: len(events) == 1)
    seq, kind, tenant, payload = events[0]
    assert (seq, kind, tenant) == (start + 1, "l3.rotated", "demo")
    assert payload["service"] == "app" and payload["key_version"] == 2

    await threads.deferToThread(core_process.stop)
    await wait_for(lambda: not link.connected)
    await threads.deferToThread(add_version)  # committed while the gateway is away
    await threads.deferToThread(add_version)
    await threads.deferToThread(core_process.start)
    await link.when_connected().addTimeout(TIMEOUT, reactor)
    await wait_for(lambda: len(events) == 3)
    assert [e[0] for e in events] == [start + 1, start + 2, start + 3]
    assert [e[3]["key_version"] for e in events] == [2, 3, 4]


@pytest.mark.serial  # asserts timings: run alone, after the parallel part of `make test`
@pytest_twisted.ensureDeferred
async def test_heartbeats_notice_a_core_that_stopped_answering(
        core_process: CoreProcess, link: LinkClient) -> None:
    core_process.process.send_signal(signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        await wait_for(lambda: not link.connected, timeout=10)
        assert time.monotonic() - stopped < 5
        with pytest.raises(LinkDown):
            await link.forward(query_request(), APP, "h:1")
    finally:
        core_process.process.send_signal(signal.SIGCONT)
    await link.when_connected().addTimeout(TIMEOUT, reactor)


def test_the_link_port_is_in_the_written_config(tmp_path: Path) -> None:
    core = CoreProcess(tmp_path, "sqlite:///x.db")
    core.root.mkdir(exist_ok=True)
    (tmp_path / "pki").mkdir()
    core.write_config()
    assert f"tcp:{core.link_port}:interface=127.0.0.1" in core.config.read_text()
