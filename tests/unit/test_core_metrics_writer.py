"""kcm-core's metrics of its writer and background work, on fakes and task.Clock: group
commits timed and sized, the audit head and the newest checkpoint kept in memory, the state
sweeper's lease, last sweep and failures; all read when scraped."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from kcm.core.audit import Checkpoint
from kcm.core.audit_checkpoints import AuditCheckpoints
from kcm.core.group_commit import GroupCommitter
from kcm.core.metrics import GROUP_SIZE_BUCKETS, CoreMetrics
from kcm.core.state_sweeper import StateSweeper
from tests.unit.test_group_commit import Writer
from tests.unit.test_metrics import samples


class Ticks:
    """A clock read by the group committer: moved by the test."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def committer(metrics: CoreMetrics, ticks: Ticks) -> tuple[GroupCommitter, Writer]:
    writer = Writer()
    return GroupCommitter(writer.write, clock=ticks, on_group=metrics.group_answered), writer


def histogram(got: dict, name: str, **labels: str) -> tuple[float, float]:
    """(count, sum) of one histogram series."""
    key = tuple(sorted(labels.items()))
    return got.get((f"{name}_count", key), 0.0), got.get((f"{name}_sum", key), 0.0)


def test_a_group_commit_is_timed_from_its_first_job_to_its_answer_and_sized() -> None:
    metrics, ticks = CoreMetrics(), Ticks()
    group, writer = committer(metrics, ticks)
    for n in range(3):
        group.submit("t1", lambda session, n=n: n)
    writer.work()  # the group takes its three jobs at 100.0
    ticks.now = 100.25
    writer.commit()  # answered at 100.25
    got = samples(metrics.registry)
    duration = "kcm_core_group_commit_duration_seconds"
    assert histogram(got, duration, result="committed") == (1, 0.25)
    assert got[(f"{duration}_bucket", (("le", "0.25"), ("result", "committed")))] == 1
    assert got[(f"{duration}_bucket", (("le", "0.1"), ("result", "committed")))] == 0
    assert histogram(got, "kcm_core_group_commit_jobs") == (1, 3)
    assert got[("kcm_core_group_commit_jobs_bucket", (("le", "2.0"),))] == 0
    assert got[("kcm_core_group_commit_jobs_bucket", (("le", "4.0"),))] == 1
    assert [float(b) for b in GROUP_SIZE_BUCKETS] == sorted(
        float(dict(key)["le"]) for name, key in got
        if name == "kcm_core_group_commit_jobs_bucket" and dict(key)["le"] != "+Inf")


def test_a_failed_commit_is_timed_as_failed_and_a_group_that_took_no_job_is_not_timed(
        ) -> None:
    metrics, ticks = CoreMetrics(), Ticks()
    group, writer = committer(metrics, ticks)
    failed = group.submit("t1", lambda session: 1)
    failed.addErrback(lambda _: None)
    writer.work()
    ticks.now = 101.0
    writer.commit(fails=True)
    got = samples(metrics.registry)
    duration = "kcm_core_group_commit_duration_seconds"
    assert histogram(got, duration, result="failed") == (1, 1.0)
    assert histogram(got, duration, result="committed") == (0, 0)
    # The transaction failed before it took a job (the write lock never came): its jobs
    # fail, and no group is timed or sized.
    group.submit("t1", lambda session: 1).addErrback(lambda _: None)
    writer.commit(fails=True)
    again = samples(metrics.registry)
    assert histogram(again, duration, result="failed") == (1, 1.0)
    assert histogram(again, "kcm_core_group_commit_jobs") == (1, 1)


def test_writer_lock_waits_are_observed_by_lock() -> None:
    metrics = CoreMetrics()
    metrics.lock_waited("process", 0.0002)
    metrics.lock_waited("database", 5.0)
    got = samples(metrics.registry)
    wait = "kcm_core_writer_lock_wait_seconds"
    assert histogram(got, wait, lock="process") == (1, 0.0002)
    assert histogram(got, wait, lock="database") == (1, 5.0)
    assert got[(f"{wait}_bucket", (("le", "2.5"), ("lock", "database")))] == 0


# The audit head and checkpoints ---------------------------------------------------------------

class Checkpointed:
    """What AuditCheckpoints needs of a store: ``run`` answering the head it is given."""

    def __init__(self) -> None:
        self.head: Checkpoint | Exception = Checkpoint.sign(bytes(32), 0, bytes(32))

    def run(self, fn: Callable[[Any], Any], *, write: bool = True) -> Deferred[Any]:
        head = self.head
        return fail(head) if isinstance(head, Exception) else succeed(head)


