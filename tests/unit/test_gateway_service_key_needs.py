"""What a gateway fetches, and when: every service key a local batch names (wrapping keys
included) before the batch runs again, and a service's current version again when another
version of it is made Active. With the real L4 engine and L3 cache, a fake link, and (end to
end) an in-process kcm-core whose events the gateway applies."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from twisted.internet.defer import Deferred, fail, succeed

from kcm.core.context import Caller
from kcm.core.service_keys import fetch_service_keys
from kcm.core.store import repository
from kcm.gateway.handler import GatewayRequestHandler, new_correlation_id
from kcm.gateway.l3_cache import L3Cache, Need
from kcm.gateway.l3_needs import wrapping_needs
from kcm.gateway.link_client import ServiceKeyRefused
from kcm.gateway.local_batch import LocalRunner, l4_engine
from kcm.identity import Principal
from kcm.kmip.enums import Operation, ResultStatus, State, WrappingMethod
from kcm.kmip.errors import KmipError
from kcm.kmip.objects import (
    EncryptionKeyInformation,
    KeyWrappingSpecification,
    MacSignatureKeyInformation,
)
from kcm.kmip.payloads import ActivateRequest, GetRequest, ReKeyRequest
from kcm.kmip_protocol import ConnectionInfo
from kcm.l4 import token
from kcm.l4.authorize import ServiceKeyUseDenied
from kcm.l4.service_key import ServiceKey
from kcm.link.frames import decode_payload
from tests.core_support import CoreHarness, admin_principal
from tests.gateway_support import (
    APP,
    CONNECTION,
    CONTINUE,
    L3,
    STOP,
    FakeLink,
    create_l4,
    item,
    locate,
    request,
    response,
)

KEK_1 = ServiceKey("l3-00000000-0000-4000-8000-000000000002", "demo", "app", 2,
                   State.ACTIVE, bytes(range(1, 33)))
KEK_2 = ServiceKey("l3-00000000-0000-4000-8000-000000000003", "demo", "app", 3,
                   State.ACTIVE, bytes(range(2, 34)))


def wrapped_get(uid: str, kek: str, *, mac: str | None = None):
    return item(Operation.GET, GetRequest(unique_identifier=uid, key_wrapping_specification=(
        KeyWrappingSpecification(
            wrapping_method=WrappingMethod.ENCRYPT,
            encryption_key_information=EncryptionKeyInformation(unique_identifier=kek),
            mac_signature_key_information=None if mac is None else
            MacSignatureKeyInformation(unique_identifier=mac)))))


def statuses(message) -> list[int]:
    return [i.result_status for i in message.batch_items]


class Gateway:
    """A handler over ``link`` and a real cache that counts the L4 engine's runs."""

    def __init__(self, link, *, clock=None) -> None:
        self.link = link
        self.runs = 0
        self.cache = L3Cache(link.fetch_service_keys, connected=lambda: True,
                             clock=clock or (lambda: 1_700_000_000.0))

        def counting_engine(keys):
            self.runs += 1
            return l4_engine(keys)

        self.handler = GatewayRequestHandler(
            runner=LocalRunner(new_correlation_id=new_correlation_id,
                               engine_factory=counting_engine),
            cache=self.cache, link=link, clock=clock or (lambda: 1_700_000_000.0),
            max_message_size=1 << 20, max_batch_items=64)

    def send(self, wire: bytes, connection: ConnectionInfo = CONNECTION):
        answer = self.handler.handle_request(wire, connection)
        if isinstance(answer, Deferred):
            results: list[bytes] = []
            answer.addBoth(results.append)
            assert results, "the answer must not wait on anything but the link"
            answer = results[0]
        assert isinstance(answer, bytes), answer
        return response(answer)


@pytest.fixture
def link() -> FakeLink:
    link = FakeLink()
    link.keys[("demo", "app")] = [L3]
    for key in (L3, KEK_1, KEK_2):
        link.keys[key.uid] = [key]
    return link


# Wrapping keys are needs --------------------------------------------------------------------

def test_wrapping_needs_are_the_encryption_keys_a_get_wraps_with() -> None:
    tok = token.seal(L3, bytes(32), bytes(12))
    assert wrapping_needs([wrapped_get(tok, KEK_1.uid), wrapped_get(tok, KEK_2.uid),
                           item(Operation.GET, GetRequest(unique_identifier=tok)),
                           wrapped_get(tok, "not-a-service-key")]) == {
        Need(uid=KEK_1.uid), Need(uid=KEK_2.uid)}
    # MAC or signature wrapping is refused before any key is read: nothing to fetch.
    assert wrapping_needs([wrapped_get(tok, KEK_1.uid, mac=KEK_2.uid)]) == set()


