"""The gateway's request handler: local, forwarded and mixed requests, with the real L4
engine and L3 cache, a fake link, and (for forwarded items) an in-process kcm-core."""

from __future__ import annotations

from dataclasses import replace

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from kcm.gateway.classifier import classify
from kcm.gateway.handler import GatewayRequestHandler, new_correlation_id
from kcm.gateway.l3_cache import L3Cache
from kcm.gateway.link_client import AnswerTooLarge, RequestTooLarge, ServiceKeyRefused
from kcm.gateway.local_batch import LocalRunner, l4_engine
from kcm.kernel.missing import object_not_found
from kcm.kernel.responses import failure_response
from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import (
    CryptographicAlgorithm,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
    State,
)
from kcm.kmip.messages import RequestBatchItem
from kcm.kmip.payloads import CreateRequest
from kcm.kmip.payloads.crypto import DecryptRequest
from kcm.kmip.tags import Tag
from kcm.kmip_protocol import ConnectionInfo
from kcm.l4 import token
from kcm.l4.service_key import ServiceKey
from kcm.l4.token import token_id
from kcm.testing.requests import OMIT, odd_request, query
from kcm.ttlv import Item, ItemType, encode, structure
from kcm.ttlv.peek import peek_response
from tests.core_support import CoreHarness, service_principal
from tests.gateway_support import (
    APP,
    CONNECTION,
    CONTINUE,
    L3,
    L3_UID,
    STOP,
    UNDO,
    FakeLink,
    activate,
    create_l4,
    create_managed,
    encrypt,
    get,
    item,
    locate,
    request,
    response,
)


class Gateway:
    """A handler wired to a fake link and a real cache; ``send`` insists on sync answers
    unless told otherwise."""

    def __init__(self, link: FakeLink, engine_factory=l4_engine,
                 max_message_size: int = 1 << 20, max_batch_items: int = 64) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.link = link
        self.cache = L3Cache(link.fetch_service_keys, connected=lambda: not link.down,
                             clock=self.clock.seconds)
        self.handler = GatewayRequestHandler(
            runner=LocalRunner(new_correlation_id=new_correlation_id,
                               engine_factory=engine_factory),
            cache=self.cache, link=link, clock=self.clock.seconds,
            max_message_size=max_message_size, max_batch_items=max_batch_items)

    def answer(self, wire: bytes) -> bytes | Deferred[bytes]:
        return self.handler.handle_request(wire, CONNECTION)

    def send(self, wire: bytes, *, sync: bool = True):
        answer = self.answer(wire)
        if sync:
            assert isinstance(answer, bytes), "the hot path must answer synchronously"
            return response(answer)
        assert isinstance(answer, Deferred)
        results: list[bytes] = []
        answer.addCallback(results.append)
        assert results, "the answer must not wait on anything but the fake link"
        return response(results[0])


@pytest.fixture
def link() -> FakeLink:
    link = FakeLink()
    link.keys[("demo", "app")] = [L3]
    link.keys[L3_UID] = [L3]
    return link


@pytest.fixture
def gateway(link: FakeLink) -> Gateway:
    return Gateway(link)


@pytest.fixture
def warm(gateway: Gateway) -> Gateway:
    gateway.send(request(create_l4()), sync=False)
    gateway.link.fetches.clear()
    return gateway


def ok(message, index: int = 0):
    item = message.batch_items[index]
    assert item.result_status == ResultStatus.SUCCESS, item.result_message
    return item.response_payload


# All local ---------------------------------------------------------------------------------

def test_first_use_fetches_the_l3_then_answers(gateway: Gateway, link: FakeLink) -> None:
    message = gateway.send(request(create_l4(b"1")), sync=False)
    assert ok(message).unique_identifier.startswith("l4.1.")
    assert message.batch_items[0].unique_batch_item_id == b"1"
    assert link.fetches == [(APP, "demo", "app", None)]
    assert link.forwarded == []


def test_envelope_flow_is_answered_synchronously_once_warm(warm: Gateway) -> None:
    token = ok(warm.send(request(create_l4()))).unique_identifier
    key = ok(warm.send(request(get(token)))).object.key_block.key_value.key_material
    assert len(key) == 32
    sealed = ok(warm.send(request(encrypt(token, b"a record"))))
    message = warm.send(request(item(Operation.DECRYPT, DecryptRequest(
        unique_identifier=token, data=sealed.data, iv_counter_nonce=sealed.iv_counter_nonce,
        authenticated_encryption_tag=sealed.authenticated_encryption_tag))))
    assert ok(message).data == b"a record"
    assert warm.link.fetches == [] and warm.link.forwarded == []


