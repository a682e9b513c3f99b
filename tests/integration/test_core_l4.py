"""L4 operations sent straight to kcm-core, in process: the engine over the store, tombstones
and their outbox events in the request's transaction (docs/link-protocol.md §3)."""

from __future__ import annotations

import json
import time

import pytest
from cryptography.hazmat.primitives import keywrap
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select

from kcm.core.hierarchy import provision_service
from kcm.core.l4_keys import service_key_of
from kcm.core.store import repository
from kcm.core.store.schema import AuditLog
from kcm.kernel.missing import object_not_found
from kcm.kmip.attributes import VENDOR_TAG, Attribute, CryptographicParameters, Link, Name
from kcm.kmip.enums import (
    BlockCipherMode,
    CryptographicAlgorithm,
    CryptographicUsageMask,
    EncodingOption,
    KeyFormatType,
    LinkType,
    NameType,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
    State,
    WrappingMethod,
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
from kcm.kmip.objects import (
    EncryptionKeyInformation,
    KeyValue,
    KeyWrappingSpecification,
    TransparentSymmetricKey,
)
from kcm.kmip.payloads import (
    CreateRequest,
    DecryptRequest,
    DestroyRequest,
    EncryptRequest,
    GetRequest,
    ReKeyRequest,
    RevocationReason,
    RevokeRequest,
)
from kcm.kmip.tags import Tag
from kcm.l4 import token
from kcm.link.frames import decode_payload
from kcm.ttlv import Item, ItemType, decode, encode
from tests.core_support import CoreHarness, admin_principal, service_principal

VERSIONS = [(1, 4), (2, 1)]


# Support ----------------------------------------------------------------------------
def call(core: CoreHarness, *items: tuple[Operation, object], version=(2, 1),
         principal=None) -> list[ResponseBatchItem]:
    header = RequestHeader(protocol_version=ProtocolVersion.of(version), batch_count=len(items))
    batch = [RequestBatchItem(operation=op, request_payload=payload) for op, payload in items]
    answer = core.client(principal).send(encode(encode_request(RequestMessage(header, batch))))
    return decode_response(decode(answer)).batch_items


def one(core: CoreHarness, op: Operation, payload: object, **kwargs) -> ResponseBatchItem:
    return call(core, (op, payload), **kwargs)[0]


def ok(item: ResponseBatchItem):
    assert item.result_status == ResultStatus.SUCCESS, (item.result_reason, item.result_message)
    return item.response_payload


def failed(item: ResponseBatchItem, reason: ResultReason) -> str:
    assert item.result_status == ResultStatus.OPERATION_FAILED, item.response_payload
    assert item.result_reason == reason, (ResultReason(item.result_reason), item.result_message)
    return item.result_message


def vendor(name: str, value: str) -> Attribute:
    return Attribute.vendor("x", name, Item(VENDOR_TAG, ItemType.TEXT_STRING, value))


def parent(l3_uid: str) -> Attribute:
    return Attribute.of(Tag.LINK, Link(link_type=LinkType.PARENT_LINK,
                                       linked_object_identifier=l3_uid))


def create_l4(core, *attributes: Attribute, **kwargs) -> str:
    if not attributes:
        attributes = (vendor("kcm-level", "L4"),)
    payload = ok(one(core, Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY, attributes=list(attributes)), **kwargs))
    return payload.unique_identifier


def current_l3(core, tenant="demo", service="app"):
    def read(session):
        rows = repository.find_l3(session, tenant, service)
        return service_key_of(session, core.keyring, rows[0], int(time.time()))
    return core.store.run_sync(read)


def get_key(core, uid, **kwargs) -> bytes:
    block = ok(one(core, Operation.GET, GetRequest(unique_identifier=uid), **kwargs)).object
    return block.key_block.key_value.key_material


def encrypt(core, uid, data, **kwargs):
    return one(core, Operation.ENCRYPT, EncryptRequest(unique_identifier=uid, data=data), **kwargs)


