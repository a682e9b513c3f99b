"""A stored object refused because its row does not match its wrapping is logged in one
line (kcm.core.mismatch_line), the request's when a request found it, and one object's at
most once a minute however often a client asks for it; the keyring counts every one."""

from __future__ import annotations

import threading

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from kcm.core.keyring import WrappingMismatch
from kcm.core.mismatch_line import KEPT, MismatchLines, in_request
from tests.unit.test_keyring_binding import _l3_row, _ring


@pytest.fixture
def lines():
    seen: list[str] = []

    def observer(event: dict) -> None:
        if event.get("log_namespace") == "kcm.core.keyring":
            seen.append(formatEvent(event))
    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


def test_one_line_per_occurrence_naming_the_request(lines) -> None:
    now = [0.0]
    ring = _ring()
    ring._mismatch_lines = MismatchLines(lambda: now[0])
    row = _l3_row(ring)
    row.service = "payroll"
    with in_request("Get", "c-1"), pytest.raises(WrappingMismatch):
        ring.unwrap(None, row)  # type: ignore[arg-type]
    assert lines == ["operation Get failed [correlation id c-1]: object l3-1 of tenant demo "
                     "refused: its row does not match its wrapping (it fails "
                     "authentication); the database was changed outside kcm-core"]
    # A client asking again and again: counted each time, one line a minute.
    for _ in range(5):
        now[0] += 10
        with in_request("Get", "c-2"), pytest.raises(WrappingMismatch):
            ring.unwrap(None, row)  # type: ignore[arg-type]
    assert len(lines) == 1 and ring.mismatches == 6
    now[0] += 10
    with pytest.raises(WrappingMismatch):  # (a sweeper's: no request)
        ring.unwrap(None, row)  # type: ignore[arg-type]
    assert lines[1] == ("object l3-1 of tenant demo refused: its row does not match its "
                        "wrapping (it fails authentication); the database was changed "
                        "outside kcm-core (5 more refused since its last line, one a 60 s "
                        "at most)")
    assert ring.mismatches == 7


def test_each_object_has_its_own_line_and_what_is_kept_is_bounded(lines) -> None:
    mismatch = MismatchLines(lambda: 0.0, kept=2)
    for uid in ("a", "b", "a", "c", "a"):
        mismatch.note("demo", uid, "why")
    # a, b; a again (within the minute: held); c, and a (the least recently logged)
    # forgotten to keep two; a again: a new line
    assert [line.split()[1] for line in lines] == ["a", "b", "c", "a"]
    assert len(mismatch._objects) == 2 and KEPT == 1024


def test_the_request_is_the_thread_s_own() -> None:
    seen: list[str] = []

    def observer(event: dict) -> None:
        if event.get("log_namespace") == "kcm.core.keyring":
            seen.append(formatEvent(event))
    mismatch = MismatchLines(lambda: 0.0)
    globalLogPublisher.addObserver(observer)
    try:
        with in_request("Get", "c-1"):
            worker = threading.Thread(target=mismatch.note, args=("demo", "x", "why"))
            worker.start()
            worker.join()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert seen and seen[0].startswith("object x of tenant demo refused")


def test_an_object_logged_again_is_the_last_forgotten(lines) -> None:
    now = [0.0]
    mismatch = MismatchLines(lambda: now[0], kept=2)
    mismatch.note("demo", "a", "why")
    mismatch.note("demo", "b", "why")
    now[0] = 61.0
    mismatch.note("demo", "a", "why")  # (its line again: now the most recently logged)
    mismatch.note("demo", "c", "why")  # (b forgotten, not a)
    mismatch.note("demo", "a", "why")  # (within the minute of its last line: held)
    assert [line.split()[1] for line in lines] == ["a", "b", "a", "c"]
