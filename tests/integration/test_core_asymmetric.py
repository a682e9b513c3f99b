"""Create Key Pair, Sign, Signature Verify and Derive Key on an in-process kcm-core."""

from __future__ import annotations

import os
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from kcm.core import managed
from kcm.core.attribute_blob import decode_attributes
from kcm.core.context import OperationContext
from kcm.core.operations.create import server_attributes
from kcm.core.server_info import ServerInfo
from kcm.core.store import repository
from kcm.core.store.schema import LEVEL_SERVICE_KEY
from kcm.crypto import sealed_state
from kcm.crypto.rsa_keys import rsa_key_block_in_format
from kcm.crypto.sealed_state import StreamPart, seal_state
from kcm.crypto.signatures import SignatureSpec, pack_stream
from kcm.kmip.attributes import Attribute, CryptographicParameters, Link, Name
from kcm.kmip.enums import (
    BlockCipherMode,
    CryptographicAlgorithm,
    CryptographicUsageMask,
    DerivationMethod,
    DigitalSignatureAlgorithm,
    HashingAlgorithm,
    KeyFormatType,
    LinkType,
    NameType,
    ObjectType,
    Operation,
    PaddingMethod,
    ResultReason,
    ResultStatus,
    SecretDataType,
    State,
    ValidityIndicator,
)
from kcm.kmip.messages import (
    IdPlaceholder,
    ProtocolVersion,
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    decode_response,
    encode_request,
)
from kcm.kmip.objects import KeyBlock, KeyValue, SecretData, SymmetricKey
from kcm.kmip.payloads import (
    ActivateRequest,
    CreateKeyPairRequest,
    DerivationParameters,
    DeriveKeyRequest,
    SignatureVerifyRequest,
    SignRequest,
)
from kcm.kmip.tags import Tag
from kcm.ttlv import decode, encode
from tests.core_support import CoreHarness, service_principal

MESSAGE = b"This is a signed message."
SIGN, VERIFY = CryptographicUsageMask.SIGN, CryptographicUsageMask.VERIFY


def wire(*items: tuple[Operation, object], version=(2, 1)) -> bytes:
    header = RequestHeader(protocol_version=ProtocolVersion.of(version), batch_count=len(items))
    batch = [RequestBatchItem(operation=op, request_payload=payload) for op, payload in items]
    return encode(encode_request(RequestMessage(header, batch)))


def send(core: CoreHarness, *items: tuple[Operation, object], version=(2, 1), principal=None):
    answer = core.client(principal).send(wire(*items, version=version))
    return decode_response(decode(answer)).batch_items


def ok(items):
    for item in items:
        assert item.result_status == ResultStatus.SUCCESS, (item.result_reason,
                                                           item.result_message)
    return [item.response_payload for item in items]


def key_pair_request(length=2048, *, private_mask=SIGN, public_mask=VERIFY, name="pair",
                     activate=True) -> CreateKeyPairRequest:
    common = [Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.RSA),
              Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, length)]
    if activate:
        common.append(Attribute.of(Tag.ACTIVATION_DATE, int(time.time()) - 10))
    return CreateKeyPairRequest(
        common_attributes=common,
        private_key_attributes=[
            Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, int(private_mask)),
            Attribute.of(Tag.NAME, Name(value=f"{name} private",
                                        type=NameType.UNINTERPRETED_TEXT_STRING))],
        public_key_attributes=[
            Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, int(public_mask)),
            Attribute.of(Tag.NAME, Name(value=f"{name} public",
                                        type=NameType.UNINTERPRETED_TEXT_STRING))])


def create_pair(core: CoreHarness, **kwargs) -> tuple[str, str]:
    (payload,) = ok(send(core, (Operation.CREATE_KEY_PAIR, key_pair_request(**kwargs))))
    return payload.private_key_unique_identifier, payload.public_key_unique_identifier


def stored(core: CoreHarness, uid: str, tenant: str = "demo"):
    def read(session):
        row = repository.get_object(session, tenant, uid)
        return row.object_type, decode_attributes(row.attributes)
    return core.store.run_sync(read)