def test_the_audit_head_follows_commits_and_checkpoints_without_a_read() -> None:
    metrics = CoreMetrics()
    head = ("kcm_core_audit_head", ())
    assert head not in samples(metrics.registry)  # not known yet: no sample
    metrics.audit_head_moved(7)
    metrics.audit_head_moved(5)  # a commit of another thread that ended after it
    assert samples(metrics.registry)[head] == 7

    store, clock, wall = Checkpointed(), Clock(), Ticks()
    checkpoints = AuditCheckpoints(store, SimpleNamespace(audit_key=bytes(32)), clock,  # type: ignore[arg-type]
                                   interval=60.0, wall_clock=wall)
    metrics.audit_checkpoints(checkpoints)
    got = samples(metrics.registry)
    assert ("kcm_core_audit_checkpoint_head", ()) not in got
    assert ("kcm_core_audit_checkpoint_timestamp_seconds", ()) not in got
    store.head = Checkpoint.sign(bytes(32), 9, bytes(32))  # another core wrote records 8, 9
    wall.now = 1_700_000_000.0
    checkpoints.startService()  # the first checkpoint, at once
    got = samples(metrics.registry)
    assert got[("kcm_core_audit_checkpoint_head", ())] == 9
    assert got[("kcm_core_audit_checkpoint_timestamp_seconds", ())] == 1_700_000_000.0
    assert got[head] == 9
    metrics.audit_head_moved(10)
    assert samples(metrics.registry)[head] == 10
    # A checkpoint that could not be made leaves the newest one as it was.
    store.head = RuntimeError("database is locked")
    wall.now += 60
    clock.advance(60.0)
    got = samples(metrics.registry)
    assert got[("kcm_core_audit_checkpoint_timestamp_seconds", ())] == 1_700_000_000.0
    store.head = Checkpoint.sign(bytes(32), 12, bytes(32))
    wall.now += 60
    clock.advance(60.0)
    got = samples(metrics.registry)
    assert got[("kcm_core_audit_checkpoint_head", ())] == 12
    assert got[("kcm_core_audit_checkpoint_timestamp_seconds", ())] == 1_700_000_120.0
    assert got[head] == 12
    checkpoints.stopService()


# The state sweeper ----------------------------------------------------------------------------

class Lease:
    def __init__(self) -> None:
        self.answer: bool | Exception = True

    def hold(self) -> bool:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def close(self) -> None:
        self.answer = False


class SweepStore:
    """What the sweeper needs of a store: ``defer`` calling at once."""

    def defer(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        try:
            return succeed(fn(*args))
        except Exception:
            return fail()


@pytest.fixture
def swept() -> tuple[StateSweeper, CoreMetrics, Clock, Ticks, Lease, list]:
    clock, wall, lease, outcomes = Clock(), Ticks(), Lease(), []

    def write(fn: Callable[[Any], Any]) -> Deferred[Any]:
        outcome = outcomes.pop(0) if outcomes else ([], [])
        return fail(outcome) if isinstance(outcome, Exception) else succeed(outcome)

    sweeper = StateSweeper(SweepStore(), clock, interval=5.0, lease=lease,  # type: ignore[arg-type]
                           wall_clock=wall, write=write)
    metrics = CoreMetrics()
    metrics.sweeper(sweeper)
    return sweeper, metrics, clock, wall, lease, outcomes


def sweeper_state(metrics: CoreMetrics) -> tuple[float, float, float]:
    got = samples(metrics.registry)
    return (got[("kcm_core_sweeper_lease_held", ())],
            got[("kcm_core_sweeper_last_sweep_timestamp_seconds", ())],
            got[("kcm_core_sweeps_failed_total", ())])


def test_the_sweeper_reports_its_lease_its_last_sweep_and_its_failures(swept) -> None:
    sweeper, metrics, clock, wall, lease, outcomes = swept
    assert sweeper_state(metrics) == (0, 0, 0)  # before the first ask
    wall.now = 1_700_000_000.0
    sweeper.startService()  # the first sweep, at once
    assert sweeper_state(metrics) == (1, 1_700_000_000.0, 0)
    # A sweep whose transaction fails: counted, the last sweep stays.
    outcomes.append(OSError("database is locked"))
    wall.now += 5
    clock.advance(5.0)
    assert sweeper_state(metrics) == (1, 1_700_000_000.0, 1)
    wall.now += 5
    clock.advance(5.0)
    assert sweeper_state(metrics) == (1, 1_700_000_010.0, 1)
    # Another core took the lease: not held, nothing swept, nothing failed.
    lease.answer = False
    wall.now += 5
    clock.advance(5.0)
    assert sweeper_state(metrics) == (0, 1_700_000_010.0, 1)
    # The ask itself fails.
    lease.answer = RuntimeError("no connection")
    clock.advance(5.0)
    assert sweeper_state(metrics)[2] == 2
    lease.answer = True
    clock.advance(5.0)
    assert sweeper_state(metrics)[0] == 1
    sweeper.stopService()
    assert sweeper_state(metrics)[0] == 0  # given up at the stop
