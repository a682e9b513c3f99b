"""The audit checkpoint service: a checkpoint of the chain's head in the log at start and
every interval (driven by task.Clock), an error instead when the head is not genuine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from kcm.core.audit import HEAD_META_KEY, AuditEvent, Checkpoint, append_audit, verify_chain
from kcm.core.audit_checkpoints import DEFAULT_INTERVAL, AuditCheckpoints
from kcm.core.keyring import Keyring
from kcm.core.store.engine import Store
from kcm.core.store.migrate import upgrade
from kcm.core.store.repository import get_meta, set_meta

L1 = bytes(range(32))


class InlineStore:
    """A real SQLite store whose ``run`` completes before returning, so the test's clock
    alone decides when anything happens."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.broken = False

    def run(self, fn: Callable[[Any], Any], *, write: bool = True) -> Deferred[Any]:
        if self.broken:
            return fail(RuntimeError("database is locked"))
        try:
            return succeed(self.store.run_sync(fn, write=write))
        except Exception:
            return fail()


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    upgrade(url)
    ksi = Store(url)
    ksi.audit_key = Keyring(L1).audit_key
    yield ksi
    ksi.stopService()


def _append(store: Store, count: int) -> None:
    store.run_sync(lambda s: [append_audit(s, AuditEvent("p", "Create", "Success", f"c{n}"))
                              for n in range(count)])


def _checkpoints(events: list[dict]) -> list[Checkpoint]:
    return [Checkpoint.parse(event["checkpoint"]) for event in events
            if event.get("log_namespace") == "kcm.audit.checkpoint" and "checkpoint" in event]


def _errors(events: list[dict]) -> list[dict]:
    return [event for event in events if event.get("log_namespace") == "kcm.audit.checkpoint"
            and event["log_level"] >= LogLevel.error]


def test_one_at_start_then_one_every_interval(store: Store) -> None:
    clock = Clock()
    service = AuditCheckpoints(InlineStore(store), Keyring(L1), clock)  # type: ignore[arg-type]
    assert (service.name, service.step, DEFAULT_INTERVAL) == ("kcm-audit-checkpoints", 300, 300)
    with capturedLogs() as events:
        service.startService()
        [at_start] = _checkpoints(events)
        assert at_start.seq == 0 and at_start.genuine(store.audit_key)

        _append(store, 2)
        clock.advance(299)
        assert len(_checkpoints(events)) == 1
        clock.advance(1)
        second = _checkpoints(events)[-1]
        assert second.seq == 2 and second.genuine(store.audit_key)
        assert store.run_sync(lambda s: verify_chain(s, checkpoints=[at_start, second])).ok

        clock.advance(300)  # an idle chain is checkpointed again: the core is alive
        assert [c.seq for c in _checkpoints(events)] == [0, 2, 2]

        service.stopService()
        clock.advance(3000)
    assert len(_checkpoints(events)) == 3 and _errors(events) == []


def test_a_head_that_is_not_genuine_is_an_error_not_a_checkpoint(store: Store) -> None:
    _append(store, 1)
    clock = Clock()
    service = AuditCheckpoints(InlineStore(store), Keyring(L1), clock,  # type: ignore[arg-type]
                               interval=10)
    genuine = store.run_sync(lambda s: get_meta(s, HEAD_META_KEY))
    store.run_sync(lambda s: set_meta(s, HEAD_META_KEY, "1:" + "00" * 32 + ":" + "00" * 32))
    with capturedLogs() as events:
        service.startService()
        assert _checkpoints(events) == []
        [error] = _errors(events)
        assert formatEvent(error).startswith(
            "no audit checkpoint: the audit head (record 1) fails its MAC")
        # The loop goes on: with the head put right, the next tick checkpoints it. (No
        # record is appended over a head that is not genuine: append_audit refuses.)
        store.run_sync(lambda s: set_meta(s, HEAD_META_KEY, genuine))
        _append(store, 1)
        clock.advance(10)
        assert [c.seq for c in _checkpoints(events)] == [2]
        service.stopService()


def test_a_failing_store_is_logged_and_the_loop_goes_on(store: Store) -> None:
    clock = Clock()
    inline = InlineStore(store)
    inline.broken = True
    service = AuditCheckpoints(inline, Keyring(L1), clock, interval=5)  # type: ignore[arg-type]
    with capturedLogs() as events:
        service.startService()
        [error] = _errors(events)
        assert error["log_failure"].check(RuntimeError)
        inline.broken = False
        clock.advance(5)
        assert [c.seq for c in _checkpoints(events)] == [0]
        service.stopService()


@pytest.mark.parametrize("interval", [0, -1.0])
def test_the_interval_must_be_positive(store: Store, interval: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        AuditCheckpoints(store, Keyring(L1), Clock(), interval=interval)
