"""Automatic rotation of service keys, in one process: policies, what makes a version due,
what a rotation does to the versions, the events and the audit log
(:mod:`kcm.core.auto_rotation`, :mod:`kcm.core.rotation_policy`, :mod:`kcm.core.usage`)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from kcm.core.auto_rotation import due_trigger, rotate_due
from kcm.core.rotation_policy import (
    BUILTIN_MAX_USES,
    DEFAULT_OVERLAP,
    MAX_DURATION,
    MAX_USES,
    PolicySettings,
    clear_policy,
    effective_policy,
    format_duration,
    parse_duration,
    set_policy,
)
from kcm.core.state_sweeper import sweep_due_states
from kcm.core.store import repository
from kcm.core.store.schema import AuditLog
from kcm.core.usage import add_uses, uses_of
from kcm.kmip.enums import State
from tests.core_support import CoreHarness


def _versions(core: CoreHarness, tenant: str = "demo", service: str = "app"):
    return core.store.run_sync(lambda s: [(r.key_version, r.uid, r.state, r.deactivation_date)
                                          for r in repository.find_l3(s, tenant, service)])


def _policy(core: CoreHarness, tenant: str, service: str, **settings: int) -> None:
    core.store.run_sync(lambda s: set_policy(s, tenant, service, PolicySettings(**settings),
                                             now=0))


def _rotate(core: CoreHarness, now: float):
    return core.store.run_sync(lambda s: rotate_due(s, core.keyring, now))


def _audit(core: CoreHarness, operation: str) -> list[dict]:
    return core.store.run_sync(lambda s: [
        {"objects": row.object_ids, "principal": row.principal,
         "detail": json.loads(row.detail) if row.detail else None}
        for row in s.scalars(select(AuditLog).where(AuditLog.operation == operation)
                             .order_by(AuditLog.seq))])


def test_each_setting_comes_from_the_narrowest_scope_that_sets_it(core: CoreHarness) -> None:
    _policy(core, "", "", interval=3600, overlap=10)
    _policy(core, "demo", "", max_uses=1000)
    _policy(core, "demo", "app", interval=60)
    effective = core.store.run_sync(lambda s: effective_policy(s, "demo", "app"))
    assert (effective.interval, effective.interval_from) == (60, "service demo/app")
    assert (effective.max_uses, effective.max_uses_from) == (1000, "tenant demo")
    assert (effective.overlap, effective.overlap_from) == (10, "default")
    other = core.store.run_sync(lambda s: effective_policy(s, "other", "app"))
    assert (other.interval, other.interval_from) == (3600, "default")
    assert (other.max_uses, other.max_uses_from) == (BUILTIN_MAX_USES, "built-in")
    core.store.run_sync(lambda s: clear_policy(s, "demo", "app"))
    assert core.store.run_sync(lambda s: effective_policy(s, "demo", "app")).interval == 3600
    nothing = core.store.run_sync(lambda s: effective_policy(s, "other", "none"))
    assert nothing.overlap == 10 and (nothing.max_uses, nothing.max_uses_from) == (
        2**31, "built-in")


def test_without_a_policy_nothing_rotates(core: CoreHarness) -> None:
    before = _versions(core)
    assert _rotate(core, 4_000_000_000) == []
    assert _versions(core) == before


def test_a_version_older_than_the_interval_is_replaced_and_retired_after_the_overlap(
        core: CoreHarness) -> None:
    [(_, old_uid, _, _)] = _versions(core)
    activated = core.store.run_sync(lambda s: repository.get_l3(s, old_uid).activation_date)
    _policy(core, "demo", "app", interval=2, overlap=5)
    head = core.store.run_sync(repository.outbox_head)
    assert _rotate(core, activated + 1) == []
    [rotation] = _rotate(core, activated + 2)
    assert (rotation.trigger, rotation.policy, rotation.version) == (
        "interval", "service demo/app", 2)
    new, old = _versions(core)
    assert new[:3] == (2, rotation.uid, State.ACTIVE)
    # The old version is still Active (the overlap), then Deactivated by the date sweep.
    assert old == (1, old_uid, State.ACTIVE, activated + 2 + 5)
    events = core.store.run_sync(lambda s: repository.outbox_since(s, head))
    assert [e.kind for e in events] == ["l3.rotated"]
    assert core.store.run_sync(lambda s: sweep_due_states(s, activated + 7)) == [old_uid]
    assert _versions(core)[1][2] == State.DEACTIVATED
    # Other services are not touched, and the new version is not due yet.
    assert len(_versions(core, "demo", "billing")) == 1
    assert _rotate(core, activated + 3) == []
    [record] = _audit(core, "AutoRotate")
    assert record["principal"] == "kcm-core/rotation"
    assert record["detail"]["policy"] == "service demo/app"
    assert record["detail"]["trigger"] == "interval"
    assert record["detail"]["interval"] == 2 and record["detail"]["previous_version"] == 1


def test_with_no_overlap_the_old_version_is_deactivated_at_once(core: CoreHarness) -> None:
    [(_, old_uid, _, _)] = _versions(core)
    _policy(core, "", "", interval=1, overlap=0)
    rotations = _rotate(core, 4_000_000_000)
    assert {(r.tenant, r.service) for r in rotations} == {
        ("demo", "app"), ("demo", "billing"), ("other", "app")}
    assert {r.policy for r in rotations} == {"default"}
    assert _versions(core)[1][:3] == (1, old_uid, State.DEACTIVATED)


def test_a_usage_cap_reached_rotates(core: CoreHarness) -> None:
    [(_, uid, _, _)] = _versions(core)
    _policy(core, "demo", "", max_uses=1000)
    core.store.run_sync(lambda s: add_uses(s, {uid: 600}, now=0))
    assert _rotate(core, 1) == []
    core.store.run_sync(lambda s: add_uses(s, {uid: 450, "l3-unknown": 0}, now=0))
    assert core.store.run_sync(lambda s: uses_of(s, [uid])) == {uid: 1050}
    [rotation] = _rotate(core, 2)
    assert (rotation.trigger, rotation.policy) == ("max_uses", "tenant demo")
    [record] = _audit(core, "AutoRotate")
    assert record["detail"]["uses"] == 1050 and record["detail"]["max_uses"] == 1000
    # The new version starts from nothing; more uses of the old one change nothing.
    core.store.run_sync(lambda s: add_uses(s, {uid: 10}, now=0))
    assert _rotate(core, 3) == []


def test_without_any_policy_a_version_is_replaced_at_the_built_in_cap(
        core: CoreHarness, monkeypatch) -> None:
    """No policy row at all: a version is replaced once its count reaches the built-in cap
    (made 5 here; 2**31), not before, as at a policy's cap: a new version, the old one
    retired after the default overlap, an AutoRotate record naming "built-in"."""
    from kcm.core import rotation_policy

    monkeypatch.setattr(rotation_policy, "BUILTIN_MAX_USES", 5)
    assert core.store.run_sync(rotation_policy.policies) == {}
    [(_, uid, _, _)] = _versions(core)
    t0 = core.store.run_sync(lambda s: repository.get_l3(s, uid).activation_date)
    assert _rotate(core, t0 + 1) == []  # (the keys marked when made, judged once)
    core.store.run_sync(lambda s: add_uses(s, {uid: 4}, now=t0))
    assert _rotate(core, t0 + 2) == []
    core.store.run_sync(lambda s: add_uses(s, {uid: 1}, now=t0))
    [rotation] = _rotate(core, t0 + 3)
    assert (rotation.previous_uid, rotation.trigger, rotation.policy) == (
        uid, "max_uses", "built-in")
    assert str(rotation).endswith("by the built-in max_uses")
    new, old = _versions(core)
    assert new[:3] == (2, rotation.uid, State.ACTIVE)
    assert old == (1, uid, State.ACTIVE, t0 + 3 + DEFAULT_OVERLAP)
    [record] = _audit(core, "AutoRotate")
    assert json.loads(record["objects"]) == [rotation.uid, uid]
    assert {k: record["detail"][k] for k in ("policy", "trigger", "max_uses", "uses",
                                              "overlap")} == {
        "policy": "built-in", "trigger": "max_uses", "max_uses": 5, "uses": 5,
        "overlap": DEFAULT_OVERLAP}
    # The other services are untouched; the new version starts from nothing.
    assert len(_versions(core, "demo", "billing")) == 1
    core.store.run_sync(lambda s: add_uses(s, {uid: 10}, now=t0))
    assert _rotate(core, t0 + 4) == []


def test_a_cap_of_0_is_the_built_in_cap_beside_other_policies(
        core: CoreHarness, monkeypatch) -> None:
    """Policies exist (an interval for everyone, a tenant's cap of 1000) and a service
    sets max_uses 0: its versions are replaced at the built-in cap (made 5 here), as ones
    at a policy's cap, while the tenant's other service keeps the tenant's cap."""
    from kcm.core import rotation_policy

    monkeypatch.setattr(rotation_policy, "BUILTIN_MAX_USES", 5)
    _policy(core, "", "", interval=90 * 86400)
    _policy(core, "demo", "", max_uses=1000)
    _policy(core, "demo", "app", max_uses=0)
    [(_, app, _, _)] = _versions(core)
    [(_, billing, _, _)] = _versions(core, "demo", "billing")
    t0 = core.store.run_sync(lambda s: repository.get_l3(s, app).activation_date)
    assert _rotate(core, t0 + 1) == []
    core.store.run_sync(lambda s: add_uses(s, {app: 5, billing: 5}, now=t0))
    [rotation] = _rotate(core, t0 + 2)
    assert (rotation.service, rotation.trigger, rotation.policy) == (
        "app", "max_uses", "built-in")
    [record] = _audit(core, "AutoRotate")
    assert (record["detail"]["policy"], record["detail"]["max_uses"]) == ("built-in", 5)


def test_the_intake_wakes_the_sweeper_at_the_built_in_cap_without_a_policy(
        core: CoreHarness, monkeypatch) -> None:
    """A usage write that brings a current version to the built-in cap (made 1000 here)
    asks for a sweep at once, as at a policy's cap: with no policy stored."""
    from twisted.internet.defer import succeed
    from twisted.internet.task import Clock

    from kcm.core import rotation_policy
    from kcm.core.usage_intake import UsageIntake

    monkeypatch.setattr(rotation_policy, "BUILTIN_MAX_USES", 1000)

    class Store:
        def run(self, fn):
            return succeed(core.store.run_sync(fn))

    [(_, uid, _, _)] = _versions(core)
    clock, woken = Clock(), []
    intake = UsageIntake(Store(), clock, on_cap_reached=lambda: woken.append(1))
    intake.add({uid: 999})
    clock.advance(intake.delay)
    assert woken == []
    intake.add({uid: 1})
    clock.advance(intake.delay)
    assert woken == [1]
    intake.stop()


def test_rotation_keeps_the_kmip_2_1_rotation_attributes(core: CoreHarness) -> None:
    from kcm.core.attribute_blob import decode_attributes
    from kcm.kmip.tags import Tag

    [(_, old_uid, _, _)] = _versions(core)
    _policy(core, "demo", "app", interval=1)
    [first] = _rotate(core, 4_000_000_000)
    [second] = _rotate(core, 4_000_000_010)

    def attributes(uid):
        row = core.store.run_sync(lambda s: repository.get_l3(s, uid))
        return {a.tag: a.typed for a in decode_attributes(row.attributes)}

    assert attributes(first.uid)[Tag.ROTATE_GENERATION] == 1
    assert attributes(second.uid)[Tag.ROTATE_GENERATION] == 2
    assert attributes(second.uid)[Tag.ROTATE_LATEST] is True
    assert attributes(second.uid)[Tag.ROTATE_DATE] == 4_000_000_010
    assert attributes(first.uid)[Tag.ROTATE_LATEST] is False
    assert attributes(old_uid)[Tag.ROTATE_LATEST] is False


def test_due_trigger() -> None:
    from kcm.core.rotation_policy import EffectivePolicy

    policy = EffectivePolicy(interval=10, max_uses=5)
    assert due_trigger(policy, 9, 4) is None
    assert due_trigger(policy, 10, 0) == "interval"
    assert due_trigger(policy, 0, 5) == "max_uses"
    assert due_trigger(EffectivePolicy(), 10**9, 10**9) is None
    assert due_trigger(EffectivePolicy(), 0, 2**31) == "max_uses"  # (the built-in cap)
    assert EffectivePolicy().overlap == DEFAULT_OVERLAP


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900),
                                                ("12h", 43200), ("30d", 2592000),
                                                ("2w", 1209600)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        parse_duration("soon")
    with pytest.raises(ValueError):
        PolicySettings(interval=-1)


