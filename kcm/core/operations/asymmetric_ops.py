"""Create Key Pair, Sign and Signature Verify with stored RSA keys
(KMIP 1.4 §4.2, §4.31, §4.32; 2.1 §6.1.8, §6.1.49, §6.1.50).

The cryptography is :mod:`kcm.crypto.rsa_keys` and :mod:`kcm.crypto.signatures`'s; these
handlers load the keys, apply the policy and the key-use rule, and store what they make.

* Create Key Pair makes an RSA key pair (:data:`kcm.crypto.rsa_keys.RSA_LENGTHS`). Each
  key gets the server's attributes of a generated key (Digest, Random Number Generator,
  ...), the common attributes, then its own (a single-valued attribute of its own wins;
  the values of multi-valued ones are joined, KMIP 1.4 §4.2). The keys are stored (wrapped,
  like every object) in PKCS#1 DER and linked to each other (Public Key Link on the private
  key, Private Key Link on the public one). The ID Placeholder takes the private key's
  identifier.
* Sign uses a Private Key; Signature Verify a Public Key (or the public half of a Private
  Key). The key is the caller's own, its policy allows the use, and the key-use rule
  (:mod:`kcm.kernel.key_use`: state, Protect Stop Date / Process Start Date, Cryptographic
  Usage Mask) allows signing or verifying. A Sign counts against the key's Usage Limits
  (:mod:`kcm.core.usage_limits`); a Signature Verify does not. Streaming (Init Indicator,
  Correlation Value, Final Indicator) accumulates the data in a Correlation Value sealed
  (:mod:`kcm.crypto.sealed_state`) under a server secret, not the key's material: a
  verifying key is public (:func:`kcm.core.stream_parts.tenant_secret`); each value used
  once (:mod:`kcm.core.stream_parts`), the data at most
  :data:`~kcm.crypto.sealed_state.MAX_STREAM_BYTES`, the Final part's included; a signing
  stream counts once, at its first part.
"""

from __future__ import annotations

from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric import rsa

