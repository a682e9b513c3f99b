"""The state sweeper's walk that wraps version 1 blobs again as version 2
(kcm.core.wrap_upgrade): bounded per sweep, idempotent, the objects still readable, and
nothing touched while version 1 is not accepted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from kcm.core import keys
from kcm.core.keyring import Keyring
from kcm.core.store.schema import WRAPPED_BY_L1, ManagedObject
from kcm.core.wrap_upgrade import Upgraded, WrapUpgrade
from tests.core_support import CoreHarness, demo_app_harness, own_store
from tests.integration.test_core_objects import register


@pytest.fixture(params=["sqlite", "postgresql"])
def core(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CoreHarness]:
    """Tenant demo and its service app, on SQLite and on PostgreSQL (where the walk's
    look at a blob's first byte is bytea's ``substr``)."""
    with demo_app_harness(own_store(request, tmp_path, "wrap_upgrade")) as harness:
        yield harness


def _to_v1(core: CoreHarness) -> int:
    """Every blob wrapped again as the release before the last wrote it, its row without
    a row MAC as that release wrote it; how many."""
    ring = core.keyring

    def rewrite(session) -> int:  # noqa: ANN001
        rows = session.scalars(select(ManagedObject).where(
            ManagedObject.material.is_not(None))).all()
        for row in rows:
            plain = ring._unwrap(session, row)
            aad = keys.object_aad(row.tenant, row.uid)
            if row.wrapped_by == WRAPPED_BY_L1:
                blob = ring._master().wrap(plain, aad=aad, random_bytes=ring.random_bytes,
                                           version=1)
            else:
                blob = keys.wrap(ring._l2_by_uid[row.wrapped_by], plain, aad=aad, version=1)
            session.execute(update(ManagedObject).where(ManagedObject.uid == row.uid).values(
                material=blob, row_mac=None, revision=ManagedObject.revision + 1))
        return len(rows)

    return core.store.run_sync(rewrite)


def _versions(core: CoreHarness) -> list[int]:
    return sorted(core.store.run_sync(lambda s: [blob[0] for blob in s.scalars(
        select(ManagedObject.material).where(ManagedObject.material.is_not(None)))]))


def _readable(core: CoreHarness, keyring: Keyring) -> int:
    def read(session) -> int:  # noqa: ANN001
        rows = session.scalars(select(ManagedObject).where(
            ManagedObject.material.is_not(None))).all()
        return len([keyring.unwrap(session, row) for row in rows])
    return core.store.run_sync(read)


def test_the_walk_rewraps_v1_blobs_in_bounded_batches_and_once(core: CoreHarness) -> None:
    for _ in range(8):
        register(core)
    total = _to_v1(core)
    assert _versions(core) == [1] * total and total >= 10
    # Read as they are by a keyring that kept nothing (the L2 too: version 1 under L1).
    assert _readable(core, Keyring(core.keyring._l1)) == total
    upgrade = WrapUpgrade(core.keyring, window=4, batch=2, pause=60.0)
    assert core.store.run_sync(upgrade._count) == total
    now, done, steps = time.time(), [], 0
    while True:
        outcome = core.store.run_sync(lambda s: upgrade.step(s, now))
        steps += 1
        done += outcome
        assert all(isinstance(o, Upgraded) and o.count <= 2 and not o.refused
                   for o in outcome)
        if upgrade._cursor is None:
            break
        assert steps < 100
    assert sum(o.count for o in done) == total and steps >= total // 4
    assert _versions(core) == [2] * total
    assert upgrade.left == 0 == core.store.run_sync(upgrade._count)
    # Read by a keyring that kept nothing: every object, as version 2, bound to its row.
    assert _readable(core, Keyring(core.keyring._l1)) == total
    # Not again before the pause; after it a walk that finds nothing to do.
    assert core.store.run_sync(lambda s: upgrade.step(s, now + 30)) == []
    assert upgrade._cursor is None
    for _ in range(10):
        assert core.store.run_sync(lambda s: upgrade.step(s, now + 61)) == []
    assert _versions(core) == [2] * total and upgrade.left == 0


def test_v1_blobs_are_left_alone_and_refused_when_not_accepted(core: CoreHarness) -> None:
    register(core)
    total = _to_v1(core)
    refusing = Keyring(core.keyring._l1, accept_v1=False)
    upgrade = WrapUpgrade(refusing, window=100_000)
    outcome = core.store.run_sync(lambda s: upgrade.step(s, time.time()))
    assert outcome == [Upgraded(0, total, False)]
    assert upgrade.left == total and _versions(core) == [1] * total
    assert refusing.mismatches == 0  # (not even tried)


def test_a_v1_blob_that_does_not_open_is_left_and_the_walk_goes_on(core: CoreHarness) -> None:
    """A version 1 row that does not open (changed in the database) is refused, logged and
    counted by the keyring, left as it is, and counted in what is left; so is one whose
    tenant key is gone (a tenant being removed); the others are re-wrapped all the same."""
    uid, orphan = register(core), register(core)
    total = _to_v1(core)
    core.store.run_sync(lambda s: s.execute(update(ManagedObject).where(
        ManagedObject.uid == orphan).values(wrapped_by="gone")))

    def tamper(session) -> None:  # noqa: ANN001
        blob = session.scalar(select(ManagedObject.material).where(ManagedObject.uid == uid))
        session.execute(update(ManagedObject).where(ManagedObject.uid == uid).values(
            material=blob[:-1] + bytes([blob[-1] ^ 1])))

    core.store.run_sync(tamper)
    upgrade = WrapUpgrade(core.keyring, window=100_000)
    outcome = core.store.run_sync(lambda s: upgrade.step(s, time.time()))
    assert outcome == [Upgraded(total - 2, 2, False)]
    assert upgrade.left == 2 and core.keyring.mismatches == 1
    assert _versions(core) == [1, 1] + [2] * (total - 2)


def _newest(core: CoreHarness) -> int:
    return core.store.run_sync(lambda s: s.scalar(select(func.max(ManagedObject.created_seq))))


def test_a_full_batch_says_more_and_a_window_ends_where_it_was_read(core: CoreHarness) -> None:
    """Exactly a batch of version 1 rows in the window: the window is done in one step (its
    end, not its last row's); one more: a full batch, the rest at once (``more``)."""
    for _ in range(3):
        register(core)
    total = _to_v1(core)
    register(core)  # (a version 2 row after them, the newest)
    upgrade = WrapUpgrade(core.keyring, window=_newest(core) + 1, batch=total)
    assert core.store.run_sync(lambda s: upgrade.step(s, 0.0)) == [Upgraded(total, 0, False)]
    assert upgrade._cursor is None and upgrade.left == 0
    _to_v1(core)
    upgrade = WrapUpgrade(core.keyring, window=_newest(core) + 1, batch=total)
    assert core.store.run_sync(lambda s: upgrade.step(s, 0.0)) == [Upgraded(total, 0, True)]
    assert core.store.run_sync(lambda s: upgrade.step(s, 0.0)) == [Upgraded(1, 0, False)]
    assert upgrade._cursor is None


def test_a_window_that_ends_at_the_newest_object_ends_the_walk(core: CoreHarness) -> None:
    register(core)
    _to_v1(core)
    upgrade = WrapUpgrade(core.keyring, window=_newest(core) + 1)  # (from -1 to the newest)
    core.store.run_sync(lambda s: upgrade.step(s, 0.0))
    assert upgrade._cursor is None


def test_what_is_left_is_counted_over_every_window_and_anew_each_walk(
        core: CoreHarness) -> None:
    """Version 1 rows refused (``accept_v1`` false) in windows and batches of one: each
    counted once in the walk's ``left``, the next walk counting again from none."""
    for _ in range(3):
        register(core)
    total = _to_v1(core)
    refusing = Keyring(core.keyring._l1, accept_v1=False)
    upgrade = WrapUpgrade(refusing, window=2, batch=1, pause=10.0)
    for now in (0.0, 20.0):
        steps = 0
        while True:
            core.store.run_sync(lambda s, now=now: upgrade.step(s, now))
            steps += 1
            assert steps < 100
            if upgrade._cursor is None:
                break
        assert upgrade.left == total


def test_a_row_the_group_holds_is_left_to_the_next_walk(core: CoreHarness) -> None:
    uid = register(core)
    total = _to_v1(core)
    upgrade = WrapUpgrade(core.keyring, window=100_000)

    def step_holding(session) -> list[Upgraded]:  # noqa: ANN001
        held = session.scalars(select(ManagedObject).where(ManagedObject.uid == uid)).one()
        done = upgrade.step(session, 0.0)
        assert held.material[0] == 1  # (as the request holds it)
        return done

    assert core.store.run_sync(step_holding) == [Upgraded(total - 1, 0, False)]
    assert _versions(core) == [1] + [2] * (total - 1)


def test_a_count_read_while_a_walk_ended_does_not_overwrite_the_walks(
        core: CoreHarness) -> None:
    """The walk's own count is newer than one read while it ended (refresh is off the
    writer); one read with no walk ended meanwhile is taken."""
    from types import SimpleNamespace

    from twisted.internet.defer import Deferred

    register(core)
    _to_v1(core)
    upgrade = WrapUpgrade(core.keyring, window=100_000)
    pending: Deferred[int] = Deferred()
    upgrade.refresh(SimpleNamespace(run=lambda fn, write: pending))  # type: ignore[arg-type]
    core.store.run_sync(lambda s: upgrade.step(s, 0.0))  # (the walk ends: none left)
    assert upgrade.left == 0
    pending.callback(7)  # (counted before the walk re-wrapped them)
    assert upgrade.left == 0
    later: Deferred[int] = Deferred()
    upgrade.refresh(SimpleNamespace(run=lambda fn, write: later))  # type: ignore[arg-type]
    later.callback(3)
    assert upgrade.left == 3
