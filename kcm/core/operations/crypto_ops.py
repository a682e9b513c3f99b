"""Encrypt, Decrypt and Check with managed symmetric keys
(KMIP 1.4 §4.29, §4.30, §4.10; 2.1 §6.1.18, §6.1.12, §6.1.3).

What the handlers promise:

* The key is the caller's own (another tenant's is Item Not Found), the policy lets the
  caller use it (:func:`kcm.core.policy.check_key_use`), its state allows the use
  (Encrypt only when Active and before its Protect Stop Date; Decrypt also when
  Deactivated or Compromised, and not before its Process Start Date), its Cryptographic
  Usage Mask, when set, has the Encrypt or Decrypt bit, and its Usage Limits, when set,
  are not exhausted (Encrypt counts against them; KMIP 1.4 §3.21).
* The cipher itself (parameters and their defaults, modes, padding, IVs, AEAD tags, and
  the result reasons of each refusal) is :mod:`kcm.crypto.symmetric`'s, shared with the L4
  engine so that both answer alike.
* Streaming (Init Indicator / Correlation Value / Final Indicator) works for every mode.
  The Correlation Value is the stream's state sealed with AES-GCM under a key derived from
  the object's own key, so any core can continue a stream and a client cannot forge one.
  AEAD decryption releases no plaintext before the tag has been verified.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kcm.core import l4_requests, managed, policy
from kcm.core.batch import operation
from kcm.core.context import OperationContext
from kcm.crypto import symmetric
from kcm.crypto.symmetric import (
    CipherSpec,
    cryptographic_failure,
    decrypt_once,
    encrypt_once,
    partial,
)
from kcm.crypto.symmetric import enum_name as _name
from kcm.kernel import lifecycle
from kcm.kmip.attributes import CryptographicParameters
from kcm.kmip.enums import (
    BlockCipherMode,
    CryptographicAlgorithm,
    CryptographicUsageMask,
    ObjectType,
    Operation,
    ResultReason,
    UsageLimitsUnit,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.objects import SymmetricKey
from kcm.kmip.payloads import (
    CheckRequest,
    CheckResponse,
    DecryptRequest,
    DecryptResponse,
    EncryptRequest,
    EncryptResponse,
)
from kcm.kmip.tags import Tag
from kcm.kmip.versions import Version
from kcm.ttlv import Item, ItemType

#: How much input a stream may carry in its Correlation Value before it is refused.
MAX_STREAM_BYTES = 1 << 20


def resolve_spec(ctx: OperationContext, obj: managed.StoredObject,
                 requested: CryptographicParameters | None) -> CipherSpec:
    """The cipher an Encrypt or Decrypt will run: request over key attribute over default."""
    return symmetric.resolve_spec(obj.value(Tag.CRYPTOGRAPHIC_ALGORITHM),
                                  obj.value(Tag.CRYPTOGRAPHIC_PARAMETERS), requested,
                                  ctx.version)


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


_STREAM_FORMAT = b"\x01"


def _stream_key(key: bytes, uid: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"kcm stream state v1 " + uid.encode()).derive(key)


def seal_stream(ctx: OperationContext, key: bytes, uid: str, state: StreamState) -> bytes:
    """The Correlation Value for ``state``: sealed under a key derived from ``key``."""
    nonce = ctx.random_bytes(12)
    return _STREAM_FORMAT + nonce + AESGCM(_stream_key(key, uid)).encrypt(
        nonce, state.pack(), uid.encode())


def open_stream(ctx: OperationContext, key: bytes, uid: str, value: bytes) -> StreamState:
    """The state a Correlation Value carries; refused if it is not one of this key's."""
    try:
        if value[:1] != _STREAM_FORMAT:
            raise InvalidTag
        blob = AESGCM(_stream_key(key, uid)).decrypt(value[1:13], value[13:], uid.encode())
        return StreamState.unpack(blob)
    except (InvalidTag, ValueError, struct.error):
        reason = ResultReason.INVALID_CORRELATION_VALUE
        raise KmipError(reason, "the Correlation Value is not one of this key's streams") \
            from None


# Handlers -----------------------------------------------------------------------
@operation(Operation.ENCRYPT)
def encrypt(ctx: OperationContext, request: EncryptRequest) -> EncryptResponse:
    if (l4_answer := l4_requests.encrypt(ctx, request)) is not None:
        return l4_answer
    obj = _usable_key(ctx, request.unique_identifier, protect=True)
    data = _data(request.data)
    _consume_usage(ctx, obj, data, first=request.correlation_value is None)
    key = _key_bytes(ctx, obj)
    response = EncryptResponse(unique_identifier=obj.uid)
    if request.correlation_value is not None:
        state = _continue(ctx, key, obj.uid, request.correlation_value, data, encrypt=True)
        spec, iv = state.spec, state.iv
    else:
        spec = resolve_spec(ctx, obj, request.cryptographic_parameters)
        iv, response.iv_counter_nonce = symmetric.encrypt_iv(
            spec, request.iv_counter_nonce, ctx.random_bytes)
        state = StreamState(True, spec, iv, request.authenticated_encryption_additional_data
                            or b"", data, 0)
    _audit(ctx, spec, len(data))
    with cryptographic_failure():
        if _streaming(request) and not request.final_indicator:
            _bound_stream(ctx, state)
            output = partial(spec, key, iv, state.data, encrypt=True, aad=state.aad)
            response.data = output[state.released:]
            state.released = len(output)
            response.correlation_value = seal_stream(ctx, key, obj.uid, state)
            return response
        ciphertext, tag = encrypt_once(spec, key, iv, state.data, state.aad)
    response.data = ciphertext[state.released:]
    response.authenticated_encryption_tag = tag
    return response


