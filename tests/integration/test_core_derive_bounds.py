"""Derive Key through kcm-core: a request of a few hundred bytes cannot make the core store
an object beyond every message limit, nor run PBKDF2 for minutes on the writer thread."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from kcm.core.store.schema import ManagedObject
from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import (
    CryptographicAlgorithm,
    CryptographicUsageMask,
    DerivationMethod,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
)
from kcm.kmip.payloads import CreateRequest, DerivationParameters, DeriveKeyRequest
from kcm.kmip.tags import Tag
from kcm.testing.requests import CONTINUE, item, request, response
from tests.core_support import CoreHarness

V = (2, 1)


def objects(core: CoreHarness) -> int:
    return core.store.run_sync(
        lambda s: s.scalar(select(func.count()).select_from(ManagedObject)))


def derivation_base(client) -> str:
    """A new AES key that may derive keys: its identifier."""
    [created] = response(client.send(request(item(Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY,
        attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
                    Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256),
                    Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK,
                                 int(CryptographicUsageMask.DERIVE_KEY))])),
        version=V))).batch_items
    return created.response_payload.unique_identifier


@pytest.mark.parametrize("length_bits, count, message", [
    (64 << 23, 1, "Derive Key makes keys of at most 4096 bits"),
    (256, 40_000_000, "PBKDF2 Iteration Count 40000000 over 1 block(s) exceeds the "
                      "server's limit of 1000000 iterations"),
])
def test_an_oversized_derivation_is_refused_and_stores_nothing(
        core: CoreHarness, length_bits: int, count: int, message: str) -> None:
    client = core.client()
    created = derivation_base(client)
    before = objects(core)
    for version, reason in ((V, ResultReason.SERVER_LIMIT_EXCEEDED),
                            ((1, 4), ResultReason.FEATURE_NOT_SUPPORTED)):
        [derived] = response(client.send(request(item(Operation.DERIVE_KEY, DeriveKeyRequest(
            object_type=ObjectType.SECRET_DATA,
            unique_identifiers=[created],
            derivation_method=DerivationMethod.PBKDF2,
            derivation_parameters=DerivationParameters(salt=b"salt", iteration_count=count),
            attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, length_bits)])),
            version=version))).batch_items
        assert (derived.result_status, derived.result_reason, derived.result_message) == (
            ResultStatus.OPERATION_FAILED, reason, message)
    assert objects(core) == before


def test_a_request_s_derivations_share_the_pbkdf2_bound(core: CoreHarness) -> None:
    """Two derivations of 600,000 iterations each, in one request: the first is made, the
    second refused (the writer thread would run a batch's worth of them for every tenant)."""
    client = core.client()
    created = derivation_base(client)
    derive = item(Operation.DERIVE_KEY, DeriveKeyRequest(
        object_type=ObjectType.SECRET_DATA,
        unique_identifiers=[created],
        derivation_method=DerivationMethod.PBKDF2,
        derivation_parameters=DerivationParameters(salt=b"salt", iteration_count=600_000),
        attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256)]))
    first, second = response(client.send(request(derive, derive, version=V,
                                                 continuation=CONTINUE))).batch_items
    assert first.result_status == ResultStatus.SUCCESS
    assert (second.result_status, second.result_reason, second.result_message) == (
        ResultStatus.OPERATION_FAILED, ResultReason.SERVER_LIMIT_EXCEEDED,
        "the request's PBKDF2 derivations exceed the server's limit of 1000000 iterations "
        "in all")
