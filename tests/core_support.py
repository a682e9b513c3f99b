"""An in-process kcm-core request handler over a real SQLite file (test support)."""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kcm.core.context import Caller
from kcm.core.hierarchy import provision_service, provision_tenant
from kcm.core.keyring import Keyring
from kcm.core.lineage import Lineage
from kcm.core.request_handler import CoreRequestHandler
from kcm.core.store.engine import Store
from kcm.core.store.migrate import upgrade
from kcm.identity import Principal, Role
from kcm.testing.processes import CoreProcess, deploy

TRUST_DOMAIN = "kcm.test"
#: The database the link listeners of unit tests name in ORIGIN (link version 7).
LINEAGE = Lineage("0f" * 16, 0)


def service_principal(tenant: str = "demo", service: str = "app") -> Principal:
    return Principal(Role.SERVICE, TRUST_DOMAIN, tenant=tenant, service=service,
                     uri=f"spiffe://{TRUST_DOMAIN}/tenant/{tenant}/service/{service}")


def admin_principal(tenant: str = "demo", name: str = "alice") -> Principal:
    return Principal(Role.ADMIN, TRUST_DOMAIN, tenant=tenant, name=name,
                     uri=f"spiffe://{TRUST_DOMAIN}/tenant/{tenant}/admin/{name}")


@dataclass
class CoreHarness:
    store: Store
    keyring: Keyring
    handler: CoreRequestHandler

    def caller(self, principal: Principal | None = None) -> Caller:
        return Caller(principal or service_principal(), "127.0.0.1:40000")

    def client(self, principal: Principal | None = None) -> InProcessClient:
        """A blocking ``send(bytes) -> bytes`` client, for runners written against sockets."""
        return InProcessClient(self, self.caller(principal))


@dataclass
class InProcessClient:
    harness: CoreHarness
    caller: Caller

    def send(self, request: bytes) -> bytes:
        return self.harness.handler.respond(request, self.caller, int(time.time()))


_SCHEMA: Path | None = None


def _migrated_schema() -> Path:
    """An empty SQLite database brought to the head revision by :func:`upgrade`, made once
    per process: each harness starts from a copy of it (the same bytes a migration of its
    own makes, without Alembic's 60 ms a test; the migrations have tests of their own)."""
    global _SCHEMA
    if _SCHEMA is None:
        directory = Path(tempfile.mkdtemp(prefix="kcm-schema-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        upgrade(f"sqlite:///{directory / 'kcm.db'}")  # (closed: its WAL checkpointed in)
        _SCHEMA = directory / "kcm.db"
    return _SCHEMA


@pytest.fixture
def core(tmp_path: Path) -> Iterator[CoreHarness]:
    """A started store with tenants demo (services app and billing) and other (service
    app), and a request handler. An application of any other service is one whose service
    was never provisioned: it holds nothing (kcm.core.policy)."""
    url = f"sqlite:///{tmp_path / 'kcm.db'}"
    shutil.copy2(_migrated_schema(), tmp_path / "kcm.db")  # what upgrade(url) makes
    store = Store(url)
    store.startService()
    keyring = Keyring(os.urandom(32))
    store.audit_key = keyring.audit_key  # what MasterKey does when kcm-core starts
    store.row_seal = keyring.row_seal
    now = int(time.time())

    def bootstrap(session):
        for tenant in ("demo", "other"):
            provision_tenant(session, keyring, tenant, now=now)
        for tenant, service in (("demo", "app"), ("demo", "billing"), ("other", "app")):
            provision_service(session, keyring, tenant, service, now=now)

    store.run_sync(bootstrap)
    try:
        yield CoreHarness(store, keyring, CoreRequestHandler(store, keyring, clock=time.time))
    finally:
        store.stopService()


@contextlib.contextmanager
def demo_app_harness(store: Store) -> Iterator[CoreHarness]:
    """``store`` (started, migrated) with tenant demo and its service app provisioned under
    a new keyring, and a request handler; the store stopped at the end."""
    keyring = Keyring(os.urandom(32))
    store.audit_key = keyring.audit_key
    store.row_seal = keyring.row_seal
    now = int(time.time())

    def bootstrap(session) -> None:
        provision_tenant(session, keyring, "demo", now=now)
        provision_service(session, keyring, "demo", "app", now=now)

    store.run_sync(bootstrap)
    try:
        yield CoreHarness(store, keyring, CoreRequestHandler(store, keyring, clock=time.time))
    finally:
        store.stopService()


async def served_while_held(core: CoreHarness, release: threading.Event) -> tuple[bool, bytes]:
    """With one of tenant demo's requests held on its worker (until ``release`` is set),
    tenant other's Create, sent through the handler's group commit: whether it was answered
    before ``release`` was set (it is set at the latest 5 s on), and its answer. ``release``
    is set on return."""
    from twisted.internet import reactor

    from kcm.testing.requests import create_managed, request

    safety = reactor.callLater(5, release.set)
    answer = await core.handler.handle_as(request(create_managed(), version=(2, 1)),
                                          core.caller(service_principal("other")))
    answered_while_held = not release.is_set()
    release.set()
    if safety.active():
        safety.cancel()
    return answered_while_held, answer


_own_databases = itertools.count()


def own_store(request: pytest.FixtureRequest, tmp_path: Path, name: str) -> Store:
    """A migrated, empty store (run_sync), its audit key set, on SQLite or, when
    ``request.param`` says ``postgresql``, in a PostgreSQL database of its own named after
    ``name`` (the cluster's own is wiped by tests/integration/test_store.py whenever it
    runs, perhaps meanwhile in another worker)."""
    from kcm.core.keys import derive_audit_key
    from kcm.testing.postgres import fresh_database

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ksi.db'}"
    else:
        url = fresh_database(request.getfixturevalue("postgres_url"),
                             f"kcm_{name}_{os.getpid()}_{next(_own_databases)}")
    upgrade(url)
    store = Store(url, threads=2)
    store.audit_key = derive_audit_key(bytes(32))
    return store


def swept_core(root: Path, setting: str) -> CoreProcess:
    """A kcm-core deployed in ``root`` (SQLite), its state swept every 0.2 s, with the
    ``[core]`` line ``setting`` (``outbox_retention = 1``, say); not started."""

    core = deploy(root, f"sqlite:///{root / 'kcm.db'}")
    core.state_sweep_interval = 0.2
    core.write_config()
    core.config.write_text(core.config.read_text().replace(
        "[core]\n", f"[core]\n{setting}\n", 1))
    return core
