"""The gateway's paging of a version's tombstones (link version 9): a version sent without
them is overflowed (its L4 requests go to the core) while its pages come; once the last is
in, it is held whole and served here. Events during paging, a link lost, a version
destroyed, and max_tombstones reached mid-paging."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from kcm.gateway.l3_cache import L3Cache, Need
from kcm.gateway.link_client import LinkLost, ServiceKeyRefused, TombstonePage
from kcm.gateway.tombstone_pages import MAX_RETRY_DELAY, RETRY_DELAY, TombstonePages
from kcm.kmip.enums import ResultReason, State
from kcm.l4.service_key import ServiceKey
from tests.core_support import admin_principal, service_principal

APP = service_principal()
UIDS = [f"l3-00000000-0000-4000-8000-00000000000{n}" for n in range(1, 7)]


def key(uid: str, tombstones: frozenset[str] | None = None) -> ServiceKey:
    return ServiceKey(uid, "demo", "app", 1, State.ACTIVE, b"1" * 32, tombstones=tombstones)


def tokens(n: int, start: int = 0) -> list[str]:
    return [f"{i:032x}" for i in range(start, start + n)]


class Core:
    """The core's pages, answered when the test says (``answer``)."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None, Deferred]] = []
        self.taken = True

    def fetch_page(self, caller, uid: str, after: str | None) -> Deferred:
        d: Deferred = Deferred()
        self.asked.append((uid, after, d))
        return d

    def answer(self, token_ids: list[str], more: bool, index: int = 0) -> None:
        _, _, d = self.asked.pop(index)
        d.callback(TombstonePage(token_ids, more))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def core() -> Core:
    return Core()


def paged_cache(core: Core, clock: Clock, **settings) -> tuple[L3Cache, TombstonePages]:
    cache = L3Cache(lambda *a, **k: succeed([]), connected=lambda: True, clock=clock.seconds,
                    **settings)
    pages = TombstonePages(cache, core.fetch_page, connected=lambda: True,
                           taken=lambda: core.taken, call_later=clock.callLater)
    return cache, pages


def sent_without_tombstones(cache: L3Cache, uid: str = UIDS[0]) -> None:
    cache.store([key(uid)], APP)


def test_a_version_sent_without_its_tombstones_is_paged_in_then_served_here(core,
                                                                           clock) -> None:
    cache, pages = paged_cache(core, clock)
    sent_without_tombstones(cache)
    assert cache.overflowed == {UIDS[0]}  # forwarded while the pages come
    assert cache.names_overflowed([Need(uid=UIDS[0])], APP)
    assert [(uid, after) for uid, after, _ in core.asked] == [(UIDS[0], None)]
    core.answer(tokens(1000), True)
    assert [(uid, after) for uid, after, _ in core.asked] == [(UIDS[0], tokens(1000)[-1])]
    assert cache.overflowed == {UIDS[0]} and cache.tombstone_count == 0
    core.answer(tokens(1, 1000), False)
    assert not cache.overflowed and not cache.names_overflowed([Need(uid=UIDS[0])], APP)
    assert cache.tombstone_count == 1001 and pages.pending == 0 and not core.asked
    assert all(cache.is_tombstoned(t) for t in tokens(1001))
    # Held whole: a refresh that comes without them again leaves it whole.
    cache.store([key(UIDS[0])], APP)
    assert not cache.overflowed and not core.asked


def test_events_during_paging_are_kept_with_the_pages(core, clock) -> None:
    cache, _ = paged_cache(core, clock)
    cache.apply_event(1, "l4.tombstone", "demo", {"token_id": "ee" * 16,
                                                  "unique_identifier": UIDS[0]})
    sent_without_tombstones(cache)  # (one held from before: kept for the pages too)
    cache.apply_event(2, "l4.tombstone", "demo", {"token_id": "ff" * 16,
                                                  "unique_identifier": UIDS[0]})
    assert not cache.is_tombstoned("ff" * 16)  # not held yet: the core answers meanwhile
    core.answer(tokens(2), False)
    assert not cache.overflowed
    assert all(cache.is_tombstoned(t) for t in [*tokens(2), "ee" * 16, "ff" * 16])


