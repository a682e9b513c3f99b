"""Raw savepoints (kcm.core.store.savepoints) on a real SQLite file and the PostgreSQL
cluster: each rolls back alone, whatever failed inside it, and the transaction around it
goes on — a group commit's other requests depend on it."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from kcm.core.store import repository as repo
from kcm.core.store.engine import Store, open_engine
from kcm.core.store.raw_statements import RawStatement, drain_pending
from kcm.core.store.savepoints import RawSavepoint, StoreSession
from kcm.core.store.schema import STATE_ACTIVE, STATE_PRE_ACTIVE, ManagedObject, ObjectName
from tests.integration.test_store import _new_key, db_url, store  # noqa: F401 (fixtures)


def _uids(session: Session) -> list[str]:
    return sorted(session.scalars(select(ManagedObject.uid)))


def test_commit_keeps_and_rollback_undoes(store: Store) -> None:  # noqa: F811
    def work(session: Session) -> list[str]:
        assert isinstance(session, StoreSession)
        kept = RawSavepoint(session)
        _new_key(session, "kept")
        kept.commit()
        undone = RawSavepoint(session)
        _new_key(session, "undone")
        inner = RawSavepoint(session)
        _new_key(session, "inner")
        inner.commit()
        undone.rollback()  # the inner one with it
        return _uids(session)

    assert store.run_sync(work) == ["kept"]
    assert store.run_sync(_uids, write=False) == ["kept"]


def test_a_failed_flush_rolls_back_only_its_savepoint(store: Store) -> None:  # noqa: F811
    """Without an ORM savepoint inside, a flush that fails would roll back the whole
    transaction: the raw savepoint begins one at the first flush."""
    store.run_sync(lambda session: _new_key(session, "k1"))

    def work(session: Session) -> tuple[list[str], int]:
        before = RawSavepoint(session)
        _new_key(session, "earlier")  # another request of the group, kept
        before.commit()
        failing = RawSavepoint(session)
        obj = repo.get_object(session, "t1", "k1", for_update=True)
        repo.update_object(session, obj, state=STATE_ACTIVE)  # flushed, then undone
        session.add(ObjectName(uid="k1", tenant="t1", name="n", name_type=1))
        session.add(ObjectName(uid="k1", tenant="t1", name="n", name_type=1))
        with pytest.raises(IntegrityError):
            session.flush()
        failing.rollback()
        after = RawSavepoint(session)
        _new_key(session, "later")
        after.commit()
        state = session.scalar(select(ManagedObject.state).where(ManagedObject.uid == "k1"))
        return _uids(session), state

    assert store.run_sync(work) == (["earlier", "k1", "later"], STATE_PRE_ACTIVE)
    assert store.run_sync(_uids, write=False) == ["earlier", "k1", "later"]
    names = store.run_sync(lambda s: s.scalar(select(func.count()).select_from(ObjectName)),
                           write=False)
    assert names == 0


def test_a_failing_commit_rolls_back_and_raises(store: Store) -> None:  # noqa: F811
    def work(session: Session) -> list[str]:
        failing = RawSavepoint(session)
        _new_key(session, "gone")
        session.add(ObjectName(uid="gone", tenant="t1", name="n", name_type=1))
        session.add(ObjectName(uid="gone", tenant="t1", name="n", name_type=1))
        with pytest.raises(IntegrityError):
            failing.commit()  # its flush fails
        _new_key(session, "next")
        return _uids(session)

    assert store.run_sync(work) == ["next"]


def test_a_failed_statement_leaves_the_transaction_usable(store: Store) -> None:  # noqa: F811
    """On PostgreSQL a failed statement aborts the transaction up to the savepoint. (There
    a new object's row is sent, not waited for: its error comes with the next statement
    that waits, here the drain a commit would make.)"""
    def work(session: Session) -> list[str]:
        failing = RawSavepoint(session)
        _new_key(session, "dup")
        with pytest.raises(IntegrityError):
            _new_key(session, "dup")  # a Core insert: no flush involved
            drain_pending(session)
        failing.rollback()
        _new_key(session, "after")
        return _uids(session)

    assert store.run_sync(work) == ["after"]


def test_changes_not_flushed_are_undone_in_the_session(store: Store) -> None:  # noqa: F811
    store.run_sync(lambda session: _new_key(session, "k1"))

    def work(session: Session) -> tuple[int, bool, list[str]]:
        obj = repo.get_object(session, "t1", "k1")
        savepoint = RawSavepoint(session)
        obj.state = STATE_ACTIVE  # never flushed
        added = ObjectName(uid="k1", tenant="t1", name="pending", name_type=1)
        session.add(added)
        savepoint.rollback()
        return obj.state, added in session, _uids(session)

    assert store.run_sync(work) == (STATE_PRE_ACTIVE, False, ["k1"])
    assert store.run_sync(lambda s: repo.get_object(s, "t1", "k1").state,
                          write=False) == STATE_PRE_ACTIVE


def test_what_was_numbered_in_memory_is_forgotten_on_rollback(store: Store) -> None:  # noqa: F811
    def work(session: Session) -> list[int]:
        undone = RawSavepoint(session)
        _new_key(session, "a")  # created_seq 1, then the next is remembered as 2
        undone.rollback()
        return [_new_key(session, "b").created_seq]

    assert store.run_sync(work) == [1]


def test_a_plain_session_gets_the_orms_savepoint(db_url: str) -> None:  # noqa: F811
    from kcm.core.store.migrate import upgrade

    upgrade(db_url)
    engine = open_engine(db_url)
    try:
        with Session(engine) as session, session.begin():
            savepoint = RawSavepoint(session)
            assert session.in_nested_transaction()
            session.execute(text("SELECT 1"))
            savepoint.rollback()
            assert not session.in_nested_transaction()
    finally:
        engine.dispose()


def test_an_error_of_a_statement_sent_fails_its_transaction(store: Store) -> None:  # noqa: F811
    """A statement sent and not waited for (PostgreSQL) whose error no later statement
    raised still fails the transaction before it commits: nothing of it is kept."""
    store.run_sync(lambda session: _new_key(session, "k1"))

    def work(session: Session) -> None:
        _new_key(session, "k2")
        _new_key(session, "k1")  # its error comes at the commit's drain, not here

    with pytest.raises(IntegrityError):
        store.run_sync(work)
    assert store.run_sync(_uids) == ["k1"]


def test_a_request_ends_having_waited_for_what_it_sent(store: Store) -> None:  # noqa: F811
    """A savepoint's RELEASE waits: an error of a statement sent inside it is raised by
    its commit, which rolls it back alone, and the transaction goes on."""
    def work(session: Session) -> list[str]:
        _new_key(session, "k1")
        sent = session.get_bind().dialect.name == "postgresql"
        failing = RawSavepoint(session)
        try:
            _new_key(session, "k1")
        except IntegrityError:  # SQLite: at once
            assert not sent
            failing.rollback()
        else:  # PostgreSQL: sent; the RELEASE waits for it, raises, and rolls back
            with pytest.raises(IntegrityError):
                failing.commit()
        kept = RawSavepoint(session)
        _new_key(session, "k2")
        kept.commit()
        return _uids(session)

    assert store.run_sync(work) == ["k1", "k2"]
    assert store.run_sync(_uids) == ["k1", "k2"]


def test_an_error_sent_before_an_inner_savepoint_is_the_outer_ones(store: Store) -> None:  # noqa: F811
    """A savepoint begun inside another waits for what the outer one sent: its error is
    raised there, and the outer savepoint rolls back, never the inner one in its place."""
    def work(session: Session) -> list[str]:
        _new_key(session, "k1")
        outer = RawSavepoint(session)
        with pytest.raises(IntegrityError):
            _new_key(session, "k1")  # SQLite: here; PostgreSQL: sent ...
            RawSavepoint(session)  # ... and raised by the inner savepoint's beginning
        outer.rollback()
        _new_key(session, "k2")
        return _uids(session)

    assert store.run_sync(work) == ["k1", "k2"]


# Deferred savepoints (SQLite: sent before the first statement that may write) --------
def _traced(session: Session) -> list[str]:
    """The statements ``session``'s SQLite connection runs from now on (their first word
    and, for a savepoint's, its name)."""
    seen: list[str] = []
    dbapi = session.connection().connection.dbapi_connection
    dbapi.set_trace_callback(lambda sql: seen.append(" ".join(sql.split()[:2])))
    return seen


