"""The gateway's L3 cache: first use, TTL refresh, max-stale, fail closed, every event kind,
and who asks before anything about a held or dropped version."""

from __future__ import annotations

from dataclasses import replace

import pytest
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock

from kcm.gateway.l3_cache import L3Cache, Need, ServiceKeyMissing
from kcm.gateway.link_client import ServiceKeyRefused
from kcm.kernel.missing import object_not_found
from kcm.kmip.enums import ResultReason, State
from kcm.kmip.errors import KmipError
from kcm.l4.authorize import ServiceKeyUseDenied
from kcm.l4.opened_keys import OpenedKeys
from kcm.l4.service_key import ServiceKey
from tests.core_support import admin_principal, service_principal
from tests.gateway_support import FakeLink

APP = service_principal()
STRANGER = service_principal("other", "app")
BILLING = service_principal("demo", "billing")
V1 = ServiceKey("l3-00000000-0000-4000-8000-000000000001", "demo", "app", 1, State.ACTIVE,
                b"1" * 32)
V2 = ServiceKey("l3-00000000-0000-4000-8000-000000000002", "demo", "app", 2, State.ACTIVE,
                b"2" * 32)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def link() -> FakeLink:
    link = FakeLink()
    link.keys[("demo", "app")] = [V1]
    link.keys[V1.uid] = [V1]
    link.keys[V2.uid] = [V2]
    return link


@pytest.fixture
def cache(clock: Clock, link: FakeLink) -> L3Cache:
    return L3Cache(link.fetch_service_keys, connected=lambda: not link.down,
                   clock=clock.seconds, ttl=300, max_stale=3600)


def warm(cache: L3Cache) -> None:
    cache.ensure([Need("demo", "app")], APP)


def test_a_miss_is_recorded_then_fetched_on_behalf_of_the_caller(cache, link) -> None:
    keys = cache.key_source(APP)
    with pytest.raises(ServiceKeyMissing):
        keys.current_service_key("demo", "app")
    with pytest.raises(ServiceKeyMissing):
        keys.service_key(V2.uid)
    assert keys.misses == [Need("demo", "app"), Need(uid=V2.uid)]
    cache.ensure(keys.misses, APP)
    assert set(link.fetches) == {(APP, "demo", "app", None), (APP, "", "", V2.uid)}
    again = cache.key_source(APP)
    assert again.current_service_key("demo", "app") == V1
    assert again.service_key(V2.uid) == V2
    assert again.misses == []


def test_reads_never_touch_the_link_while_fresh(cache, link, clock) -> None:
    warm(cache)
    link.fetches.clear()
    clock.advance(299)
    assert cache.key_source(APP).current_service_key("demo", "app") == V1
    assert link.fetches == []


def test_stale_keys_serve_and_refresh_in_the_background_once(cache, link, clock) -> None:
    warm(cache)
    link.fetches.clear()
    link.hold_fetches = True
    clock.advance(301)
    keys = cache.key_source(APP)
    assert keys.current_service_key("demo", "app") == V1
    assert keys.current_service_key("demo", "app") == V1
    assert link.fetches == [(APP, "demo", "app", None)]  # one refresh in flight, not two
    link.pending[0].callback([V2])
    assert keys.current_service_key("demo", "app") == V2


def test_periodic_refresh_keeps_unused_keys_fresh(cache, link, clock) -> None:
    warm(cache)
    link.fetches.clear()
    clock.advance(301)
    cache.refresh_due()
    assert link.fetches == [(APP, "demo", "app", None)]  # it confirmed V1 as well
    link.down = True
    clock.advance(3500)  # 3500 s since the refresh, < max_stale
    assert cache.key_source(APP).current_service_key("demo", "app") == V1
    assert cache.key_source(APP).service_key(V1.uid) == V1


def test_core_unreachable_serves_stale_up_to_max_stale_then_fails_closed(cache, link,
                                                                          clock) -> None:
    warm(cache)
    link.down = True
    clock.advance(3600)
    assert cache.key_source(APP).current_service_key("demo", "app") == V1
    assert cache.key_source(APP).service_key(V1.uid) == V1
    clock.advance(1)
    with pytest.raises(KmipError) as e:
        cache.key_source(APP).current_service_key("demo", "app")
    assert e.value.reason == ResultReason.GENERAL_FAILURE
    assert "unreachable" in e.value.message and "3600" in e.value.message
    with pytest.raises(KmipError, match="unreachable"):
        cache.key_source(APP).service_key(V1.uid)


