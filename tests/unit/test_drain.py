"""kcm.drain: listeners first, then what the process was doing, bounded; never fails."""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from kcm.drain import drain, until


class Listener(Service):
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def stopService(self) -> None:
        super().stopService()
        self.events.append("listener stopped")


def test_the_listeners_stop_before_the_waits_begin_and_the_drain_waits_for_them() -> None:
    events: list[str] = []
    listener = Listener(events)
    listener.startService()
    pending: Deferred[None] = Deferred()

    def wait() -> Deferred[None]:
        events.append("waiting")
        return pending

    fired: list[object] = []
    drain(Clock(), "test", [listener, None], [wait], timeout=5.0).addCallback(fired.append)
    assert events == ["listener stopped", "waiting"] and fired == []
    pending.callback(None)
    assert fired == [None]


def test_the_wait_is_bounded_and_a_failure_does_not_stop_the_stop() -> None:
    clock = Clock()
    given_up: list[object] = []
    never: Deferred[None] = Deferred(given_up.append)
    fired: list[object] = []
    drain(clock, "test", [], [lambda: never, lambda: fail(RuntimeError("x"))],
          timeout=5.0).addCallback(fired.append)
    clock.advance(4.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == [None] and given_up == [never]


def test_until_looks_again_until_it_is_true() -> None:
    clock = Clock()
    left = [3]

    def done() -> bool:
        left[0] -= 1
        return left[0] <= 0

    fired: list[object] = []
    until(clock, done, interval=0.05).addCallback(fired.append)
    assert fired == []
    clock.advance(0.05)
    assert fired == []
    clock.advance(0.05)
    assert fired == [None]
    assert until(clock, lambda: True).called


def test_a_wait_cut_at_its_timeout_says_so_and_one_that_ends_does_not() -> None:
    """The warning that a stop cuts what is left: a DeferredList cancelled fires with its
    members' cancellations, not an error, and the warning never came."""
    clock = Clock()
    with capturedLogs() as events:
        drain(clock, "test", [], [lambda: Deferred()], timeout=5.0)
        clock.advance(5.0)
        done: Deferred[None] = Deferred()
        drain(clock, "other", [], [lambda: done], timeout=5.0)
        done.callback(None)
        clock.advance(10.0)
    assert [formatEvent(event) for event in events
            if "still busy" in (event.get("log_format") or "")] == [
        "test stopping: still busy after 5 s; cutting what is left"]
