"""A cold gateway (handler, L3 cache, LinkClient) linked in memory (twisted.test.iosim) to the
core's link server over a real store: L3s fetched by uid alone answer exactly as the core does
for the same request (docs/link-protocol.md §2 FETCH_SERVICE_KEY, §3 "Who may"), and another
tenant's token or L3 answers exactly as a missing one, cold or warm."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from sqlalchemy import select
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.test import iosim

from kcm.core.event_fanout import EventFanout
from kcm.core.hierarchy import provision_service
from kcm.core.link_server import LinkServerFactory
from kcm.core.service_keys import AUDIT_OPERATION, fetch_service_keys
from kcm.core.store import repository
from kcm.core.store.schema import AuditLog
from kcm.gateway.handler import GatewayRequestHandler, new_correlation_id
from kcm.gateway.l3_cache import L3Cache, Need
from kcm.gateway.link_client import LinkClient, LinkClientProtocol
from kcm.gateway.local_batch import LocalRunner
from kcm.identity import Principal, Role
from kcm.kernel.missing import object_not_found
from kcm.kmip.attributes import VENDOR_TAG, Attribute, Link
from kcm.kmip.enums import (
    LinkType,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
    State,
)
from kcm.kmip.messages import (
    ProtocolVersion,
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    ResponseBatchItem,
    decode_response,
    encode_request,
)
from kcm.kmip.payloads import (
    CreateRequest,
    DecryptRequest,
    DestroyRequest,
    EncryptRequest,
    GetRequest,
    RevocationReason,
    RevokeRequest,
)
from kcm.kmip.tags import Tag
from kcm.kmip_protocol import ConnectionInfo
from kcm.l4 import token
from kcm.l4.service_key import ServiceKey
from kcm.link.frames import (
    DRAIN_VERSION,
    LINK_VERSION,
    MAX_SENT_TOMBSTONES,
    Frame,
    FrameType,
    encode_frame,
)
from kcm.ttlv import Item, ItemType, decode, encode
from tests.core_support import (
    LINEAGE,
    TRUST_DOMAIN,
    CoreHarness,
    admin_principal,
    service_principal,
)
from tests.unit.test_link_cancel import core_factory, frames_in
from tests.unit.test_link_drain import linked as link_of_version

VERSIONS = [(1, 4), (2, 1)]
GATEWAY = Principal(Role.GATEWAY, TRUST_DOMAIN, name="gw1",
                    uri=f"spiffe://{TRUST_DOMAIN}/gateway/gw1")
ADMIN = admin_principal()
APP = service_principal()
#: Who answers as if the key did not exist: another tenant's application and administrator,
#: and an application of the key's own tenant whose service was never provisioned.
STRANGERS = (service_principal("other", "app"), admin_principal("other", "mallory"),
             service_principal("demo", "ghost"))
#: Another (provisioned) service of the key's own tenant: Permission Denied.
BILLING = service_principal("demo", "billing")


class _NoEvents(EventFanout):
    """The fan-out with an empty outbox: these tests are about fetches, not events."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(None, clock)  # type: ignore[arg-type]

    def committed(self) -> int:
        return 0

    def read(self, after: int) -> Deferred[list]:
        return succeed([])