def decrypt(core, uid, data, iv, tag, **kwargs):
    return one(core, Operation.DECRYPT, DecryptRequest(
        unique_identifier=uid, data=data, iv_counter_nonce=iv,
        authenticated_encryption_tag=tag), **kwargs)


def revoke_request(uid, code=RevocationReasonCode.KEY_COMPROMISE) -> RevokeRequest:
    return RevokeRequest(unique_identifier=uid, revocation_reason=RevocationReason(code=code))


def outbox(core, kind: str):
    return [event for event in core.store.run_sync(lambda s: repository.outbox_since(s, 0))
            if event.kind == kind]


# Create and Get ---------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_create_by_level_marking_and_get_in_both_formats(core: CoreHarness, version) -> None:
    uid = create_l4(core, vendor("kcm-level", "L4"), version=version)
    assert uid.startswith("l4.1.")
    l3 = current_l3(core)
    assert l3.uid.startswith("l3-")
    assert token.parse(uid).l3_uid == l3.uid
    raw = get_key(core, uid, version=version)
    assert len(raw) == 32 and raw == token.open(uid, l3)
    answer = ok(one(core, Operation.GET, GetRequest(
        unique_identifier=uid, key_format_type=KeyFormatType.TRANSPARENT_SYMMETRIC_KEY),
        version=version))
    block = answer.object.key_block
    assert block.key_format_type == KeyFormatType.TRANSPARENT_SYMMETRIC_KEY
    assert block.key_value.key_material == TransparentSymmetricKey(key=raw)
    assert block.cryptographic_algorithm == CryptographicAlgorithm.AES
    assert block.cryptographic_length == 256


@pytest.mark.parametrize("version", VERSIONS)
def test_create_by_parent_link_with_a_length(core: CoreHarness, version) -> None:
    l3 = current_l3(core)
    uid = create_l4(core, parent(l3.uid),
                    Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
                    Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 128), version=version)
    assert token.parse(uid).l3_uid == l3.uid
    assert len(get_key(core, uid, version=version)) == 16


def test_create_refusals(core: CoreHarness) -> None:
    def create(*attributes, principal=None):
        return one(core, Operation.CREATE, CreateRequest(
            object_type=ObjectType.SYMMETRIC_KEY, attributes=list(attributes)),
            principal=principal)

    level = vendor("kcm-level", "L4")
    failed(create(level, Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 512)), ResultReason.INVALID_FIELD)
    name = Name(value="x", type=NameType.UNINTERPRETED_TEXT_STRING)
    message = failed(create(level, Attribute.of(Tag.NAME, name)), ResultReason.INVALID_FIELD)
    assert "not inventoried" in message
    failed(create(level, vendor("kcm-service", "billing")), ResultReason.PERMISSION_DENIED)
    failed(create(level, vendor("kcm-service", "nothing"), principal=admin_principal()),
           ResultReason.OBJECT_NOT_FOUND)
    failed(create(level, principal=admin_principal()), ResultReason.INVALID_FIELD)
    failed(create(parent("l3-00000000-0000-4000-8000-000000000000")),
           ResultReason.OBJECT_NOT_FOUND)
    # The mask is not kept: one without Encrypt and Decrypt would be ignored.
    for mask in (CryptographicUsageMask.DECRYPT, CryptographicUsageMask.ENCRYPT):
        message = failed(create(level, Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, int(mask))),
                         ResultReason.INVALID_FIELD)
        assert "must include Encrypt and Decrypt" in message
    both = CryptographicUsageMask.ENCRYPT | CryptographicUsageMask.DECRYPT
    ok(create(level, Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, int(both))))
    # A tenant administrator names the service.
    uid = ok(create(level, vendor("kcm-service", "app"), principal=admin_principal()))
    assert uid.unique_identifier.startswith("l4.1.")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("encoding", [EncodingOption.NO_ENCODING, None])
