"""Crash safety: SIGKILL kcm-core during a write load; after a restart every acknowledged
operation is there, nothing half-written is, and the audit chain verifies. The second test
kills it 20 times while 8 clients keep its group commits (kcm.core.group_commit) full.

Both run on SQLite and on PostgreSQL, where a request's statements are sent in psycopg's
pipeline mode and the store drains them before each commit
(kcm.core.store.raw_statements): an answer still leaves only after its commit."""

from __future__ import annotations

import contextlib
import io
import json
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import sqlalchemy

from kcm.cli import main
from kcm.kmip.attributes import Attribute, AttributeReference
from kcm.kmip.enums import CryptographicAlgorithm, ObjectType, Operation, ResultStatus
from kcm.kmip.messages import (
    ProtocolVersion,
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    decode_response,
    encode_request,
)
from kcm.kmip.payloads import CreateRequest, DiscoverVersionsRequest, GetAttributesRequest
from kcm.kmip.tags import Tag
from kcm.ttlv import decode, encode
from tests.e2e_support import CoreProcess

CREATE = encode(encode_request(RequestMessage(
    RequestHeader(protocol_version=ProtocolVersion.of((2, 1)), batch_count=1),
    [RequestBatchItem(operation=Operation.CREATE, request_payload=CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY,
        attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
                    Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256)]))])))


DISCOVER_VERSIONS = encode(encode_request(RequestMessage(
    RequestHeader(protocol_version=ProtocolVersion.of((2, 1)), batch_count=1),
    [RequestBatchItem(operation=Operation.DISCOVER_VERSIONS,
                      request_payload=DiscoverVersionsRequest())])))


@pytest.fixture(params=["sqlite", "postgresql"])
def crash_core(request: pytest.FixtureRequest) -> Iterator[CoreProcess]:
    """A running kcm-core on SQLite, then on PostgreSQL (the suite's cluster)."""
    yield request.getfixturevalue(
        "core_process" if request.param == "sqlite" else "core_process_pg")


def _load(core: CoreProcess, acknowledged: list[str], failures: list[object],
          stop: threading.Event) -> None:
    client = core.client()
    try:
        while not stop.is_set():
            response = decode_response(decode(client.send(CREATE)))
            item = response.batch_items[0]
            if item.result_status != ResultStatus.SUCCESS:
                failures.append(item)
                return
            acknowledged.append(item.response_payload.unique_identifier)
    except (ConnectionError, OSError):
        pass  # the server died under us: whatever was not acknowledged may be lost
    finally:
        client.close()