class Linked:
    """A core (the ``core`` fixture's store and handler) and a cold gateway linked to it."""

    def __init__(self, core: CoreHarness) -> None:
        self.core = core
        self.clock = Clock()
        self.clock.advance(time.time())
        factory = LinkServerFactory(
            handler=core.handler, store=core.store, keyring=core.keyring,
            fanout=_NoEvents(self.clock), resolve_peer=lambda transport: GATEWAY,
            trust_domain=TRUST_DOMAIN, subject_map=None, clock=self.clock,
            lineage=lambda: LINEAGE)
        # The same transaction the core runs on a store thread, run here: iosim has no reactor.
        factory.fetch_keys = lambda caller, tenant, service, uid, now: succeed(  # type: ignore
            core.store.run_sync(lambda session: fetch_service_keys(
                session, core.keyring, caller, tenant, service, uid, now=now)))
        self.link = LinkClient(None, clock=self.clock)  # type: ignore[arg-type]
        self.cache = L3Cache(self.link.fetch_service_keys, connected=lambda: self.link.connected,
                             clock=self.clock.seconds)
        self.handler = GatewayRequestHandler(
            runner=LocalRunner(new_correlation_id=new_correlation_id), cache=self.cache,
            link=self.link, clock=self.clock.seconds)
        server = factory.buildProtocol(None)
        gateway_end = LinkClientProtocol(self.link)
        self.pump = iosim.connect(server, iosim.FakeTransport(server, True),
                                  gateway_end, iosim.FakeTransport(gateway_end, False),
                                  greet=False, clock=self.clock)
        server.handshakeCompleted()
        self.pump.flush()
        assert self.link.connected

    def via_gateway(self, principal: Principal, *items: tuple[Operation, object],
                    version=(2, 1)) -> list[ResponseBatchItem]:
        answer = self.handler.handle_request(message(items, version),
                                             ConnectionInfo(1, principal, "127.0.0.1:40000"))
        if isinstance(answer, Deferred):
            answered: list[bytes] = []
            answer.addCallback(answered.append)
            self.pump.flush()
            assert answered, "the gateway is still waiting for the core"
            answer = answered[0]
        return decode_response(decode(answer)).batch_items

    def direct(self, principal: Principal, *items: tuple[Operation, object],
               version=(2, 1)) -> list[ResponseBatchItem]:
        wire = self.core.client(principal).send(message(items, version))
        return decode_response(decode(wire)).batch_items

    def fetches(self) -> list[AuditLog]:
        rows = self.core.store.run_sync(
            lambda s: s.scalars(select(AuditLog).order_by(AuditLog.seq)).all())
        return [row for row in rows if row.operation == AUDIT_OPERATION]


def message(items, version) -> bytes:
    header = RequestHeader(protocol_version=ProtocolVersion.of(version), batch_count=len(items))
    batch = [RequestBatchItem(operation=op, request_payload=payload) for op, payload in items]
    return encode(encode_request(RequestMessage(header, batch)))


def ok(item: ResponseBatchItem):
    assert item.result_status == ResultStatus.SUCCESS, (item.result_reason, item.result_message)
    return item.response_payload


def outcome(items: list[ResponseBatchItem]) -> list[tuple]:
    """What a client sees of a refusal (the status, reason and message of each item)."""
    return [(i.result_status, i.result_reason, i.result_message) for i in items]


def vendor(name: str, value: str) -> Attribute:
    return Attribute.vendor("x", name, Item(VENDOR_TAG, ItemType.TEXT_STRING, value))


def create_l4(service: str = "app") -> tuple[Operation, CreateRequest]:
    return Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY,
        attributes=[vendor("kcm-level", "L4"), vendor("kcm-service", service)])


def create_l4_under(l3: str) -> tuple[Operation, CreateRequest]:
    """Create of an L4 naming its L3 by a Parent Link."""
    return Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY,
        attributes=[Attribute.of(Tag.LINK, Link(link_type=LinkType.PARENT_LINK,
                                                linked_object_identifier=l3))])


def get(uid: str) -> tuple[Operation, GetRequest]:
    return Operation.GET, GetRequest(unique_identifier=uid)


def encrypt(uid: str, data: bytes = b"record") -> tuple[Operation, EncryptRequest]:
    return Operation.ENCRYPT, EncryptRequest(unique_identifier=uid, data=data)


def decrypt(uid: str, sealed) -> tuple[Operation, DecryptRequest]:
    return Operation.DECRYPT, DecryptRequest(
        unique_identifier=uid, data=sealed.data, iv_counter_nonce=sealed.iv_counter_nonce,
        authenticated_encryption_tag=sealed.authenticated_encryption_tag)


