"""A Correlation Value is used once (kcm.core.stream_parts): a stream's part presented again is
refused Invalid Correlation Value, for every keyed stream (Encrypt, Decrypt, MAC, MAC
Verify, Sign, Signature Verify), so a stream cannot be run twice past the key's Usage Limits
nor under the IV the server chose once. Through kcm-core's request handler in process, and
against a real `twistd kcm-core` on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import time

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import func, select

from kcm.core.operations.mac_ops import _MAC_STREAM, _STREAM_HEAD
from kcm.core.store.schema import AuditLog, ManagedObject, SpentStreamPart
from kcm.crypto.sealed_state import MAX_CIPHER_STREAM_BYTES, StreamPart, seal_state
from kcm.kmip.attributes import Attribute, CryptographicParameters
from kcm.kmip.enums import (
    BatchErrorContinuationOption,
    BlockCipherMode,
    CryptographicAlgorithm,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
    UsageLimitsUnit,
    ValidityIndicator,
)
from kcm.kmip.messages import (
    ProtocolVersion,
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    decode_response,
    encode_request,
)
from kcm.kmip.payloads import (
    CreateRequest,
    EncryptRequest,
    GetRequest,
    MacRequest,
    MacVerifyRequest,
    SignatureVerifyRequest,
    SignRequest,
)
from kcm.kmip.payloads.attribute_ops import GetAttributesRequest
from kcm.kmip.tags import Tag
from kcm.testing.processes import CoreProcess
from kcm.testing.requests import aes256, item, request, response
from kcm.ttlv import Item, ItemType, decode, encode
from tests.core_support import CoreHarness
from tests.integration.test_core_asymmetric import create_pair
from tests.integration.test_core_crypto import call, decrypt, encrypt, failed, ok, params, store_key
from tests.integration.test_core_mac_hash_rng import KEY as HMAC_KEY
from tests.integration.test_core_mac_hash_rng import hmac_key, mac

KEY = bytes(range(32))
USED = "the Correlation Value was used already; each is used once"
GCM_RANDOM_IV = CryptographicParameters(block_cipher_mode=BlockCipherMode.GCM, random_iv=True)


def usage_limits(count: int, unit: UsageLimitsUnit | None = None) -> Attribute:
    """``count`` uses (of ``unit``; none: each Encrypt, or stream, counts one)."""
    fields = [Item(Tag.USAGE_LIMITS_TOTAL, ItemType.LONG_INTEGER, count),
              Item(Tag.USAGE_LIMITS_COUNT, ItemType.LONG_INTEGER, count)]
    if unit is not None:
        fields.append(Item(Tag.USAGE_LIMITS_UNIT, ItemType.ENUMERATION, int(unit)))
    return Attribute.of(Tag.USAGE_LIMITS, fields, ItemType.STRUCTURE)


def replayed(answer, version=(2, 1)) -> None:
    failed(answer, ResultReason.INVALID_CORRELATION_VALUE if version >= (2, 0)
           else ResultReason.INVALID_FIELD)
    assert answer.result_message == USED


def spent_parts(core: CoreHarness) -> int:
    return core.store.run_sync(lambda s: s.scalar(
        select(func.count()).select_from(SpentStreamPart)))


# Encrypt: Usage Limits and the server's IV -----------------------------------------------
@pytest.mark.parametrize("version", [(2, 1), (1, 4)])
def test_a_replayed_final_is_refused_and_the_usage_limit_holds(core: CoreHarness,
                                                                version) -> None:
    uid = store_key(core, KEY, extra=[usage_limits(1),
                                      Attribute.of(Tag.CRYPTOGRAPHIC_PARAMETERS, GCM_RANDOM_IV)])
    start = ok(encrypt(core, uid, b"A" * 16, init_indicator=True, version=version))
    iv, value = start.iv_counter_nonce, start.correlation_value
    end = ok(encrypt(core, uid, b"B" * 16, correlation_value=value, final_indicator=True,
                     version=version))
    # The one stream is one GCM encryption, under the IV the server chose.
    sealed = AESGCM(KEY).encrypt(iv, b"A" * 16 + b"B" * 16, None)
    assert start.data + end.data + end.authenticated_encryption_tag == sealed
    for data in (b"C" * 16, b"D" * 16, b"E" * 16):
        replayed(encrypt(core, uid, data, correlation_value=value, final_indicator=True,
                         version=version), version)
        replayed(encrypt(core, uid, data, correlation_value=value, version=version), version)
    failed(encrypt(core, uid, b"plain"), ResultReason.PERMISSION_DENIED)
    failed(encrypt(core, uid, b"again", init_indicator=True), ResultReason.PERMISSION_DENIED)


def test_each_value_is_used_once_along_the_stream(core: CoreHarness) -> None:
    uid = store_key(core, KEY)
    start = ok(encrypt(core, uid, b"a" * 20, GCM_RANDOM_IV, init_indicator=True))
    middle = ok(encrypt(core, uid, b"b" * 20, correlation_value=start.correlation_value))
    # The first value cannot branch the stream once it was continued.
    replayed(encrypt(core, uid, b"X" * 20, correlation_value=start.correlation_value,
                     final_indicator=True))
    end = ok(encrypt(core, uid, b"c" * 20, correlation_value=middle.correlation_value,
                     final_indicator=True))
    assert end.correlation_value is None
    replayed(encrypt(core, uid, b"Y" * 20, correlation_value=middle.correlation_value,
                     final_indicator=True))
    sealed = AESGCM(KEY).encrypt(start.iv_counter_nonce, b"a" * 20 + b"b" * 20 + b"c" * 20, None)
    assert start.data + middle.data + end.data + end.authenticated_encryption_tag == sealed
    assert spent_parts(core) == 2


def test_every_stream_gets_its_own_random_iv(core: CoreHarness) -> None:
    uid = store_key(core, KEY, extra=[Attribute.of(Tag.CRYPTOGRAPHIC_PARAMETERS, GCM_RANDOM_IV)])
    ivs = set()
    for n in range(8):
        start = ok(encrypt(core, uid, b"head", init_indicator=True))
        ok(encrypt(core, uid, bytes([n]) * 8, correlation_value=start.correlation_value,
                   final_indicator=True))
        ivs.add(start.iv_counter_nonce)
    assert len(ivs) == 8


def test_byte_usage_limits_count_every_part_once(core: CoreHarness) -> None:
    uid = store_key(core, KEY, extra=[usage_limits(40, UsageLimitsUnit.BYTE)])
    start = ok(encrypt(core, uid, b"a" * 16, GCM_RANDOM_IV, init_indicator=True))  # 24 left
    ok(encrypt(core, uid, b"b" * 16, correlation_value=start.correlation_value,
               final_indicator=True))  # 8 left
    replayed(encrypt(core, uid, b"c" * 8, correlation_value=start.correlation_value,
                     final_indicator=True))
    ok(encrypt(core, uid, b"d" * 8, GCM_RANDOM_IV))  # the replay took nothing: 8 were left
    failed(encrypt(core, uid, b"e", GCM_RANDOM_IV), ResultReason.PERMISSION_DENIED)


def test_a_value_refused_for_another_reason_is_not_used_up(core: CoreHarness) -> None:
    """A failed item is rolled back whole, its use of the value with it."""
    uid = store_key(core, KEY)
    start = ok(encrypt(core, uid, b"abc", GCM_RANDOM_IV, init_indicator=True))
    failed(decrypt(core, uid, b"d", correlation_value=start.correlation_value,
                   final_indicator=True), ResultReason.INVALID_CORRELATION_VALUE)
    ok(encrypt(core, uid, b"d", correlation_value=start.correlation_value, final_indicator=True))
    assert spent_parts(core) == 1


def test_one_value_twice_in_one_batch(core: CoreHarness) -> None:
    uid = store_key(core, KEY)
    start = ok(encrypt(core, uid, b"abc", GCM_RANDOM_IV, init_indicator=True))
    final = EncryptRequest(unique_identifier=uid, data=b"d",
                           correlation_value=start.correlation_value, final_indicator=True)
    first, second = call(core, (Operation.ENCRYPT, final), (Operation.ENCRYPT, final),
                         continuation=BatchErrorContinuationOption.CONTINUE)
    ok(first)
    replayed(second)


# Undo: what is rolled back is not answered --------------------------------------------------
UNDO = BatchErrorContinuationOption.UNDO


def _missing() -> tuple[Operation, object]:
    return Operation.GET, GetRequest(unique_identifier="no-such-object")


@pytest.mark.parametrize("version", [(2, 1), (1, 4)])
def test_an_undone_final_answers_no_ciphertext(core: CoreHarness, version) -> None:
    """The review's case: a stream's Final in a batch that fails under Undo. The rollback
    gives the Correlation Value back (its spent part is undone), so the undone item must not
    carry a ciphertext: the value's next use would encrypt a second plaintext under the IV
    the server chose once. The undone answer carries no payload at all."""
    uid = store_key(core, KEY, extra=[Attribute.of(Tag.CRYPTOGRAPHIC_PARAMETERS,
                                                   GCM_RANDOM_IV)])
    start = ok(encrypt(core, uid, b"", init_indicator=True, version=version))
    final = EncryptRequest(unique_identifier=uid, data=b"A" * 32,
                           correlation_value=start.correlation_value, final_indicator=True)
    undone, missing = call(core, (Operation.ENCRYPT, final), _missing(), continuation=UNDO,
                           version=version)
    assert undone.result_status == ResultStatus.OPERATION_UNDONE
    assert missing.result_status == ResultStatus.OPERATION_FAILED
    assert undone.response_payload is None
    assert spent_parts(core) == 0
    # The value was never used: its one use now is the stream's one encryption.
    end = ok(encrypt(core, uid, b"B" * 32, correlation_value=start.correlation_value,
                     final_indicator=True, version=version))
    assert start.data + end.data + end.authenticated_encryption_tag == AESGCM(KEY).encrypt(
        start.iv_counter_nonce, b"B" * 32, None)


def test_undo_batches_give_no_ciphertext_past_the_usage_limits(core: CoreHarness) -> None:
    """A key limited to 16 bytes: Undo batches roll its count back, so they must not answer
    what they encrypted (the review got five ciphertexts so); the one allowed use is left."""
    uid = store_key(core, KEY, extra=[usage_limits(16, UsageLimitsUnit.BYTE)])
    for _ in range(5):
        undone, _missing_item = call(core, (Operation.ENCRYPT, EncryptRequest(
            unique_identifier=uid, data=bytes(16), cryptographic_parameters=GCM_RANDOM_IV)),
            _missing(), continuation=UNDO)
        assert undone.result_status == ResultStatus.OPERATION_UNDONE
        assert undone.response_payload is None
    ok(encrypt(core, uid, bytes(16), GCM_RANDOM_IV))
    failed(encrypt(core, uid, b"x", GCM_RANDOM_IV), ResultReason.PERMISSION_DENIED)


def test_an_undone_create_names_no_object(core: CoreHarness) -> None:
    """An undone Create's object was rolled back: its identifier is not answered."""
    created, _missing_item = call(core, (Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY, attributes=aes256([]))), _missing(),
        continuation=UNDO)
    assert created.result_status == ResultStatus.OPERATION_UNDONE
    assert created.response_payload is None