def test_past_max_stale_with_the_core_reachable_is_a_miss_again(cache, link, clock) -> None:
    warm(cache)
    clock.advance(3601)
    keys = cache.key_source(APP)
    with pytest.raises(ServiceKeyMissing):
        keys.service_key(V1.uid)
    assert keys.misses == [Need(uid=V1.uid)]


def fetched(cache: L3Cache, needs, principal) -> dict:
    """Fetch ``needs`` for ``principal``: what a request then knows of its fetches."""
    answered: list[dict] = []
    cache.ensure(needs, principal).addCallback(answered.append)
    [errors] = answered
    return {need: errors.get(need) for need in needs}


def test_a_failed_fetch_explains_itself_on_the_final_try(cache, link) -> None:
    link.down = True
    keys = cache.key_source(APP)
    with pytest.raises(ServiceKeyMissing):
        keys.current_service_key("demo", "app")
    known = fetched(cache, keys.misses, APP)
    with pytest.raises(KmipError, match="not cached at the gateway and the core is "
                       r"unreachable \(.*\); try again$"):  # (a client may retry it: 75)
        cache.key_source(APP, final=True, fetched=known).current_service_key("demo", "app")
    with pytest.raises(ServiceKeyMissing):  # why belongs to the request, not to the cache
        cache.key_source(APP, final=True).current_service_key("demo", "app")


def test_a_held_version_is_a_miss_for_whoever_may_not_use_it(clock, link) -> None:
    """Who asks comes first: another tenant's (or service's) held version is fetched on the
    caller's behalf like one never seen, so the core answers it; the core's refusal of who
    asks becomes the refusal the handler logs."""
    unknown = object_not_found(V1.uid)

    def fetch(caller, tenant, service, uid=None):
        if caller is APP:
            return link.fetch_service_keys(caller, tenant, service, uid)
        return fail(ServiceKeyRefused(unknown.reason, unknown.message, owner=("demo", "app")))

    cache = L3Cache(fetch, connected=lambda: True, clock=clock.seconds)
    cache.ensure([Need(uid=V1.uid)], APP)
    assert cache.holds(V1.uid)
    for who in (STRANGER, BILLING):
        assert cache.lacks(Need(uid=V1.uid), who)
        keys = cache.key_source(who)
        with pytest.raises(ServiceKeyMissing):
            keys.service_key(V1.uid)
        assert keys.misses == [Need(uid=V1.uid)]
    assert not cache.lacks(Need(uid=V1.uid), APP)
    assert not cache.lacks(Need(uid=V1.uid), admin_principal())
    known = fetched(cache, [Need(uid=V1.uid)], STRANGER)
    with pytest.raises(ServiceKeyUseDenied) as refused:
        cache.key_source(STRANGER, fetched=known).service_key(V1.uid)
    assert (refused.value.reason, refused.value.message) == (unknown.reason, unknown.message)
    assert refused.value.why == "another tenant's key"
    assert cache.key_source(APP).service_key(V1.uid) == V1  # the owner is unaffected



def test_a_version_served_for_another_caller_is_refused_here_by_the_same_rule(
        clock) -> None:
    """A fetch made on a stranger's behalf that brought the version anyway (a core that
    serves whoever asks): the gateway refuses it by the rule the core applies, as the
    missing key it is to that caller, never with the key."""
    cache = L3Cache(lambda caller, tenant, service, uid=None: succeed([V1]),
                    connected=lambda: True, clock=clock.seconds)
    known = fetched(cache, [Need(uid=V1.uid)], STRANGER)
    assert known == {Need(uid=V1.uid): None} and cache.holds(V1.uid)
    with pytest.raises(ServiceKeyUseDenied) as refused:
        cache.key_source(STRANGER, fetched=known).service_key(V1.uid)
    unknown = object_not_found(V1.uid)
    assert (refused.value.reason, refused.value.message) == (unknown.reason, unknown.message)
    assert refused.value.why == "another tenant's key"

