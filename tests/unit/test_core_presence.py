"""The cores counted on the database (kcm.core.core_presence), on SQLite in memory and a
task.Clock; each tenant's rate shared between them (kcm.core.request_rates)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, select
from twisted.internet import task
from twisted.internet.defer import fail, succeed
from twisted.logger import globalLogPublisher

from kcm.core.core_presence import (
    ANNOUNCE_INTERVAL,
    LIVE_S,
    PRUNE_S,
    CorePresence,
    announce,
    core_id,
    leave,
)
from kcm.core.request_rates import TenantRates
from kcm.core.store.schema import CorePresenceRow


@pytest.fixture
def connection():
    engine = create_engine("sqlite://")
    CorePresenceRow.__table__.create(engine)
    with engine.connect() as connection, connection.begin():
        yield connection
    engine.dispose()


def _rows(connection) -> dict[str, int]:
    return {core: seen for core, seen in connection.execute(
        select(CorePresenceRow.core, CorePresenceRow.last_seen))}


def test_each_core_counts_those_seen_within_live_s_itself_included(connection) -> None:
    assert announce(connection, "a", 1000.0) == 1
    assert announce(connection, "b", 1002.0) == 2
    assert announce(connection, "a", 1005.0) == 2  # (its own row renewed, not a second)
    assert _rows(connection) == {"a": 1_005_000, "b": 1_002_000}
    # b stopped announcing: counted until its row is LIVE_S old, not after.
    assert announce(connection, "a", 1002.0 + LIVE_S) == 2
    assert announce(connection, "a", 1002.0 + LIVE_S + 0.001) == 1
    # ... and its row deleted once PRUNE_S old.
    assert set(_rows(connection)) == {"a", "b"}
    assert announce(connection, "a", 1002.0 + PRUNE_S + 0.001) == 1
    assert set(_rows(connection)) == {"a"}


def test_a_core_that_leaves_is_counted_out_at_once(connection) -> None:
    announce(connection, "a", 1000.0)
    announce(connection, "b", 1000.0)
    leave(connection, "b")
    assert announce(connection, "a", 1001.0) == 1
    leave(connection, "gone")  # (a row already pruned: nothing to do)


def test_core_ids_differ_per_process_start() -> None:
    assert core_id() != core_id() and core_id().isascii()


# The divisor -------------------------------------------------------------------------------
def test_two_cores_each_allow_half_the_rate_and_half_the_burst() -> None:
    clock = task.Clock()
    rates = TenantRates(clock, 10, 20)
    rates.set_cores(2)
    assert rates.share("acme") == (5.0, 10.0) and rates.limit("acme") == (10.0, 20.0)
    assert [rates.admit("acme", 1) for _ in range(11)][-2:] == [
        None, "the tenant's request rate of 10 items/s was exceeded; retry in 0.2 s"]
    clock.advance(1.0)  # 5 items back, not 10
    assert [rates.admit("acme", 1) is None for _ in range(6)] == [True] * 5 + [False]
    # One core again: the whole rate.
    rates.set_cores(1)
    clock.advance(2.0)
    assert sum(rates.admit("acme", 1) is None for _ in range(30)) == 20


def test_the_bucket_is_at_least_one_item_and_the_rate_is_divided_exactly() -> None:
    clock = task.Clock()
    rates = TenantRates(clock, 2, 2)
    rates.set_cores(4)
    assert rates.share("acme") == (0.5, 1.0)
    assert rates.admit("acme", 1) is None and rates.admit("acme", 1) is not None
    # Over 100 s: 50 items, a quarter of 2 items/s (one every 2 s, not sooner).
    admitted = []
    for _ in range(100):
        clock.advance(1.0)
        admitted.append(rates.admit("acme", 1) is None)
    assert admitted == [False, True] * 50
    rates.set_cores(0)  # (never below 1)
    assert rates.cores == 1 and rates.share("acme") == (2.0, 2.0)


def test_a_fuller_bucket_is_cut_down_when_a_core_joins() -> None:
    clock = task.Clock()
    rates = TenantRates(clock, 10, 10)
    assert rates.admit("acme", 1) is None  # (a bucket of 9 kept)
    rates.set_cores(2)
    assert sum(rates.admit("acme", 1) is None for _ in range(10)) == 5


def test_a_tenant_without_a_limit_is_not_limited_by_the_cores() -> None:
    rates = TenantRates(task.Clock(), 0, 0)
    rates.set_cores(3)
    assert rates.share("acme") == (0.0, 1.0)
    assert all(rates.admit("acme", 5) is None for _ in range(100))


def test_full_buckets_are_dropped_by_the_share_s_size() -> None:
    clock = task.Clock()
    rates = TenantRates(clock, 10, 10)
    rates.set_cores(2)
    rates.admit("acme", 5)  # (the bucket of 5 empty)
    clock.advance(0.5)  # 2.5 back of 5
    rates.take([("acme", None, None)])
    assert "acme" in rates._buckets
    clock.advance(0.5)  # full at 5 (of the share), not at 10
    rates.take([("acme", None, None)])
    assert "acme" not in rates._buckets


# The service -------------------------------------------------------------------------------
class _Store:
    """``engine``'s dialect and ``defer``, as the service uses them."""

    def __init__(self, dialect: str = "postgresql") -> None:
        self.engine = SimpleNamespace(dialect=SimpleNamespace(name=dialect))

    def defer(self, fn):
        try:
            return succeed(fn())
        except Exception as e:  # noqa: BLE001
            return fail(e)


