"""MAC, MAC Verify, Hash, RNG Retrieve, RNG Seed and RSA Encrypt/Decrypt through kcm-core's
request handler, in process: known answers, the lifecycle and usage-mask rules, tenant
isolation, streaming, and the OASIS CS-AC and CS-RNG cases."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from kcm.conformance.runner import run_case
from kcm.core.os_random import mix_into_os_pool
from kcm.kmip.attributes import CryptographicParameters
from kcm.kmip.enums import (
    CryptographicAlgorithm,
    CryptographicUsageMask,
    HashingAlgorithm,
    Operation,
    PaddingMethod,
    QueryFunction,
    ResultReason,
    State,
    ValidityIndicator,
)
from kcm.kmip.payloads import (
    DecryptRequest,
    EncryptRequest,
    HashRequest,
    MacRequest,
    MacVerifyRequest,
    QueryRequest,
    RngRetrieveRequest,
    RngSeedRequest,
)
from kcm.kmip.tags import Tag
from tests.core_support import CoreHarness, service_principal
from tests.integration.test_core_asymmetric import create_pair, public_key, stored
from tests.integration.test_core_crypto import VECTORS, failed, ok, one, revoke, store_key

_A = CryptographicAlgorithm
MAC_MASK = CryptographicUsageMask.MAC_GENERATE | CryptographicUsageMask.MAC_VERIFY
KEY = bytes(range(32))
DATA = b"the data to authenticate"


def hmac_key(core: CoreHarness, **kwargs) -> str:
    kwargs.setdefault("mask", MAC_MASK)
    return store_key(core, KEY, algorithm=_A.HMAC_SHA256, **kwargs)


def mac(core, uid, data=DATA, cp=None, **kwargs):
    return one(core, Operation.MAC, MacRequest(unique_identifier=uid, data=data,
                                               cryptographic_parameters=cp,
                                               **_payload(kwargs)), **_call(kwargs))


def mac_verify(core, uid, mac_data, data=DATA, cp=None, **kwargs):
    return one(core, Operation.MAC_VERIFY, MacVerifyRequest(
        unique_identifier=uid, data=data, mac_data=mac_data, cryptographic_parameters=cp,
        **_payload(kwargs)), **_call(kwargs))


def _payload(kwargs):
    return {k: v for k, v in kwargs.items() if k not in ("version", "principal")}


def _call(kwargs):
    return {k: v for k, v in kwargs.items() if k in ("version", "principal")}


# MAC and MAC Verify -----------------------------------------------------------------------
@pytest.mark.parametrize("version", [(1, 2), (1, 4), (2, 1)])
def test_hmac_sha256_and_verify(core: CoreHarness, version) -> None:
    uid = hmac_key(core)
    expected = hmac.new(KEY, DATA, hashlib.sha256).digest()
    assert ok(mac(core, uid, version=version)).mac_data == expected
    assert ok(mac_verify(core, uid, expected, version=version)).validity_indicator == \
        ValidityIndicator.VALID
    assert ok(mac_verify(core, uid, expected, data=b"other", version=version)
              ).validity_indicator == ValidityIndicator.INVALID


def test_the_request_names_the_mac_algorithm(core: CoreHarness) -> None:
    uid = store_key(core, KEY, mask=MAC_MASK)  # an AES key: CMAC unless asked otherwise
    sha512 = CryptographicParameters(cryptographic_algorithm=_A.HMAC_SHA512)
    assert ok(mac(core, uid, cp=sha512)).mac_data == hmac.new(KEY, DATA,
                                                              hashlib.sha512).digest()
    assert len(ok(mac(core, uid)).mac_data) == 16  # CMAC-AES
    failed(mac(core, uid, cp=CryptographicParameters(cryptographic_algorithm=_A.HMAC_MD5)),
           ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS)


def test_mac_stream_matches_one_shot(core: CoreHarness) -> None:
    uid = hmac_key(core)
    first = ok(mac(core, uid, data=DATA[:5], init_indicator=True))
    assert first.mac_data is None and first.correlation_value
    last = ok(mac(core, uid, data=DATA[5:], correlation_value=first.correlation_value,
                  final_indicator=True))
    assert last.mac_data == hmac.new(KEY, DATA, hashlib.sha256).digest()
    other = hmac_key(core)  # a stream cannot move to another key
    failed(mac(core, other, data=b"", correlation_value=first.correlation_value,
               final_indicator=True), ResultReason.INVALID_CORRELATION_VALUE)


def test_mac_follows_lifecycle_and_usage_mask(core: CoreHarness) -> None:
    pre_active = hmac_key(core, state=State.PRE_ACTIVE)
    failed(mac(core, pre_active), ResultReason.WRONG_KEY_LIFECYCLE_STATE)
    verify_only = hmac_key(core, mask=CryptographicUsageMask.MAC_VERIFY)
    failed(mac(core, verify_only), ResultReason.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK)
    good = hmac.new(KEY, DATA, hashlib.sha256).digest()
    assert ok(mac_verify(core, verify_only, good)).validity_indicator == ValidityIndicator.VALID
    uid = hmac_key(core)
    revoke(core, uid)  # Deactivated: verifies, no longer generates
    failed(mac(core, uid), ResultReason.WRONG_KEY_LIFECYCLE_STATE)
    assert ok(mac_verify(core, uid, good)).validity_indicator == ValidityIndicator.VALID


def test_mac_is_tenant_scoped_and_wants_a_secret_key(core: CoreHarness) -> None:
    uid = hmac_key(core, tenant="other")
    failed(mac(core, uid), ResultReason.OBJECT_NOT_FOUND)
    failed(mac(core, uid, version=(1, 4)), ResultReason.ITEM_NOT_FOUND)
    assert ok(mac(core, uid, principal=service_principal("other"))).mac_data
    private_uid, _ = create_pair(core)
    failed(mac(core, private_uid), ResultReason.INVALID_OBJECT_TYPE)
    failed(mac_verify(core, hmac_key(core), None), ResultReason.INVALID_MESSAGE)


# Hash ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("hashing, reference", [
    (HashingAlgorithm.SHA_224, hashlib.sha224), (HashingAlgorithm.SHA_256, hashlib.sha256),
    (HashingAlgorithm.SHA_384, hashlib.sha384), (HashingAlgorithm.SHA_512, hashlib.sha512),
])
def test_hash_sha2(core: CoreHarness, hashing, reference) -> None:
    cp = CryptographicParameters(hashing_algorithm=hashing)
    answer = ok(one(core, Operation.HASH, HashRequest(cryptographic_parameters=cp, data=DATA)))
    assert answer.data == reference(DATA).digest()


def test_hash_stream_and_refusals(core: CoreHarness) -> None:
    cp = CryptographicParameters(hashing_algorithm=HashingAlgorithm.SHA_256)
    first = ok(one(core, Operation.HASH, HashRequest(cryptographic_parameters=cp,
                                                     data=DATA[:7], init_indicator=True)))
    last = ok(one(core, Operation.HASH, HashRequest(
        data=DATA[7:], correlation_value=first.correlation_value, final_indicator=True)))
    assert last.data == hashlib.sha256(DATA).digest()
    failed(one(core, Operation.HASH, HashRequest(data=DATA)),
           ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS)
    failed(one(core, Operation.HASH, HashRequest(
        cryptographic_parameters=CryptographicParameters(hashing_algorithm=HashingAlgorithm.MD5),
        data=DATA)), ResultReason.UNSUPPORTED_CRYPTOGRAPHIC_PARAMETERS)
    failed(one(core, Operation.HASH, HashRequest(data=b"x", correlation_value=b"forged",
                                                 final_indicator=True)),
           ResultReason.INVALID_CORRELATION_VALUE)


# RNG Retrieve and RNG Seed ---------------------------------------------------------------------
def test_rng_retrieve(core: CoreHarness) -> None:
    first = ok(one(core, Operation.RNG_RETRIEVE, RngRetrieveRequest(data_length=32))).data
    second = ok(one(core, Operation.RNG_RETRIEVE, RngRetrieveRequest(data_length=32))).data
    assert len(first) == len(second) == 32 and first != second
    failed(one(core, Operation.RNG_RETRIEVE, RngRetrieveRequest(data_length=0)),
           ResultReason.INVALID_FIELD)
    failed(one(core, Operation.RNG_RETRIEVE, RngRetrieveRequest(data_length=1 << 20)),
           ResultReason.SERVER_LIMIT_EXCEEDED)


def test_rng_seed_is_used_whole(core: CoreHarness) -> None:
    assert ok(one(core, Operation.RNG_SEED, RngSeedRequest(data=bytes(32)))).data_length == 32
    failed(one(core, Operation.RNG_SEED, RngSeedRequest()), ResultReason.INVALID_MESSAGE)


def test_mix_into_os_pool_writes_the_seed(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.write_bytes(b"")
    assert mix_into_os_pool(b"seed", str(pool)) == 4
    assert pool.read_bytes() == b"seed"
    assert mix_into_os_pool(b"seed", str(tmp_path / "missing" / "device")) == 0


# RSA Encrypt and Decrypt ---------------------------------------------------------------------
ENCRYPT, DECRYPT = CryptographicUsageMask.ENCRYPT, CryptographicUsageMask.DECRYPT


def oaep(hashing=HashingAlgorithm.SHA_256, label=None) -> CryptographicParameters:
    return CryptographicParameters(padding_method=PaddingMethod.OAEP, hashing_algorithm=hashing,
                                   cryptographic_algorithm=_A.RSA, p_source=label)


@pytest.mark.parametrize("cp", [None, oaep(HashingAlgorithm.SHA_384, b"label"),
                                CryptographicParameters(padding_method=PaddingMethod.PKCS1_V1_5)])
@pytest.mark.parametrize("version", [(1, 2), (2, 1)])
def test_rsa_encrypt_decrypt_round_trip(core: CoreHarness, cp, version) -> None:
    private_uid, public_uid = create_pair(core, private_mask=DECRYPT, public_mask=ENCRYPT)
    sealed = ok(one(core, Operation.ENCRYPT, EncryptRequest(
        unique_identifier=public_uid, data=b"secret", cryptographic_parameters=cp),
        version=version)).data
    assert len(sealed) == 256
    opened = ok(one(core, Operation.DECRYPT, DecryptRequest(
        unique_identifier=private_uid, data=sealed, cryptographic_parameters=cp),
        version=version)).data
    assert opened == b"secret"


def test_rsa_oaep_interoperates_with_the_library(core: CoreHarness) -> None:
    private_uid, public_uid = create_pair(core, private_mask=DECRYPT, public_mask=ENCRYPT)
    _, key = public_key(core, public_uid)
    sealed = key.encrypt(b"from outside", padding.OAEP(
        mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    assert ok(one(core, Operation.DECRYPT, DecryptRequest(
        unique_identifier=private_uid, data=sealed))).data == b"from outside"


def test_rsa_keys_follow_their_roles_and_masks(core: CoreHarness) -> None:
    private_uid, public_uid = create_pair(core, private_mask=DECRYPT, public_mask=ENCRYPT)
    failed(one(core, Operation.ENCRYPT, EncryptRequest(unique_identifier=private_uid,
                                                       data=b"x")),
           ResultReason.INVALID_OBJECT_TYPE)
    failed(one(core, Operation.DECRYPT, DecryptRequest(unique_identifier=public_uid,
                                                       data=b"x" * 256)),
           ResultReason.INVALID_OBJECT_TYPE)
    failed(one(core, Operation.DECRYPT, DecryptRequest(unique_identifier=private_uid,
                                                       data=b"x" * 256)),
           ResultReason.CRYPTOGRAPHIC_FAILURE)
    signing_private, signing_public = create_pair(core)  # Sign / Verify masks only
    failed(one(core, Operation.ENCRYPT, EncryptRequest(unique_identifier=signing_public,
                                                       data=b"x")),
           ResultReason.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK)
    pre_active, _ = create_pair(core, private_mask=DECRYPT, public_mask=ENCRYPT,
                                activate=False)
    failed(one(core, Operation.DECRYPT, DecryptRequest(unique_identifier=pre_active,
                                                       data=b"x" * 256)),
           ResultReason.WRONG_KEY_LIFECYCLE_STATE)
    failed(one(core, Operation.ENCRYPT, EncryptRequest(
        unique_identifier=public_uid, data=b"x", init_indicator=True)),
        ResultReason.INVALID_FIELD)
    failed(one(core, Operation.ENCRYPT, EncryptRequest(unique_identifier=public_uid,
                                                       data=b"x"),
               principal=service_principal("other")), ResultReason.OBJECT_NOT_FOUND)


def test_key_pairs_carry_digest_and_rng(core: CoreHarness) -> None:
    private_uid, public_uid = create_pair(core)
    for uid in (private_uid, public_uid):
        _, attributes = stored(core, uid)
        tags = {a.tag for a in attributes}
        assert {Tag.DIGEST, Tag.RANDOM_NUMBER_GENERATOR} <= tags
    block, _ = public_key(core, public_uid)
    _, attributes = stored(core, public_uid)
    digest = next(a.value for a in attributes if a.tag == Tag.DIGEST)
    assert digest.find(Tag.DIGEST_VALUE).value == hashlib.sha256(
        block.key_value.key_material).digest()


# The OASIS cases, in process ---------------------------------------------------------------
def _cases(*patterns: str) -> list[Path]:
    found: list[Path] = []
    for directory in ("oasis-kmip-profiles-v1.4-os", "oasis-kmip-profiles-v2.1-os"):
        for pattern in patterns:
            found += sorted((VECTORS / directory).glob(pattern))
    return found


@pytest.mark.parametrize("path", _cases("mandatory/CS-AC-M-*.xml", "mandatory/CS-RNG-M-*.xml",
                                        "optional/CS-RNG-O-1-*.xml"),
                         ids=lambda p: p.stem)
def test_oasis_advanced_cryptographic_and_rng_cases(core: CoreHarness, path: Path) -> None:
    result = run_case(path, core.client())
    assert result.passed, result.line()



def test_query_lists_the_new_operations(core: CoreHarness) -> None:
    answer = ok(one(core, Operation.QUERY, QueryRequest(
        query_functions=[QueryFunction.QUERY_OPERATIONS])))
    assert {Operation.MAC, Operation.MAC_VERIFY, Operation.HASH, Operation.RNG_RETRIEVE,
            Operation.RNG_SEED} <= set(answer.operations)
