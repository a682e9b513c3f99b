"""No tenant can hurt another (issue 11), with real `twistd` processes and certificates:

* the same requests sent to a kcm-core and through a kcm-gateway in front of it get the same
  answer, item by item (Result Status, Result Reason, Result Message), warm or cold: L4s of a
  destroyed L3, another tenant's tokens and L3s, odd request headers;
* another tenant's token, L3, wrapping key or Parent Link answers exactly as a missing one,
  whatever its state, and the attempt is logged by the gateway and audited by the core;
* an application whose service is not provisioned holds nothing; another service's objects
  follow the core's ``application_objects`` setting.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy

from kcm.conformance.client import KmipClient
from kcm.core.store.schema import AuditLog
from kcm.kernel.missing import object_not_found, wrapping_key_not_found
from kcm.kmip.attributes import VENDOR_TAG, Attribute
from kcm.kmip.enums import (
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
    WrappingMethod,
)
from kcm.kmip.objects import EncryptionKeyInformation, KeyWrappingSpecification
from kcm.kmip.payloads import (
    CreateRequest,
    DecryptRequest,
    DestroyRequest,
    GetRequest,
    RevocationReason,
    RevokeRequest,
)
from kcm.kmip.payloads.service import LocateRequest
from kcm.kmip.tags import Tag
from kcm.l4 import token as l4_token
from kcm.pki import CertKeyPaths, issue_certificate, load_ca, write_certificate
from kcm.testing.processes import running
from kcm.testing.requests import (
    OMIT,
    aes256,
    create_l4,
    create_managed,
    encrypt,
    get,
    item,
    locate,
    odd_request,
    request,
    response,
)
from kcm.ttlv import Item, ItemType
from tests.e2e_support import CoreProcess, GatewayProcess, applied_events, deploy, wait_until

VERSIONS = [(1, 4), (2, 1)]


# Support ----------------------------------------------------------------------------------
def ok(wire: bytes, index: int = 0):
    answered = response(wire).batch_items[index]
    assert answered.result_status == ResultStatus.SUCCESS, answered.result_message
    return answered.response_payload


def comparable(wire: bytes) -> list[tuple]:
    """What a client sees of an answer, but for times, identifiers and correlation values:
    the protocol version, and per item its operation, batch id, status, reason, message."""
    message = response(wire)
    return [(message.header.protocol_version.as_tuple(),)] + [
        (i.operation, i.unique_batch_item_id, i.result_status, i.result_reason,
         i.result_message) for i in message.batch_items]


def vendor(name: str, value: str) -> Attribute:
    return Attribute.vendor("x", name, Item(VENDOR_TAG, ItemType.TEXT_STRING, value))


def create_l4_of(service: str):
    """Create of an L4 under ``service``'s current L3 (a tenant administrator names it)."""
    return item(Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY,
        attributes=aes256([vendor("kcm-level", "L4"), vendor("kcm-service", service)])))


def decrypt_sealed(uid: str, sealed):
    return item(Operation.DECRYPT, DecryptRequest(
        unique_identifier=uid, data=sealed.data, iv_counter_nonce=sealed.iv_counter_nonce,
        authenticated_encryption_tag=sealed.authenticated_encryption_tag))


def get_wrapped(uid: str, wrapping_uid: str):
    return item(Operation.GET, GetRequest(
        unique_identifier=uid, key_wrapping_specification=KeyWrappingSpecification(
            wrapping_method=WrappingMethod.ENCRYPT,
            encryption_key_information=EncryptionKeyInformation(
                unique_identifier=wrapping_uid))))


def revoke(uid: str):
    return item(Operation.REVOKE, RevokeRequest(
        unique_identifier=uid,
        revocation_reason=RevocationReason(code=RevocationReasonCode.UNSPECIFIED)))


def destroy(uid: str):
    return item(Operation.DESTROY, DestroyRequest(unique_identifier=uid))