@operation(Operation.DECRYPT)
def decrypt(ctx: OperationContext, request: DecryptRequest) -> DecryptResponse:
    if (l4_answer := l4_requests.decrypt(ctx, request)) is not None:
        return l4_answer
    obj = _usable_key(ctx, request.unique_identifier, protect=False)
    data = _data(request.data)
    key = _key_bytes(ctx, obj)
    response = DecryptResponse(unique_identifier=obj.uid)
    if request.correlation_value is not None:
        state = _continue(ctx, key, obj.uid, request.correlation_value, data, encrypt=False)
        spec, iv = state.spec, state.iv
    else:
        spec = resolve_spec(ctx, obj, request.cryptographic_parameters)
        iv = symmetric.decrypt_iv(spec, request.iv_counter_nonce)
        state = StreamState(False, spec, iv, request.authenticated_encryption_additional_data
                            or b"", data, 0)
    _audit(ctx, spec, len(data))
    with cryptographic_failure():
        if _streaming(request) and not request.final_indicator:
            _bound_stream(ctx, state)
            output = partial(spec, key, iv, state.data, encrypt=False, aad=state.aad)
            response.data = output[state.released:]
            state.released = len(output)
            response.correlation_value = seal_stream(ctx, key, obj.uid, state)
            return response
        plaintext = decrypt_once(spec, key, iv, state.data, state.aad,
                                 request.authenticated_encryption_tag)
    response.data = plaintext[state.released:]
    return response


@operation(Operation.CHECK)
def check(ctx: OperationContext, request: CheckRequest) -> CheckResponse:
    """Could the caller use the object as described? The object's state is not judged
    (the OASIS BL-M-2 case checks a Pre-Active key); its policy, usage mask, remaining
    usage and lease are. On failure the ID Placeholder is emptied (KMIP 1.4 §4.10)."""
    uid = ctx.id_placeholder.resolve(request.unique_identifier)
    ctx.id_placeholder.value = None
    obj = managed.load(ctx, uid, for_update=False)
    policy.check_key_use(ctx.principal, obj.level, obj.row.service)
    wanted_mask = request.cryptographic_usage_mask
    if wanted_mask is not None and not _mask_allows(obj, wanted_mask):
        raise _usage_mask_error(ctx.version, "Check failed: the object's Cryptographic Usage "
                                             "Mask does not allow " + _mask_names(wanted_mask))
    wanted_count = request.usage_limits_count
    if wanted_count is not None:
        remaining = _usage_remaining(obj)
        if remaining is not None and remaining[0] < wanted_count:
            raise KmipError(ResultReason.USAGE_LIMIT_EXCEEDED,
                            f"Check failed: {remaining[0]} usage left, {wanted_count} asked")
    lease = obj.value(Tag.LEASE_TIME)
    if request.lease_time is not None and lease is not None and request.lease_time > lease:
        raise KmipError(ResultReason.PERMISSION_DENIED,
                        f"Check failed: the lease is at most {lease} seconds")
    ctx.id_placeholder.set(obj.uid)
    return CheckResponse(unique_identifier=obj.uid)


# Helpers ------------------------------------------------------------------------
def _usable_key(ctx: OperationContext, unique_identifier: str | Item | None, *,
                protect: bool) -> managed.StoredObject:
    uid = ctx.id_placeholder.resolve(unique_identifier)
    obj = managed.load(ctx, uid, for_update=protect)
    if obj.object_type != ObjectType.SYMMETRIC_KEY:
        if obj.object_type in (ObjectType.PUBLIC_KEY, ObjectType.PRIVATE_KEY):
            raise KmipError(ResultReason.FEATURE_NOT_SUPPORTED,
                            "asymmetric encryption is not supported")
        raise KmipError(ResultReason.INVALID_OBJECT_TYPE,
                        f"a {_name(ObjectType, obj.object_type)} cannot encrypt or decrypt",
                        v1_reason=ResultReason.ILLEGAL_OPERATION)
    policy.check_key_use(ctx.principal, obj.level, obj.row.service)
    state = obj.state
    verb = "encrypt" if protect else "decrypt"
    if not lifecycle.usable_for(state, protect=protect):
        raise lifecycle.wrong_state(f"a key in state {state.name} cannot {verb}")
    if protect:
        stop = obj.value(Tag.PROTECT_STOP_DATE)
        if stop is not None and ctx.now >= stop:
            raise lifecycle.wrong_state("the key's Protect Stop Date has passed")
    else:
        start = obj.value(Tag.PROCESS_START_DATE)
        if start is not None and ctx.now < start:
            raise lifecycle.wrong_state("the key's Process Start Date is ahead")
    needed = CryptographicUsageMask.ENCRYPT if protect else CryptographicUsageMask.DECRYPT
    if not _mask_allows(obj, needed):
        raise _usage_mask_error(ctx.version,
                                f"the key's Cryptographic Usage Mask does not allow {verb}")
    return obj


