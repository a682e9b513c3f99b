"""A SQLite write transaction that the database ended under its writer.

SQLite rolls a whole transaction back by itself when some statements fail: out of disk
space (``SQLITE_FULL``) or an I/O error while it writes the pages a large transaction
changed to its WAL before the commit (a cache spill), or out of memory. The connection is
then in autocommit mode again, with nothing to say so but ``in_transaction``: a statement
run after it commits at once, on its own (a ``SAVEPOINT`` begins a transaction of its own,
its ``RELEASE`` commits it), and the commit that ends the work commits nothing (pysqlite's
``commit()`` does nothing outside a transaction). A group commit whose third request
filled the disk so answered Success to the two before it, whose work was gone, and
committed the failure record of the third on its own, chained to audit records that were
rolled back (a gap in the chain).

So the store checks, where work goes on after a failure: before each statement that may
write (:mod:`kcm.core.store.raw_statements`: a request whose read met the full disk, its
error caught, then wrote its audit record on its own), before each ``SAVEPOINT`` it sends,
after each job of a group commit, and before each write transaction's commit.
:func:`check_transaction` raises :func:`transaction_lost_error` (the key store is
unavailable: :mod:`kcm.core.store.unavailable`) when the transaction is gone. PostgreSQL
never ends a transaction by itself this way (a failed statement spoils it until a
rollback, and a commit of it fails): nothing is checked there.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy.orm import Session

from kcm.core.store.lean import LeanTransaction
from kcm.core.store.raw_statements import (
    TRANSACTION_CONNECTION,
    TRANSACTION_LOST,
    transaction_lost_error,
)

__all__ = ["TRANSACTION_LOST", "check_transaction", "transaction_lost",
           "transaction_lost_error"]


def transaction_lost(connection: Any) -> bool:
    """Whether ``connection`` (a SQLAlchemy Connection) is a SQLite connection whose
    transaction the database ended (it is in autocommit mode); False for any other."""
    try:
        dbapi = connection.connection.dbapi_connection
    except Exception:  # noqa: BLE001 - closed or invalidated: its own errors say so
        return False
    return isinstance(dbapi, sqlite3.Connection) and not dbapi.in_transaction


def check_transaction(holder: Session | LeanTransaction) -> None:
    """Raise :func:`transaction_lost_error` if the transaction of ``holder`` (a session of
    the store's, or a lean transaction) was ended by SQLite. A session that has not begun
    its transaction has nothing to check."""
    if isinstance(holder, LeanTransaction):
        connection = holder.connection
    elif isinstance(holder, Session):
        connection = holder.info.get(TRANSACTION_CONNECTION)
        if connection is None:
            return
    else:
        return  # (a test's group without a session)
    if transaction_lost(connection):
        raise transaction_lost_error()

