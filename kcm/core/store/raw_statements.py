"""The few statements every request runs, sent straight to the database driver.

SQLAlchemy's execution path (statement cache lookup, execution context, result wrapping,
event dispatch) costs tens of microseconds per statement, several times what SQLite itself
takes for a one-row insert: for the statements of every request (the audit record, a new
object, reading one object, savepoints) it was a large share of kcm-core's CPU per request.
A :class:`RawStatement` is a Core statement compiled once per dialect by SQLAlchemy (same
SQL, same quoting) and executed on the DB-API connection under the session's transaction.

Driver errors are raised as SQLAlchemy's exceptions (``IntegrityError`` and so on), as the
rest of the store expects, without the statement's parameters in their text (wrapped key
material: the engine's ``hide_parameters``), and parameters get the type's conversion for
the driver where SQLAlchemy would apply one (binary columns).

**Sent, not waited for (PostgreSQL).** Each statement on PostgreSQL is a round trip, and a
group commit's writer waits for every one. A statement whose outcome nobody reads (a
request's ``SAVEPOINT``, a new object's row, an audit record) can instead be *sent*
(:meth:`RawStatement.send`, ``execute_plain(..., wait=False)``): psycopg's pipeline mode
queues it, and the next statement that waits (a ``SELECT``, the request's ``RELEASE``, any
statement of SQLAlchemy's, the commit) goes with it in one round trip. An error of a
statement sent is raised by that next statement; since a request ends with the
``RELEASE`` of its savepoint, which waits, a request's errors are always raised within it,
and its savepoint rolls it back alone (:func:`discard_pending` first: what was queued after
the error never ran). A transaction drains what is pending before it commits
(:func:`drain_pending`), and any statement of SQLAlchemy's drains it first
(:func:`pipelined` installs the hooks). On SQLite, sending is executing: there is no
round trip to save.

**Prepared statements after a failed pipeline (PostgreSQL).** psycopg prepares a
statement the sixth time it runs, and counts it as prepared as soon as its ``Parse`` is
sent. Sent in a pipeline behind a statement that fails, that ``Parse`` is skipped by the
server, yet psycopg (3.3.9) still counts the statement as prepared: its next run, in the same
transaction once a savepoint rolled the failure back, failed with ``prepared statement
"_pg3_N" does not exist``. So whenever what a pipeline sent fails, psycopg forgets the
statements it prepared on that connection (:func:`_forget_prepared`: a ``DEALLOCATE ALL``
goes with its next statement, as psycopg does itself after a ``ROLLBACK``); they are
prepared again after as many runs as the first time. A failed pipeline is rare (a request
that fails in the database), so that costs little, and prepared statements stay on.

**A savepoint opened when first needed (SQLite).** A savepoint is there to undo writes. On
SQLite a statement that fails leaves its transaction as it was (unless SQLite ends the
transaction: :mod:`kcm.core.store.transaction_lost`), so a savepoint whose
``SAVEPOINT`` has not been sent yet costs nothing to have: reads run before it see what
they would see after it. :func:`defer_savepoint` registers such a savepoint on a
connection. Before the first statement that may write (any but a ``SELECT`` of a
:class:`RawStatement`: an insert, an update, another savepoint, any statement of
SQLAlchemy's) its ``SAVEPOINT`` is sent. A request that only reads, and writes nothing but
its audit record, then sends no ``SAVEPOINT`` and no ``RELEASE``
(:class:`kcm.core.store.savepoints.RawSavepoint`). PostgreSQL is not offered this: a
statement that fails there spoils the whole transaction unless a savepoint was open.

**Never a statement outside the transaction (SQLite).** SQLite ends a transaction by itself
when some statements fail, a read's as well as a write's (a full disk met while it spills
changed pages to its WAL: :mod:`kcm.core.store.transaction_lost`). A statement that may
write, run after such an error was caught, would commit on its own. Every such statement
(and every statement of SQLAlchemy's) on a SQLite connection whose transaction SQLAlchemy
holds and SQLite ended is refused with :func:`transaction_lost_error` instead.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement

__all__ = ["TRANSACTION_CONNECTION", "TRANSACTION_LOST", "RawStatement", "connection_of",
           "defer_savepoint", "defers_savepoints", "discard_pending", "drain_connection",
           "drain_pending", "execute_plain", "forget_deferred", "pipelined",
           "transaction_lost_error"]

#: A pooled DB-API connection's ``info``: the psycopg pipeline open on it, holding
#: statements sent and not yet waited for.
_PIPELINE = "kcm.store.pipeline"
#: A DB-API connection's ``info``: whether its statements may be sent (a pipelined engine).
_SENDS = "kcm.store.sends"
#: ``Session.info``: the Connection of the session's transaction, as a
#: :class:`~kcm.core.store.engine.Store` sets it when the transaction begins
#: (:func:`connection_of`).
TRANSACTION_CONNECTION = "kcm.store.connection"
#: A DB-API connection's ``info``: whether its savepoints may be sent when first needed.
_DEFERS = "kcm.store.defers_savepoints"
#: A DB-API connection's ``info``: what sends the savepoint that waits for the first
#: statement that may write (:func:`defer_savepoint`).
_DEFERRED = "kcm.store.deferred_savepoint"


class RawStatement:
    """``statement`` with the bound parameters ``keys`` (for an INSERT: its columns, in
    this order), compiled once per dialect, run on the session's DB-API connection."""

    __slots__ = ("_compiled", "_keys", "_statement", "_writes")

    def __init__(self, statement: ClauseElement, keys: Sequence[str] = ()) -> None:
        self._statement = statement
        self._keys = list(keys)
        #: Whether it may write: only a SELECT runs before a deferred savepoint is sent.
        self._writes = not getattr(statement, "is_select", False)
        #: dialect name -> _Compiled
        self._compiled: dict[str, _Compiled] = {}

    def execute(self, session: Session, params: Mapping[str, Any] | None = None) -> Any:
        """Run with ``params`` in ``session``'s transaction; the DB-API cursor."""
        return self._execute(session, params, True)

    def send(self, session: Session, params: Mapping[str, Any] | None = None) -> None:
        """Run with ``params`` in ``session``'s transaction without waiting for the outcome
        where the engine allows it (see the module's note): for a statement whose result
        nobody reads. An error is raised by the next statement that waits."""
        self._execute(session, params, False)

    def run_on(self, connection: Any, params: Mapping[str, Any] | None = None, *,
               wait: bool = True) -> Any:
        """:meth:`execute` (``wait=False``: :meth:`send`) on ``connection``, a SQLAlchemy
        Connection in a transaction with no ORM session around it (the store's lean
        transactions, :class:`kcm.core.store.lean.LeanTransaction`)."""
        return self._execute_on(connection, params, wait)

    def _execute(self, session: Session, params: Mapping[str, Any] | None,
                 wait: bool) -> Any:
        return self._execute_on(connection_of(session), params, wait)

    def _execute_on(self, connection: Any, params: Mapping[str, Any] | None,
                    wait: bool) -> Any:
        dialect = connection.dialect
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            compiled = self._compiled[dialect.name] = self._compile(dialect)
        values: Any = {**compiled.own, **(params or {})}
        for key, convert in compiled.convert.items():
            value = values.get(key)
            if value is not None:
                values[key] = convert(value)
        if compiled.order is not None:
            values = tuple(values[key] for key in compiled.order)
        return _run(connection, compiled.sql, values, wait, self._writes)

    def _compile(self, dialect: Any) -> _Compiled:
        compiled = self._statement.compile(dialect=dialect,
                                           column_keys=self._keys or None)
        positional = dialect.paramstyle in ("qmark", "numeric", "format")
        own = {key: value for key, value in compiled.params.items()
               if key not in self._keys and value is not None}
        return _Compiled(compiled.string,
                         tuple(compiled.positiontup or ()) if positional else None, own,
                         dict(compiled._bind_processors))


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    #: The parameters' names in order (positional style), or None (named style).
    order: tuple[str, ...] | None
    #: The values the statement binds itself, such as a LIMIT.
    own: dict[str, Any]
    #: The conversions the type of a parameter asks for, by name.
    convert: dict[str, Callable[[Any], Any]]