def test_l3_wraps_a_dek_locally(warm: Gateway) -> None:
    wrapped = ok(warm.send(request(encrypt(L3_UID, b"k" * 32))))
    assert wrapped.data != b"k" * 32 and wrapped.unique_identifier == L3_UID


def test_placeholder_links_a_local_batch(warm: Gateway) -> None:
    message = warm.send(request(create_l4(b"c"), encrypt(None, b"x", b"e"), get(None, b"g")))
    token = ok(message, 0).unique_identifier
    assert ok(message, 1).unique_identifier == token
    assert ok(message, 2).unique_identifier == token
    assert [i.unique_batch_item_id for i in message.batch_items] == [b"c", b"e", b"g"]


def test_tombstoned_token_is_refused(warm: Gateway) -> None:
    token = ok(warm.send(request(create_l4()))).unique_identifier
    warm.cache.apply_event(1, "l4.tombstone", "demo", {"token_id": token_id(token)})
    item = warm.send(request(get(token))).batch_items[0]
    assert item.result_status == ResultStatus.OPERATION_FAILED
    assert item.result_reason == ResultReason.ITEM_NOT_FOUND


def _cold_gateway(l3: ServiceKey) -> tuple[Gateway, FakeLink]:
    """A gateway that just started, before a core that serves ``l3`` (e.g. as a restart
    finds it)."""
    link = FakeLink()
    link.keys[("demo", "app")] = [l3]
    link.keys[L3_UID] = [l3]
    return Gateway(link), link


def test_a_token_revoked_before_the_gateway_started_is_refused(warm: Gateway) -> None:
    """The tombstones made before a gateway (re)started come with the L3 it fetches."""
    token = ok(warm.send(request(create_l4()))).unique_identifier
    cold, link = _cold_gateway(replace(L3, tombstones=frozenset({token_id(token)})))
    for wire, sync in ((request(get(token)), False), (request(encrypt(token, b"x")), True)):
        item = cold.send(wire, sync=sync).batch_items[0]
        assert (item.result_status, item.result_reason) == (
            ResultStatus.OPERATION_FAILED, ResultReason.ITEM_NOT_FOUND)
    assert link.forwarded == []


@pytest.mark.parametrize("mixed", [False, True], ids=["all local", "mixed"])
def test_a_version_that_came_without_its_tombstones_sends_the_request_to_the_core(
        warm: Gateway, mixed: bool) -> None:
    """Routed here before the fetch, it goes whole to the core, before any of it runs here
    (an older core sends no tombstones; a core sends none for a version with too many)."""
    token = ok(warm.send(request(create_l4()))).unique_identifier
    cold, link = _cold_gateway(replace(L3, tombstones=None))
    link.answer = lambda wire: b"the core's answer"
    wire = request(get(token), locate()) if mixed else request(get(token))
    answers: list[bytes] = []
    cold.answer(wire).addCallback(answers.append)
    assert answers == [b"the core's answer"]
    assert [forwarded for forwarded, _, _ in link.forwarded] == [wire]
    assert cold.cache.overflowed == {L3_UID}
    # From then on such a request is routed to the core before anything is fetched.
    link.fetches.clear()
    cold.answer(request(encrypt(token, b"x"))).addCallback(answers.append)
    assert answers[-1] == b"the core's answer" and link.fetches == []


def test_stop_ends_a_local_batch_at_the_first_failure_continue_runs_on(warm: Gateway) -> None:
    stop = warm.send(request(get("l4.1.bogus"), create_l4()))
    assert [i.result_status for i in stop.batch_items] == [ResultStatus.OPERATION_FAILED]
    go_on = warm.send(request(get("l4.1.bogus"), create_l4(), continuation=CONTINUE))
    assert [i.result_status for i in go_on.batch_items] == [ResultStatus.OPERATION_FAILED,
                                                            ResultStatus.SUCCESS]


def test_undo_of_a_local_batch_marks_the_successes_undone(warm: Gateway) -> None:
    message = warm.send(request(create_l4(), get("l4.1.bogus"), continuation=UNDO))
    assert [i.result_status for i in message.batch_items] == [ResultStatus.OPERATION_UNDONE,
                                                              ResultStatus.OPERATION_FAILED]


def test_an_undone_local_item_answers_no_key_token_or_ciphertext(warm: Gateway) -> None:
    """The kernel's Undo at the gateway, as at the core: an undone item answers nothing it
    computed. An undone Create's L4 token (a usable key), an undone Get's key and an undone
    Encrypt's ciphertext are left out: their items carry no payload."""
    token = ok(warm.send(request(create_l4()))).unique_identifier
    message = warm.send(request(create_l4(), get(token), encrypt(token, b"a record"),
                                get("l4.1.bogus"), continuation=UNDO))
    assert [i.result_status for i in message.batch_items] == [
        ResultStatus.OPERATION_UNDONE] * 3 + [ResultStatus.OPERATION_FAILED]
    assert [i.response_payload for i in message.batch_items] == [None] * 4