# The other keyed streams ------------------------------------------------------------------
def test_decrypt_streams_are_used_once(core: CoreHarness) -> None:
    uid = store_key(core, KEY)
    iv = bytes(12)
    sealed = AESGCM(KEY).encrypt(iv, b"x" * 40, None)
    cp = params(BlockCipherMode.GCM)
    start = ok(decrypt(core, uid, sealed[:20], cp, iv_counter_nonce=iv, init_indicator=True))
    end = ok(decrypt(core, uid, sealed[20:40], cp, correlation_value=start.correlation_value,
                     final_indicator=True, authenticated_encryption_tag=sealed[40:]))
    assert end.data == b"x" * 40
    replayed(decrypt(core, uid, sealed[20:40], cp, correlation_value=start.correlation_value,
                     final_indicator=True, authenticated_encryption_tag=sealed[40:]))


def test_mac_streams_are_used_once(core: CoreHarness) -> None:
    uid = hmac_key(core)
    first = ok(mac(core, uid, data=b"head", init_indicator=True))
    ok(mac(core, uid, data=b"tail", correlation_value=first.correlation_value,
           final_indicator=True))
    replayed(mac(core, uid, data=b"other", correlation_value=first.correlation_value,
                 final_indicator=True))
    start = ok(call(core, (Operation.MAC_VERIFY, MacVerifyRequest(
        unique_identifier=uid, data=b"head", init_indicator=True)))[0])
    replayed(call(core, (Operation.MAC_VERIFY, MacVerifyRequest(
        unique_identifier=uid, data=b"", correlation_value=start.correlation_value,
        final_indicator=True, mac_data=b"x" * 32)), (Operation.MAC_VERIFY, MacVerifyRequest(
            unique_identifier=uid, data=b"", correlation_value=start.correlation_value,
            final_indicator=True, mac_data=b"x" * 32)),
        continuation=BatchErrorContinuationOption.CONTINUE)[1])


