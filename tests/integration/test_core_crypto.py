"""Encrypt, Decrypt and Check through kcm-core's request handler, in process.

Keys with known bytes are stored directly (as Register would), so the expected outputs are
the published test vectors: NIST SP 800-38A (ECB, CBC, CTR), the GCM paper's test cases
(McGrew & Viega), and the OASIS CS-BC cases.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from kcm.conformance.runner import run_case
from kcm.core import managed
from kcm.core.attribute_blob import decode_attributes
from kcm.core.context import OperationContext
from kcm.core.operations.create import server_attributes
from kcm.core.server_info import ServerInfo
from kcm.core.store import repository
from kcm.kmip.attributes import Attribute, CryptographicParameters
from kcm.kmip.enums import (
    BatchErrorContinuationOption,
    BlockCipherMode,
    CryptographicAlgorithm,
    CryptographicUsageMask,
    KeyFormatType,
    ObjectType,
    Operation,
    PaddingMethod,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
    State,
    UsageLimitsUnit,
)
from kcm.kmip.messages import (
    IdPlaceholder,
    ProtocolVersion,
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    ResponseBatchItem,
    decode_response,
    encode_request,
)
from kcm.kmip.objects import KeyBlock, KeyValue, SymmetricKey
from kcm.kmip.payloads import (
    CheckRequest,
    DecryptRequest,
    EncryptRequest,
    RevocationReason,
    RevokeRequest,
)
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType, decode, encode
from tests.core_support import CoreHarness, admin_principal, service_principal

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "kmip-vectors"
if not VECTORS.is_dir():
    VECTORS = Path("/work/shared/kmip-vectors")

# NIST SP 800-38A F.1.1 / F.2.1 / F.5.1 (AES-128).
NIST_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
NIST_PLAIN = bytes.fromhex("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51")
NIST_IV = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
NIST_CTR = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
ECB_CIPHER = bytes.fromhex("3ad77bb40d7a3660a89ecaf32466ef97f5d3d58503b9699de785895a96fdbaaf")
CBC_CIPHER = bytes.fromhex("7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2")
CTR_CIPHER = bytes.fromhex("874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff")

# GCM test case 4 (AES-128, 96-bit IV, AAD, 60-byte plaintext).
GCM_KEY = bytes.fromhex("feffe9928665731c6d6a8f9467308308")
GCM_IV = bytes.fromhex("cafebabefacedbaddecaf888")
GCM_AAD = bytes.fromhex("feedfacedeadbeeffeedfacedeadbeefabaddad2")
GCM_PLAIN = bytes.fromhex(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
    "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39")
GCM_CIPHER = bytes.fromhex(
    "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e"
    "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091")
GCM_TAG = bytes.fromhex("5bc94fbc3221a5db94fae95ae7121a47")

ENCRYPT_DECRYPT = CryptographicUsageMask.ENCRYPT | CryptographicUsageMask.DECRYPT


# Support ----------------------------------------------------------------------------
def store_key(core: CoreHarness, key: bytes, *, tenant: str = "demo",
              algorithm: int = CryptographicAlgorithm.AES, state: State = State.ACTIVE,
              mask: int | None = ENCRYPT_DECRYPT, extra: list[Attribute] | None = None,
              object_type: int = ObjectType.SYMMETRIC_KEY) -> str:
    """Store a symmetric key with known bytes in ``tenant`` (as Register would)."""
    now = int(time.time())
    attributes = [] if mask is None else [Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, mask)]
    attributes += extra or []

    def insert(session) -> str:
        principal = service_principal(tenant)
        ctx = OperationContext(session=session, caller=core.caller(principal), version=(2, 1),
                               now=now, keyring=core.keyring, server_info=ServerInfo(),
                               id_placeholder=IdPlaceholder(),
                               random_bytes=core.keyring.random_bytes)
        uid = core.keyring.new_uid()
        length = 168 if algorithm == CryptographicAlgorithm.DES3 else len(key) * 8
        stored = server_attributes(ctx, uid, object_type, attributes, algorithm=algorithm,
                                   length=length, state=state)
        block = KeyBlock(key_format_type=KeyFormatType.RAW,
                         key_value=KeyValue(key_material=key),
                         cryptographic_algorithm=algorithm, cryptographic_length=length)
        managed.insert(ctx, uid=uid, object_type=object_type, attributes=stored,
                       managed_object=SymmetricKey(key_block=block))
        return uid

    return core.store.run_sync(insert)


def call(core: CoreHarness, *items: tuple[Operation, object], version=(2, 1),
         principal=None, continuation=None) -> list[ResponseBatchItem]:
    header = RequestHeader(protocol_version=ProtocolVersion.of(version), batch_count=len(items),
                           batch_error_continuation_option=continuation)
    batch = [RequestBatchItem(operation=op, request_payload=payload) for op, payload in items]
    wire = encode(encode_request(RequestMessage(header, batch)))
    answer = core.client(principal).send(wire)
    return decode_response(decode(answer)).batch_items


def one(core: CoreHarness, op: Operation, payload: object, **kwargs) -> ResponseBatchItem:
    return call(core, (op, payload), **kwargs)[0]


def ok(item: ResponseBatchItem):
    assert item.result_status == ResultStatus.SUCCESS, (item.result_reason, item.result_message)
    return item.response_payload


def failed(item: ResponseBatchItem, reason: ResultReason) -> None:
    assert item.result_status == ResultStatus.OPERATION_FAILED
    assert item.result_reason == reason, (ResultReason(item.result_reason), item.result_message)


def params(mode: int | None = None, padding: int | None = None, **kwargs):
    return CryptographicParameters(block_cipher_mode=mode, padding_method=padding, **kwargs)


def encrypt(core, uid, data, cp=None, **kwargs):
    return one(core, Operation.ENCRYPT, EncryptRequest(
        unique_identifier=uid, cryptographic_parameters=cp, data=data,
        **{k: v for k, v in kwargs.items() if k not in ("version", "principal")}),
        **{k: v for k, v in kwargs.items() if k in ("version", "principal")})


def decrypt(core, uid, data, cp=None, **kwargs):
    return one(core, Operation.DECRYPT, DecryptRequest(
        unique_identifier=uid, cryptographic_parameters=cp, data=data,
        **{k: v for k, v in kwargs.items() if k not in ("version", "principal")}),
        **{k: v for k, v in kwargs.items() if k in ("version", "principal")})


def revoke(core, uid, code=RevocationReasonCode.UNSPECIFIED) -> None:
    ok(one(core, Operation.REVOKE, RevokeRequest(
        unique_identifier=uid, revocation_reason=RevocationReason(code=code))))


# Modes and padding --------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "iv", "expected"), [
    (BlockCipherMode.ECB, None, ECB_CIPHER),
    (BlockCipherMode.CBC, NIST_IV, CBC_CIPHER),
    (BlockCipherMode.CTR, NIST_CTR, CTR_CIPHER),
])
def test_nist_vectors_per_mode(core: CoreHarness, mode, iv, expected) -> None:
    uid = store_key(core, NIST_KEY)
    cp = params(mode, PaddingMethod.NONE)
    answer = ok(encrypt(core, uid, NIST_PLAIN, cp, iv_counter_nonce=iv))
    assert answer.data == expected
    assert answer.iv_counter_nonce is None  # the client chose it
    assert ok(decrypt(core, uid, expected, cp, iv_counter_nonce=iv)).data == NIST_PLAIN


def test_pkcs5_padding_round_trip_and_bad_padding(core: CoreHarness) -> None:
    uid = store_key(core, NIST_KEY)
    cp = params(BlockCipherMode.CBC, PaddingMethod.PKCS5)
    for length in (0, 1, 15, 16, 17, 33):
        data = bytes(range(length))
        sealed = ok(encrypt(core, uid, data, cp, iv_counter_nonce=NIST_IV)).data
        assert len(sealed) == (length // 16 + 1) * 16
        assert ok(decrypt(core, uid, sealed, cp, iv_counter_nonce=NIST_IV)).data == data
    # A ciphertext whose last block does not unpad.
    raw = Cipher(algorithms.AES(NIST_KEY), modes.CBC(NIST_IV)).encryptor().update(bytes(16))
    failed(decrypt(core, uid, raw, cp, iv_counter_nonce=NIST_IV),
           ResultReason.CRYPTOGRAPHIC_FAILURE)


def test_unpadded_lengths_are_checked(core: CoreHarness) -> None:
    uid = store_key(core, NIST_KEY)
    cp = params(BlockCipherMode.ECB)
    failed(encrypt(core, uid, b"x" * 15, cp), ResultReason.INVALID_FIELD)
    failed(decrypt(core, uid, b"x" * 17, cp), ResultReason.CRYPTOGRAPHIC_FAILURE)
    failed(encrypt(core, uid, NIST_PLAIN, params(BlockCipherMode.CBC),
                   iv_counter_nonce=b"short"), ResultReason.INVALID_FIELD)


def test_triple_des_cbc(core: CoreHarness) -> None:
    key = bytes.fromhex("0123456789abcdef23456789abcdef01456789abcdef0123")
    uid = store_key(core, key, algorithm=CryptographicAlgorithm.DES3)
    answer = ok(encrypt(core, uid, b"three keys", params(BlockCipherMode.CBC,
                                                         PaddingMethod.PKCS5)))
    assert len(answer.iv_counter_nonce) == 8 and len(answer.data) == 16
    back = decrypt(core, uid, answer.data, params(BlockCipherMode.CBC, PaddingMethod.PKCS5),
                   iv_counter_nonce=answer.iv_counter_nonce)
    assert ok(back).data == b"three keys"


def test_unsupported_mode(core: CoreHarness) -> None:
    uid = store_key(core, NIST_KEY)
    failed(encrypt(core, uid, NIST_PLAIN, params(BlockCipherMode.XTS)),
           ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS)
    failed(encrypt(core, uid, NIST_PLAIN, params(BlockCipherMode.XTS), version=(1, 4)),
           ResultReason.FEATURE_NOT_SUPPORTED)
    failed(encrypt(core, uid, NIST_PLAIN, params(BlockCipherMode.GCM, PaddingMethod.PKCS5)),
           ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS)


# GCM ------------------------------------------------------------------------------------
def test_gcm_with_aad_and_tag(core: CoreHarness) -> None:
    uid = store_key(core, GCM_KEY)
    cp = params(BlockCipherMode.GCM, tag_length=16)
    answer = ok(encrypt(core, uid, GCM_PLAIN, cp, iv_counter_nonce=GCM_IV,
                        authenticated_encryption_additional_data=GCM_AAD))
    assert answer.data == GCM_CIPHER
    assert answer.authenticated_encryption_tag == GCM_TAG
    plain = decrypt(core, uid, GCM_CIPHER, cp, iv_counter_nonce=GCM_IV,
                    authenticated_encryption_additional_data=GCM_AAD,
                    authenticated_encryption_tag=GCM_TAG)
    assert ok(plain).data == GCM_PLAIN
    # Truncated tags (Tag Length in bytes) are prefixes of the full one.
    short = ok(encrypt(core, uid, GCM_PLAIN, params(BlockCipherMode.GCM, tag_length=12),
                       iv_counter_nonce=GCM_IV, authenticated_encryption_additional_data=GCM_AAD))
    assert short.authenticated_encryption_tag == GCM_TAG[:12]
    plain = decrypt(core, uid, GCM_CIPHER, params(BlockCipherMode.GCM, tag_length=12),
                    iv_counter_nonce=GCM_IV, authenticated_encryption_additional_data=GCM_AAD,
                    authenticated_encryption_tag=GCM_TAG[:12])
    assert ok(plain).data == GCM_PLAIN


@pytest.mark.parametrize("tamper", ["tag", "data", "aad", "iv", "short-tag", "prefix-12",
                                    "prefix-8", "prefix-4"])
def test_gcm_refuses_anything_tampered(core: CoreHarness, tamper: str) -> None:
    uid = store_key(core, GCM_KEY)
    fields = {"data": GCM_CIPHER, "iv_counter_nonce": GCM_IV,
              "authenticated_encryption_additional_data": GCM_AAD,
              "authenticated_encryption_tag": GCM_TAG}
    if tamper == "short-tag":
        fields["authenticated_encryption_tag"] = GCM_TAG[:2]
    elif tamper.startswith("prefix-"):
        # A prefix of the right tag, with no Tag Length saying so: the Tag Length is 16.
        fields["authenticated_encryption_tag"] = GCM_TAG[:int(tamper[7:])]
    else:
        key = {"tag": "authenticated_encryption_tag", "data": "data",
               "aad": "authenticated_encryption_additional_data", "iv": "iv_counter_nonce"}[tamper]
        fields[key] = bytes([fields[key][0] ^ 1]) + fields[key][1:]
    data = fields.pop("data")
    failed(decrypt(core, uid, data, params(BlockCipherMode.GCM), **fields),
           ResultReason.CRYPTOGRAPHIC_FAILURE)


def test_gcm_tag_length_is_the_key_s_unless_the_request_says(core: CoreHarness) -> None:
    stored = Attribute.of(Tag.CRYPTOGRAPHIC_PARAMETERS, params(BlockCipherMode.GCM,
                                                               tag_length=12))
    uid = store_key(core, GCM_KEY, extra=[stored])
    fields = {"iv_counter_nonce": GCM_IV, "authenticated_encryption_additional_data": GCM_AAD}
    plain = decrypt(core, uid, GCM_CIPHER, authenticated_encryption_tag=GCM_TAG[:12], **fields)
    assert ok(plain).data == GCM_PLAIN
    for tag in (GCM_TAG, GCM_TAG[:8]):
        failed(decrypt(core, uid, GCM_CIPHER, authenticated_encryption_tag=tag, **fields),
               ResultReason.CRYPTOGRAPHIC_FAILURE)
    plain = decrypt(core, uid, GCM_CIPHER, params(tag_length=8),
                    authenticated_encryption_tag=GCM_TAG[:8], **fields)
    assert ok(plain).data == GCM_PLAIN


def test_gcm_bad_tag_length_and_missing_tag(core: CoreHarness) -> None:
    uid = store_key(core, GCM_KEY)
    # The OASIS CS-BC-M-GCM-1 case expects General Failure for Tag Length 1 or 32.
    failed(encrypt(core, uid, GCM_PLAIN, params(BlockCipherMode.GCM, tag_length=32),
                   iv_counter_nonce=GCM_IV), ResultReason.GENERAL_FAILURE)
    failed(decrypt(core, uid, GCM_CIPHER, params(BlockCipherMode.GCM), iv_counter_nonce=GCM_IV),
           ResultReason.INVALID_MESSAGE)


def test_default_is_aes_gcm_with_a_server_iv(core: CoreHarness) -> None:
    uid = store_key(core, GCM_KEY)
    first = ok(encrypt(core, uid, b"record"))
    second = ok(encrypt(core, uid, b"record"))
    assert len(first.iv_counter_nonce) == 12 and len(first.authenticated_encryption_tag) == 16
    assert first.iv_counter_nonce != second.iv_counter_nonce
    expected = Cipher(algorithms.AES(GCM_KEY), modes.GCM(first.iv_counter_nonce)).encryptor()
    assert first.data == expected.update(b"record")
    back = decrypt(core, uid, first.data, iv_counter_nonce=first.iv_counter_nonce,
                   authenticated_encryption_tag=first.authenticated_encryption_tag)
    assert ok(back).data == b"record"


# IVs and the key's own parameters ----------------------------------------------------------
def test_random_iv_from_the_key_attribute(core: CoreHarness) -> None:
    stored = params(BlockCipherMode.CBC, PaddingMethod.PKCS5, random_iv=True)
    uid = store_key(core, NIST_KEY, extra=[Attribute.of(Tag.CRYPTOGRAPHIC_PARAMETERS, stored)])
    answer = ok(encrypt(core, uid, b"hello"))
    assert len(answer.iv_counter_nonce) == 16 and len(answer.data) == 16
    failed(decrypt(core, uid, answer.data), ResultReason.INVALID_MESSAGE)  # missing IV
    assert ok(decrypt(core, uid, answer.data,
                      iv_counter_nonce=answer.iv_counter_nonce)).data == b"hello"
    # Random IV means the server chooses: a client IV is refused.
    failed(encrypt(core, uid, b"hello", iv_counter_nonce=NIST_IV), ResultReason.INVALID_FIELD)


def test_iv_length_parameter_is_in_bits(core: CoreHarness) -> None:
    uid = store_key(core, GCM_KEY)
    answer = ok(encrypt(core, uid, b"x", params(BlockCipherMode.GCM, random_iv=True,
                                                iv_length=128)))
    assert len(answer.iv_counter_nonce) == 16


def test_a_generated_gcm_iv_is_never_under_96_bits(core: CoreHarness) -> None:
    """NIST SP 800-38D §8.2.2: IV Length 64 would make the server draw 8-byte GCM IVs
    for a managed key; refused. A client's own 8-byte IV is still its choice."""
    uid = store_key(core, GCM_KEY)
    for random_iv in (None, True):
        failed(encrypt(core, uid, b"x", params(BlockCipherMode.GCM, random_iv=random_iv,
                                                 iv_length=64)),
               ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS)
    answer = ok(encrypt(core, uid, b"x", params(BlockCipherMode.GCM, iv_length=64),
                        iv_counter_nonce=bytes(8)))
    assert answer.iv_counter_nonce is None


