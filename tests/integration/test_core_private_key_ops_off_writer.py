"""RSA private-key operations (Sign, Decrypt with a Private Key) are computed before the
request's group commit, on its tenant's store worker, not on the writer thread that runs
every tenant's writes (kcm.core.request_handler: _prepare_private): a batch of 64 RSA-4096
signatures of Digested Data held the writer, and every other tenant's request, 3.7 s."""

from __future__ import annotations

import threading

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from kcm.core import context, request_handler
from kcm.core.operations import rsa_cipher_ops
from kcm.crypto import signatures
from kcm.kernel.batch import RunElsewhere
from kcm.kmip.attributes import CryptographicParameters
from kcm.kmip.enums import (
    BatchErrorContinuationOption,
    CryptographicAlgorithm,
    CryptographicUsageMask,
    HashingAlgorithm,
    Operation,
    PaddingMethod,
    ResultReason,
    ResultStatus,
)
from kcm.kmip.payloads import DecryptRequest, EncryptRequest, SignRequest
from kcm.testing.requests import activate, create_managed, item, request, response
from tests.core_support import CoreHarness, served_while_held
from tests.integration.test_core_asymmetric import create_pair, key_pair_request, public_key

V = (2, 1)
CONTINUE = BatchErrorContinuationOption.CONTINUE
MESSAGE = b"signed off the writer"
OAEP = CryptographicParameters(padding_method=PaddingMethod.OAEP,
                               hashing_algorithm=HashingAlgorithm.SHA_256,
                               cryptographic_algorithm=CryptographicAlgorithm.RSA)


def sign_item(uid: str | None, data: bytes = MESSAGE, **fields) -> object:
    return item(Operation.SIGN, SignRequest(unique_identifier=uid, data=data, **fields))


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(operation, thread name) of every RSA private-key operation computed."""
    seen: list[tuple[str, str]] = []
    sign, decrypt = signatures.sign, rsa_cipher_ops.rsa_decrypt

    def signing(*args):
        seen.append(("sign", threading.current_thread().name))
        return sign(*args)

    def decrypting(*args):
        seen.append(("decrypt", threading.current_thread().name))
        return decrypt(*args)

    monkeypatch.setattr(signatures, "sign", signing)
    monkeypatch.setattr(rsa_cipher_ops, "rsa_decrypt", decrypting)
    return seen


def writer(core: CoreHarness) -> str:
    return f"{core.store.name}-writer"


@pytest_twisted.ensureDeferred
async def test_signatures_and_rsa_decryptions_are_computed_off_the_writer(
        core: CoreHarness, threads: list[tuple[str, str]]) -> None:
    private_uid, public_uid = create_pair(
        core, private_mask=CryptographicUsageMask.SIGN | CryptographicUsageMask.DECRYPT,
        public_mask=CryptographicUsageMask.VERIFY | CryptographicUsageMask.ENCRYPT)
    [sealed] = response(core.client().send(request(item(Operation.ENCRYPT, EncryptRequest(
        unique_identifier=public_uid, cryptographic_parameters=OAEP, data=b"secret")),
        version=V))).batch_items
    threads.clear()
    wire = request(sign_item(private_uid), sign_item(private_uid, b"other"),
                   item(Operation.DECRYPT, DecryptRequest(
                       unique_identifier=private_uid, cryptographic_parameters=OAEP,
                       data=sealed.response_payload.data)), version=V)
    answer = response(await core.handler.handle_as(wire, core.caller()))

    assert [i.result_status for i in answer.batch_items] == [ResultStatus.SUCCESS] * 3
    _, key = public_key(core, public_uid)
    for answered, data in zip(answer.batch_items[:2], (MESSAGE, b"other"), strict=True):
        key.verify(answered.response_payload.signature_data, data, padding.PKCS1v15(),
                   hashes.SHA256())
    assert answer.batch_items[2].response_payload.data == b"secret"
    assert sorted(kind for kind, _ in threads) == ["decrypt", "sign", "sign"]
    assert writer(core) not in {name for _, name in threads}


@pytest_twisted.ensureDeferred
async def test_the_writer_serves_another_tenant_while_signatures_are_computed(
        core: CoreHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """While tenant demo's signature is being computed (held here until tenant other's
    Create has been answered, or 5 s), the writer is free: tenant other's Create commits."""
    private_uid, _ = create_pair(core)
    release = threading.Event()
    started: Deferred[None] = Deferred()
    sign = signatures.sign

    def held(*args):
        if not started.called:
            reactor.callFromThread(started.callback, None)
            release.wait(5)
        return sign(*args)

    monkeypatch.setattr(signatures, "sign", held)
    heavy = core.handler.handle_as(request(sign_item(private_uid), version=V), core.caller())
    await started
    answered_while_held, other_wire = await served_while_held(core, release)
    other = response(other_wire)
    answer = response(await heavy)
    assert other.batch_items[0].result_status == ResultStatus.SUCCESS
    assert answered_while_held, "another tenant's Create waited for demo's signature"
    assert answer.batch_items[0].result_status == ResultStatus.SUCCESS


