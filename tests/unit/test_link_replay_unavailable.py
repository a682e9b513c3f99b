"""A gateway linking while the core's database is gone or read-only (a PostgreSQL failover):
the core's replay of its events fails, and it was logged critical with a traceback for each
gateway's attempt (four in 0.4 s for one gateway of two workers in the failover drill). The
key store's unavailability is now one error line saying so; any other failure keeps its
traceback. Either way the link is closed for the gateway to link again."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy.exc
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from kcm.core.link_server import LinkServerFactory
from kcm.identity import SubjectMap
from kcm.link.frames import Frame, FrameType, encode_frame
from tests.core_support import LINEAGE
from tests.unit.test_link_cancel import GATEWAY, TD, RecordingHandler, frames_in, hello


class FailingEvents:
    """An event fan-out whose replay fails with the given error."""

    head = 0
    settled = 0
    stale = False
    on_settled: set = set()

    def __init__(self, error: Callable[[], Exception]) -> None:
        self.error = error

    def committed(self) -> int:
        return 0

    def replay(self, after: int) -> Deferred:
        return fail(self.error())

    def unsubscribe(self, link: object) -> None:
        pass


def _replay_with(error: Callable[[], Exception]) -> tuple[list[dict], list[Frame]]:
    clock = Clock()
    factory = LinkServerFactory(handler=RecordingHandler(clock), store=None, keyring=None,
                                fanout=FailingEvents(error),
                                resolve_peer=lambda transport: GATEWAY, trust_domain=TD,
                                subject_map=SubjectMap({}), clock=clock,
                                lineage=lambda: LINEAGE)
    with capturedLogs() as events:
        protocol, transport = hello(factory)
        frames_in(transport)  # (WELCOME)
        protocol.dataReceived(encode_frame(Frame(FrameType.PONG)))  # starts the events
    return list(events), frames_in(transport)


def _database_read_only() -> Exception:
    return sqlalchemy.exc.OperationalError(
        "SELECT", {}, Exception('connection to server at "127.0.0.1", port 5433 failed: '
                                "session is read-only"))


def test_a_replay_the_database_refuses_is_one_line_saying_so_and_closes_the_link() -> None:
    events, frames = _replay_with(_database_read_only)
    replays = [e for e in events if "replaying events" in formatEvent(e)]
    assert len(replays) == 1, [formatEvent(e) for e in events]
    assert replays[0]["log_level"] == LogLevel.error
    assert "log_failure" not in replays[0]
    assert formatEvent(replays[0]).endswith(
        'failed: the key store is unavailable (connection to server at "127.0.0.1", '
        'port 5433 failed: session is read-only)')
    assert [f.type for f in frames][-1] == FrameType.GOAWAY


def test_any_other_replay_failure_keeps_its_traceback() -> None:
    events, frames = _replay_with(lambda: ValueError("a bug"))
    replays = [e for e in events if "replaying events" in formatEvent(e)]
    assert len(replays) == 1
    assert replays[0]["log_level"] == LogLevel.critical
    assert isinstance(replays[0]["log_failure"].value, ValueError)
    assert [f.type for f in frames][-1] == FrameType.GOAWAY
