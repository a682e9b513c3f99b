"""The keyring looks a tenant's current L2 up at most once per TTL, and again after a
local re-key; what it wraps always names the L2 that wrapped it."""

from __future__ import annotations

import pytest

from kcm.core.keyring import Binding, Keyring
from kcm.core.keys import derive_audit_key
from kcm.core.store import repository
from kcm.kmip.errors import KmipError
from tests.core_support import CoreHarness


def test_current_l2_is_cached_for_its_ttl(core: CoreHarness,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    keyring = Keyring(core.keyring._l1, clock=lambda: now[0], current_l2_ttl=5.0)
    calls = []
    real = repository.find_l2

    def counting(session, tenant, **kwargs):
        calls.append(tenant)
        return real(session, tenant, **kwargs)

    monkeypatch.setattr(repository, "find_l2", counting)

    def wrap(uid: str) -> tuple[bytes, str]:
        return core.store.run_sync(lambda s: keyring.wrap_for_tenant(
            s, "demo", uid, b"k", binding=Binding("demo", uid, 2, None, None, None, True, False)))

    first = wrap("a")
    second = wrap("b")
    assert len(calls) == 1 and first[1] == second[1]
    now[0] += 5.0
    wrap("c")
    assert len(calls) == 2
    keyring.forget_current("demo")
    wrap("d")
    assert len(calls) == 3
    # Whatever was wrapped names its L2 and unwraps through the store as always.
    l2 = core.store.run_sync(lambda s: repository.find_l2(s, "demo"))
    assert first[1] == l2.uid


def test_the_audit_key_is_derived_when_l1_is_given() -> None:
    keyring = Keyring()
    with pytest.raises(KmipError, match="not loaded"):
        _ = keyring.audit_key
    l1 = bytes(range(32))
    keyring.load(l1)
    assert keyring.audit_key == derive_audit_key(l1) == Keyring(l1).audit_key


def test_clear_keys_are_kept_no_longer_than_their_ttl(core: CoreHarness) -> None:
    """Unwrapped materials and L2 keys are dropped ``kept_ttl`` after they were unwrapped,
    used or not (Keyring.expire, run with the object cache's expiry): a key another core
    destroyed is never read here again, and was kept in the clear as long as the process
    ran. An L2 dropped is read again when next needed: destroyed meanwhile (by another
    core), it is refused, not used from memory."""
    from sqlalchemy import update

    from kcm.core.store.schema import ManagedObject

    now = [100.0]
    keyring = Keyring(core.keyring._l1, clock=lambda: now[0], kept_ttl=300.0)
    blob, l2_uid = core.store.run_sync(
        lambda s: keyring.wrap_for_tenant(s, "demo", "object", b"clear key",
                                          binding=Binding("demo", "object", 2, None, None, None,
                                                          True, False)))
    row = ManagedObject(tenant="demo", uid="object", material=blob, wrapped_by=l2_uid,
                        object_type=2)

    def unwrap() -> bytes:
        return core.store.run_sync(lambda s: keyring.unwrap(s, row))

    assert unwrap() == b"clear key"
    assert keyring._unwrapped and l2_uid in keyring._l2_by_uid
    now[0] += 299.0
    assert keyring.expire() == 0 and unwrap() == b"clear key"
    now[0] += 1.0
    assert keyring.expire() == 2
    assert not keyring._unwrapped and not keyring._l2_by_uid
    assert unwrap() == b"clear key"  # (read again)
    # Another process destroys the L2 (its material gone from the row): used from memory
    # until its ttl is out, then refused.
    core.store.run_sync(lambda s: s.execute(update(ManagedObject).where(
        ManagedObject.uid == l2_uid).values(material=None)))
    now[0] += 300.0
    with pytest.raises(KmipError, match="the tenant key was destroyed"):
        unwrap()
    assert l2_uid not in keyring._l2_by_uid and not keyring._unwrapped
