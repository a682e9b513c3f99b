"""kcm-core's object cache (kcm.core.store.object_cache) never answers from a stale
object: not after a change by this core, by another core on the same database, or by a
transaction that rolled back. Two request handlers on one real SQLite file stand for two
cores."""

from __future__ import annotations

import gc
import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm.core import managed
from kcm.core.context import OperationContext
from kcm.core.keyring import Keyring
from kcm.core.operations._objects_common import clear_key_bytes
from kcm.core.request_handler import CoreRequestHandler
from kcm.core.server_info import ServerInfo
from kcm.core.store.engine import Store
from kcm.core.store.object_cache import ObjectCache
from kcm.kmip.attributes import Attribute, Name
from kcm.kmip.enums import (
    BatchErrorContinuationOption,
    BlockCipherMode,
    NameType,
    ObjectType,
    Operation,
    PaddingMethod,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
    State,
    UsageLimitsUnit,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import IdPlaceholder
from kcm.kmip.payloads import (
    ActivateRequest,
    CreateRequest,
    DestroyRequest,
    EncryptRequest,
    GetRequest,
)
from kcm.kmip.payloads.attribute_ops import AddAttributeRequest
from kcm.kmip.tags import Tag
from kcm.testing.requests import aes256, get_attributes, item, request, response
from kcm.ttlv import Item, ItemType
from tests.core_support import CoreHarness, service_principal
from tests.integration.test_core_crypto import (
    ECB_CIPHER,
    NIST_KEY,
    NIST_PLAIN,
    call,
    decrypt,
    encrypt,
    failed,
    ok,
    one,
    params,
    revoke,
    store_key,
)
from tests.integration.test_core_mac_hash_rng import hmac_key, mac, mac_verify
from tests.integration.test_core_stream_replay import usage_limits

ECB = params(BlockCipherMode.ECB)


@pytest.fixture
def second_core(core: CoreHarness, tmp_path: Path) -> Iterator[CoreHarness]:
    """Another core on ``core``'s database, with the same L1."""
    store = Store(core.store.url)
    store.startService()
    keyring = Keyring(core.keyring._master())  # the same L1, as a second core
    store.audit_key, store.row_seal = keyring.audit_key, keyring.row_seal
    try:
        yield CoreHarness(store, keyring, CoreRequestHandler(store, keyring, clock=time.time))
    finally:
        store.stopService()


def _context(core: CoreHarness, session) -> OperationContext:
    return OperationContext(session=session, caller=core.caller(service_principal()),
                            version=(2, 1), now=int(time.time()), keyring=core.keyring,
                            server_info=ServerInfo(), id_placeholder=IdPlaceholder(),
                            random_bytes=os.urandom)


def test_a_known_object_is_served_from_the_cache(core: CoreHarness) -> None:
    uid = store_key(core, NIST_KEY)
    assert ok(encrypt(core, uid, NIST_PLAIN, ECB)).data == ECB_CIPHER
    assert len(core.store.objects) >= 1
    entry = core.store.objects.get("demo", uid, _stamp(core, uid))
    assert entry is not None and entry.views["key_bytes"] == NIST_KEY
    assert ok(encrypt(core, uid, NIST_PLAIN, ECB)).data == ECB_CIPHER
    assert core.store.objects.get("demo", uid, _stamp(core, uid)) is entry


def test_another_cores_revocation_is_seen_at_once(core: CoreHarness,
                                                  second_core: CoreHarness) -> None:
    uid = store_key(core, NIST_KEY)
    ok(encrypt(core, uid, NIST_PLAIN, ECB))
    revoke(second_core, uid)
    failed(encrypt(core, uid, NIST_PLAIN, ECB), ResultReason.WRONG_KEY_LIFECYCLE_STATE)
    assert ok(decrypt(core, uid, ECB_CIPHER, ECB)).data == NIST_PLAIN  # still allowed


def test_another_cores_destroy_is_seen_at_once(core: CoreHarness,
                                               second_core: CoreHarness) -> None:
    uid = store_key(core, NIST_KEY, state=State.PRE_ACTIVE)
    ok(one(core, Operation.GET, GetRequest(unique_identifier=uid)))  # no longer Fresh
    ok(one(core, Operation.GET, GetRequest(unique_identifier=uid)))  # cached as it is
    ok(one(second_core, Operation.DESTROY, DestroyRequest(unique_identifier=uid)))
    failed(one(core, Operation.GET, GetRequest(unique_identifier=uid)),
           ResultReason.OBJECT_DESTROYED)
    failed(decrypt(core, uid, ECB_CIPHER, ECB), ResultReason.WRONG_KEY_LIFECYCLE_STATE)


def test_usage_limits_count_across_cores(core: CoreHarness, second_core: CoreHarness) -> None:
    limits = Attribute.of(Tag.USAGE_LIMITS, [
        Item(Tag.USAGE_LIMITS_TOTAL, ItemType.LONG_INTEGER, 2 * len(NIST_PLAIN)),
        Item(Tag.USAGE_LIMITS_UNIT, ItemType.ENUMERATION, int(UsageLimitsUnit.BYTE))],
        ItemType.STRUCTURE)
    uid = store_key(core, NIST_KEY, extra=[limits])
    ok(encrypt(core, uid, NIST_PLAIN, ECB))
    ok(decrypt(core, uid, ECB_CIPHER, ECB))  # cached with half the usage left
    ok(encrypt(second_core, uid, NIST_PLAIN, ECB))
    failed(encrypt(core, uid, NIST_PLAIN, ECB), ResultReason.PERMISSION_DENIED)


def test_mac_usage_limits_count_across_cores(core: CoreHarness,
                                             second_core: CoreHarness) -> None:
    """A MAC reads its key unlocked (from the cache) in its write transaction, which holds
    the writers' lock, so the copy it counts on is the last committed one: a use counted on
    the second core is seen by the first (kcm.core.usage_limits; its locked read again is a
    second guard this test does not depend on)."""
    uid = hmac_key(core, extra=[usage_limits(2)])
    ok(mac(core, uid))
    mac_data = ok(mac(second_core, uid)).mac_data
    ok(mac_verify(core, uid, mac_data))  # MAC Verify counts nothing
    failed(mac(core, uid), ResultReason.PERMISSION_DENIED)
    failed(mac(second_core, uid), ResultReason.PERMISSION_DENIED)


def test_a_change_rolled_back_leaves_the_object_as_stored(core: CoreHarness) -> None:
    uid = store_key(core, NIST_KEY, state=State.PRE_ACTIVE)
    ok(one(core, Operation.GET, GetRequest(unique_identifier=uid)))  # cached

    class Undo(Exception):
        pass

    def activate_then_fail(session) -> None:
        ctx = _context(core, session)
        obj = managed.load(ctx, uid)
        obj.set(Tag.STATE, int(State.ACTIVE))
        managed.save(ctx, obj)
        # In the same transaction, the change is seen (the session holds the row).
        assert managed.load(ctx, uid).state is State.ACTIVE
        raise Undo

    with pytest.raises(Undo):
        core.store.run_sync(activate_then_fail)
    failed(encrypt(core, uid, NIST_PLAIN, ECB), ResultReason.WRONG_KEY_LIFECYCLE_STATE)
    ok(one(core, Operation.ACTIVATE, ActivateRequest(unique_identifier=uid)))
    assert ok(encrypt(core, uid, NIST_PLAIN, ECB)).data == ECB_CIPHER


def _undone_batch(core: CoreHarness, uid: str, *changes: tuple[Operation, object]) -> None:
    """``changes`` to ``uid``, then an Encrypt with it (which loads it as changed), then an
    item that fails: with Undo, everything is rolled back."""
    items = call(core, *changes,
                 (Operation.ENCRYPT, EncryptRequest(unique_identifier=uid,
                                                    cryptographic_parameters=ECB,
                                                    data=NIST_PLAIN)),
                 (Operation.GET, GetRequest(unique_identifier="no-such-object")),
                 continuation=BatchErrorContinuationOption.UNDO)
    assert [i.result_status for i in items[:-1]] == [ResultStatus.OPERATION_UNDONE] * (
        len(changes) + 1)


def test_an_undone_change_is_not_taken_for_another_cores_revocation(
        core: CoreHarness, second_core: CoreHarness) -> None:
    """The undone Activate's revision is the one another core's Revoke then commits: the
    entry the undone batch would have left must not match it."""
    uid = store_key(core, NIST_KEY, state=State.PRE_ACTIVE)
    _undone_batch(core, uid, (Operation.ACTIVATE, ActivateRequest(unique_identifier=uid)))
    revoke(second_core, uid, RevocationReasonCode.KEY_COMPROMISE)
    failed(encrypt(core, uid, NIST_PLAIN, ECB), ResultReason.WRONG_KEY_LIFECYCLE_STATE)


def test_an_undone_change_is_not_taken_for_another_cores_destroy(
        core: CoreHarness, second_core: CoreHarness) -> None:
    uid = store_key(core, NIST_KEY, state=State.PRE_ACTIVE)
    name = Attribute.of(Tag.NAME, Name(value="n1", type=NameType.UNINTERPRETED_TEXT_STRING))
    _undone_batch(core, uid, (Operation.ACTIVATE, ActivateRequest(unique_identifier=uid)),
                  (Operation.ADD_ATTRIBUTE, AddAttributeRequest(unique_identifier=uid,
                                                                attribute=name)))
    ok(one(second_core, Operation.DESTROY, DestroyRequest(unique_identifier=uid)))
    failed(one(core, Operation.GET, GetRequest(unique_identifier=uid)),
           ResultReason.OBJECT_DESTROYED)


def test_what_one_request_changes_in_memory_is_not_shared(core: CoreHarness) -> None:
    uid = store_key(core, NIST_KEY)
    ok(encrypt(core, uid, NIST_PLAIN, ECB))

    def scribble(session) -> None:
        ctx = _context(core, session)
        obj = managed.load(ctx, uid, for_update=False)
        for attribute in obj.attributes:
            attribute.index = 99
        obj.set(Tag.STATE, int(State.DEACTIVATED))
        obj.remove(Tag.CRYPTOGRAPHIC_USAGE_MASK)

    def look(session) -> tuple[State, list[int | None], bool, bytes]:
        obj = managed.load(_context(core, session), uid, for_update=False)
        return (obj.state, [a.index for a in obj.attributes],
                obj.first(Tag.CRYPTOGRAPHIC_USAGE_MASK) is not None,
                clear_key_bytes(_context(core, session), obj))

    core.store.run_sync(scribble)
    state, indexes, has_mask, key = core.store.run_sync(look)
    assert state is State.ACTIVE and 99 not in indexes and has_mask and key == NIST_KEY


def test_an_object_reads_its_own_changes_and_copies_only_what_it_changes(
        core: CoreHarness) -> None:
    """An object served from memory reads its values from the stored attributes until an
    operation asks for its attributes to change; from then on it reads its own copies."""
    uid = store_key(core, NIST_KEY)
    ok(encrypt(core, uid, NIST_PLAIN, ECB))

    def change(session) -> tuple[bool, State, State, bool]:
        obj = managed.load(_context(core, session), uid, for_update=False)
        stored = obj.first(Tag.STATE)
        read_in_place = any(stored is a for a in obj._stored)
        before = obj.state
        obj.set(Tag.STATE, int(State.DEACTIVATED))
        copied = all(a is not b for a in obj.attributes for b in obj._stored)
        return read_in_place, before, obj.state, copied

    assert core.store.run_sync(change) == (True, State.ACTIVE, State.DEACTIVATED, True)


def test_a_row_changed_in_this_transaction_is_not_served_from_memory(
        core: CoreHarness) -> None:
    uid = store_key(core, NIST_KEY)
    ok(encrypt(core, uid, NIST_PLAIN, ECB))

    def destroy_then_use(session) -> list[str]:
        ctx = _context(core, session)
        obj = managed.load(ctx, uid)
        managed.destroy_material(ctx, obj)
        outcomes = []
        for loaded in (obj, managed.load(ctx, uid)):
            try:
                clear_key_bytes(ctx, loaded)
                outcomes.append("served")
            except KmipError as exc:
                outcomes.append(exc.reason.name)
        return outcomes

    class Undo(Exception):
        pass

    def checked(session) -> None:
        assert destroy_then_use(session) == ["KEY_VALUE_NOT_PRESENT"] * 2
        raise Undo

    with pytest.raises(Undo):
        core.store.run_sync(checked)
    assert ok(encrypt(core, uid, NIST_PLAIN, ECB)).data == ECB_CIPHER


def test_the_cipher_kept_is_the_last_one_resolved_and_only_for_its_parameters(
        core: CoreHarness) -> None:
    uid = store_key(core, NIST_KEY)
    assert ok(encrypt(core, uid, NIST_PLAIN, ECB)).data == ECB_CIPHER
    entry = core.store.objects.get("demo", uid, _stamp(core, uid))
    assert entry is not None
    assert entry.views["last_spec"][1].mode == BlockCipherMode.ECB
    # Other parameters: resolved for themselves (GCM answers with an IV and a tag), and
    # the one kept is replaced, not added to.
    gcm = ok(encrypt(core, uid, NIST_PLAIN, params(BlockCipherMode.GCM)))
    assert gcm.iv_counter_nonce and gcm.authenticated_encryption_tag
    assert entry.views["last_spec"][1].mode == BlockCipherMode.GCM
    assert sum(name == "last_spec" for name in entry.views) == 1
    # Parameters the key cannot run are refused every time, whatever was kept before.
    for _ in range(2):
        failed(encrypt(core, uid, NIST_PLAIN, params(BlockCipherMode.ECB,
                                                     padding=PaddingMethod.OAEP)),
               ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS)
    assert ok(encrypt(core, uid, NIST_PLAIN, ECB)).data == ECB_CIPHER


def _stamp(core: CoreHarness, uid: str) -> tuple[int, int]:
    from kcm.core.store import repository

    stamp = core.store.run_sync(lambda session: repository.object_stamp(session, "demo", uid),
                                write=False)
    assert stamp is not None
    return stamp


@pytest.mark.long  # ten seconds or more: the parallel part of `make test` starts it first
def test_the_cache_keeps_no_more_memory_than_its_bound(core: CoreHarness) -> None:
    """Objects of 200 attributes each (a Create of 13 KB) take some 80 KB each once
    decoded (a thousand, 400 KB): the cache keeps as many as its byte bound allows, and
    what it holds really takes no more than that bound."""
    bound = 8 << 20  # about 70 of them; none over 128 KiB
    core.store.objects = ObjectCache(10_000, max_bytes=bound)
    client = core.client()
    extra = [Attribute.vendor("x", f"a{i}", Item(Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING,
                                                 "v")) for i in range(200)]
    wire = request(item(Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY, attributes=aes256(extra))), version=(2, 1))
    uids = [ok(response(client.send(wire)).batch_items[0]).unique_identifier
            for _ in range(80)]
    core.store.objects.clear()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for uid in uids:
            ok(response(client.send(request(get_attributes(uid), version=(2, 1))))
               .batch_items[0])
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    cached = core.store.objects
    assert 0 < len(cached) < len(uids) and cached.bytes <= bound
    assert held <= bound, f"{held / 1e6:.1f} MB held for a bound of {bound / 1e6:.1f} MB"
    small = ObjectCache(10_000, max_bytes=2 << 20)  # none over 32 KiB
    small.put("demo", uids[0], (1, 1), core.store.objects._entries[
        next(iter(core.store.objects._entries))].columns)
    assert len(small) == 0 and small.bytes == 0


