"""When kcm-core stops a request: its deadline on an injected clock, its connection lost."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from kcm.core.config import CoreLimits
from kcm.core.context import Caller
from kcm.core.request_handler import CLIENT_GONE, CoreRequestHandler, RequestWatch
from kcm.kmip_protocol import ConnectionInfo
from tests.core_support import service_principal

PRINCIPAL = service_principal()


def test_a_watch_stops_its_request_at_the_deadline() -> None:
    clock = Clock()
    clock.advance(100)
    watch = RequestWatch(clock.seconds, 2.5)
    assert watch.stop_reason() is None
    clock.advance(2.4)
    assert watch.stop_reason() is None
    clock.advance(0.1)
    assert watch.stop_reason() == "request deadline of 2.5 s exceeded"


def test_a_lost_client_stops_its_request_before_the_deadline() -> None:
    watch = RequestWatch(Clock().seconds, 10)
    watch.lost = True
    assert watch.stop_reason() == CLIENT_GONE == "request cancelled: the client disconnected"


class HeldStore:
    """A store whose worker and group commits never run: the test plays them with what was
    handed over (these requests, not KMIP, take the write path: a group commit)."""

    url = "sqlite://"  # (no file)

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...], Deferred[bytes]]] = []

    def defer(self, fn: Any, *args: Any) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.calls.append((fn, args, d))
        return d

    def submit(self, _key: Any, fn: Any, *args: Any, own_savepoint: bool = False,
               lean: Any = None, expires: float | None = None) -> Deferred[bytes]:
        return self.defer(fn, *args)


def handler_with(store: HeldStore, clock: Clock, **limits: Any) -> CoreRequestHandler:
    """A handler whose requests (all of one tenant here) all reach the store at once."""
    limits.setdefault("max_workers_per_tenant", 4)
    return CoreRequestHandler(store, keyring=None, clock=clock.seconds,  # type: ignore[arg-type]
                              limits=CoreLimits(**limits),
                              committer=store)  # type: ignore[arg-type]


def test_a_lost_connection_stops_its_requests_in_flight_and_no_others() -> None:
    store, clock = HeldStore(), Clock()
    handler = handler_with(store, clock)
    mine, other = ConnectionInfo(1, PRINCIPAL, "a:1"), ConnectionInfo(2, PRINCIPAL, "b:2")
    handler.handle_request(b"request 1", mine)
    handler.handle_request(b"request 2", other)
    [(_, (wire, caller, _, mine_stop, *_), _), (_, (_, _, _, other_stop, *_), _)] = store.calls
    assert (wire, caller.source) == (b"request 1", "a:1")
    handler.connection_lost(mine)
    assert mine_stop() == CLIENT_GONE  # what the kernel sees at the next item boundary
    assert other_stop() is None
    handler.connection_lost(mine)  # again, or for a connection with nothing in flight: nothing
    handler.connection_lost(ConnectionInfo(3, PRINCIPAL, "c:3"))


def test_a_finished_request_is_forgotten() -> None:
    store, clock = HeldStore(), Clock()
    handler = handler_with(store, clock)
    connection = ConnectionInfo(1, PRINCIPAL, "a:1")
    answer = handler.handle_request(b"request", connection)
    store.calls[0][2].callback(b"answer")
    assert answer.result == b"answer"
    handler.handle_request(b"next", connection)
    handler.connection_lost(connection)
    assert store.calls[0][1][3]() is None  # the answered request is not marked
    assert store.calls[1][1][3]() == CLIENT_GONE


def test_the_deadline_runs_from_the_requests_arrival() -> None:
    store, clock = HeldStore(), Clock()
    handler = handler_with(store, clock, request_deadline=3.0)
    handler.handle_request(b"request", ConnectionInfo(1, PRINCIPAL, "a:1"))
    handler.handle_as(b"relayed", Caller(PRINCIPAL, "gateway"))  # the gateway link
    stops = [args[3] for _, args, _ in store.calls]
    clock.advance(2.9)  # e.g. waiting for a store thread
    assert [stop() for stop in stops] == [None, None]
    clock.advance(0.1)
    assert [stop() for stop in stops] == ["request deadline of 3 s exceeded"] * 2


def test_a_request_whose_group_commit_failed_is_answered_at_once_and_its_record_follows(
        ) -> None:
    from kcm.kmip.enums import ResultReason, ResultStatus
    from kcm.testing.requests import response

    store, clock = HeldStore(), Clock()
    handler = handler_with(store, clock)
    answers: list[bytes] = []
    handler.handle_request(b"request", ConnectionInfo(1, PRINCIPAL, "a:1")
                           ).addCallback(answers.append)
    store.calls[0][2].errback(OSError("disk I/O error"))  # the group did not commit
    [item] = response(answers[0]).batch_items  # answered without waiting for its record
    assert (item.result_status, item.result_reason) == (ResultStatus.OPERATION_FAILED,
                                                        ResultReason.GENERAL_FAILURE)
    assert item.result_message.startswith("internal error (correlation id ")
    audit_work, (events,), recorded = store.calls[1]  # its record goes to a later group
    assert [event.result_reason for event in events] == ["GENERAL_FAILURE"]
    assert audit_work.__name__ == "_append_all"
    recorded.callback(None)


def test_a_request_that_met_an_unavailable_store_is_told_so_and_not_audited() -> None:
    """A locked, full or unreachable store: the answer names it, and no audit record is
    attempted (it would meet the same store, holding the writer for its lock wait)."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    from kcm.kmip.enums import ResultReason
    from kcm.testing.requests import response

    store, clock = HeldStore(), Clock()
    handler = handler_with(store, clock)
    answers: list[bytes] = []
    handler.handle_request(b"request", ConnectionInfo(1, PRINCIPAL, "a:1")
                           ).addCallback(answers.append)
    store.calls[0][2].errback(OperationalError(
        "BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked")))
    [item] = response(answers[0]).batch_items
    assert item.result_reason == ResultReason.GENERAL_FAILURE
    assert item.result_message.startswith("the key store is unavailable; try again")
    assert len(store.calls) == 1
    assert handler._metrics.registry.get_sample_value(
        "kcm_core_store_unavailable_total", {"kind": "database"}) == 1


