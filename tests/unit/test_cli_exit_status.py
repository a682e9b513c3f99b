"""Which errors end `kcm` with 75 (unavailable now, try again) and which with 2
(kcm.cli.exit_status)."""

from __future__ import annotations

import socket
import sqlite3
import ssl

import psycopg
import pytest
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


def _sqlite(code: int) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError("database is busy")
    error.sqlite_errorcode = code
    return error


def test_sqlite_busy_or_locked_extended_codes_too_are_75() -> None:
    for code in (5, 6, 261, 517, 773, 262):  # BUSY, LOCKED, BUSY_RECOVERY, _SNAPSHOT ...
        assert exit_status(caused(CommandError("x"), _sqlite(code))) == 75, code
    assert exit_status(caused(CommandError("x"), _sqlite(14))) == 2  # CANTOPEN


def test_postgresql_sqlstates_of_a_server_that_may_take_the_command_later_are_75() -> None:
    for state in ("08006", "53300", "40001", "40P01", "57P01", "57P02", "57P03", "55P03",
                  "57014", "25006"):
        error = psycopg.errors.lookup(state)("x")
        assert exit_status(caused(CommandError("x"), error)) == 75, state
    for state in ("42P01", "23505", "28P01", "3D000", "25P02", "0A000"):
        error = psycopg.errors.lookup(state)("x")
        assert exit_status(caused(CommandError("x"), error)) == 2, state


def test_a_unix_socket_postgresql_may_not_be_reached_through_is_2() -> None:
    # (libpq adds "Is the server running ..." to this one too)
    assert exit_status(_pg('connection failed: connection to server on socket '
                           '"/run/postgresql/.s.PGSQL.5432" failed: Permission denied\n\tIs '
                           'the server running locally and accepting connections on that '
                           'socket?')) == 2


def test_a_connection_sqlalchemy_found_broken_is_75() -> None:
    from sqlalchemy.exc import DBAPIError

    broken = DBAPIError("SELECT 1", {}, RuntimeError("gone"), connection_invalidated=True)
    assert exit_status(broken) == 75
    assert exit_status(DBAPIError("SELECT 1", {}, RuntimeError("gone"))) == 2


def test_an_error_raised_while_handling_one_unavailable_now_is_75_unless_from_none() -> None:
    def handled(suppress: bool) -> BaseException:
        try:
            try:
                raise sqlite3.OperationalError("database is locked")
            except sqlite3.OperationalError:
                if suppress:
                    raise CommandError("bad input") from None
                raise CommandError("database x: database is locked")  # noqa: B904
        except CommandError as e:
            return e
        raise AssertionError

    assert exit_status(handled(False)) == 75
    assert exit_status(handled(True)) == 2  # (what it said it hid on purpose)


def test_a_cycle_of_causes_ends() -> None:
    a, b = CommandError("a"), CommandError("b")
    a.__cause__, b.__cause__ = b, a
    assert exit_status(a) == 2


def _resolver(errno: int, text: str):
    def getaddrinfo(*args, **kwargs):
        raise socket.gaierror(errno, text)
    return getaddrinfo


_DOWN = (socket.EAI_AGAIN, "Temporary failure in name resolution")
_UNKNOWN = (socket.EAI_NONAME, "Name or service not known")


def test_a_kmip_server_name_the_resolver_cannot_look_up_now_is_75_one_unknown_2(
        tmp_path, monkeypatch) -> None:
    # What `kcm key` raises (kcm.client's failover connection, one server or two), from
    # the gaierror getaddrinfo raises: a resolver down may answer later, an unknown name not.
    from kcm.client.endpoints import FailoverConnection, TlsFiles
    from kcm.pki import init_pki

    pki = init_pki(tmp_path / "pki")
    tls = TlsFiles(pki.app.cert, pki.app.key, pki.ca.cert)
    for (errno, text), status in ((_DOWN, 75), (_UNKNOWN, 2)):
        monkeypatch.setattr(socket, "getaddrinfo", _resolver(errno, text))
        for servers in (["kmip.example:5696"], ["kmip.example:5696", "kmip2.example:5696"]):
            with pytest.raises(KmipClientError) as raised:
                FailoverConnection(servers, tls, timeout=5).send(b"")
            assert text in str(raised.value)
            assert exit_status(caused(CommandError(str(raised.value)), raised.value)) == \
                status, (text, servers)


def test_a_postgresql_host_name_the_resolver_cannot_look_up_now_is_75_one_unknown_2(
        monkeypatch) -> None:
    # psycopg looks the name up itself (getaddrinfo) and says so in its OperationalError.
    import sqlalchemy

    for (errno, text), status in ((_DOWN, 75), (_UNKNOWN, 2)):
        monkeypatch.setattr(socket, "getaddrinfo", _resolver(errno, text))
        engine = sqlalchemy.create_engine("postgresql+psycopg://kcm@db.example/kcm")
        try:
            with pytest.raises(OperationalError) as raised, engine.connect():
                pass
        finally:
            engine.dispose()
        assert text in str(raised.value)
        assert exit_status(caused(CommandError("database x: ..."), raised.value)) == status