def l3_of(core: CoreHarness, service: str = "app") -> str:
    return core.store.run_sync(lambda s: repository.find_l3(s, "demo", service)[0].uid)


@pytest.fixture
def linked(core: CoreHarness) -> Linked:
    return Linked(core)


def missing(items: list[ResponseBatchItem], uid: str, version) -> None:
    """``items`` is the one answer a missing ``uid`` gets: Object (Item) Not Found, and a
    message made from ``uid`` alone."""
    [item] = items
    assert item.result_reason == (ResultReason.OBJECT_NOT_FOUND if version >= (2, 0)
                                  else ResultReason.ITEM_NOT_FOUND)
    assert item.result_message == object_not_found(uid).message


@pytest.mark.parametrize("version", VERSIONS)
def test_a_tenant_admin_uses_an_l3_and_its_l4s_through_a_cold_gateway(
        linked: Linked, version) -> None:
    token_uid = ok(linked.direct(ADMIN, create_l4())[0]).unique_identifier
    record = ok(linked.direct(ADMIN, encrypt(token_uid, b"a record"))[0])
    l3 = l3_of(linked.core)
    [got] = linked.via_gateway(ADMIN, get(token_uid), version=version)
    [direct] = linked.direct(ADMIN, get(token_uid), version=version)
    assert ok(got).object.key_block.key_value.key_material == \
        ok(direct).object.key_block.key_value.key_material
    [opened] = linked.via_gateway(ADMIN, decrypt(token_uid, record), version=version)
    assert ok(opened).data == b"a record"
    wrapped = ok(linked.via_gateway(ADMIN, encrypt(l3, b"k" * 32), version=version)[0])
    assert ok(linked.direct(ADMIN, decrypt(l3, wrapped))[0]).data == b"k" * 32
    # One fetch, by uid alone, on the administrator's behalf; then the cache serves.
    [fetch] = linked.fetches()
    assert (fetch.principal, fetch.tenant, fetch.result_status) == (ADMIN.id, "demo", "SUCCESS")
    assert l3 in fetch.object_ids and linked.cache.holds(l3)


@pytest.mark.parametrize("version", VERSIONS)
def test_another_tenants_token_or_l3_is_missing_and_another_services_is_denied_as_at_the_core(
        linked: Linked, version) -> None:
    token_uid = ok(linked.direct(APP, create_l4())[0]).unique_identifier
    l3 = l3_of(linked.core)

    def answers() -> None:
        for who in (*STRANGERS, BILLING):
            for request in (get(token_uid), encrypt(token_uid), encrypt(l3),
                            create_l4_under(l3)):
                direct = linked.direct(who, request, version=version)
                assert outcome(linked.via_gateway(who, request, version=version)) == \
                    outcome(direct)
                if who is BILLING:
                    assert direct[0].result_reason == ResultReason.PERMISSION_DENIED
                else:  # the token names its L3: the answer of an unknown L3
                    missing(direct, l3, version)

    answers()
    assert not linked.cache.holds(l3)  # refused by the core: nothing was handed out
    refused = linked.fetches()
    assert {row.result_reason for row in refused} == {"OBJECT_NOT_FOUND", "PERMISSION_DENIED"}
    assert all(json.loads(row.detail)["denied"] for row in refused)
    # Warm (the application fetched it): the same answers, and the same work as for an
    # unknown L3. The other tenant's refusals stay remembered (the owner's fetch changes
    # nothing for them): only the callers of the owner's tenant are asked of the core again.
    ok(linked.via_gateway(APP, get(token_uid))[0])
    assert linked.cache.holds(l3)
    before = len(linked.fetches())
    answers()
    assert len(linked.fetches()) - before == len(
        [row for row in refused if row.principal.startswith(f"spiffe://{TRUST_DOMAIN}/tenant/demo/")])