def test_why_a_fetch_failed_is_the_asking_requests_alone(clock) -> None:
    """Two requests fetching the same version: each sees its own answer, never the other's
    (another tenant's refusal must not reach the owner, nor the owner's the stranger)."""
    answers = {APP: KmipError(ResultReason.GENERAL_FAILURE, "owner's"),
               STRANGER: KmipError(ResultReason.OBJECT_NOT_FOUND, "stranger's")}
    cache = L3Cache(lambda caller, tenant, service, uid=None: fail(answers[caller]),
                    connected=lambda: True, clock=clock.seconds)
    need = Need(uid=V2.uid)
    for_app, for_stranger = fetched(cache, [need], APP), fetched(cache, [need], STRANGER)
    with pytest.raises(KmipError, match="owner's"):
        cache.key_source(APP, fetched=for_app).service_key(V2.uid)
    with pytest.raises(KmipError, match="stranger's"):
        cache.key_source(STRANGER, fetched=for_stranger).service_key(V2.uid)


def test_rotation_event_fetches_the_new_current_version(cache, link) -> None:
    warm(cache)
    link.keys[("demo", "app")] = [V2, V1]
    link.fetches.clear()
    cache.apply_event(7, "l3.rotated", "demo",
                      {"unique_identifier": V2.uid, "service": "app", "key_version": 2})
    assert link.fetches == [(APP, "demo", "app", None)]
    assert cache.key_source(APP).current_service_key("demo", "app") == V2
    assert cache.key_source(APP).service_key(V1.uid) == V1  # old tokens still open
    assert cache.last_event_sequence == 7


def test_rotation_of_a_service_never_used_here_fetches_nothing(cache, link) -> None:
    cache.apply_event(1, "l3.rotated", "demo", {"unique_identifier": V2.uid,
                                                "service": "other", "key_version": 2})
    assert link.fetches == []


def test_deactivated_l3_is_decrypt_only_and_no_longer_current(cache) -> None:
    warm(cache)
    cache.apply_event(2, "l3.state", "demo", {"unique_identifier": V1.uid, "service": "app",
                                              "state": State.DEACTIVATED})
    keys = cache.key_source(APP)
    assert keys.service_key(V1.uid).state == State.DEACTIVATED
    with pytest.raises(ServiceKeyMissing):
        keys.current_service_key("demo", "app")


@pytest.mark.parametrize("state", [State.COMPROMISED, State.DESTROYED,
                                   State.DESTROYED_COMPROMISED])
def test_compromised_or_destroyed_l3_is_dropped_now(cache, link, state) -> None:
    warm(cache)
    cache.apply_event(3, "l3.state", "demo", {"unique_identifier": V1.uid, "service": "app",
                                              "state": state})
    assert not cache.holds(V1.uid)
    # Kept as a marker of its owner and state, without material: the engine answers by it,
    # as the core's engine answers by the stored state.
    assert cache.key_source(APP).service_key(V1.uid) == ServiceKey(
        V1.uid, "demo", "app", 1, state, b"")
    with pytest.raises(ServiceKeyMissing):  # to anyone else, as unknown as ever
        cache.key_source(STRANGER).service_key(V1.uid)
    link.fetches.clear()
    with pytest.raises(ServiceKeyMissing):  # a Create asks the core for the new current one
        cache.key_source(APP).current_service_key("demo", "app")


def test_fetched_keys_in_a_drop_state_are_not_held(cache, link) -> None:
    compromised = ServiceKey(V2.uid, "demo", "app", 2, State.COMPROMISED, b"2" * 32)
    link.keys[V2.uid] = [compromised]
    cache.ensure([Need(uid=V2.uid)], APP)
    assert not cache.holds(V2.uid)
    assert cache.key_source(APP).service_key(V2.uid) == ServiceKey(
        V2.uid, "demo", "app", 2, State.COMPROMISED, b"")  # the material is not kept


def test_tombstone_event_refuses_the_token(cache) -> None:
    assert not cache.key_source(APP).is_tombstoned("ab" * 16)
    cache.apply_event(4, "l4.tombstone", "demo", {"token_id": "ab" * 16,
                                                  "unique_identifier": V1.uid})
    assert cache.key_source(APP).is_tombstoned("ab" * 16)


def test_policy_and_unknown_events_change_nothing(cache) -> None:
    warm(cache)
    cache.apply_event(5, "policy", "demo", {})
    cache.apply_event(6, "something.new", "demo", {})
    assert cache.key_source(APP).current_service_key("demo", "app") == V1
    assert cache.last_event_sequence == 6


def test_resync_forgets_keys_but_not_tombstones(cache) -> None:
    warm(cache)
    cache.apply_event(1, "l4.tombstone", "demo", {"token_id": "cd" * 16})
    cache.resync()
    assert not cache.holds(V1.uid)
    with pytest.raises(ServiceKeyMissing):
        cache.key_source(APP).current_service_key("demo", "app")
    assert cache.is_tombstoned("cd" * 16)


