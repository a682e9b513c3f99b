"""The check that a core's PostgreSQL connections are sessions of their own
(:mod:`kcm.core.session_pinning`), on connections whose server session pid is scripted: a
pooler in transaction mode lends one server session to two connections, or moves one
connection between server sessions."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from kcm.core.session_pinning import REFUSAL, unpinned


class ScriptedConnection:
    """A psycopg connection whose ``SELECT pg_backend_pid()`` answers the pids given."""

    def __init__(self, pids: list[int]) -> None:
        self._pids = iter(pids)
        self.autocommit = True
        self.rollbacks = 0
        self.closed = False

    def execute(self, statement: str) -> ScriptedConnection:
        assert statement == "SELECT pg_backend_pid()"
        self._answer = next(self._pids)
        return self

    def fetchone(self) -> tuple[int]:
        return (self._answer,)

    def rollback(self) -> None:
        self.rollbacks += 1

    def close(self) -> None:
        self.closed = True


def connections(*pids: list[int]) -> tuple[Callable[[], ScriptedConnection],
                                             list[ScriptedConnection]]:
    opened: list[ScriptedConnection] = []
    scripted: Iterator[list[int]] = iter(pids)

    def connect() -> ScriptedConnection:
        opened.append(ScriptedConnection(next(scripted)))
        return opened[-1]

    return connect, opened


def test_sessions_of_their_own_pass_every_round_on_two_connections() -> None:
    # Six connections (two a round) cost a start a minute where the URL's first host did
    # not answer at all (10 s each), and 56 round trips where the database was far.
    connect, opened = connections([10, 10, 10, 10, 10, 10], [20, 20, 20])
    assert unpinned(connect) is None
    assert len(opened) == 2 and all(c.closed for c in opened)
    assert opened[1].rollbacks == 3 and not opened[1].autocommit


def test_one_server_session_lent_to_two_connections_is_refused() -> None:
    connect, opened = connections([10, 10], [10])
    reason = unpinned(connect)
    assert reason == f"{REFUSAL}; server session 10 served two connections"
    assert all(c.closed for c in opened)


def test_a_connection_moved_to_another_server_session_is_refused() -> None:
    # Pinned by chance twice, then the pooler lends the first connection another session.
    connect, _ = connections([10, 10, 11, 11, 12, 30], [20, 21, 22])
    assert unpinned(connect) == f"{REFUSAL}; one connection moved from server session 12 to 30"


class _ServerError(Exception):
    """A psycopg error as the driver raises it: its SQLSTATE in ``sqlstate``."""

    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def test_only_a_protocol_violation_is_taken_for_a_statement_pooler(monkeypatch) -> None:
    """A pooler in statement mode refuses the check's transaction (SQLSTATE 08P01): the
    start is refused in words that say so. Any other error (the server down, a password
    refused) is raised as it is, not called a pooler."""
    import pytest

    from kcm.core import session_pinning
    from kcm.core.service import StartupError

    class Store:
        url = "postgresql+psycopg://kcm@db.invalid/kcm"
        engine = object()

    def failing(error: Exception) -> None:
        def connect(_engine: object) -> None:
            raise error
        monkeypatch.setattr(session_pinning, "own_connection", connect)

    failing(_ServerError("transaction blocks not allowed in statement pooling mode\nmore",
                         "08P01"))
    with pytest.raises(StartupError) as caught:
        session_pinning.SessionPinning(Store()).startService()
    assert str(caught.value) == (f"{REFUSAL}; the server refused a transaction: "
                                 "transaction blocks not allowed in statement pooling mode")
    down = _ServerError("connection refused", "08006")
    failing(down)
    with pytest.raises(_ServerError) as raised:
        session_pinning.SessionPinning(Store()).startService()
    assert raised.value is down