class StuckStore:
    """A store whose writer and workers took their first work and never come back (a
    silent database): a group takes its jobs (they run, here against no session, and
    fail) and never commits; a worker's call never returns."""

    url = "sqlite://"  # (no file)

    def __init__(self) -> None:
        self.written: list[Any] = []
        self.deferred: list[Any] = []

    def write(self, fn: Any) -> Deferred[Any]:
        self.written.append(fn)
        fn(None)
        return Deferred()

    write_lean = write

    def defer(self, fn: Any, *args: Any) -> Deferred[Any]:
        """The worker's call, held: the test may fire what it returned."""
        self.deferred.append(Deferred())
        return self.deferred[-1]


def test_requests_still_queued_at_their_deadline_are_answered_then_unrun() -> None:
    """Behind a group commit (or workers) held by a silent database, a request waiting in
    the queue is answered General Failure at its deadline, not when the database is cut:
    it never ran, and says so. One taken into the held group is not answered early: only
    its commit says what became of it."""
    from kcm.kmip.enums import ResultReason, ResultStatus
    from kcm.testing.requests import create_managed, locate, request, response

    store, clock = StuckStore(), Clock()
    handler = CoreRequestHandler(store, keyring=None, clock=lambda: 1_800_000_000,  # type: ignore[arg-type]
                                 timer=clock.seconds, reactor=clock, workers=1,
                                 limits=CoreLimits(request_deadline=3.0,
                                                   max_workers_per_tenant=1))
    answers: dict[str, list[bytes]] = {}
    for name in ("held", "queued"):  # the first's group holds the writer
        answers[name] = []
        handler.handle_request(request(create_managed()), ConnectionInfo(
            1, PRINCIPAL, "a:1")).addCallback(answers[name].append)
    for name in ("searching", "waiting"):  # the first's Locate holds the one worker
        answers[name] = []
        handler.handle_request(request(locate()), ConnectionInfo(
            2, PRINCIPAL, "b:2")).addCallback(answers[name].append)
    assert (len(store.written), len(store.deferred)) == (1, 1)
    clock.advance(2.9)
    assert all(got == [] for got in answers.values())
    clock.advance(0.2)
    for name in ("queued", "waiting"):
        [item] = response(answers[name][0]).batch_items
        assert (item.result_status, item.result_reason) == (
            ResultStatus.OPERATION_FAILED, ResultReason.GENERAL_FAILURE)
        assert item.result_message.startswith(
            "request deadline of 3 s exceeded before it ran; try again (correlation id ")
    assert answers["held"] == answers["searching"] == []
    # Neither ran; each leaves an audit record, queued for the writer's next group.
    assert (len(store.written), len(store.deferred)) == (1, 1)
    assert handler.queue_waiting() == [("workers", 0), ("writer", 2)]
    registry = handler._metrics.registry
    assert registry.get_sample_value("kcm_core_requests_expired_total", {"ran": "false"}) == 2


