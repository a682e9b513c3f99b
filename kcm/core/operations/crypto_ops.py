"""Encrypt, Decrypt and Check with managed symmetric keys, and the common checks of
Encrypt and Decrypt with RSA keys (KMIP 1.4 §4.29, §4.30, §4.10; 2.1 §6.1.18, §6.1.12,
§6.1.3). A Public Key (Encrypt) or Private Key (Decrypt) passes the same checks, then
:mod:`kcm.core.operations.rsa_cipher_ops` runs the RSA cipher.

What the handlers promise:

* The key is the caller's own (another tenant's is Item Not Found), the policy lets the
  caller use it (:func:`kcm.core.policy.check_key_use`), the key-use rule allows it
  (:mod:`kcm.kernel.key_use`: Encrypt only when Active and before its Protect Stop Date;
  Decrypt also when Deactivated or Compromised, and not before its Process Start Date; the
  Encrypt or Decrypt bit of its Cryptographic Usage Mask, when set), and its Usage Limits,
  when set, are not exhausted (Encrypt counts against them, :mod:`kcm.core.usage_limits`).
* The cipher itself (parameters and their defaults, modes, padding, IVs, AEAD tags, and
  the result reasons of each refusal) is :mod:`kcm.crypto.symmetric`'s, shared with the L4
  engine so that both answer alike.
* Streaming (Init Indicator / Correlation Value / Final Indicator) works for every mode.
  The Correlation Value is the stream's state sealed under a key derived from the object's
  own key (:mod:`kcm.crypto.sealed_state`), so any core can continue a stream and a client
  cannot forge one. Each value is used once (:mod:`kcm.core.stream_parts`): a stream is
  one chain of parts, one message under one IV, counted once against the Usage Limits at
  its Init Indicator (or by the bytes of each part). AEAD decryption releases no plaintext
  before the tag has been verified.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TypeVar

from kcm.core import l4_requests, managed, policy, stream_parts, usage_limits
from kcm.core.context import OperationContext, PrivateKeyResults
from kcm.core.operations import rsa_cipher_ops
from kcm.core.operations._objects_common import clear_key_bytes, require_usable
from kcm.crypto import symmetric
from kcm.crypto.errors import cryptographic_failure
from kcm.crypto.sealed_state import MAX_CIPHER_STREAM_BYTES, StreamPart, check_stream_size
from kcm.crypto.symmetric import CipherSpec, decrypt_once, encrypt_once, partial
from kcm.kernel import aead_tag, key_use
from kcm.kmip.attributes import CryptographicParameters
from kcm.kmip.enums import (
    BlockCipherMode,
    CryptographicAlgorithm,
    CryptographicUsageMask,
    ObjectType,
    ResultReason,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import enum_label
from kcm.kmip.payloads import (
    CheckRequest,
    CheckResponse,
    DecryptRequest,
    DecryptResponse,
    EncryptRequest,
    EncryptResponse,
)
from kcm.kmip.tags import Tag
from kcm.l4.identifiers import is_l3, is_l4
from kcm.ttlv import Item

#: The purpose an Encrypt or Decrypt stream's Correlation Value is sealed for.
_CIPHER_STREAM = b"kcm stream state v1 "
_Response = TypeVar("_Response", EncryptResponse, DecryptResponse)


def resolve_spec(obj: managed.StoredObject,
                 requested: CryptographicParameters | None) -> CipherSpec:
    """The cipher an Encrypt or Decrypt will run: request over key attribute over default.
    The object's cache entry keeps the last one resolved, with the request's parameters it
    was resolved for (one entry: a client varying them costs a resolution, not memory)."""
    asked = None if requested is None else tuple(
        getattr(requested, name) for name in symmetric.PARAMETER_FIELDS)
    last = obj.memo(_LAST_SPEC, _no_spec)
    if last[0] == asked and last[1] is not None:
        return last[1]
    spec = symmetric.resolve_spec(obj.value(Tag.CRYPTOGRAPHIC_ALGORITHM),
                                  obj.value(Tag.CRYPTOGRAPHIC_PARAMETERS), requested)
    obj.remember(_LAST_SPEC, (asked, spec))
    return spec


_LAST_SPEC = "last_spec"


def _no_spec() -> tuple[object, CipherSpec | None]:
    return (None, None)


# Streams ------------------------------------------------------------------------
@dataclass(slots=True)
class StreamState:
    """One Encrypt or Decrypt stream between its parts (carried by the Correlation Value)."""

    encrypt: bool
    spec: CipherSpec
    iv: bytes
    aad: bytes
    data: bytes  # all input so far
    released: int  # output bytes already returned

    def pack(self) -> bytes:
        spec = self.spec
        head = struct.pack(">BIIIIBIQ", self.encrypt, spec.algorithm, spec.mode or 0,
                           spec.padding, spec.tag_length, spec.random_iv,
                           spec.iv_length or 0, self.released)
        return head + b"".join(struct.pack(">I", len(v)) + v
                               for v in (self.iv, self.aad, self.data))

    @classmethod
    def unpack(cls, blob: bytes) -> StreamState:
        head = struct.calcsize(">BIIIIBIQ")
        encrypt, algorithm, mode, padding, tag_length, random_iv, iv_length, released = \
            struct.unpack(">BIIIIBIQ", blob[:head])
        values, offset = [], head
        for _ in range(3):
            (length,) = struct.unpack(">I", blob[offset:offset + 4])
            values.append(blob[offset + 4:offset + 4 + length])
            offset += 4 + length
        spec = CipherSpec(algorithm, mode or None, padding, tag_length, bool(random_iv),
                          iv_length or None)
        return cls(bool(encrypt), spec, values[0], values[1], values[2], released)


def seal_stream(ctx: OperationContext, key: bytes, uid: str, state: StreamState,
                after: StreamPart | None) -> bytes:
    """The Correlation Value for ``state`` (the part after ``after``, or a new stream's
    first): sealed under a key derived from ``key``."""
    return stream_parts.seal_part(ctx, key, _CIPHER_STREAM, uid, state.pack(), after)


def open_stream(ctx: OperationContext, key: bytes, uid: str, value: bytes
                ) -> tuple[StreamPart, StreamState]:
    """The part a Correlation Value names and the state it carries, the value used up;
    refused if it is not one of this key's, or was used already."""
    return stream_parts.open_once(ctx, key, _CIPHER_STREAM, uid, value, StreamState.unpack)


