"""kcm-core's batch: the kernel's batch semantics, one database transaction, the audit log.

Called on a store worker thread. :func:`kcm.kernel.batch.run_batch` runs the items in
order with each item in a savepoint of the request's transaction (a failed item leaves
nothing behind; Undo rolls back the whole batch); this module supplies the executor (the
operation handlers of :data:`kcm.core.operations.HANDLERS`) and appends every item's audit
record in the same transaction, so the changes and the records that describe them commit
together. The request's ``should_stop`` hook (its deadline, its client gone) is asked at each
batch-item boundary; the items it stops fail without running, and their audit records say
why (``detail.stopped``). The Client Correlation Value of the request's header, which KMIP
says a server should log (1.4 §6.18, 2.1 §9), is in each of its audit records
(``detail.client_correlation``, :func:`client_correlation`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.orm import Session
from twisted.logger import Logger
from twisted.python.failure import Failure

from kcm.core.audit import AuditEvent, append_audit
from kcm.core.context import Caller, OperationContext, RequestWork
from kcm.core.keyring import MISMATCH_MESSAGE, Keyring, WrappingMismatch
from kcm.core.keys import L1Error
from kcm.core.mismatch_line import in_request
from kcm.core.operations import HANDLERS, OperationHandler
from kcm.core.server_info import ServerInfo
from kcm.core.store.unavailable import store_unavailable, store_unavailable_message
from kcm.kernel.batch import BatchStopped, RequestAbandoned, Savepoint, run_batch
from kcm.kernel.responses import operation_name
from kcm.kmip.enums import ResultReason, ResultStatus
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import enum_label
from kcm.kmip.messages import (
    IdPlaceholder,
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    ResponseBatchItem,
)
from kcm.logging import printable

log = Logger()


def execute(session: Session, request: RequestMessage, caller: Caller, *, now: int,
            keyring: Keyring, server_info: ServerInfo, correlation_id: str,
            handlers: Mapping[int, OperationHandler] = HANDLERS,
            should_stop: Callable[[], str | None] | None = None,
            max_locate_results: int | None = None,
            record: Callable[[AuditEvent], object] | None = None,
            savepoint: Callable[[], Savepoint] | None = None,
            ) -> list[ResponseBatchItem]:
    """Execute ``request`` in ``session``'s transaction; its answered batch items (in the
    request's version), each with its audit record appended to ``session`` (or, with
    ``record``, handed to it: a read-only transaction cannot write them). ``should_stop``
    is asked before each item (see :func:`kcm.kernel.batch.run_batch`);
    ``max_locate_results`` caps what one Locate returns (None: no cap). ``savepoint`` is
    the kernel's savepoint hook (default: ``session.begin_nested``)."""
    version = request.header.version
    contexts: dict[int, OperationContext] = {}
    work = RequestWork()

    def run_item(item: RequestBatchItem, placeholder: IdPlaceholder) -> Any:
        ctx = OperationContext(session=session, caller=caller, version=version, now=now,
                               keyring=keyring, server_info=server_info,
                               id_placeholder=placeholder, random_bytes=keyring.random_bytes,
                               max_locate_results=max_locate_results,
                               should_stop=should_stop, work=work)
        contexts[id(item)] = ctx
        work.next_item()
        handler = handlers.get(int(item.operation))
        if handler is None:
            raise KmipError(ResultReason.OPERATION_NOT_SUPPORTED,
                            f"operation {operation_name(item.operation)} is not supported")
        try:
            with in_request(operation_name(item.operation), correlation_id):
                return handler(ctx, item.request_payload)
        except L1Error as e:
            # L1 that cannot be used now (its token's session lost and not opened again) is
            # the operator's to fix: answered like a store outage, in one log line.
            log.error("operation {operation} failed [correlation id {cid}]: the key store "
                      "is unavailable ({why})", operation=operation_name(item.operation),
                      cid=correlation_id, why=store_unavailable(e))
            raise KmipError(ResultReason.GENERAL_FAILURE,
                            store_unavailable_message(correlation_id)) from e
        except WrappingMismatch as e:
            # A row changed in the database (the keyring logged it, as this request's, and
            # counted it): the store is not to be trusted; the client is told no more.
            raise KmipError(ResultReason.GENERAL_FAILURE,
                            f"{MISMATCH_MESSAGE} (correlation id {correlation_id})") from e
        except KmipError:
            raise
        except Exception as e:
            # The store failed under the item (a full disk, a lost session): its transaction
            # may be gone, and the request is answered whole, the store named, not the item
            # "internal error" with a traceback.
            if store_unavailable(e) is None:
                raise
            raise RequestAbandoned from e

    run = run_batch(request.batch_items, run_item, version=version,
                    continuation=request.header.effective_error_continuation,
                    correlation_id=correlation_id,
                    savepoint=savepoint or session.begin_nested,
                    should_stop=should_stop)
    for item, error in run.unexpected:
        log.failure("operation {operation} failed [correlation id {cid}]", Failure(error),
                    operation=operation_name(item.operation), cid=correlation_id)
    errors = {id(item): error for item, error in run.errors}
    client = client_correlation(request.header)
    if run.stopped is not None:
        ran = sum(not isinstance(errors.get(id(item)), BatchStopped)
                  for item in request.batch_items[:len(run.items)])
        log.info("request stopped, {ran} of {count} batch items ran: {reason} "
                 "[correlation id {cid}]", ran=ran, count=len(request.batch_items),
                 reason=run.stopped, cid=correlation_id)
    for item, response in zip(request.batch_items, run.items, strict=False):
        ctx = contexts.get(id(item))
        detail = ctx.audit_detail if ctx else None
        error = errors.get(id(item))
        if isinstance(error, BatchStopped):
            detail = {"stopped": error.message}
        if client is not None:
            detail = with_client_correlation(detail, client)
        event = audit_event(caller, response, correlation_id, ctx.object_ids if ctx else [],
                            detail)
        if record is None:
            append_audit(session, event)
        else:
            record(event)
    return run.items


#: The most characters of a Client Correlation Value an audit record keeps (more, or any
#: but printable ASCII, is escaped and cut: :func:`kcm.logging.printable`). It is the
#: client's text, in a log kept until an operator archives it.
CLIENT_CORRELATION_LIMIT = 64


def client_correlation(header: RequestHeader | None) -> str | None:
    """The Client Correlation Value of ``header`` as an audit record keeps it (short
    printable ASCII), or None: none was sent (or the header was not read)."""
    value = None if header is None else header.client_correlation_value
    return None if value is None else printable(value, CLIENT_CORRELATION_LIMIT)


def with_client_correlation(detail: Mapping[str, object] | None,
                            client: str) -> dict[str, object]:
    """An audit record's ``detail`` with ``client`` (:func:`client_correlation`) added as
    its ``client_correlation``."""
    return {**(detail or {}), "client_correlation": client}


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
        result_reason=None if reason is None else enum_label(ResultReason, reason),
        correlation_id=correlation_id,
        detail=detail or None,
    )
