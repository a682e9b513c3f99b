"""Service keys no request uses: no longer refreshed after ``l3_idle``, forgotten once past
``max_stale`` as well (kcm.gateway.l3_cache), and the ``l3_idle`` setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.python import usage

from kcm.gateway import tap
from kcm.gateway.config import ConfigError, load_config
from kcm.gateway.l3_cache import L3Cache, Need, ServiceKeyMissing
from kcm.l4.opened_keys import OpenedKeys
from tests.core_support import service_principal
from tests.unit.test_gateway_l3_refresh import Core, version

TTL, MAX_STALE, IDLE = 10.0, 30.0, 50.0
APP = service_principal("t0", "s0")
OTHER = service_principal("t0", "s1")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def core() -> Core:
    return Core()


def cache_of(core: Core, clock: Clock, idle: float = IDLE, **kwargs) -> L3Cache:
    return L3Cache(core.fetch, connected=lambda: True, clock=clock.seconds, ttl=TTL,
                   max_stale=MAX_STALE, idle=idle, random=lambda: 0.0, **kwargs)


def run(cache: L3Cache, clock: Clock, until: float, each=None) -> None:
    """Call the refresh timer every refresh period until ``until`` (and ``each`` before
    each call: a request)."""
    while clock.seconds() < until:
        clock.advance(cache.refresh_period)
        if each is not None:
            each()
        cache.refresh_due()


def fetched(core: Core, tenant: str = "t0", service: str = "s0") -> int:
    return core.fetches.count((tenant, service, None))


def test_a_used_service_keeps_being_refreshed_an_unused_one_stops_and_is_forgotten(
        clock, core) -> None:
    used, unused = version("t0", "s0"), version("t0", "s1")
    cache = cache_of(core, clock)
    for key, who in ((used, APP), (unused, OTHER)):
        core.add(key)
        cache.prewarm(key.tenant, key.service, who)
    assert fetched(core, "t0", "s1") == 1
    run(cache, clock, 200, each=lambda: cache.current("t0", "s0"))
    assert fetched(core, "t0", "s0") == 1 + 20  # every TTL
    # Refreshed while used within IDLE (at 10 ... 50), then not: forgotten once its last
    # confirmation (50) is past MAX_STALE, with its version, its schedules and state.
    assert fetched(core, "t0", "s1") == 1 + 5
    assert cache.idle_forgotten.value == 1
    assert not cache.holds(unused.uid) and cache.holds(used.uid)
    assert cache.size == 1
    assert ("t0", "s1") not in cache._services
    assert ("t0", "s1") not in cache._services_due and unused.uid not in cache._versions_due
    assert unused.uid not in cache._current_of
    # Asked for again, it is a miss and fetched, as one never seen.
    with pytest.raises(ServiceKeyMissing):
        cache.current("t0", "s1")
    cache.prewarm("t0", "s1", OTHER)
    assert cache.current("t0", "s1") == unused
    assert fetched(core, "t0", "s1") == 1 + 5 + 1
    run(cache, clock, 230)
    assert fetched(core, "t0", "s1") == 1 + 5 + 1 + 3  # refreshed again: used anew


def test_it_is_forgotten_at_the_first_refresh_call_past_max_stale(clock, core) -> None:
    key = version("t0", "s0")
    core.add(key)
    cache = cache_of(core, clock)
    cache.prewarm("t0", "s0", APP)
    run(cache, clock, 50 + MAX_STALE - cache.refresh_period)
    assert cache.holds(key.uid) and cache.idle_forgotten.value == 0
    run(cache, clock, 50 + MAX_STALE)
    assert not cache.holds(key.uid) and cache.idle_forgotten.value == 1


def test_an_idle_key_read_again_before_it_is_forgotten_is_refreshed_again(
        clock, core) -> None:
    key = version("t0", "s0")
    core.add(key)
    cache = cache_of(core, clock)
    cache.prewarm("t0", "s0", APP)
    run(cache, clock, 70)
    assert fetched(core) == 1 + 5  # idle since 50: not refreshed at 60 nor 70
    assert cache.current("t0", "s0") == key  # stale (past TTL): served, refreshed
    assert fetched(core) == 1 + 5 + 1
    run(cache, clock, 150 - cache.refresh_period)
    assert cache.holds(key.uid) and fetched(core) == 1 + 5 + 1 + 5  # to 70 + IDLE
    assert cache.idle_forgotten.value == 0
    run(cache, clock, 150)  # (last confirmed at 120)
    assert not cache.holds(key.uid) and cache.idle_forgotten.value == 1


def test_a_version_read_by_uid_keeps_being_refreshed_an_unused_one_is_forgotten(
        clock, core) -> None:
    used, unused = version("t0", "s0"), version("t0", "s1")
    opened = OpenedKeys(clock=clock.seconds, ttl=1e6)
    cache = cache_of(core, clock, opened_keys=opened)
    for key, who in ((used, APP), (unused, OTHER)):
        core.add(key)
        cache.ensure([Need(uid=key.uid)], who)
    opened.put("l4.token", "id1", unused, b"d" * 32)
    run(cache, clock, 200, each=lambda: cache.by_uid(used.uid, APP))
    assert core.fetches.count(("", "", used.uid)) == 1 + 20
    assert core.fetches.count(("", "", unused.uid)) == 1 + 5
    assert cache.holds(used.uid) and not cache.holds(unused.uid)
    assert unused.uid not in cache._versions_due
    assert len(opened) == 0  # the DEKs it opened went with it
    with pytest.raises(ServiceKeyMissing):
        cache.by_uid(unused.uid, OTHER)
    cache.ensure([Need(uid=unused.uid)], OTHER)
    assert cache.by_uid(unused.uid, OTHER) == unused


def test_a_used_service_s_current_version_stays_though_never_read_by_uid(
        clock, core) -> None:
    """A service's answer confirms its current version: held as long as it is used."""
    key = version("t0", "s0")
    core.add(key)
    cache = cache_of(core, clock)
    cache.prewarm("t0", "s0", APP)
    run(cache, clock, 300, each=lambda: cache.current("t0", "s0"))
    assert cache.holds(key.uid) and cache.current("t0", "s0") == key
    assert cache.idle_forgotten.value == 0