from kcm.core import managed, stream_parts, usage_limits
from kcm.core.attribute_rules import check_client_attributes, rule_for
from kcm.core.context import OperationContext, PrivateKeyResults, private_key_inputs
from kcm.core.operations._objects_common import (
    link_attribute,
    load_key_for,
    single_value,
    stored_rsa_private_key,
    stored_rsa_public_key,
)
from kcm.core.operations.create import server_attributes
from kcm.crypto import signatures
from kcm.crypto.errors import unsupported
from kcm.crypto.rsa_keys import RSA_LENGTHS, generate_key_pair
from kcm.crypto.sealed_state import check_stream_size, open_state
from kcm.crypto.signatures import SignatureSpec
from kcm.kernel import key_use
from kcm.kernel.quantum_safe import check_quantum_safe
from kcm.kernel.templates import refuse_template_names
from kcm.kmip.attributes import Attribute, CryptographicParameters
from kcm.kmip.enums import (
    CryptographicAlgorithm,
    HashingAlgorithm,
    KeyFormatType,
    LinkType,
    ObjectType,
    PaddingMethod,
    ResultReason,
    ValidityIndicator,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import enum_label
from kcm.kmip.objects import KeyBlock, KeyValue
from kcm.kmip.payloads import (
    CreateKeyPairRequest,
    CreateKeyPairResponse,
    SignatureVerifyRequest,
    SignatureVerifyResponse,
    SignRequest,
    SignResponse,
)
from kcm.kmip.tags import Tag
from kcm.kmip.versions import Version
from kcm.ttlv import Item, ItemType

_BLOCK_VERSION: Version = (2, 1)
_RSA = CryptographicAlgorithm.RSA
#: The purpose a signing stream's Correlation Value is sealed for.
_SIGNATURE_STREAM = b"kcm signature stream v1 "
_Response = TypeVar("_Response", SignResponse, SignatureVerifyResponse)


# Create Key Pair ------------------------------------------------------------------
def create_key_pair(ctx: OperationContext,
                    request: CreateKeyPairRequest) -> CreateKeyPairResponse:
    private_client, public_client, algorithm, length = checked_key_pair_request(
        request, ctx.version)
    # Made before the group commit, off the shared writer thread, when the request came
    # through kcm-core's handler (kcm.core.request_handler: _prepare).
    pair = ctx.new_key_pair(length, generate_key_pair)
    private_uid = ctx.keyring.new_uid()
    public_uid = ctx.keyring.new_uid()
    # Like every generated key: a Digest of the stored PKCS#1 material and the Random
    # Number Generator that made it (KMIP 1.4 §3.17, §3.44; the AKLC cases read both).
    private_attributes = server_attributes(ctx, private_uid, ObjectType.PRIVATE_KEY,
                                           private_client, algorithm=algorithm, length=length,
                                           key_bytes=pair.private_der,
                                           key_format=KeyFormatType.PKCS_1, generated=True)
    private_attributes.append(link_attribute(LinkType.PUBLIC_KEY_LINK, public_uid))
    public_attributes = server_attributes(ctx, public_uid, ObjectType.PUBLIC_KEY,
                                          public_client, algorithm=algorithm, length=length,
                                          key_bytes=pair.public_der,
                                          key_format=KeyFormatType.PKCS_1, generated=True)
    public_attributes.append(link_attribute(LinkType.PRIVATE_KEY_LINK, private_uid))
    managed.insert(ctx, uid=private_uid, object_type=ObjectType.PRIVATE_KEY,
                   attributes=private_attributes,
                   managed_object=_key_object(Tag.PRIVATE_KEY, pair.private_der, algorithm,
                                              length))
    managed.insert(ctx, uid=public_uid, object_type=ObjectType.PUBLIC_KEY,
                   attributes=public_attributes,
                   managed_object=_key_object(Tag.PUBLIC_KEY, pair.public_der, algorithm,
                                              length))
    ctx.audit_detail["algorithm"] = enum_label(CryptographicAlgorithm, algorithm)
    ctx.audit_detail["length"] = length
    # KMIP 1.4 §4.2: the Private Key Unique Identifier goes to the ID Placeholder.
    ctx.id_placeholder.set(private_uid)
    return CreateKeyPairResponse(private_key_unique_identifier=private_uid,
                                 public_key_unique_identifier=public_uid)


def checked_key_pair_request(request: CreateKeyPairRequest, version: Version
                             ) -> tuple[list[Attribute], list[Attribute], int, int]:
    """The private and public keys' client attributes, the algorithm and the modulus length
    of the pair ``request`` asks for, once everything refused before a pair is made has
    been (templates, attributes, the algorithm and length, Quantum Safe). The one place
    that decides it: kcm.core.request_handler makes the pairs before the group commit only
    for the items this accepts."""
    refuse_template_names([*(request.common_template_names or ()),
                           *(request.private_key_template_names or ()),
                           *(request.public_key_template_names or ())])
    common = list(request.common_attributes or [])
    private_client = key_pair_part(common, request.private_key_attributes or [])
    public_client = key_pair_part(common, request.public_key_attributes or [])
    check_client_attributes(private_client, version)
    check_client_attributes(public_client, version)
    algorithm, length = key_pair_spec(private_client, public_client)
    for attributes in (private_client, public_client):
        check_quantum_safe(single_value(attributes, Tag.QUANTUM_SAFE), algorithm, length)
    return private_client, public_client, algorithm, length


def key_pair_part(common: list[Attribute], own: list[Attribute]) -> list[Attribute]:
    """One key's attributes: the common ones, overridden (single-valued) or joined
    (multi-valued) by the key's own (KMIP 1.4 §4.2, 2.1 §6.1.8)."""
    overridden = {a.tag for a in own if not rule_for(a).multi}
    return [a for a in common if a.tag not in overridden] + list(own)


def key_pair_spec(private: list[Attribute], public: list[Attribute]) -> tuple[int, int]:
    """The (algorithm, modulus length) of the pair a Create Key Pair with these private and
    public attributes makes; refuses what it cannot make (kcm.core.request_handler makes
    the pairs before the group commit with it, so both decide alike)."""
    specs = []
    for attributes in (private, public):
        algorithm = single_value(attributes, Tag.CRYPTOGRAPHIC_ALGORITHM)
        length = single_value(attributes, Tag.CRYPTOGRAPHIC_LENGTH)
        if algorithm is None:
            raise KmipError(ResultReason.INVALID_FIELD,
                            "Create Key Pair needs a Cryptographic Algorithm attribute")
        if length is None:
            raise KmipError(ResultReason.INVALID_FIELD,
                            "Create Key Pair needs a Cryptographic Length attribute")
        specs.append((int(algorithm), int(length)))
    if specs[0] != specs[1]:
        raise KmipError(ResultReason.INVALID_FIELD,
                        "the private and public keys must have the same algorithm and length")
    algorithm, length = specs[0]
    if algorithm != _RSA:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"cannot generate {enum_label(CryptographicAlgorithm, algorithm)} key "
                        "pairs; RSA only")
    if length not in RSA_LENGTHS:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"RSA keys are {sorted(RSA_LENGTHS)} bits, not {length}")
    return algorithm, length