def test_a_link_lost_mid_paging_starts_over_on_the_next_link(core, clock) -> None:
    cache, pages = paged_cache(core, clock)
    sent_without_tombstones(cache)
    core.answer(tokens(1000), True)
    _, after, d = core.asked.pop()
    assert after == tokens(1000)[-1]
    d.errback(LinkLost("the link to the core was lost before the answer"))
    assert cache.overflowed == {UIDS[0]} and not core.asked
    clock.advance(RETRY_DELAY)
    assert [(uid, after) for uid, after, _ in core.asked] == [(UIDS[0], None)]
    core.answer(tokens(1000), True)
    core.answer(tokens(5, 1000), False)
    assert not cache.overflowed and cache.tombstone_count == 1005


def test_a_version_destroyed_mid_paging_is_forgotten_and_its_late_page_dropped(core,
                                                                              clock) -> None:
    cache, pages = paged_cache(core, clock)
    sent_without_tombstones(cache)
    cache.apply_event(1, "l3.state", "demo", {"unique_identifier": UIDS[0], "service": "app",
                                              "state": int(State.DESTROYED)})
    assert pages.pending == 0 and not cache.overflowed
    core.answer(tokens(3), False)
    assert cache.tombstone_count == 0 and not cache.overflowed and not core.asked


def test_max_tombstones_reached_mid_paging_leaves_the_version_to_the_core(core,
                                                                         clock) -> None:
    cache, pages = paged_cache(core, clock, max_tombstones=1500)
    sent_without_tombstones(cache)
    core.answer(tokens(1000), True)
    core.answer(tokens(1000, 1000), True)
    assert pages.pending == 0 and not core.asked  # no more pages
    assert cache.overflowed == {UIDS[0]} and cache.tombstone_count == 0
    # Fetched again without them: still overflowed, not paged again.
    cache.store([key(UIDS[0])], APP)
    assert not core.asked and cache.overflowed == {UIDS[0]}


def test_a_page_refused_once_is_asked_again_and_the_version_served_here(core,
                                                                      clock) -> None:
    """(It was left to the core until the gateway restarted.)"""
    cache, pages = paged_cache(core, clock)
    sent_without_tombstones(cache)
    core.answer(tokens(1000), True)
    _, _, d = core.asked.pop()
    d.errback(ServiceKeyRefused(ResultReason.PERMISSION_DENIED, "no"))
    assert cache.overflowed == {UIDS[0]} and pages.pending == 1 and not core.asked
    clock.advance(RETRY_DELAY)
    assert [(uid, after) for uid, after, _ in core.asked] == [(UIDS[0], None)]  # over
    core.answer(tokens(1000), True)
    core.answer(tokens(2, 1000), False)
    assert not cache.overflowed and pages.pending == 0 and cache.tombstone_count == 1002
    assert not cache.names_overflowed([Need(uid=UIDS[0])], APP)  # served here


def test_pages_refused_or_failed_in_a_row_back_off_up_to_a_bound(core, clock) -> None:
    cache, pages = paged_cache(core, clock)
    sent_without_tombstones(cache)
    waits = []
    for n in range(10):
        _, _, d = core.asked.pop()
        d.errback(ServiceKeyRefused(ResultReason.OBJECT_NOT_FOUND, "no") if n % 2
                  else LinkLost("lost"))
        waited = 0.0
        while not core.asked and waited < 2 * MAX_RETRY_DELAY:
            clock.advance(0.5)
            waited += 0.5
        waits.append(waited)
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, MAX_RETRY_DELAY, MAX_RETRY_DELAY,
                     MAX_RETRY_DELAY, MAX_RETRY_DELAY]
    core.answer(tokens(5), True)  # a page in: the back-off starts over
    _, _, d = core.asked.pop()
    d.errback(LinkLost("lost"))
    clock.advance(RETRY_DELAY)
    assert [(uid, after) for uid, after, _ in core.asked] == [(UIDS[0], None)]


