"""Which store errors mean the store is unavailable (kcm.core.store.unavailable)."""

from __future__ import annotations

import sqlite3

from sqlalchemy.exc import IntegrityError, OperationalError

from kcm.core.store.unavailable import store_unavailable, store_unavailable_message


def test_a_locked_or_full_database_is_unavailable_with_its_reason() -> None:
    locked = OperationalError("BEGIN IMMEDIATE", {}, sqlite3.OperationalError(
        "database is locked"))
    assert store_unavailable(locked) == "database is locked"
    full = OperationalError("INSERT", {}, sqlite3.OperationalError(
        "database or disk is full\nmore"))
    assert store_unavailable(full) == "database or disk is full"


def test_the_reason_is_short_ascii() -> None:
    error = OperationalError("x", {}, Exception("l\u00e9ger " + "x" * 500))
    why = store_unavailable(error)
    assert why is not None and why.isascii() and len(why) <= 120


def test_a_schema_moved_under_the_core_says_what_to_do_whole() -> None:
    from kcm.core.store.repository import _check_revision

    try:
        _check_revision("0016", "0015")
    except OperationalError as error:
        assert store_unavailable(error) == (
            "the database's schema is at revision 0016, this kcm-core writes 0015: "
            "restart it on the release that upgraded the database")
    else:
        raise AssertionError("not refused")


def test_other_errors_are_not_the_stores_unavailability() -> None:
    assert store_unavailable(ValueError("bug")) is None
    assert store_unavailable(IntegrityError("INSERT", {}, Exception("unique"))) is None


def test_the_clients_message_names_the_store_and_the_log_line() -> None:
    assert store_unavailable_message("abc") == (
        "the key store is unavailable; try again (correlation id abc)")


def test_a_failure_is_one_line_when_the_store_is_unavailable_else_a_traceback() -> None:
    from twisted.logger import Logger
    from twisted.python.failure import Failure

    from kcm.core.store.unavailable import log_failure

    events: list[dict] = []
    log = Logger(observer=events.append)
    locked = OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked"))
    log_failure(log, Failure(locked), "state sweep")
    log_failure(log, Failure(ValueError("bug")), "state sweep")
    assert [(e["log_format"], "log_failure" in e) for e in events] == [
        ("{what} failed: the key store is unavailable ({why})", False),
        ("{what} failed", True)]
    assert events[0]["why"] == "database is locked"


def test_a_connection_invalidated_mid_transaction_rolls_back_with_the_error_that_ended_it(
        ) -> None:
    """The pipelined engine's rollback hook asked an invalidated connection (its server gone
    mid-transaction) for its DBAPI connection: PendingRollbackError replaced the error that
    invalidated it, and a state sweep or a usage write logged a bug's traceback instead of
    one line about the store."""
    from sqlalchemy import create_engine, text

    from kcm.core.store.raw_statements import pipelined

    engine = pipelined(create_engine("sqlite://"))
    with engine.connect() as connection:
        transaction = connection.begin()
        connection.execute(text("SELECT 1"))
        connection.invalidate()
        transaction.rollback()  # raised PendingRollbackError
    with engine.connect() as connection:  # and the pool serves again
        assert connection.execute(text("SELECT 2")).scalar() == 2


def test_usage_writes_failing_while_the_store_is_away_log_once_then_what_was_lost() -> None:
    from twisted.internet.defer import fail, succeed
    from twisted.internet.task import Clock
    from twisted.logger import globalLogPublisher

    from kcm.core import usage_intake

    class Store:
        up = False

        def run(self, _work):
            return succeed(False) if self.up else fail(OperationalError(
                "INSERT", {}, Exception("connection refused")))

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock, store = Clock(), Store()
        intake = usage_intake.UsageIntake(store, clock, on_cap_reached=lambda: None)
        for uses in range(1, 6):
            intake.add({f"l3-{n}": 1 for n in range(uses)})
            clock.advance(intake.delay)
        store.up = True
        intake.add({"l3-a": 1})
        clock.advance(intake.delay)
        intake.add({"l3-a": 1})
        clock.advance(intake.delay)
    finally:
        globalLogPublisher.removeObserver(events.append)
    mine = [e for e in events if e.get("log_namespace") == usage_intake.__name__]
    assert [(e["log_format"], "log_failure" in e) for e in mine] == [
        ("{what} failed: the key store is unavailable ({why})", False),
        ("usage counts are recorded again; {writes} writes failed before, losing {lost} "
         "counts", False)]
    assert mine[0]["what"] == "recording 1 usage counts (lost)"
    assert (mine[1]["writes"], mine[1]["lost"]) == (5, 1 + 2 + 3 + 4 + 5)


def test_work_asked_of_a_stopped_store_is_its_unavailability() -> None:
    """What was queued behind a store that stopped (a state sweep, the audit record of a
    request answered at its deadline) fails with StoreStopped: logged in one line, not a
    critical traceback."""
    from kcm.core.store.unavailable import StoreStopped

    assert store_unavailable(StoreStopped("Store.write() after stopService()")) == (
        "the store is not running")
    assert store_unavailable(RuntimeError("Store.write() after stopService()")) is None


def test_a_write_refused_by_a_read_only_session_is_unavailable() -> None:
    from sqlalchemy.exc import InternalError

    from kcm.core.store.unavailable import READ_ONLY, read_only

    class ReadOnlySqlTransaction(Exception):
        sqlstate = "25006"

    refused = InternalError("UPDATE", {}, ReadOnlySqlTransaction(
        "cannot execute UPDATE in a read-only transaction"))
    assert read_only(refused) and store_unavailable(refused) == READ_ONLY
    assert not read_only(InternalError("UPDATE", {}, Exception("other")))


def test_a_write_refused_in_a_read_transaction_of_the_store_is_a_bug() -> None:
    from sqlalchemy.exc import InternalError

    from kcm.core.store.unavailable import WriteInReadTransaction, read_transaction_refused

    class ReadOnlySqlTransaction(Exception):
        sqlstate = "25006"

    refused = InternalError("INSERT", {}, ReadOnlySqlTransaction(
        "cannot execute INSERT in a read-only transaction"))
    bug = read_transaction_refused(refused)
    assert isinstance(bug, WriteInReadTransaction) and store_unavailable(bug) is None
    other = InternalError("SELECT", {}, Exception("other"))
    assert read_transaction_refused(other) is other
