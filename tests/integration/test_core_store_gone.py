"""A request whose store fails under it (a PostgreSQL session ended by the server, a locked
or full SQLite file) is answered "the key store is unavailable", and logged in one line,
not as a bug with its traceback (the last sitting's frozen-core fix ends such sessions)."""

from __future__ import annotations

import sqlite3
import time

import pytest
from sqlalchemy.exc import OperationalError
from twisted.logger import globalLogPublisher

from kcm.core import request_handler
from kcm.kmip.enums import ResultReason
from kcm.testing.requests import create_managed, request, response
from tests.core_support import CoreHarness


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


@pytest.mark.parametrize("error, one_line", [
    (OperationalError("SAVEPOINT", {}, sqlite3.OperationalError("database is locked")), True),
    (ValueError("a bug"), False),
])
def test_a_request_the_store_fails_under_is_answered_so_in_one_line(
        core: CoreHarness, logged, monkeypatch, error, one_line) -> None:
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(request_handler, "execute", failing)
    answer = response(core.handler.respond(request(create_managed(b"1"), version=(2, 1)),
                                           core.caller(), int(time.time())))
    [item] = answer.batch_items
    assert item.result_reason == ResultReason.GENERAL_FAILURE
    failed = [e for e in logged if str(e.get("log_format", "")).startswith("request ")
              and "failed [correlation id" in str(e.get("log_format"))]
    assert len(failed) == 1
    if one_line:
        assert item.result_message.startswith("the key store is unavailable; try again")
        assert "log_failure" not in failed[0] and failed[0]["why"] == "database is locked"
        assert failed[0]["log_format"].endswith("; not audited")  # (recorded by it only)
    else:
        assert "log_failure" in failed[0]
