"""A ``max_age`` shorter than it takes to make and use a data key: a seal looped, creating
key after key, each aged before the seal could reserve on it. Now the seal that makes a key
has its record counted on it at once (age 0, within every bound): one Create and one Get
per seal at worst, never a loop, and never a record under a key past its age. Injected
clocks that move on at every reading (time passes between any two looks)."""

from __future__ import annotations

import threading

import pytest

from kcm.client.data_key_cache import CacheLimits
from kcm.client.deferred_envelope import DeferredEnvelope
from kcm.client.envelope import parse_header
from kcm.client.sealer import Envelope
from tests.unit.test_client_envelope import DeferredGateway, FakeGateway, fired

#: More Creates than any test here needs: past it, the seal is looping.
MOST_CREATES = 50


class Ticking:
    """A clock that moves on ``step`` seconds at every reading."""

    def __init__(self, step: float = 1.0) -> None:
        self.now = 0.0
        self.step = step
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.now += self.step
            return self.now


class BoundedGateway(FakeGateway):
    """Refuses to create more than MOST_CREATES keys: a looping seal fails, not hangs."""

    def create_l4(self) -> str:
        if self.calls.count("create") >= MOST_CREATES:
            raise AssertionError("the seal is looping: key after key")
        return super().create_l4()


@pytest.fixture
def gateway() -> BoundedGateway:
    return BoundedGateway()


def sealed_at_age_zero(envelope: Envelope | DeferredEnvelope) -> None:
    """The sealing key's record was counted when it was made (at age 0)."""
    key = envelope.cache.sealing
    assert key is not None and key.messages == 1


def test_each_seal_makes_one_key_when_max_age_is_shorter_than_making_it(gateway) -> None:
    # A tick of the clock (1 s) is longer than max_age: any key is past its age at the
    # next look.
    envelope = Envelope(gateway, CacheLimits(max_age=0.5), clock=Ticking())
    blobs = []
    for n in range(3):
        blobs.append(envelope.seal(b"record %d" % n))
        sealed_at_age_zero(envelope)
    assert gateway.calls == ["create", "get"] * 3
    assert envelope.stats == {"create": 3, "get": 3}
    assert len({parse_header(blob).token for blob in blobs}) == 3  # none past its age
    opener = Envelope(gateway, CacheLimits(max_age=0.5), clock=Ticking())
    assert [opener.open(blob) for blob in blobs] == [b"record %d" % n for n in range(3)]


def test_a_max_age_longer_than_a_tick_still_seals_many_records_per_key(gateway) -> None:
    envelope = Envelope(gateway, CacheLimits(max_age=10.5), clock=Ticking())
    tokens = {parse_header(envelope.seal(b"r")).token for _ in range(20)}
    # A key is made at one reading and reserved on at each seal's: 10 seals a key.
    assert len(tokens) == 2 and envelope.stats == {"create": 2, "get": 2}


def test_threads_sealing_with_a_max_age_shorter_than_a_create_all_finish() -> None:
    """Threads that waited for another's Create find its key aged: each goes round once
    more, and every Create serves at least the seal that made it."""
    gateway = BoundedGateway()
    envelope = Envelope(gateway, CacheLimits(max_age=0.5), clock=Ticking())
    sealed: list[bytes] = []
    errors: list[Exception] = []

    def seal() -> None:
        try:
            sealed.extend(envelope.seal(b"r") for _ in range(5))
        except Exception as e:  # noqa: BLE001 - asserted below
            errors.append(e)

    threads = [threading.Thread(target=seal) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors and len(sealed) == 40
    # (Every key is past its age at the next reading: each sealed exactly one record.)
    assert envelope.stats["create"] == 40
    assert len({parse_header(blob).token for blob in sealed}) == 40


def test_the_deferred_envelope_makes_one_key_a_seal_too(gateway) -> None:
    remote = DeferredGateway(gateway)
    envelope = DeferredEnvelope(remote, CacheLimits(max_age=0.5), clock=Ticking())
    first = envelope.seal(b"first")
    remote.answer_all()
    assert isinstance(fired(first), bytes)
    sealed_at_age_zero(envelope)
    waiting = [envelope.seal(b"r%d" % n) for n in range(4)]  # the key is past its age
    remote.answer_all()
    blobs = [fired(d) for d in waiting]
    assert all(isinstance(blob, bytes) for blob in blobs), blobs
    # The first of them made a key; the other three found it aged and made one each.
    assert envelope.stats == {"create": 5, "get": 5}
    assert len({parse_header(blob).token for blob in [fired(first), *blobs]}) == 5
    opener = Envelope(gateway)
    assert [opener.open(blob) for blob in blobs] == [b"r%d" % n for n in range(4)]


def test_seals_waiting_for_a_deferred_key_share_it_when_it_is_young(gateway) -> None:
    remote = DeferredGateway(gateway)
    envelope = DeferredEnvelope(remote, CacheLimits(max_age=60, max_messages=3),
                                clock=Ticking(0.001))
    waiting = [envelope.seal(b"r%d" % n) for n in range(5)]
    remote.answer_all()
    tokens = [parse_header(fired(d)).token for d in waiting]
    # Three on the first key (the one that asked, then two), two on the next.
    assert len(set(tokens[:3])) == 1 and len(set(tokens[3:])) == 1
    assert tokens[0] != tokens[3] and envelope.stats == {"create": 2, "get": 2}
