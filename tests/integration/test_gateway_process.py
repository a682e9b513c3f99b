"""kcm-gateway as a real `twistd` process in front of a real kcm-core: PyKMIP and our own
client over mutual TLS, the core killed and restarted under load."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kmip.core import enums
from kmip.core import objects as core_objects
from kmip.core.factories.attributes import AttributeFactory
from kmip.pie.exceptions import KmipOperationFailure

from kcm.conformance.client import KmipClientError
from kcm.kernel.missing import object_not_found
from kcm.kmip.attributes import Attribute, CryptographicParameters
from kcm.kmip.enums import (
    BlockCipherMode,
    CryptographicUsageMask,
    Operation,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
)
from kcm.kmip.payloads.crypto import DecryptRequest, EncryptRequest
from kcm.kmip.tags import Tag
from kcm.kmip_protocol import IDENTITY_REFUSED
from kcm.l4 import token as l4_token
from kcm.testing.processes import running
from kcm.testing.requests import CONTINUE, query
from tests.e2e_support import (
    CoreProcess,
    GatewayProcess,
    decrypt_sealed,
    deploy,
    refusals,
    send_v21,
    succeeded_v21,
    wait_until,
)
from tests.gateway_support import (
    activate,
    create_l4,
    create_managed,
    encrypt,
    get,
    item,
    locate,
    request,
    response,
)
from tests.integration.test_gateway_sync import destroy, revoke

CBC = {"cryptographic_algorithm": enums.CryptographicAlgorithm.AES,
       "block_cipher_mode": enums.BlockCipherMode.CBC,
       "padding_method": enums.PaddingMethod.PKCS5}


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[CoreProcess, GatewayProcess]]:
    """A running kcm-core (SQLite) and a kcm-gateway linked to it, pre-warmed for demo/app."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    with running(core, GatewayProcess(tmp_path / "gateway", core)) as pair:
        yield pair


def pykmip_create_l4(client) -> str:
    """Create of an L4 with PyKMIP: a Symmetric Key with the custom attribute x-kcm-level."""
    factory = AttributeFactory()
    template = core_objects.TemplateAttribute(attributes=[
        factory.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_ALGORITHM,
                                 enums.CryptographicAlgorithm.AES),
        factory.create_attribute(enums.AttributeType.CRYPTOGRAPHIC_LENGTH, 256),
        factory.create_attribute("x-kcm-level", "L4"),
    ])
    result = client.proxy.create(enums.ObjectType.SYMMETRIC_KEY, template)
    assert result.result_status.value == enums.ResultStatus.SUCCESS, result.result_message
    return result.uuid


def locate_l3(client) -> str:
    """The demo/app service key's identifier, found with Locate by its name."""
    factory = AttributeFactory()
    name = factory.create_attribute(enums.AttributeType.NAME,
                                    "kcm/tenant/demo/service/app/L3")
    [uid] = client.locate(attributes=[name])
    return uid


def test_envelope_flow_with_pykmip_survives_a_gateway_restart(deployment) -> None:
    core, gateway = deployment
    app, admin = gateway.pykmip("app"), gateway.pykmip("admin")
    try:
        token = pykmip_create_l4(app)
        assert token.startswith("l4.1.")
        dek = app.get(token).value
        assert len(dek) == 32
        sealed, iv = app.encrypt(b"a customer record", uid=token,
                                 cryptographic_parameters=CBC)
        assert app.decrypt(sealed, uid=token, cryptographic_parameters=CBC,
                           iv_counter_nonce=iv) == b"a customer record"
        l3 = locate_l3(admin)  # a control operation, forwarded to the core
        assert l3.startswith("l3-")
        # A DEK is wrapped with the L3 by AES-GCM alone (docs/link-protocol.md §3); in
        # PyKMIP's KMIP 1.2 the tag travels at the end of Data.
        wrapped, wrap_iv = app.encrypt(dek, uid=l3)
        assert len(wrap_iv) == 12 and len(wrapped) == len(dek) + 16
        assert app.decrypt(wrapped, uid=l3, iv_counter_nonce=wrap_iv) == dek
        with pytest.raises(KmipOperationFailure) as refused:
            app.encrypt(dek, uid=l3, cryptographic_parameters=CBC)
        assert refused.value.reason == enums.ResultReason.FEATURE_NOT_SUPPORTED
        assert "AES-GCM only" in refused.value.message
    finally:
        app.close()
        admin.close()
    links = gateway.links()  # the log keeps the first run's links: wait for a new one
    gateway.stop()
    gateway.start()
    gateway.wait_linked(more_than=links)
    app = gateway.pykmip("app")
    try:
        assert app.get(token).value == dek  # the token is the key: nothing was stored
        assert app.decrypt(sealed, uid=token, cryptographic_parameters=CBC,
                           iv_counter_nonce=iv) == b"a customer record"
    finally:
        app.close()


