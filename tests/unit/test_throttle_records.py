"""A tenant's requests refused over its request rate leave audit records, coalesced
(kcm.core.throttle_records): none on the refusing path, one per tenant per interval with
their counts, the rate and who was refused (bounded), written when kcm-core stops, at most
one entry per tenant in memory; a store that cannot take one logs it, once."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import OperationalError
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from kcm.core.context import Caller
from kcm.core.request_handler import (
    THROTTLE_PRINCIPAL,
    THROTTLE_SHARE,
    CoreRequestHandler,
)
from kcm.core.request_rates import TenantRates
from kcm.core.throttle_records import (
    MAX_NAMED,
    RECORD_INTERVAL,
    THROTTLE_OPERATION,
    ThrottleRecords,
)
from kcm.testing.requests import create_managed, query, request
from tests.core_support import service_principal
from tests.unit.test_refusal_event import (
    GATEWAY,
    NOW,
    FailingCommitter,
    HeldCommitter,
    answered,
)


def _handler(committer: Any, clock: Clock, rate: float = 1, burst: int = 1
             ) -> tuple[CoreRequestHandler, TenantRates]:
    rates = TenantRates(clock, rate, burst)
    handler = CoreRequestHandler(committer, keyring=None,  # type: ignore[arg-type]
                                 clock=lambda: NOW, committer=committer, reactor=clock,
                                 rates=rates)
    return handler, rates


def _empty(rates: TenantRates, *tenants: str) -> None:
    """Each tenant's bucket (of one item) emptied, its next request refused."""
    for tenant in tenants:
        assert rates.admit(tenant, 1) is None


def _app(tenant: str = "demo", service: str = "app", port: int = 5000) -> Caller:
    return Caller(service_principal(tenant, service), f"10.0.0.1:{port}")


def _timers(clock: Clock) -> list:
    """The timers of the tenants' intervals (not the rates' log lines')."""
    return [call for call in clock.getDelayedCalls()
            if "ThrottleRecords" in repr(call)]


def _records(committer: HeldCommitter) -> list:
    return [event for _, _, (batch,), _, _ in committer.jobs for event in batch]


def test_refusals_are_one_record_at_the_end_of_the_interval_none_on_the_way() -> None:
    committer, clock = HeldCommitter(), Clock()
    handler, rates = _handler(committer, clock)
    _empty(rates, "demo")
    two = request(create_managed(), query())
    got = [answered(handler.handle_as(two if n % 2 else request(query()), _app(port=n)))
           for n in range(30)]
    assert all(len(answer) == 1 for answer in got)  # answered at once, refused
    assert committer.jobs == []  # nothing written on the refusing path
    assert len(_timers(clock)) == 1  # one timer for the tenant
    clock.advance(RECORD_INTERVAL - 0.1)
    assert committer.jobs == []
    clock.advance(0.1)
    [(key, _, ([record],), _, _)] = committer.jobs
    assert key == THROTTLE_SHARE
    assert (record.operation, record.principal, record.tenant, record.source) == (
        THROTTLE_OPERATION, THROTTLE_PRINCIPAL, "demo", "request-rate")
    assert (record.result_status, record.result_reason) == (
        "OPERATION_FAILED", "SERVER_LIMIT_EXCEEDED")
    detail = record.detail
    assert (detail["count"], detail["items"]) == (30, 45)
    assert (detail["rate"], detail["burst"], detail["cores"]) == (1.0, 1.0, 1)
    assert (detail["interval"], detail["first"], detail["last"]) == (
        RECORD_INTERVAL, NOW, NOW)
    assert detail["principals"] == {service_principal().id: 30}
    assert detail["sources"] == {f"10.0.0.1:{n}": 1 for n in range(MAX_NAMED)}
    assert detail["other_sources"] == 30 - MAX_NAMED
    assert "gateways" not in detail and "other_principals" not in detail
    assert len(handler._throttle_records) == 0  # dropped once written
    assert clock.getDelayedCalls() == []


