"""kcm.core.fair_scheduler: per-tenant queues served in turn, with bounded workers."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred

from kcm.core.fair_scheduler import FairScheduler


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
