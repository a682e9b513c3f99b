"""Issue 11 ("No tenant can hurt another") against a real `twistd kcm-core`: the work of one
request is bounded (batch items, Locate results, a deadline, a client that left), the idle
timeout never cuts a request off, and every request is audited however malformed its
header (a seeded mutator over the OASIS request vectors)."""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kcm.conformance.client import KmipClient, KmipClientError
from kcm.kmip.enums import Operation, ResultReason, ResultStatus
from kcm.kmip.payloads import LocateRequest
from kcm.testing.requests import (
    CONTINUE,
    UNDO,
    create_managed,
    item,
    locate,
    request,
    response,
)
from kcm.ttlv import decode
from kcm.ttlv.peek import peek_response
from tests.e2e_support import (
    CoreProcess,
    assert_cancelled_in_audit,
    audit_rows,
    counting_locate,
    deploy,
    last_seq,
    populated,
    wait_until,
)
from tests.mutations import HEADER_SHAPES, base_requests, mutate, random_shape

#: Asserts timings: run alone, after the parallel part of `make test`.
pytestmark = pytest.mark.serial

#: Objects in tenant demo: enough that a Locate judging each one's attributes takes tens
#: of ms.
OBJECTS = 300
#: The busy core's idle timeout, in seconds.
IDLE = 1.0


def populate(core: CoreProcess) -> None:
    populated(core, OBJECTS)


def started(root: Path, **limits: int | float) -> Iterator[CoreProcess]:
    """A core with OBJECTS objects, running with ``limits``; the objects are made while it
    runs with the default limits (a tight deadline would cut the populating batches)."""
    core = deploy(root, f"sqlite:///{root / 'kcm.db'}")
    core.start()
    try:
        populate(core)
    finally:
        core.stop()
    core.limits.update(limits)
    core.write_config()
    core.start()
    try:
        yield core
    finally:
        core.stop()


@pytest.fixture(scope="module")
def busy_core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreProcess]:
    """A core with the default request limits, a short idle timeout and OBJECTS objects."""
    yield from started(tmp_path_factory.mktemp("busy"), idle_timeout=IDLE)


@pytest.fixture(scope="module")
def limited_core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreProcess]:
    """A core with a 0.5 s request deadline, Locates capped at 5, and OBJECTS objects."""
    yield from started(tmp_path_factory.mktemp("limited"), request_deadline=0.5,
                       max_locate_results=5)


def client(core: CoreProcess, timeout: float = 30.0) -> KmipClient:
    pki = core.pki
    return KmipClient("127.0.0.1", core.port, cert=pki.app.cert, key=pki.app.key,
                      ca=pki.ca.cert, timeout=timeout)


# Defect 1: bounded work per request ----------------------------------------------------------
def test_a_batch_of_a_thousand_locates_is_refused_at_once(busy_core: CoreProcess) -> None:
    """The defect's 32 KB batch of 1,000 Locates ran 42 s; now it is refused whole."""
    before = last_seq(busy_core)
    wire = request(*[locate()] * 1000)
    assert len(wire) < 40_000
    began = time.monotonic()
    with busy_core.client() as kmip:
        answer = response(kmip.send(wire))
    assert time.monotonic() - began < 2
    [refused] = answer.batch_items
    assert (refused.result_reason, refused.result_message) == (
        ResultReason.INVALID_MESSAGE,
        "more than 64 batch items; at most 64 are accepted in one request")
    assert [(r["operation"], r["result_reason"]) for r in audit_rows(busy_core, before)] == [
        ("?", "INVALID_MESSAGE")]


def test_work_past_the_deadline_is_stopped_at_the_next_item(limited_core: CoreProcess) -> None:
    before = last_seq(limited_core)
    began = time.monotonic()
    with limited_core.client() as kmip:
        answer = response(kmip.send(request(*[counting_locate()] * 64, continuation=CONTINUE)))
    took = time.monotonic() - began
    statuses = [b.result_status for b in answer.batch_items]
    ran = statuses.count(ResultStatus.SUCCESS)
    assert 0 < ran < 64 and statuses == [ResultStatus.SUCCESS] * ran + (
        [ResultStatus.OPERATION_FAILED] * (64 - ran))
    assert {(b.result_reason, b.result_message) for b in answer.batch_items[ran:]} == {
        (ResultReason.GENERAL_FAILURE, "request deadline of 0.5 s exceeded")}
    assert took < 0.5 + 2  # the deadline, one Locate, and the rest answered without running
    rows = audit_rows(limited_core, before)
    assert len(rows) == 64
    assert {json.dumps(r["detail"]) for r in rows[ran:]} == {
        json.dumps({"stopped": "request deadline of 0.5 s exceeded"})}


