"""What several cores on one PostgreSQL database coordinate through it: the sweeper's
lease (one holder; the next takes over when it goes) and the outbox NOTIFY that wakes
every core's event fan-out at commit (never for a rollback)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy

from kcm.core.keys import derive_audit_key
from kcm.core.leader_lease import SWEEPER_LEASE_KEY, AdvisoryLease
from kcm.core.outbox_listener import OutboxListener
from kcm.core.store import repository
from kcm.core.store.engine import Store
from kcm.core.store.migrate import upgrade
from kcm.link.events import EventKind
from kcm.testing.postgres import fresh_database

_databases = itertools.count()


@pytest.fixture
def pg_database(postgres_url: str) -> Iterator[str]:
    """A fresh, migrated database in the suite's cluster."""
    url = fresh_database(postgres_url, f"kcm_coord_{next(_databases)}")
    upgrade(url)
    yield url


def _store(url: str) -> Store:
    store = Store(url, threads=2)
    store.audit_key = derive_audit_key(bytes(32))
    return store


def test_one_core_holds_the_lease_and_the_next_takes_over(pg_database: str) -> None:
    first, second = _store(pg_database), _store(pg_database)
    a, b = (AdvisoryLease(s, 0x4B434D00FF, "test") for s in (first, second))
    try:
        assert a.hold() and a.hold()  # taken, then kept
        assert not b.hold()
        a.release()
        assert b.hold() and not a.hold()
        # The holder's session dies (its core crashed or lost the database): the lock goes
        # with it, and the holder learns it lost the lease at its next hold.
        with second.engine.connect() as connection:
            connection.execute(sqlalchemy.text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks "
                "WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"))
        deadline = time.monotonic() + 5
        while not a.hold():
            assert time.monotonic() < deadline, "the lease was not freed with its session"
            time.sleep(0.05)
        assert not b.hold() and not b.held
    finally:
        a.release()
        b.release()
        first.engine.dispose()
        second.engine.dispose()


def test_a_core_of_an_earlier_schema_holding_its_sweeper_lease_does_not_stop_ours(
        pg_database: str) -> None:
    """A core of the thirty-ninth sitting (schema 0015) left running on a database upgraded
    under it writes nothing, but held the one sweeper lease: no core of this release swept
    (its rows got no row MAC) until it stopped. Each schema revision has its own lease."""
    store = _store(pg_database)
    lease = AdvisoryLease(store, SWEEPER_LEASE_KEY, "state sweeper")
    try:
        with store.engine.connect() as old_core:  # the old release's key, held
            assert old_core.execute(sqlalchemy.text(
                "SELECT pg_try_advisory_lock(x'4B434D0003'::bigint)")).scalar()
            assert lease.hold()
            old_core.execute(sqlalchemy.text("SELECT pg_advisory_unlock_all()"))
    finally:
        lease.release()
        store.engine.dispose()


def test_a_lease_closed_at_a_stop_is_never_taken_again(pg_database: str) -> None:
    """A stopping core released its lease while a sweep's ask ran on another thread; that
    ask then took the lease again and kept it until the process ended. Closed, a lease is
    released and never asked for again, by an ask already running either."""
    import threading

    first, second = _store(pg_database), _store(pg_database)
    a, b = (AdvisoryLease(s, 0x4B434D00FD, "test") for s in (first, second))
    try:
        assert a.hold()
        a.close()
        assert not a.held and b.hold() and not a.hold()
        b.close()
        # An ask under way when the lease is closed: it does not keep what it takes.
        c = AdvisoryLease(first, 0x4B434D00FD, "test")
        asked = threading.Event()
        original = c._store.engine.raw_connection

        def slow_connection():
            asked.set()
            time.sleep(0.3)  # close() comes meanwhile
            return original()

        c._store.engine.raw_connection = slow_connection  # type: ignore[method-assign]
        outcome: list[bool] = []
        ask = threading.Thread(target=lambda: outcome.append(c.hold()))
        ask.start()
        assert asked.wait(5)
        c.close()
        ask.join(5)
        assert outcome == [False] and not c.held
        d = AdvisoryLease(second, 0x4B434D00FD, "test")
        assert d.hold()  # free
        d.release()
    finally:
        for lease in (a, b):
            lease.release()
        first.engine.dispose()
        second.engine.dispose()


def test_a_holder_silent_too_long_loses_the_lease_to_the_next_core(pg_database: str) -> None:
    """A holder stopped without dying (SIGSTOP, a paused VM) keeps its session; a core that
    asks ends it once it has been silent for ``silence_s``, not while it keeps asking."""
    first, second = _store(pg_database), _store(pg_database)
    a = AdvisoryLease(first, 0x4B434D00FE, "test", silence_s=0.5)
    b = AdvisoryLease(second, 0x4B434D00FE, "test", silence_s=0.5)
    patient = AdvisoryLease(second, 0x4B434D00FE, "test")  # ends nobody
    try:
        assert a.hold()
        for _ in range(10):  # a holder that keeps asking is never ended
            time.sleep(0.1)
            assert a.hold() and not b.hold()
        time.sleep(0.7)  # silent now: a patient core waits on ...
        assert not patient.hold() and a.hold()
        time.sleep(0.7)  # ... and one with a silence bound ends it and takes over
        assert not b.hold()
        deadline = time.monotonic() + 5
        while not b.hold():
            assert time.monotonic() < deadline, "the silent holder kept the lease"
            time.sleep(0.05)
        assert not a.hold() and not a.held  # thawed, it learns it lost the lease
    finally:
        for lease in (a, b, patient):
            lease.release()
        first.engine.dispose()
        second.engine.dispose()


class ThreadReactor:
    """Just enough of a reactor for the listener: calls from its thread, run here."""

    def __init__(self) -> None:
        self.calls: list = []
        self.called = threading.Condition()

    def callFromThread(self, fn, *args) -> None:  # noqa: N802 - Twisted's name
        with self.called:
            self.calls.append((fn, args))
            self.called.notify_all()

    def run_until(self, predicate, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            with self.called:
                if not self.calls:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self.called.wait(left)
                calls, self.calls = self.calls, []
            for fn, args in calls:
                fn(*args)
        return True


def test_a_commit_that_adds_events_wakes_the_fanout_and_a_rollback_does_not(
        pg_database: str) -> None:
    listening, writing = _store(pg_database), _store(pg_database)
    reactor = ThreadReactor()
    wakes: list[float] = []
    listener = OutboxListener(listening, lambda: wakes.append(time.monotonic()), reactor,
                              stop_check=0.1)
    listener.startService()
    try:
        assert reactor.run_until(lambda: listener.listening and wakes)  # the catch-up wake
        wakes.clear()

        def add_event(session) -> None:
            repository.append_outbox(session, EventKind.POLICY, None, b"")

        def add_and_fail(session) -> None:
            add_event(session)
            raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            writing.run_sync(add_and_fail)
        assert not reactor.run_until(lambda: wakes, timeout=0.5)
        committed = time.monotonic()
        writing.run_sync(add_event)
        assert reactor.run_until(lambda: wakes, timeout=5)
        assert wakes[0] - committed < 1.0
        assert listener.heard == 1
        # Stopped, its thread has ended (before the store stops: it would ask the stopped
        # store for its engine, and open it again).
        thread = listener._thread
        listener.stopService()
        assert thread is not None and not thread.is_alive()
    finally:
        listener.stopService()
        listening.engine.dispose()
        writing.engine.dispose()
