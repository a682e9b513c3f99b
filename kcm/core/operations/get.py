"""Get (KMIP 1.4 §4.11, 2.1 §6.1.22): an object's material, converted or wrapped as asked.

Wrapping counts against the wrapping key's Usage Limits (:mod:`kcm.core.usage_limits`);
unwrapping a registered wrapped key does not.

The server unwraps a registered wrapped key (Key Wrap Type Not Wrapped, a conversion, a
re-wrap) only with a key the caller could have read in the clear itself: never with a
Sensitive or non-Extractable one, else a key Get returns only wrapped would come back in
the clear by a Register of its wrapped copy. For the same reason a Sensitive key is not
wrapped under itself. A service key (L3) wraps and unwraps in the states the L4 engine
allows it (:attr:`kcm.l4.service_key.ServiceKey.usable_to_process`: never once
Compromised)."""

from __future__ import annotations

import dataclasses

from kcm.core import l4_requests, managed, policy, usage_limits
from kcm.core.context import OperationContext, about_to_write
from kcm.core.operations._objects_common import AES_KEY_BITS, DESTROYED, WRAP_MODES
from kcm.core.store.schema import LEVEL_SERVICE_KEY
from kcm.crypto.key_wrap import aes_unwrap as _aes_unwrap
from kcm.crypto.key_wrap import aes_wrap as _aes_wrap
from kcm.crypto.rsa_keys import rsa_key_block_in_format
from kcm.kernel import key_use
from kcm.kernel.lifecycle import wrong_state
from kcm.kernel.missing import identifier_label, wrapping_key_not_found
from kcm.kmip import registry
from kcm.kmip.attributes import Attribute, CryptographicParameters
from kcm.kmip.enums import (
    BlockCipherMode,
    CryptographicAlgorithm,
    EncodingOption,
    KeyFormatType,
    KeyWrapType,
    ObjectType,
    ResultReason,
    WrappingMethod,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.fields import Struct
from kcm.kmip.labels import enum_label
from kcm.kmip.objects import (
    EncryptionKeyInformation,
    KeyBlock,
    KeyValue,
    KeyWrappingData,
    KeyWrappingSpecification,
    SecretData,
    SymmetricKey,
    TransparentSymmetricKey,
)
from kcm.kmip.payloads import (
    GetRequest,
    GetResponse,
)
from kcm.kmip.tags import Tag
from kcm.kmip.versions import Version
from kcm.l4.service_key import ServiceKey
from kcm.ttlv import Item, ItemType, decode, encode


def get(ctx: OperationContext, request: GetRequest) -> GetResponse:
    """The object's material: as stored, converted, unwrapped or wrapped on request."""
    if (l4_answer := l4_requests.get(ctx, request)) is not None:
        return l4_answer
    uid = ctx.id_placeholder.resolve(request.unique_identifier)
    obj = managed.load(ctx, uid)
    if obj.value(Tag.FRESH) is True:
        # Its first Get clears it (below): in a lean group's read, stop before the work
        # (a session group answers it; see kcm.core.context.about_to_write).
        about_to_write(ctx.session)
    policy.check_material_export(ctx.principal, obj.level)
    if obj.state in DESTROYED or obj.row.material is None:
        if obj.state in DESTROYED:
            # KMIP 2.x has Object Destroyed; the KMIP 1.1 test cases (3.1.4) answer a Get
            # of a destroyed key with Item Not Found.
            reason = ResultReason.OBJECT_DESTROYED
            raise KmipError(reason, f"object {uid!r} was destroyed; its key material is gone")
        raise KmipError(ResultReason.KEY_VALUE_NOT_PRESENT, "the object has no key value")
    if obj.value(Tag.EXTRACTABLE) is False:
        raise KmipError(ResultReason.NOT_EXTRACTABLE, "the object is not extractable")
    spec = request.key_wrapping_specification
    if obj.value(Tag.SENSITIVE) is True and spec is None:
        raise KmipError(ResultReason.SENSITIVE,
                        "the object is sensitive: ask for it wrapped (Key Wrapping Specification)")
    if request.key_compression_type is not None:
        raise KmipError(ResultReason.KEY_COMPRESSION_TYPE_NOT_SUPPORTED,
                        "key compression is not supported")
    result = managed.material(ctx, obj)
    block = _key_block(result)
    wants_clear = (request.key_wrap_type == KeyWrapType.NOT_WRAPPED or spec is not None
                   or (request.key_format_type is not None and block is not None
                       and request.key_format_type != block.key_format_type))
    stored = True  # the block is the object's stored material, checked when registered
    if block is not None and block.key_wrapping_data is not None and wants_clear:
        block = _unwrapped(ctx, block)
        stored = False
    if request.key_format_type is not None:
        block = _in_format(result, block, int(request.key_format_type), stored=stored)
    if spec is not None:
        if block is None:
            raise KmipError(ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED,
                            "only objects with a key block can be wrapped")
        block = _wrapped(ctx, obj, block, spec)
    _check_object_type_in(ctx.version, obj.object_type)
    if block is not None and not registry.defines_value(Tag.KEY_FORMAT_TYPE,
                                                        int(block.key_format_type), ctx.version):
        block = _in_format_of(ctx.version, block)
    if block is not None and block.cryptographic_algorithm is not None:
        _check_algorithm_in(ctx.version, int(block.cryptographic_algorithm))
    if block is not None:
        result = _with_key_block(result, block, ctx.version)
    if obj.value(Tag.FRESH) is True:
        # Fresh: the object has not been retrieved yet (2.1 §4.24); this Get retrieves it.
        obj.set(Tag.FRESH, False, ItemType.BOOLEAN)
        managed.save(ctx, obj, changed=False)
    return GetResponse(object_type=obj.object_type, unique_identifier=uid, object=result)


def _check_object_type_in(version: Version, object_type: int) -> None:
    """Refuse to answer an object its Object Type the request's version does not define
    (a PGP Key to a KMIP 1.0 client, a Template to a 2.x one): its answer would lose the
    object (and its Object Type) to the version's filter, a Success carrying nothing."""
    if not registry.defines_value(Tag.OBJECT_TYPE, object_type, version):
        raise KmipError(ResultReason.INVALID_OBJECT_TYPE,
                        f"a {enum_label(ObjectType, object_type)} is not an object of KMIP "
                        f"{version[0]}.{version[1]}", v1_reason=ResultReason.ILLEGAL_OPERATION)


def _check_algorithm_in(version: Version, algorithm: int) -> None:
    """Refuse a key whose Cryptographic Algorithm the version does not define (a KMIP 1.4
    ChaCha20 key to a 1.2 client): the filter would drop it, and the key's bytes would go
    out without what they are a key of."""
    if not registry.defines_value(Tag.CRYPTOGRAPHIC_ALGORITHM, algorithm, version):
        raise KmipError(ResultReason.FEATURE_NOT_SUPPORTED,
                        f"a {enum_label(CryptographicAlgorithm, algorithm)} key cannot be said "
                        f"in KMIP {version[0]}.{version[1]}: ask in a later version")


#: KMIP 1.x's elliptic-curve key formats that 2.0 dropped, and the 2.x formats of the same
#: fields (Recommended Curve and D, or Recommended Curve and Q String: KMIP 1.4 §2.1.7.11
#: to 2.1.7.16 and 2.1.7.17, 2.1.7.18; 2.1 §2.1.7.9, 2.1.7.10).
_EC_FORMATS_OF_2 = {
    KeyFormatType.TRANSPARENT_ECDSA_PRIVATE_KEY: KeyFormatType.TRANSPARENT_EC_PRIVATE_KEY,
    KeyFormatType.TRANSPARENT_ECDH_PRIVATE_KEY: KeyFormatType.TRANSPARENT_EC_PRIVATE_KEY,
    KeyFormatType.TRANSPARENT_ECMQV_PRIVATE_KEY: KeyFormatType.TRANSPARENT_EC_PRIVATE_KEY,
    KeyFormatType.TRANSPARENT_ECDSA_PUBLIC_KEY: KeyFormatType.TRANSPARENT_EC_PUBLIC_KEY,
    KeyFormatType.TRANSPARENT_ECDH_PUBLIC_KEY: KeyFormatType.TRANSPARENT_EC_PUBLIC_KEY,
    KeyFormatType.TRANSPARENT_ECMQV_PUBLIC_KEY: KeyFormatType.TRANSPARENT_EC_PUBLIC_KEY,
}


def _in_format_of(version: Version, block: KeyBlock) -> KeyBlock:
    """``block``, whose Key Format Type ``version`` does not define, in one it does: a 1.x
    elliptic-curve format as 2.x's Transparent EC (the same fields); else Key Format Type
    Not Supported (the answer would carry a Key Block without its required Key Format
    Type)."""
    fmt = int(block.key_format_type)
    same = _EC_FORMATS_OF_2.get(fmt)  # type: ignore[call-overload]
    if same is not None and registry.defines_value(Tag.KEY_FORMAT_TYPE, same, version):
        return dataclasses.replace(block, key_format_type=same)
    raise KmipError(ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED,
                    f"the key is stored as {enum_label(KeyFormatType, fmt)}, which KMIP "
                    f"{version[0]}.{version[1]} does not define")


def _key_block(managed_object: Struct | Item) -> KeyBlock | None:
    if isinstance(managed_object, SymmetricKey | SecretData):
        return managed_object.key_block
    if isinstance(managed_object, Item):
        found = managed_object.find(Tag.KEY_BLOCK)
        if found is not None:
            return KeyBlock.from_item(found)
    return None


def _with_key_block(managed_object: Struct | Item, block: KeyBlock,
                    version: Version) -> Struct | Item:
    if isinstance(managed_object, SymmetricKey | SecretData):
        managed_object.key_block = block
        return managed_object
    if isinstance(managed_object, Item):
        return Item(managed_object.tag, ItemType.STRUCTURE,
                    [block.to_item(version) if child.tag == Tag.KEY_BLOCK else child
                     for child in managed_object])
    return managed_object


#: The Key Format Types the key bytes of a Symmetric Key (Secret Data) are returned in:
#: the same bytes, as Raw, Opaque (KMIP 1.4 §9.1.3.2.3; storage arrays ask for it) or
#: Transparent Symmetric Key.
_SYMMETRIC_FORMATS = (KeyFormatType.RAW, KeyFormatType.OPAQUE,
                      KeyFormatType.TRANSPARENT_SYMMETRIC_KEY)
_SECRET_DATA_FORMATS = (KeyFormatType.RAW, KeyFormatType.OPAQUE)


def _in_format(managed_object: Struct | Item, block: KeyBlock | None,
               wanted: int, *, stored: bool) -> KeyBlock | None:
    """The key block in Key Format Type ``wanted``: a Symmetric Key's bytes as Raw, Opaque
    or Transparent Symmetric Key, Secret Data's as Raw or Opaque, RSA keys in the formats
    of :func:`kcm.crypto.rsa_keys.rsa_key_block_in_format` (``stored``: the object's stored
    material, checked when it was registered; else unwrapped here, and checked now);
    every other format only to itself."""
    if block is None:
        if (isinstance(managed_object, Item) and managed_object.tag == Tag.CERTIFICATE
                and wanted == KeyFormatType.X_509):
            return None
        raise KmipError(ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED,
                        f"this object has no key block to return as "
                        f"{enum_label(KeyFormatType, wanted)}")
    if block.key_format_type == wanted:
        return block
    if (isinstance(managed_object, Item) and managed_object.tag in (Tag.PUBLIC_KEY,
                                                                    Tag.PRIVATE_KEY)
            and block.cryptographic_algorithm in (CryptographicAlgorithm.RSA, None)
            and block.key_wrapping_data is None):
        # (a block without an algorithm is converted if it holds an RSA key: Register took
        # the algorithm from the Key Value, KMIP 1.4 §2.1.3)
        return rsa_key_block_in_format(
            ObjectType.PUBLIC_KEY if managed_object.tag == Tag.PUBLIC_KEY
            else ObjectType.PRIVATE_KEY, block, wanted, stored=stored)
    formats = (_SYMMETRIC_FORMATS if isinstance(managed_object, SymmetricKey)
               else _SECRET_DATA_FORMATS if isinstance(managed_object, SecretData) else ())
    convertible = (block.key_wrapping_data is None
                   and int(block.key_format_type) in formats and wanted in formats)
    key = block.key_bytes
    if not convertible or key is None or not isinstance(block.key_value, KeyValue):
        raise KmipError(ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED,
                        f"cannot return a {enum_label(KeyFormatType, block.key_format_type)} "
                        f"key as {enum_label(KeyFormatType, wanted)}")
    material: bytes | TransparentSymmetricKey = (
        TransparentSymmetricKey(key=key) if wanted == KeyFormatType.TRANSPARENT_SYMMETRIC_KEY
        else key)
    return KeyBlock(key_format_type=wanted,
                    key_value=KeyValue(key_material=material,
                                       attributes=block.key_value.attributes),
                    cryptographic_algorithm=block.cryptographic_algorithm,
                    cryptographic_length=block.cryptographic_length)


def _wrapping_mode(parameters: CryptographicParameters | None,
                   key: managed.StoredObject) -> int:
    """The block cipher mode to (un)wrap with: the request's, else the wrapping key's
    Cryptographic Parameters, else NIST Key Wrap."""
    mode = parameters.block_cipher_mode if parameters is not None else None
    if mode is None:
        for attribute in key.all(Tag.CRYPTOGRAPHIC_PARAMETERS):
            stored = attribute.typed
            if isinstance(stored, CryptographicParameters) and stored.block_cipher_mode in \
                    WRAP_MODES:
                mode = stored.block_cipher_mode
                break
    mode = BlockCipherMode.NISTKEYWRAP if mode is None else mode
    if mode not in WRAP_MODES:
        raise KmipError(ResultReason.FEATURE_NOT_SUPPORTED,
                        f"keys are wrapped with NIST Key Wrap or AES Key Wrap with Padding, "
                        f"not {enum_label(BlockCipherMode, mode)}")
    return int(mode)


def _wrapping_key(ctx: OperationContext, reference: str | Item, *,
                  protect: bool) -> tuple[managed.StoredObject, bytes]:
    """The tenant's AES key that (un)wraps another key, and its bytes."""
    uid = ctx.id_placeholder.resolve(reference)
    try:
        key = managed.load(ctx, uid, for_update=False)
    except KmipError as e:
        if e.reason != ResultReason.OBJECT_NOT_FOUND:
            raise  # a key the caller may not use says so (another service's)
        raise wrapping_key_not_found(uid) from None
    policy.check_key_use(ctx.principal, key.level, key.row.service)
    if key.state in DESTROYED or key.row.material is None:
        reason = ResultReason.WRAPPING_OBJECT_DESTROYED
        raise KmipError(reason, f"the wrapping key {uid!r} was destroyed")
    use = key_use.WRAP if protect else key_use.UNWRAP
    # The wrapping key's state and dates decide here (wrapping is applying protection: not
    # past its Protect Stop Date; unwrapping is processing: not before its Process Start
    # Date, KMIP 1.4 §3.25-3.26, 2.1 §4.44-4.45); its usage mask only for wrapping, below,
    # once it is known to be an AES key.
    key_use.check_key_use(use, key.state, now=ctx.now, key=uid,
                          protect_stop_date=key.value(Tag.PROTECT_STOP_DATE),
                          process_start_date=key.value(Tag.PROCESS_START_DATE))
    if key.level == LEVEL_SERVICE_KEY:
        if protect:
            # One key, one purpose (docs/link-protocol.md, "With an L3, AES-GCM only"): a
            # service key seals L4 tokens and wraps the data keys under it, which the L4
            # engine does; it wraps no managed object, whose material the client chose.
            # (Unwrapping a registered copy of an L4's wrapped key stays possible.)
            raise KmipError(ResultReason.PERMISSION_DENIED,
                            f"the service key {uid!r} wraps only the L4 data keys under it")
        if not _service_key_unwraps(key):
            raise wrong_state(f"the service key {uid!r} in state {key.state.name} cannot "
                              f"{use.verb}")
    if (key.object_type != ObjectType.SYMMETRIC_KEY
            or key.value(Tag.CRYPTOGRAPHIC_ALGORITHM) != CryptographicAlgorithm.AES):
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"the wrapping key {uid!r} is not an AES key")
    if protect:
        key_use.check_usage_mask(use, key.value(Tag.CRYPTOGRAPHIC_USAGE_MASK), key=uid)
    material = managed.material(ctx, key)
    block = _key_block(material)
    key_bytes = block.key_bytes if block is not None else None
    if key_bytes is None or len(key_bytes) * 8 not in AES_KEY_BITS:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"the wrapping key {uid!r} has no usable AES key value")
    return key, key_bytes