def test_tombstones_outlive_the_forgotten_version(clock, core) -> None:
    key = version("t0", "s0")
    core.add(key)
    cache = cache_of(core, clock)
    cache.ensure([Need(uid=key.uid)], APP)
    cache.apply_event(1, "l4.tombstone", "t0",
                      {"token_id": "revoked", "unique_identifier": key.uid})
    run(cache, clock, 200)
    assert not cache.holds(key.uid)
    assert cache.is_tombstoned("revoked") and cache.tombstone_count == 1
    cache.ensure([Need(uid=key.uid)], APP)  # fetched again (its answer lists none here)
    assert cache.holds(key.uid) and cache.is_tombstoned("revoked")


def test_idle_zero_refreshes_everything_held_for_as_long_as_it_runs(clock, core) -> None:
    key = version("t0", "s0")
    core.add(key)
    cache = cache_of(core, clock, idle=0)
    cache.prewarm("t0", "s0", APP)
    run(cache, clock, 1000)
    assert fetched(core) == 1 + 100
    assert cache.holds(key.uid) and cache.idle_forgotten.value == 0


def test_nothing_is_forgotten_while_the_core_is_unreachable(clock, core) -> None:
    """Refreshes stop while unlinked, and with them forgetting: a key past max-stale then
    fails closed, as it did (the refusal says why), and not as a miss."""
    key = version("t0", "s0")
    core.add(key)
    linked = [True]
    cache = L3Cache(core.fetch, connected=lambda: linked[0], clock=clock.seconds, ttl=TTL,
                    max_stale=MAX_STALE, idle=IDLE, random=lambda: 0.0)
    cache.prewarm("t0", "s0", APP)
    linked[0] = False
    run(cache, clock, 200)
    assert cache.holds(key.uid)
    with pytest.raises(Exception, match="refusing to use it"):
        cache.current("t0", "s0")


