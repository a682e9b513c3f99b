"""Derive Key through kcm-core: a request of a few hundred bytes cannot make the core store
an object beyond every message limit, nor run PBKDF2 for minutes on the writer thread."""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections.abc import Iterator

import pytest
import pytest_twisted
from sqlalchemy import func, select
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from kcm.core import context
from kcm.core.hierarchy import provision_service, provision_tenant
from kcm.core.keyring import Keyring
from kcm.core.request_handler import CoreRequestHandler
from kcm.core.store.engine import Store
from kcm.core.store.migrate import upgrade
from kcm.core.store.schema import ManagedObject
from kcm.crypto import derivation
from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import (
    CryptographicAlgorithm,
    CryptographicUsageMask,
    DerivationMethod,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
)
from kcm.kmip.payloads import CreateRequest, DerivationParameters, DeriveKeyRequest
from kcm.kmip.tags import Tag
from kcm.testing.postgres import fresh_database
from kcm.testing.requests import CONTINUE, get, item, request, response
from tests.core_support import CoreHarness, served_while_held
from tests.pg import postgres_url  # noqa: F401  (fixture)

V = (2, 1)
_databases = itertools.count()


def objects(core: CoreHarness) -> int:
    return core.store.run_sync(
        lambda s: s.scalar(select(func.count()).select_from(ManagedObject)))


def derivation_base(client) -> str:
    """A new AES key that may derive keys: its identifier."""
    [created] = response(client.send(request(item(Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY,
        attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
                    Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256),
                    Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK,
                                 int(CryptographicUsageMask.DERIVE_KEY))])),
        version=V))).batch_items
    return created.response_payload.unique_identifier


@pytest.mark.parametrize("length_bits, count, message", [
    (64 << 23, 1, "Derive Key makes keys of at most 4096 bits"),
    (256, 40_000_000, "PBKDF2 Iteration Count 40000000 over 1 block(s) exceeds the "
                      "server's limit of 1000000 iterations"),
])
def test_an_oversized_derivation_is_refused_and_stores_nothing(
        core: CoreHarness, length_bits: int, count: int, message: str) -> None:
    client = core.client()
    created = derivation_base(client)
    before = objects(core)
    for version, reason in ((V, ResultReason.SERVER_LIMIT_EXCEEDED),
                            ((1, 4), ResultReason.FEATURE_NOT_SUPPORTED)):
        [derived] = response(client.send(request(item(Operation.DERIVE_KEY, DeriveKeyRequest(
            object_type=ObjectType.SECRET_DATA,
            unique_identifiers=[created],
            derivation_method=DerivationMethod.PBKDF2,
            derivation_parameters=DerivationParameters(salt=b"salt", iteration_count=count),
            attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, length_bits)])),
            version=version))).batch_items
        assert (derived.result_status, derived.result_reason, derived.result_message) == (
            ResultStatus.OPERATION_FAILED, reason, message)
    assert objects(core) == before


def test_a_request_s_derivations_share_the_pbkdf2_bound(core: CoreHarness) -> None:
    """Two derivations of 600,000 iterations each, in one request: the first is made, the
    second refused (the writer thread would run a batch's worth of them for every tenant)."""
    client = core.client()
    created = derivation_base(client)
    derive = item(Operation.DERIVE_KEY, DeriveKeyRequest(
        object_type=ObjectType.SECRET_DATA,
        unique_identifiers=[created],
        derivation_method=DerivationMethod.PBKDF2,
        derivation_parameters=DerivationParameters(salt=b"salt", iteration_count=600_000),
        attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256)]))
    first, second = response(client.send(request(derive, derive, version=V,
                                                 continuation=CONTINUE))).batch_items
    assert first.result_status == ResultStatus.SUCCESS
    assert (second.result_status, second.result_reason, second.result_message) == (
        ResultStatus.OPERATION_FAILED, ResultReason.SERVER_LIMIT_EXCEEDED,
        "the request's PBKDF2 derivations exceed the server's limit of 1000000 iterations "
        "in all")