def test_a_refused_version_is_asked_again_for_its_latest_caller(clock) -> None:
    callers = []
    core = Core()
    cache, pages = paged_cache(core, clock)
    pages._fetch_page = lambda caller, uid, after: (callers.append(caller),
                                                    core.fetch_page(caller, uid, after))[1]
    sent_without_tombstones(cache)
    admin = admin_principal()
    cache.store([key(UIDS[0])], admin)  # fetched again, by an administrator
    _, _, d = core.asked.pop()
    d.errback(ServiceKeyRefused(ResultReason.PERMISSION_DENIED, "no"))
    clock.advance(RETRY_DELAY)
    assert callers == [APP, admin]


def test_a_core_without_pages_leaves_the_version_overflowed(core, clock) -> None:
    core.taken = False  # a core of link version 8
    cache, pages = paged_cache(core, clock)
    sent_without_tombstones(cache)
    assert cache.overflowed == {UIDS[0]} and pages.pending == 0 and not core.asked


def test_a_relink_to_a_core_without_pages_gives_up_paging(core, clock) -> None:
    cache, pages = paged_cache(core, clock)
    sent_without_tombstones(cache)
    _, _, d = core.asked.pop()
    core.taken = False
    d.errback(LinkLost("lost"))
    clock.advance(RETRY_DELAY)
    assert pages.pending == 0 and not core.asked and cache.overflowed == {UIDS[0]}


def test_a_version_a_core_without_pages_sent_is_paged_in_once_linked_to_one_that_pages(
        core, clock) -> None:
    # A rolling upgrade, gateway first: its fetch answered by a core of link version 7 left
    # the version overflowed; a refresh from a core of version 9 says "unchanged" (the
    # version's tombstones are past an answer's room on both ends), so only the link tells.
    core.taken = False
    cache, pages = paged_cache(core, clock)
    sent_without_tombstones(cache)
    pages.linked()  # (a link to a core that still sends no pages: nothing)
    assert not core.asked and cache.overflowed == {UIDS[0]}
    core.taken = True
    pages.linked()
    assert [(uid, after) for uid, after, _ in core.asked] == [(UIDS[0], None)]
    core.answer(tokens(3), more=False)
    assert cache.overflowed == set() and pages.pending == 0
    pages.linked()  # (once paged in, never again)
    assert not core.asked


def test_a_version_given_up_on_a_relink_to_a_core_without_pages_is_paged_on_the_next(
        core, clock) -> None:
    cache, pages = paged_cache(core, clock)
    sent_without_tombstones(cache)
    _, _, d = core.asked.pop()
    core.taken = False
    d.errback(LinkLost("lost"))
    clock.advance(RETRY_DELAY)
    assert pages.pending == 0 and cache.overflowed == {UIDS[0]}
    core.taken = True
    pages.linked()
    core.answer(tokens(2), more=False)
    assert cache.overflowed == set()


def test_a_version_forgotten_is_not_paged_once_linked_to_a_core_that_pages(core,
                                                                          clock) -> None:
    core.taken = False
    cache, pages = paged_cache(core, clock)
    sent_without_tombstones(cache)
    pages.forget(UIDS[0])
    cache.overflowed.discard(UIDS[0])  # (as a destroyed version's is)
    core.taken = True
    pages.linked()
    assert not core.asked and pages.pending == 0


def test_one_page_per_version_and_a_few_at_once(core, clock) -> None:
    cache, pages = paged_cache(core, clock)
    for uid in UIDS:
        sent_without_tombstones(cache, uid)
    assert [uid for uid, _, _ in core.asked] == UIDS[:pages.at_once]
    core.answer(tokens(1000), True)  # UIDS[0] goes to the back of the line
    assert [uid for uid, _, _ in core.asked] == [*UIDS[1:pages.at_once], UIDS[pages.at_once]]
    while core.asked:
        assert len({uid for uid, _, _ in core.asked}) == len(core.asked) <= pages.at_once
        core.answer([], False)
    assert not cache.overflowed and pages.pending == 0


