"""Paged tombstones over the link (link version 9), both ends over a real store: the core
reads each page in TokenId order after the cursor, authorized as a fetch of the version by
uid (a refusal answered and audited as that fetch's); a gateway paging a version of more
than MAX_SENT_TOMBSTONES holds it whole, and its refreshes are then "unchanged" (both ends
digest such a version without its tombstones, as the answer carries it: those come as
events and pages). Mixed releases: a gateway of version 8 is never sent more
than before, and a gateway that named 8 sending FETCH_TOMBSTONES ends its link."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from kcm.core.context import Caller
from kcm.core.link_server import PAGES_BUSY
from kcm.core.service_keys import service_keys_answer, unchanged_since
from kcm.core.store import repository
from kcm.core.store.schema import STATE_DESTROYED, ManagedObject
from kcm.core.tombstone_pages import TombstonePage, VersionDestroyed, tombstone_page
from kcm.gateway.link_client import LinkError
from kcm.gateway.link_client import TombstonePage as GatewayPage
from kcm.gateway.tombstone_pages import TombstonePages
from kcm.identity import Principal, Role
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError
from kcm.link.frames import (
    MAX_SENT_TOMBSTONES,
    PAGES_VERSION,
    REFRESH_VERSION,
    Frame,
    FrameType,
    encode_frame,
)
from kcm.link.keys_digest import keys_digest
from kcm.link.protocol import MAX_LINK_PAGES
from tests.core_support import CoreHarness, admin_principal, service_principal
from tests.unit.test_link_cancel import core_factory, frames_in
from tests.unit.test_link_conditional_fetch import Linked
from tests.unit.test_link_drain import gateway_link, welcomed
from tests.unit.test_link_drain import linked as link_of_version

APP = service_principal()
COUNT = 2 * MAX_SENT_TOMBSTONES + 500


def uid_of(core: CoreHarness) -> str:
    keys = core.store.run_sync(lambda session: service_keys_answer(
        session, core.keyring, Caller(APP, "gw"), "demo", "app", None,
        now=int(time.time())), write=False)
    return keys[0].uid


def revoke(core: CoreHarness, uid: str, count: int = COUNT, start: int = 0) -> list[str]:
    token_ids = [f"{(n * 7919) % 10**6:032x}" for n in range(start, start + count)]

    def add(session) -> None:
        for token_id in token_ids:
            repository.add_tombstone(session, token_id=token_id, tenant="demo", l3_uid=uid,
                                     reason="revoked")

    core.store.run_sync(add)
    return token_ids


def page(core: CoreHarness, uid: str, after: str | None,
         principal: Principal = APP) -> TombstonePage | KmipError:
    return core.store.run_sync(lambda session: tombstone_page(
        session, core.keyring, Caller(principal, "gw"), uid, after, now=int(time.time())),
        write=False)


def fetched(core: CoreHarness, uid: str, principal: Principal) -> KmipError:
    answer = core.store.run_sync(lambda session: service_keys_answer(
        session, core.keyring, Caller(principal, "gw"), "", "", uid,
        now=int(time.time())), write=False)
    assert isinstance(answer, KmipError)
    return answer


# The core's page reads ------------------------------------------------------------------------


def test_pages_come_in_token_id_order_after_the_cursor(core: CoreHarness) -> None:
    uid = uid_of(core)
    token_ids = sorted(revoke(core, uid))
    got, after, pages = [], None, 0
    while True:
        answer = page(core, uid, after)
        assert isinstance(answer, TombstonePage)
        assert len(answer.token_ids) <= MAX_SENT_TOMBSTONES
        got += answer.token_ids
        pages += 1
        if not answer.more:
            break
        after = answer.token_ids[-1]
    assert got == token_ids and pages == 3
    # A tombstone made below the cursor after that page is not in the next one (the
    # gateway has it from its event), one above is.
    first = page(core, uid, None)
    low, high = "0" * 32, "f" * 32
    for token_id in (low, high):
        core.store.run_sync(lambda session, t=token_id: repository.add_tombstone(
            session, token_id=t, tenant="demo", l3_uid=uid, reason="revoked"))
    second = page(core, uid, first.token_ids[-1])
    assert low not in second.token_ids
    assert page(core, uid, token_ids[-1]) == TombstonePage([high], False)


def test_exactly_a_page_ends_with_an_empty_last_page(core: CoreHarness) -> None:
    uid = uid_of(core)
    token_ids = sorted(revoke(core, uid, MAX_SENT_TOMBSTONES))
    assert page(core, uid, None) == TombstonePage(token_ids, False)


@pytest.mark.parametrize("principal", [
    service_principal("other", "app"),  # another tenant's
    admin_principal("other", "mallory"),
    service_principal("demo", "ghost"),  # its service not provisioned
    service_principal("demo", "billing"),  # another service of the tenant: Permission Denied
], ids=["other tenant", "other admin", "unprovisioned", "other service"])
def test_a_page_is_authorized_as_the_fetch_of_the_version(core: CoreHarness,
                                                          principal: Principal) -> None:
    uid = uid_of(core)
    revoke(core, uid, 3)
    refused = page(core, uid, None, principal)
    assert isinstance(refused, KmipError)
    expected = fetched(core, uid, principal)
    assert (refused.reason, refused.message) == (expected.reason, expected.message)
    assert isinstance(page(core, uid, None, admin_principal()), TombstonePage)


def test_an_unknown_uid_is_answered_as_its_fetch(core: CoreHarness) -> None:
    uid = "l3-00000000-0000-4000-8000-0000000000ff"
    refused = page(core, uid, None)
    expected = fetched(core, uid, APP)
    assert isinstance(refused, KmipError) and refused.reason == ResultReason.OBJECT_NOT_FOUND
    assert refused.message == expected.message


def test_a_destroyed_version_is_answered_destroyed_not_an_empty_last_page(
        core: CoreHarness) -> None:
    """(Read before its l3.state event reaches the gateway, an empty last page would have
    it serve the version whole with tombstones the sweeper may have deleted.)"""
    uid = uid_of(core)
    revoke(core, uid, 3)
    core.store.run_sync(lambda session: session.get(ManagedObject, uid).__setattr__(
        "state", STATE_DESTROYED))
    refused = page(core, uid, None)
    assert isinstance(refused, VersionDestroyed)
    assert refused.reason == ResultReason.OBJECT_DESTROYED


# The refresh digest ----------------------------------------------------------------------------


def test_a_version_past_the_cap_is_judged_as_the_answer_carries_it(core: CoreHarness) -> None:
    """The core judges a refresh on the answer it would send: a version whose tombstones do
    not fit is taken without them, as a gateway digests a version it holds (whole after
    paging, or overflowed), so a refresh of it is "unchanged" while nothing else changed,
    and the judgement reads at most MAX_SENT_TOMBSTONES + 1 of them (a gateway's new
    tombstones reach it as events, its missing ones as pages)."""
    uid = uid_of(core)
    revoke(core, uid, MAX_SENT_TOMBSTONES + 1)

    def unchanged(held: bytes, by_uid: bool = False) -> bool:
        return core.store.run_sync(lambda session: unchanged_since(
            session, core.keyring, Caller(APP, "gw"), "demo", "app", uid if by_uid else None,
            held, now=int(time.time())), write=False)

    [capped] = core.store.run_sync(lambda session: service_keys_answer(
        session, core.keyring, Caller(APP, "gw"), "demo", "app", None,
        now=int(time.time())), write=False)
    assert capped.tombstones is None
    whole = replace(capped, tombstones=frozenset(f"t{n}" for n in range(COUNT)))
    assert unchanged(keys_digest([capped]))
    assert unchanged(keys_digest([capped]), by_uid=True)
    assert not unchanged(keys_digest([whole]))  # (every tombstone: not what is sent)


# Both ends ------------------------------------------------------------------------------------


def paged(core: CoreHarness) -> Linked:
    linked = Linked(core)
    TombstonePages(linked.cache, linked.link.fetch_tombstones,
                   connected=lambda: linked.link.connected,
                   taken=lambda: linked.link.pages_taken, call_later=linked.clock.callLater)
    return linked


def test_a_gateway_pages_a_version_in_holds_it_whole_and_refreshes_it_unchanged(
        core: CoreHarness) -> None:
    uid = uid_of(core)
    token_ids = revoke(core, uid)
    linked = paged(core)
    audited = len(linked.audited())
    linked.cache.prewarm("demo", "app", APP)
    linked.pump.flush()
    assert not linked.cache.overflowed and linked.cache.pages.pending == 0
    assert linked.cache.tombstone_count == COUNT
    assert all(linked.cache.is_tombstoned(t) for t in token_ids)
    assert len(linked.audited()) == audited + 1  # the fetch; the pages are not audited
    for _ in range(2):
        linked.refresh()
    assert linked.factory.refreshes == {"unchanged": 2, "changed": 0}
    assert len(linked.audited()) == audited + 1


def test_a_page_refused_is_audited_and_leaves_the_version_to_the_core(
        core: CoreHarness) -> None:
    uid = uid_of(core)
    revoke(core, uid)
    linked = paged(core)
    got: list = []
    linked.link.fetch_tombstones(service_principal("demo", "billing"), uid, None) \
        .addBoth(got.append)
    linked.pump.flush()
    assert got[0].value.reason == ResultReason.PERMISSION_DENIED
    [row] = [row for row in linked.audited() if row.result_status == "OPERATION_FAILED"]
    assert row.result_reason == "PERMISSION_DENIED" and row.gateway is not None
    assert row.principal == service_principal("demo", "billing").spiffe_id


# Mixed releases -------------------------------------------------------------------------------


def test_a_gateway_that_named_8_asking_for_a_page_ends_its_link() -> None:
    factory, _, _ = core_factory()
    protocol, transport = link_of_version(factory, REFRESH_VERSION)
    protocol.dataReceived(encode_frame(Frame(
        FrameType.FETCH_TOMBSTONES, stream_id=1, caller_identity=APP.spiffe_id,
        unique_identifier="l3-x")))
    [goaway] = frames_in(transport)
    assert goaway.type is FrameType.GOAWAY and "link version 8" in goaway.error
    assert protocol.closing


def test_a_gateway_of_version_9_sends_a_core_of_version_8_no_page() -> None:
    client = gateway_link(Clock())
    _, transport = welcomed(client, REFRESH_VERSION)
    frames_in(transport)
    assert not client.pages_taken
    got: list = []
    client.fetch_tombstones(APP, "l3-x", None).addBoth(got.append)
    assert isinstance(got[0].value, LinkError) and frames_in(transport) == []
    client.stopService()


def test_each_link_up_calls_on_linked_once_its_cores_version_is_known() -> None:
    # (how a gateway that linked to a core of an earlier release first pages in what that
    # core sent without its tombstones, once it links to one of version 9)
    client = gateway_link(Clock())
    taken: list[bool] = []
    client.on_linked = lambda: taken.append(client.pages_taken)
    welcomed(client, REFRESH_VERSION)
    welcomed(client)
    assert taken == [False, True]
    client.stopService()


# The core's bounds on pages in flight ---------------------------------------------------------


def test_a_link_has_at_most_max_link_pages_in_flight_at_the_core() -> None:
    """A fifth page in flight on a link is refused busy (General Failure); one answered
    makes room again, refused or not."""
    from tests.unit.test_link_cancel import APP as LINK_APP

    factory, _, _ = core_factory()
    asked: list[Deferred] = []
    factory.fetch_page = lambda caller, uid, after, now: asked.append(Deferred()) or asked[-1]
    protocol, transport = link_of_version(factory, PAGES_VERSION)

    def ask(stream_id: int) -> None:
        protocol.dataReceived(encode_frame(Frame(
            FrameType.FETCH_TOMBSTONES, stream_id=stream_id,
            caller_identity=LINK_APP.spiffe_id, unique_identifier="l3-x")))

    for stream_id in range(1, MAX_LINK_PAGES + 2):
        ask(stream_id)
    [busy] = frames_in(transport)
    assert busy.type is FrameType.TOMBSTONES and busy.stream_id == MAX_LINK_PAGES + 1
    assert busy.result_reason == ResultReason.GENERAL_FAILURE and busy.error == PAGES_BUSY
    for n in range(2 * MAX_LINK_PAGES):  # each answered makes room for one more
        d = asked.pop(0)
        d.callback(TombstonePage([], False) if n % 2 else
                   KmipError(ResultReason.OBJECT_NOT_FOUND, "no"))
        ask(100 + n)
        assert all(frame.error != PAGES_BUSY for frame in frames_in(transport))


def test_a_refused_page_is_audited_as_the_refused_fetch_and_a_destroyed_one_not_at_all(
        core: CoreHarness) -> None:
    """Another service's caller: the fetch's refusal record (its tenant, why it was denied)
    marked ``tombstones``; a caller the core does not accept: the link's refusal record;
    a destroyed version's page refuses nobody: no record."""
    uid = uid_of(core)
    revoke(core, uid, 3)
    linked = paged(core)
    got: list = []
    linked.link.fetch_tombstones(service_principal("demo", "billing"), uid, None) \
        .addBoth(got.append)
    linked.pump.flush()
    [row] = [row for row in linked.audited() if row.result_status == "OPERATION_FAILED"]
    detail = json.loads(row.detail or "{}")
    assert row.tenant == "demo" and detail["tombstones"] is True and detail["denied"]
    refused, refuse = [], core.handler.refuse
    core.handler.refuse = lambda refusal: refused.append(refusal) or refuse(refusal)
    stranger = Principal(Role.SERVICE, "elsewhere.test", tenant="demo", service="app",
                         uri="spiffe://elsewhere.test/tenant/demo/service/app")
    linked.link.fetch_tombstones(stranger, uid, None).addBoth(got.append)
    linked.pump.flush()
    assert got[-1].value.reason == ResultReason.PERMISSION_DENIED
    [refusal] = refused  # (recorded by the handler, as a refused REQUEST's caller is)
    assert refusal.reason == ResultReason.PERMISSION_DENIED and refusal.gateway is not None
    core.store.run_sync(lambda session: session.get(ManagedObject, uid).__setattr__(
        "state", STATE_DESTROYED))
    linked.link.fetch_tombstones(APP, uid, None).addBoth(got.append)
    linked.pump.flush()
    assert got[-1].value.reason == ResultReason.OBJECT_DESTROYED
    assert [row.result_reason for row in linked.audited()
            if row.result_status == "OPERATION_FAILED"] == ["PERMISSION_DENIED"]


def test_a_gateway_takes_a_page_without_more_as_the_last_and_an_odd_reason_as_busy() -> None:
    """MoreTombstones absent: false (the last page). A refusal of a reason this gateway does
    not know is a General Failure (tried again), not a refusal that gives the version up."""
    client = gateway_link(Clock())
    protocol, transport = welcomed(client, PAGES_VERSION)
    frames_in(transport)
    got: list = []
    client.fetch_tombstones(APP, "l3-x", None).addBoth(got.append)
    [asked] = frames_in(transport)
    protocol.dataReceived(encode_frame(Frame(FrameType.TOMBSTONES, stream_id=asked.stream_id,
                                             token_ids=["a" * 32])))
    assert got == [GatewayPage(["a" * 32], False)]
    client.fetch_tombstones(APP, "l3-x", None).addBoth(got.append)
    [asked] = frames_in(transport)
    protocol.dataReceived(encode_frame(Frame(FrameType.TOMBSTONES, stream_id=asked.stream_id,
                                             error="new", result_reason=0x7FF0)))
    assert got[-1].value.reason == ResultReason.GENERAL_FAILURE
    client.stopService()