def test_signature_streams_are_used_once(core: CoreHarness) -> None:
    private_uid, public_uid = create_pair(core)
    first = ok(call(core, (Operation.SIGN, SignRequest(
        unique_identifier=private_uid, data=b"head", init_indicator=True)))[0])
    signed = ok(call(core, (Operation.SIGN, SignRequest(
        unique_identifier=private_uid, data=b"tail", correlation_value=first.correlation_value,
        final_indicator=True)))[0])
    replayed(call(core, (Operation.SIGN, SignRequest(
        unique_identifier=private_uid, data=b"other", correlation_value=first.correlation_value,
        final_indicator=True)))[0])
    start = ok(call(core, (Operation.SIGNATURE_VERIFY, SignatureVerifyRequest(
        unique_identifier=public_uid, data=b"head", init_indicator=True)))[0])
    verify = SignatureVerifyRequest(unique_identifier=public_uid, data=b"tail",
                                    correlation_value=start.correlation_value,
                                    final_indicator=True, signature_data=signed.signature_data)
    assert ok(call(core, (Operation.SIGNATURE_VERIFY, verify))[0]).validity_indicator \
        == ValidityIndicator.VALID
    replayed(call(core, (Operation.SIGNATURE_VERIFY, verify))[0])


# Answers too large, forged parts ------------------------------------------------------------
def _limited(core: CoreHarness, payload: object, maximum_response_size: int | None,
             operation: Operation = Operation.ENCRYPT):
    """One item whose request asks for at most ``maximum_response_size`` in answer."""
    header = RequestHeader(protocol_version=ProtocolVersion.of((2, 1)), batch_count=1,
                           maximum_response_size=maximum_response_size)
    wire = encode(encode_request(RequestMessage(header, [
        RequestBatchItem(operation=operation, request_payload=payload)])))
    assert len(wire) <= 1 << 20
    return decode_response(decode(core.client().send(wire))).batch_items[0]


