"""kcm-core's ``refuse``: the audit record of a request the protocol refused whole, the
answer sent only once that has committed (the client's bytes unchanged), the share it
takes in the group commit, and a store that cannot take it."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.exc import OperationalError
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from kcm.core.request_handler import (
    UNIDENTIFIED,
    UNIDENTIFIED_SHARE,
    CoreRequestHandler,
    refusal_event,
)
from kcm.identity import Principal, Role
from kcm.kernel.responses import failure_response
from kcm.kmip_protocol import (
    IDENTITY_REFUSED,
    RESULT_REASON_INVALID_MESSAGE,
    RESULT_REASON_PERMISSION_DENIED,
    Refusal,
    describe_certificate,
)
from kcm.pki import issue_certificate, new_ca
from tests.core_support import service_principal

NOW = 1_767_225_600  # 2026-01-01
GATEWAY = Principal(Role.GATEWAY, "kcm.test", name="gw1", uri="spiffe://kcm.test/gateway/gw1")


class HeldCommitter:
    """A group committer whose groups never run: the test commits (or fails) them. (Also
    the handler's store: refusals never reach it.)"""

    defer = None
    url = "sqlite://"  # (no file)

    def __init__(self) -> None:
        self.jobs: list[tuple[Any, Any, tuple[Any, ...], Any, Deferred[Any]]] = []

    def submit(self, key: Any, work: Any, *args: Any, own_savepoint: bool = False,
               lean: Any = None, expires: float | None = None) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.jobs.append((key, work, args, lean, d))
        return d


class FailingCommitter:
    defer = None
    url = "sqlite://"  # (no file)

    def __init__(self, error: Exception) -> None:
        self.error = error

    def submit(self, *_args: Any, **_kwargs: Any) -> Deferred[Any]:
        return fail(self.error)


def handler_with(committer: Any, reactor: Clock | None = None) -> CoreRequestHandler:
    return CoreRequestHandler(committer, keyring=None,  # type: ignore[arg-type]
                              clock=lambda: NOW, committer=committer,
                              reactor=reactor or Clock())


def intruder() -> Refusal:
    now = dt.datetime.fromtimestamp(NOW, dt.UTC)
    cert = issue_certificate(new_ca(now=now), "intruder", now=now,
                             uris=["spiffe://elsewhere.test/tenant/demo/service/app"]).cert
    return Refusal(RESULT_REASON_PERMISSION_DENIED, IDENTITY_REFUSED, "10.0.0.7:5100", None,
                   describe_certificate(cert))


def oversized() -> Refusal:
    return Refusal(RESULT_REASON_INVALID_MESSAGE,
                   "request too large: declared message size 10000000 exceeds 1048576",
                   "10.0.0.8:5200", service_principal())


def answered(d: Deferred[bytes]) -> list[bytes]:
    got: list[bytes] = []
    d.addCallback(got.append)
    return got


def test_the_answer_is_the_one_clients_got_and_waits_for_the_record() -> None:
    committer = HeldCommitter()
    handler = handler_with(committer)
    for refusal in (intruder(), oversized()):
        got = answered(handler.refuse(refusal))
        assert got == []  # nothing is sent before the record has committed
        committer.jobs[-1][-1].callback(None)
        # The bytes the protocol wrote before the handler recorded refusals.
        assert got == [failure_response((1, 0), refusal.reason, refusal.message, NOW)]
        assert got == [handler.failure_response(refusal.reason, refusal.message)]


def test_a_refused_certificate_is_recorded_unidentified_with_what_it_holds() -> None:
    committer = HeldCommitter()
    handler_with(committer).refuse(intruder())
    [(key, _, (events,), lean, _)] = committer.jobs
    assert key == UNIDENTIFIED_SHARE and lean is not None  # (rides a lean group)
    [event] = events
    assert (event.principal, event.tenant, event.gateway, event.source, event.operation,
            event.result_status, event.result_reason) == (
        UNIDENTIFIED, None, None, "10.0.0.7:5100", "?", "OPERATION_FAILED",
        "PERMISSION_DENIED")
    assert event.detail["refused"] == IDENTITY_REFUSED
    assert event.detail["certificate"].startswith("subject CN=intruder")
    assert "SAN spiffe://elsewhere.test/tenant/demo/service/app" in event.detail["certificate"]


def test_an_oversized_request_is_recorded_for_its_principal_in_its_tenants_share() -> None:
    committer = HeldCommitter()
    handler_with(committer).refuse(oversized())
    [(key, _, ([event],), _, _)] = committer.jobs
    assert key == ("tenant", "demo")
    assert (event.principal, event.tenant, event.gateway, event.source, event.operation,
            event.result_reason) == (
        "spiffe://kcm.test/tenant/demo/service/app", "demo", None, "10.0.0.8:5200", "?",
        "INVALID_MESSAGE")
    assert event.detail == {"refused": oversized().message}


def test_a_caller_a_gateway_asserted_is_recorded_with_the_gateway_and_the_claim() -> None:
    event = refusal_event(Refusal(
        RESULT_REASON_PERMISSION_DENIED, "the asserted caller identity is not accepted",
        "192.0.2.1:443", None, "spiffe://kcm.test/gateway/gw2", gateway=GATEWAY), "c1")
    assert (event.principal, event.tenant, event.gateway, event.source) == (
        UNIDENTIFIED, None, "spiffe://kcm.test/gateway/gw1", "192.0.2.1:443")
    assert event.detail == {"refused": "the asserted caller identity is not accepted",
                            "claimed": "spiffe://kcm.test/gateway/gw2"}


def test_what_a_record_repeats_of_a_refusal_is_short_printable_ascii() -> None:
    event = refusal_event(Refusal(RESULT_REASON_PERMISSION_DENIED, "m\u00e9" * 500, "h:1",
                                  None, "\x1b" * 5000), "c1")
    for text in event.detail.values():
        assert text.isascii() and text.isprintable() and len(text) < 1000


def test_refusals_of_unidentified_senders_share_one_turn_whoever_sent_them() -> None:
    committer = HeldCommitter()
    handler = handler_with(committer)
    for port in range(20):  # (twenty senders: each has its first refusal recorded)
        handler.refuse(Refusal(RESULT_REASON_PERMISSION_DENIED, IDENTITY_REFUSED,
                               f"10.0.{port}.1:{port}", None, f"subject CN=bot{port}"))
    assert len(committer.jobs) == 20
    assert {key for key, *_ in committer.jobs} == {UNIDENTIFIED_SHARE}


def test_an_unavailable_store_leaves_the_answer_as_it_was_and_one_line() -> None:
    locked = OperationalError("INSERT", {}, Exception("database is locked"))
    handler = handler_with(FailingCommitter(locked))
    with capturedLogs() as events:
        got = answered(handler.refuse(intruder()))
    assert got == [failure_response((1, 0), RESULT_REASON_PERMISSION_DENIED,
                                    IDENTITY_REFUSED, NOW)]
    [line] = [e for e in events if e["log_level"] >= LogLevel.warn]
    text = formatEvent(line)
    assert "not audited" in text and "database is locked" in text
    assert line.get("log_failure") is None  # one line, no traceback


def test_any_other_failure_is_logged_with_its_traceback_and_answered() -> None:
    handler = handler_with(FailingCommitter(RuntimeError("a bug")))
    with capturedLogs() as events:
        got = answered(handler.refuse(oversized()))
    assert got == [failure_response((1, 0), RESULT_REASON_INVALID_MESSAGE,
                                    oversized().message, NOW)]
    assert any(e.get("log_failure") is not None for e in events)
