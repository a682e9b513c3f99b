"""kcm-core refuses to start when its PostgreSQL connections are not sessions of their own.

The sweeper's lease is a session-level advisory lock (:mod:`kcm.core.leader_lease`) and the
outbox listener a LISTEN (:mod:`kcm.core.outbox_listener`): both live as long as one server
session and belong to it alone. A pooler between kcm-core and PostgreSQL in transaction
(or statement) mode, PgBouncer's ``pool_mode = transaction`` say, lends a client a server
session for one transaction at a time: the lock stays with a server session that the
pooler then lends to other clients, another core's ask for the lease lands on it and is
granted too (two cores sweep), and notifications go nowhere. Nothing fails: the exclusion
is silently gone. A pooler in session mode keeps one server session per client and is
fine.

:func:`unpinned` finds it out with two connections of its own (no pooler answers SQL
about its mode), in rounds: ``A`` reads its server session's pid; ``B`` opens a transaction (which
pins ``B`` to a server session until it ends) and reads its pid; ``A`` reads its pid again.
Connected straight or through a session pooler, ``A`` keeps its session and ``B`` has
another. Through a transaction pooler, ``B`` is lent ``A``'s idle session (PgBouncer lends
the session freed last) or ``A`` is lent another one: either pid tells. A pooler in statement
mode refuses ``B``'s transaction (PgBouncer: "transaction blocks not allowed in statement
pooling mode", SQLSTATE 08P01), and refuses the engine's first connection too, whose
dialect set-up is a transaction: that is the same refusal. :class:`SessionPinning` runs it
as kcm-core starts (PostgreSQL only), before anything else talks to the database, and
stops the start with the reason. It refuses a database whose new sessions are read-only
too (:func:`read_only_refusal`), before the first write of the start fails in the driver's
words.

Blocking: call before the reactor runs, or on a worker thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import make_url
from twisted.application.service import Service
from twisted.logger import Logger

from kcm.core.service import StartupError
from kcm.core.store.engine import Store
from kcm.core.store.pg_session import own_connection
from kcm.core.store.unavailable import READ_ONLY

log = Logger()

#: Rounds of the check, on the same two connections: a pooler that lent ``A`` its own
#: session again by chance, and gave ``B`` another, is caught in a later round.
ROUNDS = 3

_PID = "SELECT pg_backend_pid()"

#: Why kcm-core does not start on sessions that are not its own.
REFUSAL = ("the database connections are not sessions of their own (a pooler in transaction "
           "or statement mode, such as PgBouncer's pool_mode = transaction?): the sweeper's "
           "lease and the outbox LISTEN need one server session per connection; connect "
           "kcm-core to PostgreSQL directly or through a pooler in session mode "
           "(docs/deploy.md)")


#: Why kcm-core does not start on a database whose new sessions are read-only.
READ_ONLY_REFUSAL = (f"{READ_ONLY}: kcm-core writes as it starts; point core.database at the "
                     "primary (several hosts: add target_session_attrs=read-write), or turn "
                     "default_transaction_read_only off for its database and role")


def unpinned(connect: Callable[[], Any], rounds: int = ROUNDS) -> str | None:
    """Why connections that ``connect()`` opens (psycopg ones, in autocommit) are not pinned
    to one server session each; None if they are. Two connections serve every round (a
    pooler in transaction mode assigns ``A``'s statements afresh each time): each new one
    costs a start its connect, 10 s for a host that does not answer."""
    first = connect()
    try:
        second = connect()
        try:
            second.autocommit = False
            for _ in range(rounds):
                mine = _pid(first)
                try:
                    other = _pid(second)  # (its transaction holds its session)
                    again = _pid(first)
                finally:
                    second.rollback()
                if other == mine or again != mine:
                    return (f"{REFUSAL}; server session {mine} served two connections"
                            if other == mine else
                            f"{REFUSAL}; one connection moved from server session {mine} "
                            f"to {again}")
        finally:
            with contextlib.suppress(Exception):
                second.close()
    finally:
        with contextlib.suppress(Exception):
            first.close()
    return None


def _pid(connection: Any) -> int:
    return int(connection.execute(_PID).fetchone()[0])


def protocol_violation(error: BaseException) -> str | None:
    """The message of a server's protocol violation (SQLSTATE 08P01: what PgBouncer in
    statement mode answers a transaction), ``error`` or the driver's error it wraps; None
    for another error."""
    cause = getattr(error, "orig", None) or error
    if getattr(cause, "sqlstate", None) != "08P01":
        return None
    return str(cause).splitlines()[0] if str(cause) else "protocol violation"


class SessionPinning(Service):
    """Refuses kcm-core's start (:class:`StartupError`) when ``store``'s PostgreSQL
    connections are not sessions of their own (:func:`unpinned`), or when a pooler in
    statement mode refuses their transactions. Starts before the store (the engine is
    made, and connects, here first)."""

    name = "kcm-database-sessions"

    def __init__(self, store: Store) -> None:
        self.store = store

    def startService(self) -> None:
        if make_url(self.store.url).get_backend_name() == "postgresql":
            reason = sessions_refusal(self.store.engine)
            if reason is not None:
                raise StartupError(reason)
        super().startService()


def sessions_refusal(engine: Any) -> str | None:
    """Why kcm-core does not start on the PostgreSQL database of ``engine``: its connections
    are not sessions of their own (:func:`unpinned`), a pooler in statement mode refuses
    their transactions, or its new sessions are read-only (:func:`read_only_refusal`); None
    when none of these. ``kcm config check`` reports the same."""
    try:
        reason = unpinned(lambda: own_connection(engine))
    except Exception as e:
        violation = protocol_violation(e)
        if violation is None:
            raise
        reason = f"{REFUSAL}; the server refused a transaction: {violation}"
    if reason is None:
        reason = read_only_refusal(own_connection(engine))
    return reason


def read_only_refusal(connection: Any) -> str | None:
    """Why kcm-core does not start on the database of ``connection`` (a psycopg one, in
    autocommit; closed here): its new sessions are read-only (a standby, or
    ``default_transaction_read_only`` set for the database or role), and a start writes
    (the L1 check value, the audit chain's anchor, the lineage); None when they are not."""
    try:
        setting = connection.execute("SHOW transaction_read_only").fetchone()[0]
    finally:
        with contextlib.suppress(Exception):
            connection.close()
    return READ_ONLY_REFUSAL if setting == "on" else None