def test_sigkill_during_writes_loses_nothing_acknowledged(crash_core: CoreProcess) -> None:
    core_process = crash_core
    acknowledged: list[str] = []
    failures: list[object] = []
    stop = threading.Event()
    workers = [threading.Thread(target=_load, args=(core_process, acknowledged, failures, stop))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    core_process.stop(signal.SIGKILL)  # mid-load: requests are in flight
    stop.set()
    for worker in workers:
        worker.join(timeout=30)
    assert len(acknowledged) >= 40 and failures == []

    core_process.start()
    engine = sqlalchemy.create_engine(core_process.database)
    with engine.connect() as connection:
        stored = set(connection.scalars(sqlalchemy.text(
            "SELECT uid FROM managed_objects WHERE level IS NULL")))
        audited = set()
        for row in connection.execute(sqlalchemy.text(
                "SELECT object_ids FROM audit_log WHERE operation = 'CREATE' "
                "AND result_status = 'SUCCESS'")):
            audited.update(json.loads(row[0]))
    engine.dispose()
    assert set(acknowledged) <= stored  # durable: every acknowledged Create survived
    assert stored == audited  # atomic: no object without its audit record, nor the reverse
    assert "audit log intact" in core_process.kcm("audit", "verify").stdout
    # and the restarted core serves
    response = decode_response(decode(core_process.client().send(CREATE)))
    assert response.batch_items[0].result_status == ResultStatus.SUCCESS


@dataclass
class _Acknowledged:
    """What the clients of one cycle were answered (appended from their threads)."""

    created: list[str] = field(default_factory=list)
    #: The Server Correlation Value of every answer: the correlation id of its audit record.
    correlations: list[str] = field(default_factory=list)
    failures: list[object] = field(default_factory=list)


def get_state(uid: str) -> bytes:
    return encode(encode_request(RequestMessage(
        RequestHeader(protocol_version=ProtocolVersion.of((2, 1)), batch_count=1),
        [RequestBatchItem(operation=Operation.GET_ATTRIBUTES,
                          request_payload=GetAttributesRequest(
                              unique_identifier=uid,
                              attribute_references=[AttributeReference(Tag.STATE)]))])))


def _mixed_load(core: CoreProcess, seen: _Acknowledged, stop: threading.Event,
                seed: int) -> None:
    """Creates, and now and then a Discover Versions (answered without a transaction) or a
    Get Attributes of the client's last key (read in a lean group commit), whose audit
    records ride in group commits too, until ``stop`` or the server dies."""
    chooser = random.Random(seed)
    mine: list[str] = []
    try:
        client = core.client()
    except (ConnectionError, OSError):
        return  # killed before this client connected
    try:
        while not stop.is_set():
            roll = chooser.random()
            wire = (DISCOVER_VERSIONS if roll < 0.2 else
                    get_state(mine[-1]) if roll < 0.4 and mine else CREATE)
            response = decode_response(decode(client.send(wire)))
            item = response.batch_items[0]
            if item.result_status != ResultStatus.SUCCESS:
                seen.failures.append(item)
                return
            if item.operation == Operation.CREATE:
                seen.created.append(item.response_payload.unique_identifier)
                mine.append(item.response_payload.unique_identifier)
            seen.correlations.append(response.header.server_correlation_value)
    except (ConnectionError, OSError):
        pass  # the server died under us: whatever was not acknowledged may be lost
    finally:
        client.close()


@pytest.mark.long  # ten seconds or more: the parallel part of `make test` starts it first
def test_sigkill_during_group_commits_20_cycles(crash_core: CoreProcess) -> None:
    core_process = crash_core
    chooser = random.Random(10)
    everything_created: set[str] = set()
    for cycle in range(20):
        seen, stop = _Acknowledged(), threading.Event()
        clients = [threading.Thread(target=_mixed_load, args=(core_process, seen, stop,
                                                              cycle * 8 + n))
                   for n in range(8)]
        for client in clients:
            client.start()
        # Kill after a varying amount of acknowledged work, with requests of all 8 in flight.
        wanted = chooser.randrange(16, 80)
        deadline = time.monotonic() + 30
        while len(seen.correlations) < wanted and time.monotonic() < deadline:
            time.sleep(0.002)
        core_process.stop(signal.SIGKILL)
        stop.set()
        for client in clients:
            client.join(timeout=30)
        assert seen.failures == [], f"cycle {cycle}"
        assert len(seen.correlations) >= wanted, f"cycle {cycle}: too slow to measure"

        core_process.start()
        engine = sqlalchemy.create_engine(core_process.database)
        with engine.connect() as connection:
            stored = set(connection.scalars(sqlalchemy.text(
                "SELECT uid FROM managed_objects WHERE level IS NULL")))
            audited_creates: set[str] = set()
            for row in connection.execute(sqlalchemy.text(
                    "SELECT object_ids FROM audit_log WHERE operation = 'CREATE' "
                    "AND result_status = 'SUCCESS'")):
                audited_creates.update(json.loads(row[0]))
            correlations = set(connection.scalars(sqlalchemy.text(
                "SELECT correlation_id FROM audit_log")))
        engine.dispose()
        # durable: every acknowledged Create, and the audit record of every answer
        assert set(seen.created) <= stored, f"cycle {cycle}"
        assert set(seen.correlations) <= correlations, f"cycle {cycle}"
        # atomic: no object without its audit record, nor the reverse
        assert stored == audited_creates, f"cycle {cycle}"
        assert everything_created <= stored, f"cycle {cycle}: an earlier object is gone"
        everything_created = stored
        assert "audit log intact" in _audit_verify(core_process), f"cycle {cycle}"


def _audit_verify(core: CoreProcess) -> str:
    """What ``kcm audit verify`` prints for ``core``'s deployment, run in this process (the
    same command and code as the `kcm` executable, without a new interpreter's second of
    imports in each of the 40 cycles)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["audit", "verify", "-c", str(core.config)])
    assert status == 0, out.getvalue()
    return out.getvalue()