def test_a_resync_mid_paging_starts_the_version_over(core, clock) -> None:
    """Events missed (a restored database, pruned events) may be below the cursor."""
    cache, pages = paged_cache(core, clock)
    sent_without_tombstones(cache)
    core.answer(tokens(1000), True)
    cache.resync()
    assert [(uid, after) for uid, after, _ in core.asked] == [(UIDS[0], tokens(1000)[-1])]
    core.answer(tokens(1, 1000), False)  # the page in flight: the last, but it starts over
    assert [(uid, after) for uid, after, _ in core.asked] == [(UIDS[0], None)]
    assert cache.overflowed == {UIDS[0]} and pages.pending == 1
    core.answer([*tokens(2), "f" * 32], False)
    assert not cache.overflowed and cache.tombstone_count == 1002
    assert cache.is_tombstoned("f" * 32)
    # Not in flight at the resync: from the first page at once.
    sent_without_tombstones(cache, UIDS[1])
    _, _, d = core.asked.pop()
    d.errback(LinkLost("lost"))
    cache.resync()
    clock.advance(RETRY_DELAY)
    assert [(uid, after) for uid, after, _ in core.asked] == [(UIDS[1], None)]


def test_a_busy_core_is_asked_again_from_the_first_page(core, clock) -> None:
    cache, pages = paged_cache(core, clock)
    sent_without_tombstones(cache)
    core.answer(tokens(1000), True)
    _, _, d = core.asked.pop()
    d.errback(ServiceKeyRefused(ResultReason.GENERAL_FAILURE, "the core is busy"))
    clock.advance(RETRY_DELAY)
    assert [(uid, after) for uid, after, _ in core.asked] == [(UIDS[0], None)]
    assert pages.pending == 1 and cache.overflowed == {UIDS[0]}


def test_a_resync_starts_over_a_version_waiting_its_turn_with_a_cursor(core, clock) -> None:
    """Not in flight but queued (at_once versions ahead of it), with a cursor: what was
    missed may be below that cursor, so its next page is its first."""
    cache, pages = paged_cache(core, clock)
    for uid in UIDS[:pages.at_once + 1]:
        sent_without_tombstones(cache, uid)
    core.answer(tokens(1000), True)  # UIDS[0] waits behind UIDS[at_once], its cursor set
    assert UIDS[0] not in [uid for uid, _, _ in core.asked]
    cache.resync()
    while UIDS[0] not in [uid for uid, _, _ in core.asked]:
        core.answer([], False, index=0)
    assert [after for uid, after, _ in core.asked if uid == UIDS[0]] == [None]


def test_a_token_both_in_an_event_and_a_page_counts_once_against_the_bound(core,
                                                                           clock) -> None:
    """Exactly max_tombstones distinct ones are held whole, an event's token also paged
    counted once."""
    cache, pages = paged_cache(core, clock, max_tombstones=1001)
    sent_without_tombstones(cache)
    cache.apply_event(1, "l4.tombstone", "demo", {"token_id": tokens(1)[0],
                                                  "unique_identifier": UIDS[0]})
    core.answer(tokens(1000), True)
    core.answer(tokens(1, 1000), False)
    assert not cache.overflowed and cache.tombstone_count == 1001 and pages.pending == 0