@pytest_twisted.ensureDeferred
async def test_pbkdf2_is_computed_off_the_writer_which_serves_another_tenant_meanwhile(
        core: CoreHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PBKDF2 derivation is computed on the requesting tenant's worker before its group
    commit (held here until another tenant's Create has been answered, or 5 s), once; the
    writer stores what it made, from the base key it reads itself."""
    client = core.client()
    created = derivation_base(client)
    [base] = response(client.send(request(get(created), version=V))).batch_items
    base_key = base.response_payload.object.key_block.key_value.key_material
    release = threading.Event()
    started: Deferred[None] = Deferred()
    computed_on: list[str] = []

    def held(algorithm, length, salt, count, key):
        computed_on.append(threading.current_thread().name)
        reactor.callFromThread(lambda: None if started.called else started.callback(None))
        release.wait(5)
        return derivation.pbkdf2(algorithm, length, salt, count, key)

    monkeypatch.setattr(context, "pbkdf2", held)
    heavy = core.handler.handle_as(request(item(Operation.DERIVE_KEY, DeriveKeyRequest(
        object_type=ObjectType.SECRET_DATA, unique_identifiers=[created],
        derivation_method=DerivationMethod.PBKDF2,
        derivation_parameters=DerivationParameters(salt=b"salt", iteration_count=1000),
        attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256)])), version=V), core.caller())
    never = reactor.callLater(5, lambda: None if started.called else started.callback(None))
    await started
    if never.active():
        never.cancel()
    answered_while_held, other_wire = await served_while_held(core, release)
    other = response(other_wire)
    [derived] = response(await heavy).batch_items
    assert other.batch_items[0].result_status == ResultStatus.SUCCESS
    assert answered_while_held, "another tenant's Create waited for demo's PBKDF2"
    assert len(computed_on) == 1
    assert computed_on[0] not in (f"{core.store.name}-writer", threading.main_thread().name)
    assert derived.result_status == ResultStatus.SUCCESS, derived.result_message
    [got] = response(client.send(request(
        get(derived.response_payload.unique_identifier), version=V))).batch_items
    material = got.response_payload.object.key_block.key_value.key_material
    assert material == hashlib.pbkdf2_hmac("sha256", base_key, b"salt", 1000, 32)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_harness(request: pytest.FixtureRequest, tmp_path) -> Iterator[CoreHarness]:
    """A core's request handler over a fresh SQLite file or PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'kcm.db'}"
    else:
        url = fresh_database(request.getfixturevalue("postgres_url"),
                             f"kcm_pbkdf2_{os.getpid()}_{next(_databases)}")
    upgrade(url)
    store = Store(url)
    store.startService()
    keyring = Keyring(os.urandom(32))
    store.audit_key = keyring.audit_key
    now = int(time.time())
    store.run_sync(lambda s: (provision_tenant(s, keyring, "demo", now=now),
                              provision_service(s, keyring, "demo", "app", now=now)))
    try:
        yield CoreHarness(store, keyring, CoreRequestHandler(store, keyring, clock=time.time))
    finally:
        store.stopService()


def test_the_worker_prepares_the_derivation_on_either_database(
        any_harness: CoreHarness) -> None:
    """The worker reads the base in a read-only transaction, without locking it
    (PostgreSQL refuses SELECT ... FOR UPDATE there)."""
    base = derivation_base(any_harness.client())
    wire = request(item(Operation.DERIVE_KEY, DeriveKeyRequest(
        object_type=ObjectType.SECRET_DATA, unique_identifiers=[base],
        derivation_method=DerivationMethod.PBKDF2,
        derivation_parameters=DerivationParameters(salt=b"salt", iteration_count=1000),
        attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256)])), version=V)
    _, prepared = any_harness.handler._prepare(wire, lambda: None, any_harness.caller(),
                                               int(time.time()))
    assert prepared is not None and len(prepared.pbkdf2) == 1