def test_a_read_during_a_destroys_commit_leaves_no_clear_key_behind(core: CoreHarness
                                                                       ) -> None:
    """A Destroy forgets its object's cache entry before its commit; a read on a store
    worker in that window (a Decrypt prepared off the writer) read the content before the
    Destroy and put it back, with its RSA private key in the clear, where it stayed for
    the cache's ttl (nobody asks for a destroyed key again). Now nothing read before the
    commit is kept: a transaction begun before a forget puts nothing back, and the
    Destroy forgets its object again once committed."""
    import threading

    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from kcm.kmip.enums import CryptographicUsageMask as Mask
    from kcm.kmip.payloads import DecryptRequest, DestroyRequest
    from kcm.testing.requests import item, request, response
    from tests.integration.test_core_asymmetric import create_pair
    from tests.integration.test_core_crypto import revoke

    private, _ = create_pair(core, private_mask=Mask.SIGN | Mask.DECRYPT,
                             public_mask=Mask.VERIFY | Mask.ENCRYPT)
    revoke(core, private)  # (Deactivated: it may be destroyed)
    objects = core.store.objects
    forgotten, read = threading.Event(), threading.Event()

    def held_before_commit(session: Session) -> None:  # the rest of a group, its fsync
        if threading.current_thread().name == "destroyer":
            forgotten.set()
            read.wait(10)

    event.listen(Session, "before_commit", held_before_commit)
    try:
        answers: list[bytes] = []
        destroyer = threading.Thread(name="destroyer", target=lambda: answers.append(
            core.handler.respond(request(item(Operation.DESTROY, DestroyRequest(
                unique_identifier=private)), version=(2, 1)), core.caller(), int(time.time()))))
        destroyer.start()
        assert forgotten.wait(10)
        assert not objects.holds("demo", private)
        core.handler._prepare(request(item(Operation.DECRYPT, DecryptRequest(
            unique_identifier=private, data=b"\0" * 256)), version=(2, 1)),
            lambda: None, core.caller(), int(time.time()))
        read.set()
        destroyer.join(10)
    finally:
        event.remove(Session, "before_commit", held_before_commit)
    assert response(answers[0]).batch_items[0].result_status == ResultStatus.SUCCESS
    assert not objects.holds("demo", private)