def test_a_withheld_answer_spends_no_value_and_counts_no_use(core: CoreHarness) -> None:
    """An answer over the client's Maximum Response Size is withheld, and the request's work
    undone with it: its Correlation Value stays unused, its use uncounted."""
    uid = store_key(core, KEY, extra=[usage_limits(2)])
    start = ok(encrypt(core, uid, b"a" * 64, GCM_RANDOM_IV, init_indicator=True))
    part = EncryptRequest(unique_identifier=uid, data=b"b" * 64,
                          correlation_value=start.correlation_value)
    failed(_limited(core, part, 100), ResultReason.RESPONSE_TOO_LARGE)
    assert spent_parts(core) == 0
    ok(_limited(core, part, None))  # the same value, once, now that the answer fits
    one_shot = EncryptRequest(unique_identifier=uid, data=b"c" * 64,
                              cryptographic_parameters=GCM_RANDOM_IV)
    failed(_limited(core, one_shot, 100), ResultReason.RESPONSE_TOO_LARGE)
    ok(_limited(core, one_shot, None))  # the second of two uses: the withheld one took none
    failed(_limited(core, one_shot, None), ResultReason.PERMISSION_DENIED)


def test_a_withheld_create_makes_no_object(core: CoreHarness) -> None:
    def objects() -> int:
        return core.store.run_sync(lambda s: s.scalar(
            select(func.count()).select_from(ManagedObject)))

    before = objects()
    create = CreateRequest(object_type=ObjectType.SYMMETRIC_KEY, attributes=aes256())
    failed(_limited(core, create, 64, Operation.CREATE), ResultReason.RESPONSE_TOO_LARGE)
    assert objects() == before
    operation, reason = core.store.run_sync(lambda s: s.execute(
        select(AuditLog.operation, AuditLog.result_reason)
        .order_by(AuditLog.seq.desc()).limit(1)).one())
    assert (operation, reason) == ("CREATE", "RESPONSE_TOO_LARGE")


