"""Which clock each part of kcm-core reads (kcm.monotonic_reactor): durations on the reactor
(monotonic), dates on the wall clock. Each test steps the wall clock (an NTP step, a resumed
VM) and moves the reactor's time apart from it."""

from __future__ import annotations

import contextlib
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from kcm.core import state_sweeper, sweep_steps, usage_intake
from kcm.core.config import CoreLimits
from kcm.core.request_handler import CoreRequestHandler
from kcm.core.state_sweeper import StateSweeper
from kcm.core.usage_intake import UsageIntake
from kcm.kmip_protocol import ConnectionInfo
from kcm.link.frames import Frame, FrameType, encode_frame
from tests.core_support import service_principal
from tests.unit.test_core_request_watch import HeldStore
from tests.unit.test_link_cancel import APP, core_factory, hello

#: The wall clock's time in these tests (2027), far from the reactor's (a Clock at 0).
WALL = 1_800_000_000.0


class _Wall:
    """A wall clock the test steps."""

    def __init__(self) -> None:
        self.now = WALL

    def __call__(self) -> float:
        return self.now


def test_a_core_request_is_dated_by_the_wall_clock_and_stopped_by_the_timer() -> None:
    store, timer, wall = HeldStore(), Clock(), _Wall()
    handler = CoreRequestHandler(store, keyring=None, clock=wall,  # type: ignore[arg-type]
                                 timer=timer.seconds,
                                 limits=CoreLimits(request_deadline=10),
                                 committer=store)  # type: ignore[arg-type]
    handler.handle_request(b"request", ConnectionInfo(1, service_principal(), "a:1"))
    [(_, (_, _, now, should_stop, *_), _)] = store.calls
    assert now == WALL  # its dates, its answer's time stamp
    wall.now += 3600  # a step forward of the wall clock: the request goes on
    assert should_stop() is None
    timer.advance(10)
    assert should_stop() == "request deadline of 10 s exceeded"


def test_without_a_timer_the_core_handler_times_requests_on_its_clock() -> None:
    store, clock = HeldStore(), Clock()
    handler = CoreRequestHandler(store, keyring=None, clock=clock.seconds,  # type: ignore[arg-type]
                                 limits=CoreLimits(request_deadline=10),
                                 committer=store)  # type: ignore[arg-type]
    handler.handle_request(b"request", ConnectionInfo(1, service_principal(), "a:1"))
    [(_, (_, _, _, should_stop, *_), _)] = store.calls
    clock.advance(10)
    assert should_stop() is not None


def test_the_state_sweeper_ticks_on_the_reactor_and_judges_dates_by_the_wall_clock(
        monkeypatch) -> None:
    judged: list[tuple[str, float]] = []
    monkeypatch.setattr(state_sweeper, "sweep_due_states", lambda session, now, limit: (
        judged.append(("dates", now)) or []))
    # (a step's savepoint is a request's, which needs a real session: none here)
    monkeypatch.setattr(sweep_steps, "savepoint", lambda session: contextlib.nullcontext())

    class Store:
        def defer(self, fn: Any) -> Deferred:
            return succeed(fn())

        def run(self, fn: Any) -> Deferred:
            return succeed(fn(Session()))

    class Session:
        def begin_nested(self) -> Any:
            return contextlib.nullcontext()

    class Held:
        held = False

        def hold(self) -> bool:
            return True

        def close(self) -> None:
            self.held = False

    def step(session: Any, now: float) -> list[object]:
        judged.append(("step", now))
        return []

    reactor, wall = Clock(), _Wall()
    sweeper = StateSweeper(Store(), reactor, interval=5, steps=[step],  # type: ignore[arg-type]
                           lease=Held(), wall_clock=wall)  # type: ignore[arg-type]
    sweeper.startService()
    # (the dates first: a key retired by its date is not rotated back to life by a step)
    assert judged == [("dates", int(WALL)), ("step", WALL)]
    wall.now += 60  # a step forward: no sweep before the interval has passed
    reactor.advance(4.9)
    assert len(judged) == 2
    reactor.advance(0.1)
    assert judged[2:] == [("dates", int(WALL) + 60), ("step", WALL + 60)]
    sweeper.stopService()


def test_the_usage_intake_waits_on_the_reactor_and_records_at_the_wall_clocks_time(
        monkeypatch) -> None:
    recorded: list[int] = []
    monkeypatch.setattr(usage_intake, "add_uses",
                        lambda session, counts, now: recorded.append(now))
    monkeypatch.setattr(usage_intake, "cap_reached", lambda session, counts: False)

    class Store:
        def run(self, fn: Any) -> Deferred:
            return succeed(fn(None))

    reactor, wall = Clock(), _Wall()
    intake = UsageIntake(Store(), reactor, wall_clock=wall,  # type: ignore[arg-type]
                         on_cap_reached=lambda: None)
    intake.add({"l3-a": 1})
    wall.now += 60
    assert recorded == []
    reactor.advance(intake.delay)
    assert recorded == [int(WALL) + 60]


def test_a_service_key_fetch_on_the_link_is_judged_at_the_wall_clocks_time() -> None:
    factory, _, reactor = core_factory()
    reactor.advance(5)
    factory.wall_clock = _Wall()
    asked: list[int] = []
    factory.fetch_keys = lambda caller, tenant, service, uid, now: (  # type: ignore[method-assign]
        asked.append(now) or Deferred())
    protocol, _ = hello(factory)
    protocol.dataReceived(encode_frame(Frame(
        FrameType.FETCH_SERVICE_KEY, stream_id=1, caller_identity=APP.spiffe_id, tenant="demo",
        service="app")))
    assert asked == [int(WALL)]


def test_the_link_factory_dates_by_its_reactor_when_given_no_wall_clock() -> None:
    factory, _, reactor = core_factory()
    assert factory.wall_clock == reactor.seconds
