"""What the diff review of the tenant-removal change found: a failing event subscriber
kept the events from the others (a gateway's link then missed them, breaking the gapless
stream), and what a write transaction learnt of a removed tenant could come back after the
tenant was forgotten."""

from __future__ import annotations

from twisted.internet.task import Clock

from kcm.core.event_fanout import EventFanout
from kcm.core.store.known import KnownFacts


class Recording:
    def __init__(self) -> None:
        self.got: list[list[tuple[int, bytes]]] = []

    def deliver(self, events: list[tuple[int, bytes]]) -> None:
        self.got.append(events)


class Failing:
    def deliver(self, events: list[tuple[int, bytes]]) -> None:
        raise RuntimeError("set changed size during iteration")


def test_a_failing_subscriber_keeps_the_events_from_no_other() -> None:
    fanout = EventFanout(store=None, clock=Clock(), head=0)  # type: ignore[arg-type]
    links = [Recording(), Recording()]
    fanout.subscribe(Failing())
    for link in links:
        fanout.subscribe(link)
    fanout._publish([(1, b"a"), (2, b"b")])
    fanout._publish([(3, b"c")])
    assert [link.got for link in links] == [[[(1, b"a"), (2, b"b")], [(3, b"c")]]] * 2
    assert fanout.head == 3


def test_what_a_write_learnt_before_a_forgetting_does_not_come_back() -> None:
    known = KnownFacts()
    before = known.epoch
    known.forget_tenant("demo")  # the removal's event, between the read and the commit
    known.add_all([(("demo", "app"), before), (("other", "app"), known.epoch)])
    assert known.services == {("other", "app")}


class _Unavailable:
    """A store whose every read fails as a stopped PostgreSQL's does."""

    outbox_committed = 0

    def read_plain(self, fn):
        from sqlalchemy.exc import OperationalError
        from twisted.internet.defer import fail

        return fail(OperationalError("SELECT", {}, Exception(
            'connection failed: connection to server at "127.0.0.1", port 5432 failed: '
            "Connection refused")))


def test_reads_failed_for_want_of_the_store_are_one_line_each_per_interval() -> None:
    """The poll (every 0.05 s and at each wake) and the head's check (every second) of a
    core whose database is down made three lines a second for the outage's length: now
    one line for each at its first failure, then one with the count every 30 s."""
    from twisted.logger import capturedLogs, formatEvent

    from kcm.core.event_fanout import UNAVAILABLE_LOG_INTERVAL

    clock = Clock()
    fanout = EventFanout(store=_Unavailable(), clock=clock, head=0)  # type: ignore[arg-type]
    with capturedLogs() as events:
        for tick in range(int(UNAVAILABLE_LOG_INTERVAL / 0.05) + 1):  # 30 s of reads
            fanout.poll()
            if tick % 20 == 0:
                fanout.check_head()
            clock.advance(0.05)
    lines = [formatEvent(event) for event in events]
    assert len(lines) == 4, lines  # each read's first failure, then each one's count
    assert all("the key store is unavailable (connection failed:" in line for line in lines)
    assert "polling the outbox failed" in lines[0]
    assert [line for line in lines[2:]
            if "polling the outbox failed" in line and "(599 in 30 s)" in line], lines
    assert not [event for event in events if event.get("log_failure") is not None]
