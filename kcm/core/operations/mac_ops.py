"""MAC and MAC Verify with managed keys (KMIP 1.4 §4.33, §4.34; 2.1 §6.1.30, §6.1.31).

* The key is a Symmetric Key (or Secret Data) of the caller's own (another tenant's is
  Item Not Found), the policy lets the caller use it, and the key-use rule allows it
  (:mod:`kcm.kernel.key_use`: MAC generation only while Active and before the Protect Stop
  Date, verification also while Deactivated or Compromised and not before the Process
  Start Date; the MAC Generate or MAC Verify bit of its Cryptographic Usage Mask, when set).
* A MAC counts against the key's Usage Limits (:mod:`kcm.core.usage_limits`), a stream
  once at its first part; a MAC Verify does not.
* Which MAC runs, and the MAC itself, are :mod:`kcm.crypto.mac`'s.
* Streaming (Init Indicator / Correlation Value / Final Indicator) accumulates the data in
  a Correlation Value sealed under a key derived from the key itself
  (:mod:`kcm.crypto.sealed_state`), so a stream cannot move to another key or be forged,
  and used once (:mod:`kcm.core.stream_parts`), so it cannot be replayed either.
"""

from __future__ import annotations

import struct

from kcm.core import managed, stream_parts, usage_limits
from kcm.core.context import OperationContext
from kcm.core.operations._objects_common import clear_key_bytes, load_key_for
from kcm.crypto.mac import MacSpec, compute_mac, resolve_mac, verify_mac
from kcm.crypto.sealed_state import check_stream_size
from kcm.kernel import key_use
from kcm.kmip.enums import ObjectType, ResultReason, ValidityIndicator
from kcm.kmip.errors import KmipError
from kcm.kmip.payloads import MacRequest, MacResponse, MacVerifyRequest, MacVerifyResponse
from kcm.kmip.tags import Tag

__all__ = ["mac", "mac_verify"]

#: The purpose a MAC stream's Correlation Value is sealed for.
_MAC_STREAM = b"kcm mac stream v1 "
_STREAM_HEAD = struct.Struct(">BI")  # generating?, the MAC's Cryptographic Algorithm
_MAC_OBJECTS = (ObjectType.SYMMETRIC_KEY, ObjectType.SECRET_DATA)


def mac(ctx: OperationContext, request: MacRequest) -> MacResponse:
    obj = _mac_key(ctx, request.unique_identifier, key_use.MAC_GENERATE)
    # MAC generation applies protection (KMIP 1.4 §3.21); a stream counts at its first part.
    usage_limits.consume_usage(ctx, obj, len(request.data or b""),
                               first=request.correlation_value is None)
    key = clear_key_bytes(ctx, obj)
    response = MacResponse(unique_identifier=obj.uid)
    step = _input(ctx, obj, key, request, generating=True)
    if isinstance(step, bytes):
        response.correlation_value = step
        return response
    spec, data = step
    _audit(ctx, spec, len(data))
    response.mac_data = compute_mac(spec, key, data)
    return response


def mac_verify(ctx: OperationContext, request: MacVerifyRequest) -> MacVerifyResponse:
    obj = _mac_key(ctx, request.unique_identifier, key_use.MAC_VERIFY)
    key = clear_key_bytes(ctx, obj)
    response = MacVerifyResponse(unique_identifier=obj.uid)
    step = _input(ctx, obj, key, request, generating=False)
    if isinstance(step, bytes):
        response.correlation_value = step
        return response
    spec, data = step
    if request.mac_data is None:
        raise KmipError(ResultReason.INVALID_MESSAGE, "the request has no MAC Data")
    _audit(ctx, spec, len(data))
    response.validity_indicator = (ValidityIndicator.VALID
                                   if verify_mac(spec, key, data, request.mac_data)
                                   else ValidityIndicator.INVALID)
    return response


def _mac_key(ctx: OperationContext, unique_identifier: object,
             use: key_use.KeyUse) -> managed.StoredObject:
    return load_key_for(ctx, unique_identifier, _MAC_OBJECTS, use)


def _input(ctx: OperationContext, obj: managed.StoredObject, key: bytes,
           request: MacRequest | MacVerifyRequest, *,
           generating: bool) -> bytes | tuple[MacSpec, bytes]:
    """(the MAC to run, all the data) for a whole message or a stream's end; for a
    stream's earlier part, the next Correlation Value."""
    streaming = bool(request.init_indicator) or request.correlation_value is not None
    part = None
    if request.correlation_value is not None:
        part, (was_generating, spec, data) = stream_parts.open_once(
            ctx, key, _MAC_STREAM, obj.uid, request.correlation_value, _unpack)
        if was_generating != generating:
            raise KmipError(ResultReason.INVALID_CORRELATION_VALUE,
                            "the Correlation Value is not one of this key's streams")
    else:
        spec = resolve_mac(obj.value(Tag.CRYPTOGRAPHIC_ALGORITHM),
                           obj.value(Tag.CRYPTOGRAPHIC_PARAMETERS),
                           request.cryptographic_parameters)
        data = b""
    if request.data is None and not streaming:
        raise KmipError(ResultReason.INVALID_MESSAGE, "the request has no Data")
    data += request.data or b""
    check_stream_size(len(data))
    if streaming and not request.final_indicator:
        return stream_parts.seal_part(ctx, key, _MAC_STREAM, obj.uid,
                                      _STREAM_HEAD.pack(generating, spec.algorithm) + data,
                                      part)
    return spec, data


def _unpack(blob: bytes) -> tuple[bool, MacSpec, bytes]:
    generating, algorithm = _STREAM_HEAD.unpack_from(blob)
    return bool(generating), MacSpec(algorithm), blob[_STREAM_HEAD.size:]


def _audit(ctx: OperationContext, spec: MacSpec, length: int) -> None:
    ctx.audit_detail["algorithm"] = spec.label
    ctx.audit_detail["bytes"] = length