def public_key(core: CoreHarness, uid: str):
    def read(session):
        row = repository.get_object(session, "demo", uid)
        blob = core.keyring.unwrap(session, row)
        return managed._OBJECT_CODEC.decode(decode(blob[2:]), (2, 1))
    item = core.store.run_sync(read)
    block = KeyBlock.from_item(item.find(Tag.KEY_BLOCK))
    return block, serialization.load_der_public_key(block.key_value.key_material)


def pss(hashing=HashingAlgorithm.SHA_256) -> CryptographicParameters:
    return CryptographicParameters(padding_method=PaddingMethod.PSS,
                                   cryptographic_algorithm=CryptographicAlgorithm.RSA,
                                   hashing_algorithm=hashing)


# Create Key Pair ---------------------------------------------------------------------------
@pytest.mark.parametrize("length", [1024, 2048, 3072, 4096])
def test_create_key_pair_makes_linked_rsa_keys(core: CoreHarness, length: int) -> None:
    private_uid, public_uid = create_pair(core, length=length, activate=False)
    private_type, private_attributes = stored(core, private_uid)
    public_type, public_attributes = stored(core, public_uid)
    assert (private_type, public_type) == (ObjectType.PRIVATE_KEY, ObjectType.PUBLIC_KEY)

    def value(attributes, tag):
        return next(a.typed for a in attributes if a.tag == tag)
    assert value(private_attributes, Tag.LINK) == Link(
        link_type=LinkType.PUBLIC_KEY_LINK, linked_object_identifier=public_uid)
    assert value(public_attributes, Tag.LINK) == Link(
        link_type=LinkType.PRIVATE_KEY_LINK, linked_object_identifier=private_uid)
    assert value(private_attributes, Tag.CRYPTOGRAPHIC_LENGTH) == length
    assert value(private_attributes, Tag.CRYPTOGRAPHIC_USAGE_MASK) == SIGN
    assert value(public_attributes, Tag.CRYPTOGRAPHIC_USAGE_MASK) == VERIFY
    assert value(public_attributes, Tag.NAME).value == "pair public"
    assert value(public_attributes, Tag.STATE) == State.PRE_ACTIVE
    block, key = public_key(core, public_uid)
    assert block.key_format_type == KeyFormatType.PKCS_1
    assert key.key_size == length


def test_create_key_pair_1x_templates_and_id_placeholder(core: CoreHarness) -> None:
    request = key_pair_request(activate=False)
    payload, activated = ok(send(core, (Operation.CREATE_KEY_PAIR, request),
                                 (Operation.ACTIVATE, ActivateRequest()), version=(1, 2)))
    assert activated.unique_identifier == payload.private_key_unique_identifier


def test_create_key_pair_refuses_what_it_cannot_make(core: CoreHarness) -> None:
    request = key_pair_request(length=1000)
    (item,) = send(core, (Operation.CREATE_KEY_PAIR, request))
    assert item.result_reason == ResultReason.INVALID_FIELD
    request = key_pair_request()
    request.common_attributes[0] = Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM,
                                                CryptographicAlgorithm.AES)
    (item,) = send(core, (Operation.CREATE_KEY_PAIR, request))
    assert item.result_reason == ResultReason.INVALID_FIELD


def test_key_formats_for_get(core: CoreHarness) -> None:
    private_uid, public_uid = create_pair(core, activate=False)
    block, key = public_key(core, public_uid)
    x509 = rsa_key_block_in_format(ObjectType.PUBLIC_KEY, block, KeyFormatType.X_509)
    assert serialization.load_der_public_key(x509.key_value.key_material) == key
    transparent = rsa_key_block_in_format(ObjectType.PUBLIC_KEY, block,
                                          KeyFormatType.TRANSPARENT_RSA_PUBLIC_KEY)
    assert transparent.key_value.key_material.find(Tag.MODULUS).value == \
        key.public_numbers().n
    from kcm.kmip.errors import KmipError
    with pytest.raises(KmipError) as refused:
        rsa_key_block_in_format(ObjectType.PUBLIC_KEY, block, KeyFormatType.PKCS_8)
    assert refused.value.reason == ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED


