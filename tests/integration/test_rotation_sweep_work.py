"""A sweep's rotation steps cost what is due, not the number of tenants and services
(:mod:`kcm.core.rotation_schedule`): once any rotation policy existed, every sweep read the
current key of every service and every tenant and judged each (with 10,000 tenants 290 ms
of the writer every 5 s, nothing due). Here the statements of the service and tenant key
steps are counted, and the rows they read (each SELECT run again on the unchanged
database), with many tenants and nothing due, then with a few due; and the keys rotated
at each sweep are checked against a judgement of every key, as each sweep made before.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import pytest
from sqlalchemy import event, select

from kcm.core.auto_rotation import due_trigger, rotate_due
from kcm.core.hierarchy import provision_service, provision_tenant
from kcm.core.rotation_policy import (
    PolicySettings,
    clear_policy,
    effective_policy,
    made_or_activated,
    set_policy,
)
from kcm.core.state_sweeper import sweep_due_states
from kcm.core.store import repository
from kcm.core.store.schema import (
    LEVEL_SERVICE_KEY,
    LEVEL_TENANT_KEY,
    STATE_ACTIVE,
    ManagedObject,
)
from kcm.core.tenant_rotation import rotate_tenant_key, rotate_tenant_keys_due
from kcm.core.usage import add_uses, uses_of
from tests.core_support import CoreHarness

DAY = 86_400
TENANTS = 300


def _provision(core: CoreHarness, tenants: int, now: int) -> None:
    def fill(session) -> None:
        for n in range(tenants):
            provision_tenant(session, core.keyring, f"t{n:04d}", now=now)
            provision_service(session, core.keyring, f"t{n:04d}", "app", now=now)

    core.store.run_sync(fill)


def _sweep(core: CoreHarness, now: float) -> tuple[list, list]:
    return core.store.run_sync(lambda s: (rotate_due(s, core.keyring, now),
                                          rotate_tenant_keys_due(s, core.keyring, now)))


@contextmanager
def _statements(core: CoreHarness) -> Iterator[list[tuple[str, object]]]:
    seen: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, parameters))

    event.listen(core.store.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(core.store.engine, "before_cursor_execute", record)


def _rows_read(core: CoreHarness, seen: list[tuple[str, object]]) -> int:
    """The rows the SELECTs among ``seen`` return, run again (the database unchanged)."""
    connection = core.store.engine.raw_connection()
    try:
        cursor = connection.cursor()
        return sum(len(cursor.execute(statement, parameters).fetchall())
                   for statement, parameters in seen if re.match(r"\s*SELECT\b", statement))
    finally:
        connection.rollback()
        connection.close()


def test_a_sweep_with_nothing_due_reads_no_key_whatever_the_tenants(core: CoreHarness) -> None:
    now = int(time.time())
    _provision(core, TENANTS, now)
    core.store.run_sync(lambda s: set_policy(s, "", "", PolicySettings(
        interval=90 * DAY, max_uses=2**31, tenant_key_interval=365 * DAY), now=now))
    # The first sweep after the policy judges every key, once, and schedules each.
    assert _sweep(core, now + 5) == ([], [])
    with _statements(core) as seen:
        assert _sweep(core, now + 10) == ([], [])
    # The policies, and the keys due in each step: none; not a row of TENANTS keys each.
    assert _rows_read(core, seen) == 2  # (the one policy, read by each step)
    assert len(seen) <= 4

    # A few due (two usage caps reached, one tenant key older than its interval): those
    # and what they need are read, nothing of the other tenants.
    capped = core.store.run_sync(lambda s: [repository.find_l3(s, f"t{n:04d}", "app")[0].uid
                                            for n in (7, 123)])
    core.store.run_sync(lambda s: add_uses(s, dict.fromkeys(capped, 2**31), now=now))
    core.store.run_sync(lambda s: set_policy(s, "t0042", "", PolicySettings(
        tenant_key_interval=3600), now=now))
    with _statements(core) as seen:
        services, tenants = _sweep(core, now + 3600)
    assert sorted(r.previous_uid for r in services) == sorted(capped)
    assert [line.split(":")[0] for line in tenants] == ["tenant t0042"]
    selects = [(s, p) for s, p in seen if re.match(r"\s*SELECT\b", s)]
    assert len(seen) < 120 and len(selects) < 60, len(seen)
    # (run again now, the keys rotated are read as they are now: still a few)
    assert _rows_read(core, seen) < 40
    # ... and then nothing is due again: the new keys were judged once and scheduled.
    assert _sweep(core, now + 3605) == ([], [])
    with _statements(core) as seen:
        assert _sweep(core, now + 3610) == ([], [])
    assert len(seen) <= 4 and _rows_read(core, seen) == 4  # (the two policies, twice)


def test_without_policies_a_sweep_reads_no_key(core: CoreHarness) -> None:
    """No policy: every service key still has the built-in usage cap, so the keys marked
    when they were made are judged once, and each is then left until its count reaches the
    cap (no interval: no time); the sweeps after read no key."""
    now = int(time.time())
    _provision(core, 50, now)
    assert _sweep(core, now + 5) == ([], [])
    # The keys marked when they were made are set aside, not kept due for every sweep.
    assert core.store.run_sync(lambda s: s.scalar(select(ManagedObject.uid).where(
        ManagedObject.level.is_not(None), ManagedObject.rotate_due.is_not(None)))) is None
    with _statements(core) as seen:
        assert _sweep(core, now + 10) == ([], [])
    assert len(seen) <= 4 and _rows_read(core, seen) == 0
    # ... and a policy set later judges them all at the next sweep.
    core.store.run_sync(lambda s: set_policy(s, "", "", PolicySettings(interval=60),
                                             now=now))
    assert len(_sweep(core, now + 60)[0]) == 50 + 3


def test_a_current_version_retired_makes_the_one_before_it_judged_at_once(
        core: CoreHarness) -> None:
    """The schedule of a service is its current version's: another version it carries
    none. When the current one is retired (its Deactivation Date passed), the one before
    it is current again and judged at the next sweep, not when the retired one would
    have been due."""
    from kcm.core import managed
    from kcm.core.attribute_blob import decode_attributes
    from kcm.kmip.tags import Tag
    from kcm.ttlv import ItemType

    [v1] = core.store.run_sync(lambda s: repository.find_l3(s, "demo", "app"))
    t0 = v1.activation_date
    core.store.run_sync(lambda s: set_policy(s, "demo", "app", PolicySettings(interval=100),
                                             now=t0))

    def rotated(at: int) -> list[str]:
        def sweep(session):
            sweep_due_states(session, at)
            return [r.previous_uid for r in rotate_due(session, core.keyring, at)
                    if (r.tenant, r.service) == ("demo", "app")]
        return core.store.run_sync(sweep)

    assert rotated(t0 + 1) == []
    v2 = core.store.run_sync(lambda s: provision_service(s, core.keyring, "demo", "app",
                                                         now=t0 + 50))
    assert rotated(t0 + 51) == []
    assert rotated(t0 + 100) == []  # (v1 is due by its age, but not current)

    def retire(session) -> None:
        row = repository.get_l3(session, v2)
        obj = managed.StoredObject(row, decode_attributes(row.attributes))
        obj.set(Tag.DEACTIVATION_DATE, t0 + 105, ItemType.DATE_TIME)
        managed.save(_Context(session, t0 + 101), obj)  # type: ignore[arg-type]

    core.store.run_sync(retire)
    assert rotated(t0 + 104) == []
    assert rotated(t0 + 106) == [v1.uid]


def _judged_due(session, now: float) -> set[tuple[str, str]]:
    """The services a judgement of every current service key finds due at ``now`` (what
    each sweep did before the schedule)."""
    rows = session.scalars(select(ManagedObject).where(
        ManagedObject.level == LEVEL_SERVICE_KEY, ManagedObject.state == STATE_ACTIVE)
        .order_by(ManagedObject.tenant, ManagedObject.service,
                  ManagedObject.key_version.desc())).all()
    current: dict[tuple[str, str], ManagedObject] = {}
    for row in rows:
        current.setdefault((row.tenant, row.service or ""), row)
    uses = uses_of(session, [row.uid for row in current.values()])
    return {scope for scope, row in current.items()
            if due_trigger(effective_policy(session, *scope), now - made_or_activated(row, now),
                           uses.get(row.uid, 0)) is not None}


def _judged_tenants_due(session, now: float) -> set[str]:
    """The tenants one of whose Active tenant keys a judgement of every one finds older
    than its tenant's ``tenant_key_interval`` at ``now``."""
    seconds = int(now)
    return {row.tenant for row in session.scalars(select(ManagedObject).where(
        ManagedObject.level == LEVEL_TENANT_KEY, ManagedObject.state == STATE_ACTIVE))
        if (interval := effective_policy(session, row.tenant, "").tenant_key_interval)
        and seconds - made_or_activated(row, seconds) >= interval}


