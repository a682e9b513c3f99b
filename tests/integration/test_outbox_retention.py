"""The state sweeper's outbox retention step (kcm.core.outbox_retention) on a real SQLite file
and a real PostgreSQL cluster: events older than the retention are deleted, oldest first, at
most a batch a sweep, never the newest, and no sequence number is used twice after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kcm.core.outbox_retention import OutboxPruned, prune_outbox
from kcm.core.store import repository as repo
from kcm.core.store.engine import Store
from tests.core_support import own_store

T0 = 1_800_000_000.0
DAY = 86_400.0


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Store]:
    """A migrated, empty store, usable with run_sync."""
    ksi = own_store(request, tmp_path, "outbox")
    yield ksi
    ksi.stopService()


def _write(store: Store, *ats: float) -> list[int]:
    """Events written at the times ``ats`` (seconds), in that order: their numbers."""
    return [store.run_sync(lambda s, at=at: repo.append_outbox(
        s, "l4.tombstone", "t1", f"token at {at}".encode(), clock=lambda: at)) for at in ats]


def _kept(store: Store) -> list[int]:
    return [r.seq for r in store.run_sync(lambda s: repo.outbox_since(s, 0, 100_000),
                                          write=False)]


def _sweep(store: Store, now: float, *, retention: float = DAY, limit: int = 10_000) -> list:
    return list(store.run_sync(lambda s: prune_outbox(s, now, retention=retention,
                                                      limit=limit)))


def test_events_older_than_the_retention_go_a_bounded_batch_a_sweep(store: Store) -> None:
    _write(store, *(T0 + n for n in range(30)))  # events 1-30, a second apart
    now = T0 + 20 + DAY  # events 1-20 were written more than a day before
    assert _sweep(store, now, limit=8) == [OutboxPruned(8, 8)]  # a full batch: more now
    assert _kept(store) == list(range(9, 31))
    assert _sweep(store, now, limit=8) == [OutboxPruned(8, 16)]
    assert _sweep(store, now, limit=8) == []  # 17-20: the rest of them; routine
    assert _kept(store) == list(range(21, 31))
    assert _sweep(store, now, limit=8) == [] and _kept(store) == list(range(21, 31))
    assert OutboxPruned(8, 16).more
    assert "8 events older than outbox_retention deleted, through sequence 16" in str(
        OutboxPruned(8, 16))


def test_the_newest_event_is_kept_however_old_and_its_number_never_used_again(
        store: Store) -> None:
    _write(store, *(T0 + n for n in range(5)))
    assert _sweep(store, T0 + 100 * DAY) == []
    assert _kept(store) == [5]  # every one is old: all but the newest go
    assert store.run_sync(repo.outbox_head) == 5
    assert _sweep(store, T0 + 100 * DAY) == [] and _kept(store) == [5]
    assert _write(store, T0 + 100 * DAY) == [6]  # newest + 1: no number is used twice
    assert _sweep(store, T0 + 200 * DAY) == [] and _kept(store) == [6]
    assert _write(store, T0 + 200 * DAY) == [7]
    assert [r.seq for r in store.run_sync(lambda s: repo.outbox_since(s, 0), write=False)] \
        == [6, 7]


def test_deletion_stops_at_the_first_event_not_old_enough(store: Store) -> None:
    """Cores' clocks differ: an event may be dated after the next one. Only the oldest
    events up to the first that is not old enough go, in sequence order (so what a
    relinking gateway gets is always every event after the first it gets)."""
    _write(store, T0, T0 + 1, T0 + DAY, T0 + 2, T0 + 3, T0 + 2 * DAY)
    assert _sweep(store, T0 + DAY + 10) == []
    assert _kept(store) == [3, 4, 5, 6]


def test_an_empty_or_single_event_outbox_is_left_alone(store: Store) -> None:
    assert _sweep(store, T0 + DAY) == [] and _kept(store) == []
    _write(store, T0)
    assert _sweep(store, T0 + 100 * DAY) == [] and _kept(store) == [1]


def test_a_sweep_that_writes_events_before_the_step_keeps_its_own(store: Store) -> None:
    """A sweep's rotation steps may add events in the same transaction before this step:
    the newest is then one of theirs, and the events before it may go."""
    _write(store, T0, T0 + 1)

    def rotate_then_prune(session) -> list:
        repo.append_outbox(session, "l3.rotated", "t1", b"new", clock=lambda: T0 + 10 * DAY)
        return list(prune_outbox(session, T0 + 10 * DAY, retention=DAY))

    assert store.run_sync(rotate_then_prune) == []
    assert _kept(store) == [3]
    assert _write(store, T0 + 10 * DAY) == [4]


def test_the_oldest_are_read_in_growing_pages_up_to_the_bound(store: Store) -> None:
    """64 events, then 128, 256...: a few due cost a small read, a backlog the bound."""
    _write(store, *(T0 + n for n in range(400)))  # 1-400
    now = T0 + 300 + DAY  # 1-300 are due
    assert _sweep(store, now, limit=250) == [OutboxPruned(250, 250)]  # pages 64, 128, 58
    assert _kept(store)[0] == 251
    assert _sweep(store, now, limit=250) == []  # 251-300: in the second page, young 301
    assert _kept(store) == list(range(301, 401))
    assert _sweep(store, T0 + 1000 + DAY, limit=250) == []  # the rest but the newest
    assert _kept(store) == [400]