def test_durations_and_caps_have_a_maximum() -> None:
    """A policy's durations are at most 100 years (then added to a date they still make a
    Date-Time) and its usage cap at most 2**32 (NIST SP 800-38D §8.3: AES-GCM with random
    IVs, at most 2**32 encryptions per key); more is refused with a short message that says
    why."""
    assert parse_duration("36500d") == MAX_DURATION == 100 * 365 * 86400
    for text in ("36501d", "3153600001", str(2**63 - 100), "9" * 5000):
        with pytest.raises(ValueError, match="^a duration is at most 100 years"):
            parse_duration(text)
    for name in ("interval", "overlap", "managed_interval", "tenant_key_interval"):
        assert getattr(PolicySettings(**{name: MAX_DURATION}), name) == MAX_DURATION
        with pytest.raises(ValueError, match=f"^{name} must be at most 3153600000 s"):
            PolicySettings(**{name: MAX_DURATION + 1})
    assert PolicySettings(max_uses=MAX_USES).max_uses == 2**32
    for too_many in (2**32 + 1, 2**62, 10**20):
        with pytest.raises(ValueError) as refused:
            PolicySettings(max_uses=too_many)
        assert str(refused.value) == (
            "max_uses must be at most 4294967296 (AES-GCM with random IVs allows at most "
            "2**32 encryptions under one key)")