@pytest.mark.parametrize("continuation", [STOP, CONTINUE])
def test_a_cold_batch_of_tokens_under_two_l3_versions_fetches_both_at_once(
        gateway: Gateway, link: FakeLink, continuation) -> None:
    # Regression: the first run stopped at the first token's miss, so the second L3 was
    # never asked for, and the retry failed the second item ("... is not available at the
    # gateway"). At the first miss every L3 the peek names is fetched, then the batch runs
    # once more: two runs at most (the warm path is one run and computes nothing else).
    older = ServiceKey("l3-00000000-0000-4000-8000-000000000002", "demo", "app", 2,
                       State.ACTIVE, bytes(range(1, 33)))
    link.keys[older.uid] = [older]
    first, second = token.seal(L3, bytes(32), bytes(12)), token.seal(older, bytes(32), bytes(12))
    runs: list[int] = []

    def counting_engine(keys):
        runs.append(1)
        return l4_engine(keys)

    gateway = Gateway(link, engine_factory=counting_engine)
    message = gateway.send(request(encrypt(first), encrypt(second),
                                   continuation=continuation), sync=False)
    assert [i.result_status for i in message.batch_items] == [ResultStatus.SUCCESS] * 2
    assert sorted(uid for *_, uid in link.fetches) == sorted([L3.uid, older.uid])
    assert len(runs) == 2
    runs.clear()
    gateway.send(request(encrypt(first), encrypt(second), continuation=continuation))
    assert len(runs) == 1  # warm: answered synchronously, one run


def test_l3_not_cached_and_core_down_is_an_error_not_a_hang(gateway: Gateway,
                                                             link: FakeLink) -> None:
    link.down = True
    item = gateway.send(request(create_l4()), sync=False).batch_items[0]
    assert item.result_status == ResultStatus.OPERATION_FAILED
    assert item.result_reason == ResultReason.GENERAL_FAILURE
    assert "core is unreachable" in item.result_message


def test_core_down_l4_keeps_working_from_the_cache(warm: Gateway, link: FakeLink) -> None:
    link.down = True
    token = ok(warm.send(request(create_l4()))).unique_identifier
    ok(warm.send(request(encrypt(token))))


def test_an_engine_bug_is_a_general_failure_with_a_correlation_id(link: FakeLink) -> None:
    class Broken:
        def execute(self, *args):
            raise RuntimeError("boom")

    gateway = Gateway(link, engine_factory=lambda keys: Broken())
    item = gateway.send(request(create_l4())).batch_items[0]
    assert item.result_reason == ResultReason.GENERAL_FAILURE
    assert "correlation id" in item.result_message
    assert gateway.send(request(create_l4())).batch_items[0].result_status \
        == ResultStatus.OPERATION_FAILED  # and the handler keeps answering


def test_a_request_the_gateway_cannot_read_is_the_cores_to_answer(gateway: Gateway,
                                                                     link: FakeLink) -> None:
    """Nothing runs here; the core says what is wrong with it, in the core's words."""
    link.answer = lambda wire: b"the core's answer"
    wire = encode(structure(0x420078))  # no header
    results: list[bytes] = []
    gateway.answer(wire).addCallback(results.append)
    assert results == [b"the core's answer"]
    assert [forwarded for forwarded, _, _ in link.forwarded] == [wire]
    link.down = True
    item = gateway.send(wire, sync=False).batch_items[0]
    assert item.result_reason == ResultReason.GENERAL_FAILURE
    assert "core is unreachable" in item.result_message


def test_response_header_carries_a_server_correlation_value_from_1_4(warm: Gateway) -> None:
    message = warm.send(request(create_l4()))
    assert message.header.server_correlation_value
    assert warm.send(request(create_l4(), version=(1, 2))).header.server_correlation_value \
        is None


# All remote --------------------------------------------------------------------------------

def test_remote_requests_are_relayed_byte_for_byte(gateway: Gateway, link: FakeLink) -> None:
    link.answer = lambda wire: b"core answer"
    wire = request(create_managed(), activate(None))
    answer = gateway.answer(wire)
    results: list[bytes] = []
    answer.addCallback(results.append)
    assert results == [b"core answer"]
    assert link.forwarded == [(wire, APP, "127.0.0.1:40000")]