def test_what_a_version_paged_held_is_given_back_when_it_ends(core, clock) -> None:
    """Forgotten (destroyed, its late page dropped), given up at the bound, or whole: what
    its pages held no longer counts against max_tombstones for the next version."""
    cache, pages = paged_cache(core, clock, max_tombstones=1500)
    sent_without_tombstones(cache, UIDS[0])
    core.answer(tokens(1000), True)
    cache.apply_event(1, "l3.state", "demo", {"unique_identifier": UIDS[0], "service": "app",
                                              "state": int(State.DESTROYED)})
    core.answer(tokens(5, 1000), False)  # its late page: dropped
    sent_without_tombstones(cache, UIDS[1])  # given up at the bound mid-page
    core.answer(tokens(1000, 2000), True)
    core.answer(tokens(600, 3000), True)
    assert UIDS[1] in cache.overflowed and pages.pending == 0 and not core.asked
    sent_without_tombstones(cache, UIDS[2])  # whole
    core.answer(tokens(1000, 4000), True)
    core.answer(tokens(400, 5000), False)
    assert UIDS[2] not in cache.overflowed and cache.tombstone_count == 1400
    cache.apply_event(2, "l3.state", "demo", {"unique_identifier": UIDS[2], "service": "app",
                                              "state": int(State.DESTROYED)})
    sent_without_tombstones(cache, UIDS[3])
    core.answer(tokens(1000, 6000), True)
    core.answer(tokens(500, 7000), False)
    assert UIDS[3] not in cache.overflowed and cache.tombstone_count == 1500


def test_a_retry_while_no_link_is_up_waits_for_the_next(clock) -> None:
    """Not linked at the retry (no core to ask whether it sends pages): the version waits
    its turn, it is not given up."""
    core, up = Core(), [True]
    cache = L3Cache(lambda *a, **k: succeed([]), connected=lambda: True, clock=clock.seconds)
    pages = TombstonePages(cache, core.fetch_page, connected=lambda: up[0],
                           taken=lambda: up[0], call_later=clock.callLater)
    sent_without_tombstones(cache)
    _, _, d = core.asked.pop()
    up[0] = False
    d.errback(LinkLost("lost"))
    clock.advance(RETRY_DELAY)
    assert pages.pending == 1 and [(uid, after) for uid, after, _ in core.asked] == [
        (UIDS[0], None)]


def test_a_failed_page_after_a_resync_starts_over_once(core, clock) -> None:
    cache, pages = paged_cache(core, clock)
    sent_without_tombstones(cache)
    core.answer(tokens(1000), True)
    cache.resync()  # (its page in flight)
    _, _, d = core.asked.pop()
    d.errback(LinkLost("lost"))
    clock.advance(RETRY_DELAY)
    core.answer(tokens(3), False)  # the first page again, and the last
    assert not cache.overflowed and pages.pending == 0 and not core.asked


def test_a_tenant_removed_mid_paging_is_paged_no_more(core, clock) -> None:
    cache, pages = paged_cache(core, clock)
    sent_without_tombstones(cache)
    core.answer(tokens(1000), True)
    cache.apply_event(1, "tenant.removed", "demo", {})
    assert pages.pending == 0 and not cache.overflowed
    core.answer(tokens(3, 1000), False)
    assert not core.asked and cache.tombstone_count == 0


def test_held_tombstones_move_to_the_pages_while_paging(core, clock) -> None:
    cache, pages = paged_cache(core, clock, max_tombstones=1001)
    cache.apply_event(1, "l4.tombstone", "demo", {"token_id": "ee" * 16,
                                                  "unique_identifier": UIDS[0]})
    sent_without_tombstones(cache)
    assert cache.tombstone_count == 0 and pages.pending == 1
    core.answer(tokens(1000), False)
    assert cache.tombstone_count == 1001 and not cache.overflowed


def forget_idle(cache: L3Cache, clock: Clock) -> None:
    for _ in range(40):
        clock.advance(100)
        cache.refresh_due()
    assert cache.size == 0


def test_a_version_held_whole_then_idle_is_not_paged_again_when_fetched_again(core,
                                                                              clock) -> None:
    """Its tombstones stay when its key is forgotten idle, and the events go on adding to
    them: fetched again without them, it is served here at once, not overflowed and paged
    in from its first page again (200 pages for 200,000). After a resync (events may have
    been missed) it is paged again."""
    cache, pages = paged_cache(core, clock, idle=10.0)
    sent_without_tombstones(cache)
    core.answer(tokens(1000), True)
    core.answer(tokens(5, 1000), False)
    forget_idle(cache, clock)
    cache.apply_event(1, "l4.tombstone", "demo", {"token_id": "ee" * 16,
                                                  "unique_identifier": UIDS[0]})
    sent_without_tombstones(cache)
    assert not cache.overflowed and not core.asked and pages.pending == 0
    assert cache.tombstone_count == 1006 and cache.is_tombstoned("ee" * 16)
    cache.resync()
    sent_without_tombstones(cache)
    assert cache.overflowed == {UIDS[0]} and [(uid, after) for uid, after, _ in core.asked] \
        == [(UIDS[0], None)]


