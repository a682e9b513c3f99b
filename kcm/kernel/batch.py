"""Batch semantics (KMIP 1.4 §6.12–§6.15, §7.1; 2.1 §9), around an item executor.

:func:`run_batch` runs a request's batch items in order, each through the caller's
executor, and returns one Response Batch Item per item that ran:

* an item that could not be decoded (its payload an
  :class:`~kcm.kmip.messages.UnreadablePayload`) fails with the decoder's error without
  reaching the executor (KMIP 1.4 §11.1: "Error parsing batch item or payload within batch
  item", the batch item fails, and the rest follows the continuation option);
* an item carrying a critical Message Extension
  (:attr:`~kcm.kmip.messages.RequestBatchItem.critical_extension`) answers Unknown Message
  Extension (Feature Not Supported in 1.x) without reaching the executor: KCM supports no
  vendor extension, and a critical one must not be ignored (KMIP 1.4 §6.16, 2.1 §9);
  non-critical ones are;
* an item whose payload the model does not know (an unmodelled operation), or whose
  operation the request's version does not define
  (:func:`kcm.kernel.version_fit.check_operation`), answers Operation Not Supported without
  reaching the executor;
* a :class:`~kcm.kmip.errors.KmipError` becomes a failed item with its Result Reason in the
  request's protocol version; any other exception a General Failure naming the batch's
  correlation id, and is returned in :attr:`BatchRun.errors` for the plane to log (the
  kernel does no I/O, logging included);
* the Batch Error Continuation Option decides what follows a failure: Stop (the rest is not
  run), Continue (the rest runs), Undo (everything is rolled back through the savepoint hook
  and the successful items are reported Operation Undone). An undone item keeps its
  payload only when all it holds is the Unique Identifier the request named (the BL-M-2-21
  case answers its undone Activate and Check so); any other payload is dropped whole.
  What an item computed must not outlive the rollback of what it counted: an undone
  Encrypt's ciphertext would come with its spent stream part and its Usage Limits count
  rolled back (a Correlation Value replayed under the same IV, a key used past its
  limits), and an undone Create's identifier would name an object that does not exist
  (or, at a gateway, be a usable L4 token);
* one ID Placeholder lives for the batch; the executor resolves and sets it;
* before each item the caller's ``should_stop`` hook may end the batch (a deadline passed,
  the client gone): it returns the reason, and that item and every later one fail with
  General Failure and the reason as Result Message without running (a
  :class:`BatchStopped` in :attr:`BatchRun.errors`), under the batch's own rules: Stop and
  Undo answer only the first of them, Continue answers each, Undo rolls everything back.
  The kernel never interrupts an item; an executor whose item may search for long can ask
  the same hook itself and raise :class:`BatchStopped` (kcm-core's Locate does), which
  stops the batch the same way from that item on.
* an executor may find that an item's work must not run where the batch runs (kcm-core's
  shared writer thread meeting an RSA private-key operation, which its tenant's worker
  computes beforehand): it raises :class:`RunElsewhere`, and :func:`run_batch` rolls back
  that item and everything the batch did, answers nothing, and lets it propagate: the
  caller runs the whole request again once it has done what the exception asks;
* an executor whose store fails under an item (unavailable, not a bug) raises
  :class:`RequestAbandoned` from that error: the batch is rolled back as far as the store
  lets it, and the error propagates for the caller to answer the whole request.

The savepoint hook is how a transactional executor makes an item atomic: ``savepoint()`` is
called once around the batch (unless it has one item: that item's savepoint is then all Undo
needs) and once around each item, and each savepoint is committed or rolled back
(SQLAlchemy's ``Session.begin_nested`` fits as it is; on PostgreSQL each is two round
trips). Executors without effects to undo pass :data:`NO_SAVEPOINTS`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kcm.kernel import version_fit
from kcm.kernel.responses import fail_item, fail_with, internal_error, operation_name
from kcm.kmip.enums import BatchErrorContinuationOption, ResultReason, ResultStatus
from kcm.kmip.errors import KmipError
from kcm.kmip.fields import Struct
from kcm.kmip.messages import (
    IdPlaceholder,
    RequestBatchItem,
    ResponseBatchItem,
    UnreadablePayload,
)
from kcm.kmip.tags import Tag
from kcm.kmip.versions import Version
from kcm.ttlv import Item, ItemType

__all__ = ["CRITICAL_EXTENSION", "NO_SAVEPOINTS", "BatchRun", "BatchStopped", "ItemExecutor",
           "RequestAbandoned", "RunElsewhere", "Savepoint", "StopHook", "run_batch"]

_CONTINUE = BatchErrorContinuationOption.CONTINUE
_UNDO = BatchErrorContinuationOption.UNDO

#: The Result Message of an item failed for a critical Message Extension.
CRITICAL_EXTENSION = ("a critical Message Extension is not supported: this server supports "
                      "no vendor extension")


class Savepoint(Protocol):
    """One level of rollback."""

    def commit(self) -> None: ...

    def rollback(self) -> None: ...


class _NoSavepoint:
    __slots__ = ()

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass


_NO_SAVEPOINT = _NoSavepoint()


def _no_savepoint() -> Savepoint:
    return _NO_SAVEPOINT


#: The savepoint hook of an executor that leaves nothing to roll back.
NO_SAVEPOINTS: Callable[[], Savepoint] = _no_savepoint


#: Asked before each batch item: None to go on, or why the batch must stop (a short ASCII
#: text that becomes the Result Message of the items that do not run).
StopHook = Callable[[], str | None]


class BatchStopped(KmipError):
    """The request must stop (``should_stop`` gave this reason): raised for the items that
    do not run, or by a long item that asked the hook itself."""

    def __init__(self, message: str) -> None:
        super().__init__(ResultReason.GENERAL_FAILURE, message)


class RunElsewhere(Exception):  # noqa: N818 - a request for the caller, not a failure
    """Raised by an executor: this request must not run here as it is; nothing it did is
    kept, and no answer is made (see the module docstring). Never an answer's reason."""


