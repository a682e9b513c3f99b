"""The core's rule for a gateway's conditional refresh (link version 8): "unchanged" only
when the SERVICE_KEYS answer would be exactly what the gateway says it holds (its digest),
judged in a read transaction with no audit record; every kind of change, and every refusal
of who asks, is not unchanged (the core then fetches in full, audited, as ever)."""

from __future__ import annotations

import argparse
import time

import pytest
from sqlalchemy import func, select, update

from kcm.cli.core_inventory import _begin_removal
from kcm.core.context import Caller
from kcm.core.hierarchy import provision_service
from kcm.core.service_keys import service_keys_answer, unchanged_since
from kcm.core.store import repository
from kcm.core.store.schema import (
    STATE_COMPROMISED,
    STATE_DEACTIVATED,
    AuditLog,
    ManagedObject,
)
from kcm.identity import Principal
from kcm.kmip.errors import KmipError
from kcm.l4.service_key import ServiceKey
from kcm.link.frames import MAX_SENT_TOMBSTONES
from kcm.link.keys_digest import keys_digest
from tests.core_support import CoreHarness, admin_principal, service_principal

APP = service_principal()


def answer(core: CoreHarness, uid: str | None = None,
           principal: Principal = APP) -> list[ServiceKey]:
    got = core.store.run_sync(lambda session: service_keys_answer(
        session, core.keyring, Caller(principal, "gw"), "demo", "app", uid,
        now=int(time.time())), write=False)
    assert not isinstance(got, KmipError), got
    return got


def unchanged(core: CoreHarness, held: bytes, uid: str | None = None,
              principal: Principal = APP) -> bool:
    # A read transaction: a rule that wrote would fail here.
    return core.store.run_sync(lambda session: unchanged_since(
        session, core.keyring, Caller(principal, "gw"), "demo", "app", uid, held,
        now=int(time.time())), write=False)


def audit_count(core: CoreHarness) -> int:
    return core.store.run_sync(lambda session: session.scalar(
        select(func.count()).select_from(AuditLog)), write=False)


def change(core: CoreHarness, fn) -> None:
    core.store.run_sync(fn)


@pytest.fixture
def held(core: CoreHarness) -> tuple[bytes, bytes, str]:
    """The digests of demo/app's answer by service and by its version's uid, and the uid."""
    by_service = answer(core)
    [key] = by_service
    return keys_digest(by_service), keys_digest(answer(core, key.uid)), key.uid


def test_what_the_gateway_holds_is_unchanged_and_no_audit_record_is_written(
        core: CoreHarness, held) -> None:
    service_digest, uid_digest, uid = held
    before = audit_count(core)
    assert unchanged(core, service_digest)
    assert unchanged(core, uid_digest, uid)
    assert audit_count(core) == before
    assert not unchanged(core, bytes(32))
    assert not unchanged(core, bytes(32), uid)


@pytest.mark.parametrize("state", [STATE_DEACTIVATED, STATE_COMPROMISED])
def test_a_state_change_is_a_change(core: CoreHarness, held, state: int) -> None:
    service_digest, uid_digest, uid = held
    change(core, lambda session: session.execute(
        update(ManagedObject).where(ManagedObject.uid == uid).values(state=state)))
    assert not unchanged(core, service_digest)
    assert not unchanged(core, uid_digest, uid)


def test_a_state_its_dates_bring_is_a_change(core: CoreHarness, held) -> None:
    """A deactivation date passed: no event says so, the refresh must."""
    service_digest, uid_digest, uid = held
    change(core, lambda session: session.execute(
        update(ManagedObject).where(ManagedObject.uid == uid)
        .values(deactivation_date=int(time.time()) - 1)))
    assert not unchanged(core, service_digest)
    assert not unchanged(core, uid_digest, uid)


def test_a_new_version_changes_the_service_not_the_older_version(core: CoreHarness,
                                                                  held) -> None:
    service_digest, uid_digest, uid = held
    change(core, lambda session: provision_service(session, core.keyring, "demo", "app",
                                                   now=int(time.time())))
    assert not unchanged(core, service_digest)
    assert unchanged(core, uid_digest, uid)  # nothing of that version changed
    assert len(answer(core)) == 2 and unchanged(core, keys_digest(answer(core)))


def test_a_rotation_that_deactivates_the_old_version_is_a_change(core: CoreHarness,
                                                                  held) -> None:
    service_digest, uid_digest, uid = held

    def rotate(session) -> None:
        provision_service(session, core.keyring, "demo", "app", now=int(time.time()))
        session.execute(update(ManagedObject).where(ManagedObject.uid == uid)
                        .values(state=STATE_DEACTIVATED))

    change(core, rotate)
    assert not unchanged(core, service_digest)
    assert not unchanged(core, uid_digest, uid)