def test_get_wrapped_with_the_l3(core: CoreHarness, version, encoding) -> None:
    uid = create_l4(core)
    raw = get_key(core, uid)
    l3 = current_l3(core)
    spec = KeyWrappingSpecification(
        wrapping_method=WrappingMethod.ENCRYPT, encoding_option=encoding,
        encryption_key_information=EncryptionKeyInformation(unique_identifier=l3.uid))
    block = ok(one(core, Operation.GET, GetRequest(unique_identifier=uid,
                                                  key_wrapping_specification=spec),
                   version=version)).object.key_block
    assert block.key_wrapping_data.encryption_key_information.unique_identifier == l3.uid
    wrapped = block.key_value
    if encoding == EncodingOption.NO_ENCODING:
        if version < (2, 0):
            wrapped = wrapped.key_material
        assert keywrap.aes_key_unwrap(l3.key, wrapped) == raw
    else:
        value = KeyValue.from_item(decode(keywrap.aes_key_unwrap(l3.key, wrapped)), version)
        assert value.key_material == raw


# Encrypt and Decrypt ----------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_encrypt_and_decrypt_a_record(core: CoreHarness, version) -> None:
    uid = create_l4(core, version=version)
    record = b"a record of the application" * 3
    answer = ok(encrypt(core, uid, record, version=version))
    assert len(answer.iv_counter_nonce) == 12 and len(answer.authenticated_encryption_tag) == 16
    dek = get_key(core, uid)
    assert AESGCM(dek).decrypt(answer.iv_counter_nonce,
                               answer.data + answer.authenticated_encryption_tag, None) == record
    plain = ok(decrypt(core, uid, answer.data, answer.iv_counter_nonce,
                       answer.authenticated_encryption_tag, version=version))
    assert plain.data == record
    failed(decrypt(core, uid, answer.data, answer.iv_counter_nonce, bytes(16), version=version),
           ResultReason.CRYPTOGRAPHIC_FAILURE)
    if version >= (1, 4):  # a prefix of the right tag, with no Tag Length saying so
        for length in (12, 8, 4):
            failed(decrypt(core, uid, answer.data, answer.iv_counter_nonce,
                           answer.authenticated_encryption_tag[:length], version=version),
                   ResultReason.CRYPTOGRAPHIC_FAILURE)


def test_cryptographic_parameters_are_honoured(core: CoreHarness) -> None:
    uid = create_l4(core)
    cbc = CryptographicParameters(block_cipher_mode=BlockCipherMode.CBC)
    answer = ok(one(core, Operation.ENCRYPT, EncryptRequest(
        unique_identifier=uid, data=bytes(32), cryptographic_parameters=cbc)))
    assert len(answer.iv_counter_nonce) == 16 and answer.authenticated_encryption_tag is None
    plain = ok(one(core, Operation.DECRYPT, DecryptRequest(
        unique_identifier=uid, data=answer.data, iv_counter_nonce=answer.iv_counter_nonce,
        cryptographic_parameters=cbc)))
    assert plain.data == bytes(32)
    failed(one(core, Operation.ENCRYPT, EncryptRequest(
        unique_identifier=uid, data=b"x", init_indicator=True)), ResultReason.FEATURE_NOT_SUPPORTED)


def test_wrap_and_unwrap_a_dek_with_the_l3(core: CoreHarness) -> None:
    l3 = current_l3(core)
    dek = bytes(range(32))
    answer = ok(encrypt(core, l3.uid, dek))
    assert AESGCM(l3.key).decrypt(answer.iv_counter_nonce,
                                  answer.data + answer.authenticated_encryption_tag, None) == dek
    plain = ok(decrypt(core, l3.uid, answer.data, answer.iv_counter_nonce,
                       answer.authenticated_encryption_tag))
    assert plain.data == dek


