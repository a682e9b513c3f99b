"""Encrypt with a Public Key and Decrypt with a Private Key: RSA-OAEP and RSA PKCS#1 v1.5
(KMIP 1.4 §4.29, §4.30; 2.1 §6.1.18, §6.1.12; the CS-AC profile's OAEP cases).

:mod:`kcm.core.operations.crypto_ops` loads the key and applies the policy and the key-use
rule (state, dates, Cryptographic Usage Mask, Usage Limits) for both kinds of key, then
hands an RSA key here. The scheme and the cipher are :mod:`kcm.crypto.rsa_cipher`'s.
RSA encrypts one message at a time: no IV, no streaming, no authenticated data.
"""

from __future__ import annotations

from kcm.core import managed
from kcm.core.context import OperationContext, PrivateKeyResults, private_key_inputs
from kcm.core.operations._objects_common import stored_rsa_private_key, stored_rsa_public_key
from kcm.crypto.errors import unsupported
from kcm.crypto.rsa_cipher import RsaCipherSpec, resolve_rsa_cipher, rsa_decrypt, rsa_encrypt
from kcm.kmip.enums import HashingAlgorithm, PaddingMethod, ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import enum_label
from kcm.kmip.payloads import DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse
from kcm.kmip.tags import Tag

__all__ = ["prepare_rsa_decrypt", "rsa_decrypt_request", "rsa_encrypt_request"]


def rsa_encrypt_request(ctx: OperationContext, obj: managed.StoredObject,
                        request: EncryptRequest, data: bytes) -> EncryptResponse:
    """Encrypt ``data`` to the Public Key ``obj`` (already judged usable)."""
    spec = _spec(obj, request)
    key = stored_rsa_public_key(ctx, obj)
    if key is None:
        raise unsupported("only RSA public keys encrypt here")
    _audit(ctx, spec, len(data))
    return EncryptResponse(unique_identifier=obj.uid, data=rsa_encrypt(key, spec, data))


def rsa_decrypt_request(ctx: OperationContext, obj: managed.StoredObject,
                        request: DecryptRequest, data: bytes) -> DecryptResponse:
    """Decrypt ``data`` with the Private Key ``obj`` (already judged usable)."""
    spec = _spec(obj, request)
    if request.authenticated_encryption_tag is not None:
        raise KmipError(ResultReason.INVALID_FIELD, "RSA decryption takes no tag")
    key = stored_rsa_private_key(ctx, obj)
    if key is None:
        raise unsupported("only RSA private keys decrypt here")
    _audit(ctx, spec, len(data))
    # Computed on the tenant's worker before the group commit (prepare_rsa_decrypt), when
    # the request came through kcm-core's handler.
    return DecryptResponse(unique_identifier=obj.uid, data=ctx.private_key_operation(
        private_key_inputs("decrypt", obj.uid, spec, data),
        lambda: rsa_decrypt(key, spec, data)))


def prepare_rsa_decrypt(ctx: OperationContext, obj: managed.StoredObject,
                        request: DecryptRequest, data: bytes,
                        results: PrivateKeyResults) -> None:
    """:func:`rsa_decrypt_request`'s decryption, computed and kept in ``results`` (for a
    tenant's worker, before the group commit: ``obj`` already judged usable)."""
    spec = _spec(obj, request)
    key = stored_rsa_private_key(ctx, obj)
    if key is None or request.authenticated_encryption_tag is not None:
        return
    results.compute(private_key_inputs("decrypt", obj.uid, spec, data),
                    lambda: rsa_decrypt(key, spec, data))


def _spec(obj: managed.StoredObject, request: EncryptRequest | DecryptRequest
          ) -> RsaCipherSpec:
    if request.init_indicator or request.correlation_value is not None \
            or request.final_indicator:
        raise KmipError(ResultReason.INVALID_FIELD, "RSA encryption cannot be streamed")
    if request.iv_counter_nonce is not None or \
            request.authenticated_encryption_additional_data is not None:
        raise KmipError(ResultReason.INVALID_FIELD,
                        "RSA encryption takes no IV or additional data")
    return resolve_rsa_cipher(obj.value(Tag.CRYPTOGRAPHIC_ALGORITHM),
                              obj.value(Tag.CRYPTOGRAPHIC_PARAMETERS),
                              request.cryptographic_parameters)


def _audit(ctx: OperationContext, spec: RsaCipherSpec, length: int) -> None:
    ctx.audit_detail["algorithm"] = "RSA"
    ctx.audit_detail["padding"] = enum_label(PaddingMethod, spec.padding)
    if spec.padding == PaddingMethod.OAEP:
        ctx.audit_detail["hash"] = enum_label(HashingAlgorithm, spec.hashing)
    ctx.audit_detail["bytes"] = length