def _key_bytes(ctx: OperationContext, obj: managed.StoredObject) -> bytes:
    key = managed.material(ctx, obj)
    key_bytes = key.key_block.key_bytes if isinstance(key, SymmetricKey) else None
    if key_bytes is None:
        raise KmipError(ResultReason.KEY_VALUE_NOT_PRESENT,
                        "the key material is not available in the clear to the server",
                        v1_reason=ResultReason.CRYPTOGRAPHIC_FAILURE)
    return key_bytes


def _data(data: bytes | None) -> bytes:
    if data is None:
        raise KmipError(ResultReason.INVALID_MESSAGE, "the request has no Data")
    return data


def _streaming(request: EncryptRequest | DecryptRequest) -> bool:
    return bool(request.init_indicator) or request.correlation_value is not None


def _continue(ctx: OperationContext, key: bytes, uid: str, value: bytes, data: bytes, *,
              encrypt: bool) -> StreamState:
    """The stream a Correlation Value continues, with ``data`` appended."""
    state = open_stream(ctx, key, uid, value)
    if state.encrypt != encrypt:
        raise KmipError(ResultReason.INVALID_CORRELATION_VALUE,
                        "the Correlation Value belongs to a stream of the other operation")
    state.data += data
    _bound_stream(ctx, state)
    return state


def _bound_stream(ctx: OperationContext, state: StreamState) -> None:
    # The Correlation Value carries the whole input so far; keep it (and answers) small.
    if len(state.data) > MAX_STREAM_BYTES:
        raise KmipError(ResultReason.SERVER_LIMIT_EXCEEDED,
                        f"streams are limited to {MAX_STREAM_BYTES} bytes")


def _mask_allows(obj: managed.StoredObject, wanted: int) -> bool:
    mask = obj.value(Tag.CRYPTOGRAPHIC_USAGE_MASK)
    return mask is None or (int(mask) & wanted) == wanted


def _usage_mask_error(version: Version, message: str) -> KmipError:
    # KMIP 1.x has no Incompatible Cryptographic Usage Mask; Permission Denied stands in.
    return KmipError(ResultReason.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK,
                     message)


def _usage_remaining(obj: managed.StoredObject) -> tuple[int, int | None] | None:
    """(remaining, unit) of the object's Usage Limits, or None when it has none."""
    attribute = obj.first(Tag.USAGE_LIMITS)
    if attribute is None or attribute.value is None or attribute.value.type is not \
            ItemType.STRUCTURE:
        return None
    fields = {child.tag: child.value for child in attribute.value.value}
    remaining = fields.get(Tag.USAGE_LIMITS_COUNT, fields.get(Tag.USAGE_LIMITS_TOTAL))
    if remaining is None:
        return None
    return int(remaining), fields.get(Tag.USAGE_LIMITS_UNIT)


def _consume_usage(ctx: OperationContext, obj: managed.StoredObject, data: bytes, *,
                   first: bool) -> None:
    """Count an Encrypt against the key's Usage Limits (KMIP 1.4 §3.21: only protection
    counts). The OASIS CS-BC-M-7 cases expect Permission Denied once it is used up."""
    usage = _usage_remaining(obj)
    if usage is None:
        return
    remaining, unit = usage
    amount = len(data) if unit == UsageLimitsUnit.BYTE else int(first)
    if amount > remaining:
        raise KmipError(ResultReason.PERMISSION_DENIED,
                        f"the key's usage limit is used up ({remaining} left, {amount} needed)")
    attribute = obj.first(Tag.USAGE_LIMITS)
    assert attribute is not None and attribute.value is not None
    children = [c for c in attribute.value.value if c.tag != Tag.USAGE_LIMITS_COUNT]
    count = Item(Tag.USAGE_LIMITS_COUNT, ItemType.LONG_INTEGER, remaining - amount)
    # Total, Count, Unit is the spec's order (KMIP 1.4 §3.21, 2.1 §4.63).
    position = 1 if children and children[0].tag == Tag.USAGE_LIMITS_TOTAL else 0
    children.insert(position, count)
    obj.set(Tag.USAGE_LIMITS, children, ItemType.STRUCTURE)
    managed.save(ctx, obj)


def _audit(ctx: OperationContext, spec: CipherSpec, length: int) -> None:
    ctx.audit_detail["algorithm"] = _name(CryptographicAlgorithm, spec.algorithm)
    if spec.mode is not None:
        ctx.audit_detail["mode"] = _name(BlockCipherMode, spec.mode)
    ctx.audit_detail["bytes"] = length


def _mask_names(mask: int) -> str:
    names = [flag.name for flag in CryptographicUsageMask if flag.value & mask and flag.name]
    return " ".join(names) or str(mask)
