"""Each tenant's count of what it stores (``tenants.stored``, kcm.core.store.quota), on
SQLite and PostgreSQL: kept by every insert and delete of its objects and L4 tombstones in
their transaction, equal to a count of the rows; a new ordinary object or tombstone at the
tenant's bound refused with Server Limit Exceeded, a tenant or service key never; a
savepoint rolled back takes its count along."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select, update

from kcm.core.audit import savepoint
from kcm.core.destroyed_retention import drop_tombstones, purge_destroyed
from kcm.core.store import repository as repo
from kcm.core.store.engine import Store
from kcm.core.store.schema import (
    LEVEL_SERVICE_KEY,
    STATE_ACTIVE,
    STATE_DESTROYED,
    L4Tombstone,
    ManagedObject,
    Tenant,
)
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError
from tests.core_support import own_store

T0 = 1_800_000_000
DAY = 86_400


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Store]:
    """A migrated store with tenants t1 and t2, a bound of 5 rows a tenant."""
    ksi = own_store(request, tmp_path, "quota")
    ksi.max_objects_per_tenant = 5
    ksi.run_sync(lambda s: (repo.ensure_tenant(s, "t1"), repo.ensure_tenant(s, "t2")))
    yield ksi
    ksi.stopService()


def _insert(session, uid: str, tenant: str = "t1", *, level: int | None = None,
            destroyed_at: int | None = None, version: int | None = None) -> None:
    repo.insert_object(session, uid=uid, tenant=tenant, object_type=2,
                       state=STATE_DESTROYED if destroyed_at else STATE_ACTIVE,
                       attributes=b"", level=level,
                       service="app" if level else None, key_version=version,
                       destroy_date=destroyed_at, attach=False)


def _object(store: Store, uid: str, tenant: str = "t1", **kwargs) -> None:
    store.run_sync(lambda s: _insert(s, uid, tenant, **kwargs))


def _tombstone(session, token: str, l3_uid: str, tenant: str = "t1") -> bool:
    return repo.add_tombstone(session, token_id=token, tenant=tenant, l3_uid=l3_uid,
                              reason="revoked", clock=lambda: T0)


def _stored(store: Store) -> dict[str, int]:
    return dict(store.run_sync(lambda s: s.execute(select(Tenant.name, Tenant.stored)).all(),
                               write=False))


def _counted(store: Store) -> dict[str, int]:
    """The rows, counted."""
    def count(session) -> dict[str, int]:
        found = {"t1": 0, "t2": 0}
        for table in (ManagedObject, L4Tombstone):
            for tenant, n in session.execute(select(table.tenant, func.count())
                                             .group_by(table.tenant)).all():
                found[tenant] += n
        return found
    return store.run_sync(count, write=False)


def _refused(store: Store, fn) -> str:
    with pytest.raises(KmipError) as caught:
        store.run_sync(fn)
    assert caught.value.reason == ResultReason.SERVER_LIMIT_EXCEEDED
    return caught.value.message


def test_objects_and_tombstones_count_up_to_the_bound_then_are_refused(store: Store) -> None:
    _object(store, "l3", level=LEVEL_SERVICE_KEY, version=1)
    for n in range(3):
        _object(store, f"o{n}")
    assert store.run_sync(lambda s: _tombstone(s, "tok0", "l3")) is True
    assert _stored(store) == _counted(store) == {"t1": 5, "t2": 0}
    message = _refused(store, lambda s: _insert(s, "over"))
    assert message == "tenant t1 is at its bound of 5 stored objects (max_objects_per_tenant)"
    assert message.isascii()
    # A token already tombstoned is answered again (Revoke then Destroy), not refused.
    assert store.run_sync(lambda s: _tombstone(s, "tok0", "l3")) is False
    # A service key (rotation, provisioning) is counted, never refused.
    _object(store, "l3-v2", level=LEVEL_SERVICE_KEY, version=2)
    _object(store, "elsewhere", tenant="t2")  # another tenant's bound is its own
    assert _stored(store) == _counted(store) == {"t1": 6, "t2": 1}


def test_tombstones_are_refused_only_past_the_revocation_headroom(store: Store) -> None:
    """A tenant at its bound can still revoke L4 tokens (a compromised one above all):
    their tombstones are refused only a headroom past the bound (a tenth of it, at least
    1,000), so a tenant's revocations, too, have an end."""
    from kcm.core.store.quota import REVOCATION_HEADROOM_MIN, revocation_headroom

    assert REVOCATION_HEADROOM_MIN == 1000
    assert revocation_headroom(5) == 1000
    assert revocation_headroom(1_000_000) == 100_000
    _object(store, "l3", level=LEVEL_SERVICE_KEY, version=1)
    for n in range(4):
        _object(store, f"o{n}")
    _refused(store, lambda s: _insert(s, "over"))  # at the bound
    store.run_sync(lambda s: [_tombstone(s, f"tok{n}", "l3") for n in range(1000)])
    assert _stored(store) == _counted(store) == {"t1": 1005, "t2": 0}
    message = _refused(store, lambda s: _tombstone(s, "tok-over", "l3"))
    assert message == ("tenant t1 is at its bound of 5 stored objects "
                       "(max_objects_per_tenant) and 1000 more for L4 revocations")
    assert message.isascii()
    assert store.run_sync(lambda s: _tombstone(s, "tok7", "l3")) is False  # already one
    assert _stored(store) == _counted(store) == {"t1": 1005, "t2": 0}