def test_a_gaierror_itself_is_75_only_for_a_resolver_down() -> None:
    assert exit_status(socket.gaierror(*_DOWN)) == 75
    assert exit_status(socket.gaierror(*_UNKNOWN)) == 2
    assert exit_status(socket.gaierror(socket.EAI_FAIL, "Non-recoverable failure")) == 2


def test_a_failure_answer_is_1_or_75_if_the_server_says_it_passes() -> None:
    from kcm.cli.exit_status import answer_status
    from kcm.core.request_handler import expired_message
    from kcm.core.request_rates import throttled_message
    from kcm.core.store.unavailable import store_unavailable_message
    from kcm.gateway.l3_cache import FETCHES_BUSY

    for passing in (throttled_message(1, 0.42), throttled_message(0.5, 7),
                    store_unavailable_message("c1"), expired_message(5, False, "c2"),
                    FETCHES_BUSY, "the tenant key was retired less than 60 s ago; try again "
                    "later"):
        assert answer_status(passing) == 75, passing
    for failing in ("tenant demo is at its bound of 10 stored objects "
                    "(max_objects_per_tenant)", "object x is not found",
                    "the batch has 3 items; the most is 2", "", "to retry in 5 s"):
        assert answer_status(failing) == 1, failing


def test_a_failure_answer_echoing_the_client_s_words_is_not_75() -> None:
    """An identifier or a name the client gave, echoed in a failure that no retry passes
    (Object Not Found ``no object x; try again``, an unknown attribute name), is 1: a script
    would otherwise retry it for ever. Only the servers' passing forms, at the message's
    end and of their reasons, are 75."""
    from kcm.cli.exit_status import answer_status
    from kcm.core.request_handler import expired_message
    from kcm.core.request_rates import throttled_message
    from kcm.core.store.unavailable import store_unavailable_message
    from kcm.gateway.l3_cache import FETCHES_BUSY
    from kcm.kernel.missing import object_not_found
    from kcm.kmip.enums import ResultReason

    for uid in ("x; try again", "x; retry in 1 s", "a; try again; b"):
        refused = object_not_found(uid)
        assert answer_status(refused.message, refused.reason) == 1, refused.message
    assert answer_status("unknown attribute name 'x; try again'",
                         ResultReason.INVALID_FIELD) == 1
    assert answer_status("object 'x; try again later' was destroyed; its key material "
                         "is gone", ResultReason.GENERAL_FAILURE) == 1
    assert answer_status("no object x; try again", ResultReason.GENERAL_FAILURE) == 75
    for reason, passing in (
            (ResultReason.SERVER_LIMIT_EXCEEDED, throttled_message(10, 0.3)),
            (ResultReason.FEATURE_NOT_SUPPORTED, throttled_message(10, 0.3)),  # (1.x)
            (ResultReason.GENERAL_FAILURE, store_unavailable_message("c1")),
            (ResultReason.GENERAL_FAILURE, expired_message(5, True, "c2")),
            (ResultReason.GENERAL_FAILURE, FETCHES_BUSY),
            (ResultReason.WRONG_KEY_LIFECYCLE_STATE,
             "the tenant key was retired less than 60 s ago; try again later")):
        assert answer_status(passing, reason) == 75, passing
        assert answer_status(passing, int(reason)) == 75, passing
    assert answer_status(throttled_message(10, 0.3), ResultReason.OBJECT_NOT_FOUND) == 1


def test_a_missing_postgresql_database_says_what_to_do(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``kcm core init`` on a PostgreSQL URL whose database was never created printed
    SQLAlchemy's wrapping (``OperationalError: (psycopg.OperationalError) ... (Background on
    this error at: https://sqlalche.me/...)``), and the other commands called the missing
    database a missing schema, which ``kcm core init`` creates: it does not create the
    database."""
    from kcm.cli import core_cmd, database_error, main
    from kcm.core.store.engine import Store

    text = ('connection failed: connection to server at "127.0.0.1", port 5432 failed: '
            'FATAL:  database "kcm" does not exist')

    def fails(*args: object, **kwargs: object) -> None:
        raise OperationalError("SELECT 1", {}, psycopg.OperationalError(text))

    assert "CREATE DATABASE kcm OWNER" in database_error(text)
    assert database_error("FATAL:  password authentication failed") == (
        "FATAL:  password authentication failed")
    monkeypatch.setattr(core_cmd, "existing_database", fails)
    assert main(["core", "tenant", "list", "-c", "etc/kcm-core.toml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kcm core tenant list: error: database: connection failed"), err
    assert "sqlalche.me" not in err and "kcm core init creates the schema, not the " \
        "database: create it first (CREATE DATABASE kcm OWNER" in err, err
    monkeypatch.setattr(Store, "run_sync", fails)
    with pytest.raises(core_cmd.CommandError, match="not the database: create it first"):
        core_cmd.run_in_store(Store("postgresql+psycopg://kcm@db/kcm"), lambda s: None)