@pytest.mark.parametrize("continuation", [None, STOP, CONTINUE])
def test_a_cold_batch_of_gets_wrapped_with_keys_not_held_fetches_them_all_at_once(
        link: FakeLink, continuation) -> None:
    # Regression: the wrapping keys were not needs, so each run found one more of them
    # missing (under Stop), and after two rounds the last was answered General Failure
    # "l3-... is not available at the gateway". Now every key is fetched at the first
    # miss and the batch runs twice: cold, then with them all.
    gateway = Gateway(link)
    tok = token.seal(L3, bytes(32), bytes(12))
    wire = request(wrapped_get(tok, KEK_1.uid), wrapped_get(tok, KEK_2.uid),
                   continuation=continuation)
    message = gateway.send(wire)
    assert statuses(message) == [ResultStatus.SUCCESS] * 2, [
        i.result_message for i in message.batch_items]
    assert sorted(uid for *_, uid in link.fetches) == sorted([L3.uid, KEK_1.uid, KEK_2.uid])
    assert gateway.runs == 2
    gateway.runs = 0
    assert statuses(gateway.send(wire)) == [ResultStatus.SUCCESS] * 2
    assert gateway.runs == 1  # warm: one run, no fetch


def test_a_mixed_request_fetches_its_wrapping_keys_before_its_local_run(
        link: FakeLink, core: CoreHarness) -> None:
    link.answer = core.client(APP).send
    gateway = Gateway(link)
    tok = token.seal(L3, bytes(32), bytes(12))
    message = gateway.send(request(locate(), wrapped_get(tok, KEK_1.uid),
                                   wrapped_get(tok, KEK_2.uid)))
    assert statuses(message) == [ResultStatus.SUCCESS] * 3
    assert sorted(uid for *_, uid in link.fetches) == sorted([L3.uid, KEK_1.uid, KEK_2.uid])
    assert gateway.runs == 1


# A version made Active ----------------------------------------------------------------------

SUCCESSOR = ServiceKey("l3-00000000-0000-4000-8000-000000000004", "demo", "app", 2,
                       State.PRE_ACTIVE, b"4" * 32)


def activated(uid: str, service: str = "app") -> dict:
    return {"unique_identifier": uid, "service": service, "state": State.ACTIVE}


def test_a_successor_made_active_becomes_current_at_once(link: FakeLink) -> None:
    # Regression: an l3.state Active event for a version the gateway never held was
    # ignored, so it sealed under the old version until the TTL ran out.
    cache = Gateway(link).cache
    cache.ensure([Need("demo", "app")], APP)
    assert cache.key_source(APP).current_service_key("demo", "app") == L3
    link.fetches.clear()
    link.keys[("demo", "app")] = [replace(SUCCESSOR, state=State.ACTIVE), L3]
    cache.apply_event(5, "l3.state", "demo", activated(SUCCESSOR.uid))
    # Fetched on behalf of the caller that used the service, as for a rotation.
    assert link.fetches == [(APP, "demo", "app", None)]
    assert cache.key_source(APP).current_service_key("demo", "app").uid == SUCCESSOR.uid
    assert cache.key_source(APP).service_key(L3.uid) == L3  # its tokens still open


def test_a_held_successor_made_active_becomes_current_at_once(link: FakeLink) -> None:
    cache = Gateway(link).cache
    link.keys[SUCCESSOR.uid] = [SUCCESSOR]
    cache.ensure([Need("demo", "app"), Need(uid=SUCCESSOR.uid)], APP)
    link.fetches.clear()
    link.keys[("demo", "app")] = [replace(SUCCESSOR, state=State.ACTIVE), L3]
    cache.apply_event(5, "l3.state", "demo", activated(SUCCESSOR.uid))
    assert link.fetches == [(APP, "demo", "app", None)]
    current = cache.key_source(APP).current_service_key("demo", "app")
    assert (current.uid, current.state) == (SUCCESSOR.uid, State.ACTIVE)