def issue_client(core: CoreProcess, name: str, path: str) -> CertKeyPaths:
    """A client certificate of the deployment's CA for ``spiffe://kcm.test/PATH``."""
    pki = core.pki
    paths = CertKeyPaths(pki.directory / f"{name}.pem", pki.directory / f"{name}.key")
    issued = issue_certificate(load_ca(pki.ca), name, now=dt.datetime.now(dt.UTC),
                               uris=[f"spiffe://kcm.test/{path}"])
    write_certificate(paths, issued.cert, issued.key)
    return paths


def client(port: int, core: CoreProcess, paths: CertKeyPaths) -> KmipClient:
    return KmipClient("127.0.0.1", port, cert=paths.cert, key=paths.key,
                      ca=core.pki.ca.cert)


def audit_details(core: CoreProcess) -> list[dict]:
    engine = sqlalchemy.create_engine(core.database)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.select(AuditLog.detail)).scalars().all()
    finally:
        engine.dispose()
    return [json.loads(detail) for detail in rows if detail]


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[CoreProcess, GatewayProcess]]:
    """kcm-core (tenants demo with services app and vault, other with app) and a kcm-gateway
    pre-warmed for demo/app."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.kcm("core", "service", "add", "demo", "vault")
    with running(core, GatewayProcess(tmp_path / "gateway", core)) as pair:
        yield pair


@pytest.fixture
def keys(deployment) -> SimpleNamespace:
    """demo/app's token (and a record under it) and L3; other/app's token; a token of
    demo/vault (and a record) whose L3 was then revoked and destroyed, and which every
    gateway has dropped."""
    core, gateway = deployment
    with core.client("app") as app:
        token = ok(app.send(request(create_l4()))).unique_identifier
        sealed = ok(app.send(request(encrypt(token, b"a record"))))
    with core.client("other_app") as stranger:
        theirs = ok(stranger.send(request(create_l4()))).unique_identifier
    with core.client("admin") as admin:
        vault_token = ok(admin.send(request(create_l4_of("vault")))).unique_identifier
        vault_sealed = ok(admin.send(request(encrypt(vault_token, b"vault record"))))
        vault_l3 = l4_token.parse(vault_token).l3_uid
        ok(admin.send(request(revoke(vault_l3))))
        ok(admin.send(request(destroy(vault_l3))))
    wait_until(lambda: any(kind == "l3.state" for _, kind in applied_events(gateway)),
               "the gateway to drop the destroyed L3")
    return SimpleNamespace(token=token, sealed=sealed, l3=l4_token.parse(token).l3_uid,
                           theirs=theirs, vault_token=vault_token, vault_sealed=vault_sealed,
                           vault_l3=vault_l3)


Cases = Callable[[tuple[int, int]], list[tuple[str, bytes]]]


def compare_warm_then_cold(core: CoreProcess, gateway: GatewayProcess,
                           cases: Cases) -> dict[tuple[str, bytes], list[tuple]]:
    """Send every case (who, request) in 1.4 and 2.1 to the core and through the gateway,
    warm (as it is) then cold (restarted without pre-warming); every answer must be the
    core's, item by item. The core's answers, by case."""

    def compare() -> dict[tuple[str, bytes], list[tuple]]:
        answers = {}
        with ExitStack() as stack:
            via = {who: stack.enter_context(gateway.client(who))
                   for who in ("app", "admin", "other_app")}
            direct = {who: stack.enter_context(core.client(who))
                      for who in ("app", "admin", "other_app")}
            for version in VERSIONS:
                for who, wire in cases(version):
                    at_gateway, at_core = (comparable(via[who].send(wire)),
                                           comparable(direct[who].send(wire)))
                    assert at_gateway == at_core, (who, version, at_gateway, at_core)
                    answers[(who, wire)] = at_core
        return answers

    warm = compare()
    links = gateway.links()
    gateway.stop()
    gateway.prewarm = ()
    gateway.write_config()
    gateway.start()
    gateway.wait_linked(more_than=links)
    assert compare() == warm  # cold: every L3 fetched from the core on first use
    return warm


# Defect 7: the gateway answers every request as the core does ------------------------------
def test_the_gateway_answers_every_request_as_the_core_does(deployment, keys) -> None:
    """L4s of a destroyed L3, tokens and L3s that name nothing, odd request headers (as
    local, mixed and remote requests): the same status, reason and message per item."""
    core, gateway = deployment
    nowhere = keys.l3[:-12] + "000000000000"  # an L3 that never was
    forged = keys.token.replace(keys.token[5:12], "AAAAAAA")

    def cases(version) -> list[tuple[str, bytes]]:
        return [
            # The destroyed L3's token and the L3 itself, to their owner and to a neighbour.
            *[(who, request(built, version=version)) for who in ("admin", "app") for built in (
                get(keys.vault_token), decrypt_sealed(keys.vault_token, keys.vault_sealed),
                encrypt(keys.vault_l3), create_l4(via_link=keys.vault_l3))],
            # Tokens and L3s that name nothing.
            *[("app", request(built, version=version)) for built in (
                get(forged), encrypt(nowhere), get_wrapped(keys.token, nowhere))],
            # The owner, for contrast.
            ("app", request(get(keys.token), decrypt_sealed(keys.token, keys.sealed),
                            version=version)),
            # Odd headers, as local, mixed and remote requests.
            *[("app", odd_request(*items, version=version, **odd))
              for items in ((get(keys.token),), (get(keys.token), locate()), (locate(),))
              for odd in ({"batch_count": -1}, {"batch_count": 0}, {"batch_count": 3},
                          {"batch_count": OMIT}, {"minor": OMIT}, {"minor": 9},
                          {"trailing": [Item(Tag.OBJECT_GROUP, ItemType.TEXT_STRING, "x")]},
                          {"batch_count": 1, "batch_count_type": ItemType.LONG_INTEGER})],
        ]

    answers = compare_warm_then_cold(core, gateway, cases)
    for version in VERSIONS:
        # An L4 whose L3 was destroyed is crypto-erased: Object Destroyed (2.x).
        [_, (*_, reason, _)] = answers[("admin", request(get(keys.vault_token),
                                                         version=version))]
        assert reason == (ResultReason.OBJECT_DESTROYED if version >= (2, 0)
                          else ResultReason.ITEM_NOT_FOUND)
        # A Batch Count of -1 is Invalid Message, in the request's version.
        [(answered_in,), (*_, reason, message)] = answers[(
            "app", odd_request(get(keys.token), version=version, batch_count=-1))]
        assert answered_in == version and reason == ResultReason.INVALID_MESSAGE
        assert message == "Batch Count is -1, but the request holds 1 Batch Item"


# Defect 4: another tenant's key is a missing one, and the attempt is logged ----------------
def test_another_tenants_token_or_l3_answers_exactly_as_a_missing_one(deployment,
                                                                       keys) -> None:
    """Whatever the L3's state (the vault's is destroyed), by token, L3, Parent Link or
    wrapping key, at the core and through a warm or cold gateway: Object (Item) Not Found,
    in the words for a missing identifier; logged by the gateway, audited by the core."""
    core, gateway = deployment

    def cases(version) -> list[tuple[str, bytes]]:
        return [("other_app", request(built, version=version)) for built in (
            get(keys.token), encrypt(keys.token), decrypt_sealed(keys.token, keys.sealed),
            encrypt(keys.l3), create_l4(via_link=keys.l3), get_wrapped(keys.theirs, keys.l3),
            destroy(keys.token), get(keys.vault_token),
            decrypt_sealed(keys.vault_token, keys.vault_sealed), encrypt(keys.vault_l3))]

    answers = compare_warm_then_cold(core, gateway, cases)
    for version in VERSIONS:
        missing = ResultReason.OBJECT_NOT_FOUND if version >= (2, 0) \
            else ResultReason.ITEM_NOT_FOUND
        for built, named in ((get(keys.token), keys.l3), (encrypt(keys.token), keys.l3),
                             (encrypt(keys.l3), keys.l3), (create_l4(via_link=keys.l3), keys.l3),
                             (destroy(keys.token), keys.l3),
                             (get(keys.vault_token), keys.vault_l3),
                             (encrypt(keys.vault_l3), keys.vault_l3)):
            [_, (*_, reason, message)] = answers[("other_app", request(built, version=version))]
            assert (reason, message) == (missing, object_not_found(named).message)
        [_, (*_, reason, message)] = answers[(
            "other_app", request(get_wrapped(keys.theirs, keys.l3), version=version))]
        assert reason == (ResultReason.WRAPPING_OBJECT_NOT_FOUND if version >= (2, 1)
                          else ResultReason.ITEM_NOT_FOUND)
        assert message == wrapping_key_not_found(keys.l3).message
    # Logged by the gateway (the attempt and why, never the token), audited by the core.
    log = gateway.log.read_text()
    assert "denied GET by spiffe://kcm.test/tenant/other/service/app" in log
    assert "another tenant's key" in log
    assert keys.token not in log
    assert {"denied": "another tenant's key"} in audit_details(core)
    assert "audit log intact" in core.kcm("audit", "verify").stdout


# Defect 11: a service that does not exist has no rights; services share by policy -------
def test_services_that_do_not_exist_have_no_rights(deployment) -> None:
    core, gateway = deployment
    core.kcm("core", "service", "add", "demo", "billing")
    ghost = issue_client(core, "ghost", "tenant/demo/service/ghost")  # never provisioned
    billing = issue_client(core, "billing", "tenant/demo/service/billing")
    with core.client("app") as app:
        app_key = ok(app.send(request(create_managed()))).unique_identifier
    with core.client("admin") as admin:
        shared_key = ok(admin.send(request(create_managed()))).unique_identifier

    def answers(port: int) -> dict[str, list]:
        found: dict[str, list] = {}
        with client(port, core, ghost) as as_ghost, client(port, core, billing) as as_billing:
            for name, who in (("ghost", as_ghost), ("billing", as_billing)):
                found[name] = [response(who.send(request(built))).batch_items[0]
                               for built in (get(app_key), destroy(app_key), get(shared_key),
                                             item(Operation.LOCATE, LocateRequest()),
                                             create_managed())]
        return found

    for port in (core.port, gateway.port):  # straight to the core, and forwarded
        found = answers(port)
        # The ghost is a stranger to its own tenant: nothing exists for it, it makes nothing.
        got, destroyed, shared, located, made = found["ghost"]
        for answered, uid in ((got, app_key), (destroyed, app_key), (shared, shared_key)):
            assert (answered.result_reason, answered.result_message) == (
                ResultReason.ITEM_NOT_FOUND, object_not_found(uid).message)
        assert located.response_payload.unique_identifiers == []
        assert made.result_reason == ResultReason.PERMISSION_DENIED
        assert "service demo/ghost is not provisioned" in made.result_message
        # Another (real) service: not app's key, but the tenant's shared one, and its own.
        got, destroyed, shared, located, made = found["billing"]
        assert got.result_reason == destroyed.result_reason == ResultReason.PERMISSION_DENIED
        assert "belongs to service 'app'" in got.result_message
        assert shared.result_status == ResultStatus.SUCCESS
        assert app_key not in located.response_payload.unique_identifiers
        assert shared_key in located.response_payload.unique_identifiers
        assert made.result_status == ResultStatus.SUCCESS
    with core.client("app") as app:  # app's key is still there, and still app's
        ok(app.send(request(get(app_key))))

    # application_objects = "tenant": every service of the tenant shares its objects; a
    # service that does not exist still has nothing.
    gateway.stop()
    core.stop()
    config = core.config.read_text()
    core.config.write_text(config.replace("[core]\n", '[core]\napplication_objects = "tenant"\n'))
    core.start()
    gateway.start()
    gateway.wait_linked(more_than=1)
    for port in (core.port, gateway.port):
        with client(port, core, billing) as as_billing, client(port, core, ghost) as as_ghost:
            ok(as_billing.send(request(get(app_key))))
            assert response(as_ghost.send(request(get(app_key)))).batch_items[0] \
                .result_reason == ResultReason.ITEM_NOT_FOUND
    with client(core.port, core, billing) as as_billing:
        ok(as_billing.send(request(destroy(app_key))))