# Streaming ------------------------------------------------------------------------------------
def test_gcm_stream_matches_one_shot(core: CoreHarness) -> None:
    uid = store_key(core, GCM_KEY)
    cp = params(BlockCipherMode.GCM)
    first = ok(encrypt(core, uid, GCM_PLAIN[:20], cp, iv_counter_nonce=GCM_IV,
                       authenticated_encryption_additional_data=GCM_AAD, init_indicator=True))
    assert first.correlation_value and first.authenticated_encryption_tag is None
    middle = ok(encrypt(core, uid, GCM_PLAIN[20:41], cp,
                        correlation_value=first.correlation_value))
    last = ok(encrypt(core, uid, GCM_PLAIN[41:], cp, correlation_value=middle.correlation_value,
                      final_indicator=True))
    assert first.data + middle.data + last.data == GCM_CIPHER
    assert last.authenticated_encryption_tag == GCM_TAG
    assert last.correlation_value is None

    # Decrypting a stream releases nothing before the tag has been checked.
    start = ok(decrypt(core, uid, GCM_CIPHER[:30], cp, iv_counter_nonce=GCM_IV,
                       authenticated_encryption_additional_data=GCM_AAD, init_indicator=True))
    assert start.data == b""
    end = ok(decrypt(core, uid, GCM_CIPHER[30:], cp, correlation_value=start.correlation_value,
                     final_indicator=True, authenticated_encryption_tag=GCM_TAG))
    assert end.data == GCM_PLAIN


