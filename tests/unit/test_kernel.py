"""The KMIP server kernel, alone: Result Reasons per version, batch semantics around an
executor with a savepoint hook, and responses (Maximum Response Size, spliced items)."""

from __future__ import annotations

import pytest

from kcm.kernel.batch import run_batch
from kcm.kernel.responses import encode_items, failure_response, response_wire
from kcm.kernel.result_reasons import error_reason, reason_in
from kcm.kmip.enums import (
    BatchErrorContinuationOption,
    Operation,
    ResultReason,
    ResultStatus,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import RequestBatchItem, ResponseBatchItem, decode_response
from kcm.kmip.payloads import ActivateRequest, UniqueIdentifierResponse
from kcm.ttlv import Item, ItemType, decode
from kcm.ttlv.peek import peek_response

R = ResultReason
STOP = BatchErrorContinuationOption.STOP
CONTINUE = BatchErrorContinuationOption.CONTINUE
UNDO = BatchErrorContinuationOption.UNDO


# Result Reasons -----------------------------------------------------------------------------
@pytest.mark.parametrize(("reason", "version", "answered"), [
    (R.OBJECT_NOT_FOUND, (2, 1), R.OBJECT_NOT_FOUND),
    (R.OBJECT_NOT_FOUND, (2, 0), R.OBJECT_NOT_FOUND),
    (R.OBJECT_NOT_FOUND, (1, 4), R.ITEM_NOT_FOUND),
    (R.WRONG_KEY_LIFECYCLE_STATE, (1, 0), R.PERMISSION_DENIED),
    (R.WRAPPING_OBJECT_NOT_FOUND, (2, 1), R.WRAPPING_OBJECT_NOT_FOUND),
    (R.WRAPPING_OBJECT_NOT_FOUND, (2, 0), R.ITEM_NOT_FOUND),
    (R.UNSUPPORTED_PROTOCOL_VERSION, (1, 4), R.INVALID_MESSAGE),
    (R.PERMISSION_DENIED, (1, 0), R.PERMISSION_DENIED),
    (R.ITEM_NOT_FOUND, (2, 1), R.ITEM_NOT_FOUND),
])
def test_a_reason_is_said_in_the_words_of_the_version(reason, version, answered) -> None:
    assert reason_in(version, reason) == answered


def test_an_error_may_name_its_own_1x_answer() -> None:
    error = KmipError(R.INVALID_OBJECT_TYPE, "no", v1_reason=R.ILLEGAL_OPERATION)
    assert error_reason((1, 4), error) == R.ILLEGAL_OPERATION
    assert error_reason((2, 0), error) == R.INVALID_OBJECT_TYPE
    assert error_reason((1, 4), KmipError(R.INVALID_OBJECT_TYPE, "no")) == R.INVALID_FIELD


# Batch semantics ----------------------------------------------------------------------------
class Savepoints:
    """Records what the kernel committed and rolled back, by savepoint number."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.count = 0

    def __call__(self):
        number = self.count
        self.count += 1
        log = self.log

        class Savepoint:
            def commit(self) -> None:
                log.append(f"commit {number}")

            def rollback(self) -> None:
                log.append(f"rollback {number}")

        return Savepoint()


def activate(uid: str | None) -> RequestBatchItem:
    return RequestBatchItem(operation=Operation.ACTIVATE, request_payload=ActivateRequest(
        unique_identifier=uid))


def executor(calls: list[str]):
    """Activates answer their resolved identifier; ``bad`` is refused, ``bug`` raises."""

    def execute(item: RequestBatchItem, placeholder) -> UniqueIdentifierResponse:
        uid = placeholder.resolve(item.request_payload.unique_identifier)
        calls.append(uid)
        if uid == "bad":
            raise KmipError(R.OBJECT_NOT_FOUND, "no object 'bad'")
        if uid == "bug":
            raise RuntimeError("boom")
        placeholder.set(uid)
        return UniqueIdentifierResponse(unique_identifier=uid)

    return execute


def statuses(run) -> list[int]:
    return [item.result_status for item in run.items]


def test_stop_ends_at_the_first_failure_and_rolls_back_only_that_item() -> None:
    calls: list[str] = []
    savepoints = Savepoints()
    run = run_batch([activate("a"), activate("bad"), activate("c")], executor(calls),
                    version=(1, 4), continuation=STOP, correlation_id="c1", savepoint=savepoints)
    assert calls == ["a", "bad"]
    assert statuses(run) == [ResultStatus.SUCCESS, ResultStatus.OPERATION_FAILED]
    assert run.items[1].result_reason == R.ITEM_NOT_FOUND  # 1.4's word for it
    assert savepoints.log == ["commit 1", "rollback 2", "commit 0"]


def test_continue_runs_everything_and_the_placeholder_carries_the_last_id() -> None:
    calls: list[str] = []
    run = run_batch([activate("a"), activate("bad"), activate(None)], executor(calls),
                    version=(2, 1), continuation=CONTINUE, correlation_id="c1")
    assert calls == ["a", "bad", "a"]
    assert statuses(run) == [ResultStatus.SUCCESS, ResultStatus.OPERATION_FAILED,
                             ResultStatus.SUCCESS]
    assert run.items[1].result_reason == R.OBJECT_NOT_FOUND


def test_undo_rolls_back_the_batch_and_reports_the_successes_undone() -> None:
    savepoints = Savepoints()
    run = run_batch([activate("a"), activate("bad")], executor([]), version=(1, 4),
                    continuation=UNDO, correlation_id="c1", savepoint=savepoints)
    assert statuses(run) == [ResultStatus.OPERATION_UNDONE, ResultStatus.OPERATION_FAILED]
    assert run.items[0].response_payload is not None  # says what was undone (BL-M-2-21)
    assert savepoints.log[-1] == "rollback 0"


def test_a_bug_is_a_general_failure_naming_the_correlation_id_and_is_returned() -> None:
    run = run_batch([activate("bug")], executor([]), version=(1, 4), continuation=STOP,
                    correlation_id="cid-7")
    assert run.items[0].result_reason == R.GENERAL_FAILURE
    assert "cid-7" in run.items[0].result_message
    assert [type(e) for _, e in run.unexpected] == [RuntimeError]


def test_an_unmodelled_operation_is_not_supported_without_reaching_the_executor() -> None:
    calls: list[str] = []
    raw = RequestBatchItem(operation=0x77, request_payload=Item(0x420079, ItemType.STRUCTURE,
                                                                []))
    run = run_batch([raw], executor(calls), version=(2, 1), continuation=STOP,
                    correlation_id="c")
    assert calls == [] and run.items[0].result_reason == R.OPERATION_NOT_SUPPORTED


# Responses ----------------------------------------------------------------------------------
def answered(uid: str) -> ResponseBatchItem:
    return ResponseBatchItem(operation=Operation.ACTIVATE, result_status=ResultStatus.SUCCESS,
                             response_payload=UniqueIdentifierResponse(unique_identifier=uid))


def test_a_response_is_its_header_and_its_items_bytes() -> None:
    items = encode_items([answered("a"), answered("b")], (1, 4))
    wire = response_wire((1, 4), 1_700_000_000, "corr", items)
    message = decode_response(decode(wire))
    assert message.header.server_correlation_value == "corr"
    assert message.header.batch_count == 2
    peeked = peek_response(wire)
    assert [wire[i.start:i.end] for i in peeked.items] == items
    assert peeked.server_correlation_value == "corr"
    assert [i.result_status for i in peeked.items] == [ResultStatus.SUCCESS] * 2


def test_no_server_correlation_value_before_1_4() -> None:
    wire = response_wire((1, 3), 0, "corr", encode_items([answered("a")], (1, 3)))
    assert peek_response(wire).server_correlation_value is None


def test_over_the_maximum_response_size_successes_answer_response_too_large() -> None:
    failed = ResponseBatchItem(operation=Operation.ACTIVATE,
                               result_status=ResultStatus.OPERATION_FAILED,
                               result_reason=R.ITEM_NOT_FOUND, result_message="no")
    items = encode_items([answered("a" * 200), failed], (2, 1))
    wire = response_wire((2, 1), 0, None, items, maximum_response_size=200)
    message = decode_response(decode(wire))
    assert [(i.result_status, i.result_reason) for i in message.batch_items] == [
        (ResultStatus.OPERATION_FAILED, R.RESPONSE_TOO_LARGE),
        (ResultStatus.OPERATION_FAILED, R.ITEM_NOT_FOUND)]


def test_a_failure_response_says_the_reason_in_the_version() -> None:
    wire = failure_response((1, 0), R.UNSUPPORTED_PROTOCOL_VERSION, "no", 0)
    item = decode_response(decode(wire)).batch_items[0]
    assert item.result_reason == R.INVALID_MESSAGE and item.result_message == "no"


def test_the_missing_answer_is_made_from_what_the_client_sent_alone():
    """Short printable ASCII, never the identifier whole, the same whether or not anything
    exists (kcm.kernel.missing)."""
    from kcm.kernel.missing import identifier_label, object_not_found, wrapping_key_not_found

    assert identifier_label("short-id") == "short-id"
    assert identifier_label("l3-2f1c9a7e-1b2c-4d5e-8f90-0123456789ab") == "l3-2f1c9a7e-1b2c..."
    assert identifier_label("caf\u00e9\u2026\x00x") == "caf???x"
    missing = object_not_found("l4.1." + "A" * 80)
    assert (missing.reason, missing.message) == (R.OBJECT_NOT_FOUND,
                                                 "no object l4.1.AAAAAAAAAAA...")
    assert missing.message.isascii() and len(missing.message) < 40
    wrapping = wrapping_key_not_found("l3-x")
    assert (wrapping.reason, wrapping.message) == (R.WRAPPING_OBJECT_NOT_FOUND,
                                                   "no wrapping key l3-x")
