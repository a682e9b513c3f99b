"""A service's current service key (L3) is found without reading its older versions: a
service rotated every day for a year keeps 365 deactivated versions, and every gateway's
fetch of the service (at each refresh, each rotation) read and unwrapped all of them on the
writer thread (69 ms at 2,000 versions; 1.8 ms once only the Active ones are read)."""

from __future__ import annotations

import time

from sqlalchemy import event, update

from kcm.core.context import Caller
from kcm.core.hierarchy import provision_service
from kcm.core.l4_keys import current_l3
from kcm.core.service_keys import fetch_service_keys
from kcm.core.store import repository
from kcm.core.store.schema import (
    LEVEL_SERVICE_KEY,
    STATE_DEACTIVATED,
    STATE_PRE_ACTIVE,
    ManagedObject,
)
from kcm.identity import Principal, Role
from kcm.kmip.enums import ResultReason, State
from kcm.kmip.errors import KmipError
from tests.core_support import TRUST_DOMAIN, CoreHarness, admin_principal, service_principal

#: Versions made beyond the first: all but the newest are then deactivated.
ROTATIONS = 40


def _rotated(core: CoreHarness, service: str = "app") -> int:
    """``demo``/``service`` rotated :data:`ROTATIONS` times, every version but the newest
    deactivated (what automatic rotation leaves); the newest version."""
    now = int(time.time())

    def rotate(session) -> int:
        for _ in range(ROTATIONS):
            provision_service(session, core.keyring, "demo", service, now=now)
        newest = repository.find_l3(session, "demo", service)[0].key_version
        session.execute(update(ManagedObject).where(
            ManagedObject.tenant == "demo", ManagedObject.service == service,
            ManagedObject.level == LEVEL_SERVICE_KEY, ManagedObject.key_version < newest)
            .values(state=STATE_DEACTIVATED))
        return newest

    return core.store.run_sync(rotate)


class _Counted:
    """Counts the L3 rows loaded and the keyring's unwraps while it is entered."""

    def __init__(self, core: CoreHarness) -> None:
        self.core = core
        self.loaded = 0
        self.unwrapped = 0

    def __enter__(self) -> _Counted:
        unwrap = self.core.keyring.unwrap

        def counting(session, row):
            self.unwrapped += 1
            return unwrap(session, row)

        self.core.keyring.unwrap = counting  # type: ignore[method-assign]
        event.listen(ManagedObject, "load", self._load)
        return self

    def _load(self, target: ManagedObject, _context: object) -> None:
        if target.level == LEVEL_SERVICE_KEY:
            self.loaded += 1

    def __exit__(self, *_: object) -> None:
        event.remove(ManagedObject, "load", self._load)
        del self.core.keyring.unwrap


def _caller() -> Caller:
    gateway = Principal(Role.GATEWAY, TRUST_DOMAIN, name="gw1",
                        uri=f"spiffe://{TRUST_DOMAIN}/gateway/gw1")
    return Caller(service_principal(), "127.0.0.1:1", gateway)


def test_a_service_fetch_reads_and_unwraps_only_active_versions(core: CoreHarness) -> None:
    newest = _rotated(core)
    with _Counted(core) as counted:
        keys = core.store.run_sync(lambda session: fetch_service_keys(
            session, core.keyring, _caller(), "demo", "app", None, now=int(time.time())))
    assert [(key.version, key.state) for key in keys] == [(newest, State.ACTIVE)]
    assert keys[0].key  # its material, unwrapped
    assert counted.loaded == 1, counted.loaded
    assert counted.unwrapped == 1, counted.unwrapped


def test_the_current_version_is_found_without_reading_older_ones(core: CoreHarness) -> None:
    newest = _rotated(core)
    with _Counted(core) as counted:
        row = core.store.run_sync(
            lambda session: current_l3(session, "demo", "app", int(time.time())))
    assert row.key_version == newest
    assert counted.loaded == 1, counted.loaded