def _service_key_unwraps(key: managed.StoredObject) -> bool:
    """The L4 engine's rule for an L3 in the state it is in now: it unwraps (processes)
    while Active or Deactivated, never once Compromised: the core's Get and every gateway
    answer alike (docs/link-protocol.md)."""
    return ServiceKey(uid=key.uid, tenant=key.tenant, service=key.row.service or "",
                      version=0, state=int(key.state), key=b"").usable_to_process


def _wrapped(ctx: OperationContext, obj: managed.StoredObject, block: KeyBlock,
             spec: KeyWrappingSpecification) -> KeyBlock:
    """``block`` with its Key Value wrapped as ``spec`` asks (1.4 §2.1.5-2.1.6)."""
    if spec.wrapping_method != WrappingMethod.ENCRYPT:
        raise KmipError(ResultReason.FEATURE_NOT_SUPPORTED,
                        f"Wrapping Method {enum_label(WrappingMethod, spec.wrapping_method)} "
                        "is not supported; use Encrypt")
    info = spec.encryption_key_information
    if info is None:
        raise KmipError(ResultReason.MISSING_DATA,
                        "Key Wrapping Specification needs Encryption Key Information")
    wrapping_key, kek = _wrapping_key(ctx, info.unique_identifier, protect=True)
    if wrapping_key.uid == obj.uid and obj.value(Tag.SENSITIVE) is True:
        # Its only use would be a server-side unwrap: the key in the clear (see the module).
        raise KmipError(ResultReason.SENSITIVE, "a Sensitive key is not wrapped under itself")
    mode = _wrapping_mode(info.cryptographic_parameters, wrapping_key)
    value = block.key_value
    if not isinstance(value, KeyValue):
        raise KmipError(ResultReason.KEY_VALUE_NOT_PRESENT, "the key value is not available")
    encoding = spec.encoding_option
    if encoding == EncodingOption.NO_ENCODING:
        # No Encoding wraps the key material alone, so there is no room for attributes.
        if spec.attribute_names:
            raise KmipError(ResultReason.ENCODING_OPTION_ERROR,
                            "attributes can be wrapped only with TTLV Encoding")
        plaintext = _plain_material(value)
    else:
        # Absent Encoding Option means TTLV Encoding: the whole Key Value structure.
        value = KeyValue(key_material=value.key_material,
                         attributes=_named_attributes(obj, spec.attribute_names, ctx.version)
                         or value.attributes)
        plaintext = encode(value.to_item(ctx.version))
    # Wrapping applies protection (KMIP 1.4 §3.21). A key wrapping itself is ``obj``,
    # already read for update: count on that copy, which the Get may save again.
    if wrapping_key.uid == obj.uid:
        usage_limits.consume_usage(ctx, obj, len(plaintext), locked=True)
    else:
        usage_limits.consume_usage(ctx, wrapping_key, len(plaintext))
    wrapped: KeyValue | bytes = _aes_wrap(kek, plaintext, mode)
    if encoding == EncodingOption.NO_ENCODING and ctx.version < (2, 0):
        # KMIP 1.x (1.4 §2.1.5, TC-WRAP-1/3-14) keeps the Key Value structure and wraps
        # only its Key Material; 2.x makes the whole Key Value the Byte String.
        wrapped = KeyValue(key_material=wrapped, attributes=value.attributes)
    ctx.touched(wrapping_key.uid)
    uid = wrapping_key.uid
    return KeyBlock(
        key_format_type=block.key_format_type, key_value=wrapped,
        cryptographic_algorithm=block.cryptographic_algorithm,
        cryptographic_length=block.cryptographic_length,
        key_wrapping_data=KeyWrappingData(
            wrapping_method=WrappingMethod.ENCRYPT,
            encryption_key_information=EncryptionKeyInformation(
                unique_identifier=uid,
                cryptographic_parameters=info.cryptographic_parameters),
            encoding_option=encoding))


