"""The L3 cache's conditional fetches (link version 8): a fetch of something held says what
is held, as the digest of the answer that would leave it so (each version as held, its
state as the events left it, with its tombstones, or none for an overflowed one); the
core's "unchanged" confirms exactly that, and an event that changed what is held while the
fetch was out makes the cache fetch the whole answer."""

from __future__ import annotations

from dataclasses import replace

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from kcm.gateway.l3_cache import L3Cache, Need
from kcm.kmip.enums import State
from kcm.l4.service_key import ServiceKey
from kcm.link.events import EventKind
from kcm.link.frames import MAX_SENT_TOMBSTONES
from kcm.link.keys_digest import Unchanged, keys_digest
from tests.core_support import service_principal

APP = service_principal()
TTL = 60.0
V1 = ServiceKey("l3-v1", "demo", "app", 1, State.ACTIVE, b"1" * 32)
V2 = ServiceKey("l3-v2", "demo", "app", 2, State.ACTIVE, b"2" * 32)


class Core:
    """Answers each fetch with ``answer`` (a list, or Unchanged when the digest sent is
    that of ``keys``), or holds it (``hold``); records (need, held digest)."""

    def __init__(self) -> None:
        self.keys: list[ServiceKey] = [replace(V1, tombstones=frozenset())]
        self.sent: list[tuple[str | None, bytes | None]] = []
        self.hold: list[Deferred] | None = None

    def fetch(self, caller, tenant: str, service: str, uid: str | None = None, *,
              held: bytes | None = None) -> Deferred:
        self.sent.append((uid, held))
        answer = [key for key in self.keys if uid is None or key.uid == uid]
        if held is not None and held == keys_digest(answer):
            result: object = Unchanged(held)
        else:
            result = answer
        if self.hold is not None:
            d: Deferred = Deferred()
            self.hold.append(d)
            d.addCallback(lambda _: result)
            return d
        return succeed(result)


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1000)
    return clock


@pytest.fixture
def core() -> Core:
    return Core()


def cache_of(core: Core, clock: Clock, conditional: bool = True) -> L3Cache:
    cache = L3Cache(core.fetch, connected=lambda: True, clock=clock.seconds, ttl=TTL,
                    random=lambda: 0.0, conditional=conditional)
    cache.prewarm("demo", "app", APP)
    return cache


def refresh(cache: L3Cache, clock: Clock) -> None:
    clock.advance(TTL + 1)
    cache.refresh_due()


def test_a_refresh_of_what_is_unchanged_is_confirmed_without_a_key(core, clock) -> None:
    cache = cache_of(core, clock)
    assert core.sent == [(None, None)]  # nothing held yet: a plain fetch
    refresh(cache, clock)
    assert core.sent[1] == (None, keys_digest(core.keys))
    assert cache.refreshes_unchanged.value == 1
    assert cache.current("demo", "app") == V1
    assert cache.hits.value == 1 and cache.stale_hits.value == 0  # confirmed: fresh again


def test_without_conditional_fetches_nothing_is_said(core, clock) -> None:
    cache = cache_of(core, clock, conditional=False)
    refresh(cache, clock)
    assert [held for _, held in core.sent] == [None, None]
    assert cache.refreshes_unchanged.value == 0


def test_a_new_version_is_fetched_whole(core, clock) -> None:
    cache = cache_of(core, clock)
    core.keys = [replace(V2, tombstones=frozenset()), replace(V1, tombstones=frozenset())]
    refresh(cache, clock)
    assert cache.refreshes_unchanged.value == 0
    assert cache.current("demo", "app") == V2
    refresh(cache, clock)  # and what it holds now is both, in the core's order
    assert core.sent[-1] == (None, keys_digest(core.keys))
    assert cache.refreshes_unchanged.value == 1


def test_what_is_held_is_said_as_the_events_left_it(core, clock) -> None:
    cache = cache_of(core, clock)
    cache.apply_event(1, EventKind.L4_TOMBSTONE.value, "demo",
                      {"token_id": "ab" * 16, "unique_identifier": V1.uid})
    refresh(cache, clock)
    assert core.sent[-1][1] == keys_digest([replace(V1, tombstones=frozenset({"ab" * 16}))])
    core.keys = [replace(V1, tombstones=frozenset({"ab" * 16}))]
    refresh(cache, clock)
    assert cache.refreshes_unchanged.value == 1
    cache.apply_event(2, EventKind.L3_STATE.value, "demo",
                      {"unique_identifier": V1.uid, "service": "app",
                       "state": int(State.DEACTIVATED)})
    refresh(cache, clock)
    assert core.sent[-1] == (None, keys_digest([replace(
        V1, state=State.DEACTIVATED, tombstones=frozenset({"ab" * 16}))]))
    assert cache.refreshes_unchanged.value == 1  # the core's answer differs: fetched whole


