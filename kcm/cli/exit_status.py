"""The ``kcm`` command's exit status for an error (:func:`kcm.cli.main` asks here): 75,
sysexits.h's ``EX_TEMPFAIL``, when what failed is unavailable now and the same command may
succeed later; 2 for anything else (bad input, a refusal, a bug). A script can then retry
the first and stop at the second.

Unavailable: the database cannot be reached or is locked or busy (a PostgreSQL server down,
starting, shutting down, out of connections, read-only after a failover, a connection broken
or timed out; a SQLite file another process holds locked), or a KMIP server cannot be
reached or did not answer in time (:attr:`kcm.conformance.client.KmipClientError.temporary`),
or a host name could not be looked up because the resolver is down (``EAI_AGAIN``, not
``EAI_NONAME``: a name that does not exist stays 2). The error or any of its causes
(``raise ... from``) decides: the commands turn a database's error into their one-line
message with it as the cause.

A KMIP failure answer is 1 (:func:`answer_status`), or 75 when the server says the same
request may pass later: the core's per-tenant request rate (``...; retry in S s``,
:func:`kcm.core.request_rates.throttled_message`) and the servers' ``...; try again`` (the
key store unavailable, a request deadline exceeded, a gateway busy or without its core). A
tenant at its bound on stored objects (``max_objects_per_tenant``) stays 1: it passes only
once objects are destroyed or the bound is raised, which no retry does. The form must end
the message and come with one of those answers' reasons: a failure that echoes what the
client gave (Object Not Found ``no object x; try again``) stays 1, or a script would
retry it for ever.
"""

from __future__ import annotations

import re
import socket
import sqlite3
from collections.abc import Iterator

#: Bad input, a refusal, any failure not known to pass (argparse's status for bad usage).
EXIT_BAD_INPUT = 2
#: The database or server is unavailable now; try again (sysexits.h ``EX_TEMPFAIL``).
EXIT_TRY_AGAIN = 75
#: The server answered with a failure (not one it says passes: :func:`answer_status`).
EXIT_KMIP_FAILURE = 1

#: A failure answer's message that asks for the same request later: the core's request
#: rate's ``...; retry in 0.4 s``, the servers' ``...; try again`` (and ``try again later``,
#: ``try again (correlation id ...)``).
_ANSWER_PASSING = re.compile(
    r"; (?:retry in [0-9.]+ s|try again(?: later| \(correlation id [0-9A-Za-z-]+\))?)\Z")
#: The Result Reasons of those answers: Server Limit Exceeded (the rate; Feature Not
#: Supported in KMIP 1.x), General Failure (the key store, a deadline, a gateway busy) and
#: Wrong Key Lifecycle State (a tenant key retired a moment ago).
_PASSING_REASONS = ("SERVER_LIMIT_EXCEEDED", "FEATURE_NOT_SUPPORTED", "GENERAL_FAILURE",
                    "WRONG_KEY_LIFECYCLE_STATE")

#: SQLite's primary result codes of a file another connection holds: SQLITE_BUSY,
#: SQLITE_LOCKED.
_SQLITE_BUSY = (5, 6)
#: PostgreSQL's SQLSTATE classes and codes of a server that may take the command later:
#: connection exception, insufficient resources, transaction rollback (serialization,
#: deadlock); admin or crash shutdown, cannot connect now, lock not available, statement
#: timeout, read-only transaction (a standby after a failover).
_PG_CLASSES = ("08", "53", "40")
_PG_CODES = ("57P01", "57P02", "57P03", "55P03", "57014", "25006")
#: What libpq or psycopg says, with no SQLSTATE, of a server that may take the command
#: later: it refused or dropped the connection or did not answer in time (down, restarting,
#: unreachable), was starting, stopping or recovering, or had no connection left. Anything
#: else is for good: a role that may not log in, a password not given, TLS required by one
#: side and not had, a certificate not verified (a script retried those for ever).
_PG_UNAVAILABLE = ("connection refused", "is the server running", "timeout expired",
                   "timed out", "no route to host", "network is unreachable",
                   "host is unreachable", "server closed the connection",
                   "could not receive data", "could not send data", "connection reset",
                   "broken pipe", "temporarily unavailable", "starting up", "shutting down",
                   "recovery mode", "accepting connections", "too many clients",
                   "too many connections", "connection slots are reserved",
                   "temporary failure in name resolution", "ssl syscall error",
                   "eof detected", "consuming input failed", "connection is lost",
                   "connection is closed", "connection is bad", "terminating connection")
#: A connection refused for good, whose error has no SQLSTATE (libpq's text), whatever
#: else it says.
_PG_REFUSED = ("authentication failed", "does not exist", "no pg_hba.conf entry",
               "permission denied")


def exit_status(error: BaseException) -> int:
    """:data:`EXIT_TRY_AGAIN` if ``error`` (or a cause of it) says the database or the
    server is unavailable now, else :data:`EXIT_BAD_INPUT`."""
    return EXIT_TRY_AGAIN if any(_passing(e) for e in _chain(error)) else EXIT_BAD_INPUT


def answer_status(message: str, reason: int | None = None) -> int:
    """The exit status of a KMIP failure answer whose Result Message is ``message`` and
    Result Reason ``reason`` (None: not known): :data:`EXIT_TRY_AGAIN` if it asks for the
    same request later, else :data:`EXIT_KMIP_FAILURE`."""
    from kcm.kmip.enums import ResultReason

    if reason is not None and int(reason) not in {
            int(ResultReason[name]) for name in _PASSING_REASONS}:
        return EXIT_KMIP_FAILURE
    return EXIT_TRY_AGAIN if _ANSWER_PASSING.search(message) else EXIT_KMIP_FAILURE


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, its causes (``__cause__``, else ``__context__`` unless suppressed) and a
    database error's driver error (SQLAlchemy's ``orig``)."""
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        # (``raise ... from None`` hides the context on purpose: it does not decide)
        context = None if e.__suppress_context__ else e.__context__
        for cause in (e.__cause__ or context, getattr(e, "orig", None)):
            if isinstance(cause, BaseException):
                todo.append(cause)


def _passing(error: BaseException) -> bool:
    from kcm.conformance.client import KmipClientError

    if isinstance(error, KmipClientError):
        return error.temporary
    if isinstance(error, socket.gaierror):  # (the resolver down, not a name unknown)
        return error.errno == socket.EAI_AGAIN
    if isinstance(error, sqlite3.OperationalError):
        code = getattr(error, "sqlite_errorcode", None)
        return (code is not None and code & 0xFF in _SQLITE_BUSY) or (
            code is None and "database is locked" in str(error))
    if getattr(error, "connection_invalidated", False):  # (SQLAlchemy: the connection broke)
        return True
    if type(error).__module__.startswith("psycopg") and isinstance(error, Exception):
        return _pg_passing(error)
    return False


def _pg_passing(error: Exception) -> bool:
    import psycopg

    if not isinstance(error, psycopg.Error):
        return False
    state = error.sqlstate
    if state is not None:
        return state[:2] in _PG_CLASSES or state in _PG_CODES
    # (no SQLSTATE: libpq's own, a connection that failed or broke)
    text = str(error).lower()
    return (isinstance(error, psycopg.OperationalError)
            and any(passing in text for passing in _PG_UNAVAILABLE)
            and not any(refused in text for refused in _PG_REFUSED))