# Sign and Signature Verify -------------------------------------------------------------------
@pytest.mark.parametrize("parameters", [
    pss(),
    pss(HashingAlgorithm.SHA_512),
    CryptographicParameters(padding_method=PaddingMethod.PKCS1_V1_5,
                            hashing_algorithm=HashingAlgorithm.SHA_384),
    CryptographicParameters(
        digital_signature_algorithm=DigitalSignatureAlgorithm.SHA_256_WITH_RSA_ENCRYPTION),
    None,
])
def test_sign_then_verify(core: CoreHarness, parameters) -> None:
    private_uid, public_uid = create_pair(core)
    (signed,) = ok(send(core, (Operation.SIGN, SignRequest(
        unique_identifier=private_uid, cryptographic_parameters=parameters, data=MESSAGE))))
    (verified,) = ok(send(core, (Operation.SIGNATURE_VERIFY, SignatureVerifyRequest(
        unique_identifier=public_uid, cryptographic_parameters=parameters, data=MESSAGE,
        signature_data=signed.signature_data))))
    assert verified.validity_indicator == ValidityIndicator.VALID
    (tampered,) = ok(send(core, (Operation.SIGNATURE_VERIFY, SignatureVerifyRequest(
        unique_identifier=public_uid, cryptographic_parameters=parameters,
        data=MESSAGE + b"!", signature_data=signed.signature_data))))
    assert tampered.validity_indicator == ValidityIndicator.INVALID


def test_signature_verifies_outside_the_server(core: CoreHarness) -> None:
    private_uid, public_uid = create_pair(core)
    (signed,) = ok(send(core, (Operation.SIGN, SignRequest(
        unique_identifier=private_uid, cryptographic_parameters=pss(), data=MESSAGE))))
    _, key = public_key(core, public_uid)
    key.verify(signed.signature_data, MESSAGE,
               padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                           salt_length=padding.PSS.DIGEST_LENGTH), hashes.SHA256())


def test_digested_data_and_streaming(core: CoreHarness) -> None:
    private_uid, public_uid = create_pair(core)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(MESSAGE)
    sha256 = CryptographicParameters(hashing_algorithm=HashingAlgorithm.SHA_256)
    (signed,) = ok(send(core, (Operation.SIGN, SignRequest(
        unique_identifier=private_uid, cryptographic_parameters=sha256,
        digested_data=digest.finalize()))))
    (first,) = ok(send(core, (Operation.SIGNATURE_VERIFY, SignatureVerifyRequest(
        unique_identifier=public_uid, data=MESSAGE[:10], init_indicator=True))))
    assert first.validity_indicator is None and first.correlation_value
    (last,) = ok(send(core, (Operation.SIGNATURE_VERIFY, SignatureVerifyRequest(
        unique_identifier=public_uid, data=MESSAGE[10:], correlation_value=first.correlation_value,
        final_indicator=True, signature_data=signed.signature_data))))
    assert last.validity_indicator == ValidityIndicator.VALID
    (forged,) = send(core, (Operation.SIGNATURE_VERIFY, SignatureVerifyRequest(
        unique_identifier=public_uid, data=b"x", correlation_value=b"\x01" + bytes(40),
        final_indicator=True, signature_data=signed.signature_data)))
    assert forged.result_reason == ResultReason.INVALID_CORRELATION_VALUE


