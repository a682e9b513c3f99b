"""kcm.client.single_flight: one run for the threads that ask meanwhile; a run that ends
in any way, even interrupted before its function is called, is forgotten (else every later
ask of its key would wait for ever)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest

from kcm.client.single_flight import RETRY, SingleFlight

Trace = Callable[[FrameType, str, object], Any]


def _traced_run(flights: SingleFlight, on_line: Callable[[], None]) -> Any:
    """``flights.run("key", ...)`` with ``on_line()`` called at each line of ``run``
    reached while "key" is registered and its function not called yet (and the lock not
    held: ``with lock`` itself is not safe from an interrupt, CPython's bpo-29988)."""
    called: list[None] = []

    def local(frame: FrameType, event: str, arg: object) -> Trace:
        if event == "line" and "key" in flights._runs and not called \
                and not flights._lock.locked():
            on_line()
        return local

    def function() -> str:
        called.append(None)
        return "ran"

    sys.settrace(lambda frame, event, arg:
                 local if frame.f_code is SingleFlight.run.__code__ else None)
    try:
        return flights.run("key", function)
    finally:
        sys.settrace(None)


def test_an_interrupt_at_any_line_once_the_run_is_registered_forgets_it() -> None:
    """A KeyboardInterrupt (a signal handler's exception) raised at each line of ``run``
    in turn between the key's registration and its function's call: the key is forgotten,
    the next ask runs. (It waited for ever: the try began after the registration.)"""
    lines: list[None] = []
    assert _traced_run(SingleFlight(), lambda: lines.append(None)) == "ran"
    assert len(lines) >= 1
    for line in range(1, len(lines) + 1):
        flights = SingleFlight()
        seen = [0]

        def interrupt(seen: list[int] = seen, line: int = line) -> None:
            seen[0] += 1
            if seen[0] == line:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            _traced_run(flights, interrupt)
        assert flights._runs == {}, f"kept after an interrupt at line {line}"
        done: list[Any] = []
        asker = threading.Thread(target=lambda f=flights, d=done: d.append(f.run("key", lambda: 7)),
                                 daemon=True)
        asker.start()
        asker.join(5)
        assert done == [7]


def test_waiters_get_retry_when_the_leader_is_interrupted() -> None:
    flights = SingleFlight()
    started, release = threading.Event(), threading.Event()

    def interrupted() -> Any:
        started.set()
        release.wait(5)
        raise KeyboardInterrupt

    def leader() -> None:
        with pytest.raises(KeyboardInterrupt):
            flights.run("k", interrupted)

    results: list[Any] = []
    first = threading.Thread(target=leader)
    first.start()
    started.wait(5)
    waiter = threading.Thread(target=lambda: results.append(flights.run("k", lambda: 1)))
    waiter.start()
    release.set()
    first.join(5)
    waiter.join(5)
    assert results in ([RETRY], [1])  # (1: the waiter came once the leader had ended)
    assert flights._runs == {}


@pytest.fixture(autouse=True)
def no_trace_left() -> Iterator[None]:
    yield
    sys.settrace(None)
