"""Date-driven state changes of service keys reach the outbox without anyone loading them."""

from __future__ import annotations

from sqlalchemy import select

from kcm.core.attribute_blob import decode_attributes, encode_attributes
from kcm.core.state_sweeper import sweep_due_states
from kcm.core.store import repository
from kcm.core.store.schema import LEVEL_SERVICE_KEY, ManagedObject
from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import State
from kcm.kmip.tags import Tag
from tests.core_support import CoreHarness


def _schedule_deactivation(core: CoreHarness, when: int) -> str:
    def schedule(session) -> str:
        row = session.scalars(select(ManagedObject).where(
            ManagedObject.level == LEVEL_SERVICE_KEY)).first()
        attributes = [a for a in decode_attributes(row.attributes)
                      if a.tag != Tag.DEACTIVATION_DATE]
        attributes.append(Attribute.of(Tag.DEACTIVATION_DATE, when))
        repository.update_object(session, row, attributes=encode_attributes(attributes),
                                 deactivation_date=when)
        return row.uid

    return core.store.run_sync(schedule)


def test_a_passed_deactivation_date_moves_the_l3_and_emits_an_event(core: CoreHarness) -> None:
    uid = _schedule_deactivation(core, when=2_000_000_000)
    head = core.store.run_sync(repository.outbox_head)
    assert core.store.run_sync(lambda s: sweep_due_states(s, 1_999_999_999)) == []
    assert core.store.run_sync(lambda s: sweep_due_states(s, 2_000_000_000)) == [uid]
    row = core.store.run_sync(lambda s: repository.get_object(s, "demo", uid))
    assert row.state == State.DEACTIVATED
    events = core.store.run_sync(lambda s: repository.outbox_since(s, head))
    assert [e.kind for e in events] == ["l3.state"]
    # Nothing more to do the next time.
    assert core.store.run_sync(lambda s: sweep_due_states(s, 2_000_000_100)) == []


def test_a_step_that_fails_is_rolled_back_alone_and_reported(core: CoreHarness) -> None:
    """A failing rotation step (one tenant that cannot be rotated) never stops the dates."""
    from twisted.internet.defer import succeed
    from twisted.internet.task import Clock

    from kcm.core.state_sweeper import StateSweeper
    from kcm.core.sweep_steps import StepFailed

    uid = _schedule_deactivation(core, when=1)
    seen: list = []

    def broken(session, now):
        repository.set_meta(session, "half-done", "yes")  # rolled back with the step
        raise RuntimeError("cannot rotate")

    def fine(session, now):
        return ["a rotation"]

    class SyncStore:
        engine = core.store.engine  # SQLite: the sweeper's lease is always held

        def defer(self, fn, *args):
            return succeed(fn(*args))

        def run(self, fn):
            result = core.store.run_sync(fn)
            seen.append(result)
            return succeed(result)

    clock = Clock()
    clock.advance(10)  # past the Deactivation Date
    StateSweeper(SyncStore(), clock, steps=[broken, fine]).sweep()
    [(done, moved)] = seen
    assert isinstance(done[0], StepFailed) and done[0].step == "broken"
    assert done[1:] == ["a rotation"] and moved == [uid]
    assert core.store.run_sync(lambda s: repository.get_meta(s, "half-done")) is None


def test_a_step_with_more_to_do_brings_the_next_sweep_at_once(core: CoreHarness) -> None:
    from twisted.internet.defer import succeed
    from twisted.internet.task import Clock

    from kcm.core.state_sweeper import StateSweeper

    class Batch:
        more = True

    runs: list[int] = []

    class SyncStore:
        engine = core.store.engine  # SQLite: the sweeper's lease is always held

        def defer(self, fn, *args):
            return succeed(fn(*args))

        def run(self, fn):
            runs.append(1)
            return succeed(core.store.run_sync(fn))

    clock = Clock()
    sweeper = StateSweeper(SyncStore(), clock, interval=60,
                           steps=[lambda s, now: [Batch()] if len(runs) < 3 else []])
    sweeper.startService()  # sweeps once at start
    for _ in range(5):
        clock.advance(0)
    assert len(runs) == 3  # then at once while a batch leaves more, then at the next tick
    sweeper.stopService()


def _schedule_every_l3(core: CoreHarness, when: int) -> list[str]:
    def schedule(session) -> list[str]:
        rows = session.scalars(select(ManagedObject).where(
            ManagedObject.level == LEVEL_SERVICE_KEY).order_by(ManagedObject.uid)).all()
        for row in rows:
            attributes = [a for a in decode_attributes(row.attributes)
                          if a.tag != Tag.DEACTIVATION_DATE]
            attributes.append(Attribute.of(Tag.DEACTIVATION_DATE, when))
            repository.update_object(session, row, attributes=encode_attributes(attributes),
                                     deactivation_date=when)
        return [row.uid for row in rows]

    return core.store.run_sync(schedule)


def test_each_date_driven_move_is_audited_in_bounded_sweeps(core: CoreHarness) -> None:
    import json

    from kcm.core.audit import verify_chain
    from kcm.core.state_sweeper import AUDIT_OPERATION, SWEEPER
    from kcm.core.store.schema import AuditLog

    uids = _schedule_every_l3(core, when=2_000_000_000)
    assert len(uids) == 3
    before = core.store.run_sync(lambda s: s.scalar(
        select(AuditLog.seq).order_by(AuditLog.seq.desc()).limit(1))) or 0
    sweep = lambda s: sweep_due_states(s, 2_000_000_000, limit=2)  # noqa: E731
    assert core.store.run_sync(sweep) == uids[:2]
    assert core.store.run_sync(sweep) == uids[2:]
    assert core.store.run_sync(sweep) == []
    records = core.store.run_sync(lambda s: s.scalars(
        select(AuditLog).where(AuditLog.seq > before).order_by(AuditLog.seq)).all())
    assert [(r.operation, r.principal, r.source, json.loads(r.object_ids)) for r in records] \
        == [(AUDIT_OPERATION, SWEEPER, "state-sweeper", [uid]) for uid in uids]
    assert all(r.at == 2_000_000_000 * 1_000_000 for r in records)
    keys = core.store.run_sync(lambda s: {uid: (row.tenant, row.service) for uid in uids
                                          for row in [s.get(ManagedObject, uid)]})
    assert [(r.tenant, json.loads(r.detail)) for r in records] == [
        (keys[uid][0], {"from": "ACTIVE", "to": "DEACTIVATED", "level": "L3",
                        "service": keys[uid][1]}) for uid in uids]
    assert core.store.run_sync(verify_chain).ok


def test_a_full_batch_of_moves_brings_the_next_sweep_at_once(core: CoreHarness) -> None:
    from twisted.internet.defer import succeed
    from twisted.internet.task import Clock

    from kcm.core.state_sweeper import StateSweeper

    _schedule_every_l3(core, when=5)
    moved: list[list[str]] = []

    class SyncStore:
        engine = core.store.engine  # SQLite: the sweeper's lease is always held

        def defer(self, fn, *args):
            return succeed(fn(*args))

        def run(self, fn):
            result = core.store.run_sync(fn)
            moved.append(result[1])
            return succeed(result)

    clock = Clock()
    clock.advance(10)
    sweeper = StateSweeper(SyncStore(), clock, interval=60, batch=1)
    sweeper.startService()
    for _ in range(5):
        clock.advance(0)
    assert [len(uids) for uids in moved] == [1, 1, 1, 0]
    sweeper.stopService()