def test_a_revoked_and_destroyed_token_stays_refused_after_a_gateway_restart(
        deployment) -> None:
    """A restarted gateway follows the core's events from their head on: the tombstones
    made before come with the L3 it fetches (docs/link-protocol.md §2)."""
    core, gateway = deployment
    with gateway.client("app") as via_gateway:
        [created, live] = succeeded_v21(via_gateway, create_l4(), create_l4())
        token = created.unique_identifier
        [sealed] = succeeded_v21(via_gateway, encrypt(token, b"a record"))
        succeeded_v21(via_gateway, revoke(token, RevocationReasonCode.CESSATION_OF_OPERATION),
                      destroy(token))
    uses = (get(token), encrypt(token, b"more"), decrypt_sealed(token, sealed))
    for restart in range(2):  # the second restart fetches the L3 by uid, not prewarmed
        links = gateway.links()
        gateway.stop()
        if restart:
            gateway.prewarm = ()
            gateway.write_config()
        gateway.start()
        gateway.wait_linked(more_than=links)
        with gateway.client("app") as via_gateway, core.client("app") as direct:
            answers = send_v21(via_gateway, *uses)
            assert refusals(answers) == [ResultReason.OBJECT_NOT_FOUND] * 3, \
                [a.result_message for a in answers]
            assert [comparable_item(a) for a in answers] == \
                [comparable_item(a) for a in send_v21(direct, *uses)]
            succeeded_v21(via_gateway, get(live.unique_identifier))


def test_the_l3_neither_opens_nor_mints_tokens_at_a_gateway_or_the_core(deployment) -> None:
    """The reviewer's attacks, each its own request through the real gateway (its fast
    path declines, its general path answers) and straight to the core: a destroyed token's
    DEK opened by a Decrypt with its L3 (the token's nonce, binding and tag), a token
    minted by an Encrypt with the binding, ECB/CBC/CTR, a client's IV, a short tag; both
    planes refuse alike. A DEK wrapped with AES-GCM still works at both."""
    core, gateway = deployment
    gcm = CryptographicParameters(block_cipher_mode=BlockCipherMode.GCM, tag_length=16)
    with gateway.client("app") as via_gateway, core.client("app") as direct:
        [created] = succeeded_v21(via_gateway, create_l4())
        uid = created.unique_identifier
        [key] = succeeded_v21(via_gateway, get(uid))
        dek = key.object.key_block.key_value.key_material
        succeeded_v21(via_gateway, revoke(uid, RevocationReasonCode.CESSATION_OF_OPERATION),
                      destroy(uid))
        sealed = l4_token.parse(uid)
        l3 = sealed.l3_uid
        binding = l4_token.associated_data(sealed.l3_uuid, "demo", "app")
        attacks = [
            (item(Operation.DECRYPT, DecryptRequest(
                unique_identifier=l3, data=sealed.ciphertext[:-16], cryptographic_parameters=gcm,
                iv_counter_nonce=sealed.nonce, authenticated_encryption_additional_data=binding,
                authenticated_encryption_tag=sealed.ciphertext[-16:])),
             ResultReason.INVALID_FIELD),
            (item(Operation.ENCRYPT, EncryptRequest(
                unique_identifier=l3, data=dek, cryptographic_parameters=gcm,
                iv_counter_nonce=bytes(12), authenticated_encryption_additional_data=binding)),
             ResultReason.INVALID_FIELD),
            (item(Operation.ENCRYPT, EncryptRequest(
                unique_identifier=l3, data=dek, authenticated_encryption_additional_data=binding)),
             ResultReason.INVALID_FIELD),
            (item(Operation.ENCRYPT, EncryptRequest(
                unique_identifier=l3, data=dek, iv_counter_nonce=sealed.nonce)),
             ResultReason.INVALID_FIELD),
            (item(Operation.ENCRYPT, EncryptRequest(
                unique_identifier=l3, data=dek,
                cryptographic_parameters=CryptographicParameters(tag_length=4))),
             ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS),
            *[(item(Operation.ENCRYPT, EncryptRequest(
                unique_identifier=l3, data=bytes(16),
                cryptographic_parameters=CryptographicParameters(block_cipher_mode=mode))),
               ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS)
              for mode in (BlockCipherMode.ECB, BlockCipherMode.CBC, BlockCipherMode.CTR)],
        ]
        for attack, reason in attacks:
            answers = send_v21(via_gateway, attack)
            assert refusals(answers) == [reason], [a.result_message for a in answers]
            assert [comparable_item(a) for a in answers] == \
                [comparable_item(a) for a in send_v21(direct, attack)]
        for client in (via_gateway, direct):
            [wrapped] = succeeded_v21(client, encrypt(l3, dek))
            [unwrapped] = succeeded_v21(client, decrypt_sealed(l3, wrapped))
            assert unwrapped.data == dek