def _unwrapped(ctx: OperationContext, block: KeyBlock) -> KeyBlock:
    """A registered wrapped key block in the clear (Key Wrap Type Not Wrapped)."""
    data = block.key_wrapping_data
    assert data is not None
    info = data.encryption_key_information
    if data.wrapping_method != WrappingMethod.ENCRYPT or info is None:
        raise KmipError(ResultReason.FEATURE_NOT_SUPPORTED,
                        "only keys wrapped with Encrypt by a key of this server can be "
                        "unwrapped")
    if data.mac_signature_key_information is not None or data.mac_signature is not None:
        # (a MAC or signature is never ignored: one this server cannot check is refused)
        raise KmipError(ResultReason.FEATURE_NOT_SUPPORTED,
                        "MAC or signature wrapped keys are not supported")
    wrapping_key, kek = _wrapping_key(ctx, info.unique_identifier, protect=False)
    _check_clear_unwrap(wrapping_key)
    mode = _wrapping_mode(info.cryptographic_parameters, wrapping_key)
    wrapped = block.key_value
    no_encoding = data.encoding_option == EncodingOption.NO_ENCODING
    if no_encoding and isinstance(wrapped, KeyValue):
        # No Encoding keeps the Key Value structure and wraps its Key Material only.
        wrapped = wrapped.key_material
    if not isinstance(wrapped, bytes):
        raise KmipError(ResultReason.INVALID_FIELD,
                        "the wrapped key material must be a Byte String")
    plaintext = _aes_unwrap(kek, wrapped, mode)
    ctx.touched(wrapping_key.uid)
    if no_encoding:
        material: bytes | TransparentSymmetricKey = plaintext
        if block.key_format_type == KeyFormatType.TRANSPARENT_SYMMETRIC_KEY:
            material = TransparentSymmetricKey(key=plaintext)
        attributes = (block.key_value.attributes if isinstance(block.key_value, KeyValue)
                      else None)
        value = KeyValue(key_material=material, attributes=attributes)
    else:
        try:
            value = KeyValue.from_item(decode(plaintext), ctx.version)
        except Exception as e:
            raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE,
                            "the unwrapped Key Value is not a TTLV Key Value") from e
    return KeyBlock(key_format_type=block.key_format_type,
                    key_compression_type=block.key_compression_type, key_value=value,
                    cryptographic_algorithm=block.cryptographic_algorithm,
                    cryptographic_length=block.cryptographic_length)


