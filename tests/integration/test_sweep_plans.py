"""The state sweeper reads what is due, not every object: no statement of a sweep reads a
growing table whole.

kcm-core sweeps every 5 s in one write transaction; with 200,000 objects, sweeps that read
``managed_objects`` whole (the hierarchy keys' dates, the current service and tenant keys,
the retired tenant keys, a re-wrap batch) took a quarter of a second on SQLite, and every
write waited for them (benchmarks/sweep_bench.py, docs/benchmarks.md). Here each statement
one sweep issues, its steps as kcm-core's ``makeService`` lists them, with work to do and
without, is planned by SQLite (``EXPLAIN QUERY PLAN``, with the statement's parameters):
none may ``SCAN`` a growing table or the whole of one of its indexes. The plan does not
depend on how many rows there are (nothing has run ANALYZE), so a few objects suffice.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event

from kcm.core import tap
from kcm.core.auto_rotation import rotate_due
from kcm.core.destroyed_retention import drop_tombstones, purge_destroyed
from kcm.core.managed_rotation import rotate_managed_due
from kcm.core.outbox_retention import prune_outbox
from kcm.core.rotation_policy import PolicySettings, set_policy
from kcm.core.row_mac_upgrade import RowMacUpgrade, seal_step
from kcm.core.state_sweeper import sweep_due_states
from kcm.core.store import repository
from kcm.core.stream_parts import purge_spent
from kcm.core.sweep_steps import run_steps
from kcm.core.tenant_rotation import rewrap_step, rotate_tenant_key, rotate_tenant_keys_due
from kcm.core.wrap_upgrade import WrapUpgrade, upgrade_step
from tests.core_support import CoreHarness
from tests.integration.test_core_objects import register
from tests.integration.test_state_sweeper import _schedule_deactivation

#: Tables that grow with use, not with the number of tenants and services.
GROWING = ("managed_objects", "object_names", "object_groups", "l4_tombstones", "audit_log",
           "outbox", "spent_stream_parts")
DAY = 86_400


def _steps(core: CoreHarness) -> list:
    def bound(fn, **kwargs):
        def step(session, now):
            return fn(session, now=now, **kwargs)
        step.__name__ = fn.__name__
        return step

    return [bound(rotate_due, keyring=core.keyring),
            bound(rotate_managed_due, keyring=core.keyring, trust_domain="kcm.test"),
            bound(rotate_tenant_keys_due, keyring=core.keyring),
            bound(rewrap_step, keyring=core.keyring),
            bound(upgrade_step, upgrade=WrapUpgrade(core.keyring)),
            bound(seal_step, upgrade=RowMacUpgrade(core.keyring)),
            bound(purge_spent),
            bound(prune_outbox, retention=3600),
            bound(drop_tombstones),
            bound(purge_destroyed, retention=3600)]


def test_the_steps_here_are_those_kcm_core_sweeps_with() -> None:
    listed = re.findall(r"_sweep_step\((\w+)", inspect.getsource(tap.makeService))
    assert listed == [fn.__name__ for fn in (rotate_due, rotate_managed_due,
                                             rotate_tenant_keys_due, rewrap_step, upgrade_step,
                                             seal_step, purge_spent, prune_outbox,
                                             drop_tombstones, purge_destroyed)]


@contextmanager
def _statements(core: CoreHarness) -> Iterator[list[tuple[str, object]]]:
    seen: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, parameters[0] if executemany else parameters))

    event.listen(core.store.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(core.store.engine, "before_cursor_execute", record)


def _plan(core: CoreHarness, statement: str, parameters: object) -> list[str]:
    connection = core.store.engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
        return [row[-1] for row in cursor.fetchall()]
    finally:
        connection.rollback()
        connection.close()


def _scans(plan: list[str]) -> list[str]:
    return [line for line in plan
            if (match := re.match(r"SCAN (\w+)", line.strip())) and match.group(1) in GROWING]


def test_no_statement_of_a_sweep_reads_a_growing_table_whole(core: CoreHarness) -> None:
    now = int(time.time())
    for _ in range(3):
        register(core)  # ordinary objects, under demo's tenant key
    # Policies, so that the rotation steps look at the current service and tenant keys.
    core.store.run_sync(lambda s: set_policy(s, "", "", PolicySettings(
        interval=90 * DAY, max_uses=2 ** 31, overlap=3600, tenant_key_interval=365 * DAY),
        now=now))
    # Work for the first sweep: a re-wrap (demo's tenant key retired, its objects and
    # service keys still under it) and a service key whose Deactivation Date passed.
    core.store.run_sync(lambda s: rotate_tenant_key(s, core.keyring, "demo", now=now - 60,
                                                    by="test", reason="the test"))
    moved_by_date = _schedule_deactivation(core, now - 1)
    steps = _steps(core)

    def sweep(session):
        at = time.time()
        return run_steps(session, steps, at), sweep_due_states(session, int(at))

    with _statements(core) as seen:
        busy_steps, busy_moved = core.store.run_sync(sweep)
        idle_steps, idle_moved = core.store.run_sync(sweep)
    assert [type(done).__name__ for done in busy_steps] == ["Rewrapped"]
    assert busy_moved == [moved_by_date]
    assert (idle_steps, idle_moved) == ([], [])

    planned = [(statement, parameters) for statement, parameters in seen
               if re.match(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", statement, re.I)]
    assert len(planned) > 20
    scanning = {statement: scans for statement, parameters in planned
                if (scans := _scans(_plan(core, statement, parameters)))}
    assert scanning == {}
    # A re-wrap batch reads its objects in an index's order: it does not sort all those the
    # retired tenant key still wraps to take the first of them.
    [batch] = {statement: parameters for statement, parameters in planned
               if "wrapped_by = ?" in statement and "LIMIT" in statement}.items()
    assert not [line for line in _plan(core, *batch) if "TEMP B-TREE" in line]
    # The managed keys due are read in the order of the index on rotate_due, a window of
    # them, not every one sorted (a window function over them all)
    due = {statement: parameters for statement, parameters in planned
           if "rotate_due <= ?" in statement and "LIMIT" in statement}
    assert due and not [line for statement, parameters in due.items()
                        for line in _plan(core, statement, parameters) if "TEMP B-TREE" in line]
    # ... and by the index on wrapped_by: not by the tenant's, which each batch walked
    # past every object the batches before it had moved (136 ms a batch at 256,000 moved)
    assert [line for line in _plan(core, *batch)
            if "USING INDEX ix_managed_objects_wrapped_by" in line], _plan(core, *batch)


def test_a_tenants_look_ups_of_its_keys_stay_exact(core: CoreHarness) -> None:
    """The sweeper's partial indexes do not take a request's look-ups of its tenant's keys
    from an index that has the tenant (SQLite, without statistics, prefers a partial index
    that matches as many columns): each still names its tenant, never reading every
    tenant's keys (or, for a tenant key, what it wraps)."""
    from kcm.core.tenant_rotation import check_destroy

    l2 = core.store.run_sync(lambda s: repository.find_l2(s, "demo").uid)
    with _statements(core) as seen:
        core.store.run_sync(lambda s: (
            repository.find_l2(s, "demo"), repository.find_l2(s, "demo", active_only=False),
            repository.find_l3(s, "demo", "app"),
            repository.find_l3(s, "demo", "app", active_only=True),
            check_destroy(s, "other", l2, None, 0)), write=False)
    assert len(seen) == 5
    for statement, parameters in seen:
        searches = [line for line in _plan(core, statement, parameters)
                    if line.startswith("SEARCH managed_objects")]
        assert searches and all("tenant=?" in line or "wrapped_by=?" in line
                                for line in searches), (statement, searches)
    # what a tenant key still wraps is counted by that key, not by walking the tenant's
    # objects (SQLite took the tenant's index while it could)
    assert [line for line in _plan(core, *seen[-1])
            if "USING INDEX ix_managed_objects_wrapped_by" in line]