def _tombstone(cache: L3Cache, sequence: int, token_id: str) -> None:
    cache.apply_event(sequence, EventKind.L4_TOMBSTONE.value, "demo",
                      {"token_id": token_id, "unique_identifier": V1.uid})


def test_a_version_given_up_at_max_tombstones_refreshes_unchanged(core, clock) -> None:
    """Given up at the gateway's own bound, a version whose tombstones fit in an answer is
    said with them, as the core's answer carries them (it was said to have none, which the
    core's answer never was: a full, audited fetch at every refresh)."""
    cache = cache_of(core, clock)
    cache.max_tombstones = 0
    _tombstone(cache, 1, "ab" * 16)
    assert cache.overflowed == {V1.uid}
    core.keys = [replace(V1, tombstones=frozenset({"ab" * 16}))]
    refresh(cache, clock)
    assert core.sent[-1][1] == keys_digest(core.keys)
    assert cache.refreshes_unchanged.value == 1
    _tombstone(cache, 2, "cd" * 16)  # (the events keep what is said current)
    core.keys = [replace(V1, tombstones=frozenset({"ab" * 16, "cd" * 16}))]
    refresh(cache, clock)
    assert cache.refreshes_unchanged.value == 2
    assert cache.overflowed == {V1.uid} and cache.tombstone_count == 0  # still the core's
    assert cache.current("demo", "app") == V1


def test_an_overflowed_version_learns_what_the_answer_carries_of_it(core, clock) -> None:
    """Not known (a resync): a full answer, then "unchanged"; one whose tombstones pass
    an answer's room is said without them, as the core's answer carries it."""
    cache = cache_of(core, clock)
    cache.max_tombstones = 0
    _tombstone(cache, 1, "ab" * 16)
    cache.resync()
    cache.prewarm("demo", "app", APP)
    core.keys = [replace(V1, tombstones=frozenset({"ab" * 16}))]
    refresh(cache, clock)
    assert cache.refreshes_unchanged.value == 0  # (a full answer: it had nothing to say)
    refresh(cache, clock)
    assert cache.refreshes_unchanged.value == 1
    many = [f"{n:032x}" for n in range(MAX_SENT_TOMBSTONES)]
    for n, token_id in enumerate(many):
        _tombstone(cache, n + 2, token_id)
    core.keys = [replace(V1, tombstones=None)]  # past the answer's room: none
    refresh(cache, clock)
    assert core.sent[-1][1] == keys_digest(core.keys)
    assert cache.refreshes_unchanged.value == 2


def test_an_event_while_the_fetch_is_out_fetches_the_whole_answer(core, clock) -> None:
    cache = cache_of(core, clock)
    core.hold = []
    refresh(cache, clock)
    [answer] = core.hold
    core.keys = [replace(V1, tombstones=frozenset({"ab" * 16}))]
    cache.apply_event(1, EventKind.L4_TOMBSTONE.value, "demo",
                      {"token_id": "ab" * 16, "unique_identifier": V1.uid})
    core.hold = None
    answer.callback(None)  # "unchanged": of what was held before the event
    assert core.sent[-1] == (None, None)  # the whole answer, asked at once
    assert cache.refreshes_unchanged.value == 0
    assert cache.current("demo", "app") == V1 and cache.stale_hits.value == 0


def test_a_service_whose_answered_version_was_dropped_sends_a_plain_fetch(core,
                                                                          clock) -> None:
    cache = cache_of(core, clock)
    cache.apply_event(1, EventKind.L3_STATE.value, "demo",
                      {"unique_identifier": V1.uid, "service": "app",
                       "state": int(State.COMPROMISED)})
    cache.prewarm("demo", "app", APP)
    assert core.sent[-1] == (None, None)


def test_a_request_that_misses_what_is_held_past_max_stale_is_confirmed_too(core,
                                                                            clock) -> None:
    cache = cache_of(core, clock)
    clock.advance(cache.max_stale + 1)
    assert cache.lacks(Need("demo", "app"), APP)
    cache.ensure([Need("demo", "app")], APP)
    assert core.sent[-1] == (None, keys_digest(core.keys))
    assert not cache.lacks(Need("demo", "app"), APP)