def _presence(store: _Store, answers: list):
    clock = task.Clock()
    rates = TenantRates(clock, 10, 0)
    presence = CorePresence(store, clock, rates.set_cores, core="me")
    left: list[str] = []

    def counted() -> int:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    presence._announce_sync = counted
    presence._leave_sync = lambda: left.append(presence.core)
    return clock, rates, presence, left


def test_counted_before_the_core_serves_then_every_interval_and_left_at_stop() -> None:
    answers = [2, 2, 3, 1]
    clock, rates, presence, left = _presence(_Store(), answers)
    presence.startService()
    assert rates.cores == 2  # (at once, before the listeners)
    clock.advance(ANNOUNCE_INTERVAL - 0.1)
    assert rates.cores == 2 and answers == [2, 3, 1]
    clock.advance(0.1)
    assert answers == [3, 1]
    clock.advance(ANNOUNCE_INTERVAL)
    assert rates.cores == 3 and presence.cores == 3
    clock.advance(ANNOUNCE_INTERVAL)
    assert rates.cores == 1
    presence.stopService()
    assert left == ["me"]
    clock.advance(ANNOUNCE_INTERVAL * 3)
    assert answers == [1]  # (no announcement after the stop)


def test_a_failed_count_keeps_the_last_and_says_so_once_a_minute() -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    answers: list = [2, RuntimeError("connection refused\nmore")]
    clock, rates, presence, _ = _presence(_Store(), answers)
    try:
        presence.startService()
        for _ in range(24):  # (a database down for two minutes)
            clock.advance(ANNOUNCE_INTERVAL)
        assert rates.cores == 2 and presence.failed == 24
        answers[:] = [1]  # (back: the loop went on)
        clock.advance(ANNOUNCE_INTERVAL)
        assert rates.cores == 1
    finally:
        presence.stopService()
        globalLogPublisher.removeObserver(events.append)
    lines = [e for e in events if e.get("log_namespace") == "kcm.core.core_presence"
             and "not counted" in e["log_format"]]
    # 24 failures in 2 minutes, in three lines (the last written at the stop).
    assert len(lines) == 3 and sum(line["count"] for line in lines) == 24
    assert lines[0]["why"] == "connection refused" and lines[0]["cores"] == 2


def test_a_core_whose_last_announcement_failed_does_not_wait_for_the_database_to_leave(
        ) -> None:
    answers: list = [2, RuntimeError("down")]
    clock, rates, presence, left = _presence(_Store(), answers)
    presence.startService()
    clock.advance(ANNOUNCE_INTERVAL)
    assert presence.stopService() is None and left == []


def test_a_core_that_cannot_count_at_start_starts_with_one_and_counts_later() -> None:
    answers: list = [RuntimeError("down"), 2]
    clock, rates, presence, _ = _presence(_Store(), answers)
    presence.startService()
    assert rates.cores == 1 and presence.failed == 1
    clock.advance(ANNOUNCE_INTERVAL)
    assert rates.cores == 2
    presence.stopService()


def test_nothing_is_announced_on_sqlite() -> None:
    answers = [5]
    clock, rates, presence, left = _presence(_Store("sqlite"), answers)
    presence._announce_sync = lambda: pytest.fail("announced on SQLite")
    presence.startService()
    clock.advance(ANNOUNCE_INTERVAL * 5)
    presence.stopService()
    assert rates.cores == 1 and left == []


