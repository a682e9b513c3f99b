"""kcm.l4.opened_keys, and the L4 engine with it: a DEK opened once serves later requests
of its own token under its own L3 version only, within its size and time bounds; every
check of who asks, of the L3 and of the token still runs first, so an engine with a warm
cache answers exactly as one without."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from kcm.kmip.attributes import VENDOR_TAG, Attribute
from kcm.kmip.enums import ObjectType, ResultReason, State
from kcm.kmip.errors import KmipError
from kcm.kmip.payloads import CreateRequest, DecryptRequest, EncryptRequest, GetRequest
from kcm.l4 import engine as engine_module
from kcm.l4 import token
from kcm.l4.engine import L4Engine
from kcm.l4.opened_keys import OpenedKey, OpenedKeys
from kcm.l4.service_key import ServiceKey
from kcm.ttlv import Item, ItemType
from tests.unit.test_l4_engine import APP, BILLING, STRANGER, V14, V21, FakeKeys, l3

L4_LEVEL = Attribute.vendor("x", "kcm-level", Item(VENDOR_TAG, ItemType.TEXT_STRING, "L4"))


def fixed_random(n: int) -> bytes:
    return bytes((5 * i + 1) & 0xFF for i in range(n))


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1000)
    return clock


# The cache alone --------------------------------------------------------------------------

def test_a_dek_is_served_for_its_token_under_its_own_l3_version(clock) -> None:
    cache = OpenedKeys(clock=clock.seconds)
    key = l3(1)
    opened = cache.put("l4.1.A", "id-a", key, b"k" * 32)
    assert cache.get("l4.1.A", key) is opened
    assert opened.key == b"k" * 32 and opened.aesgcm() is opened.aesgcm()
    # The same version rebuilt (a state change replaces the object): still its own.
    assert cache.get("l4.1.A", ServiceKey(key.uid, "demo", "app", 1, State.DEACTIVATED,
                                          key.key)) is opened
    for other in (l3(2),  # another version
                  ServiceKey(key.uid, "other", "app", 1, State.ACTIVE, key.key),
                  ServiceKey(key.uid, "demo", "billing", 1, State.ACTIVE, key.key),
                  ServiceKey(key.uid, "demo", "app", 1, State.ACTIVE, b"x" * 32),
                  ServiceKey(key.uid, "demo", "app", 1, State.DESTROYED, b"")):
        assert cache.get("l4.1.A", other) is None
    assert cache.get("l4.1.B", key) is None


def test_lookups_are_counted_hit_or_miss(clock) -> None:
    """What the gateway's kcm_gateway_dek_cache_lookups_total reads: a DEK served is a hit;
    none held, another version's, or one past its TTL a miss."""
    cache = OpenedKeys(clock=clock.seconds, ttl=10)
    key = l3(1)
    assert cache.get("l4.1.A", key) is None
    cache.put("l4.1.A", "id-a", key, b"k" * 32)
    assert cache.get("l4.1.A", key) is not None
    assert cache.get("l4.1.A", key) is not None
    assert cache.get("l4.1.A", l3(2)) is None
    clock.advance(10)
    assert cache.get("l4.1.A", key) is None
    assert (cache.hits.value, cache.misses.value) == (2, 3)


def test_a_dek_is_kept_for_the_ttl_after_it_was_opened_used_or_not(clock) -> None:
    cache = OpenedKeys(clock=clock.seconds, ttl=10)
    key = l3(1)
    cache.put("l4.1.A", "id-a", key, b"k" * 32)
    clock.advance(9.9)
    assert cache.get("l4.1.A", key) is not None
    clock.advance(0.1)
    assert cache.get("l4.1.A", key) is None
    assert len(cache) == 0


def test_expire_takes_expired_deks_out_of_memory(clock) -> None:
    cache = OpenedKeys(clock=clock.seconds, ttl=10)
    key = l3(1)
    cache.put("l4.1.A", "id-a", key, b"a" * 32)
    clock.advance(5)
    cache.put("l4.1.B", "id-b", key, b"b" * 32)
    cache.get("l4.1.A", key)  # a hit moves A after B: expiry still finds it
    clock.advance(5)
    cache.expire()
    assert len(cache) == 1 and cache.get("l4.1.B", key) is not None
    clock.advance(5)
    cache.expire()
    assert len(cache) == 0
    cache.forget_token("id-b")  # the indexes went with the entries
    cache.forget_l3(key.uid)


