"""The event fan-out's reads of the outbox (:meth:`Store.read_plain`) run on the store's
reader thread, so a queue on its workers (a storm of service key fetches) does not delay
an event; and a fetch answer (:meth:`Store.run_answer`) is handed to the reactor before a
read that sees a change committed after the fetch returns (the gateway would otherwise
apply the revocation, then cache the key as the fetch found it)."""

from __future__ import annotations

import threading
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import DeferredList

from kcm.core.event_fanout import EventFanout
from kcm.core.keys import derive_audit_key
from kcm.core.store import repository
from kcm.core.store.engine import Store
from kcm.core.store.migrate import upgrade
from kcm.link.events import EventKind


def _store(tmp_path, **kwargs) -> Store:
    url = f"sqlite:///{tmp_path / 'kcm.db'}"
    upgrade(url)
    store = Store(url, threads=2, **kwargs)
    store.audit_key = derive_audit_key(bytes(32))
    return store


@pytest_twisted.inlineCallbacks
def test_the_outbox_is_read_while_every_worker_is_busy(tmp_path) -> None:
    store = _store(tmp_path)
    store.startService()
    release = threading.Event()
    busy = [store.defer(release.wait, 5) for _ in range(6)]  # both workers, and a queue
    try:
        reactor.callLater(2.0, release.set)
        began = time.monotonic()
        records = yield EventFanout(store, reactor, head=0).read(0)
        assert records == []
        assert time.monotonic() - began < 1.0 and not release.is_set()
    finally:
        release.set()
        yield DeferredList(busy)
        store.stopService()


class StallingReactor:
    """Records what threads hand to the reactor, in order; while ``stall`` is set, a hand-off
    waits for ``go`` (a worker that committed and has not handed its answer over yet)."""

    def __init__(self) -> None:
        self.handed: list[object] = []
        self.stall, self.stalled, self.go = threading.Event(), threading.Event(), threading.Event()

    def callFromThread(self, fn, *args) -> None:  # noqa: N802 - Twisted's name
        if self.stall.is_set():
            self.stalled.set()
            self.go.wait(5)
        self.handed.append(args[0] if args else fn)


def test_a_read_that_sees_a_later_commit_returns_after_the_fetch_answer(tmp_path) -> None:
    stalling = StallingReactor()
    store = _store(tmp_path, reactor=stalling)
    store.startService()
    try:
        stalling.stall.set()
        store.run_answer(lambda session: "the key, as the fetch found it")
        assert stalling.stalled.wait(5)  # committed; its answer not handed over yet
        stalling.stall.clear()
        # A revocation commits after the fetch (the writers' lock kept it waiting for the
        # fetch's commit), and the fan-out reads its event.
        store.run_sync(lambda session: repository.append_outbox(
            session, EventKind.POLICY, None, b""))
        read: list[object] = []
        reader = threading.Thread(target=lambda: read.append(store.read_plain_sync(
            lambda connection: repository.outbox_since_plain(connection, 0))))
        reader.start()
        reader.join(0.3)
        assert reader.is_alive(), "the event was read out before the fetch answer"
        stalling.go.set()
        reader.join(5)
        assert stalling.handed == ["the key, as the fetch found it"]
        assert [record.seq for record in read[0]] == [1]
    finally:
        stalling.go.set()
        store.stopService()


@pytest_twisted.inlineCallbacks
def test_run_answer_fires_with_the_answer_or_the_failure(tmp_path) -> None:
    store = _store(tmp_path)
    store.startService()
    try:
        seq = yield store.run_answer(lambda session: repository.append_outbox(
            session, EventKind.POLICY, None, b""))
        assert seq == 1
        with pytest.raises(ZeroDivisionError):
            yield store.run_answer(lambda session: repository.append_outbox(
                session, EventKind.POLICY, None, b"") / 0)  # rolled back
        rows = yield store.read_plain(lambda c: repository.outbox_since_plain(c, 0))
        assert [row.seq for row in rows] == [1]
    finally:
        store.stopService()
