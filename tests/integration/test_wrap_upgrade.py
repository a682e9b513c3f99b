"""The state sweeper's walk that wraps version 1 blobs again as version 2
(kcm.core.wrap_upgrade): bounded per sweep, idempotent, the objects still readable, and
nothing touched while version 1 is not accepted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

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
    """Every blob wrapped again as the previous release wrote it; how many."""
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
                material=blob, revision=ManagedObject.revision + 1))
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