def test_an_encrypt_stream_is_refused_before_its_answers_outgrow_a_message(
        core: CoreHarness) -> None:
    """Each answer of an Encrypt stream carries the input so far and the output: the stream
    is bounded so that every answer fits the maximum message size (1 MiB)."""
    uid = store_key(core, KEY)
    chunk = 64 << 10
    answer = ok(encrypt(core, uid, b"a" * (chunk - 16), GCM_RANDOM_IV, init_indicator=True))
    value, total = answer.correlation_value, chunk - 16  # (room for the Final's 16 bytes)
    while total + chunk <= MAX_CIPHER_STREAM_BYTES:
        value = ok(encrypt(core, uid, b"b" * chunk, correlation_value=value)).correlation_value
        total += chunk
    failed(encrypt(core, uid, b"c" * chunk, correlation_value=value),
           ResultReason.SERVER_LIMIT_EXCEEDED)
    ok(encrypt(core, uid, b"d" * 16, correlation_value=value, final_indicator=True))


@pytest.mark.parametrize("part, expires", [((1 << 64) - 1, None), ((1 << 63) - 1, None),
                                           (1, (1 << 64) - 1), (1, (1 << 63) - 1),
                                           (1, "in 30 days")])
def test_a_forged_part_is_an_invalid_correlation_value(core: CoreHarness, part: int,
                                                       expires: int | str | None) -> None:
    """A client that holds a key's material can seal any part: one no core issues (a part
    number past 64 signed bits, an expiry past a value's lifetime) is refused as such."""
    uid = hmac_key(core)
    state = _STREAM_HEAD.pack(True, CryptographicAlgorithm.HMAC_SHA256) + b"x"
    now = int(time.time())
    at = {None: now + 60, "in 30 days": now + 30 * 24 * 3600}.get(expires, expires)
    forged = seal_state(HMAC_KEY, _MAC_STREAM, uid, state, os.urandom,
                        part=StreamPart(os.urandom(16), part, at))
    failed(call(core, (Operation.MAC, MacRequest(unique_identifier=uid, data=b"y",
                                                 correlation_value=forged,
                                                 final_indicator=True)))[0],
           ResultReason.INVALID_CORRELATION_VALUE)
    assert spent_parts(core) == 0


# A real kcm-core -----------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def any_core_process(request: pytest.FixtureRequest) -> CoreProcess:
    return request.getfixturevalue("core_process" if request.param == "sqlite"
                                   else "core_process_pg")


def test_a_real_core_refuses_a_replayed_final(any_core_process: CoreProcess) -> None:
    """The review's case: a key limited to one use, GCM with Random IV; a stream's Final
    sent four times with one Correlation Value encrypts once."""
    activated = Attribute.of(Tag.ACTIVATION_DATE, int(time.time()) - 5)
    with any_core_process.client("app") as client:
        def send(payload: object, operation: Operation = Operation.ENCRYPT):
            return response(client.send(request(item(operation, payload), version=(2, 1))
                                        )).batch_items[0]

        created = send(CreateRequest(object_type=ObjectType.SYMMETRIC_KEY, attributes=aes256([
            usage_limits(1), Attribute.of(Tag.CRYPTOGRAPHIC_PARAMETERS, GCM_RANDOM_IV),
            activated])), Operation.CREATE)
        uid = created.response_payload.unique_identifier
        start = send(EncryptRequest(unique_identifier=uid, data=b"A" * 16, init_indicator=True))
        value = start.response_payload.correlation_value
        answers = [send(EncryptRequest(unique_identifier=uid, data=data, correlation_value=value,
                                       final_indicator=True))
                   for data in (b"B" * 16, b"C" * 16, b"D" * 16, b"E" * 16)]
        assert [a.result_status for a in answers] == [ResultStatus.SUCCESS] + [
            ResultStatus.OPERATION_FAILED] * 3
        for answer in answers[1:]:
            replayed(answer)
        assert send(EncryptRequest(unique_identifier=uid, data=b"plain")).result_reason \
            == ResultReason.PERMISSION_DENIED


