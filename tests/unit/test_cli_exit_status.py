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
