"""The state sweeper's steps of kcm.core.destroyed_retention on a real SQLite file and a real
PostgreSQL cluster: objects destroyed longer ago than the retention are deleted with their
names, groups and Locate keys, at most a batch a sweep, each tenant's audited; younger ones,
live ones, tenant keys, the newest object and the newest version of a service stay; the L4
tombstones of a destroyed service key go first, whatever the retention."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from kcm.core.destroyed_retention import (
    AUDIT_OPERATION,
    DestroyedPurged,
    TombstonesDropped,
    drop_tombstones,
    purge_destroyed,
)
from kcm.core.store import repository as repo
from kcm.core.store.engine import Store
from kcm.core.store.schema import (
    LEVEL_SERVICE_KEY,
    LEVEL_TENANT_KEY,
    STATE_ACTIVE,
    STATE_DESTROYED,
    STATE_DESTROYED_COMPROMISED,
    AuditLog,
    L3Usage,
    L4Tombstone,
    ManagedObject,
    ObjectAttributeKey,
    ObjectGroup,
    ObjectName,
)
from tests.core_support import own_store

T0 = 1_800_000_000
DAY = 86_400


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Store]:
    """A migrated store with tenants t1 and t2."""
    ksi = own_store(request, tmp_path, "destroyed")
    ksi.run_sync(lambda s: (repo.ensure_tenant(s, "t1"), repo.ensure_tenant(s, "t2")))
    yield ksi
    ksi.stopService()


def _object(store: Store, uid: str, *, tenant: str = "t1", destroyed_at: int | None = None,
            state: int | None = None, level: int | None = None, service: str | None = None,
            version: int | None = None) -> None:
    """An object (destroyed at ``destroyed_at`` if given) with a name, a group and a Link."""
    if state is None:
        state = STATE_DESTROYED if destroyed_at is not None else STATE_ACTIVE
    store.run_sync(lambda s: repo.insert_object(
        s, uid=uid, tenant=tenant, object_type=2, state=state, attributes=b"",
        level=level, service=service, key_version=version,
        names=[(f"name of {uid}", 1)], groups=[f"group of {uid}"],
        keys=[("Link", f"linked from {uid}")], destroy_date=destroyed_at, attach=False))


def _uids(store: Store) -> set[str]:
    return set(store.run_sync(lambda s: s.scalars(select(ManagedObject.uid)).all(),
                              write=False))


def _count(store: Store, table: type, uid: str) -> int:
    return store.run_sync(lambda s: s.scalar(
        select(func.count()).select_from(table).where(table.uid == uid)), write=False)


def _audit(store: Store) -> list[tuple[str, str, list[str], dict]]:
    rows = store.run_sync(lambda s: s.execute(
        select(AuditLog.principal, AuditLog.tenant, AuditLog.object_ids, AuditLog.detail)
        .where(AuditLog.operation == AUDIT_OPERATION).order_by(AuditLog.seq)).all(),
        write=False)
    return [(p, t, json.loads(ids), json.loads(detail)) for p, t, ids, detail in rows]


def _sweep(store: Store, now: float, *, retention: float = DAY, limit: int = 1000) -> list:
    return list(store.run_sync(lambda s: purge_destroyed(s, now, retention=retention,
                                                         limit=limit)))


def test_objects_destroyed_longer_ago_go_with_their_names_groups_and_keys(
        store: Store) -> None:
    now = T0 + 10 * DAY
    _object(store, "old-1", destroyed_at=now - 3 * DAY)
    _object(store, "old-2", tenant="t2", destroyed_at=now - 2 * DAY,
            state=STATE_DESTROYED_COMPROMISED)
    _object(store, "young", destroyed_at=now - DAY + 1)  # a second short of the retention
    _object(store, "live")
    _object(store, "newest")  # (live: the newest is kept anyway, below)
    store.run_sync(lambda s: s.add(L3Usage(uid="old-1", uses=3, reported_at=T0)))

    [done] = _sweep(store, now)

    assert done == DestroyedPurged(2, 2, now - DAY, more=False)
    assert str(done).startswith("destroyed objects: 2 destroyed before 2027-")
    assert "(destroyed_retention) deleted, of 2 tenants" in str(done)
    assert _uids(store) == {"young", "live", "newest"}
    for table in (ObjectName, ObjectGroup, ObjectAttributeKey, L3Usage):
        assert _count(store, table, "old-1") == _count(store, table, "old-2") == 0
    assert _count(store, ObjectName, "young") == _count(store, ObjectAttributeKey, "live") == 1
    assert [(p, t, ids) for p, t, ids, _ in _audit(store)] == [
        ("kcm-core/state-sweeper", "t1", ["old-1"]), ("kcm-core/state-sweeper", "t2", ["old-2"])]
    assert _audit(store)[0][3] == {"objects": 1, "destroyed_before": now - DAY,
                                   "retention": DAY, "service_keys": 0}
    assert _sweep(store, now) == []  # nothing more is due
    assert _sweep(store, now + 2) == [DestroyedPurged(1, 1, now + 2 - DAY, more=False)]
    assert _uids(store) == {"live", "newest"}


def test_a_sweep_deletes_a_bounded_batch_oldest_destroy_first(store: Store) -> None:
    now = T0 + 10 * DAY
    for n in range(7):
        _object(store, f"d{n}", destroyed_at=T0 + 100 - n)  # d6 destroyed first
    _object(store, "newest")
    assert _sweep(store, now, limit=3) == [DestroyedPurged(3, 1, now - DAY, more=True)]
    assert _uids(store) == {"d0", "d1", "d2", "d3", "newest"}
    assert _sweep(store, now, limit=3) == [DestroyedPurged(3, 1, now - DAY, more=True)]
    assert _sweep(store, now, limit=3) == [DestroyedPurged(1, 1, now - DAY, more=False)]
    assert _uids(store) == {"newest"}


def test_the_newest_object_stays_so_that_no_number_is_used_twice(store: Store) -> None:
    now = T0 + 10 * DAY
    _object(store, "first", destroyed_at=T0)
    _object(store, "newest", destroyed_at=T0)
    [done] = _sweep(store, now)
    assert done.deleted == 1 and _uids(store) == {"newest"}
    _object(store, "next")
    seqs = store.run_sync(lambda s: dict(s.execute(
        select(ManagedObject.uid, ManagedObject.created_seq)).all()), write=False)
    assert seqs["next"] == seqs["newest"] + 1


def test_tenant_keys_and_the_newest_version_of_a_service_stay(store: Store) -> None:
    now = T0 + 10 * DAY
    _object(store, "l2", destroyed_at=T0, level=LEVEL_TENANT_KEY)
    _object(store, "l3-v1", destroyed_at=T0, level=LEVEL_SERVICE_KEY, service="app",
            version=1)
    _object(store, "l3-v2", destroyed_at=T0, level=LEVEL_SERVICE_KEY, service="app",
            version=2)
    _object(store, "other-l3", destroyed_at=T0, level=LEVEL_SERVICE_KEY, service="other",
            version=1)
    _object(store, "newest")
    assert _sweep(store, now) == [DestroyedPurged(1, 1, now - DAY, more=False)]
    assert _uids(store) == {"l2", "l3-v2", "other-l3", "newest"}
    assert _audit(store)[0][3]["service_keys"] == 1


def _tombstone(store: Store, token: str, l3_uid: str) -> None:
    store.run_sync(lambda s: repo.add_tombstone(s, token_id=token, tenant="t1", l3_uid=l3_uid,
                                                reason="revoked", clock=lambda: T0))


def _tombstones(store: Store) -> set[str]:
    return set(store.run_sync(lambda s: s.scalars(select(L4Tombstone.token_id)).all(),
                              write=False))


def test_the_tombstones_of_a_destroyed_service_key_go_first(store: Store) -> None:
    now = T0 + 10 * DAY
    _object(store, "l3-v1", destroyed_at=T0, level=LEVEL_SERVICE_KEY, service="app",
            version=1)
    _object(store, "l3-v2", level=LEVEL_SERVICE_KEY, service="app", version=2)
    _object(store, "newest")
    for n in range(5):
        _tombstone(store, f"gone{n}", "l3-v1")
    _tombstone(store, "kept", "l3-v2")
    # An L3 that tombstones still name stays.
    assert _sweep(store, now) == []
    assert "l3-v1" in _uids(store)
    assert list(store.run_sync(lambda s: drop_tombstones(s, now, limit=3))) == [
        TombstonesDropped(3, more=True)]
    assert list(store.run_sync(lambda s: drop_tombstones(s, now, limit=3))) == [
        TombstonesDropped(2, more=False)]
    assert str(TombstonesDropped(2, more=False)) == (
        "L4 tombstones: 2 of destroyed service keys deleted")
    assert list(store.run_sync(lambda s: drop_tombstones(s, now, limit=3))) == []
    assert _tombstones(store) == {"kept"}  # its L3 is not destroyed
    assert _sweep(store, now) == [DestroyedPurged(1, 1, now - DAY, more=False)]
    assert _uids(store) == {"l3-v2", "newest"}