def test_a_verify_stream_cannot_be_forged_from_the_public_key(core: CoreHarness) -> None:
    """A Public Key's material is public: a Correlation Value sealed under it (any stream,
    any part, an expiry ten years on) must not open. Verify streams are sealed under a
    secret only the server holds, and they still run."""
    private_uid, public_uid = create_pair(core, private_mask=SIGN | VERIFY)
    (signed,) = ok(send(core, (Operation.SIGN, SignRequest(unique_identifier=private_uid,
                                                           data=MESSAGE))))
    block, _ = public_key(core, public_uid)
    spec = SignatureSpec(int(PaddingMethod.PKCS1_V1_5), int(HashingAlgorithm.SHA_256), None,
                         int(HashingAlgorithm.SHA_256))
    forged = seal_state(block.key_value.key_material, b"kcm signature stream v1 ", public_uid,
                        pack_stream(False, spec, MESSAGE[:10]), os.urandom,
                        part=StreamPart(os.urandom(16), 12345,
                                        int(time.time()) + 10 * 365 * 86400))
    (answer,) = send(core, (Operation.SIGNATURE_VERIFY, SignatureVerifyRequest(
        unique_identifier=public_uid, data=MESSAGE[10:], correlation_value=forged,
        final_indicator=True, signature_data=signed.signature_data)))
    assert answer.result_status == ResultStatus.OPERATION_FAILED
    assert answer.result_reason == ResultReason.INVALID_CORRELATION_VALUE
    assert answer.result_message == "the Correlation Value is not one of this key's streams"
    for uid in (public_uid, private_uid):  # (a Private Key verifies too)
        (first,) = ok(send(core, (Operation.SIGNATURE_VERIFY, SignatureVerifyRequest(
            unique_identifier=uid, data=MESSAGE[:10], init_indicator=True))))
        (last,) = ok(send(core, (Operation.SIGNATURE_VERIFY, SignatureVerifyRequest(
            unique_identifier=uid, data=MESSAGE[10:], correlation_value=first.correlation_value,
            final_indicator=True, signature_data=signed.signature_data))))
        assert last.validity_indicator == ValidityIndicator.VALID
    # A value of one key's stream does not open for the other key of the pair.
    (first,) = ok(send(core, (Operation.SIGNATURE_VERIFY, SignatureVerifyRequest(
        unique_identifier=private_uid, data=MESSAGE[:10], init_indicator=True))))
    (moved,) = send(core, (Operation.SIGNATURE_VERIFY, SignatureVerifyRequest(
        unique_identifier=public_uid, data=MESSAGE[10:], correlation_value=first.correlation_value,
        final_indicator=True, signature_data=signed.signature_data)))
    assert moved.result_reason == ResultReason.INVALID_CORRELATION_VALUE


@pytest.mark.parametrize("operation", [Operation.SIGN, Operation.SIGNATURE_VERIFY])
def test_a_signature_streams_final_part_is_held_to_the_stream_limit(
        core: CoreHarness, monkeypatch: pytest.MonkeyPatch, operation: Operation) -> None:
    """The whole data of a stream, its Final part's included, is at most MAX_STREAM_BYTES
    (here made 64)."""
    monkeypatch.setattr(sealed_state, "MAX_STREAM_BYTES", 64)
    private_uid, public_uid = create_pair(core)
    signing = operation == Operation.SIGN
    make = SignRequest if signing else SignatureVerifyRequest
    uid = private_uid if signing else public_uid
    extra = {} if signing else {"signature_data": b"\x00" * 256}
    (first,) = ok(send(core, (operation, make(unique_identifier=uid, data=b"a" * 60,
                                              init_indicator=True))))
    (last,) = send(core, (operation, make(
        unique_identifier=uid, data=b"b" * 10, correlation_value=first.correlation_value,
        final_indicator=True, **extra)))
    assert last.result_reason == ResultReason.SERVER_LIMIT_EXCEEDED, last.result_message
    assert last.result_message == "streams are limited to 64 bytes"


@pytest.mark.parametrize(("version", "reason"), [
    ((2, 1), ResultReason.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK),
    ((1, 4), ResultReason.PERMISSION_DENIED),
])
def test_usage_mask_is_honoured(core: CoreHarness, version, reason) -> None:
    private_uid, public_uid = create_pair(core, private_mask=CryptographicUsageMask.DECRYPT,
                                          public_mask=CryptographicUsageMask.ENCRYPT)
    (item,) = send(core, (Operation.SIGN, SignRequest(unique_identifier=private_uid,
                                                      data=MESSAGE)), version=version)
    assert item.result_reason == reason
    (item,) = send(core, (Operation.SIGNATURE_VERIFY, SignatureVerifyRequest(
        unique_identifier=public_uid, data=MESSAGE, signature_data=b"x" * 256)), version=version)
    assert item.result_reason == reason


def test_state_type_and_tenant_are_checked(core: CoreHarness) -> None:
    private_uid, public_uid = create_pair(core, activate=False)
    (item,) = send(core, (Operation.SIGN, SignRequest(unique_identifier=private_uid,
                                                      data=MESSAGE)))
    assert item.result_reason == ResultReason.WRONG_KEY_LIFECYCLE_STATE
    ok(send(core, (Operation.ACTIVATE, ActivateRequest(unique_identifier=public_uid))))
    (item,) = send(core, (Operation.SIGN, SignRequest(unique_identifier=public_uid,
                                                      data=MESSAGE)))
    assert item.result_reason == ResultReason.INVALID_OBJECT_TYPE
    ok(send(core, (Operation.ACTIVATE, ActivateRequest(unique_identifier=private_uid))))
    (item,) = send(core, (Operation.SIGN, SignRequest(unique_identifier=private_uid,
                                                      data=MESSAGE)),
                   principal=service_principal("other"))
    assert item.result_reason == ResultReason.OBJECT_NOT_FOUND