def _tombstone(cache: L3Cache, seq: int, token_id: str, l3_uid: str) -> None:
    cache.apply_event(seq, "l4.tombstone", "demo", {"token_id": token_id,
                                                    "unique_identifier": l3_uid})


def test_tombstones_go_with_their_l3_when_it_is_destroyed(cache) -> None:
    _tombstone(cache, 1, "ab" * 16, V1.uid)
    _tombstone(cache, 2, "cd" * 16, V2.uid)
    cache.apply_event(3, "l3.state", "demo", {"unique_identifier": V1.uid, "service": "app",
                                              "state": int(State.DEACTIVATED)})
    assert cache.tombstone_count == 2  # decrypt-only: its tokens still open, unless revoked
    cache.apply_event(4, "l3.state", "demo", {"unique_identifier": V1.uid, "service": "app",
                                              "state": int(State.DESTROYED)})
    assert cache.tombstone_count == 1
    assert not cache.is_tombstoned("ab" * 16) and cache.is_tombstoned("cd" * 16)


def test_past_the_bound_the_l3_with_most_tombstones_is_left_to_the_core(cache) -> None:
    cache.max_tombstones = 3
    warm(cache)  # V1 held: its owner is known
    for seq, token in enumerate(("a1", "a2", "a3"), start=1):
        _tombstone(cache, seq, token * 16, V1.uid)
    assert not cache.overflowed and not cache.names_overflowed([Need(uid=V1.uid)], APP)
    _tombstone(cache, 4, "b1" * 16, V2.uid)  # the fourth: V1's three are given up
    assert cache.overflowed == {V1.uid} and cache.tombstone_count == 1
    assert cache.names_overflowed([Need(uid=V2.uid), Need(uid=V1.uid)], APP)
    assert not cache.names_overflowed([Need(uid=V2.uid), Need("demo", "app")], APP)
    _tombstone(cache, 5, "a4" * 16, V1.uid)  # the core holds V1's from now on
    assert cache.tombstone_count == 1
    # Destroying V1 ends it: its tokens answer Object Destroyed wherever they go.
    cache.apply_event(6, "l3.state", "demo", {"unique_identifier": V1.uid, "service": "app",
                                              "state": int(State.DESTROYED)})
    assert not cache.overflowed


# Tombstones that come with a fetched version (link version 5) ------------------------------

def test_a_fetched_version_brings_the_tombstones_made_before_this_gateway_followed(
        cache, link) -> None:
    """A restarted gateway (a worker, a new one) learns the tokens revoked before it
    linked from the fetch, before the version is used; events add to them."""
    link.keys[V1.uid] = [replace(V1, tombstones=frozenset({"a1" * 16, "a2" * 16}))]
    _tombstone(cache, 7, "a3" * 16, V1.uid)  # an event that came before the fetch's answer
    keys = cache.key_source(APP)
    with pytest.raises(ServiceKeyMissing):
        keys.service_key(V1.uid)
    cache.ensure(keys.misses, APP)
    again = cache.key_source(APP)
    assert again.service_key(V1.uid) == V1
    assert all(again.is_tombstoned(token * 16) for token in ("a1", "a2", "a3"))
    assert cache.tombstone_count == 3 and not cache.overflowed
    # A refresh that sends fewer (none of these would ever be undone) forgets nothing.
    cache.store([V1], APP)
    assert cache.tombstone_count == 3


def test_a_version_fetched_without_its_tombstones_is_left_to_the_core(cache, link) -> None:
    """An older core sends none, and a core sends none for a version with too many: not
    "none", so the gateway forwards whatever uses that version."""
    link.keys[("demo", "app")] = [replace(V1, tombstones=None)]
    warm(cache)
    assert cache.overflowed == {V1.uid}
    assert cache.names_overflowed([Need(uid=V1.uid)], APP)
    # Only for who may use it: another tenant's (or service's) takes the local path, a
    # miss fetched as a missing uid is (and remembered as one), not a trip to the core.
    assert not cache.names_overflowed([Need(uid=V1.uid)], STRANGER)
    assert not cache.names_overflowed([Need(uid=V1.uid)], BILLING)
    _tombstone(cache, 1, "a1" * 16, V1.uid)  # the core holds them
    assert cache.tombstone_count == 0
    # Complete ones later do not bring it back: an event given up meanwhile would be lost.
    cache.store([replace(V1, tombstones=frozenset())], APP)
    assert cache.overflowed == {V1.uid}