# Handlers -----------------------------------------------------------------------
def encrypt(ctx: OperationContext, request: EncryptRequest) -> EncryptResponse:
    if (l4_answer := l4_requests.encrypt(ctx, request)) is not None:
        return l4_answer
    obj = _usable_key(ctx, request.unique_identifier, protect=True)
    data = _data(request.data)
    # Counted for a Public Key too (KMIP 1.4 §3.21: encryption applies protection).
    usage_limits.consume_usage(ctx, obj, len(data), first=request.correlation_value is None,
                               locked=True)
    if obj.object_type == ObjectType.PUBLIC_KEY:
        return rsa_cipher_ops.rsa_encrypt_request(ctx, obj, request, data)
    return _run(ctx, obj, request, EncryptResponse(unique_identifier=obj.uid), data)


def decrypt(ctx: OperationContext, request: DecryptRequest) -> DecryptResponse:
    if (l4_answer := l4_requests.decrypt(ctx, request)) is not None:
        return l4_answer
    obj = _usable_key(ctx, request.unique_identifier, protect=False)
    data = _data(request.data)
    if obj.object_type == ObjectType.PRIVATE_KEY:
        return rsa_cipher_ops.rsa_decrypt_request(ctx, obj, request, data)
    return _run(ctx, obj, request, DecryptResponse(unique_identifier=obj.uid), data)