def connection_of(session: Session) -> Any:
    """``session.connection()``, without the ORM's way there for each statement: the
    Connection its transaction began with, while no savepoint of the ORM's is open and that
    transaction runs. Otherwise the ORM's answer, which matters: an ORM savepoint sends its
    ``SAVEPOINT`` only when its connection is first asked for, and a transaction a failed
    flush rolled back is refused."""
    connection = session.info.get(TRANSACTION_CONNECTION)
    if (connection is None or session.get_nested_transaction() is not None
            or not connection.in_transaction()):
        return session.connection()
    return connection


def execute_plain(connection: Any, sql: str, *, wait: bool = True,
                  writes: bool = True) -> Any:
    """Run ``sql`` (no parameters) on the DB-API connection of ``connection`` (a
    SQLAlchemy Connection); with ``wait=False``, sent as :meth:`RawStatement.send` is.
    ``writes=False`` only for a statement that may run before a deferred savepoint is sent
    (a ``SAVEPOINT``'s own)."""
    return _run(connection, sql, (), wait, writes)


#: The reason the error gives (short ASCII, in the log's "the key store is unavailable").
TRANSACTION_LOST = "SQLite rolled the transaction back after a statement failed"


def transaction_lost_error() -> exc.OperationalError:
    """The error work in a transaction SQLite ended fails with."""
    return exc.OperationalError(None, None, sqlite3.OperationalError(TRANSACTION_LOST))