def test_cbc_padded_stream(core: CoreHarness) -> None:
    uid = store_key(core, NIST_KEY)
    cp = params(BlockCipherMode.CBC, PaddingMethod.PKCS5)
    data = bytes(range(40))
    whole = ok(encrypt(core, uid, data, cp, iv_counter_nonce=NIST_IV)).data
    a = ok(encrypt(core, uid, data[:20], cp, iv_counter_nonce=NIST_IV, init_indicator=True))
    b = ok(encrypt(core, uid, data[20:], cp, correlation_value=a.correlation_value,
                   final_indicator=True))
    assert len(a.data) == 16 and a.data + b.data == whole
    c = ok(decrypt(core, uid, whole[:32], cp, iv_counter_nonce=NIST_IV, init_indicator=True))
    assert c.data == data[:16]  # the last whole block may be padding: held back
    d = ok(decrypt(core, uid, whole[32:], cp, correlation_value=c.correlation_value,
                   final_indicator=True))
    assert c.data + d.data == data


def test_forged_correlation_value_is_refused(core: CoreHarness) -> None:
    uid = store_key(core, GCM_KEY)
    other = store_key(core, GCM_KEY)
    start = ok(encrypt(core, uid, b"abc", params(BlockCipherMode.GCM), iv_counter_nonce=GCM_IV,
                       init_indicator=True))
    forged = start.correlation_value[:-1] + bytes([start.correlation_value[-1] ^ 1])
    failed(encrypt(core, uid, b"d", correlation_value=forged, final_indicator=True),
           ResultReason.INVALID_CORRELATION_VALUE)
    # Bound to its key: the same key bytes under another object do not open it.
    failed(encrypt(core, other, b"d", correlation_value=start.correlation_value),
           ResultReason.INVALID_CORRELATION_VALUE)
    failed(decrypt(core, uid, b"d", correlation_value=start.correlation_value),
           ResultReason.INVALID_CORRELATION_VALUE)
    failed(encrypt(core, uid, b"d", correlation_value=forged, version=(1, 4)),
           ResultReason.INVALID_FIELD)


