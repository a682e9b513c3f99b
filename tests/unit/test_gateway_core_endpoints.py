"""The gateway's list of cores: which it tries first, failover, and the ``core`` setting."""

from __future__ import annotations

import pytest
from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from kcm.gateway.config import ConfigError, load_config
from kcm.gateway.core_endpoints import CoreFailoverEndpoint, with_connect_timeout


class FakeEndpoint:
    def __init__(self, up: bool) -> None:
        self.up = up
        self.attempts = 0
        self.loaded = False

    def load(self) -> None:
        self.loaded = True

    def connect(self, factory: Factory):
        self.attempts += 1
        if self.up:
            return succeed(factory.buildProtocol(None))
        return fail(ConnectionRefusedError("down"))


def _endpoints(*up: bool) -> list[FakeEndpoint]:
    return [FakeEndpoint(u) for u in up]


def connect(endpoint: CoreFailoverEndpoint) -> list:
    results: list = []
    endpoint.connect(Factory.forProtocol(Protocol)).addBoth(results.append)
    return results


def test_listed_order_starts_with_the_first_core_and_stays_on_it() -> None:
    cores = _endpoints(True, True, True)
    endpoint = CoreFailoverEndpoint(cores, ["a", "b", "c"], order="listed")
    assert isinstance(connect(endpoint)[0], Protocol)
    assert isinstance(connect(endpoint)[0], Protocol)
    assert [c.attempts for c in cores] == [2, 0, 0]
    assert endpoint.current_name == "a"


def test_an_unreachable_core_fails_over_to_the_next_in_one_attempt() -> None:
    cores = _endpoints(True, False, True)
    endpoint = CoreFailoverEndpoint(cores, ["a", "b", "c"], order="listed")
    endpoint.current = 1
    assert isinstance(connect(endpoint)[0], Protocol)
    assert [c.attempts for c in cores] == [0, 1, 1]
    assert endpoint.current_name == "c"  # and it stays there
    cores[1].up = True
    connect(endpoint)
    assert [c.attempts for c in cores] == [0, 1, 2]


def test_no_core_reachable_fails_after_one_round_with_the_last_error() -> None:
    cores = _endpoints(False, False)
    endpoint = CoreFailoverEndpoint(cores, ["a", "b"], order="listed")
    result = connect(endpoint)[0]
    assert result.check(ConnectionRefusedError)
    assert [c.attempts for c in cores] == [1, 1]
    assert endpoint.current_name == "a"


def test_a_core_reached_but_of_no_use_counts_as_failed_and_the_next_is_tried() -> None:
    """A hung core completes the TCP connection (so connect succeeds) and never the link:
    the link client reports the attempt failed, and the next connect starts at the next
    core, at once while the round of the list lasts."""
    cores = _endpoints(True, True, True)
    endpoint = CoreFailoverEndpoint(cores, ["a", "b", "c"], order="listed")
    connect(endpoint)
    assert endpoint.attempt_failed("no WELCOME", 1) is True
    assert endpoint.current_name == "b"
    connect(endpoint)
    assert [c.attempts for c in cores] == [1, 1, 0]
    assert endpoint.attempt_failed("no WELCOME", 2) is True
    assert endpoint.attempt_failed("no WELCOME", 3) is False  # round over: back off
    assert endpoint.current_name == "a"


def test_a_single_core_reached_but_of_no_use_is_tried_again_after_backoff() -> None:
    endpoint = CoreFailoverEndpoint(_endpoints(True), ["a"], order="listed")
    assert endpoint.attempt_failed("no WELCOME", 1) is False
    assert endpoint.current_name == "a"


def test_spread_order_starts_at_a_random_core() -> None:
    picks = [CoreFailoverEndpoint(_endpoints(True, True, True), ["a", "b", "c"],
                                  random_index=lambda n, i=i: i % n).current_name
             for i in range(3)]
    assert picks == ["a", "b", "c"]


def test_load_reads_every_cores_tls_files() -> None:
    cores = _endpoints(True, True)
    CoreFailoverEndpoint(cores, ["a", "b"]).load()
    assert all(c.loaded for c in cores)