class RequestAbandoned(Exception):  # noqa: N818 - a request for the caller, not a failure
    """Raised by an executor, ``from`` its cause: what the request runs on is gone (kcm-core's
    store unavailable mid-item: a full disk, a lost session), so no item of it can be
    answered on its own. :func:`run_batch` rolls back what it can and raises the cause: the
    caller answers the whole request."""


class ItemExecutor(Protocol):
    """Runs one batch item: returns the response payload (a model, a raw Item or None)
    or raises."""

    def __call__(self, item: RequestBatchItem, placeholder: IdPlaceholder) -> Any: ...


@dataclass(slots=True)
class BatchRun:
    """What a batch produced: an answer per item that ran, in order, and for each failed
    item the exception that failed it (a KmipError, or an unexpected one: a bug); and why
    the batch was stopped, if ``should_stop`` stopped it."""

    items: list[ResponseBatchItem]
    errors: list[tuple[RequestBatchItem, Exception]]
    stopped: str | None = None

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    @property
    def unexpected(self) -> list[tuple[RequestBatchItem, Exception]]:
        """The items that failed with an exception other than a KmipError."""
        return [(item, e) for item, e in self.errors if not isinstance(e, KmipError)]


def run_batch(items: Sequence[RequestBatchItem], execute: ItemExecutor, *, version: Version,
              continuation: int, correlation_id: str,
              savepoint: Callable[[], Savepoint] = NO_SAVEPOINTS,
              should_stop: StopHook | None = None) -> BatchRun:
    """Run ``items`` in order with ``execute`` (see the module docstring)."""
    placeholder = IdPlaceholder()
    answered: list[ResponseBatchItem] = []
    errors: list[tuple[RequestBatchItem, Exception]] = []
    stopped: str | None = None
    everything = savepoint() if len(items) > 1 else _no_savepoint()
    for item in items:
        if errors and continuation != _CONTINUE:
            break
        response = ResponseBatchItem(operation=item.operation,
                                     unique_batch_item_id=item.unique_batch_item_id,
                                     result_status=ResultStatus.SUCCESS)
        if stopped is None and should_stop is not None:
            stopped = should_stop()
        if stopped is not None:
            error = BatchStopped(stopped)
            fail_with(response, version, error)
            errors.append((item, error))
            answered.append(response)
            continue
        step = savepoint()
        try:
            # The operation first: one the version does not define is Operation Not
            # Supported, not a complaint about a payload or an extension it never reads.
            # (An item whose Operation could not be read has an unreadable payload: below.)
            if item.operation is not None:
                version_fit.check_operation(version, item.operation)
            payload = item.request_payload
            if isinstance(payload, UnreadablePayload):
                # A new error each run: the decoded item may run again (a gateway's run after
                # its fetches), and must not carry this run's traceback.
                error = payload.error
                raise KmipError(error.reason, error.message, v1_reason=error.v1_reason)
            if item.message_extensions and item.critical_extension is not None:
                raise KmipError(ResultReason.UNKNOWN_MESSAGE_EXTENSION, CRITICAL_EXTENSION)
            if isinstance(payload, Item):
                raise KmipError(ResultReason.OPERATION_NOT_SUPPORTED,
                                f"operation {operation_name(item.operation)} is not supported")
            response.response_payload = execute(item, placeholder)
            step.commit()
        except RunElsewhere:
            step.rollback()
            everything.rollback()
            raise
        except RequestAbandoned as e:
            # (the store may refuse the rollbacks too: the cause is what the caller needs)
            with contextlib.suppress(Exception):
                step.rollback()
                everything.rollback()
            raise (e.__cause__ or e) from None
        except KmipError as e:
            step.rollback()
            fail_with(response, version, e)
            # A refusal is a protocol value: its traceback (the frames of the refused work,
            # and whatever they held, in reference cycles) is not kept with it.
            e.__traceback__ = None
            errors.append((item, e))
            if isinstance(e, BatchStopped):
                stopped = e.message
        except Exception as e:
            step.rollback()
            fail_item(response, version, ResultReason.GENERAL_FAILURE,
                      internal_error(correlation_id))
            errors.append((item, e))
        answered.append(response)
    if errors and continuation == _UNDO:
        everything.rollback()
        # Each item that ran has its answer, in order: ``answered`` pairs with ``items``.
        for item, response in zip(items, answered, strict=False):
            if response.result_status == ResultStatus.SUCCESS:
                response.result_status = ResultStatus.OPERATION_UNDONE
                response.response_payload = _undone_payload(item, response.response_payload,
                                                            version)
    else:
        everything.commit()
    return BatchRun(answered, errors, stopped)


def _undone_payload(item: RequestBatchItem, payload: Any, version: Version) -> Any:
    """What an undone item answers as its payload: its own when all it says is the Unique
    Identifier ``item`` named (nothing the client did not send), else none. KMIP requires a
    payload "if not a failure" (1.4 §7.1, 2.1 §9) and BL-M-2-21 answers an undone Activate
    and Check with their Unique Identifier; anything more was produced by work the rollback
    took back. A payload is kept or dropped whole: a part of one (an Encrypt's without its
    Data, a Get's without its object) would not decode as that operation's payload."""
    asked = getattr(item.request_payload, "unique_identifier", None)
    if type(asked) is not str:
        return None
    encoded = (payload.to_item(version, Tag.RESPONSE_PAYLOAD) if isinstance(payload, Struct)
               else payload)
    if not isinstance(encoded, Item) or encoded.type is not ItemType.STRUCTURE:
        return None
    children: list[Item] = encoded.value  # type: ignore[assignment]
    only_asked = (len(children) == 1 and children[0].tag == Tag.UNIQUE_IDENTIFIER
                  and children[0].value == asked)
    return payload if only_asked else None