# Lifecycle, usage, policy ---------------------------------------------------------------------
def test_deactivated_key_decrypts_but_does_not_encrypt(core: CoreHarness) -> None:
    uid = store_key(core, NIST_KEY)
    cp = params(BlockCipherMode.ECB)
    sealed = ok(encrypt(core, uid, NIST_PLAIN, cp)).data
    revoke(core, uid)  # Active -> Deactivated
    failed(encrypt(core, uid, NIST_PLAIN, cp), ResultReason.WRONG_KEY_LIFECYCLE_STATE)
    failed(encrypt(core, uid, NIST_PLAIN, cp, version=(1, 4)), ResultReason.PERMISSION_DENIED)
    assert ok(decrypt(core, uid, sealed, cp)).data == NIST_PLAIN


def test_compromised_key_decrypts_pre_active_key_does_nothing(core: CoreHarness) -> None:
    uid = store_key(core, NIST_KEY)
    cp = params(BlockCipherMode.ECB)
    revoke(core, uid, RevocationReasonCode.KEY_COMPROMISE)
    failed(encrypt(core, uid, NIST_PLAIN, cp), ResultReason.WRONG_KEY_LIFECYCLE_STATE)
    assert ok(decrypt(core, uid, ECB_CIPHER, cp)).data == NIST_PLAIN
    pre = store_key(core, NIST_KEY, state=State.PRE_ACTIVE)
    failed(decrypt(core, pre, ECB_CIPHER, cp), ResultReason.WRONG_KEY_LIFECYCLE_STATE)


