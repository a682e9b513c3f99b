"""Create Key Pair's RSA keys are made before the request's group commit, on its tenant's
store worker (kcm.core.request_handler: _prepare), not on the writer thread that runs every
tenant's writes: a batch of RSA-4096 pairs (half a second each) held it for up to the
request deadline, and every other tenant's Create waited that long."""

from __future__ import annotations

import threading

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from kcm.core import request_handler
from kcm.core.config import CoreLimits
from kcm.core.context import KeyPairs
from kcm.core.operations import asymmetric_ops
from kcm.core.request_handler import CoreRequestHandler
from kcm.crypto.rsa_keys import generate_key_pair
from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import (
    BatchErrorContinuationOption,
    CryptographicAlgorithm,
    Operation,
    ResultReason,
    ResultStatus,
)
from kcm.kmip.objects import KeyBlock
from kcm.kmip.payloads import CreateKeyPairRequest
from kcm.kmip.tags import Tag
from kcm.testing.requests import get, item, request, response
from kcm.ttlv import Item, ItemType
from tests.core_support import CoreHarness, served_while_held

V = (2, 1)


def pair_item(length: int = 1024, algorithm: int = CryptographicAlgorithm.RSA):
    return item(Operation.CREATE_KEY_PAIR, CreateKeyPairRequest(common_attributes=[
        Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, algorithm),
        Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, length)]))


class Recorded(KeyPairs):
    """KeyPairs that remember themselves, to see what is left of them afterwards."""

    made: list[Recorded] = []

    def __init__(self) -> None:
        super().__init__()
        self.made.append(self)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    made: list[Recorded] = []
    monkeypatch.setattr(Recorded, "made", made)
    monkeypatch.setattr(request_handler, "KeyPairs", Recorded, raising=False)
    return made


@pytest_twisted.ensureDeferred
async def test_key_pairs_are_made_off_the_writer_which_serves_another_tenant_meanwhile(
        core: CoreHarness, monkeypatch: pytest.MonkeyPatch, recorded: list[Recorded]) -> None:
    """While tenant demo's key pairs are being made (held here until the other tenant's
    Create has been answered, or 5 s), the writer is free: tenant other's Create commits.
    Each item stores a pair made for it (on a worker, never the writer), each pair once,
    and nothing made outlives the request."""
    release = threading.Event()
    started: Deferred[None] = Deferred()
    made: list[tuple[str, object]] = []

    def held(length: int):
        if not made:
            reactor.callFromThread(started.callback, None)
            release.wait(5)
        pair = generate_key_pair(length)
        made.append((threading.current_thread().name, pair))
        return pair

    monkeypatch.setattr(request_handler, "generate_key_pair", held, raising=False)
    monkeypatch.setattr(asymmetric_ops, "generate_key_pair", held)
    heavy = core.handler.handle_as(request(pair_item(), pair_item(), version=V),
                                   core.caller())
    await started
    answered_while_held, other_wire = await served_while_held(core, release)
    other = response(other_wire)
    answer = response(await heavy)

    assert other.batch_items[0].result_status == ResultStatus.SUCCESS
    assert answered_while_held, "another tenant's Create waited for demo's key generation"
    writer = f"{core.store.name}-writer"
    assert len(made) == 2 and {name for name, _ in made}.isdisjoint(
        {writer, threading.main_thread().name})
    stored = []
    for answered in answer.batch_items:
        assert answered.result_status == ResultStatus.SUCCESS, answered.result_message
        uid = answered.response_payload.public_key_unique_identifier
        [got] = response(core.client().send(request(get(uid), version=V))).batch_items
        block = KeyBlock.from_item(got.response_payload.object.find(Tag.KEY_BLOCK))
        stored.append(block.key_value.key_material)
    assert sorted(stored) == sorted(pair.public_der for _, pair in made)
    assert len(set(stored)) == 2
    [pool] = recorded
    assert not pool._by_length  # nothing made is kept past the request


@pytest_twisted.ensureDeferred
async def test_key_pairs_not_made_by_the_deadline_are_not_made_on_the_writer(
        core: CoreHarness, monkeypatch: pytest.MonkeyPatch, recorded: list[Recorded]) -> None:
    """Making stops at the request's deadline, asked between pairs; the items then fail
    with the deadline's General Failure, and none makes its pair on the writer."""
    now = [1000.0]
    made_on: list[str] = []

    def slow(length: int):
        made_on.append(threading.current_thread().name)
        now[0] += 6  # each pair takes 6 s of the request's 10
        return generate_key_pair(length)

    monkeypatch.setattr(request_handler, "generate_key_pair", slow, raising=False)
    monkeypatch.setattr(asymmetric_ops, "generate_key_pair", slow)
    handler = CoreRequestHandler(core.store, core.keyring, clock=lambda: now[0],
                                 limits=CoreLimits(request_deadline=10))
    wire = request(*[pair_item()] * 4, version=V,
                   continuation=BatchErrorContinuationOption.CONTINUE)
    answer = response(await handler.handle_as(wire, core.caller()))
    assert len(made_on) == 2, "making went on past the deadline"
    assert f"{core.store.name}-writer" not in made_on
    assert [(i.result_status, i.result_reason, i.result_message)
            for i in answer.batch_items] == [
        (ResultStatus.OPERATION_FAILED, ResultReason.GENERAL_FAILURE,
         "request deadline of 10 s exceeded")] * 4
    [pool] = recorded
    assert pool.stopped == "request deadline of 10 s exceeded" and not pool._by_length