def test_core_down_control_operation_fails_at_once(gateway: Gateway, link: FakeLink) -> None:
    link.down = True
    message = gateway.send(request(activate("7", b"a"), locate(b"l")), sync=False)
    [item] = message.batch_items  # Stop: the first item failed, the rest did not run
    assert item.operation == Operation.ACTIVATE and item.unique_batch_item_id == b"a"
    assert item.result_reason == ResultReason.GENERAL_FAILURE
    assert "core is unreachable" in item.result_message


def test_unsupported_version_is_for_the_core_to_negotiate(gateway: Gateway,
                                                          link: FakeLink) -> None:
    link.answer = lambda wire: b"negotiated"
    minor_4 = bytes.fromhex("42006b02000000040000000400000000")
    wire = request(create_l4(), version=(1, 4))
    assert wire.count(minor_4) == 1
    results: list[bytes] = []
    gateway.answer(wire.replace(minor_4, minor_4[:11] + b"\x09" + minor_4[12:])).addCallback(
        results.append)
    assert results == [b"negotiated"]


# Answers too large ---------------------------------------------------------------------------

def test_an_answer_too_large_for_the_link_is_response_too_large_for_every_item(
        gateway: Gateway) -> None:
    error = AnswerTooLarge("the core's answer of 3000000 bytes exceeds this gateway's link "
                           "frames of at most 1114112 bytes")
    gateway.link.forward = lambda wire, caller, source: fail(error)
    message = gateway.send(request(activate("7", b"a"), locate(b"l")), sync=False)
    assert [(i.operation, i.unique_batch_item_id, i.result_reason)
            for i in message.batch_items] == [
        (Operation.ACTIVATE, b"a", ResultReason.RESPONSE_TOO_LARGE),
        (Operation.LOCATE, b"l", ResultReason.RESPONSE_TOO_LARGE)]  # the core ran them all
    assert message.batch_items[0].result_message == (
        f"{error}; the operation may have been carried out")


def test_a_request_too_large_for_the_link_is_a_general_failure(gateway: Gateway) -> None:
    gateway.link.forward = lambda wire, caller, source: fail(RequestTooLarge("no room"))
    message = gateway.send(request(locate(b"l")), sync=False)
    [item] = message.batch_items
    assert item.result_reason == ResultReason.GENERAL_FAILURE
    assert item.result_message == "the request is too large to forward to the core"


def test_the_gateways_own_answers_never_exceed_its_maximum_message_size(link: FakeLink) -> None:
    gateway = Gateway(link, max_message_size=2048)
    token = ok(gateway.send(request(create_l4()), sync=False)).unique_identifier
    gets = request(*[get(token)] * 8)  # a Get's answer is twice its request
    assert len(gets) <= 2048
    answer = gateway.answer(gets)
    assert isinstance(answer, bytes) and len(answer) <= 2048
    message = response(answer)
    assert {(i.result_reason, i.result_message) for i in message.batch_items} == {
        (ResultReason.RESPONSE_TOO_LARGE,
         "the response exceeds the server's maximum message size of 2048 bytes")}


# Too many batch items ------------------------------------------------------------------------

def test_a_batch_over_max_batch_items_is_forwarded_whole_before_any_item_runs(
        link: FakeLink) -> None:
    ran: list[int] = []

    def engine_factory(keys):
        engine = l4_engine(keys)

        class Counting:
            def execute(self, operation, principal, version, payload):
                ran.append(operation)
                return engine.execute(operation, principal, version, payload)
        return Counting()

    gateway = Gateway(link, engine_factory=engine_factory, max_batch_items=3)
    over = [request(*[create_l4()] * 4),
            request(create_l4(), create_managed(), create_l4(), create_l4()),
            request(*[locate()] * 4)]
    for wire in over:
        gateway.answer(wire)
    # Not one item read or run here: the core judges them by its own limit.
    assert ran == [] and link.fetches == []
    assert [wire for wire, _, _ in link.forwarded] == over
    # At the limit a local batch runs here.
    assert len(gateway.send(request(*[create_l4()] * 3), sync=False).batch_items) == 3
    assert ran and len(link.forwarded) == 3
    # With the core unreachable, such a request is answered whole, not item by item.
    link.down = True
    [whole] = gateway.send(over[2], sync=False).batch_items
    assert (whole.operation, whole.result_status, whole.result_reason) == (
        None, ResultStatus.OPERATION_FAILED, ResultReason.GENERAL_FAILURE)
    assert "core is unreachable" in whole.result_message
    first = gateway.send(request(*[locate()] * 3), sync=False).batch_items[0]
    assert (first.operation, first.result_reason) == (
        Operation.LOCATE, ResultReason.GENERAL_FAILURE)  # at the limit: item by item


