"""Get Attributes answers kept with their objects (kcm.core.attribute_answers), on a real
store: a repeated Get Attributes is answered from the kept answer exactly as executing it
answers (the same bytes, the same audit record), and never when the object changed (here or
on another core), when time moved its state, for another tenant or a service the policy
keeps out; what is kept is bounded."""

from __future__ import annotations

import time
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from kcm.core import attribute_answers, request_handler
from kcm.core.attribute_answers import ANSWER_MAX_BYTES, ANSWERS_KEPT, REFERENCES_KEPT
from kcm.core.audit import verify_chain
from kcm.core.context import Caller
from kcm.core.store.schema import AuditLog
from kcm.kernel.missing import object_not_found
from kcm.kmip.attributes import Attribute, AttributeReference, Name
from kcm.kmip.enums import NameType, ObjectType, Operation, ResultReason, ResultStatus, State
from kcm.kmip.payloads import AddAttributeRequest, CreateRequest, GetAttributesRequest
from kcm.kmip.tags import Tag
from kcm.testing import requests as kmip
from tests.core_support import CoreHarness, admin_principal, service_principal

NOW = int(time.time())
VERSIONS = [(1, 2), (1, 4), (2, 0), (2, 1)]
REFERENCES = [Tag.STATE, Tag.CRYPTOGRAPHIC_LENGTH, Tag.CRYPTOGRAPHIC_ALGORITHM, Tag.NAME,
              Tag.ACTIVATION_DATE, Tag.OBJECT_TYPE, Tag.UNIQUE_IDENTIFIER,
              Tag.KEY_FORMAT_TYPE]


class Lean:
    """Requests run as kcm-core runs them in a lean group, one at a time, synchronously,
    at a clock the test sets; which way each went (kept answer or executed) is recorded."""

    def __init__(self, core: CoreHarness, monkeypatch: Any) -> None:
        self.core = core
        self.now = NOW
        self.handler = request_handler.CoreRequestHandler(core.store, core.keyring,
                                                          clock=lambda: self.now)
        self.ways: list[str] = []
        recall = attribute_answers.recall

        def recording(*args: Any) -> Any:
            found = recall(*args)
            self.ways.append("kept" if found is not None else "executed")
            return found

        monkeypatch.setattr(request_handler, "recall", recording)

    def send(self, wire: bytes, principal: Any = None) -> bytes:
        caller = Caller(principal or service_principal(), "127.0.0.1:40000")
        return self.core.store._write_lean_sync(
            lambda transaction: self.handler._read_lean(transaction, wire, caller, self.now,
                                                        None))

    def write(self, *items: Any) -> Any:
        """A request that writes, as kcm-core runs it (in a session group)."""
        return kmip.response(self.core.handler.respond(
            kmip.request(*items), self.core.caller(), self.now))


def created(lean: Lean, extra: list[Attribute] | None = None) -> str:
    answer = lean.write(kmip.item(Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY, attributes=kmip.aes256(extra or []))))
    return answer.batch_items[0].response_payload.unique_identifier


def ask(uid: str, *tags: int, version: tuple[int, int] = (1, 4)) -> bytes:
    return kmip.request(kmip.get_attributes(uid, *tags), version=version)


def records(lean: Lean) -> list[tuple[Any, ...]]:
    return lean.core.store.run_sync(lambda s: [tuple(r) for r in s.execute(select(
        AuditLog.operation, AuditLog.object_ids, AuditLog.result_status,
        AuditLog.result_reason, AuditLog.principal, AuditLog.source,
        AuditLog.correlation_id).order_by(AuditLog.seq))], write=False)


@pytest.fixture
def lean(core: CoreHarness, monkeypatch: Any) -> Lean:
    made = Lean(core, monkeypatch)
    # one correlation id for every answer, so that two answers can be compared byte for byte
    monkeypatch.setattr(request_handler, "new_correlation_id", lambda: "c0ffee")
    return made


def test_a_repeated_get_attributes_is_answered_as_executing_it_answers(lean: Lean) -> None:
    uid = created(lean)
    wire = ask(uid, Tag.STATE, Tag.CRYPTOGRAPHIC_LENGTH)
    first, second = lean.send(wire), lean.send(wire)
    assert lean.ways == ["executed", "kept"]
    assert second == first
    item = kmip.response(second).batch_items[0]
    assert item.result_status == ResultStatus.SUCCESS
    assert [a.value.value for a in item.response_payload.attributes] == [State.PRE_ACTIVE, 256]
    executed, kept = records(lean)[-2:]
    assert kept == executed  # the same record (its seq and digest aside)
    assert lean.core.store.run_sync(verify_chain).ok


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.sampled_from(REFERENCES), max_size=4, unique=True),
                min_size=1, max_size=3),
       st.sampled_from(VERSIONS), st.one_of(st.none(), st.binary(min_size=1, max_size=4)))