@pytest.mark.parametrize("version", VERSIONS)
def test_the_l3_neither_opens_nor_mints_tokens(core: CoreHarness, version) -> None:
    """The reviewer's attacks through kcm-core: a destroyed token's DEK recovered by a
    Decrypt with its L3 (its nonce, binding and tag), a token minted by an Encrypt with the
    binding, a raw-AES oracle (ECB, CBC, CTR), a client's IV, a short tag: all refused.
    With an L3 a client wraps DEKs with AES-GCM alone (docs/link-protocol.md §3)."""
    uid = create_l4(core, version=version)
    dek = get_key(core, uid, version=version)
    ok(one(core, Operation.DESTROY, DestroyRequest(unique_identifier=uid), version=version))
    missing = ResultReason.OBJECT_NOT_FOUND if version >= (2, 0) else ResultReason.ITEM_NOT_FOUND
    failed(one(core, Operation.GET, GetRequest(unique_identifier=uid), version=version), missing)
    sealed = token.parse(uid)
    binding = token.associated_data(sealed.l3_uuid, "demo", "app")
    gcm = CryptographicParameters(block_cipher_mode=BlockCipherMode.GCM, tag_length=16)
    unsupported = (ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS if version >= (2, 0)
                   else ResultReason.FEATURE_NOT_SUPPORTED)
    for parameters in (None, gcm):
        failed(one(core, Operation.DECRYPT, DecryptRequest(
            unique_identifier=sealed.l3_uid, data=sealed.ciphertext[:-16],
            cryptographic_parameters=parameters, iv_counter_nonce=sealed.nonce,
            authenticated_encryption_additional_data=binding,
            authenticated_encryption_tag=sealed.ciphertext[-16:]), version=version),
            ResultReason.INVALID_FIELD)
        for iv in (None, bytes(12)):
            failed(one(core, Operation.ENCRYPT, EncryptRequest(
                unique_identifier=sealed.l3_uid, data=dek, cryptographic_parameters=parameters,
                iv_counter_nonce=iv, authenticated_encryption_additional_data=binding),
                version=version), ResultReason.INVALID_FIELD)
    failed(one(core, Operation.ENCRYPT, EncryptRequest(
        unique_identifier=sealed.l3_uid, data=dek, iv_counter_nonce=sealed.nonce),
        version=version), ResultReason.INVALID_FIELD)
    for mode in (BlockCipherMode.ECB, BlockCipherMode.CBC, BlockCipherMode.CTR):
        message = failed(one(core, Operation.ENCRYPT, EncryptRequest(
            unique_identifier=sealed.l3_uid, data=bytes(16),
            cryptographic_parameters=CryptographicParameters(block_cipher_mode=mode)),
            version=version), unsupported)
        assert "AES-GCM only" in message
    failed(one(core, Operation.ENCRYPT, EncryptRequest(
        unique_identifier=sealed.l3_uid, data=dek,
        cryptographic_parameters=CryptographicParameters(tag_length=4)), version=version),
        unsupported)
    # What the L3 is for still works: a DEK wrapped and unwrapped with AES-GCM.
    wrapped = ok(encrypt(core, sealed.l3_uid, dek, version=version))
    tag = wrapped.authenticated_encryption_tag
    assert ok(decrypt(core, sealed.l3_uid, wrapped.data, wrapped.iv_counter_nonce, tag,
                      version=version)).data == dek


def test_a_generated_gcm_iv_is_never_under_96_bits(core: CoreHarness) -> None:
    """IV Length 64 would make the server draw 8-byte GCM IVs, with an L4 as with any key;
    a client's own 8-byte IV is still taken."""
    uid = create_l4(core)
    short = CryptographicParameters(block_cipher_mode=BlockCipherMode.GCM, iv_length=64)
    for random_iv in (None, True):
        failed(one(core, Operation.ENCRYPT, EncryptRequest(
            unique_identifier=uid, data=b"record", cryptographic_parameters=CryptographicParameters(
                block_cipher_mode=BlockCipherMode.GCM, iv_length=64, random_iv=random_iv))),
            ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS)
    answer = ok(one(core, Operation.ENCRYPT, EncryptRequest(
        unique_identifier=uid, data=b"record", cryptographic_parameters=short,
        iv_counter_nonce=bytes(8))))
    assert answer.iv_counter_nonce is None


def test_create_then_encrypt_in_one_batch_uses_the_id_placeholder(core: CoreHarness) -> None:
    items = call(core, (Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY, attributes=[vendor("kcm-level", "L4")])),
        (Operation.ENCRYPT, EncryptRequest(data=b"record")))
    uid = ok(items[0]).unique_identifier
    assert ok(items[1]).unique_identifier == uid