def test_at_most_max_entries_are_held_least_recently_used_go_first(clock) -> None:
    cache = OpenedKeys(clock=clock.seconds, max_entries=2)
    key = l3(1)
    cache.put("l4.1.A", "id-a", key, b"a" * 32)
    cache.put("l4.1.B", "id-b", key, b"b" * 32)
    cache.get("l4.1.A", key)
    cache.put("l4.1.C", "id-c", key, b"c" * 32)
    assert len(cache) == 2
    assert cache.get("l4.1.B", key) is None
    assert cache.get("l4.1.A", key) is not None and cache.get("l4.1.C", key) is not None


def test_forgetting_by_l3_by_token_and_all(clock) -> None:
    cache = OpenedKeys(clock=clock.seconds)
    v1, v2 = l3(1), l3(2)
    cache.put("l4.1.A", "id-a", v1, b"a" * 32)
    cache.put("l4.1.B", "id-b", v1, b"b" * 32)
    cache.put("l4.1.C", "id-c", v2, b"c" * 32)
    cache.forget_token("id-b")
    assert cache.get("l4.1.B", v1) is None and cache.get("l4.1.A", v1) is not None
    cache.forget_token("id-unknown")
    cache.forget_l3(v1.uid)
    assert cache.get("l4.1.A", v1) is None and cache.get("l4.1.C", v2) is not None
    cache.clear()
    assert len(cache) == 0 and cache.get("l4.1.C", v2) is None


@pytest.mark.parametrize("bounds", [{"max_entries": 0}, {"ttl": 0}, {"ttl": -1}])
def test_a_cache_needs_room_and_time(clock, bounds) -> None:
    with pytest.raises(ValueError):
        OpenedKeys(clock=clock.seconds, **bounds)


def test_an_opened_key_builds_its_cipher_once() -> None:
    opened = OpenedKey(b"k" * 16)
    assert opened.aesgcm() is opened.aesgcm()


# The engine with it ------------------------------------------------------------------------

class Opens:
    """Counts the tokens the engine opens (each a real open)."""

    def __init__(self, monkeypatch) -> None:
        self.count = 0
        real = engine_module._open

        def counted(*args):
            self.count += 1
            return real(*args)

        monkeypatch.setattr(engine_module, "_open", counted)


def sealed_token(keys: FakeKeys) -> str:
    create = CreateRequest(object_type=ObjectType.SYMMETRIC_KEY, attributes=[L4_LEVEL])
    return L4Engine(keys, fixed_random).create(APP, V21, create).unique_identifier


def answer(engine: L4Engine, call, *args):
    try:
        return call(engine)(*args)
    except KmipError as e:
        return (type(e).__name__, e.reason, e.message)


def test_a_token_is_opened_once_for_many_requests(clock, monkeypatch) -> None:
    keys = FakeKeys(l3(1))
    uid = sealed_token(keys)
    opens = Opens(monkeypatch)
    cache = OpenedKeys(clock=clock.seconds)
    results = []
    for _ in range(3):  # one engine per request, as the gateway builds them
        engine = L4Engine(keys, fixed_random, opened_keys=cache)
        sealed = engine.encrypt(APP, V21, EncryptRequest(unique_identifier=uid, data=b"r"))
        results.append(engine.decrypt(APP, V21, DecryptRequest(
            unique_identifier=uid, data=sealed.data, iv_counter_nonce=sealed.iv_counter_nonce,
            authenticated_encryption_tag=sealed.authenticated_encryption_tag)).data)
        results.append(engine.get(APP, V21, GetRequest(unique_identifier=uid)))
    assert opens.count == 1
    assert results[0::2] == [b"r"] * 3
    assert results[1].object.key_block.key_value.key_material == token.open(uid, l3(1))
    clock.advance(300)
    L4Engine(keys, fixed_random, opened_keys=cache).get(APP, V21,
                                                       GetRequest(unique_identifier=uid))
    assert opens.count == 2  # past the TTL: opened again
    # Each engine looks once (a request's own opened DEKs are its own): a miss, then hits.
    assert (cache.hits.value, cache.misses.value) == (2, 2)


