"""An Envelope shared by threads: concurrent seals and opens against a fake gateway that
takes a while to answer. Every record opens, every key seals exactly ``max_messages``
records (no count lost or doubled), threads that find the key due wait for one Create, and
threads that need a key not cached wait for one Get."""

from __future__ import annotations

import collections
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from kcm.client.data_key_cache import CacheLimits
from kcm.client.envelope import parse_header
from kcm.client.sealer import Envelope
from kcm.client.single_flight import SingleFlight
from tests.unit.test_client_envelope import Clock, FakeGateway

THREADS = 16


class SlowGateway(FakeGateway):
    """Each Create and Get takes ``delay`` seconds, as a request over the network does."""

    def __init__(self, delay: float = 0.002) -> None:
        super().__init__()
        self.delay = delay

    def create_l4(self) -> str:
        time.sleep(self.delay)
        return super().create_l4()

    def get(self, token: str):
        time.sleep(self.delay)
        return super().get(token)


@pytest.fixture(autouse=True)
def often_switching_threads() -> Iterator[None]:
    """Switch threads every microsecond, so that races show within a short test."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def run_threads(work: Callable[[int], None], count: int = THREADS) -> None:
    """Run ``work(n)`` in ``count`` threads started together; re-raise the first error."""
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(n: int) -> None:
        try:
            start.wait()
            work(n)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if errors:
        raise errors[0]


def test_threads_sealing_and_opening_on_one_envelope_count_every_record_once() -> None:
    gateway = SlowGateway()
    per_key, per_thread = 300, 1500
    envelope = Envelope(gateway, CacheLimits(max_messages=per_key, max_entries=4))
    blobs: list[list[bytes]] = [[] for _ in range(THREADS)]

    def work(n: int) -> None:
        for i in range(per_thread):
            record = b"%d/%d" % (n, i)
            blob = envelope.seal(record, aad=b"t%d" % n)
            blobs[n].append(blob)
            # Open an older record too: its key may have been evicted by another thread.
            old = blobs[n][i // 2]
            assert envelope.open(old, aad=b"t%d" % n) == b"%d/%d" % (n, i // 2)

    run_threads(work)
    sealed = [blob for mine in blobs for blob in mine]
    per_token = collections.Counter(parse_header(blob).token for blob in sealed)
    assert len(sealed) == THREADS * per_thread
    # Rotation is exact: each key sealed max_messages records, so one Create per 300.
    assert sorted(set(per_token.values())) == [per_key]
    assert envelope.stats["create"] == gateway.calls.count("create") == len(per_token)
    assert len(per_token) == THREADS * per_thread // per_key


def test_threads_that_find_the_key_due_cause_one_create() -> None:
    gateway = SlowGateway(delay=0.05)
    clock = Clock()
    envelope = Envelope(gateway, CacheLimits(max_age=60), clock=clock)
    envelope.seal(b"first")
    clock.now += 60  # the key is due by age for every thread at once
    run_threads(lambda n: envelope.seal(b"record"))
    assert gateway.calls == ["create", "get", "create", "get"]
    assert envelope.stats == {"create": 2, "get": 2}
    assert envelope.cache.sealing.messages == THREADS


def test_threads_that_open_a_key_not_cached_cause_one_get() -> None:
    gateway = SlowGateway(delay=0.05)
    blob = Envelope(gateway).seal(b"record")
    opener = Envelope(gateway)
    run_threads(lambda n: opener.open(blob))
    assert gateway.calls == ["create", "get", "get"] and opener.stats["get"] == 1


def test_a_failed_create_fails_the_threads_that_waited_for_it_and_the_next_seal_retries(
) -> None:
    gateway = SlowGateway(delay=0.05)
    real_create = gateway.create_l4

    def unavailable() -> str:
        time.sleep(0.05)
        gateway.calls.append("create")
        raise ConnectionError("the gateway is away")

    gateway.create_l4 = unavailable
    envelope = Envelope(gateway)
    failed: list[BaseException] = []

    def seal(n: int) -> None:
        try:
            envelope.seal(b"record")
        except ConnectionError as e:
            failed.append(e)

    run_threads(seal)
    assert len(failed) == THREADS and gateway.calls == ["create"]
    gateway.create_l4 = real_create
    assert envelope.open(envelope.seal(b"later")) == b"later"


def _fork_and_seal(envelope: Envelope) -> int:
    """Fork; the child seals and opens a record with ``envelope`` and exits 0 if it could,
    killed by an alarm after 5 s if it hung. The child's pid, in the parent."""
    pid = os.fork()
    if pid == 0:
        signal.alarm(5)
        ok = envelope.open(envelope.seal(b"child")) == b"child"
        os._exit(0 if ok else 1)
    return pid


