"""USAGE_REPORT (link version 3) at both ends, frame by frame over StringTransport and a
Clock; and the core's intake of reports (:mod:`kcm.core.usage_intake`)."""

from __future__ import annotations

from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from kcm.core.usage import uses_of
from kcm.core.usage_intake import UsageIntake
from kcm.link.frames import MAX_USAGE_ENTRIES, Frame, FrameType, encode_frame
from tests.core_support import CoreHarness
from tests.unit.test_link_cancel import core_end, frames_in, gateway_end


def test_the_gateway_reports_usage_only_to_a_core_that_takes_it() -> None:
    client, _, transport = gateway_end(2)
    assert client.report_usage({"l3-a": 1}) is False and frames_in(transport) == []
    client, _, transport = gateway_end(3)
    assert client.report_usage({"l3-b": 2, "l3-a": 1}) is True
    [report] = frames_in(transport)
    assert (report.type, report.usage) == (FrameType.USAGE_REPORT, [("l3-a", 1), ("l3-b", 2)])
    many = {f"l3-{i:05d}": 1 for i in range(MAX_USAGE_ENTRIES + 1)}
    assert client.report_usage(many)
    assert [len(f.usage) for f in frames_in(transport)] == [MAX_USAGE_ENTRIES, 1]


def test_the_gateway_has_nothing_to_report_to_without_a_link() -> None:
    from kcm.gateway.link_client import LinkClient

    assert LinkClient(None, clock=Clock()).report_usage({"l3-a": 1}) is False


def test_the_core_hands_reports_to_its_intake_and_answers_nothing() -> None:
    core, transport, _ = core_end()
    frames_in(transport)
    reported: list[dict[str, int]] = []
    core.factory.on_usage = lambda counts, scope: reported.append(counts)
    core.dataReceived(encode_frame(Frame(FrameType.USAGE_REPORT,
                                         usage=[("l3-a", 3), ("l3-b", 1), ("l3-a", 2)])))
    assert reported == [{"l3-a": 5, "l3-b": 1}]
    assert frames_in(transport) == [] and not core.closing
    core.factory.on_usage = None  # a core that does not count: the report is dropped
    core.dataReceived(encode_frame(Frame(FrameType.USAGE_REPORT, usage=[("l3-a", 1)])))
    assert not core.closing


class _SyncStore:
    """Store.run in the calling thread (the intake's one use of the store)."""

    def __init__(self, core: CoreHarness) -> None:
        self.core = core
        self.transactions = 0

    def run(self, fn):
        self.transactions += 1
        return succeed(self.core.store.run_sync(fn))


def test_the_intake_adds_reports_up_in_one_write_and_wakes_the_sweeper_at_a_cap(
        core: CoreHarness) -> None:
    from kcm.core.rotation_policy import PolicySettings, set_policy
    from kcm.core.store import repository

    [l3] = core.store.run_sync(lambda s: [r.uid for r in repository.find_l3(s, "demo", "app")])
    clock, store, woken = Clock(), _SyncStore(core), []
    intake = UsageIntake(store, clock, on_cap_reached=lambda: woken.append(1))
    intake.add({l3: 400})
    intake.add({l3: 500, "l3-other": 0})
    assert store.transactions == 0
    clock.advance(intake.delay)
    assert store.transactions == 1 and woken == []  # no policy: far below the built-in cap
    assert core.store.run_sync(lambda s: uses_of(s, [l3])) == {l3: 900}
    core.store.run_sync(lambda s: set_policy(s, "demo", "app", PolicySettings(max_uses=1000),
                                             now=0))
    intake.add({l3: 99})
    clock.advance(intake.delay)
    assert woken == []
    intake.add({l3: 1})
    clock.advance(intake.delay)
    assert woken == [1] and store.transactions == 3
    intake.add({l3: 1})
    intake.stop()
    clock.advance(1)
    assert store.transactions == 3


def test_the_intake_counts_a_scoped_gateways_uses_of_its_tenants_keys_only(
        core: CoreHarness) -> None:
    """A gateway scoped to tenant demo reports uses of demo's and other's L3s: only demo's
    are counted (other's dropped and logged); an unscoped report counts for any tenant."""
    from kcm.core.store import repository

    def l3(tenant: str) -> str:
        return core.store.run_sync(
            lambda s: [r.uid for r in repository.find_l3(s, tenant, "app")])[0]

    demo, other = l3("demo"), l3("other")
    clock, store = Clock(), _SyncStore(core)
    intake = UsageIntake(store, clock, on_cap_reached=lambda: None)
    scope = ("spiffe://kcm.test/gateway/gw1", frozenset({"demo"}))
    intake.add({demo: 3, other: 5, "not-an-l3": 1}, scope)
    intake.add({demo: 1}, scope)
    intake.add({other: 2})  # an unscoped gateway's
    clock.advance(intake.delay)
    assert store.transactions == 1
    assert core.store.run_sync(lambda s: uses_of(s, [demo, other])) == {demo: 4, other: 2}
