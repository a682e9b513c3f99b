"""Group commit: the pending write work of many requests, one durable commit.

kcm-core's write requests (and the audit records of its read-only ones) do not each open a
transaction. They are handed to the :class:`GroupCommitter`, which runs one **group** at a
time on the store's writer thread (:meth:`kcm.core.store.engine.Store.write`): one write
transaction, in which each job runs in a savepoint of its own
(:func:`kcm.core.audit.savepoint`: a job that raises rolls back alone, and its audit records
are never logged), then one commit (on SQLite in WAL mode with ``synchronous=FULL``, one
fsync for the whole group), and only then are the jobs' Deferreds fired, on the reactor
thread. So an answer is still sent only after its change and its audit record are durable;
if the commit fails, every job of the group fails.

Requests that arrive while a group runs wait for the next one, which starts as soon as the
previous has committed: under load groups grow by themselves, and a lone request pays one
commit, with no waiting for company. With ``start`` (kcm-core gives the reactor's
``callLater(0, ...)``), a group starts at the end of the reactor turn in which its first job
was submitted or the group before it committed, not in the middle of it: the requests read
from other connections in the same turn join it, where they would otherwise wait for the
next commit. That costs a lone request no waiting either (the turn ends at once), and made
groups of 3.2 requests 3.8 at 4 clients sending Encrypts (docs/benchmarks.md).

Lean groups: a job may also say how to do its work without a session (``lean``: kcm-core's
audit records of requests already answered, :func:`kcm.core.audit.append_records`). A group
whose first job has one runs through ``write_lean``
(:meth:`kcm.core.store.engine.Store.write_lean`: the same writer thread without an ORM
session, whose setting up and closing cost such a group more than its work) and takes only
such jobs; the first job in turn that has none ends it and begins the next group. A lean
group has no savepoints: a lean job raises before writing anything, and fails alone, or
raises SQLAlchemy's ``DBAPIError``, which fails the whole group.

Fairness and bounds: the waiting jobs are kept in one FIFO per *share key* (the caller's
tenant, as for :class:`kcm.core.fair_scheduler.FairScheduler`), and a group takes them one
key at a time, the key that has used the least of the writer's time first
(:mod:`kcm.core.writer_shares`): a tenant's long queue, or its long jobs, delay another
tenant's request by about one job of each busy tenant, not by their number or length. A
job of a key whose last job ran long (``alone_seconds``) begins a group, and is never added
to one: the short jobs before it commit without waiting for it; nor, while another key has
jobs in the group or waiting, is a job of a key whose jobs in the group ran that long
together (jobs just short of it would otherwise fill the group, and every answer in it
would wait for them; a key alone fills groups with its short jobs as before). A group
ends when no job is waiting, after ``max_jobs`` jobs, or once its jobs have run
``max_seconds`` (measured on the writer thread), whichever comes first: so does the time any
answer waits for its commit.

Deadlines: a job submitted with ``expires`` (its request's deadline, on the reactor's
clock) that is still waiting then is taken out and failed with
:class:`~kcm.core.queue_expiry.RequestExpired` (:mod:`kcm.core.queue_expiry`), never run:
a group held by a silent database no longer holds the requests queued behind it past
their deadlines. A job taken into a group is answered with its group, whatever the time:
once in the transaction, only the commit says what happened to it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from threading import Lock
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from kcm.core.audit import savepoint
from kcm.core.queue_expiry import QueueExpiry, RequestExpired
from kcm.core.writer_shares import WriterShares

__all__ = ["GroupCommitter"]


@dataclass(slots=True)
class _Job:
    work: Callable[..., Any]
    args: tuple[Any, ...]
    savepoint: bool
    lean: Callable[..., Any] | None
    expires: float | None = None
    done: Deferred[Any] = field(default_factory=Deferred)
    outcome: Any = None
    failed: bool = False


@dataclass(slots=True)
class _Group:
    """One group commit: the jobs it took, and when it began to take them (the writer
    thread, on the committer's ``clock``; None: it took none)."""

    jobs: list[_Job] = field(default_factory=list)
    started: float | None = None


class GroupCommitter:
    """Runs submitted ``work(session, *args)`` calls in group commits through ``write``
    (``write(fn)`` calls ``fn(session)`` in one write transaction on one thread, and fires
    after the commit: :meth:`kcm.core.store.engine.Store.write`).

    :meth:`submit` runs on the reactor thread; the groups run on the writer thread.
    """

    def __init__(self, write: Callable[[Callable[[Session], Any]], Deferred[Any]], *,
                 max_jobs: int = 64, max_seconds: float = 0.025,
                 alone_seconds: float = 0.005,
                 clock: Callable[[], float] = time.perf_counter,
                 start: Callable[[Callable[[], None]], object] | None = None,
                 write_lean: Callable[[Callable[[Any], Any]], Deferred[Any]] | None = None,
                 reactor: IReactorTime | None = None,
                 timer: Callable[[], float] | None = None,
                 on_group: Callable[[int, float, bool], None] | None = None,
                 check: Callable[[Any], None] | None = None) -> None:
        """``start(run)`` calls ``run`` (which starts a group) once the reactor's current
        turn is over; None starts each group at once. ``write_lean`` is ``write`` for
        work that needs no session (:meth:`kcm.core.store.engine.Store.write_lean`);
        None runs every group through ``write``. ``alone_seconds``: a key whose last job ran
        that long has its next job begin a group (:mod:`kcm.core.writer_shares`).
        ``reactor``: the timer that fails the jobs still waiting at their ``expires``
        (:meth:`submit`, on ``timer``, ``reactor.seconds`` when not given); None: they wait
        however long. ``on_group(jobs, seconds, committed)`` is told of each group that took
        jobs once it is answered (the reactor thread): how many, the seconds from its first
        taking a job to its commit's answer (on ``clock``), and whether it committed.
        ``check(session)`` is called after each job, failed or not: if it raises, the
        group stops there and fails whole (kcm-core's: the database ended the transaction
        under the job, :mod:`kcm.core.store.transaction_lost`; a job after it would commit
        on its own, and the jobs before it are gone)."""
        if max_jobs < 1 or max_seconds <= 0:
            raise ValueError("need max_jobs >= 1 and max_seconds > 0")
        self._write = write
        self._write_lean = write_lean
        self._start = start
        self._max_jobs = max_jobs
        self._max_seconds = max_seconds
        self._clock = clock
        # Taken by the reactor (submit) and the writer thread (the group taking jobs).
        self._lock = Lock()
        #: Jobs waiting, per key; a key is present only while it has some.
        self._waiting: dict[Hashable, deque[_Job]] = {}
        #: Keys with jobs waiting, in the order they will be served.
        self._shares = WriterShares(alone_seconds=alone_seconds)
        #: The key whose job the writer thread runs (taken, its time not yet charged).
        self._running_key: Hashable | None = None
        self._running = False
        self._group_running = False
        #: Of the groups committed, how many and how many jobs in all (for benchmarks).
        self.groups = 0
        self.jobs = 0
        self._expiry = None if reactor is None else QueueExpiry(reactor, self._expire, timer)
        self._on_group = on_group
        self._check = check

    @property
    def waiting(self) -> int:
        """Jobs submitted and not yet taken into a group."""
        with self._lock:
            return sum(len(jobs) for jobs in self._waiting.values())

    def submit(self, key: Hashable, work: Callable[..., Any], *args: Any,
               own_savepoint: bool = False,
               lean: Callable[..., Any] | None = None,
               expires: float | None = None) -> Deferred[Any]:
        """Run ``work(session, *args)`` in a group; fires with its result once the group has
        committed, or fails with its exception (its savepoint rolled back) or the commit's.
        With ``own_savepoint``, ``work`` promises to leave nothing behind when it raises
        (it makes savepoints of its own), and the group makes none around it.

        ``lean(transaction, *args)`` is the same work done in a lean group (one without a
        session, through ``write_lean``), which a group is when the job it begins with has
        one: it then takes only jobs that have one. ``lean`` raises either before writing
        anything (the job fails alone) or SQLAlchemy's ``DBAPIError``, which fails the
        whole group: a lean group has no savepoints.

        ``expires``: when the job, if it is still waiting then, is failed with
        :class:`~kcm.core.queue_expiry.RequestExpired` instead of run (on the ``timer``;
        only with a ``reactor``)."""
        job = _Job(work, args, not own_savepoint, lean, expires)
        with self._lock:
            jobs = self._waiting.get(key)
            if jobs is None:
                jobs = self._waiting[key] = deque()
                if not (self._running and key == self._running_key):
                    self._shares.arrive(key)  # (a running key waits again when charged)
            jobs.append(job)
        if expires is not None and self._expiry is not None:
            self._expiry.waits(expires)
        if not self._group_running:
            self._schedule_group()
        return job.done

    def _expire(self, now: float) -> float | None:
        """The reactor (:class:`~kcm.core.queue_expiry.QueueExpiry`): the jobs waiting
        whose ``expires`` is ``now`` or earlier taken out and failed; the earliest
        ``expires`` of those still waiting."""
        expired: list[_Job] = []
        earliest: float | None = None
        with self._lock:
            for key, jobs in list(self._waiting.items()):
                kept: deque[_Job] = deque()
                for job in jobs:
                    (kept if job.expires is None or job.expires > now else expired).append(job)
                if len(kept) < len(jobs):
                    if kept:
                        self._waiting[key] = kept
                    else:
                        del self._waiting[key]
                        if not (self._running and key == self._running_key):
                            self._shares.leave(key)
                for job in kept:
                    if job.expires is not None and (earliest is None or job.expires < earliest):
                        earliest = job.expires
        for job in expired:
            job.done.errback(Failure(RequestExpired("writer")))
        return earliest

    def _schedule_group(self) -> None:
        # From now on a job submitted joins the group about to start.
        self._group_running = True
        if self._start is None:
            self._start_group()
        else:
            self._start(self._start_group)

    def _start_group(self) -> None:
        group = _Group()
        if self._write_lean is not None and self._lean_next():
            running = self._write_lean(lambda transaction: self._run_group(
                transaction, group, lean=True))
        else:
            running = self._write(lambda session: self._run_group(session, group))
        running.addCallbacks(self._committed, self._not_committed, callbackArgs=(group,),
                             errbackArgs=(group,))

    def _lean_next(self) -> bool:
        """Whether the job next in turn can run in a lean group."""
        with self._lock:
            key = self._shares.next_key()
            return key is not None and self._waiting[key][0].lean is not None

    def _take(self, lean: bool = False, first: bool = True,
              used: dict[Hashable, float] | None = None) -> _Job | None:
        """The job next in turn, its key running; None when none waits, or when that job
        is to wait for the next group: it cannot run in a lean group (``lean``), or the
        group has jobs already (not ``first``) and the job is expected to be long, or its
        key's jobs in this group ran ``alone_seconds`` already while another key has jobs
        in the group or waiting (``used``: each key's seconds in the group; a tenant alone
        fills groups as before)."""
        with self._lock:
            shares = self._shares
            key = shares.next_key()
            if key is None:
                return None
            jobs = self._waiting[key]
            if lean and jobs[0].lean is None:
                return None
            if not first and (shares.expected(key) or (
                    (used or {}).get(key, 0.0) >= shares.alone_seconds
                    and (len(shares) > 1 or any(k != key for k in used or ())))):
                return None
            shares.take()
            job = jobs.popleft()
            if not jobs:
                del self._waiting[key]
            self._running_key, self._running = key, True
            return job

    def _ran(self, seconds: float, used: dict[Hashable, float]) -> None:
        """The writer thread: the job taken last ran ``seconds``; its key is charged, here
        and in ``used`` (its group's)."""
        with self._lock:
            key = self._running_key
            self._running_key, self._running = None, False
            self._shares.charge(key, seconds, waits_again=key in self._waiting)
        used[key] = used.get(key, 0.0) + seconds

    def _run_group(self, session: Any, group: _Group, lean: bool = False) -> None:
        """The writer thread: take jobs in turn and run each in a savepoint (``lean``:
        each job's lean work in ``session``, a lean transaction)."""
        clock, taken = self._clock, group.jobs
        group.started = started = ran_to = clock()
        used: dict[Hashable, float] = {}  # each key's seconds in this group
        while len(taken) < self._max_jobs and ran_to - started < self._max_seconds:
            job = self._take(lean, first=not taken, used=used)
            if job is None:
                return
            taken.append(job)
            job_started = ran_to
            try:
                if lean:
                    job.outcome = job.lean(session, *job.args)  # type: ignore[misc]
                elif job.savepoint:
                    with savepoint(session):
                        job.outcome = job.work(session, *job.args)
                else:
                    job.outcome = job.work(session, *job.args)
            except DBAPIError:
                if lean:
                    raise  # what it wrote may stay: the group must not commit
                job.outcome, job.failed = Failure(), True
            except Exception:
                job.outcome, job.failed = Failure(), True
            finally:
                ran_to = clock()
                self._ran(ran_to - job_started, used)
            if self._check is not None:
                self._check(session)

    def _answered(self, group: _Group, committed: bool) -> None:
        if self._on_group is not None and group.jobs and group.started is not None:
            self._on_group(len(group.jobs), self._clock() - group.started, committed)

    def _committed(self, _: None, group: _Group) -> None:
        taken = group.jobs
        self._answered(group, True)
        self._next_group()
        self.groups += 1
        self.jobs += len(taken)
        for job in taken:
            if job.failed:
                job.done.errback(job.outcome)
            else:
                job.done.callback(job.outcome)

    def _not_committed(self, failure: Failure, group: _Group) -> None:
        self._answered(group, False)
        taken = group.jobs
        if not taken:
            # The transaction failed before taking a job (no writer, no database): the
            # waiting jobs would meet the same, so they fail now rather than loop.
            with self._lock:
                taken = [job for jobs in self._waiting.values() for job in jobs]
                self._waiting.clear()
                self._shares.clear()
        self._next_group()
        for job in taken:
            job.done.errback(failure)

    def _next_group(self) -> None:
        self._group_running = False
        with self._lock:
            more = len(self._shares) > 0
        if more:
            self._schedule_group()
