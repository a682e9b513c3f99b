"""The KMIP server kernel, alone: Result Reasons per version, batch semantics around an
executor with a savepoint hook and a stop hook, and responses (Maximum Response Size,
spliced items)."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from kcm.kernel.batch import CRITICAL_EXTENSION, BatchStopped, RequestAbandoned, run_batch
from kcm.kernel.responses import (
    encode_items,
    failure_response,
    header_bytes,
    response_header,
    response_wire,
)
from kcm.kernel.result_reasons import error_reason, reason_in
from kcm.kmip.enums import (
    BatchErrorContinuationOption,
    Operation,
    ResultReason,
    ResultStatus,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import RequestBatchItem, ResponseBatchItem, decode_response
from kcm.kmip.payloads import (
    ActivateRequest,
    EncryptRequest,
    EncryptResponse,
    UniqueIdentifierResponse,
)
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType, decode, encode
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


class StoreGone(Exception):
    pass


def test_an_abandoned_item_raises_its_cause_for_the_whole_request() -> None:
    """A store failing under an item (kcm-core: a full disk) is not that item's General
    Failure: the cause propagates, whatever the continuation, after what can be rolled
    back is (even when the store refuses the rollbacks too)."""

    def abandoning(item: RequestBatchItem, placeholder) -> UniqueIdentifierResponse:
        if item.request_payload.unique_identifier == "gone":
            raise RequestAbandoned from StoreGone("no space left on device")
        return UniqueIdentifierResponse(unique_identifier="a")

    savepoints = Savepoints()
    with pytest.raises(StoreGone, match="no space"):
        run_batch([activate("a"), activate("gone"), activate("c")], abandoning,
                  version=(1, 4), continuation=CONTINUE, correlation_id="c1",
                  savepoint=savepoints)
    assert savepoints.log == ["commit 1", "rollback 2", "rollback 0"]

    def refused(*_: object) -> None:
        raise StoreGone("the session is gone too")

    class Broken(Savepoints):
        def __call__(self):
            point = super().__call__()
            point.rollback = refused
            return point

    with pytest.raises(StoreGone, match="no space"):
        run_batch([activate("gone")], abandoning, version=(1, 4), continuation=STOP,
                  correlation_id="c1", savepoint=Broken())


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


def _encrypt(uid: str | None) -> RequestBatchItem:
    return RequestBatchItem(operation=Operation.ENCRYPT, request_payload=EncryptRequest(
        unique_identifier=uid, data=b"plaintext"))


def _encrypting(item: RequestBatchItem, placeholder) -> EncryptResponse | UniqueIdentifierResponse:
    """Encrypts answer a ciphertext, an IV and a Correlation Value; Activates as above."""
    payload = item.request_payload
    if item.operation == Operation.ACTIVATE:
        return executor([])(item, placeholder)
    return EncryptResponse(unique_identifier=placeholder.resolve(payload.unique_identifier),
                           data=b"ciphertext", iv_counter_nonce=b"\x01" * 12,
                           correlation_value=b"next part")


@pytest.mark.parametrize("version", [(1, 4), (2, 1)])
def test_an_undone_item_answers_nothing_it_computed(version) -> None:
    """Undo rolls back what an item counted (a stream's spent part, Usage Limits): what it
    computed must not be answered, or a replay gets a second ciphertext under one IV and a
    key goes past its limits. A payload that is only the Unique Identifier the client sent
    is kept, as BL-M-2-21's undone Activate and Check answer it; any other is dropped whole
    (a part of an Encrypt's payload would not decode as one)."""
    run = run_batch([_encrypt("k"), activate("a"), activate("bad")], _encrypting,
                    version=version, continuation=UNDO, correlation_id="c1",
                    savepoint=Savepoints())
    assert statuses(run) == [ResultStatus.OPERATION_UNDONE, ResultStatus.OPERATION_UNDONE,
                             ResultStatus.OPERATION_FAILED]
    assert run.items[0].response_payload is None
    assert run.items[1].response_payload == UniqueIdentifierResponse(unique_identifier="a")
    wire = b"".join(encode_items(run.items, version))
    assert b"ciphertext" not in wire and b"next part" not in wire


def test_an_undone_item_answers_no_identifier_the_client_did_not_send() -> None:
    """An Activate by the ID Placeholder, and a raw payload naming another object: their
    identifiers were not the client's (an undone Create's would name nothing that exists;
    a gateway's L4 token is a key), so no payload is answered at all."""
    def raw_other(item: RequestBatchItem, placeholder) -> Item:
        if item.request_payload.unique_identifier == "bad":
            raise KmipError(R.OBJECT_NOT_FOUND, "no object 'bad'")
        return Item(Tag.RESPONSE_PAYLOAD, ItemType.STRUCTURE, [
            Item(Tag.UNIQUE_IDENTIFIER, ItemType.TEXT_STRING, "created")])

    run = run_batch([activate("a"), activate(None), activate("bad")], executor([]),
                    version=(2, 1), continuation=UNDO, correlation_id="c1")
    assert [item.response_payload for item in run.items] == [
        UniqueIdentifierResponse(unique_identifier="a"), None, None]
    run = run_batch([activate("x"), activate("bad")], raw_other, version=(2, 1),
                    continuation=UNDO, correlation_id="c1")
    assert statuses(run)[0] == ResultStatus.OPERATION_UNDONE
    assert run.items[0].response_payload is None


def test_continue_keeps_the_payloads_of_what_succeeded() -> None:
    run = run_batch([_encrypt("k"), activate("bad")], _encrypting, version=(2, 1),
                    continuation=CONTINUE, correlation_id="c1")
    assert run.items[0].result_status == ResultStatus.SUCCESS
    assert run.items[0].response_payload.data == b"ciphertext"


def test_a_bug_is_a_general_failure_naming_the_correlation_id_and_is_returned() -> None:
    run = run_batch([activate("bug")], executor([]), version=(1, 4), continuation=STOP,
                    correlation_id="cid-7")
    assert run.items[0].result_reason == R.GENERAL_FAILURE
    assert "cid-7" in run.items[0].result_message
    assert [type(e) for _, e in run.unexpected] == [RuntimeError]


# Stopping at item boundaries (a deadline, a client gone) ------------------------------------
def timed(calls: list[str], clock: Clock, seconds_per_item: float):
    """The executor of :func:`executor`, each item taking ``seconds_per_item`` of ``clock``."""
    execute = executor(calls)

    def slow(item: RequestBatchItem, placeholder):
        clock.advance(seconds_per_item)
        return execute(item, placeholder)

    return slow


def deadline(clock: Clock, seconds: float):
    """A ``should_stop`` hook: stop once ``seconds`` of ``clock`` have passed from now."""
    end = clock.seconds() + seconds

    def should_stop() -> str | None:
        return f"request deadline of {seconds:g} s exceeded" if clock.seconds() >= end else None

    return should_stop


def test_past_the_deadline_the_rest_of_a_continue_batch_fails_without_running() -> None:
    clock, calls = Clock(), []
    asked: list[float] = []
    stop = deadline(clock, 2.5)

    def should_stop() -> str | None:
        asked.append(clock.seconds())
        return stop()

    run = run_batch([activate(uid) for uid in "abcde"], timed(calls, clock, 1.0),
                    version=(2, 1), continuation=CONTINUE, correlation_id="c1",
                    should_stop=should_stop)
    assert calls == ["a", "b", "c"]  # the item running at 2.5 s was not interrupted
    assert asked == [0.0, 1.0, 2.0, 3.0]  # once per boundary, until it says stop
    assert statuses(run) == [ResultStatus.SUCCESS] * 3 + [ResultStatus.OPERATION_FAILED] * 2
    assert {(i.result_reason, i.result_message) for i in run.items[3:]} == {
        (R.GENERAL_FAILURE, "request deadline of 2.5 s exceeded")}
    assert run.stopped == "request deadline of 2.5 s exceeded"
    assert [type(e) for _, e in run.errors] == [BatchStopped, BatchStopped]
    assert run.unexpected == []  # not a bug: nothing to log as one


def test_a_stopped_stop_batch_answers_the_first_item_that_did_not_run() -> None:
    clock, calls = Clock(), []
    savepoints = Savepoints()
    run = run_batch([activate(uid) for uid in "abcd"], timed(calls, clock, 1.0),
                    version=(1, 4), continuation=STOP, correlation_id="c1",
                    savepoint=savepoints, should_stop=deadline(clock, 1.0))
    assert calls == ["a"]
    assert statuses(run) == [ResultStatus.SUCCESS, ResultStatus.OPERATION_FAILED]
    assert run.items[1].result_reason == R.GENERAL_FAILURE
    assert savepoints.log == ["commit 1", "commit 0"]  # what ran stays; no savepoint for b


def test_a_stopped_undo_batch_rolls_everything_back() -> None:
    clock = Clock()
    savepoints = Savepoints()
    run = run_batch([activate(uid) for uid in "abc"], timed([], clock, 1.0), version=(2, 1),
                    continuation=UNDO, correlation_id="c1", savepoint=savepoints,
                    should_stop=deadline(clock, 2.0))
    assert statuses(run) == [ResultStatus.OPERATION_UNDONE, ResultStatus.OPERATION_UNDONE,
                             ResultStatus.OPERATION_FAILED]
    assert savepoints.log[-1] == "rollback 0"


def test_a_batch_stopped_before_it_began_runs_nothing() -> None:
    calls: list[str] = []
    lost = [True]  # e.g. the client went away while the request waited for a thread
    run = run_batch([activate("a"), activate("b")], executor(calls), version=(1, 0),
                    continuation=CONTINUE, correlation_id="c1",
                    should_stop=lambda: "request cancelled: the client disconnected"
                    if lost[0] else None)
    assert calls == []
    assert [i.result_message for i in run.items] == [
        "request cancelled: the client disconnected"] * 2
    assert run.items[0].result_reason == R.GENERAL_FAILURE


def test_without_a_reason_to_stop_nothing_changes() -> None:
    calls: list[str] = []
    run = run_batch([activate("a"), activate("b")], executor(calls), version=(2, 1),
                    continuation=STOP, correlation_id="c1", should_stop=lambda: None)
    assert calls == ["a", "b"] and run.stopped is None and not run.failed


def test_an_unmodelled_operation_is_not_supported_without_reaching_the_executor() -> None:
    calls: list[str] = []
    raw = RequestBatchItem(operation=0x77, request_payload=Item(0x420079, ItemType.STRUCTURE,
                                                                []))
    run = run_batch([raw], executor(calls), version=(2, 1), continuation=STOP,
                    correlation_id="c")
    assert calls == [] and run.items[0].result_reason == R.OPERATION_NOT_SUPPORTED


def extension(critical: bool) -> Item:
    return Item(Tag.MESSAGE_EXTENSION, ItemType.STRUCTURE, [
        Item(Tag.VENDOR_IDENTIFICATION, ItemType.TEXT_STRING, "acme"),
        Item(Tag.CRITICALITY_INDICATOR, ItemType.BOOLEAN, critical),
        Item(Tag.VENDOR_EXTENSION, ItemType.STRUCTURE, [])])


@pytest.mark.parametrize(("version", "reason"), [
    ((2, 1), R.UNKNOWN_MESSAGE_EXTENSION), ((2, 0), R.UNKNOWN_MESSAGE_EXTENSION),
    ((1, 4), R.FEATURE_NOT_SUPPORTED), ((1, 0), R.FEATURE_NOT_SUPPORTED)])
def test_a_critical_message_extension_fails_its_item_without_reaching_the_executor(
        version, reason) -> None:
    calls: list[str] = []
    critical = activate("a")
    critical.message_extensions = [extension(False), extension(True)]
    ignored = activate("b")
    ignored.message_extensions = [extension(False)]
    run = run_batch([critical, ignored], executor(calls), version=version,
                    continuation=CONTINUE, correlation_id="c")
    assert calls == ["b"]  # a non-critical extension is ignored
    first, second = run.items
    assert first.result_status == ResultStatus.OPERATION_FAILED
    assert first.result_reason == reason and first.result_message == CRITICAL_EXTENSION
    assert second.result_status == ResultStatus.SUCCESS
    assert CRITICAL_EXTENSION.isascii()
    # Under Stop nothing after it runs.
    run = run_batch([critical, ignored], executor(calls), version=version,
                    continuation=STOP, correlation_id="c")
    assert calls == ["b"] and len(run.items) == 1


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


def test_over_the_servers_limit_successes_answer_response_too_large_naming_it() -> None:
    items = encode_items([answered("a" * 400), answered("b")], (2, 1))
    wire = response_wire((2, 1), 0, "c", items, server_limit=400)
    assert len(wire) <= 400
    message = decode_response(decode(wire))
    assert [i.result_reason for i in message.batch_items] == [R.RESPONSE_TOO_LARGE] * 2
    assert message.batch_items[0].result_message == (
        "the response exceeds the server's maximum message size of 400 bytes")
    assert message.batch_items[0].operation == Operation.ACTIVATE


@pytest.mark.parametrize(("client", "server", "named"), [
    (250, 300, "the Maximum Response Size of 250 bytes"),
    (350, 300, "the server's maximum message size of 300 bytes"),
    (None, 300, "the server's maximum message size of 300 bytes"),
    (250, None, "the Maximum Response Size of 250 bytes"),
])
def test_the_smaller_of_the_clients_and_the_servers_limit_applies(client, server,
                                                                   named) -> None:
    items = encode_items([answered("a" * 200)], (1, 4))
    wire = response_wire((1, 4), 0, "c", items, client, server_limit=server)
    [item] = decode_response(decode(wire)).batch_items
    assert item.result_reason == R.RESPONSE_TOO_LARGE
    assert item.result_message == f"the response exceeds {named}"


def test_an_answer_within_both_limits_is_unchanged() -> None:
    items = encode_items([answered("a")], (2, 1))
    wire = response_wire((2, 1), 0, "c", items)
    assert response_wire((2, 1), 0, "c", items, len(wire), server_limit=len(wire)) == wire


def test_when_even_the_failures_exceed_the_servers_limit_one_item_answers() -> None:
    # Ten thousand tiny successes: as Response Too Large failures they are longer still.
    items = encode_items([answered("")] * 10_000, (2, 1))
    wire = response_wire((2, 1), 0, "c", items, server_limit=64 << 10)
    assert len(wire) <= 64 << 10
    message = decode_response(decode(wire))
    assert message.header.server_correlation_value == "c"
    [item] = message.batch_items
    assert item.result_reason == R.RESPONSE_TOO_LARGE and item.operation is None
    assert item.result_message == ("the response to 10000 batch items exceeds the server's "
                                   "maximum message size of 65536 bytes")


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


@pytest.mark.parametrize("version", [(1, 0), (1, 2), (1, 3), (1, 4), (2, 0), (2, 1)])
@pytest.mark.parametrize("correlation_id", [None, "", "0123456789abcdef", "x" * 9])
@pytest.mark.parametrize(("now", "count"), [(0, 1), (1_700_000_000, 64), (2**40, 0)])
def test_header_bytes_are_the_header_models_encoding(version, correlation_id, now,
                                                     count) -> None:
    model = response_header(version, now, correlation_id, count)
    assert header_bytes(version, now, correlation_id, count) == encode(model.to_item(version))