def test_a_held_version_refreshed_without_its_tombstones_keeps_them(cache, link) -> None:
    """It came with them all, and the events since added the rest: a refresh that comes
    without them (a newer version took the answer's room) changes nothing."""
    cache.store([replace(V1, tombstones=frozenset({"a1" * 16}))], APP)
    _tombstone(cache, 1, "a2" * 16, V1.uid)
    cache.store([V2, replace(V1, tombstones=None)], APP, current_of=("demo", "app"))
    assert not cache.overflowed and cache.tombstone_count == 2


def test_a_fetched_version_past_the_bound_overflows_as_events_do(cache, link) -> None:
    cache.max_tombstones = 2
    link.keys[V2.uid] = [replace(V2, tombstones=frozenset({"b1" * 16, "b2" * 16, "b3" * 16}))]
    cache.ensure([Need(uid=V2.uid)], APP)
    assert cache.overflowed == {V2.uid} and cache.tombstone_count == 0


@pytest.mark.parametrize("state", [State.DESTROYED, State.DESTROYED_COMPROMISED])
def test_a_destroyed_version_needs_no_tombstones(cache, state) -> None:
    cache.store([ServiceKey(V1.uid, "demo", "app", 1, state, b"", tombstones=None)], APP)
    assert not cache.overflowed and cache.known(V1.uid).state == state


def test_a_compromised_version_keeps_the_tombstones_it_came_with(cache) -> None:
    """The core answers a tombstoned token under a compromised L3 Object Not Found before
    it looks at the state: so does the gateway."""
    cache.store([replace(V1, state=State.COMPROMISED, key=b"",
                         tombstones=frozenset({"a1" * 16}))], APP)
    assert cache.is_tombstoned("a1" * 16) and not cache.holds(V1.uid)


# The opened DEKs (kcm.l4.opened_keys) go with what could change their use ------------------

@pytest.fixture
def opened(clock: Clock, link: FakeLink) -> tuple[L3Cache, OpenedKeys]:
    opened_keys = OpenedKeys(clock=clock.seconds)
    cache = L3Cache(link.fetch_service_keys, connected=lambda: not link.down,
                    clock=clock.seconds, ttl=300, max_stale=3600, opened_keys=opened_keys)
    warm(cache)
    cache.ensure([Need(uid=V2.uid)], APP)
    opened_keys.put("l4.1.A", "a1" * 16, V1, b"a" * 32)
    opened_keys.put("l4.1.B", "b1" * 16, V1, b"b" * 32)
    opened_keys.put("l4.1.C", "c1" * 16, V2, b"c" * 32)
    return cache, opened_keys


def _held(opened_keys: OpenedKeys) -> set[str]:
    return {token for token, key in (("l4.1.A", V1), ("l4.1.B", V1), ("l4.1.C", V2))
            if opened_keys.get(token, key) is not None}


@pytest.mark.parametrize("state", [State.DEACTIVATED, State.COMPROMISED, State.DESTROYED,
                                   State.DESTROYED_COMPROMISED])
def test_a_state_change_forgets_the_deks_of_that_l3(opened, state) -> None:
    cache, opened_keys = opened
    cache.apply_event(1, "l3.state", "demo", {"unique_identifier": V1.uid, "service": "app",
                                              "state": int(state)})
    assert _held(opened_keys) == {"l4.1.C"}


def test_a_tombstone_forgets_the_dek_of_its_token(opened) -> None:
    cache, opened_keys = opened
    _tombstone(cache, 1, "b1" * 16, V1.uid)
    assert _held(opened_keys) == {"l4.1.A", "l4.1.C"}


def test_overflowed_tombstones_forget_the_deks_of_their_l3(opened) -> None:
    cache, opened_keys = opened
    cache.max_tombstones = 1
    _tombstone(cache, 1, "ff" * 16, V2.uid)
    _tombstone(cache, 2, "ee" * 16, V1.uid)  # a tie: max() keeps the first, V2
    assert cache.overflowed == {V2.uid}
    assert _held(opened_keys) == {"l4.1.A", "l4.1.B"}


def test_a_resync_forgets_every_dek(opened) -> None:
    cache, opened_keys = opened
    cache.resync()
    assert len(opened_keys) == 0