@pytest.mark.parametrize("seed", range(4))
def test_the_keys_rotated_at_each_sweep_are_those_a_judgement_of_every_key_finds_due(
        core: CoreHarness, seed: int, monkeypatch) -> None:
    """Random policies set and cleared (all of them at times: no policy row at all), usage
    reported, versions made, revoked and retired by their dates, tenant keys rotated by
    hand, between sweeps at random times: at every sweep the services rotated are exactly
    those a judgement of every key finds due. The built-in usage cap (made 40 here) is
    part of the judgement: caps of 20 and 500, 0, or none set."""
    from kcm.core import managed, rotation_policy
    from kcm.core.attribute_blob import decode_attributes
    from kcm.kmip.tags import Tag
    from kcm.ttlv import ItemType

    monkeypatch.setattr(rotation_policy, "BUILTIN_MAX_USES", 40)
    pick = random.Random(seed)
    now = int(time.time())
    _provision(core, 6, now)
    scopes = [("", ""), ("t0001", ""), ("t0002", "app"), ("t0003", ""), ("t0004", "app")]
    services = [(f"t{n:04d}", "app") for n in range(6)] + [("demo", "app"),
                                                            ("demo", "billing")]

    def retire(session, tenant: str, service: str, when: int, at: int) -> None:
        rows = repository.find_l3(session, tenant, service, active_only=True)
        if len(rows) > 1 or (rows and pick.random() < 0.3):
            row = pick.choice([rows[0], rows[-1]])  # (the current one, or the oldest)
            obj = managed.StoredObject(row, decode_attributes(row.attributes))
            obj.set(Tag.DEACTIVATION_DATE, when, ItemType.DATE_TIME)
            managed.save(_Context(session, at), obj)  # type: ignore[arg-type]

    def happen(session, at: int) -> None:
        """One of the things that change what is due, at random, at ``at``."""
        tenant, service = pick.choice(services)
        kind = pick.randrange(5)
        if kind == 0:
            scope = pick.choice(scopes)
            if pick.random() < 0.2:
                for each in scopes:
                    clear_policy(session, *each)
                return
            if pick.random() < 0.25:
                clear_policy(session, *scope)
                return
            set_policy(session, *scope, PolicySettings(
                interval=pick.choice([None, 0, 20, 45, 300]),
                max_uses=pick.choice([None, 0, 20, 500]),
                overlap=pick.choice([None, 0, 10]),
                tenant_key_interval=None if scope[1] else pick.choice([None, 0, 30, 90])),
                now=at)
        elif kind == 1:
            versions = [row.uid for row in repository.find_l3(session, tenant, service)]
            add_uses(session, {uid: pick.randrange(1, 60) for uid in versions[:2]}, now=at)
        elif kind == 2:
            provision_service(session, core.keyring, tenant, service,
                              now=at - pick.randrange(100))
        elif kind == 3:
            retire(session, tenant, service, at + pick.randrange(-5, 30), at)
        else:
            rotate_tenant_key(session, core.keyring, tenant, now=at, by="test",
                              reason="the test")

    counted = [0, 0]
    built_in = {"with policies": 0, "without": 0}
    for sweep in range(100):
        for _ in range(pick.randrange(3)):
            core.store.run_sync(partial(happen, at=int(now)))
        now += pick.choice([1, 5, 5, 5, 17, 60])

        def one_sweep(session, at=now):
            sweep_due_states(session, int(at))  # (as a sweep: the dates first)
            expected = _judged_due(session, at)
            stored = rotation_policy.policies(session)
            rotations = rotate_due(session, core.keyring, at)
            built_in["with policies" if stored else "without"] += sum(
                r.policy == "built-in" for r in rotations)
            done = {(r.tenant, r.service) for r in rotations}
            expected_tenants = _judged_tenants_due(session, at)
            tenants = {line.split(":")[0].removeprefix("tenant ")
                       for line in rotate_tenant_keys_due(session, core.keyring, at)}
            return (expected, expected_tenants), (done, tenants)

        expected, rotated = core.store.run_sync(one_sweep)
        assert rotated == expected, (sweep, now)
        counted[0] += len(rotated[0])
        counted[1] += len(rotated[1])
    assert counted[0] >= 5 and counted[1] >= 3, counted  # (the sweeps had work to do)
    # (... and the built-in cap rotated some, with policies stored and without any)
    assert min(built_in.values()) >= 1, built_in


class _Context:
    def __init__(self, session, now: int) -> None:
        self.session, self.now = session, now