def test_a_steady_flood_is_one_record_per_interval_and_each_tenant_its_own() -> None:
    committer, clock = HeldCommitter(), Clock()
    handler, rates = _handler(committer, clock, rate=0.001)
    _empty(rates, "demo", "other")
    for _ in range(5 * int(RECORD_INTERVAL)):  # each tenant, one a second, five intervals
        handler.handle_as(request(query()), _app())
        handler.handle_as(request(query()), _app("other", "app2"))
        assert len(handler._throttle_records) <= 2  # at most one entry per tenant
        clock.advance(1)
    records = _records(committer)
    assert len(records) == 10
    for tenant in ("demo", "other"):
        mine = [record for record in records if record.tenant == tenant]
        assert [record.detail["count"] for record in mine] == [60] * 5
    clock.advance(RECORD_INTERVAL * 3)  # quiet: nothing more, nothing held
    assert len(committer.jobs) == 10 and len(handler._throttle_records) == 0


def test_forwarded_refusals_name_the_gateway_and_many_principals_are_bounded() -> None:
    committer, clock = HeldCommitter(), Clock()
    handler, rates = _handler(committer, clock)
    _empty(rates, "demo")
    for n in range(MAX_NAMED + 3):
        caller = Caller(service_principal("demo", f"app{n}"), "192.0.2.1:443", GATEWAY)
        handler.handle_as(request(query()), caller)
    handler.flush_refusals()
    [record] = _records(committer)
    assert record.detail["gateways"] == {GATEWAY.id: MAX_NAMED + 3}
    assert len(record.detail["principals"]) == MAX_NAMED
    assert record.detail["other_principals"] == 3


def test_the_refusals_counted_when_the_core_stops_are_recorded_then() -> None:
    committer, clock = HeldCommitter(), Clock()
    handler, rates = _handler(committer, clock)
    _empty(rates, "demo")
    for _ in range(7):
        handler.handle_as(request(query()), _app())
    flushed = handler.flush_refusals()
    [(_, _, ([record],), _, d)] = committer.jobs
    assert record.tenant == "demo" and record.detail["count"] == 7
    assert _timers(clock) == []  # the interval's timer cancelled
    assert not flushed.called  # until the record has committed
    d.callback(None)
    assert flushed.called
    clock.advance(RECORD_INTERVAL * 2)
    assert len(committer.jobs) == 1


def test_a_store_that_cannot_take_the_record_is_logged_not_retried() -> None:
    locked = OperationalError("INSERT", {}, Exception("database is locked"))
    clock = Clock()
    handler, rates = _handler(FailingCommitter(locked), clock)
    _empty(rates, "demo", "other")
    with capturedLogs() as logged:
        for tenant in ("demo", "other"):
            for _ in range(3):
                handler.handle_as(request(query()), _app(tenant, "app" + tenant))
        clock.advance(RECORD_INTERVAL)
        handler.flush_refusals()
        clock.advance(RECORD_INTERVAL * 3)
    lines = [formatEvent(e) for e in logged if e["log_level"] >= LogLevel.warn]
    lines = [line for line in lines if "not audited" in line]
    assert len(lines) == 2  # the first at once, the other when flushed
    assert "not audited" in lines[0] and "database is locked" in lines[0]
    assert "3 request(s) refused over its rate" in lines[0]
    assert "1 such record(s) not written" in lines[1]
    assert clock.getDelayedCalls() == []  # nothing retried
    assert len(handler._throttle_records) == 0


def test_the_intervals_follow_the_wall_clock_dates() -> None:
    clock, written = Clock(), []
    records = ThrottleRecords(clock, clock.seconds, lambda tenant, facts: written.append(
        (tenant, facts)), interval=10, named=1)
    clock.advance(1000)
    for n in range(4):
        clock.advance(3 if n else 0)
        records.note("acme", 2, rate=5.0, burst=10.0, cores=2, principal=f"p{n % 2}",
                     source="s", gateway=None)
    assert written == []
    clock.advance(1)
    [(tenant, facts)] = written
    assert tenant == "acme"
    assert facts == {"count": 4, "items": 8, "rate": 5.0, "burst": 10.0, "cores": 2,
                     "interval": 10, "first": 1000, "last": 1009,
                     "principals": {"p0": 2}, "other_principals": 2, "sources": {"s": 4}}
    records.note("acme", 1, rate=5.0, burst=10.0, cores=1, principal="p0", source="s")
    assert len(records) == 1 and written[1:] == []  # a new interval opens