# Mixed -------------------------------------------------------------------------------------

@pytest.fixture
def with_core(warm: Gateway, core: CoreHarness) -> Gateway:
    client = core.client(APP)
    warm.link.answer = client.send
    return warm


def test_mixed_batch_is_one_response_in_the_client_order(with_core: Gateway) -> None:
    wire = request(create_managed(b"1"), activate(None, b"2"), create_l4(b"3"), locate(b"4"),
                   encrypt(L3_UID, b"dek", b"5"))
    message = with_core.send(wire, sync=False)
    assert [i.unique_batch_item_id for i in message.batch_items] == [b"1", b"2", b"3", b"4",
                                                                     b"5"]
    assert [i.operation for i in message.batch_items] == [
        Operation.CREATE, Operation.ACTIVATE, Operation.CREATE, Operation.LOCATE,
        Operation.ENCRYPT]
    for index in range(5):
        ok(message, index)
    managed = ok(message, 0).unique_identifier
    assert ok(message, 1).unique_identifier == managed
    assert ok(message, 2).unique_identifier.startswith("l4.")
    assert message.header.batch_count == 5
    # A sub-request per remote run, under the client's header.
    subs = [classify(sub).request for sub, _, _ in with_core.link.forwarded]
    assert [[i.unique_batch_item_id for i in sub.items] for sub in subs] == [
        [b"1", b"2"], [b"4"]]
    assert [sub.batch_count for sub in subs] == [2, 1]


def test_a_placeholder_a_remote_item_may_mean_from_before_its_run_is_the_core_s(
        with_core: Gateway, core: CoreHarness) -> None:
    """One ID Placeholder a request, as at the core: a remote item without a Unique
    Identifier after a local item sends the request whole."""
    wire = request(create_managed(b"1"), encrypt(L3_UID, b"dek", b"2"), get(None, b"3"),
                   continuation=CONTINUE)
    message = with_core.send(wire, sync=False)
    managed = ok(message, 0).unique_identifier
    assert ok(message, 2).unique_identifier == managed  # not the L3 the Encrypt named
    assert [sub for sub, _, _ in with_core.link.forwarded] == [wire]
    whole = request(create_l4(b"1"), activate(None, b"2"), continuation=CONTINUE)
    message = with_core.send(whole, sync=False)
    assert with_core.link.forwarded[-1][0] == whole
    assert comparable(message) == comparable(response(core.client(APP).send(whole)))


def _refused_l4_create(batch_id: bytes) -> RequestBatchItem:
    """An L4 Create the engine refuses (a Cryptographic Length no DEK has)."""
    return item(Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY, attributes=[
        Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
        Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 100),
        Attribute.vendor("x", "kcm-level", Item(Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING, "L4"))
    ]), batch_id)


@pytest.mark.parametrize("version", [(1, 4), (2, 1)])
@pytest.mark.parametrize("failing", ["create", "get"])
def test_a_placeholder_a_failed_local_item_did_not_replace_is_the_core_s(
        with_core: Gateway, core: CoreHarness, failing: str, version) -> None:
    """A failed item sets no ID Placeholder: the Get without an identifier after a failed
    L4 Create or Get means the managed key the core created before it, as at the core."""
    local = _refused_l4_create(b"2") if failing == "create" else get("l4.1.AAAA", b"2")
    wire = request(create_managed(b"1"), local, get(None, b"3"), version=version,
                   continuation=CONTINUE)
    message = with_core.send(wire, sync=False)
    assert message.batch_items[1].result_status == ResultStatus.OPERATION_FAILED
    assert ok(message, 2).unique_identifier == ok(message, 0).unique_identifier
    assert [sub for sub, _, _ in with_core.link.forwarded] == [wire]
    assert comparable(message) == comparable(response(core.client(APP).send(wire)))


def test_a_local_get_or_encrypt_sets_no_placeholder(warm: Gateway) -> None:
    """KMIP 1.4 §4, 2.1 §6: the Create sets the ID Placeholder; a Get or an Encrypt naming
    another token leaves it, at the gateway as at the core."""
    other = ok(warm.send(request(create_l4()))).unique_identifier
    message = warm.send(request(create_l4(b"1"), get(other, b"2"), encrypt(other, b"x", b"3"),
                                get(None, b"4")))
    assert ok(message, 3).unique_identifier == ok(message, 0).unique_identifier


def _answered(gateway: Gateway, wire: bytes) -> bytes:
    answer = gateway.answer(wire)
    results: list[bytes] = []
    answer.addCallback(results.append)
    return results[0]