def test_kept_answers_equal_executed_ones_over_versions_and_questions(
        lean: Lean, asked: list[list[int]], version: tuple[int, int],
        batch_id: bytes | None) -> None:
    uid = created(lean, [Attribute.of(Tag.NAME, Name(value="payroll",
                                                     type=NameType.UNINTERPRETED_TEXT_STRING))])
    wire = kmip.request(*(kmip.get_attributes(uid, *tags, batch_id=batch_id)
                          for tags in asked), version=version)
    lean.ways.clear()
    first, second = lean.send(wire), lean.send(wire)
    assert lean.ways == ["executed", "kept"]
    assert second == first


def test_a_change_is_seen_at_once(lean: Lean) -> None:
    uid = created(lean)
    state = ask(uid, Tag.STATE)
    names = ask(uid, Tag.NAME)
    for wire in (state, state, names, names):
        lean.send(wire)
    assert lean.ways == ["executed", "kept", "executed", "kept"]
    lean.write(kmip.activate(uid))
    lean.write(kmip.item(Operation.ADD_ATTRIBUTE, AddAttributeRequest(
        unique_identifier=uid, attribute=Attribute.of(Tag.NAME, Name(
            value="renamed", type=NameType.UNINTERPRETED_TEXT_STRING)))))
    lean.ways.clear()
    now_state = kmip.response(lean.send(state)).batch_items[0].response_payload.attributes
    now_names = kmip.response(lean.send(names)).batch_items[0].response_payload.attributes
    assert lean.ways == ["executed", "executed"]
    assert [a.value.value for a in now_state] == [State.ACTIVE]
    assert [Name.from_item(a.value).value for a in now_names] == ["renamed"]


def test_a_change_by_another_core_is_seen(lean: Lean) -> None:
    """Another core's change raises the row's revision: the kept answer is not used."""
    uid = created(lean)
    wire = ask(uid, Tag.CRYPTOGRAPHIC_LENGTH)
    lean.send(wire), lean.send(wire)
    lean.core.store.run_sync(lambda s: s.execute(text(
        "UPDATE managed_objects SET revision = revision + 1 WHERE uid = :uid"), {"uid": uid}))
    lean.ways.clear()
    lean.send(wire)
    assert lean.ways == ["executed"]


def test_time_that_moves_the_state_is_seen(lean: Lean) -> None:
    uid = created(lean, [Attribute.of(Tag.ACTIVATION_DATE, NOW + 100)])
    wire = ask(uid, Tag.STATE)
    states = [kmip.response(lean.send(wire)).batch_items[0].response_payload.attributes[0]
              .value.value for _ in range(2)]
    lean.now += 200
    states += [kmip.response(lean.send(wire)).batch_items[0].response_payload.attributes[0]
               .value.value for _ in range(2)]
    assert states == [State.PRE_ACTIVE] * 2 + [State.ACTIVE] * 2
    assert lean.ways == ["executed", "kept", "executed", "kept"]


def test_another_tenant_or_a_service_kept_out_gets_what_executing_gets(lean: Lean) -> None:
    uid = created(lean)
    wire = ask(uid, Tag.STATE)
    lean.send(wire), lean.send(wire)  # kept for demo/app
    lean.ways.clear()
    other = kmip.response(lean.send(wire, service_principal("other", "app"))).batch_items[0]
    billing = kmip.response(lean.send(wire, service_principal("demo", "billing"))).batch_items[0]
    missing = kmip.response(lean.send(ask("no-such-object", Tag.STATE))).batch_items[0]
    assert lean.ways == ["executed"] * 3
    assert other.result_reason == missing.result_reason == ResultReason.ITEM_NOT_FOUND
    assert billing.result_status == ResultStatus.OPERATION_FAILED  # another service's object
    # and none of the refusals was kept
    lean.ways.clear()
    lean.send(wire, service_principal("other", "app"))
    assert lean.ways == ["executed"]



def test_a_service_that_is_not_provisioned_gets_what_executing_gets(lean: Lean) -> None:
    """An object of no service, kept for the applications of its tenant: one whose service
    is not provisioned holds nothing, and is not answered from what is kept."""
    made = kmip.response(lean.core.handler.respond(kmip.request(kmip.item(
        Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                        attributes=kmip.aes256([])))),
        lean.core.caller(admin_principal()), lean.now))
    uid = made.batch_items[0].response_payload.unique_identifier
    wire = ask(uid, Tag.STATE)
    lean.send(wire), lean.send(wire)  # kept for demo/app (an object of no service)
    assert lean.ways == ["executed", "kept"]
    lean.ways.clear()
    ghost = kmip.response(lean.send(wire, service_principal("demo", "ghost"))).batch_items[0]
    assert lean.ways == ["executed"]
    assert (ghost.result_reason, ghost.result_message) == (
        ResultReason.ITEM_NOT_FOUND, object_not_found(uid).message)