# Who may ----------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_another_tenants_token_or_l3_is_missing_another_services_denied(
        core: CoreHarness, version) -> None:
    """Who asks first: another tenant (or an application whose service was never
    provisioned) is answered exactly as for an unknown L3, and the attempt is audited as
    refused; another service of the same tenant is Permission Denied."""
    uid = create_l4(core)
    l3 = current_l3(core)
    strangers = (service_principal("other", "app"), admin_principal("other"),
                 service_principal("demo", "ghost"))
    missing = ResultReason.OBJECT_NOT_FOUND if version >= (2, 0) else ResultReason.ITEM_NOT_FOUND
    for principal in (*strangers, service_principal("demo", "billing")):
        reason = missing if principal in strangers else ResultReason.PERMISSION_DENIED
        answers = [
            one(core, Operation.GET, GetRequest(unique_identifier=uid), version=version,
                principal=principal),
            encrypt(core, uid, b"x", version=version, principal=principal),
            encrypt(core, l3.uid, b"x", version=version, principal=principal),
            one(core, Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                                      attributes=[parent(l3.uid)]),
                version=version, principal=principal),
            one(core, Operation.DESTROY, DestroyRequest(unique_identifier=uid),
                version=version, principal=principal)]
        for answer in answers:
            message = failed(answer, reason)
            if reason is missing:
                assert message == object_not_found(l3.uid).message
    rows = core.store.run_sync(lambda s: s.scalars(select(AuditLog).order_by(AuditLog.seq)).all())
    denied = [json.loads(row.detail)["denied"] for row in rows
              if row.detail and "denied" in json.loads(row.detail)]
    assert denied.count("another tenant's key") == 10
    assert denied.count("service demo/ghost is not provisioned") == 5
    assert denied.count("another service's key") == 5
    # The tenant's administrator may.
    assert get_key(core, uid, principal=admin_principal()) == get_key(core, uid)



def test_a_gateways_fetch_of_another_tenants_key_is_audited_as_refused(core: CoreHarness) -> None:
    """FETCH_SERVICE_KEY for a caller of another tenant (by the key's identifier or by its
    service's name): answered as a missing key, and audited in the caller's tenant with
    the gateway named and why (``denied``)."""
    import time

    from kcm.core.context import Caller
    from kcm.core.service_keys import AUDIT_OPERATION, fetch_service_keys
    from kcm.identity import Principal, Role
    from kcm.kmip.errors import KmipError
    from kcm.l4.authorize import no_service_key

    l3 = current_l3(core)  # demo/app's
    gateway = Principal(Role.GATEWAY, "kcm.test", name="gw1", uri="spiffe://kcm.test/gateway/gw1")
    caller = Caller(service_principal("other", "app"), "10.0.0.1:1", gateway=gateway)
    for uid, answer in ((l3.uid, object_not_found(l3.uid)),
                        (None, no_service_key("demo", "app"))):
        refused = core.store.run_sync(lambda s, uid=uid: fetch_service_keys(
            s, core.keyring, caller, "demo", "app", uid, now=int(time.time())))
        assert isinstance(refused, KmipError)
        assert (refused.reason, refused.message) == (answer.reason, answer.message)
    # An application whose service is not provisioned, asking for its own service's key.
    ghost = Caller(service_principal("demo", "ghost"), "10.0.0.1:1", gateway=gateway)
    refused = core.store.run_sync(lambda s: fetch_service_keys(
        s, core.keyring, ghost, "demo", "ghost", None, now=int(time.time())))
    assert refused.message == no_service_key("demo", "ghost").message
    rows = core.store.run_sync(lambda s: s.scalars(select(AuditLog).where(
        AuditLog.operation == AUDIT_OPERATION).order_by(AuditLog.seq)).all())
    assert [(r.tenant, r.gateway, json.loads(r.detail)) for r in rows] == [
        ("other", gateway.id, {"denied": "another tenant's key"})] * 2 + [
        ("demo", gateway.id, {"denied": "service demo/ghost is not provisioned"})]