def prepare_decrypt(ctx: OperationContext, request: DecryptRequest,
                    results: PrivateKeyResults) -> None:
    """For a tenant's worker, before the request's group commit (``ctx`` in a read-only
    transaction): an RSA decryption ``request`` asks for, computed after the checks
    :func:`decrypt` makes and kept in ``results`` (:func:`rsa_cipher_ops.prepare_rsa_decrypt`).
    A symmetric key's decryption is left to the writer (it is cheap). Raises what the
    operation would refuse; stores nothing."""
    uid = request.unique_identifier
    if not isinstance(uid, str) or is_l4(uid) or is_l3(uid):
        return  # (an ID Placeholder's key is made in the batch; L4 and L3 are AES)
    obj = _usable_key(ctx, request.unique_identifier, protect=False)
    if obj.object_type == ObjectType.PRIVATE_KEY:
        rsa_cipher_ops.prepare_rsa_decrypt(ctx, obj, request, _data(request.data), results)


def _run(ctx: OperationContext, obj: managed.StoredObject,
         request: EncryptRequest | DecryptRequest, response: _Response, data: bytes
         ) -> _Response:
    """One Encrypt or Decrypt with ``obj``: of a whole message, or of a stream's part."""
    key = clear_key_bytes(ctx, obj)
    part, state = _stream_state(ctx, obj, key, request, response, data)
    with cryptographic_failure():
        if _stream_part(ctx, request, key, obj.uid, part, state, response):
            return response
        if isinstance(response, EncryptResponse):
            ciphertext, tag = encrypt_once(state.spec, key, state.iv, state.data, state.aad)
            response.data, response.authenticated_encryption_tag = aead_tag.answer_data(
                ctx.version, ciphertext[state.released:], tag)
        else:
            data, tag = state.data, request.authenticated_encryption_tag
            if state.spec.aead:
                data, tag = aead_tag.request_data(ctx.version, data, tag,
                                                  state.spec.tag_length)
            plaintext = decrypt_once(state.spec, key, state.iv, data, state.aad, tag)
            response.data = plaintext[state.released:]
    return response


def check(ctx: OperationContext, request: CheckRequest) -> CheckResponse:
    """Could the caller use the object as described? The object's state is not judged
    (the OASIS BL-M-2 case checks a Pre-Active key); its policy, usage mask, remaining
    usage and lease are. On failure the ID Placeholder is emptied (KMIP 1.4 §4.10); a Check
    that passes leaves it as it was (§4: the operand before, unchanged after)."""
    uid = ctx.id_placeholder.resolve(request.unique_identifier)
    before = ctx.id_placeholder.value
    ctx.id_placeholder.value = None
    obj = managed.load(ctx, uid, for_update=False)
    policy.check_key_use(ctx.principal, obj.level, obj.row.service)
    wanted_mask = request.cryptographic_usage_mask
    if wanted_mask is not None and not key_use.mask_allows(
            obj.value(Tag.CRYPTOGRAPHIC_USAGE_MASK), wanted_mask):
        raise key_use.incompatible_mask("Check failed: the object's Cryptographic Usage Mask "
                                        "does not allow " + _mask_names(wanted_mask))
    wanted_count = request.usage_limits_count
    if wanted_count is not None:
        remaining = usage_limits.remaining_usage(obj)
        if remaining is not None and remaining[0] < wanted_count:
            raise KmipError(ResultReason.USAGE_LIMIT_EXCEEDED,
                            f"Check failed: {remaining[0]} usage left, {wanted_count} asked")
    lease = obj.value(Tag.LEASE_TIME)
    if request.lease_time is not None and lease is not None and request.lease_time > lease:
        raise KmipError(ResultReason.PERMISSION_DENIED,
                        f"Check failed: the lease is at most {lease} seconds")
    ctx.id_placeholder.value = before
    return CheckResponse(unique_identifier=obj.uid)