def test_an_active_event_of_the_current_version_or_an_unused_service_fetches_nothing(
        link: FakeLink) -> None:
    cache = Gateway(link).cache
    cache.ensure([Need("demo", "app")], APP)
    link.fetches.clear()
    cache.apply_event(5, "l3.state", "demo", activated(L3.uid))
    cache.apply_event(6, "l3.state", "demo", activated(SUCCESSOR.uid, "billing"))
    cache.apply_event(7, "l3.state", "other", activated(SUCCESSOR.uid))
    assert link.fetches == []


# End to end, with the core's events ---------------------------------------------------------

class CoreLink:
    """A link to an in-process kcm-core: forwards requests, fetches service keys."""

    def __init__(self, core: CoreHarness) -> None:
        self.core = core
        self.forwarded: list[bytes] = []
        self.fetches: list[tuple[Principal, str, str, str | None]] = []

    def forward(self, wire: bytes, caller: Principal, source: str) -> Deferred[bytes]:
        self.forwarded.append(wire)
        return succeed(self.core.handler.respond(wire, Caller(caller, source),
                                                 int(time.time())))

    def fetch_service_keys(self, caller: Principal, tenant: str, service: str,
                           uid: str | None = None) -> Deferred[list]:
        self.fetches.append((caller, tenant, service, uid))
        core = self.core
        answer = core.store.run_sync(lambda s: fetch_service_keys(
            s, core.keyring, Caller(caller, "gateway"), tenant, service, uid,
            now=int(time.time())))
        if isinstance(answer, KmipError):
            owner = ((answer.tenant, answer.service)
                     if isinstance(answer, ServiceKeyUseDenied) else None)
            return fail(ServiceKeyRefused(answer.reason, answer.message, owner=owner))
        return succeed(answer)


def follow_events(core: CoreHarness, cache: L3Cache) -> None:
    """Apply the core's events the cache has not applied yet."""
    seen = cache.last_event_sequence
    for event in core.store.run_sync(lambda s: repository.outbox_since(s, seen)):
        if event.seq > seen:
            cache.apply_event(event.seq, event.kind, event.tenant, decode_payload(event.payload))


def sealed_under(message) -> str:
    [answered] = message.batch_items
    assert answered.result_status == ResultStatus.SUCCESS, answered.result_message
    return token.parse(answered.response_payload.unique_identifier).l3_uid


def test_after_an_admin_activates_a_rekeyed_successor_both_planes_seal_under_it(
        core: CoreHarness) -> None:
    gateway = Gateway(CoreLink(core), clock=time.time)
    admin, app = core.client(admin_principal()), core.client(APP)
    follow_events(core, gateway.cache)
    old = sealed_under(gateway.send(request(create_l4(), version=(2, 1))))
    [rekeyed] = response(admin.send(request(item(Operation.RE_KEY, ReKeyRequest(
        unique_identifier=old, offset=3600)), version=(2, 1)))).batch_items
    assert rekeyed.result_status == ResultStatus.SUCCESS, rekeyed.result_message
    successor = rekeyed.response_payload.unique_identifier
    follow_events(core, gateway.cache)
    assert sealed_under(gateway.send(request(create_l4(), version=(2, 1)))) == old
    [done] = response(admin.send(request(item(Operation.ACTIVATE, ActivateRequest(
        unique_identifier=successor)), version=(2, 1)))).batch_items
    assert done.result_status == ResultStatus.SUCCESS, done.result_message
    follow_events(core, gateway.cache)
    assert sealed_under(response(app.send(request(create_l4(), version=(2, 1))))) == successor
    assert sealed_under(gateway.send(request(create_l4(), version=(2, 1)))) == successor


def test_a_tenant_admin_s_cold_gets_wrapped_with_two_services_keys_answer_as_at_the_core(
        core: CoreHarness) -> None:
    admin = admin_principal()
    gateway = Gateway(CoreLink(core), clock=time.time)
    connection = ConnectionInfo(1, admin, "127.0.0.1:40000")
    app_l3, billing_l3 = (core.store.run_sync(
        lambda s, name=name: repository.find_l3(s, "demo", name)[0].uid)
        for name in ("app", "billing"))
    tok = core.client(APP).send(request(create_l4()))
    tok = response(tok).batch_items[0].response_payload.unique_identifier
    wire = request(wrapped_get(tok, billing_l3), wrapped_get(tok, app_l3), version=(2, 1))
    at_core = statuses(response(core.client(admin).send(wire)))
    assert at_core == [ResultStatus.SUCCESS] * 2
    assert statuses(gateway.send(wire, connection)) == at_core
    assert gateway.runs == 2