def test_a_rotation_while_the_fetch_is_out_fetches_the_whole_answer(core, clock) -> None:
    """The event of a new version has the service fetched; a refresh already out takes that
    fetch's place, and its "unchanged" may have been read before the version was made."""
    cache = cache_of(core, clock)
    core.hold = []
    refresh(cache, clock)
    [answer] = core.hold
    core.keys = [replace(V2, tombstones=frozenset()), replace(V1, tombstones=frozenset())]
    cache.apply_event(1, EventKind.L3_ROTATED.value, "demo",
                      {"unique_identifier": V2.uid, "service": "app", "key_version": 2})
    core.hold = None
    answer.callback(None)  # "unchanged": read before the rotation
    assert core.sent[-1] == (None, None)
    assert cache.current("demo", "app") == V2
    assert cache.refreshes_unchanged.value == 0


def test_a_version_dropped_while_the_fetch_is_out_fetches_the_whole_answer(core,
                                                                           clock) -> None:
    """What is held no longer has the answer's version: nothing to take as the answer."""
    cache = cache_of(core, clock)
    core.hold = []
    refresh(cache, clock)
    [answer] = core.hold
    core.keys = [replace(V2, tombstones=frozenset())]
    cache.apply_event(1, EventKind.L3_STATE.value, "demo",
                      {"unique_identifier": V1.uid, "service": "app",
                       "state": int(State.COMPROMISED)})
    core.hold = None
    answer.callback(None)  # "unchanged": read before the compromise
    assert core.sent[-1] == (None, None)
    assert cache.fetches_running == 0
    assert cache.current("demo", "app") == V2 and not cache.holds(V1.uid)
    assert cache.refreshes_unchanged.value == 0


def test_a_version_held_is_refreshed_by_uid_as_held(core, clock) -> None:
    cache = cache_of(core, clock)
    done: list = []
    cache.ensure([Need(uid=V1.uid)], APP).addCallback(done.append)
    assert done == [{}]
    assert core.sent[-1] == (V1.uid, keys_digest([replace(V1, tombstones=frozenset())]))
    assert cache.refreshes_unchanged.value == 1
    assert cache.by_uid(V1.uid, APP) == V1


def _revoked(cache: L3Cache, uid: str, count: int, first: int = 0) -> frozenset[str]:
    """``count`` l4.tombstone events under ``uid``; their TokenIds."""
    tokens = [f"{n:032x}" for n in range(first, first + count)]
    for n, token in enumerate(tokens):
        cache.apply_event(first + n + 1, EventKind.L4_TOMBSTONE.value, "demo",
                          {"token_id": token, "unique_identifier": uid})
    return frozenset(tokens)


def test_a_held_version_past_the_tombstones_an_answer_carries_is_said_without_them(
        core, clock) -> None:
    """A version held before its tombstones outgrew an answer's MAX_SENT_TOMBSTONES: the
    core now sends it without them (the gateway keeps those it holds, and the events add
    the rest), so that is what the refresh says it holds, or no refresh of it would ever
    be unchanged again."""
    cache = cache_of(core, clock)
    _revoked(cache, V1.uid, MAX_SENT_TOMBSTONES + 1)
    assert cache.overflowed == set()
    core.keys = [replace(V1, tombstones=None)]  # what the core sends now
    refresh(cache, clock)
    assert core.sent[-1] == (None, keys_digest(core.keys))
    assert cache.refreshes_unchanged.value == 1
    assert cache.overflowed == set() and cache.is_tombstoned(f"{0:032x}")
    cache.ensure([Need(uid=V1.uid)], APP)  # (by uid: the whole room for the one version)
    assert core.sent[-1] == (V1.uid, keys_digest(core.keys))


def test_the_tombstones_of_an_answer_share_its_room_newest_version_first(core,
                                                                        clock) -> None:
    cache = cache_of(core, clock)
    core.keys = [replace(V2, tombstones=frozenset()), replace(V1, tombstones=frozenset())]
    refresh(cache, clock)
    newer = _revoked(cache, V2.uid, 600)
    older = _revoked(cache, V1.uid, 500, first=600)
    core.keys = [replace(V2, tombstones=newer), replace(V1, tombstones=None)]
    refresh(cache, clock)
    assert core.sent[-1] == (None, keys_digest(core.keys))
    assert cache.refreshes_unchanged.value == 1
    # By uid, the older version's fit.
    core.keys = [replace(V2, tombstones=newer), replace(V1, tombstones=older)]
    cache.ensure([Need(uid=V1.uid)], APP)
    assert core.sent[-1] == (V1.uid, keys_digest([core.keys[1]]))
    assert cache.refreshes_unchanged.value == 2


def test_as_many_tombstones_as_an_answer_carries_are_said(core, clock) -> None:
    cache = cache_of(core, clock)
    tokens = _revoked(cache, V1.uid, MAX_SENT_TOMBSTONES)
    core.keys = [replace(V1, tombstones=tokens)]
    refresh(cache, clock)
    assert core.sent[-1] == (None, keys_digest(core.keys))
    assert cache.refreshes_unchanged.value == 1