def test_a_request_that_ran_to_its_deadline_waits_a_grace_for_its_records() -> None:
    """A read-only request whose worker returned at (or after) its deadline still has its
    answer sent once its audit records commit, unless the writer keeps them waiting
    LATE_GRACE_S more: then it is answered General Failure, saying what it waited for."""
    from kcm.core.queue_expiry import LATE_GRACE_S
    from kcm.core.request_handler import _Answer
    from kcm.kmip.enums import ResultReason
    from kcm.testing.requests import create_managed, locate, request, response

    store, clock = StuckStore(), Clock()
    handler = CoreRequestHandler(store, keyring=None, clock=lambda: 1_800_000_000,  # type: ignore[arg-type]
                                 timer=clock.seconds, reactor=clock,
                                 limits=CoreLimits(request_deadline=3.0))
    handler.handle_request(request(create_managed()), ConnectionInfo(1, PRINCIPAL, "a:1"))
    answers: list[bytes] = []
    handler.handle_request(request(locate()), ConnectionInfo(2, PRINCIPAL, "b:2")
                           ).addCallback(answers.append)
    clock.advance(3.5)  # the Locate ran past its deadline (stopped at an item boundary)
    store.deferred[0].callback(_Answer(b"the answer", [], (1, 4), "0" * 16))
    clock.advance(min(0.5, LATE_GRACE_S / 2))
    assert answers == []  # its records may still commit, and its answer go out
    clock.advance(LATE_GRACE_S)
    [item] = response(answers[0]).batch_items
    assert item.result_reason == ResultReason.GENERAL_FAILURE
    assert item.result_message.startswith("request deadline of 3 s exceeded before its audit "
                                          "records were written; try again (correlation id ")
    assert handler._metrics.registry.get_sample_value(
        "kcm_core_requests_expired_total", {"ran": "true"}) == 1


class FailingReads(HeldStore):
    """A store whose read transaction fails as a full or gone database does."""

    def run_sync(self, fn: Any, write: bool = True) -> Any:
        import sqlite3

        from sqlalchemy.exc import OperationalError

        raise OperationalError("SELECT", {}, sqlite3.OperationalError(
            "unable to open database file"))


def test_a_read_that_met_an_unavailable_store_is_told_so_in_one_line() -> None:
    """A read-only request whose transaction meets the store unavailable (an item's own
    statement, abandoned whole: kcm.kernel.batch.RequestAbandoned) is answered that the
    store is unavailable, logged in one line, not an internal error with a traceback."""
    from twisted.logger import LogLevel, globalLogPublisher

    from kcm.core.context import Caller
    from kcm.testing.requests import locate, request, response

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        handler = handler_with(FailingReads(), Clock())
        answer = handler._read(request(locate()), Caller(PRINCIPAL, "a:1"), 0, None)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert answer is not None
    [item] = response(answer.wire).batch_items
    assert item.result_message.startswith("the key store is unavailable; try again")
    [line] = [e for e in events if e.get("log_namespace") == "kcm.core.request_handler"]
    assert line["log_level"] == LogLevel.error and "log_failure" not in line
    assert line["why"] == "unable to open database file"