def _check_clear_unwrap(wrapping_key: managed.StoredObject) -> None:
    """Refuse to unwrap with a key the caller could not read in the clear (Sensitive, or
    not Extractable): the server would hand out what the caller cannot unwrap itself."""
    uid = wrapping_key.uid
    if wrapping_key.value(Tag.EXTRACTABLE) is False:
        raise KmipError(ResultReason.NOT_EXTRACTABLE,
                        f"the unwrapping key {uid!r} is not extractable: the server does not "
                        "unwrap with it")
    if wrapping_key.value(Tag.SENSITIVE) is True:
        raise KmipError(ResultReason.SENSITIVE,
                        f"the unwrapping key {uid!r} is sensitive: the server does not "
                        "unwrap with it")


def _plain_material(value: KeyValue) -> bytes:
    material = value.key_material
    if isinstance(material, bytes):
        return material
    if isinstance(material, TransparentSymmetricKey):
        return material.key
    raise KmipError(ResultReason.ENCODING_OPTION_ERROR,
                    "No Encoding wraps byte-string key material only; use TTLV Encoding")


def _named_attributes(obj: managed.StoredObject, names: list[str],
                      version: Version) -> list[Attribute] | None:
    """The object's attributes the wrapping specification names (wrapped with the key)."""
    if not names:
        return None
    found = []
    for name in names:
        tag = registry.attribute_tag(name, version)
        if tag is None:
            raise KmipError(ResultReason.INVALID_FIELD,
                            f"unknown attribute name {identifier_label(name)!r}")
        found += obj.all(tag)
    return found