def test_a_refresh_forgets_deks_only_when_the_version_changed(opened, link, clock) -> None:
    cache, opened_keys = opened
    cache.ensure([Need(uid=V1.uid)], APP)  # the same version again: nothing forgotten
    assert _held(opened_keys) == {"l4.1.A", "l4.1.B", "l4.1.C"}
    link.keys[V1.uid] = [ServiceKey(V1.uid, "demo", "app", 1, State.DEACTIVATED, V1.key)]
    cache.ensure([Need(uid=V1.uid)], APP)
    assert _held(opened_keys) == {"l4.1.C"}
    link.keys[V2.uid] = [ServiceKey(V2.uid, "demo", "app", 2, State.COMPROMISED, V2.key)]
    cache.ensure([Need(uid=V2.uid)], APP)  # fetched in a drop state: dropped, and its DEKs
    assert len(opened_keys) == 0


def test_a_removed_tenant_is_forgotten_markers_and_all(cache, link) -> None:
    """``tenant.removed`` (after the ``l3.state`` Destroyed of each of its L3s): the markers
    go, so a token under them is answered as the core answers it now that the rows are
    gone (a fetch: Object Not Found), not Object Destroyed from a marker; other tenants'
    markers stay."""
    warm(cache)
    other = ServiceKey("l3-00000000-0000-4000-8000-0000000000ff", "other", "app", 1,
                       State.DESTROYED, b"")
    cache.store([other], STRANGER)
    cache.apply_event(1, "l3.state", "demo", {"unique_identifier": V1.uid, "service": "app",
                                              "state": State.DESTROYED})
    assert cache.known(V1.uid) is not None
    cache.apply_event(2, "tenant.removed", "demo", {})
    assert cache.known(V1.uid) is None and cache.known(other.uid) == other
    del link.keys[V1.uid]  # the core has no row of it any more
    link.fetches.clear()
    with pytest.raises(ServiceKeyMissing):
        cache.key_source(APP).service_key(V1.uid)
    with pytest.raises(ServiceKeyMissing):  # the service is forgotten too: fetched anew
        cache.key_source(APP).current_service_key("demo", "app")
    assert cache.last_event_sequence == 2


def test_dropped_markers_are_bounded_least_recently_used_out_first(link, clock) -> None:
    cache = L3Cache(link.fetch_service_keys, connected=lambda: True, clock=clock.seconds,
                    max_dropped=2)
    marker = [ServiceKey(f"l3-00000000-0000-4000-8000-00000000010{n}", "demo", "app", n,
                         State.DESTROYED, b"") for n in range(3)]
    cache.store(marker[:2], APP)
    assert cache.key_source(APP).service_key(marker[0].uid) == marker[0]  # used: kept
    cache.store(marker[2:], APP)
    assert [cache.known(m.uid) for m in marker] == [marker[0], None, marker[2]]


def test_a_held_version_the_core_no_longer_has_for_its_caller_is_dropped_at_its_refresh(
        clock, link) -> None:
    """A database restored from before a service key version: the background refresh, on
    behalf of the caller it was fetched for, is answered "no such key", and the version
    goes at once (it was served, and sealed new L4 tokens, until max_stale, 60 min)."""
    restored = []

    def fetch(caller, tenant, service, uid=None):
        if restored and uid == V2.uid:  # the core answers as for a key it never had
            missing = object_not_found(uid)
            return fail(ServiceKeyRefused(missing.reason, missing.message))
        return link.fetch_service_keys(caller, tenant, service, uid)

    cache = L3Cache(fetch, connected=lambda: True, clock=clock.seconds, ttl=300,
                    max_stale=3600)
    cache.ensure([Need(uid=V2.uid)], APP)
    assert cache.holds(V2.uid)
    restored.append(True)  # the database is restored from before V2
    clock.advance(301)
    cache.refresh_due()
    assert not cache.holds(V2.uid)
    with pytest.raises(ServiceKeyMissing):
        cache.key_source(APP).service_key(V2.uid)


def test_another_callers_no_such_key_does_not_drop_a_held_version(clock, link) -> None:
    cache = L3Cache(link.fetch_service_keys, connected=lambda: True, clock=clock.seconds)
    cache.ensure([Need(uid=V1.uid)], APP)
    fetched(cache, [Need(uid=V1.uid)], STRANGER)  # answered as not found for it
    assert cache.holds(V1.uid)
    assert cache.key_source(APP).service_key(V1.uid) == V1