@pytest_twisted.ensureDeferred
async def test_only_items_the_operation_accepts_get_a_pair_made(
        core: CoreHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused item (an algorithm or length Create Key Pair does not make) costs no key
    generation; the others in the batch are made and stored as usual, each its own."""
    lengths: list[int] = []

    def counted(length: int):
        lengths.append(length)
        return generate_key_pair(length)

    monkeypatch.setattr(request_handler, "generate_key_pair", counted, raising=False)
    monkeypatch.setattr(asymmetric_ops, "generate_key_pair", counted)
    # Refused before a pair is made, as the operation refuses them (the diff review: each
    # would have cost a pair): an attribute the version does not define, Quantum Safe.
    no_attribute = pair_item(2048)
    no_attribute.request_payload.common_attributes.append(
        Attribute(Tag.BATCH_COUNT, Item(Tag.BATCH_COUNT, ItemType.INTEGER, 5)))
    quantum_safe = pair_item(2048)
    quantum_safe.request_payload.common_attributes.append(
        Attribute.of(Tag.QUANTUM_SAFE, True, ItemType.BOOLEAN))
    wire = request(pair_item(1024), pair_item(1000), pair_item(2048, CryptographicAlgorithm.AES),
                   no_attribute, quantum_safe, pair_item(2048), version=V,
                   continuation=BatchErrorContinuationOption.CONTINUE)
    answer = response(await core.handler.handle_as(wire, core.caller()))
    assert [i.result_status for i in answer.batch_items] == [
        ResultStatus.SUCCESS, ResultStatus.OPERATION_FAILED, ResultStatus.OPERATION_FAILED,
        ResultStatus.OPERATION_FAILED, ResultStatus.OPERATION_FAILED, ResultStatus.SUCCESS]
    assert lengths == [1024, 2048]


@pytest_twisted.ensureDeferred
async def test_registered_private_keys_are_validated_off_the_writer(
        core: CoreHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenSSL's validation of an RSA private key given to Register (a fifth of a second
    for RSA-4096; a batch of them held every tenant's writes for the request's deadline)
    runs on the tenant's worker before the group commit, once per key in a request, while
    the writer serves another tenant; the writer validates nothing, and an invalid key is
    still refused (Cryptographic Failure), alone."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from kcm.crypto import rsa_keys
    from kcm.kmip.enums import KeyFormatType, ObjectType
    from kcm.kmip.objects import KeyValue
    from kcm.kmip.payloads import RegisterRequest

    release = threading.Event()
    started: Deferred[None] = Deferred()
    validated: list[str] = []
    real = rsa_keys._validated

    def held(key):
        if not validated:
            reactor.callFromThread(started.callback, None)
            release.wait(5)
        validated.append(threading.current_thread().name)
        return real(key)

    monkeypatch.setattr(rsa_keys, "_validated", held)

    def registered(key: rsa.RSAPrivateKey):
        der = key.private_bytes(serialization.Encoding.DER,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        block = KeyBlock(key_format_type=KeyFormatType.PKCS_1,
                         key_value=KeyValue(key_material=der),
                         cryptographic_algorithm=CryptographicAlgorithm.RSA,
                         cryptographic_length=1024)
        return item(Operation.REGISTER, RegisterRequest(
            object_type=ObjectType.PRIVATE_KEY,
            object=Item(Tag.PRIVATE_KEY, ItemType.STRUCTURE, [block.to_item(V)]),
            attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, 1)]))

    one = rsa.generate_private_key(65537, 1024)
    numbers = rsa.generate_private_key(65537, 1024).private_numbers()
    invalid = rsa.RSAPrivateNumbers(  # (a d that does not invert e: no valid key)
        numbers.p, numbers.q, numbers.d ^ 2, numbers.dmp1, numbers.dmq1, numbers.iqmp,
        numbers.public_numbers).private_key(unsafe_skip_rsa_key_validation=True)
    heavy = core.handler.handle_as(request(
        registered(one), registered(invalid), registered(one), version=V,
        continuation=BatchErrorContinuationOption.CONTINUE), core.caller())
    await started
    answered_while_held, other_wire = await served_while_held(core, release)
    answer = response(await heavy)

    assert answered_while_held, "another tenant's Create waited for demo's key validation"
    assert response(other_wire).batch_items[0].result_status == ResultStatus.SUCCESS
    writer = f"{core.store.name}-writer"
    assert len(validated) == 2 and writer not in validated, validated  # once per key
    assert [(i.result_status, i.result_reason) for i in answer.batch_items] == [
        (ResultStatus.SUCCESS, None),
        (ResultStatus.OPERATION_FAILED, ResultReason.CRYPTOGRAPHIC_FAILURE),
        (ResultStatus.SUCCESS, None)]
    assert answer.batch_items[1].result_message == "the RSA private key is not valid"
