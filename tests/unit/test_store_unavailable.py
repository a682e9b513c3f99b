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