# Derive Key -----------------------------------------------------------------------------------
def put(core: CoreHarness, managed_object, object_type: int, *,
        mask=CryptographicUsageMask.DERIVE_KEY, algorithm=None, length=None) -> str:
    """Store an object directly (Register is another module's; these tests need only Derive)."""
    def insert(session):
        ctx = OperationContext(session=session, caller=core.caller(), version=(2, 1),
                               now=int(time.time()), keyring=core.keyring,
                               server_info=ServerInfo(), id_placeholder=IdPlaceholder(),
                               random_bytes=core.keyring.random_bytes)
        uid = core.keyring.new_uid()
        attributes = [] if mask is None else [
            Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, int(mask))]
        managed.insert(ctx, uid=uid, object_type=object_type, managed_object=managed_object,
                       attributes=server_attributes(ctx, uid, object_type, attributes,
                                                    algorithm=algorithm, length=length))
        return uid
    return core.store.run_sync(insert)


def secret(value: bytes, kind=SecretDataType.PASSWORD) -> SecretData:
    return SecretData(secret_data_type=kind, key_block=KeyBlock(
        key_format_type=KeyFormatType.OPAQUE, key_value=KeyValue(key_material=value)))


def symmetric(algorithm, value: bytes) -> SymmetricKey:
    return SymmetricKey(key_block=KeyBlock(
        key_format_type=KeyFormatType.RAW, key_value=KeyValue(key_material=value),
        cryptographic_algorithm=algorithm, cryptographic_length=len(value) * 8))


def derived_value(core: CoreHarness, uid: str) -> bytes:
    def read(session):
        row = repository.get_object(session, "demo", uid)
        blob = core.keyring.unwrap(session, row)
        return managed._OBJECT_CODEC.decode(decode(blob[2:]), (2, 1))
    return core.store.run_sync(read).key_block.key_bytes


def derive(core: CoreHarness, object_type, bases, method, parameters, length, algorithm=None,
           version=(2, 1)):
    attributes = [Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, length)]
    if algorithm is not None:
        attributes.insert(0, Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, algorithm))
    return send(core, (Operation.DERIVE_KEY, DeriveKeyRequest(
        object_type=object_type, unique_identifiers=bases, derivation_method=method,
        derivation_parameters=parameters, attributes=attributes)), version=version)


def test_derive_pbkdf2_rfc6070(core: CoreHarness) -> None:
    password = put(core, secret(b"password"), ObjectType.SECRET_DATA)
    (payload,) = ok(derive(core, ObjectType.SYMMETRIC_KEY, [password], DerivationMethod.PBKDF2,
                           DerivationParameters(
                               cryptographic_parameters=CryptographicParameters(
                                   hashing_algorithm=HashingAlgorithm.SHA_1),
                               salt=b"salt", iteration_count=4096),
                           160, CryptographicAlgorithm.AES, version=(1, 2)))
    assert derived_value(core, payload.unique_identifier) == bytes.fromhex(
        "4b007901b765489abead49d926f721d065a429c1")
    _, attributes = stored(core, payload.unique_identifier)
    assert Attribute.of(Tag.LINK, Link(link_type=LinkType.DERIVATION_BASE_OBJECT_LINK,
                                       linked_object_identifier=password)) in attributes
    _, base_attributes = stored(core, password)
    assert Attribute.of(Tag.LINK, Link(
        link_type=LinkType.DERIVED_KEY_LINK,
        linked_object_identifier=payload.unique_identifier)) in base_attributes


def test_derive_hmac_is_hkdf_rfc5869(core: CoreHarness) -> None:
    seed = put(core, secret(b"\x0c" * 22, SecretDataType.SEED), ObjectType.SECRET_DATA)
    (payload,) = ok(derive(core, ObjectType.SECRET_DATA, [seed], DerivationMethod.HMAC,
                           DerivationParameters(
                               cryptographic_parameters=CryptographicParameters(
                                   hashing_algorithm=HashingAlgorithm.SHA_1),
                               derivation_data=b"", salt=b""), 336))
    assert derived_value(core, payload.unique_identifier) == bytes.fromhex(
        "2c91117204d745f3500d636a62f64f0ab3bae548aa53d423b0d1f27ebba6f5e5"
        "673a081d70cce7acfc48")