def test_protect_stop_and_process_start_dates(core: CoreHarness) -> None:
    now = int(time.time())
    uid = store_key(core, NIST_KEY, extra=[
        Attribute.of(Tag.PROTECT_STOP_DATE, now - 60, ItemType.DATE_TIME),
        Attribute.of(Tag.PROCESS_START_DATE, now + 3600, ItemType.DATE_TIME)])
    cp = params(BlockCipherMode.ECB)
    failed(encrypt(core, uid, NIST_PLAIN, cp), ResultReason.WRONG_KEY_LIFECYCLE_STATE)
    failed(decrypt(core, uid, ECB_CIPHER, cp, version=(1, 4)), ResultReason.PERMISSION_DENIED)


def test_usage_mask_is_enforced(core: CoreHarness) -> None:
    uid = store_key(core, NIST_KEY, mask=CryptographicUsageMask.DECRYPT)
    cp = params(BlockCipherMode.ECB)
    failed(encrypt(core, uid, NIST_PLAIN, cp),
           ResultReason.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK)
    failed(encrypt(core, uid, NIST_PLAIN, cp, version=(1, 4)), ResultReason.PERMISSION_DENIED)
    assert ok(decrypt(core, uid, ECB_CIPHER, cp)).data == NIST_PLAIN
    unrestricted = store_key(core, NIST_KEY, mask=None)
    assert ok(encrypt(core, unrestricted, NIST_PLAIN, cp)).data == ECB_CIPHER


