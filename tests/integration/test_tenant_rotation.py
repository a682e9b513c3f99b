"""Tenant key (L2) rotation and the re-wrap that follows it, in bounded batches
(:mod:`kcm.core.tenant_rotation`), in one process."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import select

from kcm.core.keyring import CURRENT_L2_TTL, Binding, Keyring
from kcm.core.store import repository
from kcm.core.store.schema import LEVEL_SERVICE_KEY, AuditLog, ManagedObject
from kcm.core.tenant_rotation import (
    DESTROY_GRACE,
    rewrap_step,
    rotate_tenant_key,
    wrapped_counts,
)
from kcm.kmip.enums import Operation, ResultReason, State
from kcm.kmip.errors import KmipError
from kcm.kmip.payloads import DestroyRequest, GetRequest
from tests.core_support import CoreHarness, admin_principal
from tests.integration.test_core_objects import PAST, failed, ok, register


def _rotate(core: CoreHarness) -> tuple[str, list[str]]:
    return core.store.run_sync(lambda s: rotate_tenant_key(
        s, core.keyring, "demo", now=2_000_000_000, by="test", reason="test"))


def test_a_new_tenant_key_wraps_what_comes_and_the_sweeper_moves_the_rest_in_batches(
        core: CoreHarness) -> None:
    objects = [register(core, attributes=[PAST]) for _ in range(7)]
    old_l2 = core.store.run_sync(lambda s: repository.find_l2(s, "demo").uid)
    before = core.store.run_sync(lambda s: wrapped_counts(s, "demo"))
    assert before[old_l2] == 7 + 2  # the objects and the two L3s (app, billing)

    new_l2, retired = _rotate(core)
    assert retired == [old_l2] and new_l2 != old_l2
    states = core.store.run_sync(lambda s: {
        r.uid: r.state for r in s.scalars(select(ManagedObject).where(
            ManagedObject.uid.in_((old_l2, new_l2))))})
    assert states == {old_l2: State.DEACTIVATED, new_l2: State.ACTIVE}
    fresh = register(core, attributes=[PAST])
    assert core.store.run_sync(lambda s: repository.get_object(s, "demo", fresh)).wrapped_by \
        == new_l2

    batches = []
    while done := core.store.run_sync(lambda s: rewrap_step(s, core.keyring, 2_000_000_001,
                                                            batch=4)):
        batches += done
    assert [(b.count, b.more) for b in batches] == [(4, True), (4, True), (1, False)]
    after = core.store.run_sync(lambda s: wrapped_counts(s, "demo"))
    assert old_l2 not in after and after[new_l2] == 7 + 2 + 1
    # Everything still opens, the L3s included (their key bytes did not change).
    for uid in [*objects, fresh]:
        ok(core, Operation.GET, GetRequest(unique_identifier=uid))
    l3s = core.store.run_sync(lambda s: [r.uid for r in s.scalars(select(ManagedObject).where(
        ManagedObject.tenant == "demo", ManagedObject.level == LEVEL_SERVICE_KEY))])
    for l3 in l3s:
        core.store.run_sync(lambda s, uid=l3: core.keyring.unwrap(
            s, repository.get_object(s, "demo", uid)))
    # The other tenant was not touched, and nothing is left to do.
    assert core.store.run_sync(lambda s: rewrap_step(s, core.keyring, 2_000_000_002)) == []
    records = core.store.run_sync(lambda s: [
        (r.operation, json.loads(r.detail)) for r in s.scalars(select(AuditLog).where(
            AuditLog.operation.in_(("RewrapObjects", "RotateTenantKey"))))])
    assert [op for op, _ in records] == ["RotateTenantKey"] + ["RewrapObjects"] * 3
    assert records[1][1] == {"from": old_l2, "to": new_l2, "count": 4, "more": True}


def test_a_tenant_policy_rotates_the_tenant_key_when_it_is_old_enough(core: CoreHarness) -> None:
    from kcm.core.rotation_policy import PolicySettings, set_policy
    from kcm.core.tenant_rotation import rotate_tenant_keys_due

    l2s = core.store.run_sync(lambda s: {t: repository.find_l2(s, t) for t in ("demo", "other")})
    created = l2s["demo"].activation_date
    assert core.store.run_sync(lambda s: rotate_tenant_keys_due(
        s, core.keyring, created + 10**6)) == []  # no policy: nothing
    core.store.run_sync(lambda s: set_policy(s, "demo", "", PolicySettings(
        tenant_key_interval=3600), now=0))
    assert core.store.run_sync(lambda s: rotate_tenant_keys_due(
        s, core.keyring, created + 3599)) == []
    [done] = core.store.run_sync(lambda s: rotate_tenant_keys_due(
        s, core.keyring, created + 3600))
    assert "tenant demo" in done and "tenant demo policy" in done
    current = core.store.run_sync(lambda s: {t: repository.find_l2(s, t).uid
                                             for t in ("demo", "other")})
    assert current["demo"] != l2s["demo"].uid and current["other"] == l2s["other"].uid
    [record] = core.store.run_sync(lambda s: [
        json.loads(r.detail) for r in s.scalars(select(AuditLog).where(
            AuditLog.operation == "RotateTenantKey"))])
    assert record["policy"] == "tenant demo" and record["trigger"] == "tenant_key_interval"
    assert record["interval"] == 3600 and record["age"] == 3600
    # The new one is young: nothing more until it is as old.
    assert core.store.run_sync(lambda s: rotate_tenant_keys_due(
        s, core.keyring, created + 3601)) == []


def _retire_l2(core: CoreHarness, now: int) -> tuple[str, str]:
    old = core.store.run_sync(lambda s: repository.find_l2(s, "demo").uid)
    new, _ = core.store.run_sync(lambda s: rotate_tenant_key(
        s, core.keyring, "demo", now=now, by="test", reason="test"))
    return old, new


def _rewrap_all(core: CoreHarness) -> None:
    while core.store.run_sync(lambda s: rewrap_step(s, core.keyring, time.time())):
        pass


def test_a_tenant_key_is_not_destroyed_while_it_still_wraps_anything(
        core: CoreHarness) -> None:
    """A retired L2 that still wraps keys or objects (the re-wrap has not finished) is not
    destroyed: they would be lost with it. Once it wraps nothing, it is, and the keyring
    forgets it at once (no later unwrap may hide a loss until a restart)."""
    objects = [register(core, attributes=[PAST]) for _ in range(3)]
    old, new = _retire_l2(core, int(time.time()) - 100)
    destroy = DestroyRequest(unique_identifier=old)
    message = failed(core, Operation.DESTROY, destroy, ResultReason.WRONG_KEY_LIFECYCLE_STATE,
                     principal=admin_principal())
    assert message == ("the tenant key still wraps 5 keys or objects: the re-wrap has not "
                       "finished")  # the three objects and the two L3s
    failed(core, Operation.DESTROY, destroy, ResultReason.PERMISSION_DENIED,
           principal=admin_principal(), version=(1, 4))
    kept = core.store.run_sync(lambda s: repository.get_object(s, "demo", old))
    assert kept.state == State.DEACTIVATED and kept.material is not None

    _rewrap_all(core)
    assert old in core.keyring._l2_by_uid  # it unwrapped what the re-wrap moved
    ok(core, Operation.DESTROY, destroy, principal=admin_principal())
    assert old not in core.keyring._l2_by_uid
    gone = core.store.run_sync(lambda s: repository.get_object(s, "demo", old))
    assert gone.state == State.DESTROYED and gone.material is None
    # Nothing was lost: a keyring that never saw the old L2 (a restarted core) opens all.
    fresh = Keyring(core.keyring._l1)
    for uid in objects:
        assert core.store.run_sync(lambda s, u=uid: fresh.unwrap(
            s, repository.get_object(s, "demo", u)))
        ok(core, Operation.GET, GetRequest(unique_identifier=uid))
    assert core.store.run_sync(lambda s: wrapped_counts(s, "demo")).get(old) is None
    assert new in core.keyring._l2_by_uid


def test_a_tenant_key_retired_moments_ago_is_not_destroyed(core: CoreHarness) -> None:
    """Another core may take the tenant's previous L2 for its current one for a few
    seconds more (CURRENT_L2_TTL): its Destroy waits DESTROY_GRACE after it was retired."""
    old, _ = _retire_l2(core, int(time.time()))
    _rewrap_all(core)
    message = failed(core, Operation.DESTROY, DestroyRequest(unique_identifier=old),
                     ResultReason.WRONG_KEY_LIFECYCLE_STATE, principal=admin_principal())
    assert message == (f"the tenant key was retired less than {DESTROY_GRACE} s ago; try "
                       "again later")
    assert DESTROY_GRACE > CURRENT_L2_TTL


def test_a_core_drops_a_tenant_key_another_core_destroyed(core: CoreHarness) -> None:
    """A second core's keyring (same database, its own caches) that unwrapped under the old
    L2 drops it as soon as it reads the destroyed row, and takes the new L2 for current
    once its TTL has passed."""
    register(core, attributes=[PAST])
    now = [0.0]
    other = Keyring(core.keyring._l1, clock=lambda: now[0])
    old_l2 = core.store.run_sync(lambda s: other.wrap_for_tenant(
        s, "demo", "x", b"k", binding=Binding("demo", "x", 2, None, None, None, True, False)))[1]
    old, new = _retire_l2(core, int(time.time()) - 100)
    assert old == old_l2 and old in other._l2_by_uid
    _rewrap_all(core)
    ok(core, Operation.DESTROY, DestroyRequest(unique_identifier=old),
       principal=admin_principal())
    now[0] += CURRENT_L2_TTL
    assert core.store.run_sync(lambda s: other.wrap_for_tenant(
        s, "demo", "y", b"k", binding=Binding("demo", "y", 2, None, None, None, True,
                                              False)))[1] == new
    with pytest.raises(KmipError, match="the tenant key was destroyed"):
        core.store.run_sync(lambda s: other._l2_key(repository.get_object(s, "demo", old)))
    assert old not in other._l2_by_uid


def test_a_rewrap_batch_that_fails_midway_leaves_nothing_stale_in_its_groups_session(
        core: CoreHarness) -> None:
    """A sweep is a job of a group commit, sharing the group's session with requests. A
    re-wrap batch that fails after moving some objects rolls them back, and the session
    keeps nothing of them: a later job of the group reads and changes them as stored (the
    rows were kept there, as written, with the revision the rollback undid)."""
    from kcm.core import sweep_steps
    from kcm.core.audit import savepoint

    objects = [register(core) for _ in range(3)]
    retired = core.store.run_sync(lambda s: repository.find_l2(s, "demo").uid)
    core.store.run_sync(lambda s: rotate_tenant_key(s, core.keyring, "demo", now=int(time.time()),
                                                    by="test", reason="the test"))
    real, calls = core.keyring.wrap_for_tenant, []

    def failing_third(session, tenant, uid, plaintext, *, binding):
        calls.append(uid)
        if len(calls) == 3:
            raise RuntimeError("the third fails")
        return real(session, tenant, uid, plaintext, binding=binding)

    def group(session):
        core.keyring.wrap_for_tenant = failing_third
        try:
            with savepoint(session):  # the sweep's job, as the group commit runs it
                done = sweep_steps.run_steps(session, [
                    lambda s, now: rewrap_step(s, core.keyring, now, batch=10)], time.time())
        finally:
            core.keyring.wrap_for_tenant = real
        assert [type(outcome).__name__ for outcome in done] == ["StepFailed"]
        with savepoint(session):  # a later job of the group changes what was moved
            for uid in calls[:2]:
                row = repository.get_object(session, "demo", uid)
                repository.update_columns(session, row, state=row.state)
        return calls[:2]

    moved = core.store.run_sync(group)
    assert len(moved) == 2
    # the batch rolled back: what it had moved is under the retired key still, and moves
    # with the next batch
    wrapping = core.store.run_sync(lambda s: dict(s.execute(select(
        ManagedObject.uid, ManagedObject.wrapped_by).where(ManagedObject.uid.in_(moved))).all()))
    assert set(wrapping.values()) == {retired}
    done = core.store.run_sync(lambda s: rewrap_step(s, core.keyring, time.time(), batch=10))
    assert done and done[0].count >= len(objects)


def test_a_sweep_step_rolled_back_takes_its_audit_records_along(core: CoreHarness) -> None:
    """A step that fails after appending audit records rolls back alone, and its records
    are neither written nor logged (they were logged with the commit, never written)."""
    from kcm.core import audit as audit_module
    from kcm.core import sweep_steps
    from kcm.core.audit import AuditEvent, append_audit, savepoint
    from kcm.kernel.correlation import new_correlation_id

    def event(operation: str) -> AuditEvent:
        return AuditEvent(principal="test", operation=operation, result_status="SUCCESS",
                          correlation_id=new_correlation_id(), source="test", tenant="demo",
                          object_ids=(), detail={})

    def failing(session, now):
        append_audit(session, event("FailedStepRecord"))
        raise RuntimeError("the step fails")

    def group(session):
        with savepoint(session):
            append_audit(session, event("SweepRecord"))
            sweep_steps.run_steps(session, [failing], time.time())

    logged: list[str] = []
    kept = audit_module._log_record
    audit_module._log_record = lambda fields: logged.append(fields.get("operation"))
    try:
        core.store.run_sync(group)
    finally:
        audit_module._log_record = kept
    assert "SweepRecord" in logged and "FailedStepRecord" not in logged
    stored = core.store.run_sync(lambda s: list(s.scalars(select(AuditLog.operation).where(
        AuditLog.operation.in_(("SweepRecord", "FailedStepRecord"))))))
    assert stored == ["SweepRecord"]


def test_a_row_that_does_not_match_its_wrapping_is_left_and_the_rewrap_goes_on(
        core: CoreHarness) -> None:
    """A row changed in the database (its service, under wrap format version 2) among the
    objects a retired tenant key wraps: refused once (logged, counted), left under the
    retired key (kept), and the others moved; the step does not fail at every sweep."""
    from sqlalchemy import update

    objects = [register(core, attributes=[PAST]) for _ in range(5)]
    core.store.run_sync(lambda s: s.execute(update(ManagedObject).where(
        ManagedObject.uid == objects[0]).values(service="elsewhere",
                                                revision=ManagedObject.revision + 1)))
    old_l2 = core.store.run_sync(lambda s: repository.find_l2(s, "demo").uid)
    new_l2, _ = _rotate(core)
    refused: set[str] = set()
    batches = []
    for _ in range(20):  # (batches of one: one of them the refused row alone)
        done = core.store.run_sync(lambda s: rewrap_step(s, core.keyring, 2_000_000_001,
                                                         batch=1, refused=refused))
        if not done:
            break
        batches += done
    assert refused == {objects[0]} and core.keyring.mismatches == 1
    assert sum(b.count for b in batches) == 4 + 2 and sum(b.refused for b in batches) == 1
    counts = core.store.run_sync(lambda s: wrapped_counts(s, "demo"))
    assert counts[old_l2] == 1 and counts[new_l2] == 4 + 2  # (and the two L3s)
    for uid in objects[1:]:
        ok(core, Operation.GET, GetRequest(unique_identifier=uid))
    assert "1 refused" in str(next(b for b in batches if b.refused))
    # An audit record for each batch that moved something, none for one that did not.
    counts = core.store.run_sync(lambda s: [json.loads(r.detail)["count"] for r in s.scalars(
        select(AuditLog).where(AuditLog.operation == "RewrapObjects"))])
    assert sum(counts) == 4 + 2 and 0 not in counts