def test_derive_nist_800_108_counter_mode(core: CoreHarness) -> None:
    base = put(core, symmetric(CryptographicAlgorithm.AES, bytes.fromhex(
        "dd5dbd45593ee2ac139748e7645b450f223d2ff297b73fd71cbcebe71d41653c"
        "950b88500de5322d99ef18dfdd30428294c4b3094f4c954334e593bd982ec614")),
        ObjectType.SYMMETRIC_KEY, algorithm=CryptographicAlgorithm.AES, length=512)
    (payload,) = ok(derive(core, ObjectType.SYMMETRIC_KEY, [base],
                           DerivationMethod.NIST800_108_C, DerivationParameters(
                               cryptographic_parameters=CryptographicParameters(
                                   hashing_algorithm=HashingAlgorithm.SHA_512),
                               derivation_data=bytes.fromhex(
                                   "b50b0c963c6b3034b8cf19cd3f5c4ebe4f4985af0c03e575db62e6fd"
                                   "f1ecfe4f28b95d7ce16df85843246e1557ce95bb26cc9a21974bbd2e"
                                   "b69e8355")),
                           128, CryptographicAlgorithm.AES))
    assert derived_value(core, payload.unique_identifier) == bytes.fromhex(
        "e5993bf9bd2aa1c45746042e12598155")


def test_derive_by_blowfish_encryption(core: CoreHarness) -> None:
    base = put(core, symmetric(CryptographicAlgorithm.BLOWFISH,
                               bytes.fromhex("0123456789ABCDEFF0E1D2C3B4A59687")),
               ObjectType.SYMMETRIC_KEY, algorithm=CryptographicAlgorithm.BLOWFISH, length=128)
    (payload,) = ok(derive(core, ObjectType.SECRET_DATA, [base], DerivationMethod.ENCRYPT,
                           DerivationParameters(
                               cryptographic_parameters=CryptographicParameters(
                                   block_cipher_mode=BlockCipherMode.CBC,
                                   padding_method=PaddingMethod.PKCS5,
                                   cryptographic_algorithm=CryptographicAlgorithm.BLOWFISH),
                               initialization_vector=bytes.fromhex("FEDCBA9876543210"),
                               derivation_data=b"7654321 Now is the time for \x00"),
                           256))
    assert derived_value(core, payload.unique_identifier) == bytes.fromhex(
        "6B77B4D63006DEE605B156E27403979358DEB9E7154616D9749DECBEC05D264B")


def test_derive_refuses_a_base_without_the_derive_bit(core: CoreHarness) -> None:
    base = put(core, secret(b"password"), ObjectType.SECRET_DATA,
               mask=CryptographicUsageMask.ENCRYPT)
    (item,) = derive(core, ObjectType.SYMMETRIC_KEY, [base], DerivationMethod.PBKDF2,
                     DerivationParameters(salt=b"salt", iteration_count=10), 128,
                     CryptographicAlgorithm.AES)
    assert item.result_reason == ResultReason.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK
    (item,) = derive(core, ObjectType.SYMMETRIC_KEY, [base], DerivationMethod.PBKDF2,
                     DerivationParameters(salt=b"salt", iteration_count=10), 128,
                     CryptographicAlgorithm.AES, version=(1, 4))
    assert item.result_reason == ResultReason.PERMISSION_DENIED


def test_derive_refuses_a_base_named_twice(core: CoreHarness) -> None:
    seed = put(core, secret(b"\x0c" * 22, SecretDataType.SEED), ObjectType.SECRET_DATA)
    parameters = DerivationParameters(cryptographic_parameters=CryptographicParameters(
        hashing_algorithm=HashingAlgorithm.SHA_256), derivation_data=b"d", salt=b"s")
    for bases in ([seed, seed], [seed, seed, seed]):
        (item,) = derive(core, ObjectType.SECRET_DATA, bases, DerivationMethod.HMAC,
                         parameters, 256)
        assert item.result_reason == ResultReason.INVALID_FIELD, item.result_message
        assert item.result_message == f"the base object {seed[:16]}... is named twice"
    _, attributes = stored(core, seed)  # nothing was derived from it
    assert not [a for a in attributes if a.tag == Tag.LINK]