def test_a_gateways_fetch_is_audited_in_the_callers_tenant_whatever_it_names(
        core: CoreHarness) -> None:
    """A fetch by the key's identifier, served, is audited in the caller's tenant even when
    the gateway named another (the tenant named is ignored then); an operator's, who has no
    tenant, in the tenant the gateway named."""
    import time

    from kcm.core.context import Caller
    from kcm.core.service_keys import AUDIT_OPERATION, fetch_service_keys
    from kcm.identity import Principal, Role
    from kcm.kmip.errors import KmipError

    l3 = current_l3(core)  # demo/app's
    gateway = Principal(Role.GATEWAY, "kcm.test", name="gw1", uri="spiffe://kcm.test/gateway/gw1")
    caller = Caller(service_principal("demo", "app"), "10.0.0.1:1", gateway=gateway)
    served = core.store.run_sync(lambda s: fetch_service_keys(
        s, core.keyring, caller, "other", "app", l3.uid, now=int(time.time())))
    assert not isinstance(served, KmipError) and [k.uid for k in served] == [l3.uid]
    operator = Caller(Principal(Role.OPERATOR, "kcm.test", name="ops",
                                uri="spiffe://kcm.test/operator/ops"), "10.0.0.1:1",
                      gateway=gateway)
    refused = core.store.run_sync(lambda s: fetch_service_keys(
        s, core.keyring, operator, "demo", "app", None, now=int(time.time())))
    assert isinstance(refused, KmipError)
    rows = core.store.run_sync(lambda s: s.scalars(select(AuditLog).where(
        AuditLog.operation == AUDIT_OPERATION).order_by(AuditLog.seq)).all())
    assert [(r.tenant, r.principal, r.result_reason is None) for r in rows[-2:]] == [
        ("demo", caller.principal.id, True), ("demo", operator.principal.id, False)]


def test_a_service_that_is_not_provisioned_creates_no_l4(core: CoreHarness) -> None:
    """Naming no key, only its own service (x-kcm-level = L4): answered as a service with no
    service key, and audited as a refusal of who asks."""
    from kcm.l4.authorize import no_service_key

    answer = one(core, Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY, attributes=[vendor("kcm-level", "L4")]),
        principal=service_principal("demo", "ghost"))
    assert failed(answer, ResultReason.OBJECT_NOT_FOUND) == no_service_key("demo",
                                                                            "ghost").message
    last = core.store.run_sync(lambda s: s.scalars(select(AuditLog).order_by(
        AuditLog.seq.desc()).limit(1)).one())
    assert json.loads(last.detail) == {"denied": "service demo/ghost is not provisioned"}

def test_malformed_and_forged_tokens_name_nothing(core: CoreHarness) -> None:
    uid = create_l4(core)
    forged = uid[:-4] + ("AAAA" if not uid.endswith("AAAA") else "BBBB")
    for bad, reason in (("l4.1.notatoken", ResultReason.OBJECT_NOT_FOUND),
                        (forged, ResultReason.OBJECT_NOT_FOUND)):
        failed(one(core, Operation.GET, GetRequest(unique_identifier=bad)), reason)
    failed(one(core, Operation.GET, GetRequest(unique_identifier="l4.1.x"), version=(1, 4)),
           ResultReason.ITEM_NOT_FOUND)


def test_audit_names_the_token_id_never_the_token(core: CoreHarness) -> None:
    uid = create_l4(core)
    ok(encrypt(core, uid, b"record"))
    rows = core.store.run_sync(lambda s: s.scalars(select(AuditLog).order_by(AuditLog.seq)).all())
    last = rows[-1]
    assert last.operation == "ENCRYPT"
    assert token.token_id(uid) in last.detail
    assert current_l3(core).uid in last.object_ids
    assert all(uid not in (row.object_ids + (row.detail or "")) for row in rows)