@pytest.mark.parametrize("version", VERSIONS)
def test_a_destroyed_l3s_token_is_crypto_erased_as_at_the_core(linked: Linked,
                                                               version) -> None:
    core = linked.core
    core.store.run_sync(lambda s: provision_service(s, core.keyring, "demo", "vault",
                                                    now=int(time.time())))
    token_uid = ok(linked.direct(ADMIN, create_l4("vault"))[0]).unique_identifier
    record = ok(linked.direct(ADMIN, encrypt(token_uid))[0])
    l3 = token.parse(token_uid).l3_uid
    ok(linked.direct(ADMIN, (Operation.REVOKE, RevokeRequest(
        unique_identifier=l3,
        revocation_reason=RevocationReason(code=RevocationReasonCode.UNSPECIFIED))))[0])
    ok(linked.direct(ADMIN, (Operation.DESTROY, DestroyRequest(unique_identifier=l3)))[0])
    for who in (ADMIN, service_principal("demo", "vault"), *STRANGERS):
        for request in (get(token_uid), decrypt(token_uid, record)):
            direct = linked.direct(who, request, version=version)
            assert outcome(linked.via_gateway(who, request, version=version)) == \
                outcome(direct)
    expected = ResultReason.OBJECT_DESTROYED if version >= (2, 0) else \
        ResultReason.ITEM_NOT_FOUND
    assert linked.via_gateway(ADMIN, get(token_uid), version=version)[0].result_reason == \
        expected
    # Who asks comes first: to a stranger, a destroyed L3 is as missing as any other.
    missing(linked.via_gateway(STRANGERS[0], get(token_uid), version=version), l3, version)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_token_of_an_unknown_l3_names_nothing_as_at_the_core(linked: Linked,
                                                              version) -> None:
    nowhere = ServiceKey(f"l3-{uuid.uuid4()}", "demo", "app", 1, State.ACTIVE, bytes(32))
    forged = token.seal(nowhere, bytes(32), bytes(12))
    for request in (get(forged), encrypt(nowhere.uid)):
        direct = linked.direct(APP, request, version=version)
        assert outcome(linked.via_gateway(APP, request, version=version)) == outcome(direct)
        assert direct[0].result_reason in (ResultReason.OBJECT_NOT_FOUND,
                                           ResultReason.ITEM_NOT_FOUND)


def test_the_current_version_is_still_fetched_by_service(linked: Linked) -> None:
    created = ok(linked.via_gateway(APP, create_l4())[0]).unique_identifier
    assert token.parse(created).l3_uid == l3_of(linked.core)
    [refused] = linked.via_gateway(ADMIN, create_l4("nosuch"))
    assert outcome([refused]) == outcome(linked.direct(ADMIN, create_l4("nosuch")))
    assert refused.result_reason == ResultReason.OBJECT_NOT_FOUND


@pytest.mark.parametrize("warm", [False, True])
def test_a_refusal_of_another_tenant_is_logged_at_the_gateway(linked: Linked, warm) -> None:
    """Answered as missing, logged as what it is, whether the core refused the fetch (cold)
    or the gateway held the key (warm)."""
    token_uid = ok(linked.direct(APP, create_l4())[0]).unique_identifier
    if warm:
        ok(linked.via_gateway(APP, get(token_uid))[0])
    stranger = STRANGERS[0]
    with capturedLogs() as events:
        linked.via_gateway(stranger, get(token_uid))
    [denied] = [e for e in events if e.get("token_id")]
    assert denied["log_level"].name == "warn"
    assert (denied["principal"], denied["operation"]) == (stranger.id, "GET")
    assert denied["token_id"] == token.token_id(token_uid)
    assert denied["l3_uid"] == l3_of(linked.core)
    assert denied["reason"] == "another tenant's key"
    assert denied["answered"] == object_not_found(l3_of(linked.core)).message
    assert token_uid not in repr(denied)


# Tombstones made before the gateway linked (docs/link-protocol.md §2, "Tombstones in
# SERVICE_KEYS"): this gateway follows no events, as one that (re)started after them. ------