def test_a_token_tombstoned_again_below_the_bound_is_not_counted_again(store: Store) -> None:
    """A Revoke then a Destroy of one L4 (or two cores racing to revoke it) stores one
    tombstone: the second is counted, then given back, in its own transaction or in the
    same one."""
    _object(store, "l3", level=LEVEL_SERVICE_KEY, version=1)
    assert store.run_sync(lambda s: _tombstone(s, "tok0", "l3")) is True
    assert store.run_sync(lambda s: _tombstone(s, "tok0", "l3")) is False
    assert store.run_sync(lambda s: (_tombstone(s, "tok1", "l3"),
                                     _tombstone(s, "tok1", "l3"))) == (True, False)
    assert _stored(store) == _counted(store) == {"t1": 3, "t2": 0}


def test_a_savepoint_rolled_back_takes_its_count_along(store: Store) -> None:
    """In one transaction (a group commit): a request that inserted and then failed
    leaves no count behind, so the next request of the group finds the room it freed."""
    for n in range(4):
        _object(store, f"o{n}")

    def group(session) -> None:
        with pytest.raises(KmipError), savepoint(session):  # a key pair, one slot left
            _insert(session, "private")
            _insert(session, "public")
        with pytest.raises(RuntimeError), savepoint(session):
            _insert(session, "failed later")
            raise RuntimeError("the request failed after its insert")
        with savepoint(session):
            _insert(session, "alone")

    store.run_sync(group)
    assert _stored(store) == _counted(store) == {"t1": 5, "t2": 0}


def test_the_purge_and_the_tombstones_dropped_free_room(store: Store) -> None:
    _object(store, "l3", level=LEVEL_SERVICE_KEY, version=1, destroyed_at=T0)
    _object(store, "l3-v2", level=LEVEL_SERVICE_KEY, version=2)
    store.run_sync(lambda s: [_tombstone(s, f"tok{n}", "l3") for n in range(2)])
    _object(store, "gone", destroyed_at=T0)
    _object(store, "newest", tenant="t2")
    assert _stored(store) == {"t1": 5, "t2": 1}
    _refused(store, lambda s: _insert(s, "over"))
    now = T0 + 10 * DAY
    assert list(store.run_sync(lambda s: drop_tombstones(s, now)))
    assert _stored(store) == _counted(store) == {"t1": 3, "t2": 1}
    assert list(store.run_sync(lambda s: purge_destroyed(s, now, retention=DAY)))
    assert _stored(store) == _counted(store) == {"t1": 1, "t2": 1}
    _object(store, "room again")


def test_a_tenant_s_own_bound_wins_and_zero_is_none(store: Store) -> None:
    def own(bound: int | None):
        store.run_sync(lambda s: s.execute(update(Tenant).where(Tenant.name == "t1")
                                           .values(max_objects=bound)))
    own(1)
    _object(store, "o0")
    _refused(store, lambda s: _insert(s, "o1"))
    own(0)
    for n in range(1, 8):
        _object(store, f"o{n}")
    own(None)  # the store's 5 again
    _refused(store, lambda s: _insert(s, "o8"))
    store.max_objects_per_tenant = 0
    _object(store, "o8")
    assert _stored(store) == _counted(store) == {"t1": 9, "t2": 0}
