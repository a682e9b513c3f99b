"""A mixed request never makes the gateway hold more than its answer may hold (review 4,
defect 3): each remote run goes to the core with what the merged answer has left as its
Maximum Response Size, so no sub-answer larger than that comes back; once the core
withholds successes for it, the whole answer is over the limit and answers exactly as the
core answers the same request sent to it directly (it still runs every item). The real
handler, L4 engine and L3 cache; the link a fake whose answers come from an in-process
kcm-core."""

from __future__ import annotations

from dataclasses import replace

import pytest

from kcm.gateway.classifier import classify
from kcm.kernel.responses import encode_items, response_wire, too_large_message
from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import (
    CryptographicUsageMask,
    KeyFormatType,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
    SecretDataType,
)
from kcm.kmip.messages import ResponseBatchItem, decode_request
from kcm.kmip.objects import KeyBlock, KeyValue, SecretData
from kcm.kmip.payloads import LocateResponse, RegisterRequest
from kcm.kmip.tags import Tag
from kcm.ttlv import decode
from kcm.ttlv.peek import peek_response
from tests.core_support import CoreHarness
from tests.gateway_support import (
    APP,
    CONTINUE,
    L3,
    L3_UID,
    STOP,
    FakeLink,
    activate,
    create_l4,
    get,
    item,
    request,
    response,
)
from tests.unit.test_gateway_handler import Gateway, comparable

#: Bytes of the secret the Gets return: a few of them overrun the answers below.
SECRET = 20_000


@pytest.fixture
def planes(core: CoreHarness) -> tuple[Gateway, CoreHarness, list[tuple[int, bytes]]]:
    """A warm gateway whose link the in-process core answers, recording each sub-request's
    Maximum Response Size and the core's answer to it."""
    link = FakeLink()
    link.keys[("demo", "app")] = [L3]
    link.keys[L3_UID] = [L3]
    gateway = Gateway(link)
    client = core.client(APP)
    answers: list[tuple[int, bytes]] = []

    def answer(wire: bytes) -> bytes:
        size = decode_request(decode(wire)).header.maximum_response_size
        answers.append((size, client.send(wire)))
        return answers[-1][1]

    link.answer = answer
    return gateway, core, answers


def registered_secret(core: CoreHarness) -> str:
    [made] = response(core.client(APP).send(request(item(Operation.REGISTER, RegisterRequest(
        object_type=ObjectType.SECRET_DATA,
        attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK,
                                 int(CryptographicUsageMask.EXPORT))],
        object=SecretData(secret_data_type=SecretDataType.PASSWORD, key_block=KeyBlock(
            key_format_type=KeyFormatType.OPAQUE,
            key_value=KeyValue(key_material=b"s" * SECRET)))))))).batch_items
    assert made.result_status == ResultStatus.SUCCESS, made.result_message
    return made.response_payload.unique_identifier


def answered(gateway: Gateway, wire: bytes) -> bytes:
    results: list[bytes] = []
    gateway.answer(wire).addCallback(results.append)
    assert results
    return results[0]


def successes(wire: bytes) -> int:
    return sum(1 for i in peek_response(wire).items
               if i.result_status == ResultStatus.SUCCESS)


@pytest.mark.parametrize("continuation", [CONTINUE, STOP])
@pytest.mark.parametrize("maximum_response_size", [50_000, None])
def test_each_remote_run_gets_what_the_answer_has_left_and_the_answer_is_the_cores(
        planes, continuation, maximum_response_size) -> None:
    gateway, core, answers = planes
    uid = registered_secret(core)
    if maximum_response_size is None:  # both planes' own limit, the same at each
        gateway.handler._max_message_size = 50_000
        core.handler._limits = replace(core.handler._limits, max_message_size=50_000)
    limit = 50_000
    items = [x for i in range(6) for x in (get(uid, b"g%d" % i), create_l4(b"c%d" % i))]
    wire = request(*items, continuation=continuation,
                   maximum_response_size=maximum_response_size)
    merged = answered(gateway, wire)
    # Every remote run went to the core (it runs every item, as it would the whole
    # request), each with what was left, and none came back larger than that unless the
    # core withheld all its successes: never more than the limit is held here.
    assert len(answers) == 6
    sizes = [size for size, _ in answers]
    assert sizes[0] == limit and sizes == sorted(sizes, reverse=True)
    for size, answer in answers:
        assert len(answer) <= size or successes(answer) == 0
    # Once the core withheld a run's successes, the next runs are given no room at all.
    first_withheld = next(i for i, (_, answer) in enumerate(answers)
                          if successes(answer) == 0)
    assert set(sizes[first_withheld + 1:]) == {1}
    assert sum(len(answer) for _, answer in answers) < limit + 6 * 500
    assert len(merged) <= limit
    # The same answer as the core's to the same request, in the same words.
    direct = response(core.client(APP).send(wire))
    message = response(merged)
    assert comparable(message) == comparable(direct)
    assert {i.result_reason for i in message.batch_items} == {ResultReason.RESPONSE_TOO_LARGE}
    said = "Maximum Response Size" if maximum_response_size else "maximum message size"
    assert all(said in i.result_message and "50000" in i.result_message
               for i in message.batch_items)


def test_a_failure_after_withheld_successes_is_answered_and_stops_as_at_the_core(
        planes) -> None:
    gateway, core, answers = planes
    uid = registered_secret(core)
    wire = request(get(uid, b"1"), create_l4(b"2"), get(uid, b"3"), create_l4(b"4"),
                   get(uid, b"5"), activate("no-such", b"6"), create_l4(b"7"), get(uid, b"8"),
                   maximum_response_size=30_000)
    message = response(answered(gateway, wire))
    assert comparable(message) == comparable(response(core.client(APP).send(wire)))
    assert [i.unique_batch_item_id for i in message.batch_items][-1] == b"6"
    assert message.batch_items[-1].result_reason == ResultReason.ITEM_NOT_FOUND


def test_an_answer_that_fits_is_unchanged_and_the_cores(planes) -> None:
    gateway, core, answers = planes
    uid = registered_secret(core)
    wire = request(get(uid, b"1"), create_l4(b"2"), get(uid, b"3"),
                   maximum_response_size=60_000)
    merged = answered(gateway, wire)
    message = response(merged)
    assert [i.result_status for i in message.batch_items] == [ResultStatus.SUCCESS] * 3
    assert comparable(message) == comparable(response(core.client(APP).send(wire)))
    # The second run was given what the first two items left of the 60,000 bytes.
    spans = peek_response(merged).items
    assert answers[1][0] == 60_000 - (spans[1].end - spans[0].start)
    assert [len(classify(sub).request.items) for sub, _, _ in gateway.link.forwarded] == [1, 1]


@pytest.mark.parametrize(("server", "asked"), [(1000, 400), (400, 400), (400, 1000),
                                               (400, None)])
def test_the_words_of_a_withheld_success_are_the_kernels(server, asked) -> None:
    success = ResponseBatchItem(operation=Operation.LOCATE, unique_batch_item_id=b"1",
                                result_status=ResultStatus.SUCCESS,
                                response_payload=LocateResponse(unique_identifiers=["x" * 1200]))
    wire = response_wire((2, 1), 0, None, encode_items([success], (2, 1)), asked,
                          server_limit=server)
    [shrunk] = response(wire).batch_items
    assert shrunk.result_reason == ResultReason.RESPONSE_TOO_LARGE
    limit = server if asked is None else min(server, asked)
    assert shrunk.result_message == too_large_message(limit, asked)