def test_derive_hash_oasis_derivekey_1(core: CoreHarness) -> None:
    """TC-DERIVEKEY-1 (KMIP 1.4 test cases): SHA-256 of the base key, cut to 128 bits."""
    base = put(core, symmetric(CryptographicAlgorithm.AES,
                               bytes.fromhex("00112233445566778899aabbccddeeff")),
               ObjectType.SYMMETRIC_KEY, mask=None, algorithm=CryptographicAlgorithm.AES,
               length=128)
    ok(send(core, (Operation.ACTIVATE, ActivateRequest(unique_identifier=base))))
    (payload,) = ok(derive(core, ObjectType.SYMMETRIC_KEY, [base], DerivationMethod.HASH,
                           DerivationParameters(cryptographic_parameters=CryptographicParameters(
                               hashing_algorithm=HashingAlgorithm.SHA_256)),
                           128, CryptographicAlgorithm.AES, version=(1, 4)))
    assert derived_value(core, payload.unique_identifier) == bytes.fromhex(
        "a8faed6abbf35c12a4b26e40f6feb19d")


def test_derive_hash_refuses_derivation_data(core: CoreHarness) -> None:
    """HASH with Derivation Data hashed the public data alone: every base key gave the same
    derived key. It is refused, and nothing is derived."""
    bases = [put(core, symmetric(CryptographicAlgorithm.AES, bytes([n]) * 32),
                 ObjectType.SYMMETRIC_KEY, algorithm=CryptographicAlgorithm.AES, length=256)
             for n in (1, 2)]
    for base in bases:
        ok(send(core, (Operation.ACTIVATE, ActivateRequest(unique_identifier=base))))
        (item,) = derive(core, ObjectType.SYMMETRIC_KEY, [base], DerivationMethod.HASH,
                         DerivationParameters(derivation_data=b"customer-42"), 256,
                         CryptographicAlgorithm.AES)
        assert item.result_reason == ResultReason.INVALID_FIELD, item.result_message
        assert item.result_message == "HASH derivation takes no Derivation Data"
        _, attributes = stored(core, base)
        assert not [a for a in attributes if a.tag == Tag.LINK]


def test_hierarchy_keys_cannot_be_derivation_bases(core: CoreHarness) -> None:
    l3 = core.store.run_sync(
        lambda s: repository.locate(s, "demo", levels={LEVEL_SERVICE_KEY}))
    (item,) = derive(core, ObjectType.SYMMETRIC_KEY, [l3[0]], DerivationMethod.HASH,
                     DerivationParameters(), 128, CryptographicAlgorithm.AES)
    assert item.result_reason == ResultReason.PERMISSION_DENIED


def test_digested_data_without_a_hash_is_the_encoded_digest(core: CoreHarness) -> None:
    """The OASIS TC-RSA-SIGN-DIGESTEDDATA cases: 16 bare bytes, no hash named."""
    private_uid, public_uid = create_pair(core)
    digest = bytes(range(1, 17))
    (signed,) = ok(send(core, (Operation.SIGN, SignRequest(unique_identifier=private_uid,
                                                           digested_data=digest))))
    _, key = public_key(core, public_uid)
    assert key.recover_data_from_signature(signed.signature_data, padding.PKCS1v15(),
                                           None) == digest
    (verified,) = ok(send(core, (Operation.SIGNATURE_VERIFY, SignatureVerifyRequest(
        unique_identifier=public_uid, digested_data=digest,
        signature_data=signed.signature_data))))
    assert verified.validity_indicator == ValidityIndicator.VALID


def test_protect_stop_date_ends_signing(core: CoreHarness) -> None:
    request = key_pair_request()
    request.common_attributes.append(Attribute.of(Tag.PROTECT_STOP_DATE,
                                                  int(time.time()) - 5))
    (payload,) = ok(send(core, (Operation.CREATE_KEY_PAIR, request)))
    (item,) = send(core, (Operation.SIGN, SignRequest(
        unique_identifier=payload.private_key_unique_identifier, data=MESSAGE)))
    assert item.result_reason == ResultReason.WRONG_KEY_LIFECYCLE_STATE