def _key_object(tag: int, der: bytes, algorithm: int, length: int) -> Item:
    block = KeyBlock(key_format_type=KeyFormatType.PKCS_1, key_value=KeyValue(key_material=der),
                     cryptographic_algorithm=algorithm, cryptographic_length=length)
    return Item(tag, ItemType.STRUCTURE, [block.to_item(_BLOCK_VERSION)])


# Sign and Signature Verify ------------------------------------------------------------
def sign(ctx: OperationContext, request: SignRequest) -> SignResponse:
    response, step = _prepare(ctx, request, SignResponse, signing=True)
    if step is not None:
        key, spec, data, form = step
        _audit(ctx, spec, len(data))
        # Computed on the tenant's worker before the group commit (prepare_sign), when the
        # request came through kcm-core's handler: not on the writer every tenant shares.
        response.signature_data = ctx.private_key_operation(
            private_key_inputs("sign", response.unique_identifier, spec, form, data),
            lambda: signatures.sign(key, spec, data, form, ctx.random_bytes))
    return response


def prepare_sign(ctx: OperationContext, request: SignRequest,
                 results: PrivateKeyResults) -> None:
    """For a tenant's worker, before the request's group commit (``ctx`` in a read-only
    transaction): the signature ``request`` asks for, computed after the checks that
    decide whether the operation signs (the key, its use, its policy) and kept in
    ``results`` for :func:`sign` on the writer, which makes every check again and computes
    nothing. A stream's Final part is signed from its Correlation Value, which is not used
    up here. Raises what the operation would refuse; stores nothing."""
    obj = _signature_key(ctx, request.unique_identifier, signing=True)
    key = stored_rsa_private_key(ctx, obj)
    if key is None:
        return
    if not request.init_indicator and request.correlation_value is None:
        spec = _resolve(obj, request.cryptographic_parameters)
        data, form = signatures.signature_input(spec, request.data, request.digested_data)
    elif request.final_indicator and request.correlation_value is None \
            and request.digested_data is None:  # (a stream of one part: its first and last)
        spec, data, form = _resolve(obj, request.cryptographic_parameters), \
            request.data or b"", signatures.MESSAGE
        check_stream_size(len(data))
    elif request.final_indicator and request.correlation_value is not None \
            and request.digested_data is None:
        _, (was_signing, spec, data) = open_state(
            stream_parts.tenant_secret(ctx, obj), _SIGNATURE_STREAM, obj.uid,
            request.correlation_value, signatures.unpack_stream, now=ctx.now)
        if not was_signing:
            return
        data, form = data + (request.data or b""), signatures.MESSAGE
        check_stream_size(len(data))
    else:
        return  # (a stream's first or middle part signs nothing)
    results.compute(private_key_inputs("sign", obj.uid, spec, form, data),
                    lambda: signatures.sign(key, spec, data, form, ctx.random_bytes))


def signature_verify(ctx: OperationContext,
                     request: SignatureVerifyRequest) -> SignatureVerifyResponse:
    response, step = _prepare(ctx, request, SignatureVerifyResponse, signing=False)
    if step is not None:
        key, spec, data, form = step
        signature = request.signature_data
        if signature is None:
            raise KmipError(ResultReason.INVALID_MESSAGE, "the request has no Signature Data")
        _audit(ctx, spec, len(data))
        valid = signatures.verify(key, spec, data, form, signature)
        response.validity_indicator = (ValidityIndicator.VALID if valid
                                       else ValidityIndicator.INVALID)
    return response