def test_a_tombstone_added_is_a_change(core: CoreHarness, held) -> None:
    service_digest, uid_digest, uid = held
    change(core, lambda session: repository.add_tombstone(
        session, token_id="ab" * 16, tenant="demo", l3_uid=uid, reason="revoked"))
    assert not unchanged(core, service_digest)
    assert not unchanged(core, uid_digest, uid)
    [key] = answer(core)
    assert key.tombstones == {"ab" * 16}
    assert unchanged(core, keys_digest([key]))


def test_a_version_sent_without_its_tombstones_is_held_so(core: CoreHarness, held) -> None:
    """More tombstones than one answer carries: the answer has none (absent), and so says
    the gateway that holds the version overflowed."""
    _, _, uid = held

    def many(session) -> None:
        for n in range(MAX_SENT_TOMBSTONES + 1):
            repository.add_tombstone(session, token_id=f"{n:032x}", tenant="demo",
                                     l3_uid=uid, reason="revoked")

    change(core, many)
    [key] = answer(core)
    assert key.tombstones is None
    assert unchanged(core, keys_digest([key]))
    assert not unchanged(core, keys_digest([key.__class__(
        key.uid, key.tenant, key.service, key.version, key.state, key.key,
        tombstones=frozenset())]))


def test_a_removed_tenant_is_no_longer_unchanged(core: CoreHarness, held) -> None:
    service_digest, uid_digest, uid = held
    change(core, lambda session: _begin_removal(session, argparse.Namespace(
        tenant="demo", yes=True)))
    assert not unchanged(core, service_digest)
    assert not unchanged(core, uid_digest, uid)


@pytest.mark.parametrize("principal", [
    service_principal("other", "app"),  # another tenant's
    admin_principal("other", "mallory"),
    service_principal("demo", "ghost"),  # its service not provisioned
    service_principal("demo", "billing"),  # another service of the tenant
])
def test_who_asks_is_checked_first_whatever_it_says_it_holds(core: CoreHarness, held,
                                                             principal: Principal) -> None:
    service_digest, uid_digest, uid = held
    assert not unchanged(core, uid_digest, uid, principal)
    if principal.tenant == "demo":
        assert not unchanged(core, service_digest, principal=principal)


def test_the_tenant_administrator_may_refresh_as_the_application_does(core: CoreHarness,
                                                                      held) -> None:
    service_digest, uid_digest, uid = held
    assert unchanged(core, service_digest, principal=admin_principal())
    assert unchanged(core, uid_digest, uid, admin_principal())


def test_a_version_a_gateway_gave_up_at_its_max_tombstones_is_judged_alike_at_both_ends(
        core: CoreHarness, held) -> None:
    """The gateway's digest of a version it overflowed at its own ``max_tombstones`` (its
    tombstones not held, its L4 requests the core's) against the core's rule: "unchanged"
    while nothing changed, a new tombstone (an event the gateway applied) too once both
    have it, a change the gateway missed not."""
    from twisted.internet.defer import succeed
    from twisted.internet.task import Clock

    from kcm.gateway.l3_cache import L3Cache
    from kcm.link.keys_digest import Unchanged

    _, _, uid = held

    def revoke(token_id: str) -> None:
        change(core, lambda session: repository.add_tombstone(
            session, token_id=token_id, tenant="demo", l3_uid=uid, reason="revoked"))

    def fetch(caller, tenant, service, uid=None, *, held=None):
        if held is not None and unchanged(core, held, uid):
            return succeed(Unchanged(held))
        return succeed(answer(core, uid))

    for n in range(3):
        revoke(f"{n:032x}")
    clock = Clock()
    cache = L3Cache(fetch, connected=lambda: True, clock=clock.seconds, ttl=60.0,
                    random=lambda: 0.0, conditional=True, max_tombstones=2)
    cache.prewarm("demo", "app", APP)
    assert cache.overflowed == {uid}  # (3 tombstones: over its bound of 2)

    def refreshed() -> int:
        clock.advance(61)
        cache.refresh_due()
        return cache.refreshes_unchanged.value

    assert refreshed() == 1
    revoke("ab" * 16)
    cache.apply_event(1, "l4.tombstone", "demo", {"token_id": "ab" * 16,
                                                  "unique_identifier": uid})
    assert refreshed() == 2
    revoke("cd" * 16)  # (no event: a change the gateway missed)
    assert refreshed() == 2
    assert refreshed() == 3  # (the full answer told it)
    assert cache.overflowed == {uid}