def comparable_item(answer) -> tuple:
    return (answer.operation, answer.result_status, answer.result_reason,
            answer.result_message)


def test_aes_gcm_default_record_encryption(deployment) -> None:
    _, gateway = deployment
    # It holds service keys and opened DEKs: no core file (kcm.no_core_dumps).
    assert gateway.process is not None
    limits = Path(f"/proc/{gateway.process.pid}/limits").read_text()
    assert "Max core file size        0                    0" in limits
    with gateway.client() as client:
        token = ok(client.send(request(create_l4()))).unique_identifier
        sealed = ok(client.send(request(encrypt(token, b"record"))))
        assert sealed.authenticated_encryption_tag and sealed.iv_counter_nonce
        opened = ok(client.send(request(item(Operation.DECRYPT, DecryptRequest(
            unique_identifier=token, data=sealed.data, iv_counter_nonce=sealed.iv_counter_nonce,
            authenticated_encryption_tag=sealed.authenticated_encryption_tag)))))
        assert opened.data == b"record"


def test_l4_refusals_at_the_gateway_answer_as_the_core_does(deployment) -> None:
    """A prefix of a 16-byte tag, and an L4 Create whose usage mask lacks Encrypt: the
    gateway (which runs the same engine) refuses them exactly as the core does."""
    core, gateway = deployment
    narrow = create_l4()
    narrow.request_payload.attributes.append(
        Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, int(CryptographicUsageMask.DECRYPT)))
    with gateway.client() as via_gateway, core.client() as direct:
        token = ok(via_gateway.send(request(create_l4()))).unique_identifier
        sealed = ok(via_gateway.send(request(encrypt(token, b"record"))))
        for length in (12, 4):
            truncated = request(item(Operation.DECRYPT, DecryptRequest(
                unique_identifier=token, data=sealed.data,
                iv_counter_nonce=sealed.iv_counter_nonce,
                authenticated_encryption_tag=sealed.authenticated_encryption_tag[:length])))
            answer = comparable(via_gateway.send(truncated))
            assert answer == comparable(direct.send(truncated))
            assert answer[0][3] == ResultReason.CRYPTOGRAPHIC_FAILURE
        answer = comparable(via_gateway.send(request(narrow)))
        assert answer == comparable(direct.send(request(narrow)))
        assert answer[0][3] == ResultReason.INVALID_FIELD


def ok(wire: bytes, index: int = 0):
    answered = response(wire).batch_items[index]
    assert answered.result_status == ResultStatus.SUCCESS, answered.result_message
    return answered.response_payload


def comparable(wire: bytes) -> list[tuple]:
    """What a client sees of an answer, without identifiers, times and correlation values."""
    return [(i.operation, i.unique_batch_item_id, i.result_status, i.result_reason,
             i.result_message) for i in response(wire).batch_items]


def test_forwarded_control_operations_answer_as_the_core_does(deployment) -> None:
    core, gateway = deployment
    with gateway.client() as via_gateway, core.client() as direct:
        for build in (lambda: request(create_managed(b"c"), activate(None, b"a")),
                      lambda: request(activate("no-such-object", b"x")),
                      lambda: request(get("no-such-object"))):
            assert comparable(via_gateway.send(build())) == comparable(direct.send(build()))
    assert "audit log intact" in core.kcm("audit", "verify").stdout