def test_usage_limits_count_down_on_encrypt(core: CoreHarness) -> None:
    limits = Attribute.of(Tag.USAGE_LIMITS, [
        Item(Tag.USAGE_LIMITS_TOTAL, ItemType.LONG_INTEGER, 48),
        Item(Tag.USAGE_LIMITS_UNIT, ItemType.ENUMERATION, int(UsageLimitsUnit.BYTE))],
        ItemType.STRUCTURE)
    uid = store_key(core, NIST_KEY, extra=[limits])
    cp = params(BlockCipherMode.ECB)
    ok(encrypt(core, uid, NIST_PLAIN, cp))  # 32 of 48 bytes
    ok(decrypt(core, uid, ECB_CIPHER, cp))  # decryption does not count (KMIP 1.4 §3.21)
    failed(encrypt(core, uid, NIST_PLAIN, cp), ResultReason.PERMISSION_DENIED)
    ok(encrypt(core, uid, NIST_PLAIN[:16], cp))  # exactly what is left
    failed(one(core, Operation.CHECK, CheckRequest(unique_identifier=uid, usage_limits_count=1)),
           ResultReason.USAGE_LIMIT_EXCEEDED)

    def count(session):
        obj = repository.get_object(session, "demo", uid)
        limits = [a for a in decode_attributes(obj.attributes) if a.tag == Tag.USAGE_LIMITS][0]
        return [(c.tag, c.value) for c in limits.value.value]

    assert core.store.run_sync(count) == [
        (Tag.USAGE_LIMITS_TOTAL, 48), (Tag.USAGE_LIMITS_COUNT, 0),
        (Tag.USAGE_LIMITS_UNIT, UsageLimitsUnit.BYTE)]


def test_other_tenants_key_is_not_found(core: CoreHarness) -> None:
    # KMIP 2.x names it Object Not Found; 1.x has only Item Not Found.
    uid = store_key(core, NIST_KEY, tenant="other")
    failed(encrypt(core, uid, NIST_PLAIN, params(BlockCipherMode.ECB)),
           ResultReason.OBJECT_NOT_FOUND)
    failed(decrypt(core, uid, ECB_CIPHER, params(BlockCipherMode.ECB), version=(1, 4)),
           ResultReason.ITEM_NOT_FOUND)
    assert ok(encrypt(core, uid, NIST_PLAIN, params(BlockCipherMode.ECB),
                      principal=service_principal("other"))).data == ECB_CIPHER