def _prepare(ctx: OperationContext, request: SignRequest | SignatureVerifyRequest,
             answer: type[_Response], *, signing: bool
             ) -> tuple[_Response, tuple[Any, SignatureSpec, bytes, str] | None]:
    """The response to fill, and what to sign or verify: (RSA key, scheme, data, its form),
    or None when the request only continues a stream (the response then carries the next
    Correlation Value)."""
    obj = _signature_key(ctx, request.unique_identifier, signing=signing)
    if signing:
        # Signing applies protection (KMIP 1.4 §3.21); a stream counts at its first part.
        signed = len(request.data or b"") + len(request.digested_data or b"")
        usage_limits.consume_usage(ctx, obj, signed, first=request.correlation_value is None)
    key: rsa.RSAPrivateKey | rsa.RSAPublicKey | None
    if signing:
        key = stored_rsa_private_key(ctx, obj)
        if key is None:
            raise unsupported("only RSA private keys can sign here")
    else:
        key = stored_rsa_public_key(ctx, obj)
        if key is None:
            raise unsupported("only RSA keys can verify signatures here")
    response = answer(unique_identifier=obj.uid)
    step = _signature_input(ctx, obj, request, response, signing=signing)
    return response, None if step is None else (key, *step)


def _signature_key(ctx: OperationContext, unique_identifier: object, *,
                   signing: bool) -> managed.StoredObject:
    allowed = ((ObjectType.PRIVATE_KEY,) if signing
               else (ObjectType.PUBLIC_KEY, ObjectType.PRIVATE_KEY))
    return load_key_for(ctx, unique_identifier, allowed,
                        key_use.SIGN if signing else key_use.VERIFY)


def _resolve(obj: managed.StoredObject,
             requested: CryptographicParameters | None) -> SignatureSpec:
    """The signature scheme: the request's parameters over the key's over the default."""
    return signatures.resolve_signature(obj.value(Tag.CRYPTOGRAPHIC_ALGORITHM),
                                        obj.value(Tag.CRYPTOGRAPHIC_PARAMETERS), requested)


def _signature_input(ctx: OperationContext, obj: managed.StoredObject, request: Any,
                     response: Any, *,
                     signing: bool) -> tuple[SignatureSpec, bytes, str] | None:
    """What Sign / Signature Verify work on: (signature spec, data, its form). None when
    the request only continues a stream; ``response`` then carries the Correlation Value."""
    stream = _stream_step(ctx, obj, request, signing=signing)
    if stream is None:
        spec = _resolve(obj, request.cryptographic_parameters)
        data, form = signatures.signature_input(spec, request.data, request.digested_data)
        return spec, data, form
    if isinstance(stream, bytes):
        response.correlation_value = stream
        return None
    return stream


def _stream_step(ctx: OperationContext, obj: managed.StoredObject,
                 request: SignRequest | SignatureVerifyRequest, *, signing: bool
                 ) -> None | bytes | tuple[SignatureSpec, bytes, str]:
    """None: not a stream. Bytes: the next Correlation Value (the stream continues).
    A tuple: the stream's end, with its spec and the whole data."""
    if not request.init_indicator and request.correlation_value is None:
        return None
    if request.digested_data is not None:
        raise KmipError(ResultReason.INVALID_FIELD, "Digested Data cannot be streamed")
    # Not the key's own material: a Public Key's is public, and a Correlation Value sealed
    # under it could be forged by anyone (any stream id, part and expiry).
    secret = stream_parts.tenant_secret(ctx, obj)
    part = None
    if request.correlation_value is not None:
        part, (was_signing, spec, data) = stream_parts.open_once(
            ctx, secret, _SIGNATURE_STREAM, obj.uid, request.correlation_value,
            signatures.unpack_stream)
        if was_signing != signing:
            raise KmipError(ResultReason.INVALID_CORRELATION_VALUE,
                            "the Correlation Value is not one of this key's streams")
    else:
        spec, data = _resolve(obj, request.cryptographic_parameters), b""
    data += request.data or b""
    check_stream_size(len(data))
    if request.final_indicator:
        return spec, data, signatures.MESSAGE
    return stream_parts.seal_part(ctx, secret, _SIGNATURE_STREAM, obj.uid,
                                  signatures.pack_stream(signing, spec, data), part)


def _audit(ctx: OperationContext, spec: SignatureSpec, length: int) -> None:
    ctx.audit_detail["padding"] = enum_label(PaddingMethod, spec.padding)
    ctx.audit_detail["hash"] = enum_label(HashingAlgorithm, spec.hashing)
    ctx.audit_detail["bytes"] = length
