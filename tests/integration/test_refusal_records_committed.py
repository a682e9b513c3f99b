"""kcm-core's ``refuse`` on a real store (a SQLite file): the refusal's record is in the
chain before the answer leaves, and a flood of refusals from many sources does not delay
another tenant's request behind them in the group commit."""

from __future__ import annotations

import json
import time

import pytest_twisted
from sqlalchemy import select
from twisted.internet import reactor

from kcm.core.audit import verify_chain
from kcm.core.group_commit import GroupCommitter
from kcm.core.request_handler import UNIDENTIFIED, CoreRequestHandler
from kcm.core.store.schema import AuditLog
from kcm.kernel.responses import failure_response
from kcm.kmip.enums import ObjectType, Operation, ResultStatus
from kcm.kmip.payloads import CreateRequest
from kcm.kmip_protocol import IDENTITY_REFUSED, RESULT_REASON_PERMISSION_DENIED, Refusal
from tests.core_support import CoreHarness
from tests.integration.test_core_handler import AES256, wire

NOW = 1_767_225_600  # 2026-01-01


def rows(core: CoreHarness, after: int = 0) -> list[AuditLog]:
    return core.store.run_sync(lambda s: [
        row for row in s.scalars(select(AuditLog).where(AuditLog.seq > after)
                                 .order_by(AuditLog.seq))], write=False)


def newest(core: CoreHarness) -> int:
    found = rows(core)
    return found[-1].seq if found else 0


def refused(n: int) -> Refusal:
    """A refusal of a certificate naming nobody, from source ``n``."""
    return Refusal(RESULT_REASON_PERMISSION_DENIED, IDENTITY_REFUSED,
                   f"10.{n // 250}.{n % 250}.1:{4000 + n}", None, f"subject CN=bot{n}")


@pytest_twisted.ensureDeferred
async def test_the_record_is_in_the_chain_when_the_answer_leaves(core: CoreHarness) -> None:
    handler = CoreRequestHandler(core.store, core.keyring, clock=lambda: NOW)
    mark = newest(core)
    answer = await handler.refuse(refused(1))
    assert answer == failure_response((1, 0), RESULT_REASON_PERMISSION_DENIED,
                                      IDENTITY_REFUSED, NOW)  # what clients got before
    [row] = rows(core, mark)
    assert (row.principal, row.tenant, row.gateway, row.source, row.operation,
            row.result_status, row.result_reason) == (
        UNIDENTIFIED, None, None, "10.0.1.1:4001", "?", "OPERATION_FAILED",
        "PERMISSION_DENIED")
    assert json.loads(row.detail) == {"refused": IDENTITY_REFUSED,
                                      "certificate": "subject CN=bot1"}
    assert core.store.run_sync(verify_chain).ok


@pytest_twisted.ensureDeferred
async def test_a_flood_of_refusals_does_not_queue_a_tenants_request_behind_it(
        core: CoreHarness) -> None:
    committer = GroupCommitter(core.store.write, max_jobs=4, write_lean=core.store.write_lean,
                               start=lambda run: reactor.callLater(0, run))
    handler = CoreRequestHandler(core.store, core.keyring, clock=time.time,
                                 committer=committer)
    mark = newest(core)
    # All submitted in one reactor turn, the flood first: the groups then take them.
    flood = [handler.refuse(refused(n)) for n in range(40)]
    create = handler.handle_as(wire((Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY, attributes=AES256))), core.caller())
    for d in flood:
        await d
    await create
    written = rows(core, mark)
    assert len(written) == 41
    [position] = [i for i, row in enumerate(written) if row.tenant == "demo"]
    assert written[position].operation == "CREATE"
    assert written[position].result_status == ResultStatus.SUCCESS.name
    assert position <= 2, position  # one refusal's turn ahead of it, not forty
    assert core.store.run_sync(verify_chain).ok