def test_connect_timeout_is_added_unless_named() -> None:
    assert with_connect_timeout("tcp:h:1") == "tcp:h:1:timeout=3"
    assert with_connect_timeout("tcp:h:1:timeout=9") == "tcp:h:1:timeout=9"
    assert with_connect_timeout("unix:/x") == "unix:/x"


def test_core_setting_takes_a_string_a_list_or_commas(tmp_path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[gateway]\ncore = ["tcp:a:1", "tcp:b:1"]\ncore_order = "listed"\n')
    config = load_config(path)
    assert config.core == ("tcp:a:1", "tcp:b:1") and config.core_order == "listed"
    path.write_text('[gateway]\ncore = "tcp:a:1"\n')
    assert load_config(path).core == ("tcp:a:1",)
    assert load_config(None, {"core": "tcp:a:1, tcp:b:2"}).core == ("tcp:a:1", "tcp:b:2")
    for bad in ([], "tcp:a:1,tcp:a:1", [3]):
        with pytest.raises(ConfigError, match="gateway.core"):
            load_config(None, {"core": bad})
    with pytest.raises(ConfigError, match="core_order"):
        load_config(None, {"core_order": "nearest"})


# Why a gateway cannot link: logged, rate-limited ----------------------------------------------

@pytest.fixture
def logged():
    seen: list[tuple[str, str]] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "kcm.gateway.core_endpoints":
            seen.append((event["log_level"].name, formatEvent(event)))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def test_a_single_core_that_cannot_be_reached_is_warned_about_rate_limited(logged) -> None:
    """The defect: with one core a failure was logged nowhere but in Twisted's "Scheduling
    retry ... <CoreFailoverEndpoint object at 0x...>"; now a warning with the core and the
    error, the first at once, then at most one every FAILURE_LOG_INTERVAL, and one line when
    the link is made again."""
    clock = Clock()
    core = FakeEndpoint(False)
    endpoint = CoreFailoverEndpoint([core], ["tcp:core1:5697"], clock=clock)
    for _ in range(100):  # a failed attempt every second (the link's back-off cap)
        connect(endpoint)
        clock.advance(1)
    assert [level for level, _ in logged] == ["warn"] * 4  # at 0, 30, 60 and 90 s
    assert logged[0][1] == ("cannot link to core tcp:core1:5697: Connection was refused by "
                            "other side: down.")
    assert logged[1][1].endswith("(31 failed attempts in 30s)")
    # A core reached but not linked (TLS refused, no WELCOME) counts the same; an error
    # not logged yet in this spell is logged at once (not "connection refused" for 30 s
    # more), then at most one line every FAILURE_LOG_INTERVAL again.
    endpoint.attempt_failed("certificate verify failed")
    assert len(logged) == 5
    assert logged[-1][1] == ("cannot link to core tcp:core1:5697: certificate verify failed "
                             "(101 failed attempts in 100s)")
    clock.advance(29)
    endpoint.attempt_failed("certificate verify failed")
    connect(endpoint)  # (an error logged before in this spell: not logged at once)
    assert len(logged) == 5
    clock.advance(1)
    endpoint.attempt_failed("certificate verify failed")
    assert len(logged) == 6
    assert logged[-1][1].startswith("cannot link to core tcp:core1:5697: certificate verify "
                                    "failed (104 failed attempts in 130s)")
    del logged[:]
    endpoint.linked()
    assert logged == [("info", "core tcp:core1:5697 reached again after 104 failed attempt(s) "
                               "in 130s")]
    # The next outage is warned about at once again.
    connect(endpoint)
    assert logged[-1] == ("warn", "cannot link to core tcp:core1:5697: Connection was refused "
                                  "by other side: down.")


def test_a_link_made_without_failures_logs_nothing(logged) -> None:
    endpoint = CoreFailoverEndpoint(_endpoints(True), ["tcp:core1:5697"], clock=Clock())
    connect(endpoint)
    endpoint.linked()
    assert logged == []


def test_failing_over_names_the_core_the_error_and_the_next(logged) -> None:
    clock = Clock()
    endpoint = CoreFailoverEndpoint(_endpoints(False, True), ["tcp:a:1", "tcp:b:1"],
                                    order="listed", clock=clock)
    connect(endpoint)
    assert logged[0] == ("warn", "cannot link to core tcp:a:1: Connection was refused by other "
                                 "side: down.; trying tcp:b:1")


def test_every_move_to_another_core_is_logged(logged) -> None:
    """Failovers are never hidden by the rate limit of one core's failures."""
    clock = Clock()
    endpoint = CoreFailoverEndpoint(_endpoints(True, True), ["tcp:a:1", "tcp:b:1"],
                                    order="listed", clock=clock)
    connect(endpoint)
    endpoint.attempt_failed("its heartbeats stopped")
    clock.advance(1)
    endpoint.attempt_failed("no WELCOME in 2 s")
    assert [line for _, line in logged] == [
        "cannot link to core tcp:a:1: its heartbeats stopped; trying tcp:b:1",
        "cannot link to core tcp:b:1: no WELCOME in 2 s; trying tcp:a:1 (2 failed attempts "
        "in 1s)"]


def test_twisteds_retry_lines_name_the_cores() -> None:
    """ClientService logs "Scheduling retry N to connect {endpoint} ...": the cores, not an
    object's address."""
    assert str(CoreFailoverEndpoint(_endpoints(True), ["tcp:core1:5697"])) == \
        "core tcp:core1:5697"
    two = CoreFailoverEndpoint(_endpoints(True, True), ["tcp:a:1", "tcp:b:1"], order="listed")
    assert repr(two) == "cores tcp:a:1, tcp:b:1 (next tcp:a:1)"


def test_after_a_drain_the_next_link_goes_to_the_next_core_with_no_warning() -> None:
    """A core that stops sends DRAIN; the gateway tried that core first again, and logged
    ``cannot link to core ...: Connection refused; trying ...`` at every rolling restart."""
    from kcm.link.frames import Frame, FrameType, encode_frame
    from tests.unit.test_link_drain import gateway_link, welcomed

    cores = _endpoints(False, True, True)
    endpoint = CoreFailoverEndpoint(cores, ["a", "b", "c"], order="listed")
    lines: list[str] = []
    observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        endpoint.drained()
        assert endpoint.current_name == "b"
        assert isinstance(connect(endpoint)[0], Protocol)
        assert [c.attempts for c in cores] == [0, 1, 0]
        assert not [line for line in lines if "cannot link" in line], lines
    finally:
        globalLogPublisher.removeObserver(observer)
    single = CoreFailoverEndpoint(_endpoints(True), ["a"])
    single.drained()
    assert single.current_name == "a"

    client = gateway_link(Clock())
    moved: list[None] = []
    client._endpoint.drained = lambda: moved.append(None)  # type: ignore[attr-defined]
    old, _ = welcomed(client)
    old.dataReceived(encode_frame(Frame(FrameType.DRAIN, error="the core is stopping")))
    assert moved == [None]
    client.stopService()


def test_new_errors_logged_at_once_are_bounded_then_rate_limited(logged) -> None:
    """An error that changes with every attempt (a number in it) is not a line an attempt:
    at most FAILURE_REASONS_LOGGED new ones at once in a spell, then the interval."""
    from kcm.gateway.core_endpoints import FAILURE_REASONS_LOGGED

    clock = Clock()
    endpoint = CoreFailoverEndpoint([FakeEndpoint(False)], ["tcp:core1:5697"], clock=clock)
    for attempt in range(50):
        endpoint.attempt_failed(f"handshake failed at byte {attempt}")
        clock.advance(0.1)
    assert len(logged) == FAILURE_REASONS_LOGGED
    clock.advance(30)
    endpoint.attempt_failed("handshake failed at byte 99")
    assert len(logged) == FAILURE_REASONS_LOGGED + 1