def test_a_mixed_request_s_maximum_response_size_bounds_the_whole_answer_once(
        with_core: Gateway, core: CoreHarness) -> None:
    whole = len(_answered(with_core, request(query(b"1"), encrypt(L3_UID, b"dek", b"2"))))
    core_part = len(core.client(APP).send(request(query(b"1"))))
    assert core_part + 8 < whole
    wire = request(query(b"1"), encrypt(L3_UID, b"dek", b"2"),
                   maximum_response_size=core_part + 8)  # the core's part fits, not all
    message = response(_answered(with_core, wire))
    assert [i.result_reason for i in message.batch_items] == [
        ResultReason.RESPONSE_TOO_LARGE] * 2
    # The sub-request carries what the merged answer has left of the client's size (all of
    # it: it runs first); the core's part fitted, so the merged answer is bounded once.
    sub = with_core.link.forwarded[-1][0]
    assert (Tag.MAXIMUM_RESPONSE_SIZE.to_bytes(3, "big") + b"\x02\x00\x00\x00\x04"
            + (core_part + 8).to_bytes(4, "big")) in sub


def test_mixed_batch_splices_the_core_s_items_byte_for_byte(with_core: Gateway) -> None:
    answers: list[bytes] = []
    send = with_core.link.answer

    def recorded(wire: bytes) -> bytes:
        answers.append(send(wire))
        return answers[-1]

    with_core.link.answer = recorded
    answer = with_core.answer(request(create_l4(b"1"), create_managed(b"2"), locate(b"3")))
    results: list[bytes] = []
    answer.addCallback(results.append)
    [core_answer] = answers
    core_items = [core_answer[i.start:i.end] for i in peek_response(core_answer).items]
    merged = peek_response(results[0])
    assert [results[0][i.start:i.end] for i in merged.items][1:] == core_items
    # The core's correlation value names the request (one remote run).
    assert merged.server_correlation_value == peek_response(core_answer).server_correlation_value


def test_mixed_stop_after_a_failed_remote_item_skips_the_rest(with_core: Gateway) -> None:
    message = with_core.send(request(create_l4(b"1"), activate("no-such", b"2"),
                                     create_l4(b"3")), sync=False)
    assert [i.result_status for i in message.batch_items] == [ResultStatus.SUCCESS,
                                                              ResultStatus.OPERATION_FAILED]


def test_mixed_continue_runs_every_item(with_core: Gateway) -> None:
    message = with_core.send(request(get("l4.1.bogus", b"1"), activate("no-such", b"2"),
                                     create_l4(b"3"), continuation=CONTINUE), sync=False)
    assert [i.result_status for i in message.batch_items] == [
        ResultStatus.OPERATION_FAILED, ResultStatus.OPERATION_FAILED, ResultStatus.SUCCESS]


def test_mixed_undo_is_relayed_whole_and_undone_by_the_core(with_core: Gateway,
                                                             core: CoreHarness) -> None:
    """Undo across the two planes is the core's to honour: the request goes to it
    unchanged, and every earlier success is undone, the L4 Create's as the managed one's."""
    wire = request(create_l4(b"1"), create_managed(b"2"), get("l4.1.bogus", b"3"),
                   continuation=UNDO)
    message = with_core.send(wire, sync=False)
    assert [forwarded for forwarded, _, _ in with_core.link.forwarded] == [wire]
    assert [(i.unique_batch_item_id, i.result_status) for i in message.batch_items] == [
        (b"1", ResultStatus.OPERATION_UNDONE), (b"2", ResultStatus.OPERATION_UNDONE),
        (b"3", ResultStatus.OPERATION_FAILED)]
    assert comparable(message) == comparable(response(core.client(APP).send(wire)))


def comparable(message) -> list[tuple]:
    """What a client sees of an answer, without times and correlation values."""
    return [(message.header.protocol_version.as_tuple(),)] + [
        (i.operation, i.unique_batch_item_id, i.result_status, i.result_reason,
         i.result_message) for i in message.batch_items]


ODD_HEADERS = {
    "batch-count--1": {"batch_count": -1},
    "batch-count-0": {"batch_count": 0},
    "batch-count-7": {"batch_count": 7},
    "no-batch-count": {"batch_count": OMIT},
    "long-batch-count": {"batch_count": 1, "batch_count_type": ItemType.LONG_INTEGER},
    "no-minor": {"minor": OMIT},
    "minor--1": {"minor": -1},
    "version-1.9": {"minor": 9},
    "two-batch-counts": {"header_extra": [Item(Tag.BATCH_COUNT, ItemType.INTEGER, 1)]},
    "stray-field": {"trailing": [Item(Tag.OBJECT_GROUP, ItemType.TEXT_STRING, "x")]},
}


