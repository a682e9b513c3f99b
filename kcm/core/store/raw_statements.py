"""The few statements every request runs, sent straight to the database driver.

SQLAlchemy's execution path (statement cache lookup, execution context, result wrapping,
event dispatch) costs tens of microseconds per statement, several times what SQLite itself
takes for a one-row insert: for the statements of every request (the audit record, a new
object, reading one object, savepoints) it was a large share of kcm-core's CPU per request.
A :class:`RawStatement` is a Core statement compiled once per dialect by SQLAlchemy (same
SQL, same quoting) and executed on the DB-API connection under the session's transaction.

Driver errors are raised as SQLAlchemy's exceptions (``IntegrityError`` and so on), as the
rest of the store expects, and parameters get the type's conversion for the driver where
SQLAlchemy would apply one (binary columns).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc
from sqlalchemy.orm import Session
from sqlalchemy.sql import ClauseElement

__all__ = ["RawStatement", "execute_plain"]


class RawStatement:
    """``statement`` with the bound parameters ``keys`` (for an INSERT: its columns, in
    this order), compiled once per dialect, run on the session's DB-API connection."""

    __slots__ = ("_compiled", "_keys", "_statement")

    def __init__(self, statement: ClauseElement, keys: Sequence[str] = ()) -> None:
        self._statement = statement
        self._keys = list(keys)
        #: dialect name -> _Compiled
        self._compiled: dict[str, _Compiled] = {}

    def execute(self, session: Session, params: Mapping[str, Any] | None = None) -> Any:
        """Run with ``params`` in ``session``'s transaction; the DB-API cursor."""
        connection = session.connection()
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
        return _run(connection, compiled.sql, values)

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


def execute_plain(connection: Any, sql: str) -> Any:
    """Run ``sql`` (no parameters) on the DB-API connection of ``connection`` (a
    SQLAlchemy Connection)."""
    return _run(connection, sql, ())


def _run(connection: Any, sql: str, values: Any) -> Any:
    dbapi = connection.connection.dbapi_connection
    cursor = dbapi.cursor()
    try:
        if values:
            cursor.execute(sql, values)
        else:
            cursor.execute(sql)
    except connection.dialect.loaded_dbapi.Error as e:
        raise exc.DBAPIError.instance(sql, values, e, connection.dialect.loaded_dbapi.Error,
                                      dialect=connection.dialect) from e
    return cursor