# Revoke, Destroy, and the L3's own lifecycle ----------------------------------------
@pytest.mark.parametrize(("version", "gone"), [((1, 4), ResultReason.ITEM_NOT_FOUND),
                                               ((2, 1), ResultReason.OBJECT_NOT_FOUND)])
def test_revoke_then_destroy_records_one_tombstone_and_event(core: CoreHarness, version,
                                                             gone) -> None:
    uid = create_l4(core)
    sealed = ok(encrypt(core, uid, b"record"))
    ok(one(core, Operation.REVOKE, revoke_request(uid), version=version))
    ok(one(core, Operation.DESTROY, DestroyRequest(unique_identifier=uid), version=version))

    token_id = token.token_id(uid)
    l3 = current_l3(core)
    stones = core.store.run_sync(lambda s: [(t.token_id, t.tenant, t.l3_uid, t.reason)
                                            for t in repository.tombstones_for(s, "demo")])
    assert stones == [(token_id, "demo", l3.uid, "revoked: KEY_COMPROMISE")]
    events = outbox(core, "l4.tombstone")
    assert len(events) == 1 and events[0].tenant == "demo"
    assert decode_payload(events[0].payload) == {"token_id": token_id,
                                                 "unique_identifier": l3.uid}

    failed(one(core, Operation.GET, GetRequest(unique_identifier=uid), version=version), gone)
    failed(encrypt(core, uid, b"more", version=version), gone)
    failed(decrypt(core, uid, sealed.data, sealed.iv_counter_nonce,
                   sealed.authenticated_encryption_tag, version=version), gone)


def test_a_failed_batch_leaves_no_tombstone(core: CoreHarness) -> None:
    from kcm.kmip.enums import BatchErrorContinuationOption
    uid = create_l4(core)
    header = RequestHeader(protocol_version=ProtocolVersion.of((2, 1)), batch_count=2,
                           batch_error_continuation_option=BatchErrorContinuationOption.UNDO)
    batch = [RequestBatchItem(operation=Operation.DESTROY,
                              request_payload=DestroyRequest(unique_identifier=uid)),
             RequestBatchItem(operation=Operation.DESTROY,
                              request_payload=DestroyRequest(unique_identifier="missing"))]
    answer = core.client().send(encode(encode_request(RequestMessage(header, batch))))
    items = decode_response(decode(answer)).batch_items
    assert items[0].result_status == ResultStatus.OPERATION_UNDONE
    assert core.store.run_sync(lambda s: repository.tombstones_for(s, "demo")) == []
    assert outbox(core, "l4.tombstone") == []
    assert get_key(core, uid)


def test_destroyed_l3_crypto_erases_its_l4s(core: CoreHarness) -> None:
    now = int(time.time())
    core.store.run_sync(lambda s: provision_service(s, core.keyring, "demo", "vault", now=now))
    admin = admin_principal()
    uid = create_l4(core, vendor("kcm-level", "L4"), vendor("kcm-service", "vault"),
                    principal=admin)
    sealed = ok(encrypt(core, uid, b"record", principal=admin))
    l3_uid = token.parse(uid).l3_uid
    ok(one(core, Operation.REVOKE, revoke_request(l3_uid, RevocationReasonCode.UNSPECIFIED),
           principal=admin))
    # Deactivated: decrypt-only.
    assert ok(decrypt(core, uid, sealed.data, sealed.iv_counter_nonce,
                      sealed.authenticated_encryption_tag, principal=admin)).data == b"record"
    failed(encrypt(core, uid, b"new", principal=admin), ResultReason.WRONG_KEY_LIFECYCLE_STATE)
    failed(encrypt(core, uid, b"new", principal=admin, version=(1, 4)),
           ResultReason.PERMISSION_DENIED)
    ok(one(core, Operation.DESTROY, DestroyRequest(unique_identifier=l3_uid), principal=admin))
    failed(decrypt(core, uid, sealed.data, sealed.iv_counter_nonce,
                   sealed.authenticated_encryption_tag, principal=admin),
           ResultReason.OBJECT_DESTROYED)
    failed(one(core, Operation.GET, GetRequest(unique_identifier=uid), principal=admin,
               version=(1, 4)), ResultReason.ITEM_NOT_FOUND)