@pytest.mark.parametrize("items", [
    (create_l4(b"1"),),  # local
    (create_l4(b"1"), locate(b"2")),  # mixed
    (locate(b"1"),),  # remote
], ids=["local", "mixed", "remote"])
@pytest.mark.parametrize("odd", list(ODD_HEADERS.values()), ids=list(ODD_HEADERS))
def test_header_oddities_are_answered_as_the_core_answers_them(with_core: Gateway,
                                                               core: CoreHarness, items,
                                                               odd) -> None:
    """The gateway runs nothing the core would refuse, and refuses it in the core's words
    (what it cannot read it forwards, so the core answers)."""
    wire = odd_request(*items, **odd)
    direct = response(core.client(APP).send(wire))
    answer = with_core.answer(wire)
    if isinstance(answer, Deferred):
        answered: list[bytes] = []
        answer.addCallback(answered.append)
        answer = answered[0]
    assert comparable(response(answer)) == comparable(direct)


def test_mixed_with_the_core_down_answers_the_local_part(warm: Gateway) -> None:
    warm.link.down = True
    message = warm.send(request(create_l4(b"1"), locate(b"2"), continuation=CONTINUE),
                        sync=False)
    ok(message, 0)
    assert message.batch_items[1].result_reason == ResultReason.GENERAL_FAILURE


# Refused attempts are logged ---------------------------------------------------------------

def send_as(gateway: Gateway, principal, wire: bytes):
    answer = gateway.handler.handle_request(wire, ConnectionInfo(2, principal, "10.0.0.9:5000"))
    if isinstance(answer, Deferred):
        answered: list[bytes] = []
        answer.addCallback(answered.append)
        answer = answered[0]
    return response(answer)


def warnings(events) -> list[dict]:
    return [e for e in events if e["log_level"] == LogLevel.warn]


def test_another_tenants_token_or_l3_is_missing_and_the_attempt_logged(warm: Gateway) -> None:
    token = ok(warm.send(request(create_l4()))).unique_identifier
    stranger = service_principal("other", "app")
    with capturedLogs() as events:
        message = send_as(warm, stranger, request(get(token, b"g"), continuation=CONTINUE))
        # (Ten seconds on: logged in full again, not only counted: kcm.gateway.denied_uses.)
        warm.clock.advance(10)
        message.batch_items += send_as(warm, stranger, request(
            encrypt(L3_UID, b"x", b"e"), continuation=CONTINUE)).batch_items
    # Held here, yet answered exactly as an L3 the gateway never saw (asked of the core).
    assert [(i.result_reason, i.result_message) for i in message.batch_items] == [
        (ResultReason.ITEM_NOT_FOUND, object_not_found(L3_UID).message)] * 2
    assert {uid for _, _, _, uid in warm.link.fetches} == {L3_UID}
    by_token, by_l3 = warnings(events)
    assert by_token["reason"] == by_l3["reason"] == "another tenant's key"
    assert (by_token["principal"], by_token["operation"]) == (stranger.id, "GET")
    assert (by_token["token_id"], by_token["l3_uid"]) == (token_id(token), L3_UID)
    assert (by_l3["operation"], by_l3["l3_uid"], by_l3["token_id"]) == ("ENCRYPT", L3_UID, None)
    text = " ".join(formatEvent(e) for e in events) + repr(events)
    assert token not in text and L3.key.hex() not in text
    assert stranger.id in formatEvent(by_token) and token_id(token) in formatEvent(by_token)


def test_refused_items_are_logged_once_an_interval_per_tenant_and_reason(warm: Gateway) -> None:
    """A line per refused item made another tenant's key cost more than a missing one (a
    64-item batch: 7.8 ms against 4.1 ms) and let one client fill the shared log."""
    token = ok(warm.send(request(create_l4()))).unique_identifier
    stranger, other = service_principal("other", "app"), service_principal("other", "db")
    with capturedLogs() as events:
        send_as(warm, stranger, request(*[get(token, b"%d" % i) for i in range(8)],
                                        continuation=CONTINUE))
        send_as(warm, other, request(encrypt(L3_UID), continuation=CONTINUE))
    [logged] = warnings(events)  # the first; the other eight (both callers: one tenant) counted
    assert (logged["principal"], logged["operation"]) == (stranger.id, "GET")
    with capturedLogs() as events:
        warm.clock.advance(10)  # (no timer here: the next refusal after it logs the count)
        send_as(warm, stranger, request(get(token)))
    counted, again = warnings(events)
    assert (counted["count"], counted["principal"], counted["operation"]) == (
        8, other.id, "ENCRYPT")
    assert "denied 8 more uses of service keys by tenant other in 10 s" in formatEvent(counted)
    assert counted["reason"] == again["reason"] == "another tenant's key"
    assert again["token_id"] == token_id(token)


