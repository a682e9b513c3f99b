"""Run one request's batch inside one database transaction (KMIP 1.4 §6.12–§6.15, 2.1 §9).

Called on a store worker thread. Each batch item runs in a savepoint, so a failed
item leaves nothing behind; the Batch Error Continuation Option decides what
happens next (Stop: the rest is skipped; Continue: the rest runs; Undo: everything
is rolled back and the successful items are reported Undone). Every item that ran
gets an audit record, committed with the changes it describes. A KmipError becomes
a failed item with its Result Reason; any other exception a General Failure logged
with the request's correlation id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from kcm.core.audit import AuditEvent, append_audit
from kcm.core.context import Caller, OperationContext
from kcm.core.keyring import Keyring
from kcm.core.server_info import ServerInfo
from kcm.kmip.enums import BatchErrorContinuationOption, Operation, ResultReason, ResultStatus
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import (
    IdPlaceholder,
    ProtocolVersion,
    RequestMessage,
    ResponseBatchItem,
    ResponseHeader,
    ResponseMessage,
)
from kcm.ttlv import Item

log = logging.getLogger(__name__)

OperationHandler = Callable[[OperationContext, Any], Any]

#: Operation -> handler; filled by :mod:`kcm.core.operations`.
OPERATIONS: dict[int, OperationHandler] = {}


def operation(op: Operation) -> Callable[[OperationHandler], OperationHandler]:
    """Register a handler for ``op``. The handler gets the typed request payload and
    returns the response payload (a model, a raw Item, or None for no payload)."""

    def register(handler: OperationHandler) -> OperationHandler:
        OPERATIONS[int(op)] = handler
        return handler

    return register


@dataclass(slots=True)
class _Outcome:
    item: ResponseBatchItem
    object_ids: list[str]
    detail: dict[str, object]


def execute(session: Session, request: RequestMessage, caller: Caller, *, now: int,
            keyring: Keyring, server_info: ServerInfo, correlation_id: str) -> ResponseMessage:
    """Execute ``request`` and build its response (in the request's version)."""
    header = request.header
    version = header.version
    continuation = header.effective_error_continuation
    placeholder = IdPlaceholder()
    outcomes: list[_Outcome] = []
    failed = False
    everything = session.begin_nested()
    for batch_item in request.batch_items:
        if failed and continuation != BatchErrorContinuationOption.CONTINUE:
            break
        ctx = OperationContext(session=session, caller=caller, version=version, now=now,
                               keyring=keyring, server_info=server_info,
                               id_placeholder=placeholder, random_bytes=keyring.random_bytes)
        response = ResponseBatchItem(operation=batch_item.operation,
                                     unique_batch_item_id=batch_item.unique_batch_item_id,
                                     result_status=ResultStatus.SUCCESS)
        savepoint = session.begin_nested()
        try:
            handler = OPERATIONS.get(int(batch_item.operation))
            payload = batch_item.request_payload
            if handler is None or isinstance(payload, Item):
                raise KmipError(
                    ResultReason.OPERATION_NOT_SUPPORTED,
                    f"operation {operation_name(batch_item.operation)} is not supported")
            response.response_payload = handler(ctx, payload)
            savepoint.commit()
        except KmipError as e:
            savepoint.rollback()
            fail_item(response, e.reason, e.message)
            failed = True
        except Exception:
            savepoint.rollback()
            log.exception("operation %s failed [correlation id %s]",
                          operation_name(batch_item.operation), correlation_id)
            fail_item(response, ResultReason.GENERAL_FAILURE,
                  f"internal error (correlation id {correlation_id})")
            failed = True
        outcomes.append(_Outcome(response, ctx.object_ids, ctx.audit_detail))
    if failed and continuation == BatchErrorContinuationOption.UNDO:
        everything.rollback()
        for outcome in outcomes:
            if outcome.item.result_status == ResultStatus.SUCCESS:
                # The payload stays: it says what was undone (as the BL-M-2-21 case shows).
                outcome.item.result_status = ResultStatus.OPERATION_UNDONE
    else:
        everything.commit()
    for outcome in outcomes:
        append_audit(session, audit_event(caller, outcome.item, correlation_id,
                                          outcome.object_ids, outcome.detail))
    return ResponseMessage(response_header(version, now, correlation_id, len(outcomes)),
                           [outcome.item for outcome in outcomes])


def response_header(version: tuple[int, int], now: int, correlation_id: str,
                    batch_count: int) -> ResponseHeader:
    """A response header. From KMIP 1.4 on it carries the request's correlation id as
    Server Correlation Value (KMIP 1.4 §6.19), the id that names the request in the
    audit log and the server log."""
    return ResponseHeader(
        protocol_version=ProtocolVersion.of(version), time_stamp=now,
        server_correlation_value=correlation_id if version >= (1, 4) else None,
        batch_count=batch_count)


def fail_item(response: ResponseBatchItem, reason: int, message: str) -> None:
    """Make ``response`` a failed item with ``reason`` and ``message`` (and no payload)."""
    response.result_status = ResultStatus.OPERATION_FAILED
    response.result_reason = reason
    response.result_message = message
    response.response_payload = None


def operation_name(value: int) -> str:
    """The Operation's enum name, or its hex for an operation this server does not know."""
    try:
        return Operation(value).name
    except ValueError:
        return f"0x{int(value):08X}"


def audit_event(caller: Caller, item: ResponseBatchItem, correlation_id: str,
                object_ids: list[str], detail: dict[str, object] | None = None) -> AuditEvent:
    """The audit record of one batch item's outcome."""
    reason = item.result_reason
    return AuditEvent(
        principal=caller.principal.id,
        tenant=caller.principal.tenant,
        gateway=caller.gateway.id if caller.gateway is not None else None,
        source=caller.source,
        operation=operation_name(item.operation) if item.operation is not None else "?",
        object_ids=tuple(object_ids),
        result_status=ResultStatus(item.result_status).name,
        result_reason=None if reason is None else _reason_name(reason),
        correlation_id=correlation_id,
        detail=detail or None,
    )


def _reason_name(reason: int) -> str:
    try:
        return ResultReason(reason).name
    except ValueError:
        return f"0x{int(reason):08X}"
