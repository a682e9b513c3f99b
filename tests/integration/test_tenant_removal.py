"""``kcm core tenant remove`` while kcm-core serves: the CLI is another process on the same
database (here: another store and keyring on the same SQLite file), yet the running core
forgets the removed tenant (what it knew of its services, its tenant key) before it
commits anything on their word, and at once where it reads the ``tenant.removed`` event."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import pytest

from kcm.cli import core_cmd, core_inventory
from kcm.core.event_fanout import encode_event
from kcm.core.events import TenantRemovals
from kcm.core.keyring import Keyring
from kcm.core.store import repository
from kcm.core.store.engine import Store
from kcm.identity import Principal
from kcm.kmip.enums import ObjectType, Operation, ResultReason
from kcm.kmip.payloads import DestroyRequest, RegisterRequest
from kcm.link.events import EventKind
from tests.core_support import CoreHarness, admin_principal, service_principal
from tests.integration.test_core_objects import aes_key, failed, ok, register, row

OTHER_APP = service_principal("other", "app")
OTHER_ADMIN = admin_principal("other")


class OtherProcess:
    """The ``kcm`` command: its own store (caches) and keyring on the core's database."""

    def __init__(self, core: CoreHarness) -> None:
        self.store = Store(core.store.url)
        self.keyring = Keyring(core.keyring._l1)
        self.store.audit_key = self.keyring.audit_key

    def remove_tenant(self, tenant: str, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(core_inventory, "_with_keyring", lambda args, fn: self.store.run_sync(
            lambda session: fn(session, self.keyring)))
        assert core_inventory.run_tenant_remove(argparse.Namespace(tenant=tenant, yes=True)) == 0

    def add_tenant(self, tenant: str) -> str:
        return self.store.run_sync(lambda session: core_cmd._add_tenant(
            session, self.keyring, tenant, now=int(time.time()), by="test"))


@pytest.fixture
def cli(core: CoreHarness) -> Iterator[OtherProcess]:
    other = OtherProcess(core)
    yield other
    other.store.stopService()


def _used_then_destroyed(core: CoreHarness, principal: Principal) -> str:
    """An object made and destroyed by ``principal`` (so its tenant may be removed): the
    core has learnt the service is provisioned and looked up the tenant's current L2."""
    uid = register(core, principal=principal)
    ok(core, Operation.DESTROY, DestroyRequest(unique_identifier=uid), principal=principal)
    return uid


def _current_l2(core: CoreHarness, tenant: str) -> str:
    return core.store.run_sync(lambda s: repository.find_l2(s, tenant)).uid


def test_a_removed_service_creates_nothing_at_a_core_that_knew_it(
        core: CoreHarness, cli: OtherProcess, monkeypatch) -> None:
    _used_then_destroyed(core, OTHER_APP)
    assert ("other", "app") in core.store.known.services
    cli.remove_tenant("other", monkeypatch)
    cli.add_tenant("other")  # again, without its service
    request = RegisterRequest(object_type=ObjectType.SYMMETRIC_KEY, attributes=[],
                              object=aes_key())
    message = failed(core, Operation.REGISTER, request, ResultReason.PERMISSION_DENIED,
                     principal=OTHER_APP)
    assert message == "service other/app is not provisioned (it has no service key)"
    assert ("other", "app") not in core.store.known.services
    assert failed(core, Operation.REGISTER, request, ResultReason.PERMISSION_DENIED,
                  principal=OTHER_APP) == message  # the facts forgotten: from the database
    register(core, principal=service_principal())  # demo/app, still provisioned


def test_no_object_is_wrapped_under_a_removed_tenant_key(
        core: CoreHarness, cli: OtherProcess, monkeypatch) -> None:
    """Within the keyring's CURRENT_L2_TTL of its last look at the tenant's current L2."""
    _used_then_destroyed(core, OTHER_ADMIN)
    removed_l2 = _current_l2(core, "other")
    cli.remove_tenant("other", monkeypatch)
    new_l2 = cli.add_tenant("other")
    uid = register(core, principal=OTHER_ADMIN)
    assert row(core, uid, "other").wrapped_by == new_l2 != removed_l2
    fresh = Keyring(core.keyring._l1)  # a restarted core opens it
    assert core.store.run_sync(lambda s: fresh.unwrap(s, repository.get_object(s, "other", uid)))
    assert removed_l2 not in core.keyring._l2_by_uid


def test_the_removal_event_has_the_core_forget_the_tenant_at_once(
        core: CoreHarness, cli: OtherProcess, monkeypatch) -> None:
    """Before any write transaction: its reads no longer take the service for provisioned,
    and the keyring holds nothing of the tenant."""
    _used_then_destroyed(core, OTHER_ADMIN)
    _used_then_destroyed(core, OTHER_APP)
    removed_l2 = _current_l2(core, "other")
    head = core.store.run_sync(repository.outbox_head)
    cli.remove_tenant("other", monkeypatch)
    records = core.store.run_sync(lambda s: repository.outbox_since(s, head))
    assert [r.kind for r in records] == [EventKind.L3_STATE, EventKind.TENANT_REMOVED]
    assert removed_l2 in core.keyring._l2_by_uid and "other" in core.keyring._current_l2
    TenantRemovals([core.store.known.forget_tenant, core.keyring.forget_tenant]).deliver(
        [encode_event(r) for r in records])
    assert ("other", "app") not in core.store.known.services
    assert removed_l2 not in core.keyring._l2_by_uid and "other" not in core.keyring._current_l2
    cli.add_tenant("other")
    assert not core.store.run_sync(
        lambda s: repository.service_exists(s, "other", "app"), write=False)


def test_a_removal_is_counted_in_its_transaction(core: CoreHarness, cli: OtherProcess,
                                                 monkeypatch) -> None:
    assert core.store.run_sync(repository.tenant_removals) == 0
    _used_then_destroyed(core, OTHER_ADMIN)
    cli.remove_tenant("other", monkeypatch)
    assert core.store.run_sync(repository.tenant_removals) == 1
    assert core.store.run_sync(repository.tenant_removals, write=False) is None