def test_an_overlap_stored_before_the_maximum_does_not_stop_rotation(
        core: CoreHarness) -> None:
    """A huge overlap stored before the maximum (the column holds it) is read as 100 years:
    the scope's rotations go on instead of failing at every sweep."""
    from kcm.core.store.schema import RotationPolicy

    _policy(core, "", "", interval=1)
    core.store.run_sync(lambda s: setattr(s.get(RotationPolicy, ("", "")), "overlap",
                                          2**63 - 100))
    created = _versions(core)[0]
    [rotation] = [r for r in _rotate(core, 2_000_000_000) if r.tenant == "demo"
                  and r.service == "app"]
    assert rotation.previous_uid == created[1]
    old = [v for v in _versions(core) if v[1] == created[1]][0]
    assert old[3] == 2_000_000_000 + MAX_DURATION
    assert effective_policy_of(core).overlap == MAX_DURATION


def effective_policy_of(core: CoreHarness):
    return core.store.run_sync(lambda s: effective_policy(s, "demo", "app"))


def test_a_usage_cap_stored_before_the_gcm_bound_is_read_as_the_bound(
        core: CoreHarness) -> None:
    """A cap above 2**32 stored before the bound was enforced (2**62 was the maximum) is read
    as 2**32, so the version is still replaced within what AES-GCM allows; listing the
    policies (the sweeper's read) does not fail on it either."""
    from kcm.core.rotation_policy import policies
    from kcm.core.store.schema import RotationPolicy

    _policy(core, "demo", "", max_uses=1000)
    core.store.run_sync(lambda s: setattr(s.get(RotationPolicy, ("demo", "")), "max_uses",
                                          2**62))
    assert effective_policy_of(core).max_uses == MAX_USES == 2**32
    assert core.store.run_sync(policies)[("demo", "")].max_uses == 2**32
    uid = _versions(core)[0][1]
    core.store.run_sync(lambda s: add_uses(s, {uid: 2**32}, now=0))
    [rotation] = [r for r in _rotate(core, 2_000_000_000) if r.tenant == "demo"
                  and r.service == "app"]
    assert (rotation.previous_uid, rotation.trigger) == (uid, "max_uses")


