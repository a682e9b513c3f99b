"""Automatic rotation's store work on both backends (SQLite and the suite's PostgreSQL):
policies, usage counts, a rotation by interval and by cap, a tenant key rotation and its
re-wrap."""

from __future__ import annotations

import os

from kcm.core.auto_rotation import cap_reached, rotate_due
from kcm.core.hierarchy import provision_service, provision_tenant
from kcm.core.keyring import Keyring
from kcm.core.rotation_policy import (
    PolicySettings,
    clear_policy,
    effective_policy,
    set_policy,
)
from kcm.core.store import repository
from kcm.core.store.engine import Store
from kcm.core.tenant_rotation import rewrap_step, rotate_tenant_key, wrapped_counts
from kcm.core.usage import add_uses, uses_of
from tests.integration.test_store import db_url, store  # noqa: F401  (both backends)


def test_rotation_on_both_backends(store: Store) -> None:  # noqa: F811
    keyring = Keyring(os.urandom(32))
    store.audit_key = keyring.audit_key

    def setup(session) -> str:
        provision_tenant(session, keyring, "t1", now=1000)
        return provision_service(session, keyring, "t1", "s1", now=1000)

    v1 = store.run_sync(setup)
    store.run_sync(lambda s: set_policy(s, "", "", PolicySettings(interval=100), now=0))
    store.run_sync(lambda s: set_policy(s, "t1", "s1", PolicySettings(max_uses=10), now=0))
    store.run_sync(lambda s: set_policy(s, "t1", "s1", PolicySettings(overlap=5), now=0))
    effective = store.run_sync(lambda s: effective_policy(s, "t1", "s1"))
    assert (effective.interval, effective.max_uses, effective.overlap) == (100, 10, 5)

    store.run_sync(lambda s: add_uses(s, {v1: 6}, now=1001))
    assert not store.run_sync(lambda s: cap_reached(s, [v1]))
    store.run_sync(lambda s: add_uses(s, {v1: 4, "l3-no-such-key": 7}, now=1002))
    assert store.run_sync(lambda s: uses_of(s, [v1, "l3-no-such-key"])) == {v1: 10}
    assert store.run_sync(lambda s: cap_reached(s, [v1]))
    [by_cap] = store.run_sync(lambda s: rotate_due(s, keyring, 1003))
    assert by_cap.trigger == "max_uses"
    store.run_sync(lambda s: clear_policy(s, "t1", "s1"))
    [by_age] = store.run_sync(lambda s: rotate_due(s, keyring, 1003 + 100))
    assert (by_age.trigger, by_age.policy, by_age.version) == ("interval", "default", 3)

    old_l2 = store.run_sync(lambda s: repository.find_l2(s, "t1").uid)
    new_l2, _ = store.run_sync(lambda s: rotate_tenant_key(s, keyring, "t1", now=2000,
                                                           by="test", reason="test"))
    while store.run_sync(lambda s: rewrap_step(s, keyring, 2001, batch=2)):
        pass
    counts = store.run_sync(lambda s: wrapped_counts(s, "t1"))
    assert old_l2 not in counts and counts[new_l2] == 3
    for uid in (v1, by_cap.uid, by_age.uid):
        store.run_sync(lambda s, uid=uid: keyring.unwrap(s, repository.get_l3(s, uid)))
