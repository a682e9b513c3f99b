"""MAC, MAC Verify, Hash, RNG Retrieve, RNG Seed and RSA encryption against a real
`twistd kcm-core` over mutual TLS: PyKMIP's ProxyKmipClient (``mac``, ``encrypt``,
``decrypt``) at KMIP 1.2 to 2.0, our own client for the rest, and each answer audited."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from kmip.core import enums
from kmip.pie import exceptions as pie_exceptions

from kcm.kmip.attributes import CryptographicParameters
from kcm.kmip.enums import HashingAlgorithm, Operation, ResultStatus
from kcm.kmip.messages import (
    ProtocolVersion,
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    decode_response,
    encode_request,
)
from kcm.kmip.payloads import HashRequest, RngRetrieveRequest, RngSeedRequest
from kcm.ttlv import decode, encode
from tests.e2e_support import CoreProcess, wait_until

_VERSIONS = [enums.KMIPVersion.KMIP_1_2, enums.KMIPVersion.KMIP_1_3, enums.KMIPVersion.KMIP_1_4,
             enums.KMIPVersion.KMIP_2_0]
_MAC_MASKS = [enums.CryptographicUsageMask.MAC_GENERATE,
              enums.CryptographicUsageMask.MAC_VERIFY]


def test_pykmip_mac_with_a_created_hmac_key(core_process: CoreProcess) -> None:
    for version in _VERSIONS:
        _pykmip_mac(core_process, version)


def _pykmip_mac(core_process: CoreProcess, version: enums.KMIPVersion) -> None:
    client = core_process.pykmip()
    client.kmip_version = version
    try:
        uid = client.create(enums.CryptographicAlgorithm.HMAC_SHA256, 256,
                            cryptographic_usage_mask=_MAC_MASKS)
        with pytest.raises(pie_exceptions.KmipOperationFailure):
            client.mac(b"data", uid, enums.CryptographicAlgorithm.HMAC_SHA256)  # Pre-Active
        client.activate(uid)
        key = client.get(uid).value
        mac_uid, mac = client.mac(b"data", uid, enums.CryptographicAlgorithm.HMAC_SHA256)
        assert (mac_uid, mac) == (uid, hmac.new(key, b"data", hashlib.sha256).digest())
        _, mac512 = client.mac(b"data", uid, enums.CryptographicAlgorithm.HMAC_SHA512)
        assert mac512 == hmac.new(key, b"data", hashlib.sha512).digest()
    finally:
        client.close()


def test_pykmip_rsa_encrypt_and_decrypt(core_process: CoreProcess) -> None:
    for version in _VERSIONS:
        _pykmip_rsa(core_process, version)


def _pykmip_rsa(core_process: CoreProcess, version: enums.KMIPVersion) -> None:
    client = core_process.pykmip()
    client.kmip_version = version
    try:
        public_uid, private_uid = client.create_key_pair(
            enums.CryptographicAlgorithm.RSA, 2048,
            public_usage_mask=[enums.CryptographicUsageMask.ENCRYPT],
            private_usage_mask=[enums.CryptographicUsageMask.DECRYPT])
        client.activate(public_uid)
        client.activate(private_uid)
        for padding in (enums.PaddingMethod.OAEP, enums.PaddingMethod.PKCS1v15):
            parameters = {"cryptographic_algorithm": enums.CryptographicAlgorithm.RSA,
                          "padding_method": padding,
                          "hashing_algorithm": enums.HashingAlgorithm.SHA_256}
            sealed, _ = client.encrypt(b"a secret", uid=public_uid,
                                       cryptographic_parameters=parameters)
            assert len(sealed) == 256
            assert client.decrypt(sealed, uid=private_uid,
                                  cryptographic_parameters=parameters) == b"a secret"
        with pytest.raises(pie_exceptions.KmipOperationFailure) as refused:
            client.encrypt(b"x", uid=private_uid,
                           cryptographic_parameters={"padding_method": enums.PaddingMethod.OAEP})
        assert refused.value.reason == (  # 2.x has a word of its own
            enums.ResultReason.INVALID_OBJECT_TYPE if version == enums.KMIPVersion.KMIP_2_0
            else enums.ResultReason.ILLEGAL_OPERATION)
    finally:
        client.close()


def _send(core: CoreProcess, operation: Operation, payload: object,
          version: tuple[int, int] = (2, 1)):
    header = RequestHeader(protocol_version=ProtocolVersion.of(version), batch_count=1)
    message = RequestMessage(header, [RequestBatchItem(operation=operation,
                                                       request_payload=payload)])
    with core.client() as client:
        answer = client.send(encode(encode_request(message)))
    [item] = decode_response(decode(answer)).batch_items
    assert item.result_status == ResultStatus.SUCCESS, item.result_message
    return item.response_payload


def test_hash_and_rng_over_tls(core_process: CoreProcess) -> None:
    for version in ((1, 2), (1, 4), (2, 1)):
        _hash_and_rng(core_process, version)


def _hash_and_rng(core_process: CoreProcess, version: tuple[int, int]) -> None:
    sha384 = CryptographicParameters(hashing_algorithm=HashingAlgorithm.SHA_384)
    digest = _send(core_process, Operation.HASH,
                   HashRequest(cryptographic_parameters=sha384, data=b"abc"), version).data
    assert digest == hashlib.sha384(b"abc").digest()
    random = _send(core_process, Operation.RNG_RETRIEVE, RngRetrieveRequest(data_length=48),
                   version).data
    assert len(random) == 48
    used = _send(core_process, Operation.RNG_SEED, RngSeedRequest(data=random),
                 version).data_length
    assert used == 48


def test_the_new_operations_are_audited(core_process: CoreProcess) -> None:
    _send(core_process, Operation.RNG_RETRIEVE, RngRetrieveRequest(data_length=16))
    _send(core_process, Operation.HASH, HashRequest(
        cryptographic_parameters=CryptographicParameters(
            hashing_algorithm=HashingAlgorithm.SHA_256), data=b"abc"))

    def audited() -> set[str]:
        lines = [json.loads(line) for line in core_process.log.read_text().splitlines()
                 if line.strip()]
        return {line["operation"] for line in lines if line["namespace"] == "kcm.audit"}

    wait_until(lambda: {"RNG_RETRIEVE", "HASH"} <= audited(), "the audit events")
    assert core_process.kcm("audit", "verify").returncode == 0