@pytest_twisted.ensureDeferred
async def test_a_streams_final_signature_is_computed_off_the_writer_and_its_value_used_once(
        core: CoreHarness, threads: list[tuple[str, str]]) -> None:
    private_uid, public_uid = create_pair(core)
    [first] = response(await core.handler.handle_as(request(sign_item(
        private_uid, MESSAGE[:6], init_indicator=True), version=V),
        core.caller())).batch_items
    value = first.response_payload.correlation_value
    final = request(sign_item(private_uid, MESSAGE[6:], correlation_value=value,
                              final_indicator=True), version=V)
    [last] = response(await core.handler.handle_as(final, core.caller())).batch_items
    assert last.result_status == ResultStatus.SUCCESS, last.result_message
    _, key = public_key(core, public_uid)
    key.verify(last.response_payload.signature_data, MESSAGE, padding.PKCS1v15(),
               hashes.SHA256())
    assert [kind for kind, _ in threads] == ["sign"]
    assert writer(core) not in {name for _, name in threads}
    # Preparing it did not use the value up; the writer did, once.
    [again] = response(await core.handler.handle_as(final, core.caller())).batch_items
    assert again.result_reason == ResultReason.INVALID_CORRELATION_VALUE


@pytest_twisted.ensureDeferred
async def test_a_key_made_in_the_same_batch_signs_on_the_writer_a_few_times_at_most(
        core: CoreHarness, threads: list[tuple[str, str]]) -> None:
    """The ID Placeholder's key does not exist before the batch runs: its signatures are
    computed on the writer, at most MAX_WRITER_PRIVATE_KEY_OPERATIONS of them; the rest
    are refused (and an item naming another key is still prepared)."""
    most = context.MAX_WRITER_PRIVATE_KEY_OPERATIONS
    own_uid, _ = create_pair(core)
    pair = key_pair_request(1024)
    wire = request(item(Operation.CREATE_KEY_PAIR, pair),
                   *[sign_item(None, bytes([n])) for n in range(most + 1)],
                   sign_item(own_uid), version=V, continuation=CONTINUE)
    answer = response(await core.handler.handle_as(wire, core.caller()))
    statuses = [(i.result_status, i.result_reason) for i in answer.batch_items]
    assert statuses == [(ResultStatus.SUCCESS, None)] * (most + 1) + [
        (ResultStatus.OPERATION_FAILED, ResultReason.SERVER_LIMIT_EXCEEDED),
        (ResultStatus.SUCCESS, None)]
    on_writer = [name for _, name in threads if name == writer(core)]
    assert len(on_writer) == most and len(threads) == most + 1


