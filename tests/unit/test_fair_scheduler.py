"""kcm.core.fair_scheduler: per-tenant queues served in turn, with bounded workers."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from kcm.core.fair_scheduler import FairScheduler
from kcm.core.queue_expiry import RequestExpired


class Workers:
    """A fake ``start``: records what was started and lets the test finish it."""

    def __init__(self) -> None:
        self.started: list[tuple[str, Deferred[Any]]] = []

    def start(self, fn, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.started.append((fn(*args), d))
        return d

    def names(self) -> list[str]:
        return [name for name, _ in self.started]

    def finish(self, name: str, result: object = None) -> None:
        for started, d in self.started:
            if started == name and not d.called:
                d.callback(result if result is not None else name)
                return
        raise AssertionError(f"{name} is not running")


def job(name: str) -> tuple[Any, str]:
    return (lambda n: n), name


def test_a_heavy_tenant_does_not_take_every_worker_nor_the_queue() -> None:
    workers = Workers()
    scheduler = FairScheduler(workers.start, workers=4, per_key=2)
    for i in range(10):
        scheduler.submit("heavy", *job(f"h{i}"))
    assert workers.names() == ["h0", "h1"]  # per_key
    scheduler.submit("light", *job("l0"))
    assert workers.names() == ["h0", "h1", "l0"]  # at once: a worker was kept free
    assert (scheduler.running, scheduler.waiting) == (3, 8)


def test_waiting_tenants_are_served_in_turn_whatever_they_sent() -> None:
    workers = Workers()
    scheduler = FairScheduler(workers.start, workers=1, per_key=1)
    scheduler.submit("a", *job("a0"))
    for i in range(1, 4):
        scheduler.submit("a", *job(f"a{i}"))
    scheduler.submit("b", *job("b0"))
    scheduler.submit("c", *job("c0"))
    scheduler.submit("b", *job("b1"))
    order = []
    while workers.started and not all(d.called for _, d in workers.started):
        running = next(name for name, d in workers.started if not d.called)
        order.append(running)
        workers.finish(running)
    assert order == ["a0", "a1", "b0", "c0", "a2", "b1", "a3"]


def test_results_and_failures_reach_the_submitter() -> None:
    workers = Workers()
    scheduler = FairScheduler(workers.start, workers=2, per_key=1)
    results: list[object] = []
    scheduler.submit("a", *job("ok")).addCallback(results.append)
    failed = scheduler.submit("b", *job("bad"))
    failed.addErrback(lambda f: results.append(f.type))
    workers.finish("ok", "answer")
    workers.started[1][1].errback(ValueError("boom"))
    assert results == ["answer", ValueError]
    assert (scheduler.running, scheduler.waiting) == (0, 0)


def test_a_lone_tenant_keeps_its_share_busy_and_the_rest_follows() -> None:
    workers = Workers()
    scheduler = FairScheduler(workers.start, workers=3, per_key=2)
    for i in range(5):
        scheduler.submit("a", *job(f"a{i}"))
    assert workers.names() == ["a0", "a1"]
    workers.finish("a0")
    assert workers.names() == ["a0", "a1", "a2"]


@pytest.mark.parametrize(("workers", "per_key"), [(0, 1), (2, 0), (2, 3)])
def test_impossible_shares_are_refused(workers: int, per_key: int) -> None:
    with pytest.raises(ValueError):
        FairScheduler(Workers().start, workers=workers, per_key=per_key)


def test_a_call_still_waiting_for_a_worker_at_its_deadline_fails_unstarted() -> None:
    """Workers held (a silent database) no longer hold the calls waiting for them past
    their deadlines: each fails then with RequestExpired and is never started; a running
    call is not touched, nor a call without a deadline."""
    clock, workers = Clock(), Workers()
    scheduler = FairScheduler(workers.start, workers=1, per_key=1, reactor=clock)
    scheduler.submit("a", *job("running"), expires=1.0)
    outcomes: dict[str, list[Any]] = {}
    for name, key, expires in (("b1", "b", 2.0), ("a1", "a", 3.0), ("c1", "c", None)):
        outcomes[name] = []
        scheduler.submit(key, *job(name), expires=expires).addBoth(outcomes[name].append)
    clock.advance(2.0)
    assert [type(o).__name__ for o in outcomes["b1"]] == ["Failure"]
    assert isinstance(outcomes["b1"][0].value, RequestExpired)
    assert outcomes["a1"] == [] and scheduler.waiting == 2
    clock.advance(1.0)
    assert isinstance(outcomes["a1"][0].value, RequestExpired)
    assert workers.names() == ["running"] and scheduler.waiting == 1
    workers.finish("running")
    assert workers.names() == ["running", "c1"]  # the turn of "b" and "a" is gone
    workers.finish("c1")
    assert outcomes["c1"] == ["c1"] and scheduler.waiting == 0
    assert clock.getDelayedCalls() == []