def test_mixed_batch_is_one_response(deployment) -> None:
    core, gateway = deployment
    with gateway.client() as client:
        managed = ok(client.send(request(create_managed()))).unique_identifier
        wire = client.send(request(create_l4(b"1"), activate(managed, b"2"), locate(b"3")))
    message = response(wire)
    assert [i.unique_batch_item_id for i in message.batch_items] == [b"1", b"2", b"3"]
    assert [i.operation for i in message.batch_items] == [Operation.CREATE, Operation.ACTIVATE,
                                                          Operation.LOCATE]
    assert all(i.result_status == ResultStatus.SUCCESS for i in message.batch_items), \
        [i.result_message for i in message.batch_items]
    assert message.batch_items[0].response_payload.unique_identifier.startswith("l4.")
    assert message.batch_items[1].response_payload.unique_identifier == managed
    assert managed in message.batch_items[2].response_payload.unique_identifiers


def test_mixed_batches_keep_the_core_s_placeholder_and_maximum_response_size(
        deployment) -> None:
    """One ID Placeholder a request, and the client's Maximum Response Size over the whole
    answer, through the gateway as at the core."""
    core, gateway = deployment
    with gateway.client() as via_gateway, core.client() as direct:
        token = ok(via_gateway.send(request(create_l4()))).unique_identifier
        query_alone = len(direct.send(request(query(b"1"))))
        builds = (
            lambda: request(create_managed(b"1"), encrypt(token, b"r", b"2"), get(None, b"3")),
            lambda: request(create_l4(b"1"), activate(None, b"2"), continuation=CONTINUE),
            lambda: request(query(b"1"), encrypt(token, b"r", b"2"), continuation=CONTINUE,
                            maximum_response_size=query_alone + 8),
        )
        for build in builds:
            through, at_core = via_gateway.send(build()), direct.send(build())
            assert comparable(through) == comparable(at_core)
        answered = response(via_gateway.send(builds[0]()))
        managed = answered.batch_items[0].response_payload.unique_identifier
        assert answered.batch_items[2].response_payload.unique_identifier == managed
        assert [i.result_reason for i in response(via_gateway.send(builds[2]())).batch_items] \
            == [ResultReason.RESPONSE_TOO_LARGE] * 2


@pytest.mark.serial  # asserts timings: run alone, after the parallel part of `make test`
def test_core_killed_under_l4_load_then_back_without_a_gateway_restart(deployment) -> None:
    core, gateway = deployment
    errors: list[str] = []
    done = threading.Event()
    counts = [0]

    def l4_load() -> None:
        with gateway.client() as client:
            while not done.is_set():
                token_wire = client.send(request(create_l4()))
                token_item = response(token_wire).batch_items[0]
                if token_item.result_status != ResultStatus.SUCCESS:
                    errors.append(token_item.result_message)
                    continue
                token = token_item.response_payload.unique_identifier
                for answered in response(client.send(request(
                        encrypt(token, b"r"), get(token)))).batch_items:
                    if answered.result_status != ResultStatus.SUCCESS:
                        errors.append(answered.result_message)
                counts[0] += 1

    load = threading.Thread(target=l4_load)
    load.start()
    try:
        time.sleep(0.5)
        links = gateway.links()
        core.stop(signal.SIGKILL)
        time.sleep(0.5)
        with gateway.client() as client:
            client.send(request(create_l4()))  # connected before timing
            started = time.monotonic()
            wire = client.send(request(locate()))
            elapsed = time.monotonic() - started
        [failed] = response(wire).batch_items
        assert failed.result_status == ResultStatus.OPERATION_FAILED
        assert failed.result_reason == ResultReason.GENERAL_FAILURE
        assert "unreachable" in failed.result_message
        assert elapsed < 0.1, f"a control operation took {elapsed * 1000:.0f} ms to fail"
        during = counts[0]
        time.sleep(0.5)
        assert counts[0] > during, "L4 operations stopped while the core was down"
        core.start()
        restarted = time.monotonic()
        gateway.wait_linked(more_than=links, timeout=5)
        with gateway.client() as client:
            while True:
                answered = response(client.send(request(locate()))).batch_items[0]
                if answered.result_status == ResultStatus.SUCCESS:
                    break
                assert time.monotonic() - restarted < 2.0, answered.result_message
                time.sleep(0.05)
        assert time.monotonic() - restarted < 2.0
    finally:
        done.set()
        load.join(timeout=10)
    assert errors == []
    assert counts[0] > 0