def test_an_undo_batch_past_its_deadline_leaves_nothing(limited_core: CoreProcess) -> None:
    """The undone Create's object is rolled back; its answer names none (an undone item
    answers nothing it computed), and Locate finds no more objects than before."""
    with limited_core.client() as kmip:
        def count() -> int:
            [answer] = response(kmip.send(request(item(Operation.LOCATE, LocateRequest(
                offset_items=0))))).batch_items
            return answer.response_payload.located_items

        before = count()
        answer = response(kmip.send(request(
            create_managed(), *[counting_locate()] * 63, continuation=UNDO)))
        created = answer.batch_items[0]
        assert created.result_status == ResultStatus.OPERATION_UNDONE
        assert answer.batch_items[-1].result_message == "request deadline of 0.5 s exceeded"
        assert created.response_payload is None
        assert count() == before


def test_a_locate_returns_at_most_the_servers_cap(limited_core: CoreProcess) -> None:
    with limited_core.client() as kmip:
        def located(payload: LocateRequest) -> tuple[int, int | None]:
            [answer] = response(kmip.send(request(item(Operation.LOCATE, payload)))).batch_items
            assert answer.result_status == ResultStatus.SUCCESS
            return (len(answer.response_payload.unique_identifiers),
                    answer.response_payload.located_items)

        assert located(LocateRequest()) == (5, None)
        assert located(LocateRequest(maximum_items=1000)) == (5, None)
        assert located(LocateRequest(maximum_items=2)) == (2, None)
        assert located(LocateRequest(offset_items=0))[0] == 5
        assert located(LocateRequest(offset_items=0))[1] >= OBJECTS  # page with Offset Items


def test_a_request_whose_client_left_is_cancelled_and_audited_so(busy_core: CoreProcess) -> None:
    before = last_seq(busy_core)
    locates = request(*[counting_locate()] * 64, continuation=CONTINUE)
    with client(busy_core, timeout=0.5) as impatient:
        impatient.connect()
        began = time.monotonic()
        with pytest.raises(KmipClientError):  # gives up waiting and closes the connection
            impatient.send(locates)

    wait_until(lambda: len(audit_rows(busy_core, before)) == 64, "the cancelled request's "
               "audit records", timeout=8)
    cancelled_after = time.monotonic() - began
    assert_cancelled_in_audit(busy_core, before)
    assert cancelled_after < 10  # well before the request's deadline


# Defect 10: the idle timeout does not cut off a request in progress -------------------------
@contextlib.contextmanager
def database_write_lock(core: CoreProcess) -> Iterator[None]:
    """Hold the SQLite write lock of ``core``'s database: its writers wait (up to SQLite's
    busy timeout), so a request is kept in progress for as long as the test wants."""
    connection = sqlite3.connect(core.database.removeprefix("sqlite:///"),
                                 isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        yield
        connection.execute("ROLLBACK")
    finally:
        connection.close()


def test_the_idle_timeout_does_not_close_a_connection_while_its_request_runs(
        busy_core: CoreProcess) -> None:
    with busy_core.client() as kmip:
        kmip.connect()
        began = time.monotonic()
        with ThreadPoolExecutor(1) as sender:
            with database_write_lock(busy_core):
                pending = sender.submit(kmip.send, request(create_managed()))
                time.sleep(2.5 * IDLE)  # the request is in progress for longer than that
            [created] = response(pending.result(timeout=10)).batch_items
        assert time.monotonic() - began > 2.5 * IDLE
        assert created.result_status == ResultStatus.SUCCESS
        # Idle again only from the answer: the connection still serves.
        [again] = response(kmip.send(request(locate()))).batch_items
        assert again.result_status == ResultStatus.SUCCESS


# Defect 6: every request is audited, however malformed its header ---------------------------
def test_every_malformed_request_is_answered_and_audited(busy_core: CoreProcess) -> None:
    rng = random.Random(11)
    bases = list(base_requests())
    chosen = rng.sample(bases, 14)
    cases = [(name, "as sent", wire) for name, wire in chosen]  # well-formed, for contrast
    cases += [(name, shape.__name__, mutate(wire, shape))
              for name, wire in chosen for shape in HEADER_SHAPES]
    cases += [(name, shape.__name__, mutate(wire, shape))
              for name, wire in rng.sample(bases, 40) for shape in [random_shape(rng)]]
    assert 300 <= len(cases) <= 400
    before = last_seq(busy_core)
    answered_items = 0
    with busy_core.client() as kmip:
        for name, shape, wire in cases:
            answer = kmip.send(wire)
            assert decode(answer).tag == 0x42007B, (name, shape)
            answered_items += len(peek_response(answer).items)
    rows = audit_rows(busy_core, before)
    # One record per answered item: a refused request is one item, a run one per item.
    assert len(rows) == answered_items and answered_items >= len(cases)
    assert "request failed" not in busy_core.log.read_text()  # no General Failure left
    # And the core still answers a normal request.
    with busy_core.client() as kmip:
        [ok] = response(kmip.send(request(create_managed()))).batch_items
    assert ok.result_status == ResultStatus.SUCCESS