def test_a_read_takes_the_clock_once(clock, core) -> None:
    """Marking a key used costs an attribute store of the clock value the read takes
    anyway (it took it twice before, for max-stale and for the TTL)."""
    key = version("t0", "s0")
    core.add(key)
    reads = [0]

    def counted_clock() -> float:
        reads[0] += 1
        return clock.seconds()

    cache = L3Cache(core.fetch, connected=lambda: True, clock=counted_clock, ttl=TTL,
                    max_stale=MAX_STALE, idle=IDLE)
    cache.prewarm("t0", "s0", APP)
    reads[0] = 0
    cache.current("t0", "s0")
    cache.by_uid(key.uid, APP)
    assert reads[0] == 2


# The setting ----------------------------------------------------------------------------

def test_l3_idle_defaults_to_a_day_and_is_set_by_file_or_option(tmp_path: Path) -> None:
    assert load_config(None).l3_idle == 86400.0
    config = tmp_path / "gateway.toml"
    config.write_text("[gateway]\nl3_ttl = 60\nl3_idle = 0\n")
    assert load_config(config).l3_idle == 0.0
    options = tap.Options()
    options.parseOptions(["-c", str(config), "--l3-idle", "600"])
    assert options["gateway_config"].l3_idle == 600.0
    options = tap.Options()
    options.parseOptions(["--l3-idle", "0"])
    assert options["gateway_config"].l3_idle == 0.0


@pytest.mark.parametrize(("setting", "error"), [
    ("l3_idle = -1", "gateway.l3_idle must be 0 .never idle. or a positive number"),
    ("l3_idle = nan", "gateway.l3_idle must be 0 .never idle. or a positive number"),
    ("l3_idle = \"1d\"", "gateway.l3_idle must be 0 .never idle. or a positive number"),
    ("l3_idle = true", "gateway.l3_idle must be 0 .never idle. or a positive number"),
    ("l3_ttl = 300\nl3_idle = 299", "gateway.l3_idle must be 0 .never idle. or at least "
                                    "l3_ttl"),
])
def test_l3_idle_is_refused_unless_zero_or_at_least_l3_ttl(tmp_path: Path, setting: str,
                                                           error: str) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f"[gateway]\n{setting}\n")
    with pytest.raises(ConfigError, match=error):
        load_config(config)


def test_the_option_is_refused_as_the_setting_is() -> None:
    options = tap.Options()
    with pytest.raises(usage.UsageError, match="gateway.l3_idle"):
        options.parseOptions(["--l3-ttl", "60", "--l3-idle", "30"])


def test_a_services_current_version_is_confirmed_by_the_services_refresh_alone(
        clock, core) -> None:
    """Each ttl the core is asked once for a used service, not also for its current
    version by uid (answers that take a while showed both fetched every ttl)."""
    key = version("t0", "s0")
    cache = cache_of(core, clock)
    core.add(key)
    cache.prewarm("t0", "s0", APP)
    core.hold = True  # the answers are in flight when the next keys come due
    run(cache, clock, TTL * 1.5, each=lambda: cache.current("t0", "s0"))
    assert core.fetches == [("t0", "s0", None), ("t0", "s0", None)]


def test_a_version_used_by_uid_of_an_idle_service_is_refreshed_by_uid(clock, core) -> None:
    key = version("t0", "s0")
    cache = cache_of(core, clock)
    core.add(key)
    cache.prewarm("t0", "s0", APP)
    run(cache, clock, IDLE + 3 * TTL, each=lambda: cache.by_uid(key.uid, APP))
    # The service, unused, is no longer refreshed; its version, decrypted with, is.
    assert core.fetches[-3:] == [("", "", key.uid)] * 3
