"""Group commit: many requests' work, one commit, each job in its own savepoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from kcm.core.group_commit import GroupCommitter
from kcm.core.queue_expiry import RequestExpired


class FakeSession:
    """What a group needs of a session: ``info`` and savepoints (which record rollbacks)."""

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}
        self.rolled_back = 0

    def begin_nested(self) -> FakeSavepoint:
        return FakeSavepoint(self)

    def get_nested_transaction(self) -> None:
        return None


class FakeSavepoint:
    """What ``Session.begin_nested`` returns, as far as savepoints use it."""

    def __init__(self, session: FakeSession) -> None:
        self.session = session

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        self.session.rolled_back += 1


class Writer:
    """The store's writer thread, played by the test: each group waits to be run."""

    def __init__(self) -> None:
        self.groups: list[tuple[Callable[[Any], Any], Deferred[Any]]] = []

    def write(self, fn: Callable[[Any], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.groups.append((fn, d))
        return d

    def work(self) -> FakeSession:
        """The next group takes the jobs waiting and runs them (not committed yet)."""
        fn, _ = self.groups[0]
        session = FakeSession()
        fn(session)
        return session

    def commit(self, *, fails: bool = False) -> None:
        _, d = self.groups.pop(0)
        if fails:
            d.errback(OSError("disk I/O error"))
        else:
            d.callback(None)

    def run(self, *, commit_fails: bool = False) -> FakeSession:
        session = self.work()
        self.commit(fails=commit_fails)
        return session


#: A clock that does not move: every job takes no time, so keys are served in the order in
#: which they began to wait (the writer's time shares are tested with one that moves).
STILL = {"clock": lambda: 0.0}


def results(*ds: Deferred[Any]) -> list[Any]:
    out: list[Any] = []
    for d in ds:
        d.addCallbacks(out.append, lambda f: out.append(f.value))
    return out


def test_requests_that_arrive_during_a_commit_share_the_next() -> None:
    writer, ran = Writer(), []
    committer = GroupCommitter(writer.write)
    first = committer.submit("a", lambda _session, n: ran.append(n) or n, 1)
    writer.work()
    later = [committer.submit("a", lambda _session, n: ran.append(n) or n, n) for n in (2, 3)]
    assert len(writer.groups) == 1  # one group at a time
    answered = results(first, *later)
    assert ran == [1] and answered == []  # answered only once its group committed
    writer.commit()
    assert ran == [1] and answered == [1]
    assert len(writer.groups) == 1  # the next group starts at once with both waiting
    writer.run()
    assert ran == [1, 2, 3] and answered == [1, 2, 3]
    assert (committer.groups, committer.jobs) == (2, 3)
    assert writer.groups == []


def test_a_group_starts_once_the_reactor_turn_is_over() -> None:
    """With ``start``, the requests submitted in the same turn (here: before the turn's
    end runs) share a group, the first included; so do those that arrived while a group
    ran, with the ones of the turn in which it committed."""
    writer, turn_end, ran = Writer(), [], []
    committer = GroupCommitter(writer.write, start=turn_end.append, **STILL)
    first = [committer.submit("a", lambda _session, n: ran.append(n) or n, n) for n in (1, 2)]
    first.append(committer.submit("b", lambda _session: ran.append(3) or 3))
    assert writer.groups == [] and len(turn_end) == 1  # not started mid-turn
    turn_end.pop()()
    assert len(writer.groups) == 1
    writer.work()
    assert ran == [1, 3, 2]  # one group, tenants in turn
    waiting = committer.submit("a", lambda _session: ran.append(4) or 4)
    answered = results(*first, waiting)
    writer.commit()
    assert answered == [1, 3, 2] and writer.groups == []  # the next waits for the turn end
    late = committer.submit("b", lambda _session: ran.append(5) or 5)
    late_answered = results(late)
    turn_end.pop()()
    writer.run()
    assert ran == answered + late_answered == [1, 3, 2, 4, 5]
    assert (committer.groups, committer.jobs) == (2, 5) and turn_end == []


def test_a_failing_job_rolls_back_alone() -> None:
    writer = Writer()
    committer = GroupCommitter(writer.write, **STILL)
    blocker = committer.submit("a", lambda _session: "first")
    writer.work()
    jobs = [committer.submit("a", lambda _session: "ok"),
            committer.submit("b", lambda _session: 1 / 0),
            committer.submit("c", lambda _session: "also ok")]
    answered = results(blocker, *jobs)
    writer.commit()
    session = writer.run()
    assert session.rolled_back == 1
    assert answered[0] == "first" and answered[1] == "ok" and answered[3] == "also ok"
    assert isinstance(answered[2], ZeroDivisionError)


def test_a_failed_commit_fails_every_job_of_its_group_and_the_next_runs() -> None:
    writer = Writer()
    committer = GroupCommitter(writer.write)
    doomed = [committer.submit("a", lambda _session: "lost") for _ in range(2)]
    answered = results(*doomed)
    writer.run(commit_fails=True)
    assert [type(a) for a in answered] == [OSError, OSError]
    # the job that waited for the failed group is in the next one
    answered = results(committer.submit("a", lambda _session: "kept"))
    writer.run()
    assert answered == ["kept"]


def test_groups_take_tenants_in_turn_and_are_bounded() -> None:
    writer, order = Writer(), []
    committer = GroupCommitter(writer.write, max_jobs=4, **STILL)
    committer.submit("busy", lambda _s: order.append("first"))
    writer.work()
    for n in range(6):
        committer.submit("busy", lambda _s, n=n: order.append(f"busy{n}"))
    committer.submit("other", lambda _s: order.append("other"))
    writer.commit()
    writer.run()
    # the other tenant's request, sent after six of the busy one's, is in the next group,
    # second; the group stops at four jobs
    assert order == ["first", "busy0", "other", "busy1", "busy2"]
    writer.run()
    assert order[5:] == ["busy3", "busy4", "busy5"]
    assert committer.waiting == 0 and writer.groups == []


def test_a_group_ends_after_its_time_budget() -> None:
    writer, now = Writer(), [0.0]
    committer = GroupCommitter(writer.write, max_seconds=0.01, alone_seconds=0.02,
                               clock=lambda: now[0])

    def slow(_session: Any) -> None:
        now[0] += 0.006

    committer.submit("a", slow)
    writer.work()
    for _ in range(4):
        committer.submit("a", slow)
    writer.commit()  # the first alone
    writer.run()
    assert committer.jobs == 3  # two jobs, then 12 ms of work ended the group
    writer.run()
    assert committer.jobs == 5


def test_no_writer_fails_the_waiting_jobs_instead_of_looping() -> None:
    committer = GroupCommitter(lambda fn: fail(RuntimeError("store stopped")))
    answered = results(committer.submit("a", lambda _session: "never"))
    assert [type(a) for a in answered] == [RuntimeError]
    assert committer.waiting == 0


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        GroupCommitter(Writer().write, max_jobs=0)


class Writers:
    """The store's writer with both kinds of group: sessions and lean transactions. A
    group that raises fails, as the writer's transaction does (it rolls back)."""

    def __init__(self) -> None:
        self.groups: list[tuple[str, Callable[[Any], Any], Deferred[Any]]] = []

    def write(self, fn: Callable[[Any], Any]) -> Deferred[Any]:
        return self._queued("session", fn)

    def write_lean(self, fn: Callable[[Any], Any]) -> Deferred[Any]:
        return self._queued("lean", fn)

    def _queued(self, kind: str, fn: Callable[[Any], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.groups.append((kind, fn, d))
        return d

    def run(self) -> str:
        """Run and commit the next group; its kind."""
        kind, fn, d = self.groups.pop(0)
        try:
            fn(FakeSession())
        except Exception as e:
            d.errback(e)
        else:
            d.callback(None)
        return kind


def test_a_group_that_begins_with_a_lean_job_is_lean_and_takes_only_lean_jobs() -> None:
    writers, ran = Writers(), []
    committer = GroupCommitter(writers.write, write_lean=writers.write_lean, **STILL)
    jobs = [committer.submit("a", lambda _s: ran.append("a session"),
                             lean=lambda _t: ran.append("a lean")),
            committer.submit("b", lambda _s: ran.append("b session"),
                             lean=lambda _t: ran.append("b lean")),
            committer.submit("c", lambda _s: ran.append("c write")),
            committer.submit("a", lambda _s: ran.append("a2 session"),
                             lean=lambda _t: ran.append("a2 lean"))]
    answered = results(*jobs)
    # tenants in turn: a, b, then c's job, which needs a session: the lean group ends
    assert writers.run() == "lean"
    assert ran == ["a lean", "b lean"]
    # the next group begins with c's job: a session group, where lean jobs do their
    # session work
    assert writers.run() == "session"
    assert ran[2:] == ["c write", "a2 session"]
    assert len(answered) == 4 and writers.groups == []


def test_without_write_lean_every_group_is_a_session_group() -> None:
    writer, ran = Writer(), []
    committer = GroupCommitter(writer.write)
    committer.submit("a", lambda _s: ran.append("session"), lean=lambda _t: ran.append("lean"))
    writer.run()
    assert ran == ["session"]


def test_a_lean_job_that_fails_before_writing_fails_alone() -> None:
    writers = Writers()
    committer = GroupCommitter(writers.write, write_lean=writers.write_lean)

    def refused(_t: Any) -> None:
        raise TypeError("audit principal must be str")

    answered = results(committer.submit("a", lambda _s: None, lean=lambda _t: "ok"),
                       committer.submit("b", lambda _s: None, lean=refused),
                       committer.submit("c", lambda _s: None, lean=lambda _t: "also ok"))
    assert writers.run() == "lean"
    assert answered[0] == "ok" and answered[2] == "also ok"
    assert isinstance(answered[1], TypeError)


def test_a_database_error_in_a_lean_group_fails_the_whole_group() -> None:
    from sqlalchemy.exc import OperationalError

    writers = Writers()
    committer = GroupCommitter(writers.write, write_lean=writers.write_lean)

    def broken(_t: Any) -> None:
        raise OperationalError("INSERT INTO audit_log", {}, OSError("disk I/O error"))

    answered = results(committer.submit("a", lambda _s: None, lean=lambda _t: "written"),
                       committer.submit("b", lambda _s: None, lean=broken))
    writers.run()
    # what the first job wrote may not commit: a lean group has no savepoints
    assert [type(a) for a in answered] == [OperationalError, OperationalError]
    # the groups after it run as usual
    answered = results(committer.submit("a", lambda _s: None, lean=lambda _t: "kept"))
    assert writers.run() == "lean"
    assert answered == ["kept"]


def timed(now: list[float], ran: list[str]) -> Callable[[str, float], Callable[[Any], None]]:
    """``job(name, seconds)``: a job that takes ``seconds`` on the clock ``now`` reads and
    appends ``name`` to ``ran``."""
    def job(name: str, seconds: float) -> Callable[[Any], None]:
        def run(_session: Any) -> None:
            now[0] += seconds
            ran.append(name)
        return run
    return job


def test_a_short_job_goes_before_a_long_tenants_next_and_commits_without_it() -> None:
    """A tenant whose jobs hold the writer 15 ms, four clients of it sending: another
    tenant's job of 0.1 ms, submitted while one of them runs, is in the very next group,
    first and alone: it waits for the job running when it came, not for a long one after."""
    writer, now, ran = Writer(), [0.0], []
    committer = GroupCommitter(writer.write, clock=lambda: now[0])

    job = timed(now, ran)

    committer.submit("heavy", job("heavy0", 0.015))
    writer.work()  # the first alone; three more of the heavy tenant come while it runs
    for n in range(1, 4):
        committer.submit("heavy", job(f"heavy{n}", 0.015))
    light = results(committer.submit("light", job("light", 0.0001)))
    writer.commit()
    writer.work()
    assert ran == ["heavy0", "light"]  # served first (it used least), the long job not added
    writer.commit()
    assert light == [None]
    # each long job then begins a group of its own, however short the ones before it
    while writer.groups:
        writer.run()
    assert ran[2:] == ["heavy1", "heavy2", "heavy3"] and committer.groups == 5


def test_a_job_expected_long_waits_for_a_group_of_its_own() -> None:
    writer, now, ran = Writer(), [0.0], []
    committer = GroupCommitter(writer.write, clock=lambda: now[0])

    job = timed(now, ran)

    committer.submit("a", job("a0", 0.006))
    writer.run()  # a's last job ran longer than alone_seconds (5 ms)
    committer.submit("b", job("b0", 0.001))
    writer.work()
    # b's job began to wait after a's was charged, at the floor: it goes first, then the
    # group, having jobs, does not take a's expected long one
    committer.submit("a", job("a1", 0.001))
    committer.submit("c", job("c0", 0.001))
    writer.commit()
    writer.work()
    assert ran == ["a0", "b0", "c0"]  # c (at the floor) before a (6 ms ahead); a waits
    writer.commit()
    writer.run()
    assert ran[3:] == ["a1"]
    # a's last job was short: it joins a group again (after b, which is at the floor)
    for key in ("a", "b"):
        committer.submit(key, job(f"{key}2", 0.001))
    writer.run()
    assert ran[4:] == ["b2", "a2"] and committer.groups == 5


def test_an_idle_tenant_banks_no_time_and_a_busy_one_sheds_none_by_pausing() -> None:
    """Virtual time: a tenant that was idle while another used the writer starts level
    with it, not far behind (it would otherwise take the writer for as long); one that
    pauses between its requests keeps what it used."""
    writer, now, ran = Writer(), [0.0], []
    committer = GroupCommitter(writer.write, alone_seconds=1.0, clock=lambda: now[0])

    job = timed(now, ran)

    committer.submit("idle", job("idle0", 0.001))
    writer.run()
    for n in range(50):  # the busy tenant alone for 100 ms, one request at a time
        committer.submit("busy", job(f"busy{n}", 0.002))
        writer.run()
    ran.clear()
    # both send three at once: they alternate, the idle one no more than one ahead
    for n in range(3):
        committer.submit("busy", job(f"b{n}", 0.002))
        committer.submit("idle", job(f"i{n}", 0.002))
    writer.run()
    assert ran == ["b0", "i0", "b1", "i1", "b2", "i2"] or \
        ran == ["i0", "b0", "i1", "b1", "i2", "b2"]


def test_jobs_just_short_of_long_join_a_group_only_up_to_alone_seconds_together() -> None:
    """A tenant whose jobs each run 4.9 ms is never expected long; its jobs still join a
    group only until they have run ``alone_seconds`` (5 ms) together there, so another
    tenant's short job, first in the group, waits for two of them, not for 25 ms of them."""
    writer, now, ran = Writer(), [0.0], []
    committer = GroupCommitter(writer.write, clock=lambda: now[0])

    job = timed(now, ran)

    committer.submit("heavy", job("heavy0", 0.0049))
    writer.work()
    for n in range(1, 9):
        committer.submit("heavy", job(f"heavy{n}", 0.0049))
    committer.submit("light", job("light", 0.0001))
    writer.commit()
    ran.clear()
    writer.run()
    assert ran == ["light", "heavy1", "heavy2"]  # 9.8 ms of heavy in all, not 24.5
    writer.run()  # alone now: its jobs fill the group up to its 25 ms
    assert ran[3:] == [f"heavy{n}" for n in range(3, 9)]


def test_a_tenant_alone_fills_its_groups_with_short_jobs_as_before() -> None:
    """The 5 ms a tenant's jobs may take in a group together hold only with company: alone,
    its short jobs share a commit up to the group's bounds (25 ms, 64 jobs)."""
    writer, now, ran = Writer(), [0.0], []
    committer = GroupCommitter(writer.write, clock=lambda: now[0])
    job = timed(now, ran)
    committer.submit("alone", job("first", 0.001))
    writer.work()
    for n in range(30):
        committer.submit("alone", job(f"short{n}", 0.001))
    writer.commit()
    writer.run()
    assert committer.jobs == 1 + 25 == len(ran)  # then 25 ms of work ended the group


def test_a_job_still_waiting_at_its_deadline_fails_unrun_and_leaves_its_turn() -> None:
    """A group held (a silent database) no longer holds the jobs queued behind it past
    their deadlines: each is failed then with RequestExpired, never run; the job in the
    held group is answered with its group; a job without a deadline waits as before."""
    clock, writer, ran = Clock(), Writer(), []
    committer = GroupCommitter(writer.write, reactor=clock, **STILL)
    held = committer.submit("a", lambda _s: ran.append("held") or "held", expires=1.0)
    writer.work()  # the group runs, and hangs in its commit
    late = committer.submit("b", lambda _s: ran.append("b") or "b", expires=2.0)
    later = committer.submit("a", lambda _s: ran.append("a2") or "a2", expires=3.0)
    patient = committer.submit("c", lambda _s: ran.append("c") or "c")
    answered = results(held, late, later, patient)
    clock.advance(1.5)
    assert answered == []  # the held job is in the transaction: only its commit answers it
    clock.advance(0.5)
    assert len(answered) == 1 and isinstance(answered[0], RequestExpired)
    assert str(answered[0]) == "still waiting for the writer at the request deadline"
    clock.advance(1.0)
    assert len(answered) == 2 and isinstance(answered[1], RequestExpired)
    assert committer.waiting == 1
    writer.commit()  # the held group ends at last; the next takes what still waits
    writer.run()
    assert ran == ["held", "c"] and answered[2:] == ["held", "c"]
    assert committer.waiting == 0 and clock.getDelayedCalls() == []


def test_expiry_takes_only_the_jobs_due_and_keeps_the_order_of_the_rest() -> None:
    clock, writer, ran = Clock(), Writer(), []
    committer = GroupCommitter(writer.write, reactor=clock, **STILL)
    committer.submit("a", lambda _s: ran.append(0))
    writer.work()
    ds = {n: committer.submit("a", lambda _s, n=n: ran.append(n) or n, expires=e)
          for n, e in ((1, 5.0), (2, 1.0), (3, 6.0), (4, 1.0))}
    answered = {n: results(d) for n, d in ds.items()}
    clock.advance(1.0)
    assert [n for n, got in answered.items() if got] == [2, 4]
    # Armed again at the earliest deadline left (5 s), not at each one.
    assert [round(c.getTime(), 3) for c in clock.getDelayedCalls()] == [5.0]
    writer.commit()
    writer.run()
    assert ran == [0, 1, 3]


def test_a_running_keys_jobs_expiring_leave_it_not_waiting_again() -> None:
    """The key whose job the writer runs, its later jobs all expired, is not served again
    for nothing (its charge finds none waiting)."""
    clock, writer, ran = Clock(), Writer(), []
    committer = GroupCommitter(writer.write, reactor=clock, **STILL)
    gate: list[Callable[[], None]] = []

    def first(_session: Any) -> str:
        for step in gate:
            step()
        return "first"

    committer.submit("a", first)
    # While "a"'s job runs (on the writer thread), its next job arrives and expires.
    gate.append(lambda: committer.submit("a", lambda _s: ran.append("a2"), expires=1.0))
    gate.append(lambda: clock.advance(1.0))
    writer.run()
    assert committer.waiting == 0 and ran == [] and writer.groups == []


def test_without_a_reactor_no_job_expires() -> None:
    writer = Writer()
    committer = GroupCommitter(writer.write, **STILL)
    committer.submit("a", lambda _s: None)
    writer.work()
    late = results(committer.submit("a", lambda _s: "late", expires=-1.0))
    writer.commit()
    writer.run()
    assert late == ["late"]