def test_a_token_under_a_destroyed_l3_is_revoked_without_a_tombstone(
        core: CoreHarness) -> None:
    """Every token under a destroyed L3 is refused as crypto-erased, revoked or not: its
    Revoke and Destroy still succeed, and record nothing (no tombstone, no event) that the
    gateways would keep and the state sweeper delete again (kcm.core.destroyed_retention)."""
    now = int(time.time())
    core.store.run_sync(lambda s: provision_service(s, core.keyring, "demo", "vault", now=now))
    admin = admin_principal()
    uid = create_l4(core, vendor("kcm-level", "L4"), vendor("kcm-service", "vault"),
                    principal=admin)
    l3_uid = token.parse(uid).l3_uid
    ok(one(core, Operation.REVOKE, revoke_request(l3_uid, RevocationReasonCode.UNSPECIFIED),
           principal=admin))
    ok(one(core, Operation.DESTROY, DestroyRequest(unique_identifier=l3_uid), principal=admin))
    events = len(outbox(core, "l4.tombstone"))
    ok(one(core, Operation.REVOKE, revoke_request(uid), principal=admin))
    ok(one(core, Operation.DESTROY, DestroyRequest(unique_identifier=uid), principal=admin))
    assert core.store.run_sync(lambda s: repository.tombstones_for(s, "demo", l3_uid)) == []
    assert len(outbox(core, "l4.tombstone")) == events
    failed(encrypt(core, uid, b"new", principal=admin), ResultReason.OBJECT_DESTROYED)
    details = core.store.run_sync(lambda s: s.scalars(
        select(AuditLog.detail).where(AuditLog.operation.in_(("REVOKE", "DESTROY")))
        .order_by(AuditLog.seq.desc()).limit(2)).all())
    assert len(details) == 2
    assert all("not needed: its service key is destroyed" in d for d in details)


@pytest.mark.parametrize("version", [(1, 4), (2, 1)])
def test_a_key_format_type_no_version_defines_is_refused_as_at_the_gateway(
        core: CoreHarness, version) -> None:
    """The core's plain reader took a Get's Key Format Type as a number, so an undefined
    one was Key Format Type Not Supported here and Unknown Enumeration at a gateway (review
    6): it now leaves such a request to the general decoder, which refuses it as every
    undefined enumeration. An extension value is still the engine's to refuse."""
    uid = create_l4(core)
    reason = (ResultReason.UNKNOWN_ENUMERATION if version >= (2, 0)
              else ResultReason.INVALID_FIELD)
    refused = one(core, Operation.GET, GetRequest(unique_identifier=uid,
                                                  key_format_type=0x99), version=version)
    assert (refused.result_reason, refused.result_message) == (
        reason, "Key Format Type 0x00000099 is not defined")
    extension = one(core, Operation.GET, GetRequest(unique_identifier=uid,
                                                    key_format_type=0x80000001),
                    version=version)
    assert extension.result_reason == ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED


def test_rekeyed_l3_gets_an_l3_uid_and_new_l4s_use_it(core: CoreHarness) -> None:
    old = current_l3(core)
    old_l4 = create_l4(core)
    sealed = ok(encrypt(core, old_l4, b"record"))
    new_uid = ok(one(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=old.uid),
                     principal=admin_principal())).unique_identifier
    assert new_uid.startswith("l3-")
    assert current_l3(core).uid == new_uid
    assert token.parse(create_l4(core)).l3_uid == new_uid
    # The old version is decrypt-only now.
    assert ok(decrypt(core, old_l4, sealed.data, sealed.iv_counter_nonce,
                      sealed.authenticated_encryption_tag)).data == b"record"
    failed(encrypt(core, old_l4, b"new"), ResultReason.WRONG_KEY_LIFECYCLE_STATE)
    assert core.store.run_sync(
        lambda s: repository.get_object(s, "demo", old.uid).state) == State.DEACTIVATED
