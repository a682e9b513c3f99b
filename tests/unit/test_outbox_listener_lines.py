"""kcm.core.outbox_listener's lines while its database is down: it tries to LISTEN again
every ``retry_delay`` (1 s), and each failure was a warning, for as long as an outage
lasted. Now the first failure is said at once, then the same failure at most once every
30 s with how many attempts failed; a new error, or a failure after it listened again, is
said at once."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from twisted.logger import capturedLogs, formatEvent

from kcm.core import outbox_listener
from kcm.core.outbox_listener import OutboxListener


def _run(listener: OutboxListener, seconds: float) -> None:
    thread = threading.Thread(target=listener._listen_forever)
    thread.start()
    time.sleep(seconds)
    listener._stopping.set()
    thread.join(5)
    assert not thread.is_alive()


def test_a_database_down_is_said_once_then_every_interval(monkeypatch) -> None:
    errors = iter(["Connection refused"] * 50 + ["the database system is starting up"] * 10000)

    def refused(engine):
        raise OSError(next(errors))

    monkeypatch.setattr(outbox_listener, "own_connection", refused)
    listener = OutboxListener(store=SimpleNamespace(engine=None), wake=lambda: None, reactor=None,
                              retry_delay=0.001)
    with capturedLogs() as events:
        _run(listener, 0.5)
    lines = [formatEvent(event) for event in events]
    assert len(lines) == 2, lines  # each error at its first failure; none repeated
    assert "(Connection refused)" in lines[0] and "(1 failed attempt(s)" in lines[0]
    assert "(the database system is starting up)" in lines[1]
    assert "(50 failed attempt(s)" in lines[1]


def test_the_same_failure_is_said_again_after_the_interval(monkeypatch) -> None:
    def refused(engine):
        raise OSError("Connection refused")

    monkeypatch.setattr(outbox_listener, "own_connection", refused)
    monkeypatch.setattr(outbox_listener, "FAILURE_LOG_INTERVAL", 0.2)
    listener = OutboxListener(store=SimpleNamespace(engine=None), wake=lambda: None, reactor=None,
                              retry_delay=0.001)
    with capturedLogs() as events:
        _run(listener, 0.5)
    assert 2 <= len(events) <= 4, [formatEvent(event) for event in events]
