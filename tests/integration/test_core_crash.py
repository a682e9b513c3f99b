"""Crash safety: SIGKILL kcm-core during a write load; after a restart every acknowledged
operation is there, nothing half-written is, and the audit chain verifies."""

from __future__ import annotations

import json
import signal
import threading
import time

import sqlalchemy

from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import CryptographicAlgorithm, ObjectType, Operation, ResultStatus
from kcm.kmip.messages import (
    ProtocolVersion,
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    decode_response,
    encode_request,
)
from kcm.kmip.payloads import CreateRequest
from kcm.kmip.tags import Tag
from kcm.ttlv import decode, encode
from tests.e2e_support import CoreProcess

CREATE = encode(encode_request(RequestMessage(
    RequestHeader(protocol_version=ProtocolVersion.of((2, 1)), batch_count=1),
    [RequestBatchItem(operation=Operation.CREATE, request_payload=CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY,
        attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
                    Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256)]))])))


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


def test_sigkill_during_writes_loses_nothing_acknowledged(core_process: CoreProcess) -> None:
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
