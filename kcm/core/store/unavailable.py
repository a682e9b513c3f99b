"""Whether an error of the store means the store is unavailable (locked by another process,
out of space, unreachable), as opposed to a bug: the first is the operator's to fix, and a
client is told so in a short message, the second is logged with its traceback. L1 that
cannot be used (its PKCS#11 token's session lost and not opened again:
:class:`kcm.core.l1_pkcs11.TokenUnavailable`) counts as the store's unavailability too."""

from __future__ import annotations

import re

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from twisted.logger import Logger
from twisted.python.failure import Failure

from kcm.core.keys import L1Error

#: What the causes' messages are cut to in a log line.
_MAX_WHY = 120
#: An unusable L1's reason names the token and what failed: it is cut longer.
_MAX_L1_WHY = 240
#: PostgreSQL's SQLSTATE for a write in a read-only transaction: the session takes no
#: writes (a standby; ``default_transaction_read_only`` set for the database or role).
_READ_ONLY_SQLSTATE = "25006"
#: The reason given for it.
READ_ONLY = "the database is read-only (a standby, or default_transaction_read_only)"


class SchemaMoved(Exception):
    """The database's schema is not the one this process writes (upgraded under it). Its
    reason says what to do, and is not cut to :data:`_MAX_WHY`."""


class StoreStopped(RuntimeError):
    """The store was asked for work before it started or after it stopped (at a stop, what
    was queued behind a store that did not answer: a state sweep, a request's audit
    record)."""


class WriteInReadTransaction(RuntimeError):
    """A write refused (SQLSTATE 25006) inside a read-only transaction that the store
    opened itself (``SET TRANSACTION READ ONLY``): a read path that wrote, a bug, whatever
    the database's own state; not the store's unavailability. The refusal is its cause."""


def read_transaction_refused(error: BaseException) -> BaseException:
    """``error`` as raised by a transaction the store opened read-only: PostgreSQL's
    refusal of a write there is a :class:`WriteInReadTransaction` (raise it ``from``
    ``error``), any other error itself."""
    if read_only(error):
        return WriteInReadTransaction(
            "a write in a read-only transaction of the store (a read path wrote)")
    return error


def store_unavailable(error: BaseException) -> str | None:
    """A short ASCII reason when ``error`` says the database could not be used (a SQLite
    file locked or full, a PostgreSQL server gone or read-only, the store stopped:
    :class:`StoreStopped`)
    or L1 could not (an :class:`~kcm.core.keys.L1Error` at run time); None for any other
    error."""
    if isinstance(error, StoreStopped):
        return "the store is not running"
    if isinstance(error, L1Error) or isinstance(getattr(error, "orig", None), SchemaMoved):
        why = str(getattr(error, "orig", None) or error)
        why = why.encode("ascii", "replace").decode("ascii")[:_MAX_L1_WHY]
        return why or type(error).__name__
    if read_only(error):
        return READ_ONLY
    if not isinstance(error, (OperationalError, InterfaceError)) and not (
            isinstance(error, DBAPIError) and error.connection_invalidated):
        return None
    why = first_line(getattr(error, "orig", None) or error) if str(error) else ""
    why = why.encode("ascii", "replace").decode("ascii")[:_MAX_WHY]
    return why or type(error).__name__


_EVERY_HOST_FAILED = "Multiple connection attempts failed"
_HOST_FAILED = re.compile(r"^- host: '([^']*)', port: '([^']*)'.* failed: (.*)$")


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name if it has none); for libpq's
    failure of a URL of several hosts (``host=a&host=b``), whose first line names only the
    last host tried, each host and why it failed: ``no host took the session: a:5432
    Connection refused; b:5432 session is read-only``."""
    text = str(error)
    if not text:
        return type(error).__name__
    lines = text.splitlines()
    if any(line.startswith(_EVERY_HOST_FAILED) for line in lines):
        hosts = [f"{m[1]}:{m[2]} {m[3]}" for m in map(_HOST_FAILED.match, lines) if m]
        if hosts:
            return "no host took the session: " + "; ".join(hosts)
    return lines[0]


def read_only(error: BaseException) -> bool:
    """Whether ``error`` is PostgreSQL's refusal of a write in a read-only session."""
    return isinstance(error, DBAPIError) and getattr(
        error.orig, "sqlstate", None) == _READ_ONLY_SQLSTATE


def store_unavailable_message(correlation_id: str) -> str:
    """The Result Message of a General Failure that the key store's unavailability caused."""
    return f"the key store is unavailable; try again (correlation id {correlation_id})"


def log_failure(log: Logger, failure: Failure, what: str) -> None:
    """Log that ``what`` failed: one line when the store is unavailable (it recurs until
    the store is back), with its traceback for any other error."""
    unavailable = store_unavailable(failure.value)
    if unavailable is None:
        log.failure("{what} failed", failure, what=what)
    else:
        log.error("{what} failed: the key store is unavailable ({why})", what=what,
                  why=unavailable)
