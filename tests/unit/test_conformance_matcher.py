"""The conformance matcher on the real OASIS cases: permitted variations pass, real ones fail.

A fake server answers each request with the case's own expected response, varied the ways
KMIP Profiles §4.1 permits (other identifiers, other times, other key material for keys it
generated, extra attributes in another order, another Result Message). Every mandatory case
must pass against it. Then single real differences must be refused, with the element path.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest

from kcm.conformance.matcher import (
    MatchState,
    Placeholder,
    UnboundPlaceholder,
    match_response,
    parse_case,
)
from kcm.conformance.runner import CaseResult, run_case, select_cases
from kcm.kmip.enums import Operation, ResultReason, ResultStatus
from kcm.kmip.tags import Tag
from kcm.ttlv import decode, encode
from kcm.ttlv.types import Item, ItemType
from tests.vectors import vectors_dir

NOW = 1_700_000_000
_S = ItemType.STRUCTURE
_CASES = select_cases(vectors_dir())
_GENERATING = {Operation.CREATE, Operation.CREATE_KEY_PAIR, Operation.DERIVE_KEY,
               Operation.RE_KEY, Operation.RE_KEY_KEY_PAIR}
_serial = itertools.count(1)


def _case(name: str) -> Path:
    return next(p for p in _CASES if p.name == f"{name}.xml")


class VaryingServer:
    """Answers with the expected responses, varied only as §4.1 permits."""

    def __init__(self, path: Path, *, vary: bool = True) -> None:
        self.messages = parse_case(path.read_text(encoding="utf-8"))
        self.step = 0
        self.vary = vary
        self.values: dict[str, object] = {}
        self.generated: set[str] = set()

    def send(self, request: bytes) -> bytes:
        expected = self.messages[2 * self.step + 1]
        self.step += 1
        response = self._concrete(expected)
        if self.vary:
            for batch_item in response.find_all(Tag.BATCH_ITEM):
                self._vary_batch_item(batch_item)
        return encode(response)

    def _concrete(self, item: Item) -> Item:
        if item.type is _S:
            return Item(item.tag, _S, [self._concrete(c) for c in item.value])
        value = item.value
        if not isinstance(value, Placeholder):
            return Item(item.tag, item.type, value, item.width)
        if value.is_now:
            # Another time than the transcript's, a little off the runner's clock.
            seconds = NOW + value.offset + (7 if not value.offset else 0)
            return Item(item.tag, item.type,
                        seconds if item.type is ItemType.DATE_TIME else seconds * 1_000_000)
        if value.text not in self.values:
            serial = next(_serial)
            self.values[value.text] = {
                ItemType.TEXT_STRING: f"other-uid-{serial}-{value.text.lower()}",
                ItemType.BYTE_STRING: serial.to_bytes(4, "big") * 4,
            }.get(item.type, serial)
        return Item(item.tag, item.type, self.values[value.text])  # type: ignore[arg-type]

    def _vary_batch_item(self, batch_item: Item) -> None:
        operation = batch_item.find(Tag.OPERATION)
        payload = batch_item.find(Tag.RESPONSE_PAYLOAD)
        message = batch_item.find(Tag.RESULT_MESSAGE)
        if message is not None:
            message.value = "a different explanation"
        if payload is None or operation is None:
            return
        uid = payload.find(Tag.UNIQUE_IDENTIFIER)
        if operation.value in _GENERATING:
            for tag in (Tag.UNIQUE_IDENTIFIER, Tag.PRIVATE_KEY_UNIQUE_IDENTIFIER,
                        Tag.PUBLIC_KEY_UNIQUE_IDENTIFIER):
                self.generated |= {c.value for c in payload.find_all(tag)}
        if uid is not None and uid.value in self.generated:
            _flip(payload, {Tag.KEY_MATERIAL, Tag.DIGEST_VALUE})
            if operation.value in (Operation.ENCRYPT, Operation.MAC, Operation.SIGN):
                _flip(payload, {Tag.DATA, Tag.IV_COUNTER_NONCE, Tag.MAC_DATA,
                                Tag.AUTHENTICATED_ENCRYPTION_TAG, Tag.SIGNATURE_DATA})
        if operation.value == Operation.GET_ATTRIBUTES:
            _add_attribute_and_reorder(payload)


def _flip(item: Item, tags: set[int], inside: bool = False) -> None:
    """Other bytes of the same length in every leaf of ``tags`` (their subtrees too)."""
    for child in item.value:  # type: ignore[union-attr]
        hit = inside or child.tag in tags
        if child.type is _S:
            _flip(child, tags, hit)
        elif hit and child.type is ItemType.BYTE_STRING:
            child.value = bytes(b ^ 0x5A for b in child.value)  # type: ignore[union-attr]
        elif hit and child.type is ItemType.BIG_INTEGER:
            child.value = child.value + 2  # type: ignore[operator]


def _add_attribute_and_reorder(payload: Item) -> None:
    attributes = payload.find(Tag.ATTRIBUTES)
    if attributes is not None:  # KMIP 2.x
        attributes.value = [Item(Tag.ALWAYS_SENSITIVE, ItemType.BOOLEAN, False),
                            *reversed(attributes.value)]  # type: ignore[arg-type]
        return
    children: list[Item] = payload.value  # type: ignore[assignment]
    others = [c for c in children if c.tag != Tag.ATTRIBUTE]
    listed = [c for c in children if c.tag == Tag.ATTRIBUTE]
    extra = Item(Tag.ATTRIBUTE, _S, [
        Item(Tag.ATTRIBUTE_NAME, ItemType.TEXT_STRING, "x-extra"),
        Item(Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING, "added by the server"),
    ])
    payload.value = [*others, extra, *reversed(listed)]


@pytest.mark.parametrize("path", _CASES, ids=[p.stem for p in _CASES])
def test_every_mandatory_case_passes_its_own_transcript_with_permitted_variations(
        path: Path) -> None:
    result = run_case(path, VaryingServer(path), now=NOW)
    assert result.passed, result.line()
    assert result.run == result.steps > 0


def test_the_selection_is_the_claimed_profiles() -> None:
    names = [p.stem for p in _CASES]
    assert len(names) == 111
    assert {n.split("-M-")[0] for n in names} == {"BL", "SKLC", "SKFF", "CS-BC", "CS-AC",
                                                  "CS-RNG"}
    assert "SKLC-M-1-14" in names and "CS-BC-M-GCM-1-21" in names
    assert "CS-AC-M-OAEP-10-21" in names and "CS-RNG-M-1-14" in names
    assert not any(n.startswith("BL") and n.endswith("-14") for n in names)
    assert len(select_cases(vectors_dir(), ["*"])) == 160  # optional cases too, on request


# ---------------------------------------------------------------------------
# Real differences


def _play_until(name: str, step: int) -> tuple[MatchState, Item, Item, Item]:
    """State after steps 1..step-1 matched cleanly; step ``step``'s expected response, a
    concrete copy of it the test can spoil, and the request sent."""
    path = _case(name)
    server = VaryingServer(path, vary=False)
    state = MatchState(now=NOW)
    for index in range(step):
        request = state.substitute(server.messages[2 * index])
        actual = decode(server.send(encode(request)))
        expected = server.messages[2 * index + 1]
        if index < step - 1:
            assert match_response(expected, actual, state, request=request) == []
    return state, expected, actual, request


def _payload(response: Item) -> Item:
    payload = response.find(Tag.BATCH_ITEM).find(Tag.RESPONSE_PAYLOAD)  # type: ignore[union-attr]
    assert payload is not None
    return payload


def test_a_wrong_result_status_is_refused() -> None:
    state, expected, actual, request = _play_until("SKLC-M-1-14", 1)
    status = actual.find(Tag.BATCH_ITEM).find(Tag.RESULT_STATUS)  # type: ignore[union-attr]
    status.value = int(ResultStatus.OPERATION_FAILED)  # type: ignore[union-attr]
    findings = match_response(expected, actual, state, request=request)
    assert "ResponseMessage/BatchItem[0]/ResultStatus: expected 'Success', " \
        "got 'OperationFailed'" in findings


def test_a_wrong_result_reason_is_refused() -> None:
    # CS-BC-M-13-21 step 3: Decrypt without an IV fails with Invalid Message.
    state, expected, actual, request = _play_until("CS-BC-M-13-21", 3)
    reason = actual.find(Tag.BATCH_ITEM).find(Tag.RESULT_REASON)  # type: ignore[union-attr]
    assert reason is not None and reason.value == ResultReason.INVALID_MESSAGE
    reason.value = int(ResultReason.PERMISSION_DENIED)
    findings = match_response(expected, actual, state, request=request)
    assert findings == ["ResponseMessage/BatchItem[0]/ResultReason: expected 'InvalidMessage', "
                        "got 'PermissionDenied'"]


def test_another_result_message_or_none_is_accepted() -> None:
    state, expected, actual, request = _play_until("CS-BC-M-13-21", 3)
    batch_item = actual.find(Tag.BATCH_ITEM)
    assert batch_item is not None
    message = batch_item.find(Tag.RESULT_MESSAGE)
    assert message is not None
    message.value = "no IV given"
    assert match_response(expected, copy.deepcopy(actual), copy.deepcopy(state),
                          request=request) == []
    batch_item.value.remove(message)  # type: ignore[union-attr]
    assert match_response(expected, actual, state, request=request) == []


def test_a_missing_attribute_is_refused() -> None:
    state, expected, actual, request = _play_until("SKLC-M-1-14", 2)
    payload = _payload(actual)
    payload.value = [c for c in payload.value  # type: ignore[union-attr]
                     if not (c.tag == Tag.ATTRIBUTE
                             and c.find(Tag.ATTRIBUTE_NAME).value == "State")]  # type: ignore[union-attr]
    findings = match_response(expected, actual, state, request=request)
    assert findings == ["ResponseMessage/BatchItem[0]/ResponsePayload/Attribute[0]: "
                        "missing (Attribute 'State')"]


def test_a_missing_attribute_is_refused_in_kmip_2() -> None:
    state, expected, actual, request = _play_until("SKLC-M-1-21", 2)
    attributes = _payload(actual).find(Tag.ATTRIBUTES)
    assert attributes is not None
    attributes.value = [c for c in attributes.value  # type: ignore[union-attr]
                        if c.tag != Tag.CRYPTOGRAPHIC_LENGTH]
    findings = match_response(expected, actual, state, request=request)
    assert len(findings) == 1 and findings[0].startswith(
        "ResponseMessage/BatchItem[0]/ResponsePayload/Attributes/CryptographicLength: missing")


def test_a_uid_inconsistent_with_its_binding_is_refused() -> None:
    state, expected, actual, request = _play_until("SKLC-M-1-14", 2)
    bound = state.bindings["$UNIQUE_IDENTIFIER_0"]
    _payload(actual).find(Tag.UNIQUE_IDENTIFIER).value = "someone-else"  # type: ignore[union-attr]
    findings = match_response(expected, actual, state, request=request)
    assert findings == [
        "ResponseMessage/BatchItem[0]/ResponsePayload/UniqueIdentifier: expected "
        f"$UNIQUE_IDENTIFIER_0 = {bound!r}, got 'someone-else'"
    ]


def test_a_wrong_attribute_value_is_refused() -> None:
    state, expected, actual, request = _play_until("SKLC-M-1-14", 2)
    for attribute in _payload(actual).find_all(Tag.ATTRIBUTE):
        if attribute.find(Tag.ATTRIBUTE_NAME).value == "Cryptographic Length":  # type: ignore[union-attr]
            attribute.find(Tag.ATTRIBUTE_VALUE).value = 128  # type: ignore[union-attr]
    findings = match_response(expected, actual, state, request=request)
    assert findings == ["ResponseMessage/BatchItem[0]/ResponsePayload/Attribute[5]/"
                        "AttributeValue: expected '256', got '128'"]


def test_key_material_of_a_registered_key_must_match() -> None:
    # CS-BC-M-GCM-1-21 registers a known key and encrypts with a given IV: the ciphertext
    # is fixed.
    state, expected, actual, request = _play_until("CS-BC-M-GCM-1-21", 2)
    data = _payload(actual).find(Tag.DATA)
    assert data is not None
    data.value = bytes(len(data.value))  # type: ignore[arg-type]
    findings = match_response(expected, actual, state, request=request)
    assert len(findings) == 1 and "ResponsePayload/Data: expected" in findings[0]


def test_a_time_far_from_now_is_refused() -> None:
    state, expected, actual, request = _play_until("SKLC-M-1-14", 1)
    actual.find(Tag.RESPONSE_HEADER).find(Tag.TIME_STAMP).value = NOW - 86_400  # type: ignore[union-attr]
    findings = match_response(expected, actual, state, request=request)
    assert len(findings) == 1 and findings[0].startswith(
        "ResponseMessage/ResponseHeader/TimeStamp: expected $NOW (within 600 s")


def test_an_extra_item_outside_attribute_lists_is_refused() -> None:
    state, expected, actual, request = _play_until("SKLC-M-1-14", 1)
    _payload(actual).value.append(  # type: ignore[union-attr]
        Item(Tag.CRYPTOGRAPHIC_LENGTH, ItemType.INTEGER, 256))
    findings = match_response(expected, actual, state, request=request)
    assert findings == ["ResponseMessage/BatchItem[0]/ResponsePayload: unexpected "
                        "CryptographicLength '256'"]


def test_a_request_placeholder_nobody_bound_is_an_error() -> None:
    request = parse_case(_case("SKLC-M-1-14").read_text(encoding="utf-8"))[2]
    with pytest.raises(UnboundPlaceholder, match=r"\$UNIQUE_IDENTIFIER_0"):
        MatchState(now=NOW).substitute(request)


class WrongOnStepTwo(VaryingServer):
    def send(self, request: bytes) -> bytes:
        if self.step == 1:
            self.messages[3].find(Tag.BATCH_ITEM).find(  # type: ignore[union-attr]
                Tag.RESULT_STATUS).value = ResultStatus.OPERATION_FAILED
        return super().send(request)


def test_the_runner_reports_the_first_failing_step() -> None:
    path = _case("SKLC-M-1-14")
    result: CaseResult = run_case(path, WrongOnStepTwo(path), now=NOW)
    assert not result.passed
    assert result.run == 1
    assert result.line().startswith("FAIL SKLC-M-1-14 step 2: ResponseMessage/BatchItem[0]/"
                                    "ResultStatus: expected 'Success', got 'OperationFailed'")
    assert result.failures == [result.failure]


def test_keep_going_plays_every_step_and_reports_each_failing_one() -> None:
    path = _case("SKLC-M-1-14")
    result: CaseResult = run_case(path, WrongOnStepTwo(path), now=NOW, keep_going=True)
    assert not result.passed
    assert result.run == result.steps > 2
    assert [f.step for f in result.failures] == [2]
    assert result.failure == result.failures[0]
    assert result.failure.findings == ("ResponseMessage/BatchItem[0]/ResultStatus: "
                                       "expected 'Success', got 'OperationFailed'",)


def test_interop_not_supported_is_skipped() -> None:
    path = _case("BL-M-2-21")

    class NoInterop(VaryingServer):
        def send(self, request: bytes) -> bytes:
            expected = self.messages[2 * self.step + 1]
            batch_item = expected.find(Tag.BATCH_ITEM)
            if batch_item.find(Tag.OPERATION).value == Operation.INTEROP:  # type: ignore[union-attr]
                self.step += 1
                header = self._concrete(expected.find(Tag.RESPONSE_HEADER))  # type: ignore[arg-type]
                refused = Item(Tag.BATCH_ITEM, _S, [
                    Item(Tag.OPERATION, ItemType.ENUMERATION, Operation.INTEROP),
                    Item(Tag.RESULT_STATUS, ItemType.ENUMERATION, ResultStatus.OPERATION_FAILED),
                    Item(Tag.RESULT_REASON, ItemType.ENUMERATION,
                         ResultReason.OPERATION_NOT_SUPPORTED),
                ])
                return encode(Item(Tag.RESPONSE_MESSAGE, _S, [header, refused]))
            return super().send(request)

    result = run_case(path, NoInterop(path), now=NOW)
    assert result.passed, result.line()
    assert result.skipped == [1, result.steps]
