"""A ``database`` URL of several hosts (libpq's ``host=a&host=b``, as for a failover): when
none takes the session, the error's first line names only the last host tried (during a
failover drill: ``... port 55671 failed: session is read-only``, the standby), so the
log's `the key store is unavailable (...)` lines and ``/readyz`` told of a read-only
database while the primary was down. Both now name every host and why it failed."""

from __future__ import annotations

import sqlalchemy.exc

from kcm.core.metrics import _first_line
from kcm.core.store.unavailable import first_line, store_unavailable

#: psycopg 3's message for a URL of two hosts, neither taking a read-write session.
_BOTH_FAILED = (
    'connection failed: connection to server at "127.0.0.1", port 55671 failed: session is '
    "read-only\n"
    "Multiple connection attempts failed. All failures were:\n"
    "- host: '127.0.0.1', port: '42093', hostaddr: '127.0.0.1': connection failed: connection"
    ' to server at "127.0.0.1", port 42093 failed: Connection refused\n'
    "\tIs the server running on that host and accepting TCP/IP connections?\n"
    "- host: '127.0.0.1', port: '55671', hostaddr: '127.0.0.1': connection failed: connection"
    ' to server at "127.0.0.1", port 55671 failed: session is read-only'
)
_SUMMARY = ("no host took the session: 127.0.0.1:42093 Connection refused; "
            "127.0.0.1:55671 session is read-only")


class _DriverError(Exception):
    pass


def _error(text: str) -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError(None, None, _DriverError(text))


def test_every_host_and_why_it_failed_is_named_in_the_log_and_readiness() -> None:
    error = _error(_BOTH_FAILED)
    assert store_unavailable(error) == _SUMMARY
    assert _first_line(error) == _SUMMARY


def test_a_single_host_failure_is_its_first_line_as_before() -> None:
    error = _error('connection failed: connection to server at "db", port 5432 failed: '
                   "Connection refused\n\tIs the server running on that host?")
    assert store_unavailable(error) == ('connection failed: connection to server at "db", '
                                        "port 5432 failed: Connection refused")
    assert first_line(ValueError()) == "ValueError"