def test_another_service_the_store_knows_gets_what_executing_gets(lean: Lean) -> None:
    """A service the store already knows is provisioned (it made an object) asking for
    another service's kept object: refused as executing refuses it, not answered."""
    uid = created(lean)  # demo/app's
    wire = ask(uid, Tag.STATE)
    lean.send(wire), lean.send(wire)  # kept for demo/app
    billing = service_principal("demo", "billing")
    made = kmip.response(lean.core.handler.respond(kmip.request(kmip.item(
        Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                        attributes=kmip.aes256([])))),
        lean.core.caller(billing), lean.now))
    assert made.batch_items[0].result_status == ResultStatus.SUCCESS
    lean.ways.clear()
    refused = kmip.response(lean.send(wire, billing)).batch_items[0]
    assert refused.result_reason == ResultReason.PERMISSION_DENIED
    assert "belongs to service 'app'" in refused.result_message

def test_what_is_kept_is_bounded(lean: Lean) -> None:
    uid = created(lean)
    for tag in REFERENCES[:ANSWERS_KEPT + 2]:
        lean.send(ask(uid, tag))
    cached = next(iter(lean.core.store.objects._entries.values()))
    assert 0 < len(cached.views[attribute_answers._ANSWERS]) <= ANSWERS_KEPT
    # an answer longer than ANSWER_MAX_BYTES is executed every time
    many = [Attribute.of(Tag.NAME, Name(value=f"name-{n:04d}-" + "x" * 40,
                                        type=NameType.UNINTERPRETED_TEXT_STRING))
            for n in range(ANSWER_MAX_BYTES // 64 + 1)]
    big = created(lean, many)
    wire = ask(big, Tag.NAME)
    assert len(lean.send(wire)) > ANSWER_MAX_BYTES
    lean.ways.clear()
    lean.send(wire)
    assert lean.ways == ["executed"]
    # A request naming more attributes than REFERENCES_KEPT is executed every time, though
    # its answer is small (the object lacks most of them): its references would be the
    # kept answer's key, megabytes the cache does not count (review 6).
    absent = [0x540000 + n for n in range(REFERENCES_KEPT + 1)]  # 2.x tags no object has
    wire = kmip.request(kmip.get_attributes(uid, *absent), version=(2, 1))
    assert len(lean.send(wire)) < ANSWER_MAX_BYTES
    lean.ways.clear()
    lean.send(wire)
    assert lean.ways == ["executed"]


def test_a_request_the_reader_leaves_alone_is_executed(lean: Lean) -> None:
    uid = created(lean)
    twice = kmip.request(kmip.item(Operation.GET_ATTRIBUTES, GetAttributesRequest(
        unique_identifier=uid, attribute_references=[AttributeReference(Tag.STATE)] * 2)))
    for _ in range(2):
        item = kmip.response(lean.send(twice)).batch_items[0]
        assert item.result_reason == ResultReason.INVALID_FIELD  # a name asked twice
    assert lean.ways == ["executed", "executed"]


@pytest_twisted.ensureDeferred
async def test_a_kept_answer_reaches_a_client_of_the_core(core: CoreHarness,
                                                          monkeypatch: Any) -> None:
    """Through the handler as kcm-core runs it: lean groups on the writer thread."""
    ways: list[str] = []
    recall = attribute_answers.recall
    monkeypatch.setattr(request_handler, "recall", lambda *a: (
        lambda found: (ways.append("kept" if found is not None else "executed"), found)[1])(
        recall(*a)))
    answer = await core.handler.handle_as(kmip.request(kmip.create_managed()), core.caller())
    uid = kmip.response(answer).batch_items[0].response_payload.unique_identifier
    answers = [kmip.response(await core.handler.handle_as(ask(uid, Tag.STATE),
                                                          core.caller())) for _ in range(3)]
    assert ways == ["executed", "kept", "kept"]
    assert {a.batch_items[0].response_payload.attributes[0].value.value
            for a in answers} == {State.PRE_ACTIVE}
    assert core.store.run_sync(verify_chain).ok


def test_a_fault_of_the_kept_answers_costs_no_answer(lean: Lean, monkeypatch: Any) -> None:
    """An unexpected error recalling or keeping answers is logged; the request is executed
    (recalling) or its answer stands (keeping)."""
    from twisted.logger import globalLogPublisher

    uid = created(lean)
    wire = ask(uid, Tag.STATE)
    expected = lean.send(wire)

    def broken(*_args: Any) -> Any:
        raise RuntimeError("broken")

    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        monkeypatch.setattr(request_handler, "recall", broken)
        assert lean.send(wire) == expected  # executed
        monkeypatch.setattr(request_handler, "remember", broken)
        assert lean.send(wire) == expected  # executed, answered, nothing kept
    finally:
        globalLogPublisher.removeObserver(logged.append)
    failures = [event for event in logged if event.get("log_failure") is not None]
    assert len(failures) == 3 and all(
        event["log_failure"].check(RuntimeError) for event in failures)
