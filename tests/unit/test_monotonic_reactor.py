"""kcm.monotonic_reactor: once both plugins' makeService has run, their reactor's time (and
so every timer, heartbeat and deadline on it) ticks with the monotonic clock, whatever the
wall clock does; their answers' dates still follow the wall clock."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.task import Clock

from kcm import monotonic_reactor
from kcm.core import tap as core_tap
from kcm.gateway import tap as gateway_tap
from kcm.kmip.enums import ResultReason
from kcm.testing.requests import response


class _Steppable:
    """A clock a test sets or steps (``now``)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def reactor() -> Any:
    made = EPollReactor()
    yield made
    for reader in list(made.getReaders()):
        with contextlib.suppress(OSError):
            made.removeReader(reader)
    made._poller.close()


@pytest.fixture
def wall(monkeypatch) -> _Steppable:
    """``time.time``, stepped by the test as NTP or a resumed VM would (``time.monotonic``
    is left alone)."""
    clock = _Steppable(1_800_000_000.0)
    monkeypatch.setattr(time, "time", clock)
    return clock


def test_the_time_starts_at_the_wall_clock_and_ticks_with_the_monotonic_one() -> None:
    wall, monotonic = _Steppable(1_800_000_000.0), _Steppable(500.0)
    seconds = monotonic_reactor.monotonic_seconds(wall=wall, monotonic=monotonic)
    assert seconds() == 1_800_000_000.0
    wall.now += 3600  # a step forward
    assert seconds() == 1_800_000_000.0
    wall.now -= 7200  # and back
    monotonic.now += 2.5
    assert seconds() == 1_800_000_002.5


def test_timed_calls_wait_for_the_monotonic_clock_not_the_wall_clock(reactor: Any) -> None:
    wall, monotonic = _Steppable(1_800_000_000.0), _Steppable(500.0)
    assert monotonic_reactor.install(
        reactor, monotonic_reactor.monotonic_seconds(wall=wall, monotonic=monotonic))
    called: list[str] = []
    reactor.callLater(1.0, called.append, "due")
    wall.now += 5  # a step forward of the wall clock: nothing is due yet
    reactor.runUntilCurrent()
    assert called == []
    monotonic.now += 1.0
    reactor.runUntilCurrent()
    assert called == ["due"]


def test_calls_scheduled_before_keep_their_time_and_follow_the_new_clock(
        reactor: Any) -> None:
    earlier = reactor.callLater(30.0, lambda: None)
    due = earlier.getTime()
    assert monotonic_reactor.install(reactor)
    assert earlier.seconds is reactor.seconds
    assert abs(earlier.getTime() - due) < 1e-6 and abs(due - reactor.seconds() - 30) < 1
    earlier.reset(10.0)
    assert abs(earlier.getTime() - reactor.seconds() - 10) < 1
    earlier.cancel()


def test_the_installed_time_is_monotonic(reactor: Any, wall: _Steppable) -> None:
    assert monotonic_reactor.install(reactor)
    start, start_monotonic = reactor.seconds(), time.monotonic()
    assert abs(start - 1_800_000_000) < 1  # it reads like the wall clock at first
    wall.now += 5
    assert reactor.seconds() - start < 1
    wall.now -= 3600
    later = reactor.seconds()
    assert later >= start
    assert abs((later - start) - (time.monotonic() - start_monotonic)) < 0.1
    assert monotonic_reactor.install(reactor)  # again: nothing changes
    assert reactor.seconds() >= later


def test_another_reactor_is_left_as_it_is() -> None:
    clock = Clock()
    seconds = clock.seconds
    assert not monotonic_reactor.install(clock)
    assert clock.seconds == seconds


@pytest.mark.parametrize("plugin", ["kcm-core", "kcm-gateway", "kcm-gateway supervisor"])
def test_both_plugins_make_their_reactor_monotonic_and_date_by_the_wall_clock(
        plugin: str, reactor: Any, wall: _Steppable, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # default certificate paths: files that do not exist
    if plugin == "kcm-core":
        options: Any = core_tap.Options()
        options.parseOptions(["--policy-file", "absent.toml",
                              "--database", f"sqlite:///{tmp_path / 'kcm.db'}"])
        service = core_tap.makeService(options, reactor=reactor)
    else:
        options = gateway_tap.Options()
        workers = ["--workers", "2"] if plugin.endswith("supervisor") else []
        options.parseOptions(["--listen", "tcp:0", *workers])
        service = gateway_tap.makeService(options, reactor=reactor)
    start = reactor.seconds()
    assert abs(start - 1_800_000_000) < 1  # made monotonic from the wall clock's time then
    wall.now += 5
    assert reactor.seconds() - start < 1  # its heartbeats, deadlines, TTLs: unmoved
    handler = getattr(service, "handler", None)
    if handler is not None:  # (a supervisor answers no KMIP request)
        answer = response(handler.failure_response(ResultReason.GENERAL_FAILURE, "x"))
        assert answer.header.time_stamp == 1_800_000_005  # its dates: the wall clock's
    if plugin == "kcm-core":
        assert service.link_factory.wall_clock is time.time