def test_a_rotation_reads_no_version(core: CoreHarness) -> None:
    newest = _rotated(core)
    with _Counted(core) as counted:
        core.store.run_sync(lambda session: provision_service(
            session, core.keyring, "demo", "app", now=int(time.time())))
    assert counted.loaded == 0, counted.loaded
    assert core.store.run_sync(
        lambda session: repository.find_l3(session, "demo", "app")[0].key_version) == newest + 1


def test_a_service_without_an_active_version_is_refused_as_before(core: CoreHarness) -> None:
    _rotated(core)
    core.store.run_sync(lambda session: session.execute(update(ManagedObject).where(
        ManagedObject.tenant == "demo", ManagedObject.service == "app",
        ManagedObject.level == LEVEL_SERVICE_KEY).values(state=STATE_DEACTIVATED)))
    answer = core.store.run_sync(lambda session: fetch_service_keys(
        session, core.keyring, _caller(), "demo", "app", None, now=int(time.time())))
    assert isinstance(answer, KmipError)
    assert answer.reason == ResultReason.WRONG_KEY_LIFECYCLE_STATE
    try:
        core.store.run_sync(lambda session: current_l3(session, "demo", "app", int(time.time())))
    except KmipError as e:
        assert e.reason == ResultReason.WRONG_KEY_LIFECYCLE_STATE
    else:
        raise AssertionError("current_l3 found an Active version")


def test_several_active_versions_are_all_fetched_the_newest_first(core: CoreHarness) -> None:
    """A rotation that leaves the version before Active (provision_service deactivates
    nothing): every Active version is sent, the current one (the newest) first, which is
    the one a gateway takes as the service's current version; current_l3 finds it too."""
    newest = _rotated(core)
    now = int(time.time())
    core.store.run_sync(lambda session: [provision_service(
        session, core.keyring, "demo", "app", now=now) for _ in range(2)])
    keys = core.store.run_sync(lambda session: fetch_service_keys(
        session, core.keyring, _caller(), "demo", "app", None, now=now))
    assert [(key.version, key.state) for key in keys] == [
        (newest + 2, State.ACTIVE), (newest + 1, State.ACTIVE), (newest, State.ACTIVE)]
    assert all(key.key for key in keys)
    row = core.store.run_sync(lambda session: current_l3(session, "demo", "app", now))
    assert row.key_version == newest + 2


def test_a_version_stored_pre_active_whose_activation_date_passed_is_current(
        core: CoreHarness) -> None:
    """A version is stored Pre-Active until the sweeper moves it: one whose Activation Date
    has passed is Active now, and is the service's current version (and is read: the
    versions that may be Active include the Pre-Active ones)."""
    newest = _rotated(core)
    now = int(time.time())

    def scheduled(session) -> None:
        provision_service(session, core.keyring, "demo", "app", now=now)
        session.execute(update(ManagedObject).where(
            ManagedObject.tenant == "demo", ManagedObject.service == "app",
            ManagedObject.level == LEVEL_SERVICE_KEY, ManagedObject.key_version == newest + 1)
            .values(state=STATE_PRE_ACTIVE, activation_date=now - 60,
                    row_mac=None))  # (as an earlier release stored it: no row MAC)

    core.store.run_sync(scheduled)
    keys = core.store.run_sync(lambda session: fetch_service_keys(
        session, core.keyring, _caller(), "demo", "app", None, now=now))
    assert [(key.version, key.state) for key in keys] == [
        (newest + 1, State.ACTIVE), (newest, State.ACTIVE)]
    row = core.store.run_sync(lambda session: current_l3(session, "demo", "app", now))
    assert row.key_version == newest + 1


def test_a_service_never_provisioned_is_refused_as_missing(core: CoreHarness) -> None:
    """No version at all is "no such service key" (Object Not Found), not "no Active
    service key": asked by the tenant's administrator, whom no earlier check refuses."""
    _rotated(core)
    gateway = _caller().gateway
    admin = Caller(admin_principal(), "127.0.0.1:1", gateway)
    answer = core.store.run_sync(lambda session: fetch_service_keys(
        session, core.keyring, admin, "demo", "never-made", None, now=int(time.time())))
    assert isinstance(answer, KmipError)
    assert answer.reason == ResultReason.OBJECT_NOT_FOUND, answer
    assert "has no service key" in answer.message