def test_another_services_l3_is_denied_and_logged_once_across_a_fetch(warm: Gateway,
                                                                      link: FakeLink) -> None:
    billing = service_principal("demo", "billing")
    with capturedLogs() as events:
        # The second item misses (billing's own L3 is not cached): the run is made twice.
        message = send_as(warm, billing, request(create_l4(via_link=L3_UID), create_l4(),
                                                 continuation=CONTINUE))
    assert message.batch_items[0].result_reason == ResultReason.PERMISSION_DENIED
    assert sorted(link.fetches, key=repr) == sorted(
        [(billing, "demo", "billing", None), (billing, "", "", L3_UID)], key=repr)
    [logged] = warnings(events)
    assert (logged["principal"], logged["operation"], logged["l3_uid"]) == (
        billing.id, "CREATE", L3_UID)


def test_a_refusal_by_the_core_is_logged_too(gateway: Gateway, link: FakeLink) -> None:
    """Cold: the core refuses the fetch as if the key were missing, naming its owner for
    the log; the client sees only the missing answer."""
    stranger = service_principal("other", "app")
    with capturedLogs() as events:
        item = send_as(gateway, stranger, request(encrypt(L3_UID))).batch_items[0]
    assert (item.result_reason, item.result_message) == (ResultReason.ITEM_NOT_FOUND,
                                                         object_not_found(L3_UID).message)
    [logged] = warnings(events)
    assert (logged["operation"], logged["l3_uid"]) == ("ENCRYPT", L3_UID)
    assert "another tenant's key" in formatEvent(logged)
    # A refusal the core gives without naming an owner (an asserted identity it does not
    # accept) is logged as well.
    link.fetch_service_keys = lambda *args: fail(ServiceKeyRefused(
        ResultReason.PERMISSION_DENIED, "the asserted caller identity is not accepted"))
    fresh = Gateway(link)
    with capturedLogs() as events:
        item = send_as(fresh, stranger, request(encrypt(L3_UID))).batch_items[0]
    assert item.result_reason == ResultReason.PERMISSION_DENIED
    [logged] = warnings(events)
    assert "not accepted" in formatEvent(logged)


def test_answered_and_other_refusals_log_nothing(warm: Gateway) -> None:
    with capturedLogs() as events:
        token = ok(warm.send(request(create_l4()))).unique_identifier
        ok(warm.send(request(get(token), encrypt(token))))
        warm.cache.apply_event(1, "l3.state", "demo", {"unique_identifier": L3_UID,
                                                       "state": State.DEACTIVATED})
        # KMIP 1.x says Permission Denied for a wrong state: not an attempt on a key.
        refused = warm.send(request(encrypt(token), version=(1, 4))).batch_items[0]
        assert refused.result_reason == ResultReason.PERMISSION_DENIED
    assert warnings(events) == []


@pytest.mark.parametrize("continuation", [CONTINUE, STOP])
def test_a_run_the_core_refuses_whole_answers_each_of_its_items(warm: Gateway,
                                                                continuation: int) -> None:
    """The core may refuse a forwarded run as a whole (its store unavailable): one item
    with no Operation. Each item of the run is answered in its place, with its own
    Unique Batch Item ID and the core's reason (the first only under Stop)."""
    warm.link.answer = lambda wire: failure_response(
        (1, 4), ResultReason.GENERAL_FAILURE, "the key store is unavailable", 1_700_000_000)
    message = warm.send(request(create_l4(b"A"), create_managed(b"B"), create_managed(b"C"),
                                create_l4(b"D"), continuation=continuation), sync=False)
    items = message.batch_items
    if continuation == CONTINUE:
        assert [i.unique_batch_item_id for i in items] == [b"A", b"B", b"C", b"D"]
        assert [i.result_status for i in items] == [
            ResultStatus.SUCCESS, ResultStatus.OPERATION_FAILED,
            ResultStatus.OPERATION_FAILED, ResultStatus.SUCCESS]
        refused = items[1:3]
    else:
        assert [i.unique_batch_item_id for i in items] == [b"A", b"B"]
        refused = items[1:]
    for failed in refused:
        assert failed.operation == Operation.CREATE
        assert (failed.result_reason, failed.result_message) == (
            ResultReason.GENERAL_FAILURE, "the key store is unavailable")