@pytest_twisted.ensureDeferred
async def test_a_symmetric_decrypt_is_not_prepared(
        core: CoreHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a request that meets an RSA private-key operation is prepared: an AES Decrypt
    runs in its group commit at once, as before."""
    prepared: list[bytes] = []
    prepare = request_handler.CoreRequestHandler._prepare

    def counted(self, wire, *args):
        prepared.append(wire)
        return prepare(self, wire, *args)

    monkeypatch.setattr(request_handler.CoreRequestHandler, "_prepare", counted)
    [made, _] = response(core.client().send(request(
        create_managed(), activate(None), version=V))).batch_items
    uid = made.response_payload.unique_identifier
    [sealed] = response(await core.handler.handle_as(request(item(
        Operation.ENCRYPT, EncryptRequest(unique_identifier=uid, data=b"x" * 16)), version=V),
        core.caller())).batch_items
    assert sealed.result_status == ResultStatus.SUCCESS, sealed.result_message
    payload = sealed.response_payload
    [opened] = response(await core.handler.handle_as(request(item(
        Operation.DECRYPT, DecryptRequest(
            unique_identifier=uid, data=payload.data, iv_counter_nonce=payload.iv_counter_nonce,
            authenticated_encryption_tag=payload.authenticated_encryption_tag)), version=V),
        core.caller())).batch_items
    assert opened.response_payload.data == b"x" * 16
    assert prepared == []


def test_the_in_process_path_computes_them_where_it_runs(
        core: CoreHarness, threads: list[tuple[str, str]]) -> None:
    """A request answered in process (CoreRequestHandler.respond: no group commit) signs
    in its own transaction, as before."""
    private_uid, _ = create_pair(core)
    [answer] = response(core.client().send(request(sign_item(private_uid),
                                                   version=V))).batch_items
    assert answer.result_status == ResultStatus.SUCCESS
    assert [kind for kind, _ in threads] == ["sign"]


def test_the_operations_kept_are_the_ones_asked() -> None:
    """A result is taken only for the same kind, key, scheme and input, once."""
    results = context.PrivateKeyResults()
    inputs = context.private_key_inputs("sign", "k1", "spec", "message", b"data")
    results.compute(inputs, lambda: b"sig")
    results.compute(inputs, lambda: b"computed twice")
    other = [context.private_key_inputs("sign", "k2", "spec", "message", b"data"),
             context.private_key_inputs("decrypt", "k1", "spec", "message", b"data"),
             context.private_key_inputs("sign", "k1", "spec", "message", b"datb"),
             context.private_key_inputs("sign", "k1", "spec", "messag", b"edata")]
    assert len({inputs, *other}) == 5
    assert results.take(inputs, lambda: b"again") == b"sig"
    assert results.take(inputs, lambda: b"again") == b"sig"  # (an item asking the same)
    assert results.take(other[0], lambda: b"here") == b"here"
    assert results.computed_here == 1
    first = context.PrivateKeyResults(first_pass=True)
    with pytest.raises(RunElsewhere):
        first.take(inputs, lambda: b"never")


@pytest_twisted.ensureDeferred
async def test_one_part_streams_and_refused_decryptions_are_prepared_too(
        core: CoreHarness, threads: list[tuple[str, str]]) -> None:
    """A signing stream of one part (Init and Final Indicator) is prepared like a plain
    Sign; a ciphertext that does not decrypt is refused on the worker, and the writer
    refuses it alike without computing it: neither counts against the writer's few."""
    private_uid, _ = create_pair(
        core, private_mask=CryptographicUsageMask.SIGN | CryptographicUsageMask.DECRYPT)
    threads.clear()
    streams = request(*[sign_item(private_uid, bytes([n]) * 8, init_indicator=True,
                                  final_indicator=True) for n in range(6)],
                      version=V, continuation=CONTINUE)
    answer = response(await core.handler.handle_as(streams, core.caller()))
    assert [i.result_status for i in answer.batch_items] == [ResultStatus.SUCCESS] * 6
    garbage = request(*[item(Operation.DECRYPT, DecryptRequest(
        unique_identifier=private_uid, cryptographic_parameters=OAEP,
        data=bytes([n + 1]) * 256)) for n in range(6)], version=V, continuation=CONTINUE)
    answer = response(await core.handler.handle_as(garbage, core.caller()))
    assert [i.result_reason for i in answer.batch_items] == \
        [ResultReason.CRYPTOGRAPHIC_FAILURE] * 6
    assert len(threads) == 12 and writer(core) not in {name for _, name in threads}