def _refuse_outside_transaction(connection: Any, dbapi: Any) -> None:
    """Raise :func:`transaction_lost_error` if ``connection`` (a SQLAlchemy Connection) is
    in a transaction that SQLite, its database, ended (see the module's note)."""
    if (isinstance(dbapi, sqlite3.Connection) and not dbapi.in_transaction
            and connection.in_transaction()):
        raise transaction_lost_error()


def _run(connection: Any, sql: str, values: Any, wait: bool = True,
         writes: bool = True) -> Any:
    fairy = connection.connection
    dbapi = fairy.dbapi_connection
    info = fairy.info
    if writes:
        _refuse_outside_transaction(connection, dbapi)
        deferred = info.pop(_DEFERRED, None)
        if deferred is not None:
            deferred(connection)
    pipeline = info.get(_PIPELINE)
    try:
        if pipeline is None and not wait and info.get(_SENDS):
            pipeline = dbapi.pipeline()
            pipeline.__enter__()
            info[_PIPELINE] = pipeline
        cursor = dbapi.cursor()
        if values:
            cursor.execute(sql, values)
        else:
            cursor.execute(sql)
        if wait and pipeline is not None:
            # This statement goes with those sent before it, in one round trip; an error
            # of any of them is raised here.
            del info[_PIPELINE]
            pipeline.__exit__(None, None, None)
    except connection.dialect.loaded_dbapi.Error as e:
        _discard(info, dbapi)
        if pipeline is not None:
            _forget_prepared(dbapi)
        raise exc.DBAPIError.instance(sql, values, e, connection.dialect.loaded_dbapi.Error,
                                      hide_parameters=True, dialect=connection.dialect) from e
    except BaseException:
        _discard(info, dbapi)
        if pipeline is not None:
            _forget_prepared(dbapi)
        raise
    return cursor


def defers_savepoints(engine: Engine) -> Engine:
    """Let savepoints on ``engine``'s connections be sent when first needed (its database
    must be SQLite; see the module's note): statements of SQLAlchemy's send the one
    waiting first."""

    def allow(dbapi_connection: Any, record: Any) -> None:
        record.info[_DEFERS] = True

    def send_before(connection: Any, *_: Any) -> None:
        fairy = connection.connection
        _refuse_outside_transaction(connection, fairy.dbapi_connection)
        deferred = fairy.info.pop(_DEFERRED, None)
        if deferred is not None:
            deferred(connection)

    event.listen(engine, "connect", allow)
    event.listen(engine, "before_cursor_execute", send_before)
    return engine


def defer_savepoint(connection: Any, send: Callable[[Any], None]) -> bool:
    """Have ``send(connection)`` (which sends a ``SAVEPOINT``) called before the next
    statement on ``connection`` (a SQLAlchemy Connection) that may write, in place of any
    savepoint waiting there; False, with nothing registered, where savepoints cannot wait
    (see the module's note)."""
    info = connection.connection.info
    if not info.get(_DEFERS):
        return False
    info[_DEFERRED] = send
    return True