def test_a_forked_child_seals_even_if_a_thread_of_the_parent_held_the_lock() -> None:
    """The child has new locks: the thread that held the parent's is not in the child, and
    the child's seal would wait for it for ever."""
    gateway = FakeGateway()
    envelope = Envelope(gateway)
    envelope.seal(b"warm")
    envelope._lock.acquire()  # as another thread of the parent in the middle of a seal
    try:
        pid = _fork_and_seal(envelope)
    finally:
        envelope._lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# Found by a mutation review: what the tests above left unchecked --------------------------

def test_threads_switched_between_a_key_s_check_and_its_count_keep_to_its_bound() -> None:
    """A clock that gives the CPU away as a key's bounds are checked (just before the
    record is counted): still no key seals more than ``max_messages`` records."""
    def yielding_clock() -> float:
        time.sleep(0.0001)
        return time.monotonic()

    per_key = 50
    envelope = Envelope(FakeGateway(), CacheLimits(max_messages=per_key),
                        clock=yielding_clock)
    sealed: list[bytes] = []
    run_threads(lambda n: sealed.extend(envelope.seal(b"r") for _ in range(100)), 8)
    per_token = collections.Counter(parse_header(blob).token for blob in sealed)
    assert len(sealed) == 800 and set(per_token.values()) == {per_key}


def test_a_thread_that_comes_to_renew_a_key_another_just_renewed_creates_none() -> None:
    """(As a thread that found the key due, and reached the Create once another thread's
    had made the next key: it seals with that one.)"""
    gateway = FakeGateway()
    envelope = Envelope(gateway)
    envelope.seal(b"first")
    envelope._reserve_on_a_new_key(len(b"second"))
    assert gateway.calls == ["create", "get"] and envelope.cache.sealing.messages == 2


def test_single_flight_gives_the_threads_that_waited_the_one_run_s_result() -> None:
    flights = SingleFlight()
    started, release = threading.Event(), threading.Event()
    runs: list[str] = []

    def leader() -> str:
        runs.append("leader")
        started.set()
        release.wait(10)
        return "answer"

    got: list[object] = []
    first = threading.Thread(target=lambda: got.append(flights.run("k", leader)))
    first.start()
    started.wait(10)
    waiters = [threading.Thread(target=lambda: got.append(
        flights.run("k", lambda: runs.append("waiter") or "other"))) for _ in range(3)]
    for thread in waiters:
        thread.start()
    done = flights._runs["k"].done
    deadline = time.monotonic() + 10
    while len(done._cond._waiters) < 3 and time.monotonic() < deadline:  # (all waiting)
        time.sleep(0.001)
    release.set()
    for thread in [first, *waiters]:
        thread.join(10)
    assert got == ["answer"] * 4 and runs == ["leader"]


def test_openers_that_waited_for_a_get_interrupted_in_its_thread_ask_again() -> None:
    """A Get that ends in a BaseException (KeyboardInterrupt) stays in its thread; the
    threads that waited for it open the record all the same."""
    gateway = SlowGateway(delay=0.01)
    blob = Envelope(gateway).seal(b"record")
    opener = Envelope(gateway)
    real_get = gateway.get
    interrupted: list[int] = []

    def get(token: str):
        if not interrupted:
            interrupted.append(1)
            time.sleep(0.1)
            raise KeyboardInterrupt
        return real_get(token)

    gateway.get = get
    opened: list[bytes] = []
    stopped: list[int] = []

    def open_(n: int) -> None:
        try:
            opened.append(opener.open(blob))
        except KeyboardInterrupt:
            stopped.append(n)

    run_threads(open_, 4)
    assert len(stopped) == 1 and opened == [b"record"] * 3


def test_a_forked_child_seals_even_if_a_thread_of_the_parent_was_making_a_key() -> None:
    """The child forgets the parent's Create in flight: no thread of the child would end
    it, and the child's seal would wait for it for ever."""
    gateway = FakeGateway()
    in_create, release = threading.Event(), threading.Event()
    real_create = gateway.create_l4

    def create() -> str:
        if not in_create.is_set():
            in_create.set()
            release.wait(10)
        return real_create()

    gateway.create_l4 = create
    envelope = Envelope(gateway)
    sealing = threading.Thread(target=envelope.seal, args=(b"parent",))
    sealing.start()
    in_create.wait(10)
    try:
        pid = _fork_and_seal(envelope)
    finally:
        release.set()
        sealing.join(10)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_forked_child_seals_under_a_key_of_its_own() -> None:
    """The parent's sealing key would seal its max_messages bound once in each process
    (the counts are each process's own): the child makes its own key, and opens the
    parent's records still."""
    gateway = FakeGateway()
    envelope = Envelope(gateway, CacheLimits(max_messages=10))
    sealed = envelope.seal(b"parent")
    parent_token = parse_header(sealed).token
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: writes the token it sealed under
        try:
            signal.alarm(5)
            blob = envelope.seal(b"child")
            ok = envelope.open(sealed) == b"parent" and envelope.open(blob) == b"child"
            os.write(write, parse_header(blob).token.encode() if ok else b"-")
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        child_token = pipe.read().decode()
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_token not in ("", "-", parent_token)
    assert parse_header(envelope.seal(b"again")).token == parent_token