def test_hierarchy_keys_follow_the_policy(core: CoreHarness) -> None:
    l3 = core.store.run_sync(lambda s: repository.find_l3(s, "demo", "app")[0].uid)
    l2 = core.store.run_sync(lambda s: repository.find_l2(s, "demo", active_only=True).uid)
    sealed = ok(encrypt(core, l3, b"dek"))  # an application uses its own service's L3
    assert ok(decrypt(core, l3, sealed.data, iv_counter_nonce=sealed.iv_counter_nonce,
                      authenticated_encryption_tag=sealed.authenticated_encryption_tag)
              ).data == b"dek"
    failed(encrypt(core, l3, b"dek", principal=service_principal("demo", "billing")),
           ResultReason.PERMISSION_DENIED)
    failed(encrypt(core, l2, b"dek"), ResultReason.PERMISSION_DENIED)
    failed(encrypt(core, l2, b"dek", principal=admin_principal()), ResultReason.PERMISSION_DENIED)


def test_missing_data_and_wrong_object(core: CoreHarness) -> None:
    uid = store_key(core, NIST_KEY)
    failed(encrypt(core, uid, None), ResultReason.INVALID_MESSAGE)
    failed(encrypt(core, "no-such-key", b"x"), ResultReason.OBJECT_NOT_FOUND)


# Check --------------------------------------------------------------------------------------
def test_check_usage_mask_and_placeholder(core: CoreHarness) -> None:
    uid = store_key(core, NIST_KEY, mask=CryptographicUsageMask.ENCRYPT,
                    state=State.PRE_ACTIVE)
    answer = ok(one(core, Operation.CHECK, CheckRequest(
        unique_identifier=uid, cryptographic_usage_mask=CryptographicUsageMask.ENCRYPT)))
    assert answer.unique_identifier == uid
    failed(one(core, Operation.CHECK, CheckRequest(
        unique_identifier=uid, cryptographic_usage_mask=CryptographicUsageMask.DECRYPT)),
        ResultReason.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK)
    failed(one(core, Operation.CHECK, CheckRequest(
        unique_identifier=uid, cryptographic_usage_mask=CryptographicUsageMask.DECRYPT),
        version=(1, 4)), ResultReason.PERMISSION_DENIED)
    # A failed Check empties the ID Placeholder: the Encrypt after it has no key to use.
    items = call(core, (Operation.CHECK, CheckRequest(
        unique_identifier=uid, cryptographic_usage_mask=CryptographicUsageMask.DECRYPT)),
        (Operation.ENCRYPT, EncryptRequest(data=b"x")),
        continuation=BatchErrorContinuationOption.CONTINUE)
    failed(items[1], ResultReason.MISSING_DATA)


def test_check_lease_time_and_other_tenant(core: CoreHarness) -> None:
    uid = store_key(core, NIST_KEY, extra=[Attribute.of(Tag.LEASE_TIME, 3600)])
    ok(one(core, Operation.CHECK, CheckRequest(unique_identifier=uid, lease_time=600)))
    failed(one(core, Operation.CHECK, CheckRequest(unique_identifier=uid, lease_time=7200)),
           ResultReason.PERMISSION_DENIED)
    failed(one(core, Operation.CHECK, CheckRequest(unique_identifier=uid), version=(1, 4),
               principal=service_principal("other")), ResultReason.ITEM_NOT_FOUND)


# OASIS conformance cases, in process ----------------------------------------------------------
def _cases(pattern_14: str, pattern_21: str) -> list[Path]:
    found = sorted((VECTORS / "oasis-kmip-profiles-v1.4-os" / "mandatory").glob(pattern_14))
    found += sorted((VECTORS / "oasis-kmip-profiles-v2.1-os" / "mandatory").glob(pattern_21))
    return found


@pytest.mark.parametrize("path", _cases("CS-BC-M-*-14.xml", "CS-BC-M-*-21.xml"),
                         ids=lambda p: p.stem)
def test_oasis_basic_cryptographic_cases(core: CoreHarness, path: Path) -> None:
    result = run_case(path, core.client())
    assert result.passed, result.line()