def requests_for(uid: str) -> list:
    """(label, method, version, payload): what the engine is asked, refusals included."""
    sealed = L4Engine(FakeKeys(l3(1)), fixed_random).encrypt(
        APP, V21, EncryptRequest(unique_identifier=uid, data=b"record"))
    decrypt = DecryptRequest(unique_identifier=uid, data=sealed.data,
                             iv_counter_nonce=sealed.iv_counter_nonce,
                             authenticated_encryption_tag=sealed.authenticated_encryption_tag)
    bad_tag = DecryptRequest(unique_identifier=uid, data=sealed.data,
                             iv_counter_nonce=sealed.iv_counter_nonce,
                             authenticated_encryption_tag=bytes(16))
    short_tag = DecryptRequest(
        unique_identifier=uid, data=sealed.data, iv_counter_nonce=sealed.iv_counter_nonce,
        authenticated_encryption_tag=sealed.authenticated_encryption_tag[:12])
    return [
        (lambda e: e.encrypt, EncryptRequest(unique_identifier=uid, data=b"x")),
        (lambda e: e.decrypt, decrypt),
        (lambda e: e.decrypt, bad_tag),
        (lambda e: e.decrypt, short_tag),
        (lambda e: e.get, GetRequest(unique_identifier=uid)),
    ]


@pytest.mark.parametrize("principal", [APP, BILLING, STRANGER])
@pytest.mark.parametrize("version", [V14, V21])
@pytest.mark.parametrize("l3_state", [State.ACTIVE, State.DEACTIVATED, State.COMPROMISED,
                                      State.DESTROYED, "tombstoned"])
def test_a_warm_cache_changes_no_answer(clock, principal, version, l3_state) -> None:
    """Warmed by the token's owner while its L3 was Active; then the L3 changes (or the
    token is tombstoned) and anyone asks: the answer is the uncached engine's."""
    keys = FakeKeys(l3(1))
    uid = sealed_token(keys)
    cache = OpenedKeys(clock=clock.seconds)
    L4Engine(keys, fixed_random, opened_keys=cache).get(APP, V21,
                                                       GetRequest(unique_identifier=uid))
    assert len(cache) == 1
    if l3_state == "tombstoned":
        keys.tombstones.add(token.token_id(uid))
    else:
        key = l3(1, l3_state)
        keys.keys[key.uid] = key if l3_state != State.DESTROYED else ServiceKey(
            key.uid, key.tenant, key.service, key.version, key.state, b"")
    for call, payload in requests_for(uid):
        cached = answer(L4Engine(keys, fixed_random, opened_keys=cache), call, principal,
                        version, payload)
        uncached = answer(L4Engine(keys, fixed_random), call, principal, version, payload)
        assert cached == uncached


def test_decrypt_refuses_a_bad_tag_and_a_truncated_one() -> None:
    keys = FakeKeys(l3(1))
    uid = sealed_token(keys)
    _, bad_tag = requests_for(uid)[2]
    with pytest.raises(KmipError) as refused:
        L4Engine(keys, fixed_random).decrypt(APP, V21, bad_tag)
    assert refused.value.reason == ResultReason.CRYPTOGRAPHIC_FAILURE
    assert refused.value.message == "the tag does not verify"
    _, short_tag = requests_for(uid)[3]  # the 12-byte prefix of a 16-byte tag
    for length in (12, 8, 4):
        short_tag.authenticated_encryption_tag = short_tag.authenticated_encryption_tag[:length]
        with pytest.raises(KmipError) as refused:
            L4Engine(keys, fixed_random).decrypt(APP, V21, short_tag)
        assert refused.value.reason == ResultReason.CRYPTOGRAPHIC_FAILURE
        assert refused.value.message == f"the tag is {length} bytes; the Tag Length is 16"