def _sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


def test_a_deferred_savepoint_under_which_nothing_is_written_is_never_sent(
        store: Store) -> None:  # noqa: F811
    """A read (a raw SELECT) runs without it; its end sends nothing. On PostgreSQL, where
    a failed statement would spoil the transaction, it is sent at once."""
    store.run_sync(lambda session: _new_key(session, "k1"))

    def work(session: Session) -> tuple[bool, list[str], int | None]:
        seen = _traced(session) if _sqlite(session) else []
        kept = RawSavepoint(session, deferred=True)
        stamp = repo.object_stamp(session, "t1", "k1", for_update=True)
        sent = kept.sent
        kept.commit()
        undone = RawSavepoint(session, deferred=True)
        undone.rollback()
        return sent, seen, None if stamp is None else stamp[0]

    sent, seen, revision = store.run_sync(work)
    assert revision is not None
    if store.engine.dialect.name == "sqlite":
        assert not sent
        assert seen == ["SELECT managed_objects.revision,", "COMMIT"]
    else:
        assert sent


def test_a_deferred_savepoint_is_sent_before_the_first_write(store: Store) -> None:  # noqa: F811
    """A Core insert, a flush of the ORM's, a savepoint begun inside: each sends it first,
    and its rollback undoes what was written under it, and only that."""
    def work(session: Session) -> tuple[list[str], list[bool]]:
        sent = []
        _new_key(session, "before")
        core = RawSavepoint(session, deferred=True)
        _new_key(session, "core")  # a Core insert
        sent.append(core.sent)
        core.rollback()
        orm = RawSavepoint(session, deferred=True)
        session.add(ObjectName(uid="before", tenant="t1", name="n", name_type=1))
        session.flush()
        sent.append(orm.sent)
        orm.rollback()
        outer = RawSavepoint(session, deferred=True)
        inner = RawSavepoint(session)  # not deferred: the outer one goes first
        sent.append(outer.sent)
        _new_key(session, "inner")
        inner.rollback()
        _new_key(session, "outer")
        outer.commit()
        return _uids(session), sent

    assert store.run_sync(work) == (["before", "outer"], [True, True, True])
    assert store.run_sync(_uids, write=False) == ["before", "outer"]
    names = store.run_sync(lambda s: s.scalar(select(func.count()).select_from(ObjectName)),
                           write=False)
    assert names == 0


