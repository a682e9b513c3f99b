"""The store's writer thread runs calls in order, one at a time, off the calling thread, and
hands each outcome back through the reactor; stopping it drops what has not started."""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

from kcm.core.store.writer_thread import WriterThread


class Reactor:
    """``callFromThread`` only: the calls wait here until the test runs them."""

    def __init__(self) -> None:
        self.calls: SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = SimpleQueue()

    def callFromThread(self, fn: Callable[..., Any], *args: Any) -> None:  # noqa: N802
        self.calls.put((fn, args))

    def run_one(self) -> None:
        fn, args = self.calls.get(timeout=5)
        fn(*args)


def test_calls_run_in_order_on_one_other_thread_and_answer_through_the_reactor() -> None:
    reactor = Reactor()
    writer = WriterThread(reactor, "test-writer")  # type: ignore[arg-type]
    writer.start()
    ran: list[tuple[int, str]] = []
    outcomes: list[Any] = []
    try:
        for n in range(5):
            writer.submit(lambda n: ran.append((n, threading.current_thread().name)) or n * n,
                          n).addBoth(outcomes.append)
        failing = writer.submit(lambda: 1 / 0)
        failing.addErrback(lambda failure: outcomes.append(failure.type))
        for _ in range(6):
            reactor.run_one()  # the Deferreds fire here, on this thread
    finally:
        writer.stop()
    assert ran == [(n, "test-writer") for n in range(5)]
    assert outcomes == [0, 1, 4, 9, 16, ZeroDivisionError]


def test_stopping_lets_the_running_call_finish_and_drops_the_queued() -> None:
    reactor = Reactor()
    writer = WriterThread(reactor, "test-writer")  # type: ignore[arg-type]
    writer.start()
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def slow() -> str:
        started.set()
        release.wait(5)
        ran.append("slow")
        return "slow"

    first = writer.submit(slow)
    assert started.wait(5)
    queued = writer.submit(lambda: ran.append("queued"))
    stopper = threading.Thread(target=writer.stop)
    stopper.start()
    release.set()
    stopper.join(5)
    assert not stopper.is_alive()
    assert ran == ["slow"]
    outcome: list[Any] = []
    first.addCallback(outcome.append)
    reactor.run_one()
    assert outcome == ["slow"]
    assert not queued.called and reactor.calls.empty()


def test_work_left_for_after_the_answer_runs_once_the_outcome_is_handed_over() -> None:
    """A call's ``after_answer`` hooks run after its outcome went to the reactor and before
    the next call; one that fails is logged, and the rest and the next call still run."""
    from twisted.logger import globalLogPublisher

    reactor = Reactor()
    writer = WriterThread(reactor, "test-writer")  # type: ignore[arg-type]
    events: list[str] = []
    logged: list[dict[str, Any]] = []
    handed = reactor.callFromThread

    def recording(fn: Callable[..., Any], *args: Any) -> None:
        events.append("handed over")
        handed(fn, *args)

    reactor.callFromThread = recording  # type: ignore[method-assign]

    def call() -> str:
        writer.after_answer(lambda: events.append("after"))
        writer.after_answer(lambda: 1 / 0)
        writer.after_answer(lambda: events.append("after, still"))
        events.append("call")
        return "done"

    globalLogPublisher.addObserver(logged.append)
    writer.start()
    try:
        writer.submit(call)
        writer.submit(lambda: events.append("next call"))
        reactor.run_one()
        reactor.run_one()
    finally:
        writer.stop()
        globalLogPublisher.removeObserver(logged.append)
    assert events == ["call", "handed over", "after", "after, still", "next call",
                      "handed over"]
    assert any(event.get("log_failure") is not None
               and event["log_failure"].check(ZeroDivisionError) for event in logged)


def test_a_stop_with_a_timeout_leaves_a_call_that_does_not_end_behind() -> None:
    """The store's reader thread, stopping, waited for a read blocked on a PostgreSQL
    server that did not answer (a new connection's connect_timeout): the whole core's stop
    waited with it. With a timeout, the call is left to the daemon thread."""
    import time

    blocked, release = threading.Event(), threading.Event()
    thread = WriterThread(Reactor(), "test-reader")  # type: ignore[arg-type]
    thread.start()
    thread.submit(lambda: (blocked.set(), release.wait(30)))
    assert blocked.wait(5)
    started = time.monotonic()
    thread.stop(timeout=0.2)
    assert time.monotonic() - started < 2
    assert thread._thread.daemon and thread._thread.is_alive()  # noqa: SLF001
    release.set()
    thread._thread.join(5)  # noqa: SLF001
    assert not thread._thread.is_alive()  # noqa: SLF001


def test_a_thread_never_started_has_ended() -> None:
    """What waits for its end (kcm.core.sqlite_owner, through the store) is not held by
    a thread that never ran."""
    fired: list[None] = []
    WriterThread(Reactor(), "never-started").ended().addCallback(fired.append)  # type: ignore[arg-type]
    assert fired == [None]
