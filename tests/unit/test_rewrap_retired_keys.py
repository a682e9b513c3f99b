"""A re-wrap step asks the database once which retired tenant keys (L2) still wrap
something, whatever their number: a retired L2 keeps its material until it is destroyed, and
a step that read every one and asked about each in turn held the writer 200 ms at every
sweep (every 5 s) with 1,000 tenants rotated once, and 144 ms a step while they were
re-wrapped (one step each: quadratic)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event, update

from kcm.core.store import repository
from kcm.core.store.schema import LEVEL_TENANT_KEY, STATE_COMPROMISED, ManagedObject
from kcm.core.tenant_rotation import rewrap_step, rotate_tenant_key
from tests.core_support import CoreHarness

#: Rotations of the tenant's key: each leaves one more retired L2.
ROTATIONS = 30


@contextmanager
def _statements(core: CoreHarness) -> Iterator[list[str]]:
    """The SQL statements the store runs while entered."""
    seen: list[str] = []

    def before(_conn, _cursor, statement, *_args) -> None:
        seen.append(statement)

    event.listen(core.store.engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(core.store.engine, "before_cursor_execute", before)


def _rotated(core: CoreHarness) -> None:
    now = int(time.time())
    for _ in range(ROTATIONS):
        core.store.run_sync(lambda session: rotate_tenant_key(
            session, core.keyring, "demo", now=now, by="test", reason="test"))


def _step(core: CoreHarness) -> list:
    return core.store.run_sync(lambda session: rewrap_step(session, core.keyring, time.time()))


def test_an_idle_step_is_one_statement_however_many_keys_are_retired(
        core: CoreHarness) -> None:
    _rotated(core)
    while _step(core):
        pass
    with _statements(core) as seen:
        assert _step(core) == []
    steps = [s for s in seen if not s.lstrip().upper().startswith(("BEGIN", "SAVEPOINT",
                                                                      "RELEASE", "COMMIT"))]
    assert len(steps) == 1, steps


def test_a_step_with_work_reads_no_retired_key_that_wraps_nothing(core: CoreHarness) -> None:
    _rotated(core)
    while _step(core):
        pass
    core.store.run_sync(lambda session: rotate_tenant_key(
        session, core.keyring, "demo", now=int(time.time()), by="test", reason="test"))
    with _statements(core) as seen:
        [done] = _step(core)
    assert done.count >= 1
    # One look-up of the retired keys with work, the batch, the tenant's current key, the
    # re-wrap's own writes: not one statement per retired key.
    assert len(seen) < ROTATIONS, len(seen)


def test_every_object_ends_under_the_current_key(core: CoreHarness) -> None:
    _rotated(core)
    while _step(core):
        pass
    current = core.store.run_sync(lambda session: repository.find_l2(session, "demo").uid)
    wrapped = core.store.run_sync(lambda session: [
        row.wrapped_by for row in repository.find_l3(session, "demo", "app")])
    assert wrapped and set(wrapped) == {current}


def test_what_a_compromised_tenant_key_wraps_is_moved_too(core: CoreHarness) -> None:
    """A retired L2 revoked as compromised (state Compromised, material kept until it is
    destroyed) is the one whose objects most need moving: the step finds it as it finds a
    deactivated one."""
    old = core.store.run_sync(lambda session: repository.find_l2(session, "demo").uid)
    core.store.run_sync(lambda session: rotate_tenant_key(
        session, core.keyring, "demo", now=int(time.time()), by="test", reason="test"))
    core.store.run_sync(lambda session: session.execute(update(ManagedObject).where(
        ManagedObject.uid == old, ManagedObject.level == LEVEL_TENANT_KEY)
        .values(state=STATE_COMPROMISED)))
    done = []
    while step := _step(core):
        done += step
    assert [d.old for d in done] == [old]
    current = core.store.run_sync(lambda session: repository.find_l2(session, "demo").uid)
    wrapped = core.store.run_sync(lambda session: [
        row.wrapped_by for row in repository.find_l3(session, "demo", "app")])
    assert wrapped and set(wrapped) == {current}