def test_an_inner_deferred_savepoint_never_sent_leaves_the_outer_one_waiting(
        store: Store) -> None:  # noqa: F811
    def work(session: Session) -> tuple[list[str], bool, bool]:
        outer = RawSavepoint(session, deferred=True)
        inner = RawSavepoint(session, deferred=True)
        inner.commit()
        waiting = not outer.sent
        _new_key(session, "undone")  # sends the outer one, then writes under it
        sent = outer.sent
        outer.rollback()
        return _uids(session), waiting, sent

    uids, waiting, sent = store.run_sync(work)
    assert uids == [] and sent
    assert waiting == (store.engine.dialect.name == "sqlite")


def test_a_deferred_savepoint_left_open_is_not_sent_in_the_next_transaction(
        store: Store) -> None:  # noqa: F811
    """A transaction that failed with a deferred savepoint open (never ended) leaves the
    connection to the next one with nothing waiting to be sent before its statements."""
    def fails(session: Session) -> None:
        RawSavepoint(session, deferred=True)
        raise RuntimeError("the transaction fails")

    with pytest.raises(RuntimeError):
        store._write_sync(fails)
    store._write_sync(lambda session: _new_key(session, "next"))  # the same kept connection
    assert store.run_sync(_uids, write=False) == ["next"]


_KEY_FIELDS = {"tenant": "t1", "object_type": 2, "state": STATE_PRE_ACTIVE,
               "attributes": b"", "material": None, "material_format": None,
               "wrapped_by": None}


def test_a_raw_statement_in_an_orm_savepoint_is_undone_with_it(store: Store) -> None:  # noqa: F811
    """Raw statements run on the transaction's connection without asking the ORM for it,
    except inside a savepoint of the ORM's, which is begun on the database only when its
    connection is asked for: there they ask, and its rollback undoes them."""
    def work(session: Session) -> list[str]:
        _new_key(session, "kept")
        nested = session.begin_nested()
        # The first statement in it a Core insert, sent straight to the driver.
        repo.insert_object(session, **{**_KEY_FIELDS, "uid": "undone"})
        nested.rollback()
        return _uids(session)

    assert store.run_sync(work) == ["kept"]
    assert store.run_sync(_uids, write=False) == ["kept"]



@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # (psycopg's pipelines)
@pytest.mark.parametrize("met", ["waited", "drained", "discarded"])
def test_a_statement_prepared_behind_a_failed_one_runs_again(
        store: Store, met: str) -> None:  # noqa: F811
    """psycopg prepares a statement the sixth time it runs; sent in a pipeline behind a
    statement that fails, its Parse is skipped, and psycopg still took it as prepared:
    run again in the same transaction, after its savepoint rolled back, it failed with
    'prepared statement "_pg3_N" does not exist' (a full disk met by a group commit).
    The failure is met by the statement that waits, by a drain, or dropped by a rollback."""
    probe = RawStatement(text("SELECT 42"))
    # Fails once the probe is surely sent behind it (a constraint violation may come back
    # before the probe is sent, and be raised as the probe is).
    slow_failure = RawStatement(text("SELECT pg_sleep(0.2)::text::int"))

    def work(session: Session) -> tuple[int, list[str]]:
        _new_key(session, "k1")
        warm = RawSavepoint(session)  # psycopg forgets all it prepared on a new ROLLBACK
        warm.rollback()
        for _ in range(5):  # its next run prepares it
            probe.execute(session)
        failing = RawSavepoint(session)
        slow_failure.send(session)
        # The probe's Parse goes behind the failed statement: skipped.
        if met == "waited":
            with pytest.raises(DataError):
                probe.execute(session)
        else:
            probe.send(session)
            if met == "drained":
                with pytest.raises(DataError):
                    drain_pending(session)
        failing.rollback()
        after = RawSavepoint(session)
        value = probe.execute(session).fetchone()[0]
        for _ in range(6):  # prepared again, as the first time
            probe.execute(session)
        after.commit()
        prepared = session.scalars(text("SELECT statement FROM pg_prepared_statements"))
        return value, [s for s in prepared if "42" in s]

    assert store.run_sync(work) == (42, ["SELECT 42"])