# Helpers ------------------------------------------------------------------------
def _usable_key(ctx: OperationContext, unique_identifier: str | Item | None, *,
                protect: bool) -> managed.StoredObject:
    uid = ctx.id_placeholder.resolve(unique_identifier)
    obj = managed.load(ctx, uid, for_update=protect)
    # Encrypt with a Symmetric or Public Key; Decrypt with a Symmetric or Private Key.
    asymmetric = ObjectType.PUBLIC_KEY if protect else ObjectType.PRIVATE_KEY
    if obj.object_type not in (ObjectType.SYMMETRIC_KEY, asymmetric):
        raise KmipError(ResultReason.INVALID_OBJECT_TYPE,
                        f"a {enum_label(ObjectType, obj.object_type)} cannot encrypt or decrypt",
                        v1_reason=ResultReason.ILLEGAL_OPERATION)
    policy.check_key_use(ctx.principal, obj.level, obj.row.service)
    require_usable(ctx, obj, key_use.ENCRYPT if protect else key_use.DECRYPT)
    return obj


def _data(data: bytes | None) -> bytes:
    if data is None:
        raise KmipError(ResultReason.INVALID_MESSAGE, "the request has no Data")
    return data


def _stream_state(ctx: OperationContext, obj: managed.StoredObject, key: bytes,
                  request: EncryptRequest | DecryptRequest,
                  response: EncryptResponse | DecryptResponse, data: bytes
                  ) -> tuple[StreamPart | None, StreamState]:
    """The stream this request continues (its Correlation Value's, used up, with ``data``
    appended) and the part it was, else a new one (None); a new Encrypt returns the IV
    the server chose."""
    encrypt = isinstance(request, EncryptRequest)
    part = None
    if request.correlation_value is not None:
        part, state = open_stream(ctx, key, obj.uid, request.correlation_value)
        if state.encrypt != encrypt:
            raise KmipError(ResultReason.INVALID_CORRELATION_VALUE,
                            "the Correlation Value belongs to a stream of the other operation")
        state.data += data
        check_stream_size(len(state.data), MAX_CIPHER_STREAM_BYTES)
    else:
        spec = resolve_spec(obj, request.cryptographic_parameters)
        if isinstance(response, EncryptResponse):
            iv, response.iv_counter_nonce = symmetric.encrypt_iv(
                spec, request.iv_counter_nonce, ctx.random_bytes)
        else:
            iv = symmetric.decrypt_iv(spec, request.iv_counter_nonce)
        state = StreamState(encrypt, spec, iv, request.authenticated_encryption_additional_data
                            or b"", data, 0)
    _audit(ctx, state.spec, len(data))
    return part, state


def _stream_part(ctx: OperationContext, request: EncryptRequest | DecryptRequest, key: bytes,
                 uid: str, part: StreamPart | None, state: StreamState,
                 response: EncryptResponse | DecryptResponse) -> bool:
    """For a stream's part before its last: answer what can be released so far and the
    next Correlation Value, and say True. False for a whole message or a stream's end."""
    streaming = bool(request.init_indicator) or request.correlation_value is not None
    if not streaming or request.final_indicator:
        return False
    check_stream_size(len(state.data), MAX_CIPHER_STREAM_BYTES)
    output = partial(state.spec, key, state.iv, state.data, encrypt=state.encrypt,
                     aad=state.aad)
    response.data = output[state.released:]
    state.released = len(output)
    response.correlation_value = seal_stream(ctx, key, uid, state, part)
    return True


def _audit(ctx: OperationContext, spec: CipherSpec, length: int) -> None:
    ctx.audit_detail["algorithm"] = enum_label(CryptographicAlgorithm, spec.algorithm)
    if spec.mode is not None:
        ctx.audit_detail["mode"] = enum_label(BlockCipherMode, spec.mode)
    ctx.audit_detail["bytes"] = length


def _mask_names(mask: int) -> str:
    names = [flag.name for flag in CryptographicUsageMask if flag.value & mask and flag.name]
    return " ".join(names) or str(mask)
