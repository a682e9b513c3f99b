"""The keyring looks a tenant's current L2 up at most once per TTL, and again after a
local re-key; what it wraps always names the L2 that wrapped it."""

from __future__ import annotations

import pytest

from kcm.core.keyring import Keyring
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
        return core.store.run_sync(lambda s: keyring.wrap_for_tenant(s, "demo", uid, b"k"))

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