def forget_deferred(connection: Any) -> None:
    """No savepoint waits on ``connection`` any more (a transaction's end, or the
    savepoint's end before it was ever sent)."""
    connection.connection.info.pop(_DEFERRED, None)


def discard_pending(connection: Any) -> None:
    """Forget what was sent on ``connection`` (a SQLAlchemy Connection) and not waited for,
    and any error it met: for a rollback, which undoes it anyway."""
    fairy = connection.connection
    _discard(fairy.info, fairy.dbapi_connection)


def _drain(connection: Any) -> None:
    """Wait for what was sent on ``connection`` (a SQLAlchemy Connection); raises its
    error, as SQLAlchemy's exception."""
    fairy = connection.connection
    pipeline = fairy.info.pop(_PIPELINE, None)
    if pipeline is None:
        return
    error = connection.dialect.loaded_dbapi.Error
    try:
        pipeline.__exit__(None, None, None)
    except error as e:
        _forget_prepared(fairy.dbapi_connection)
        raise exc.DBAPIError.instance("(statements sent before this one)", (), e, error,
                                      dialect=connection.dialect) from e
    except BaseException:
        _forget_prepared(fairy.dbapi_connection)
        raise


def _discard(info: dict[Any, Any], dbapi: Any) -> None:
    pipeline = info.pop(_PIPELINE, None)
    if pipeline is not None:
        # Leaving pipeline mode always happens; the error of what was sent is dropped.
        try:
            pipeline.__exit__(None, None, None)
        except Exception:
            _forget_prepared(dbapi)


def _forget_prepared(dbapi: Any) -> None:
    """Have psycopg forget the statements it prepared on ``dbapi``, a connection whose
    pipeline failed (see the module's note): ``DEALLOCATE ALL`` is sent after its next
    statement that succeeds. Only psycopg's private API does it (``_prepared.clear()``,
    what psycopg runs after a ``ROLLBACK``); without it, nothing is done, and
    tests/integration/test_store_savepoints.py fails."""
    clear = getattr(getattr(dbapi, "_prepared", None), "clear", None)
    if callable(clear):
        clear()


def pipelined(engine: Engine) -> Engine:
    """Let statements on ``engine``'s connections be sent without waiting (its driver must
    be psycopg 3: PostgreSQL), and have everything else wait for what was sent first:
    SQLAlchemy's own statements and a commit drain it (raising its error), a rollback and
    a connection's return to the pool discard it."""

    def allow(dbapi_connection: Any, record: Any) -> None:
        record.info[_SENDS] = True

    def drain_before(connection: Any, *_: Any) -> None:
        _drain(connection)

    def discard_before(connection: Any, *_: Any) -> None:
        # An invalidated connection (its server gone mid-transaction) has no DBAPI
        # connection to ask for: asking raised PendingRollbackError in place of the error
        # that invalidated it, which was then logged as a bug, not as the store's
        # unavailability. Its pool record is reset, and so discarded, as it is returned.
        if not connection.invalidated:
            fairy = connection.connection
            _discard(fairy.info, fairy.dbapi_connection)

    def discard_on_reset(dbapi_connection: Any, record: Any, _state: Any) -> None:
        _discard(record.info, dbapi_connection)

    event.listen(engine, "connect", allow)
    event.listen(engine, "before_cursor_execute", drain_before)
    event.listen(engine, "commit", drain_before)
    event.listen(engine, "rollback", discard_before)
    event.listen(engine.pool, "reset", discard_on_reset)
    event.listen(engine.pool, "checkin",
                 lambda dbapi_connection, record: _discard(record.info, dbapi_connection))
    return engine


def drain_pending(session: Session) -> None:
    """Wait for what ``session``'s connection sent and did not wait for; raises its error.
    A :class:`~kcm.core.store.engine.Store` calls it before each commit, where an error
    still rolls the transaction back (the connection's own ``commit`` event, which drains
    too, comes after the point of no return)."""
    _drain(connection_of(session))


def drain_connection(connection: Any) -> None:
    """:func:`drain_pending` for a transaction on ``connection`` (a SQLAlchemy Connection)
    with no session around it (:mod:`kcm.core.store.lean`)."""
    _drain(connection)
