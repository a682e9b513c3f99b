"""The effective rotation policy of a service (:func:`kcm.core.rotation_policy.effective`):
each setting from the narrowest scope that sets it, and the built-in usage cap when no
scope sets one (or the narrowest that sets it says 0), named ``built-in``."""

from __future__ import annotations

import pytest

from kcm.core.auto_rotation import due_trigger
from kcm.core.rotation_policy import (
    BUILTIN,
    BUILTIN_MAX_USES,
    MAX_USES,
    EffectivePolicy,
    PolicySettings,
    effective,
)

DEFAULT, TENANT, SERVICE = ("", ""), ("demo", ""), ("demo", "app")


def _cap(**scopes: PolicySettings) -> tuple[int, str | None]:
    stored = {{"default": DEFAULT, "tenant": TENANT, "service": SERVICE}[name]: settings
              for name, settings in scopes.items()}
    policy = effective(stored, "demo", "app")
    return policy.max_uses, policy.max_uses_from


def test_the_built_in_cap_is_half_the_aes_gcm_bound() -> None:
    assert BUILTIN_MAX_USES == 2**31 == MAX_USES // 2
    assert BUILTIN == "built-in"


def test_with_no_policy_at_all_the_built_in_cap_applies() -> None:
    assert _cap() == (2**31, "built-in")
    assert effective({}, "demo", "app") == EffectivePolicy()
    assert (EffectivePolicy().max_uses, EffectivePolicy().max_uses_from) == (2**31, "built-in")


def test_a_cap_set_at_no_scope_is_the_built_in_one_whatever_else_is_set() -> None:
    assert _cap(default=PolicySettings(interval=60, overlap=0),
                tenant=PolicySettings(tenant_key_interval=3600),
                service=PolicySettings(managed_interval=3600)) == (2**31, "built-in")


@pytest.mark.parametrize("scope", ["default", "tenant", "service"])
def test_0_is_the_built_in_cap(scope: str) -> None:
    assert _cap(**{scope: PolicySettings(max_uses=0)}) == (2**31, "built-in")


def test_0_at_a_narrower_scope_is_the_built_in_cap_not_the_wider_scopes() -> None:
    """As 0 was "no cap" at its scope (overriding a wider cap), it is the built-in cap
    there now: the narrowest scope that sets max_uses still decides."""
    assert _cap(default=PolicySettings(max_uses=1000),
                service=PolicySettings(max_uses=0)) == (2**31, "built-in")
    assert _cap(tenant=PolicySettings(max_uses=0),
                service=PolicySettings(interval=60)) == (2**31, "built-in")
    assert _cap(tenant=PolicySettings(max_uses=0),
                service=PolicySettings(max_uses=7)) == (7, "service demo/app")


@pytest.mark.parametrize(("scope", "name"), [("default", "default"), ("tenant", "tenant demo"),
                                             ("service", "service demo/app")])
def test_an_explicit_cap_comes_from_its_scope(scope: str, name: str) -> None:
    for cap in (1, 1000, 2**31, 2**31 + 1, MAX_USES):
        assert _cap(**{scope: PolicySettings(max_uses=cap)}) == (cap, name)


def test_the_narrowest_explicit_cap_wins() -> None:
    assert _cap(default=PolicySettings(max_uses=5), tenant=PolicySettings(max_uses=50),
                service=PolicySettings(max_uses=500)) == (500, "service demo/app")
    assert _cap(default=PolicySettings(max_uses=5), tenant=PolicySettings(max_uses=50),
                service=PolicySettings(interval=9)) == (50, "tenant demo")
    assert _cap(default=PolicySettings(max_uses=5),
                tenant=PolicySettings(interval=9)) == (5, "default")


def test_a_version_at_the_built_in_cap_is_due() -> None:
    policy = effective({}, "demo", "app")
    assert due_trigger(policy, 10**9, 2**31 - 1) is None
    assert due_trigger(policy, 0, 2**31) == "max_uses"


def test_the_built_in_cap_is_read_when_the_policy_is_resolved(monkeypatch) -> None:
    """(Tests make it small: the module's constant is read at each resolution.)"""
    from kcm.core import rotation_policy

    monkeypatch.setattr(rotation_policy, "BUILTIN_MAX_USES", 5)
    assert _cap() == (5, "built-in")
    assert _cap(tenant=PolicySettings(max_uses=0)) == (5, "built-in")
    assert _cap(tenant=PolicySettings(max_uses=6)) == (6, "tenant demo")