def test_a_version_whose_answer_carried_its_tombstones_is_whole_until_given_up(
        core, clock) -> None:
    """Taken with its tombstones, then grown past an answer's room by events and forgotten
    idle: whole here still. Given up at max_tombstones, it is no longer."""
    cache, pages = paged_cache(core, clock, idle=10.0, max_tombstones=2000)
    cache.store([key(UIDS[0], frozenset(tokens(10)))], APP)
    for n, token_id in enumerate(tokens(1000, 10)):
        cache.apply_event(n + 1, "l4.tombstone", "demo", {"token_id": token_id,
                                                          "unique_identifier": UIDS[0]})
    forget_idle(cache, clock)
    sent_without_tombstones(cache)
    assert not cache.overflowed and not core.asked and cache.tombstone_count == 1010
    for n, token_id in enumerate(tokens(991, 2000)):
        cache.apply_event(2000 + n, "l4.tombstone", "demo", {"token_id": token_id,
                                                             "unique_identifier": UIDS[0]})
    assert cache.overflowed == {UIDS[0]}  # past max_tombstones: given up
    forget_idle(cache, clock)
    sent_without_tombstones(cache)
    assert cache.overflowed == {UIDS[0]} and not core.asked


def test_a_version_without_tombstones_is_not_kept_whole(core, clock) -> None:
    """(Nothing to keep: a fetch carries them all again; the uids kept are bounded by the
    tombstones held.)"""
    cache, _ = paged_cache(core, clock, idle=10.0)
    cache.store([key(UIDS[0], frozenset())], APP)
    forget_idle(cache, clock)
    sent_without_tombstones(cache)
    assert cache.overflowed == {UIDS[0]} and core.asked


def test_the_page_places_are_shared_between_tenants_in_turn(core, clock) -> None:
    """One tenant's versions with many tombstones hold every place; another tenant's first
    version takes the next one free, not the place after all theirs (FIFO: it waited for
    every version queued ahead of it, each of which went to the back of the line again
    after each page, 200 pages for 200,000 tombstones)."""
    cache, pages = paged_cache(core, clock)
    other = service_principal("acme", "billing")
    for uid in UIDS[:pages.at_once + 2]:
        sent_without_tombstones(cache, uid)
    acme = "l3-00000000-0000-4000-8000-0000000000aa"
    cache.store([ServiceKey(acme, "acme", "billing", 1, State.ACTIVE, b"2" * 32,
                            tombstones=None)], other)
    assert [uid for uid, _, _ in core.asked] == UIDS[:pages.at_once]  # demo's, all places
    core.answer(tokens(1000), True)  # demo's first page in: acme's turn
    assert [uid for uid, _, _ in core.asked] == [*UIDS[1:pages.at_once], acme]
    core.answer(tokens(1000), True, index=len(core.asked) - 1)  # acme's: more follow
    assert [uid for uid, _, _ in core.asked][-1] == acme  # (its 1 in flight vs demo's 3)
    core.answer(tokens(3), False, index=0)  # demo's: then demo's waiting one
    assert [uid for uid, _, _ in core.asked][-1] == UIDS[pages.at_once]
    while core.asked:
        core.answer([], False, index=0)
    assert not cache.overflowed and pages.pending == 0


def test_a_tenant_alone_takes_every_place(core, clock) -> None:
    cache, pages = paged_cache(core, clock)
    for uid in UIDS:
        sent_without_tombstones(cache, uid)
    assert len(core.asked) == pages.at_once
