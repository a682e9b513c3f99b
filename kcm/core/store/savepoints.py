"""Savepoints sent as plain SQL, which take the ORM's own only when they must.

A group commit runs each request in a savepoint of the group's transaction, so that a
request that fails rolls back alone. SQLAlchemy's ``Session.begin_nested()`` costs about
80 µs of CPU per savepoint in its bookkeeping, a large share of a request that changes
nothing but its audit record (a Discover Versions) or writes one row with a Core statement
(a Create). :class:`RawSavepoint` is ``SAVEPOINT`` / ``RELEASE`` / ``ROLLBACK TO``
sent on the session's connection instead.

One thing needs the ORM's savepoint: a flush that fails rolls back the innermost of the
session's own transactions, which without an ORM savepoint is the group's whole
transaction. So the first flush inside a raw savepoint with no ORM savepoint of its own
first begins one (:class:`StoreSession` sees every flush: explicit, automatic before a
query, and before a commit), and the raw savepoint commits or rolls it back with itself.
A request that never flushes (the hot ones: their statements are Core statements, see
:mod:`kcm.core.store.raw_statements`) pays three short SQL statements and nothing more; on
SQLite a request's savepoint is *deferred* (its ``SAVEPOINT`` is sent before the first
statement that may write), so one that writes nothing but its audit record pays none.

A raw savepoint rolled back without an ORM one undoes in the session what the ORM's
rollback would have: objects added are expunged, objects changed or deleted but not
flushed are expired or expunged; and the hooks of :func:`on_rollback` run, as the ORM's
``after_soft_rollback`` listeners do for its savepoints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, SessionTransaction

from kcm.core.store.raw_statements import (
    connection_of,
    defer_savepoint,
    discard_pending,
    execute_plain,
    forget_deferred,
)
from kcm.core.store.transaction_lost import transaction_lost, transaction_lost_error

__all__ = ["RawSavepoint", "StoreSession", "on_rollback"]

#: ``Session.info``: the innermost raw savepoint open in the session.
_OPEN = "kcm.store.raw_savepoint"
_ROLLBACK_HOOKS: list[Callable[[Session], None]] = []


def on_rollback(hook: Callable[[Session], None]) -> Callable[[Session], None]:
    """Call ``hook(session)`` whenever a raw savepoint of a session rolls back (what is
    remembered of the rolled-back work must be forgotten)."""
    _ROLLBACK_HOOKS.append(hook)
    return hook


class StoreSession(Session):
    """The sessions of a :class:`kcm.core.store.engine.Store`: a flush inside a raw
    savepoint begins the ORM savepoint it needs first."""

    def flush(self, objects: Any = None) -> None:
        raw: RawSavepoint | None = self.info.get(_OPEN)
        if raw is not None and raw.needs_orm_savepoint() and not self._is_clean():
            raw.begin_orm_savepoint()
        super().flush(objects)


class RawSavepoint:
    """A savepoint of ``session``'s transaction (see the module's note). Call
    :meth:`commit` or :meth:`rollback` once, innermost first. In a session that is not a
    :class:`StoreSession` it is the ORM's ``begin_nested()`` from the start."""

    __slots__ = ("_session", "_name", "_depth", "_outer", "_orm_outer", "_orm", "_sent")

    def __init__(self, session: Session, *, deferred: bool = False) -> None:
        """With ``deferred``, its ``SAVEPOINT`` waits for the first statement that may
        write, where the database allows (:func:`kcm.core.store.raw_statements.
        defer_savepoint`): a savepoint under which nothing is written is never sent."""
        self._session = session
        self._orm: SessionTransaction | None = None
        info = session.info
        self._outer: RawSavepoint | None = info.get(_OPEN)
        #: The ORM savepoint open around this one: a flush inside one of its own is safe.
        self._orm_outer = session.get_nested_transaction()
        self._depth = 0 if self._outer is None else self._outer._depth + 1
        self._sent = False
        if not isinstance(session, StoreSession):
            self._name = None
            self._orm = session.begin_nested()
            return
        self._name = f"kcm_sp{self._depth}"
        connection = connection_of(session)
        if not (deferred and defer_savepoint(connection, self._send)):
            self._send(connection)
        info[_OPEN] = self

    @property
    def sent(self) -> bool:
        """Whether its ``SAVEPOINT`` was sent (always, unless made ``deferred``)."""
        return self._sent

    def _send(self, connection: Any) -> None:
        """Send the ``SAVEPOINT`` on ``connection`` (the session's), and those of the
        savepoints around it that wait too, outermost first."""
        if self._sent:
            return
        outer = self._outer
        if outer is not None:
            outer._send(connection)  # (sent already, unless deferred too)
        if transaction_lost(connection):
            # SQLite ended the transaction (kcm.core.store.transaction_lost): a SAVEPOINT
            # now would begin one of its own, committed at its RELEASE.
            raise transaction_lost_error()
        # The outermost is sent, not waited for (PostgreSQL): it goes with the first
        # statement that waits, at the latest its RELEASE (kcm.core.store.raw_statements).
        # One inside another waits, so that an error of what the outer one sent is
        # raised here, in the outer one's scope, never by the inner one's RELEASE.
        execute_plain(connection, f"SAVEPOINT {self._name}", wait=outer is not None,
                      writes=False)
        self._sent = True

    def needs_orm_savepoint(self) -> bool:
        """Whether a flush now would run without an ORM savepoint inside this one."""
        return self._orm is None and self._session.get_nested_transaction() is self._orm_outer

    def begin_orm_savepoint(self) -> None:
        session = self._session
        # ``begin_nested()`` flushes first, which would be outside the new savepoint: the
        # flush about to run does it inside instead.
        flushing = session._flushing
        session._flushing = True
        try:
            self._orm = session.begin_nested()
        finally:
            session._flushing = flushing

    def commit(self) -> None:
        """Keep what was done since it began; if that fails (a flush), roll back and raise."""
        try:
            if self._name is not None:
                self._session.flush()  # what is pending is this savepoint's (in an ORM one)
            if self._orm is not None:
                self._orm.commit()
        except BaseException:
            self.rollback()
            raise
        if self._name is not None and not self._sent:
            self._forget()
        elif self._name is not None:
            try:
                self._close(f"RELEASE {self._name}")
            except BaseException:
                # The error of a statement sent in this savepoint and not waited for,
                # raised by the RELEASE that waits for it (kcm.core.store.raw_statements):
                # the savepoint's work is undone alone. Its ORM savepoint, if any, was
                # released: what is left to undo, in the session too, is this one's.
                self._orm = None
                self.rollback()
                raise

    def rollback(self) -> None:
        session = self._session
        if self._orm is not None:
            self._orm.rollback()
        if self._name is None:
            return
        if self._orm is None:
            for obj in [*session.new, *session.deleted]:
                session.expunge(obj)
            for obj in list(session.dirty):
                session.expire(obj)
        if self._sent:
            discard_pending(connection_of(session))  # undone anyway; queued after an error
            self._close(f"ROLLBACK TO {self._name}", f"RELEASE {self._name}")
        else:
            self._forget()  # nothing was written under it
        for hook in _ROLLBACK_HOOKS:
            hook(session)

    def _forget(self) -> None:
        """End a savepoint never sent: the one around it, if it waits too, waits again."""
        connection = connection_of(self._session)
        outer = self._outer
        if outer is not None and not outer._sent:
            defer_savepoint(connection, outer._send)
        else:
            forget_deferred(connection)
        self._session.info[_OPEN] = outer

    def _close(self, *statements: str) -> None:
        session = self._session
        connection = connection_of(session)
        for sql in statements:
            execute_plain(connection, sql)
        session.info[_OPEN] = self._outer