def test_a_version_an_administrator_re_keyed_is_as_old_as_it_is(core: CoreHarness) -> None:
    """A Re-key without Offset copies the old version's Activation Date (KMIP 1.4 §4.4);
    the policy took the new version's age from it, so a version made two minutes before
    the sweep was rotated again at once, and retired after the overlap."""
    from kcm.kmip.enums import Operation, ResultStatus
    from kcm.kmip.payloads import ReKeyRequest
    from kcm.testing.requests import item, request, response
    from tests.core_support import admin_principal

    [(_, v1, _, _)] = _versions(core)
    activated = core.store.run_sync(lambda s: repository.get_l3(s, v1).activation_date)
    _policy(core, "", "", interval=3600, overlap=60)
    re_keyed_at = activated + 3480  # the administrator re-keys 58 minutes in
    [answer] = response(core.handler.respond(
        request(item(Operation.RE_KEY, ReKeyRequest(unique_identifier=v1)), version=(2, 1)),
        core.caller(admin_principal()), re_keyed_at)).batch_items
    assert answer.result_status == ResultStatus.SUCCESS, answer.result_message
    v2 = answer.response_payload.unique_identifier

    def of_app(rotations):  # (the other services' keys rotate by the same policy)
        return [r for r in rotations if (r.tenant, r.service) == ("demo", "app")]

    assert of_app(_rotate(core, activated + 3600)) == []  # two minutes old: not due
    [rotation] = of_app(_rotate(core, re_keyed_at + 3600))  # an interval after it was made
    assert rotation.previous_uid == v2
