"""Which errors end `kcm` with 75 (unavailable now, try again) and which with 2
(kcm.cli.exit_status)."""

from __future__ import annotations

import sqlite3
import ssl

import psycopg
from sqlalchemy.exc import OperationalError

from kcm.cli import CommandError
from kcm.cli.exit_status import exit_status
from kcm.conformance.client import KmipClientError, _handshake_temporary, temporary


def caused(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


def no_such_table() -> sqlite3.OperationalError:
    a = sqlite3.connect(":memory:")
    try:
        a.execute("SELECT * FROM nowhere")
    except sqlite3.OperationalError as e:
        return e
    raise AssertionError


def test_a_database_or_server_unavailable_now_is_75_whatever_wraps_it() -> None:
    busy = sqlite3.OperationalError("database is locked")
    assert exit_status(caused(CommandError("database x: database is locked"), busy)) == 75
    wrapped = OperationalError("SELECT 1", {}, psycopg.OperationalError(
        "connection failed: Connection refused"))
    assert exit_status(caused(CommandError("database x: ..."), wrapped)) == 75
    assert exit_status(temporary(KmipClientError("cannot connect"))) == 75
    assert _handshake_temporary(TimeoutError()) and _handshake_temporary(ssl.SSLEOFError())


def test_anything_else_is_2() -> None:
    assert exit_status(CommandError("no tenant 'x'")) == 2
    assert exit_status(caused(CommandError("no such table"), no_such_table())) == 2
    assert exit_status(OperationalError("x", {}, psycopg.OperationalError(
        'connection failed: FATAL:  password authentication failed for user "kcm"'))) == 2
    assert exit_status(KmipClientError("response header 00 is not a TTLV message")) == 2
    assert not _handshake_temporary(ssl.SSLCertVerificationError("certificate verify failed"))
    assert exit_status(ValueError("x")) == 2


def _pg(text: str) -> BaseException:
    """A connection's failure as the commands see it (no SQLSTATE: libpq's text)."""
    return caused(CommandError("database x: ..."), OperationalError(
        "SELECT 1", {}, psycopg.OperationalError(text)))


def test_postgresql_refusing_for_good_is_2_and_only_a_server_unavailable_now_75() -> None:
    at = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
    for text in ("FATAL:  role \"kcm\" is not permitted to log in",
                 "server does not support SSL, but SSL was required",
                 "fe_sendauth: no password supplied",
                 'FATAL:  pg_hba.conf rejects connection for host "10.0.0.1", user "kcm"',
                 "SSL error: certificate verify failed",
                 "failed to resolve host 'db.exmaple.com': [Errno -2] Name or service not "
                 "known"):
        assert exit_status(_pg(at + text)) == 2, text
    for text in ("Connection refused\n\tIs the server running on that host and accepting "
                 "TCP/IP connections?",
                 "timeout expired",
                 "FATAL:  the database system is starting up",
                 "FATAL:  the database system is shutting down",
                 "FATAL:  sorry, too many clients already",
                 "server closed the connection unexpectedly",
                 "failed to resolve host 'db': [Errno -3] Temporary failure in name "
                 "resolution"):
        assert exit_status(_pg(at + text)) == 75, text
    assert exit_status(_pg('connection failed: connection to server on socket '
                           '"/run/postgresql/.s.PGSQL.5432" failed: No such file or '
                           'directory\n\tIs the server running locally and accepting '
                           'connections on that socket?')) == 75
