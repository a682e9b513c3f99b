"""kcm-core's refusals of senders it accepts no identity of are coalesced: a sender's first
refusal is recorded before its answer, the others of the interval answered at once and
counted in one record at its end; the senders followed are bounded; an accepted
principal's refusals stay one record each; a store outage's log line is throttled."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from kcm.connection_guard import LOG_INTERVAL
from kcm.core.refusal_records import MAX_SENDERS, OTHER_SENDERS
from kcm.core.request_handler import UNIDENTIFIED, UNIDENTIFIED_SHARE
from kcm.kernel.responses import failure_response
from kcm.kmip_protocol import IDENTITY_REFUSED, RESULT_REASON_PERMISSION_DENIED, Refusal
from tests.unit.test_refusal_event import (
    GATEWAY,
    NOW,
    FailingCommitter,
    HeldCommitter,
    answered,
    handler_with,
    oversized,
)

ANSWER = failure_response((1, 0), RESULT_REASON_PERMISSION_DENIED, IDENTITY_REFUSED, NOW)


def bot(n: int, port: int = 4000) -> Refusal:
    """A refusal of the certificate ``bot{n}`` (from a new port each time it reconnects)."""
    return Refusal(RESULT_REASON_PERMISSION_DENIED, IDENTITY_REFUSED, f"10.0.0.1:{port}", None,
                   f"subject CN=bot{n}, SAN (none), serial {n:x}")


def events(committer: HeldCommitter) -> list:
    return [event for _, _, (batch,), _, _ in committer.jobs for event in batch]


def test_one_certificate_refused_n_times_in_an_interval_is_two_records() -> None:
    committer, clock = HeldCommitter(), Clock()
    handler = handler_with(committer, clock)
    first = answered(handler.refuse(bot(1, 4000)))
    assert first == [] and len(committer.jobs) == 1  # recorded before its answer
    committer.jobs[0][-1].callback(None)
    assert first == [ANSWER]
    later = []
    for n in range(1, 50):
        clock.advance(0.1)
        later += answered(handler.refuse(bot(1, 4000 + n)))
    assert later == [ANSWER] * 49  # answered at once, without a commit
    assert len(committer.jobs) == 1
    clock.advance(LOG_INTERVAL)
    [_, (key, _, ([summary],), _, _)] = committer.jobs
    assert key == UNIDENTIFIED_SHARE
    assert (summary.principal, summary.source, summary.operation) == (
        UNIDENTIFIED, "10.0.0.1:4049", "?")
    assert summary.detail["count"] == 49
    assert summary.detail["certificate"] == bot(1).claimed
    assert (summary.detail["first"], summary.detail["last"]) == (NOW, NOW)
    assert "other_senders" not in summary.detail


def test_a_steady_flood_is_one_record_per_interval_and_a_quiet_one_ends_the_turn() -> None:
    committer, clock = HeldCommitter(), Clock()
    handler = handler_with(committer, clock)
    for _ in range(5 * int(LOG_INTERVAL)):  # one a second for five intervals
        handler.refuse(bot(1))
        clock.advance(1)
    assert len(committer.jobs) == 6  # the first, then one at the end of each interval
    assert sum(event.detail.get("count", 1) for event in events(committer)) == 50
    clock.advance(LOG_INTERVAL)  # a quiet interval: no record, the sender's turn ends
    assert len(committer.jobs) == 6
    got = answered(handler.refuse(bot(1)))  # recorded at once again
    assert got == [] and len(committer.jobs) == 7


def test_each_certificate_and_each_asserted_caller_is_its_own_sender() -> None:
    committer, clock = HeldCommitter(), Clock()
    handler = handler_with(committer, clock)
    asserted = Refusal(RESULT_REASON_PERMISSION_DENIED, "not accepted", "192.0.2.1:443", None,
                       "subject CN=bot1, SAN (none), serial 1", gateway=GATEWAY)
    for _ in range(3):
        for refusal in (bot(1), bot(2), asserted):
            handler.refuse(refusal)
    assert len(committer.jobs) == 3
    clock.advance(LOG_INTERVAL)
    assert [event.detail["count"] for event in events(committer)[3:]] == [2, 2, 2]


def test_the_senders_followed_are_bounded_and_the_rest_share_one() -> None:
    committer, clock = HeldCommitter(), Clock()
    handler = handler_with(committer, clock)
    for n in range(MAX_SENDERS + 500):
        handler.refuse(bot(n))
    records = handler._refusal_records
    assert len(records) == MAX_SENDERS + 1  # and one for all the others
    assert len(committer.jobs) == MAX_SENDERS + 1
    clock.advance(LOG_INTERVAL)
    [other] = [event for event in events(committer) if "count" in event.detail]
    assert other.detail["count"] == 499 and other.detail["other_senders"] is True
    assert other.detail["certificate"] == bot(MAX_SENDERS + 499).claimed
    clock.advance(LOG_INTERVAL)
    assert len(records) == 0  # no refusal in an interval: nobody followed
    assert OTHER_SENDERS == ("other", "")


def test_an_accepted_principals_oversized_requests_stay_one_record_each() -> None:
    committer, clock = HeldCommitter(), Clock()
    handler = handler_with(committer, clock)
    got = [answered(handler.refuse(oversized())) for _ in range(5)]
    assert got == [[]] * 5 and len(committer.jobs) == 5  # each waits for its own record
    clock.advance(LOG_INTERVAL)
    assert len(committer.jobs) == 5
    assert all("count" not in event.detail for event in events(committer))


def test_a_store_outage_is_one_not_audited_line_per_interval() -> None:
    from sqlalchemy.exc import OperationalError
    locked = OperationalError("INSERT", {}, Exception("database is locked"))
    clock = Clock()
    handler = handler_with(FailingCommitter(locked), clock)
    with capturedLogs() as logged:
        got = [answered(handler.refuse(oversized())) for _ in range(200)]
        got += [answered(handler.refuse(bot(n))) for n in range(200)]
        lines = [e for e in logged if e["log_level"] >= LogLevel.warn]
        assert len(lines) == 1 and "not audited" in formatEvent(lines[0])
        clock.advance(LOG_INTERVAL)
    assert got == [[failure_response((1, 0), oversized().reason, oversized().message, NOW)]
                   ] * 200 + [[ANSWER]] * 200  # every client answered all the same
    lines = [e for e in logged if e["log_level"] >= LogLevel.warn]
    assert len(lines) == 2
    text = formatEvent(lines[1])
    assert "database is locked" in text and "399 refusal record(s) not written" in text


def test_refusals_counted_when_the_core_stops_are_recorded_then() -> None:
    """kcm-core stopping (:meth:`CoreRequestHandler.flush_refusals`) writes each sender's
    record of the refusals counted so far, and leaves no timer; a sender with nothing
    counted has no record more."""
    committer, clock = HeldCommitter(), Clock()
    handler = handler_with(committer, clock)
    answered(handler.refuse(bot(1, 4000)))
    committer.jobs[0][-1].callback(None)
    for n in range(1, 6):
        clock.advance(0.1)
        answered(handler.refuse(bot(1, 4000 + n)))
    answered(handler.refuse(bot(2, 5000)))  # its first: recorded at once, nothing counted
    committer.jobs[1][-1].callback(None)
    flushed = handler.flush_refusals()
    [_, _, (key, _, ([summary],), _, _)] = committer.jobs
    assert key == UNIDENTIFIED_SHARE
    assert summary.detail["count"] == 5 and summary.detail["certificate"] == bot(1).claimed
    assert clock.getDelayedCalls() == []
    assert not flushed.called  # until the record has committed
    committer.jobs[2][-1].callback(None)
    assert flushed.called
    clock.advance(LOG_INTERVAL * 3)
    assert len(committer.jobs) == 3