def test_a_row_from_the_future_is_neither_counted_nor_kept(connection) -> None:
    """A row ahead of the database's clock (written before that clock was set back, or
    before a failover to a server whose clock is behind, by a core since killed; or by hand)
    would be counted live, and kept, until the clock caught up: hours of each tenant's
    rate divided by one core too many. Counted only within LIVE_S either side; deleted once
    PRUNE_S ahead."""
    announce(connection, "ahead", 1000.0 + 3600)
    announce(connection, "near", 1000.0 + LIVE_S)  # (another core's clock-read race: counted)
    assert announce(connection, "a", 1000.0) == 2
    assert set(_rows(connection)) == {"a", "near"}
    announce(connection, "soon", 1000.0 + LIVE_S + 1)
    assert announce(connection, "a", 1000.0) == 2
    assert set(_rows(connection)) == {"a", "near", "soon"}


# Mutation round (review40) -----------------------------------------------------------------
def test_the_intervals_are_those_the_guide_states() -> None:
    from pathlib import Path

    guide = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    assert (ANNOUNCE_INTERVAL, LIVE_S, PRUNE_S) == (5.0, 15.0, 600.0)
    assert "announces itself every 5 s" in guide
    assert "seen in the last 15 s" in " ".join(guide.split())
    assert "unseen for 10 minutes are deleted" in " ".join(guide.split())


def test_a_row_exactly_prune_s_old_is_kept_one_more_is_deleted(connection) -> None:
    announce(connection, "b", 1000.0)
    announce(connection, "a", 1000.0 + PRUNE_S)
    assert set(_rows(connection)) == {"a", "b"}
    announce(connection, "a", 1000.0 + PRUNE_S + 0.001)
    assert set(_rows(connection)) == {"a"}


def test_a_change_of_the_count_is_one_info_line_and_no_change_none() -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    answers = [1, 1, 2, 2, 2, 1]
    clock, rates, presence, _ = _presence(_Store(), answers)
    try:
        presence.startService()
        for _ in range(5):
            clock.advance(ANNOUNCE_INTERVAL)
    finally:
        presence.stopService()
        globalLogPublisher.removeObserver(events.append)
    lines = [e["cores"] for e in events if e.get("log_namespace") == "kcm.core.core_presence"
             and "serve the database" in e["log_format"]]
    assert lines == [2, 1]


def test_a_core_whose_announcement_passes_again_leaves_as_it_stops() -> None:
    answers: list = [2, RuntimeError("down"), 2]
    clock, rates, presence, left = _presence(_Store(), answers)
    presence.startService()
    clock.advance(ANNOUNCE_INTERVAL)  # (failed)
    clock.advance(ANNOUNCE_INTERVAL)  # (passed again)
    presence.stopService()
    assert left == ["me"]


def test_failures_not_yet_written_are_written_at_the_stop() -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    answers: list = [2, RuntimeError("down")]
    clock, rates, presence, _ = _presence(_Store(), answers)
    try:
        presence.startService()
        for _ in range(3):
            clock.advance(ANNOUNCE_INTERVAL)
        presence.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [e["count"] for e in events if e.get("log_namespace") == "kcm.core.core_presence"
             and "not counted" in e["log_format"]]
    assert sum(lines) == 3, lines


def test_a_core_id_is_bounded_whatever_the_host_name(monkeypatch) -> None:
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: "h" * 300)
    assert len(core_id()) <= 100 + 1 + 10 + 1 + 8


def test_the_refusal_s_log_line_says_the_tenant_s_rate_not_this_core_s_share() -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        rates = TenantRates(task.Clock(), 10, 2)
        rates.set_cores(2)
        while rates.admit("acme", 1) is None:
            pass
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [e["rate"] for e in events if "over its rate" in e.get("log_format", "")] == ["10"]


def test_a_bucket_is_dropped_only_once_full_by_this_core_s_share() -> None:
    """A core's bucket of one item (2 items/s shared by 4 cores: 0.5/s), empty, one second
    later holds half an item: kept, not taken for full by the tenant's whole rate (else the
    next request would find a full bucket again)."""
    clock = task.Clock()
    rates = TenantRates(clock, 2, 2)
    rates.set_cores(4)
    assert rates.admit("acme", 1) is None
    clock.advance(1.0)
    rates.take([("acme", None, None)])
    assert "acme" in rates._buckets
    assert rates.admit("acme", 1) is not None
