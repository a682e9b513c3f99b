"""The gateway's warnings of refused uses of a service key are coalesced per (tenant, or
caller of none; why): the first of an interval logged at once, the rest counted into one
line when it ends; at most ``max_followed`` followed. A Clock, no reactor."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from kcm.gateway.denied_uses import DeniedUses
from kcm.identity import Principal, Role
from kcm.kernel.missing import object_not_found
from kcm.kmip.enums import Operation, ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import RequestBatchItem
from kcm.kmip.payloads.lifecycle import GetRequest
from kcm.l4.authorize import ServiceKeyUseDenied
from tests.core_support import TRUST_DOMAIN, service_principal

L3_UID = "l3-00000000-0000-4000-8000-000000000001"
STRANGER = service_principal("other", "app")
OTHER_DB = service_principal("other", "db")
ITEM = RequestBatchItem(operation=Operation.GET,
                        request_payload=GetRequest(unique_identifier=L3_UID))


def denied(why: str = "another tenant's key") -> KmipError:
    missing = object_not_found(L3_UID)
    return ServiceKeyUseDenied(missing.reason, missing.message, why=why, tenant="demo",
                               service="app")


def warned(events) -> list[dict]:
    return [e for e in events if e["log_level"] == LogLevel.warn]


def test_the_first_is_logged_at_once_and_the_rest_counted_until_the_interval_ends() -> None:
    clock = Clock()
    uses = DeniedUses(clock.seconds, clock.callLater)
    with capturedLogs() as events:
        uses.note([(ITEM, denied())] * 64, STRANGER)
        uses.note([(ITEM, denied())], OTHER_DB)  # the same tenant: counted with them
    [first] = warned(events)
    assert (first["principal"], first["l3_uid"], first["reason"]) == (
        STRANGER.id, L3_UID, "another tenant's key")
    with capturedLogs() as events:
        clock.advance(9.9)
        assert warned(events) == []
        clock.advance(0.1)  # the interval ends: one line for the 64 counted
    [counted] = warned(events)
    assert (counted["count"], counted["principal"], counted["operation"]) == (
        64, OTHER_DB.id, "GET")
    assert len(uses) == 0 and not clock.getDelayedCalls()
    with capturedLogs() as events:
        uses.note([(ITEM, denied())], STRANGER)  # a new interval: at once again
    assert len(warned(events)) == 1


def test_other_reasons_and_callers_of_no_tenant_are_followed_apart() -> None:
    clock = Clock()
    uses = DeniedUses(clock.seconds, clock.callLater)
    operator = Principal(Role.OPERATOR, TRUST_DOMAIN, name="ops",
                         uri=f"spiffe://{TRUST_DOMAIN}/operator/ops")
    with capturedLogs() as events:
        uses.note([(ITEM, denied()), (ITEM, denied("another service's key"))], STRANGER)
        uses.note([(ITEM, KmipError(ResultReason.PERMISSION_DENIED,
                                    "the asserted caller identity is not accepted"))], operator)
        uses.note([(ITEM, denied())], STRANGER)
    assert [e["principal"] for e in warned(events)] == [STRANGER.id, STRANGER.id, operator.id]
    assert len(uses) == 3


def test_without_a_timer_the_next_refusal_after_the_interval_logs_the_count() -> None:
    clock = Clock()
    uses = DeniedUses(clock.seconds)
    uses.note([(ITEM, denied())] * 3, STRANGER)
    with capturedLogs() as events:
        clock.advance(10)
        uses.note([(ITEM, denied())], STRANGER)
    counted, again = warned(events)
    assert counted["count"] == 2 and again["l3_uid"] == L3_UID
    with capturedLogs() as events:
        uses.note([(ITEM, denied())], STRANGER)
        uses.flush()  # the gateway stops: nothing counted goes unlogged
    [flushed] = warned(events)
    assert flushed["count"] == 1 and len(uses) == 0


def test_the_followed_are_bounded_the_oldest_out_with_its_count() -> None:
    clock = Clock()
    uses = DeniedUses(clock.seconds, clock.callLater, max_followed=2)
    for tenant in ("t1", "t2"):
        uses.note([(ITEM, denied())] * 2, service_principal(tenant, "app"))
    with capturedLogs() as events:
        uses.note([(ITEM, denied())], service_principal("t3", "app"))
    dropped, first = warned(events)
    assert (dropped["count"], dropped["principal"]) == (1, service_principal("t1", "app").id)
    assert first["principal"] == service_principal("t3", "app").id
    assert len(uses) == 2
    with capturedLogs() as events:
        clock.advance(10)  # t1's old timer ends nothing; t2's count and t3's end
    assert [e["count"] for e in warned(events)] == [1]
    assert len(uses) == 0
