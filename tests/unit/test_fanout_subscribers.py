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