def test_a_withheld_read_is_audited_as_withheld(core: CoreHarness) -> None:
    """A read-only request (Get Attributes: executed, then answered from the answers kept
    with its object) whose answer passes the Maximum Response Size is audited Response Too
    Large, as a write is."""
    def last_audit() -> tuple[str, str, str | None]:
        return tuple(core.store.run_sync(lambda s: s.execute(
            select(AuditLog.operation, AuditLog.result_status, AuditLog.result_reason)
            .order_by(AuditLog.seq.desc()).limit(1)).one()))

    uid = ok(_limited(core, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                          attributes=aes256()), None,
                      Operation.CREATE)).unique_identifier
    withheld = ("GET_ATTRIBUTES", "OPERATION_FAILED", "RESPONSE_TOO_LARGE")
    asked = GetAttributesRequest(unique_identifier=uid)
    failed(_limited(core, asked, 64, Operation.GET_ATTRIBUTES),
           ResultReason.RESPONSE_TOO_LARGE)
    assert last_audit() == withheld
    for _ in range(2):  # executed, then recalled
        ok(_limited(core, asked, None, Operation.GET_ATTRIBUTES))
        assert last_audit() == ("GET_ATTRIBUTES", "SUCCESS", None)
    failed(_limited(core, asked, 64, Operation.GET_ATTRIBUTES),
           ResultReason.RESPONSE_TOO_LARGE)
    assert last_audit() == withheld


def _encrypt_at(core: CoreHarness, now: int, payload: EncryptRequest):
    wire = request(item(Operation.ENCRYPT, payload), version=(2, 1))
    return response(core.handler.respond(wire, core.caller(), now)).batch_items[0]


def test_a_spent_value_is_refused_after_the_wall_clock_went_back(core: CoreHarness) -> None:
    """The sweeper purged a spent part (its value expired at the clock of then), then the
    wall clock stepped back over 10 minutes (NTP after running fast, a resumed VM): the
    value opened again, its record gone, and the Final ran a second time under the IV the
    server chose once (two plaintexts under one GCM nonce). How far the purge went is
    recorded, and a value that expired before it is refused whatever the clock says."""
    from kcm.core.stream_parts import purge_spent

    uid = store_key(core, KEY, extra=[Attribute.of(Tag.CRYPTOGRAPHIC_PARAMETERS,
                                                   GCM_RANDOM_IV)])
    t = int(time.time())
    start = _encrypt_at(core, t, EncryptRequest(unique_identifier=uid, data=b"A" * 16,
                                                init_indicator=True)).response_payload
    final = _encrypt_at(core, t + 5, EncryptRequest(
        unique_identifier=uid, data=b"B" * 16, correlation_value=start.correlation_value,
        final_indicator=True))
    assert final.result_status == ResultStatus.SUCCESS
    core.store.run_sync(lambda s: purge_spent(s, t + 4201))  # the clock ran fast
    core.store.run_sync(lambda s: purge_spent(s, t + 1801))  # (stepped back: no further)
    replayed(_encrypt_at(core, t + 1801, EncryptRequest(
        unique_identifier=uid, data=b"C" * 16, correlation_value=start.correlation_value,
        final_indicator=True)))
    # A stream begun after the step is served as ever.
    fresh = _encrypt_at(core, t + 1802, EncryptRequest(unique_identifier=uid, data=b"A" * 16,
                                                       init_indicator=True))
    assert fresh.result_status == ResultStatus.SUCCESS
    assert _encrypt_at(core, t + 1803, EncryptRequest(
        unique_identifier=uid, data=b"B" * 16,
        correlation_value=fresh.response_payload.correlation_value,
        final_indicator=True)).result_status == ResultStatus.SUCCESS