def test_cold_gateway_serves_a_tenant_admin_and_hides_it_from_another_tenant_as_the_core_does(
        tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.start()
    gateway = GatewayProcess(tmp_path / "gateway", core, prewarm=())
    try:
        gateway.start()
        gateway.wait_linked()
        with core.client("app") as app_at_core:
            token = ok(app_at_core.send(request(create_l4()))).unique_identifier
            sealed = ok(app_at_core.send(request(encrypt(token, b"a record"))))
        with core.client("admin") as admin_at_core:
            dek_at_core = ok(admin_at_core.send(request(get(token)))).object
        l3 = l4_token.parse(token).l3_uid
        with gateway.client("admin") as admin:  # no service of its own, nothing cached
            dek = ok(admin.send(request(get(token)))).object
            assert dek.key_block.key_value.key_material == \
                dek_at_core.key_block.key_value.key_material
            opened = ok(admin.send(request(item(Operation.DECRYPT, DecryptRequest(
                unique_identifier=token, data=sealed.data,
                iv_counter_nonce=sealed.iv_counter_nonce,
                authenticated_encryption_tag=sealed.authenticated_encryption_tag)))))
            assert opened.data == b"a record"
            ok(admin.send(request(encrypt(l3, b"k" * 32))))  # wraps a DEK with the L3
        for build, missing in ((lambda: request(get(token)), ResultReason.ITEM_NOT_FOUND),
                               (lambda: request(encrypt(l3)), ResultReason.ITEM_NOT_FOUND),
                               (lambda: request(get(token), version=(2, 1)),
                                ResultReason.OBJECT_NOT_FOUND)):
            with gateway.client("other_app") as stranger, core.client("other_app") as direct:
                at_gateway = comparable(stranger.send(build()))
                at_core = comparable(direct.send(build()))
            assert at_gateway == at_core
            # Another tenant's token or L3 is answered exactly as a missing one.
            assert at_gateway[0][3:] == (missing, object_not_found(l3).message)
    finally:
        gateway.stop()
        core.stop()
    log = gateway.log.read_text()
    assert "denied GET by spiffe://kcm.test/tenant/other/service/app" in log
    assert token not in log
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]  # JSON lines
    assert any(line["level"] == "warn" and line["text"].startswith("denied GET by ")
               for line in lines)



@pytest.mark.serial  # asserts timings: run alone, after the parallel part of `make test`
def test_subject_only_clients_follow_the_cores_policy_after_a_sighup(deployment) -> None:
    """The gateway resolves a subject-only certificate with the subject map the core pushed;
    after the core's policy file is edited and kcm-core gets SIGHUP, new connections follow
    the new map within a second or two (reassigned, then refused)."""
    core, gateway = deployment
    core.kcm("core", "service", "add", "demo", "legacy")
    policy = core.root / "policy.toml"
    with gateway.client("legacy") as legacy:  # mapped to demo/legacy by the core's file
        token = ok(legacy.send(request(create_l4()))).unique_identifier
    with gateway.client("app") as app:  # the token is bound to demo/legacy, not demo/app
        denied = response(app.send(request(get(token)))).batch_items[0]
        assert denied.result_reason == ResultReason.PERMISSION_DENIED

    policy.write_text('[subjects]\n"CN=legacy-client,O=KCM Dev" = "tenant/demo/service/app"\n')
    core.process.send_signal(signal.SIGHUP)

    def reassigned() -> bool:
        with gateway.client("legacy") as legacy:
            made = response(legacy.send(request(create_l4()))).batch_items[0]
        if made.result_status != ResultStatus.SUCCESS:
            return False
        with gateway.client("app") as app:  # an L4 of demo/app now: the app may use it
            got = response(app.send(request(get(made.response_payload.unique_identifier))))
        return got.batch_items[0].result_status == ResultStatus.SUCCESS

    assert wait_until(reassigned, "the legacy client to be demo/app", timeout=10) < 2.5
    assert "policy event" in core.log.read_text()

    policy.write_text("[subjects\n")  # a broken file leaves the policy as it was
    core.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "the policy is unchanged" in core.log.read_text(), "the failed reload")
    assert reassigned()

    policy.write_text("[subjects]\n")
    core.process.send_signal(signal.SIGHUP)

    def refused() -> bool:  # answered Permission Denied for its identity, then closed
        try:
            with gateway.client("legacy") as legacy:
                answer = response(legacy.send(request(create_l4()))).batch_items[0]
        except KmipClientError:
            return False
        return (answer.result_reason, answer.result_message) == (
            ResultReason.PERMISSION_DENIED, IDENTITY_REFUSED)

    assert wait_until(refused, "the legacy client to be refused", timeout=10) < 2.5
    with gateway.client("app") as app:  # everyone else is unaffected
        ok(app.send(request(create_l4())))
