"""The L3 cache's background refresh with many keys held: bounded work per reactor turn, the
rest in later turns, refresh times spread by jitter, and events about one version that look
at that version's services alone."""

from __future__ import annotations

import gc
import random
import time
from collections import Counter

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from kcm.gateway.l3_cache import REFRESH_BATCH, REFRESH_JITTER, L3Cache, Need
from kcm.gateway.link_client import LinkDown, ServiceKeyRefused
from kcm.gateway.refresh_schedule import RefreshSchedule
from kcm.kernel.missing import object_not_found
from kcm.kmip.enums import State
from kcm.l4.service_key import ServiceKey
from tests.core_support import service_principal

TTL = 300.0


def version(tenant: str, service: str, number: int = 1,
            state: State = State.ACTIVE) -> ServiceKey:
    return ServiceKey(f"l3-{tenant}-{service}-{number}", tenant, service, number, state,
                      b"k" * 32)


class Core:
    """The core's SERVICE_KEYS answers for every service it was given; records each fetch."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str] | str, list[ServiceKey]] = {}
        self.fetches: list[tuple[str, str, str | None]] = []
        self.down = False
        self.hold = False  # answers never come: every fetch stays in flight or waiting
        self.missing: set[str] = set()  # uids the core has no L3 of (a restored database)

    def add(self, key: ServiceKey) -> None:
        self.keys[(key.tenant, key.service)] = [key]
        self.keys[key.uid] = [key]

    def fetch(self, caller, tenant: str, service: str, uid: str | None = None) -> Deferred:
        self.fetches.append((tenant, service, uid))
        if self.down:
            return fail(LinkDown("the link to the core is down"))
        if self.hold:
            return Deferred()
        if uid in self.missing:
            missing = object_not_found(uid)
            return fail(ServiceKeyRefused(missing.reason, missing.message))
        return succeed(list(self.keys[uid if uid else (tenant, service)]))


def held(cache: L3Cache, core: Core, tenants: int, services: int) -> list[ServiceKey]:
    """``tenants`` x ``services`` services held, each with its current version, fetched
    together (as at a prewarm)."""
    keys = []
    for t in range(tenants):
        for s in range(services):
            key = version(f"t{t}", f"s{s}")
            core.add(key)
            cache.store([key], service_principal(key.tenant, key.service),
                        current_of=(key.tenant, key.service))
            keys.append(key)
    return keys


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def core() -> Core:
    return Core()


def test_one_turn_starts_at_most_the_batch_and_the_rest_follow_in_later_turns(
        clock, core) -> None:
    turns: list[int] = []  # fetches started in each later turn

    def call_later(delay: float, f):
        def turn() -> None:
            before = len(core.fetches)
            f()
            turns.append(len(core.fetches) - before)
        return clock.callLater(delay, turn)

    cache = L3Cache(core.fetch, connected=lambda: True, clock=clock.seconds, ttl=TTL,
                    call_later=call_later, random=lambda: 0.0,
                    max_fetches_per_tenant=10_000, max_waiting_per_tenant=10_000)
    held(cache, core, tenants=4, services=250)  # 1,000 services, fetched together
    clock.advance(TTL)
    cache.refresh_due()
    assert len(core.fetches) == REFRESH_BATCH
    assert len(clock.getDelayedCalls()) == 1  # the rest: in the next turn
    cache.refresh_due()  # (the timer firing meanwhile does a batch more, no second turn)
    assert len(core.fetches) == 2 * REFRESH_BATCH
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert turns == [REFRESH_BATCH, 1_000 - 3 * REFRESH_BATCH]
    # Each service once; its answer confirmed its version too, which is not fetched again.
    assert sorted(core.fetches) == sorted((f"t{t}", f"s{s}", None)
                                          for t in range(4) for s in range(250))
    core.fetches.clear()
    cache.refresh_due()  # nothing is due now
    assert core.fetches == [] and not clock.getDelayedCalls()


def test_without_a_scheduler_one_call_refreshes_everything_due(clock, core) -> None:
    cache = L3Cache(core.fetch, connected=lambda: True, clock=clock.seconds, ttl=TTL,
                    random=lambda: 0.0, max_fetches_per_tenant=10_000,
                    max_waiting_per_tenant=10_000)
    held(cache, core, tenants=2, services=300)
    clock.advance(TTL)
    cache.refresh_due()
    assert len(core.fetches) == 600


def test_jitter_spreads_keys_fetched_together(clock, core) -> None:
    cache = L3Cache(core.fetch, connected=lambda: True, clock=clock.seconds, ttl=TTL,
                    call_later=clock.callLater, random=random.Random(7).random,
                    max_fetches_per_tenant=10_000, max_waiting_per_tenant=10_000)
    held(cache, core, tenants=1, services=400)
    clock.advance(TTL * (1 - REFRESH_JITTER) - 1)
    cache.refresh_due()
    assert core.fetches == []  # none due before the jitter window
    per_call = []
    while clock.seconds() < TTL:
        clock.advance(cache.refresh_period)
        cache.refresh_due()
        clock.advance(0)
        per_call.append(len(core.fetches) - sum(per_call))
    assert sum(per_call) == 400  # every one refreshed by its TTL, each once...
    assert len(per_call) >= 2 and max(per_call) < 300  # ...not all in one call
    # Refreshed at different times, they are next due at different times again.
    core.fetches.clear()
    clock.advance(TTL * (1 - REFRESH_JITTER))
    cache.refresh_due()
    assert 0 < len(core.fetches) < 400


def test_a_refresh_that_fails_is_tried_again_a_period_later(clock, core) -> None:
    cache = L3Cache(core.fetch, connected=lambda: True, clock=clock.seconds, ttl=TTL,
                    call_later=clock.callLater, random=lambda: 0.0)
    held(cache, core, tenants=1, services=1)
    clock.advance(TTL)
    core.down = True
    cache.refresh_due()
    # The service only: its refresh confirms its current version too.
    assert core.fetches == [("t0", "s0", None)]
    core.down = False
    core.fetches.clear()
    cache.refresh_due()  # tried again only a period later
    assert core.fetches == []
    clock.advance(cache.refresh_period)
    cache.refresh_due()
    assert core.fetches == [("t0", "s0", None)]  # (it confirmed the version too)


@pytest.mark.parametrize("state", [State.DEACTIVATED, State.COMPROMISED, State.DESTROYED])
def test_a_state_event_looks_only_at_its_versions_services(clock, core, state) -> None:
    cache = L3Cache(core.fetch, connected=lambda: True, clock=clock.seconds, ttl=TTL)
    keys = held(cache, core, tenants=10, services=1_000)

    class NotScanned(dict):
        def _scan(self, *args):
            raise AssertionError("every service held was looked at")
        __iter__ = values = items = keys = _scan  # type: ignore[assignment]

    cache._services = NotScanned(cache._services)
    target = keys[1234]
    cache.apply_event(1, "l3.state", target.tenant,
                      {"unique_identifier": target.uid, "service": target.service,
                       "state": int(state)})
    core.fetches.clear()
    assert cache.lacks(Need(target.tenant, target.service), service_principal())
    for other in (keys[0], keys[1233], keys[1235], keys[-1]):
        assert cache.current(other.tenant, other.service) == other
    assert core.fetches == []


def test_a_no_such_key_refresh_forgets_only_that_version(clock, core) -> None:
    cache = L3Cache(core.fetch, connected=lambda: True, clock=clock.seconds, ttl=TTL)
    keys = held(cache, core, tenants=1, services=3)
    gone = keys[1]
    core.missing.add(gone.uid)
    cache.ensure([Need(uid=gone.uid)], service_principal("t0", "s9"))
    assert not cache.holds(gone.uid)
    assert cache.lacks(Need(gone.tenant, gone.service), service_principal())
    assert cache.current(keys[0].tenant, keys[0].service) == keys[0]
    assert cache.current(keys[2].tenant, keys[2].service) == keys[2]


def test_tenant_removed_and_resync_leave_nothing_to_refresh(clock, core) -> None:
    cache = L3Cache(core.fetch, connected=lambda: True, clock=clock.seconds, ttl=TTL,
                    random=lambda: 0.0)
    held(cache, core, tenants=2, services=2)
    cache.apply_event(1, "tenant.removed", "t0", {})
    clock.advance(TTL)
    cache.refresh_due()
    assert {tenant for tenant, _, _ in core.fetches} == {"t1"}
    cache.resync()
    core.fetches.clear()
    clock.advance(TTL)
    cache.refresh_due()
    assert core.fetches == []


@pytest.mark.serial
def test_one_refresh_call_with_many_keys_held_is_short(clock, core) -> None:
    """10,000 versions of 10 tenants due at once: one call took 209 ms when it started them
    all; a batch takes a few ms, and so do 256 state events with them held."""
    cache = L3Cache(core.fetch, connected=lambda: True, clock=clock.seconds, ttl=TTL,
                    call_later=clock.callLater, random=lambda: 0.0)
    core.hold = True
    keys = held(cache, core, tenants=10, services=1_000)
    clock.advance(TTL)
    gc.collect()
    gc.disable()  # (what is timed is this code, not a collection that falls in it)
    try:
        started = time.perf_counter()
        cache.refresh_due()
        refresh = time.perf_counter() - started
        started = time.perf_counter()
        for seq, key in enumerate(keys[:256]):
            cache.apply_event(seq, "l3.state", key.tenant,
                              {"unique_identifier": key.uid, "service": key.service,
                               "state": int(State.DEACTIVATED)})
        events = time.perf_counter() - started
    finally:
        gc.enable()
    assert refresh < 0.05, f"one refresh_due call took {refresh * 1000:.1f} ms"
    assert events < 0.05, f"256 state events took {events * 1000:.1f} ms"


def test_the_schedule_gives_what_is_due_earliest_first_once() -> None:
    schedule: RefreshSchedule[str] = RefreshSchedule()
    schedule.schedule("a", 5.0)
    schedule.schedule("b", 3.0)
    schedule.schedule("c", 9.0)
    schedule.schedule("b", 7.0)  # scheduled again: its earlier time is forgotten
    schedule.forget("c")
    assert schedule.pop_due(4.0) is None and not schedule.any_due(4.0)
    assert schedule.any_due(10.0)
    assert [schedule.pop_due(10.0) for _ in range(3)] == ["a", "b", None]
    assert len(schedule) == 0


def test_the_schedule_heap_stays_near_what_is_scheduled() -> None:
    schedule: RefreshSchedule[int] = RefreshSchedule()
    for n in range(10_000):
        schedule.schedule(n % 10, float(n))
    assert len(schedule) == 10 and len(schedule._heap) <= 2 * 10 + 1025
    assert Counter(schedule.pop_due(1e9) for _ in range(11)) == Counter(
        [*range(10), None])
