"""The store's object cache: stamps, age and size (kcm.core.store.object_cache)."""

from __future__ import annotations

import pytest

from kcm.core.store.object_cache import ObjectCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_is_served_only_for_its_own_stamp() -> None:
    cache = ObjectCache(10, clock=Clock())
    entry = cache.put("t", "u", (3, 7), ("columns",))
    assert cache.get("t", "u", (3, 7)) is entry
    # Another revision, or another row that had the same uid: stale, and dropped.
    assert cache.get("t", "u", (4, 7)) is None
    assert cache.get("t", "u", (3, 7)) is None
    cache.put("t", "u", (3, 7), ("columns",))
    assert cache.get("t", "u", (3, 8)) is None
    assert len(cache) == 0


def test_tenants_do_not_share_entries() -> None:
    cache = ObjectCache(10, clock=Clock())
    cache.put("t1", "u", (1, 1), ("t1's",))
    assert cache.get("t2", "u", (1, 1)) is None
    assert cache.get("t1", "u", (1, 1)) is not None


def test_an_entry_expires_ttl_seconds_after_it_was_read() -> None:
    clock = Clock()
    cache = ObjectCache(10, ttl=300.0, clock=clock)
    cache.put("t", "u", (1, 1), ())
    clock.now += 299.0
    assert cache.get("t", "u", (1, 1)) is not None  # in use does not make it younger
    clock.now += 1.0
    assert cache.get("t", "u", (1, 1)) is None
    assert len(cache) == 0


def test_expired_entries_nobody_asks_for_go_when_others_come() -> None:
    clock = Clock()
    cache = ObjectCache(10, ttl=300.0, clock=clock)
    cache.put("t", "old", (1, 1), ())
    clock.now += 300.0
    cache.put("t", "new", (1, 2), ())
    assert len(cache) == 1


def test_expire_drops_every_entry_past_its_ttl_wherever_it_stands() -> None:
    """Nothing came to push them out (an idle core kept a key in the clear an hour), or a
    hot entry filled long ago stood before them (a cold key lived twice the ttl)."""
    clock = Clock()
    cache = ObjectCache(10, ttl=300.0, clock=clock)
    cache.put("t", "hot", (1, 1), ())
    clock.now += 100.0
    cache.put("t", "cold", (1, 2), ())
    cache.get("t", "hot", (1, 1))  # used: the most recent, filled first
    clock.now += 150.0
    cache.put("t", "young", (1, 3), ())
    clock.now += 60.0  # hot 310 s old, cold 210 s, young 60 s
    assert cache.expire() == 1 and not cache.holds("t", "hot")
    clock.now += 90.0  # cold 300 s
    assert cache.expire() == 1 and not cache.holds("t", "cold")
    assert cache.holds("t", "young") and cache.bytes > 0
    clock.now += 3600.0
    assert cache.expire() == 1 and len(cache) == 0 and cache.bytes == 0


def test_the_least_recently_used_go_first() -> None:
    cache = ObjectCache(2, clock=Clock())
    cache.put("t", "a", (1, 1), ())
    cache.put("t", "b", (1, 2), ())
    assert cache.get("t", "a", (1, 1)) is not None
    cache.put("t", "c", (1, 3), ())
    assert len(cache) == 2
    assert cache.get("t", "b", (1, 2)) is None
    assert cache.get("t", "a", (1, 1)) is not None
    assert cache.get("t", "c", (1, 3)) is not None


def test_forget_and_clear() -> None:
    cache = ObjectCache(10, clock=Clock())
    cache.put("t", "a", (1, 1), ())
    cache.put("t", "b", (1, 2), ())
    cache.forget("t", "a")
    cache.forget("t", "missing")
    assert cache.get("t", "a", (1, 1)) is None
    cache.clear()
    assert len(cache) == 0


def test_size_zero_keeps_nothing() -> None:
    cache = ObjectCache(0, clock=Clock())
    entry = cache.put("t", "a", (1, 1), ())
    assert entry.stamp == (1, 1)
    assert cache.get("t", "a", (1, 1)) is None


@pytest.mark.parametrize(("size", "ttl"), [(-1, 300.0), (10, 0.0)])
def test_nonsense_bounds_are_refused(size: int, ttl: float) -> None:
    with pytest.raises(ValueError, match="object cache"):
        ObjectCache(size, ttl)


def test_a_read_begun_before_its_keys_forget_is_not_kept(monkeypatch) -> None:
    """put(..., since): what a transaction that began before the key was forgotten read
    may be the content the forget dropped (a Destroy's key): not kept. Other keys' fills
    are kept; and once the forgets remembered by key overflow, a fill older than the
    oldest remembered is refused whatever its key."""
    from kcm.core.store import object_cache

    cache = ObjectCache(size=100)
    began = cache.epoch
    cache.forget("t", "destroyed")
    cache.put("t", "destroyed", (1, 1), None, began)
    cache.put("t", "other", (1, 1), None, began)
    assert not cache.holds("t", "destroyed") and cache.holds("t", "other")
    cache.put("t", "destroyed", (2, 1), None, cache.epoch)  # begun after: kept
    assert cache.holds("t", "destroyed")
    monkeypatch.setattr(object_cache, "FORGOTTEN_KEPT", 2)
    old = cache.epoch
    for uid in ("a", "b", "c"):
        cache.forget("t", uid)
    cache.put("t", "unrelated", (1, 1), None, old)  # older than what is remembered
    assert not cache.holds("t", "unrelated")
    cache.put("t", "unrelated", (1, 1), None, cache.epoch)
    assert cache.holds("t", "unrelated")