def _revoked(linked: Linked, who: Principal = APP) -> tuple[str, object, str]:
    """A token created, used, then revoked and destroyed at the core; and a live one."""
    token_uid = ok(linked.direct(who, create_l4())[0]).unique_identifier
    record = ok(linked.direct(who, encrypt(token_uid, b"a record"))[0])
    live = ok(linked.direct(who, create_l4())[0]).unique_identifier
    ok(linked.direct(who, (Operation.REVOKE, RevokeRequest(
        unique_identifier=token_uid,
        revocation_reason=RevocationReason(code=RevocationReasonCode.UNSPECIFIED))))[0])
    ok(linked.direct(who, (Operation.DESTROY, DestroyRequest(unique_identifier=token_uid)))[0])
    return token_uid, record, live


@pytest.mark.parametrize("version", VERSIONS)
def test_a_token_revoked_before_the_gateway_linked_names_nothing_as_at_the_core(
        linked: Linked, version) -> None:
    token_uid, record, live = _revoked(linked)
    for request in (get(token_uid), encrypt(token_uid), decrypt(token_uid, record)):
        direct = linked.direct(APP, request, version=version)
        assert outcome(linked.via_gateway(APP, request, version=version)) == outcome(direct)
        assert direct[0].result_reason in (ResultReason.OBJECT_NOT_FOUND,
                                           ResultReason.ITEM_NOT_FOUND)
    ok(linked.via_gateway(APP, get(live), version=version)[0])
    # Answered here, from the tombstone that came with the L3.
    assert linked.cache.is_tombstoned(token.token_id(token_uid))
    assert not linked.cache.overflowed


def test_a_version_with_more_tombstones_than_a_frame_carries_is_the_cores(
        linked: Linked) -> None:
    """As many as fit come with it; one more, and none do: a gateway that starts then
    forwards what uses that version (tests/unit/test_gateway_handler.py), while one that
    holds it already keeps what it has (it followed the events since)."""
    token_uid, _, _ = _revoked(linked)
    l3 = l3_of(linked.core)

    def tombstones(first: int, count: int) -> None:
        linked.core.store.run_sync(lambda session: [repository.add_tombstone(
            session, token_id=f"{i:032x}", tenant="demo", l3_uid=l3, reason="destroyed")
            for i in range(first, first + count)])

    def fetch(gateway: Linked) -> None:
        gateway.cache.ensure([Need(uid=l3)], APP)
        gateway.pump.flush()

    tombstones(0, MAX_SENT_TOMBSTONES - 1)  # with the revoked token's: exactly as many
    fetch(linked)
    assert linked.cache.holds(l3) and not linked.cache.overflowed
    assert linked.cache.tombstone_count == MAX_SENT_TOMBSTONES
    assert linked.cache.is_tombstoned(token.token_id(token_uid))
    tombstones(MAX_SENT_TOMBSTONES, 1)
    started = Linked(linked.core)
    fetch(started)
    assert started.cache.overflowed == {l3} and started.cache.tombstone_count == 0
    fetch(linked)
    assert not linked.cache.overflowed


@pytest.mark.parametrize("version", [None, DRAIN_VERSION, LINK_VERSION])
def test_only_a_gateway_of_version_5_is_sent_a_versions_tombstones(version) -> None:
    """An older gateway decodes strictly, and would end the link on them."""
    factory, _, _ = core_factory()
    key = ServiceKey(f"l3-{uuid.uuid4()}", "demo", "app", 1, State.ACTIVE, bytes(32),
                     tombstones=frozenset({"ab" * 16}))
    factory.fetch_keys = lambda *args: succeed([key])  # type: ignore[method-assign]
    protocol, transport = link_of_version(factory, version)
    protocol.dataReceived(encode_frame(Frame(
        FrameType.FETCH_SERVICE_KEY, stream_id=1, caller_identity=APP.spiffe_id, tenant="demo",
        service="app")))
    [answer] = frames_in(transport)
    assert answer.service_keys == [key]
    assert answer.service_keys[0].tombstones == (
        key.tombstones if version == LINK_VERSION else None)
