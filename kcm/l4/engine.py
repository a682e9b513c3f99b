"""The four L4 operations: Create of an L4, Get of an L4, Encrypt and Decrypt with an L4 (a
record) or an L3 (a DEK wrap/unwrap) (ARCHITECTURE §2-§3, docs/link-protocol.md §3).

Pure and synchronous: the engine takes typed payloads, the caller's principal and the
request's protocol version, and asks a :class:`KeySource` for service keys and tombstones;
it does no I/O, no logging and keeps no state, so the gateway runs it on its hot path and the
core runs it inside a request's transaction. Every refusal is a ``KmipError``, and who asks
is decided first, before anything about the key (:mod:`kcm.l4.authorize`):

* another tenant's token or L3 (or wrapping key, or Parent Link), an unknown L3, a token that
  is not one or does not open: Object Not Found (2.x) / Item Not Found (1.x), one message
  shape made from what the client sent (:mod:`kcm.kernel.missing`), so that another
  tenant's key answers exactly as a missing one;
* another service's token or L3 of the caller's own tenant: Permission Denied;
* a tombstoned token (revoked or destroyed through the core): Object Not Found / Item Not
  Found as well: once revoked, the token names nothing any more, for every operation;
* an L3 that may not do what is asked (Encrypt or Create needs it Active; Get, Decrypt also
  work while it is Deactivated, never once it is Compromised): Wrong Key Lifecycle State
  (2.x) / Permission Denied (1.x); an L4 whose L3 was destroyed is crypto-erased: Object
  Destroyed / Item Not Found;
* cipher parameters: as kcm-core answers for managed keys (:mod:`kcm.crypto.symmetric`);
  with an L3, whose key also seals L4 tokens, AES-GCM only (16-byte tag, a 12-byte IV the
  server draws on Encrypt) and associated data that cannot be a token's: Unsupported
  Cryptographic Parameters for other parameters, Invalid Field for an IV on Encrypt, an IV
  not of 12 bytes on Decrypt, or such associated data (docs/link-protocol.md §3); streaming
  (Init Indicator / Correlation Value) is not offered for L3s and L4s: Feature Not
  Supported.

Refusals carry KMIP 2.x reasons, a KeySource's included; the kernel answers a 1.x request
with their 1.x stand-ins (:mod:`kcm.kernel.result_reasons`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag

from kcm.crypto.errors import cryptographic_failure, unsupported
from kcm.crypto.key_wrap import WRAP_MODES, aes_wrap
from kcm.crypto.symmetric import (
    AES_GCM_DEFAULT,
    CipherSpec,
    decrypt_iv,
    decrypt_once,
    encrypt_iv,
    encrypt_once,
    resolve_spec,
)
from kcm.identity import Principal
from kcm.kernel import aead_tag
from kcm.kernel.lifecycle import wrong_state
from kcm.kernel.missing import identifier_label, object_not_found, wrapping_key_not_found
from kcm.kernel.templates import refuse_template_names
from kcm.kmip.attributes import (
    VENDOR_TAG,
    Attribute,
    CryptographicParameters,
    Link,
    attribute_label,
    defined_in,
)
from kcm.kmip.enums import (
    BlockCipherMode,
    CryptographicAlgorithm,
    CryptographicUsageMask,
    EncodingOption,
    KeyFormatType,
    LinkType,
    ObjectType,
    Operation,
    ResultReason,
    State,
    WrappingMethod,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import enum_label
from kcm.kmip.objects import (
    EncryptionKeyInformation,
    KeyBlock,
    KeyValue,
    KeyWrappingData,
    KeyWrappingSpecification,
    SymmetricKey,
    TransparentSymmetricKey,
)
from kcm.kmip.payloads import (
    CreateRequest,
    CreateResponse,
    DecryptRequest,
    DecryptResponse,
    EncryptRequest,
    EncryptResponse,
    GetRequest,
    GetResponse,
)
from kcm.kmip.tags import Tag
from kcm.kmip.versions import Version
from kcm.l4 import token
from kcm.l4.authorize import ServiceKeyUseDenied, check_service_key_use
from kcm.l4.identifiers import L3_PREFIX, L4_PREFIX
from kcm.l4.marking import (
    LEVEL_NAME,
    SERVICE_NAME,
    VENDOR,
    create_attributes,
    is_l4_create,
    l4_target,
)
from kcm.l4.opened_keys import OpenedKey, OpenedKeys
from kcm.l4.service_key import DESTROYED_STATES, ServiceKey
from kcm.ttlv import encode

__all__ = ["SETS_ID_PLACEHOLDER", "KeySource", "L4Engine", "Tombstone", "create_attributes",
           "is_l4_create", "l4_target"]

RandomBytes = Callable[[int], bytes]

_AES = int(CryptographicAlgorithm.AES)
_DEK_BITS = frozenset({128, 192, 256})

#: Create attributes an L4 accepts besides its markers and the ones checked in
#: :func:`_dek_length`: implied by the key. Anything else would have to be stored, and L4s
#: are not stored.
_IGNORED_CREATE_ATTRIBUTES = frozenset({Tag.OPERATION_POLICY_NAME})
#: The uses every L4 allows: a Create's Cryptographic Usage Mask must include them all (the
#: mask is not kept, so a narrower one would be silently ignored).
_L4_USAGE = int(CryptographicUsageMask.ENCRYPT | CryptographicUsageMask.DECRYPT)

class KeySource(Protocol):
    """Where the engine gets service keys (L3) and tombstones, for one caller. Each method
    raises ``KmipError`` when it cannot answer (no such key, core unreachable, ...)."""

    def current_service_key(self, tenant: str, service: str) -> ServiceKey:
        """The current Active L3 version of ``tenant``/``service`` (the engine has checked
        that the caller may use it)."""
        ...

    def service_key(self, uid: str) -> ServiceKey:
        """The L3 version ``uid`` (``l3-...``), whatever its state (a destroyed or dropped one
        without key bytes), if the caller may use it. A source decides who asks
        (:func:`kcm.l4.authorize.check_service_key_use` with ``uid``) before it says or does
        anything about the key, so that another tenant's key answers as a missing one, with
        the same work."""
        ...

    def is_tombstoned(self, token_id: str) -> bool:
        """Whether the L4 token with this TokenId was revoked or destroyed."""
        ...


@dataclass(frozen=True, slots=True)
class Tombstone:
    """What Revoke or Destroy of an L4 records: its TokenId, tenant and L3; nothing when
    ``l3_destroyed`` (every token under it is refused as crypto-erased, revoked or not)."""

    token_id: str
    tenant: str
    l3_uid: str
    l3_destroyed: bool = False


class L4Engine:
    """Executes the L4 operations against a :class:`KeySource` and a random source.

    An engine serves one request (build one per request): it keeps the DEKs it opened for
    that request's items, so a bulk request of many records under one L4 unwraps its DEK
    once; they go with the engine. Given ``opened_keys`` (the gateway's), it also looks
    there for a DEK opened by an earlier request before it opens a token, and keeps what it
    opens there (:mod:`kcm.l4.opened_keys`); every check of who asks, of the L3 and of the
    token is made first all the same."""

    __slots__ = ("_keys", "_random_bytes", "_opened", "_used", "_opened_keys")

    def __init__(self, keys: KeySource, random_bytes: RandomBytes = os.urandom,
                 used: Callable[[str], None] | None = None,
                 opened_keys: OpenedKeys | None = None) -> None:
        self._keys = keys
        self._random_bytes = random_bytes
        #: Told the uid of the L3 each time its key encrypts (an L4 sealed, a DEK wrapped):
        #: the usage a rotation policy's cap counts (kcm.gateway.usage_report).
        self._used = used
        #: L4 identifier -> its DEK, opened for an earlier item of this request.
        self._opened: dict[str, OpenedKey] = {}
        self._opened_keys = opened_keys

    def execute(self, operation: int, principal: Principal, version: Version,
                payload: Any) -> Any:
        """Run one L4 batch item: the response payload, or a ``KmipError``."""
        handler = _OPERATIONS.get(operation)
        if handler is None:
            raise KmipError(ResultReason.OPERATION_NOT_SUPPORTED,
                            f"{enum_label(Operation, operation)} is not an L4 operation")
        return handler(self, principal, version, payload)

    # Create -------------------------------------------------------------------------
    def create(self, principal: Principal, version: Version,
               request: CreateRequest) -> CreateResponse:
        """A new DEK sealed under the L3 the request's markers name (its current Active
        version, or the linked one, which must be Active)."""
        if request.object_type != ObjectType.SYMMETRIC_KEY:
            raise KmipError(ResultReason.INVALID_FIELD, "an L4 is a Symmetric Key")
        refuse_template_names(request.template_names)
        attributes = request.attributes or []
        length = _dek_length(attributes, version)
        target = l4_target(principal, attributes)
        if isinstance(target, str):
            l3 = self._service_key(principal, target)
            named = _vendor_text(attributes, SERVICE_NAME)
            if named is not None and named != l3.service:
                raise KmipError(ResultReason.INVALID_FIELD,
                                f"the Parent Link names a key of service {l3.service!r}, "
                                f"x-kcm-service names {identifier_label(named)!r}")
        else:
            tenant, service = target
            check_service_key_use(principal, tenant, service)
            l3 = self._keys.current_service_key(tenant, service)
        _check_state(l3, protect=True, what="seal a new L4")
        dek = self._random_bytes(length // 8)
        try:
            uid = token.seal(l3, dek, self._random_bytes(token.NONCE_LENGTH))
        except ValueError:
            raise KmipError(ResultReason.FEATURE_NOT_SUPPORTED,
                            f"the service key {l3.uid!r} predates L4 tokens (its identifier is "
                            "not l3-<uuid>); a tenant administrator re-keys it to seal L4s"
                            ) from None
        if self._used is not None:
            self._used(l3.uid)
        return CreateResponse(object_type=ObjectType.SYMMETRIC_KEY, unique_identifier=uid)

    # Get ----------------------------------------------------------------------------
    def get(self, principal: Principal, version: Version, request: GetRequest) -> GetResponse:
        """The L4's key: Raw (default) or Transparent Symmetric Key, optionally wrapped
        with an L3 (Key Wrapping Specification, AES key wrap)."""
        uid = _identifier(request.unique_identifier)
        if not uid.startswith(L4_PREFIX):
            raise KmipError(ResultReason.PERMISSION_DENIED,
                            "service keys are served to gateways only, over the link")
        dek = self._l4_key(principal, version, uid, protect=False)[0].key
        if request.key_compression_type is not None:
            raise KmipError(ResultReason.KEY_COMPRESSION_TYPE_NOT_SUPPORTED,
                            "key compression is not supported")
        wanted = request.key_format_type
        if wanted is None or wanted == KeyFormatType.RAW:
            key_format, material = KeyFormatType.RAW, dek
        elif wanted == KeyFormatType.TRANSPARENT_SYMMETRIC_KEY:
            key_format = KeyFormatType.TRANSPARENT_SYMMETRIC_KEY
            material = TransparentSymmetricKey(key=dek)
        else:
            raise KmipError(ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED,
                            f"an L4 is returned as Raw or Transparent Symmetric Key, not "
                            f"{enum_label(KeyFormatType, wanted)}")
        value = KeyValue(key_material=material)
        block = KeyBlock(key_format_type=key_format, key_value=value,
                         cryptographic_algorithm=CryptographicAlgorithm.AES,
                         cryptographic_length=len(dek) * 8)
        spec = request.key_wrapping_specification
        if spec is not None:
            block = self._wrapped(principal, version, block, value, spec)
        return GetResponse(object_type=ObjectType.SYMMETRIC_KEY, unique_identifier=uid,
                           object=SymmetricKey(key_block=block))

    def _wrapped(self, principal: Principal, version: Version, block: KeyBlock,
                 value: KeyValue, spec: KeyWrappingSpecification) -> KeyBlock:
        if spec.wrapping_method != WrappingMethod.ENCRYPT:
            raise KmipError(ResultReason.FEATURE_NOT_SUPPORTED,
                            "an L4 is wrapped with Wrapping Method Encrypt only")
        if spec.mac_signature_key_information is not None:
            raise KmipError(ResultReason.FEATURE_NOT_SUPPORTED,
                            "MAC or signature wrapping is not supported")
        info = spec.encryption_key_information
        if info is None:
            raise KmipError(ResultReason.MISSING_DATA,
                            "Key Wrapping Specification needs Encryption Key Information")
        if spec.attribute_names:
            raise KmipError(ResultReason.INVALID_FIELD,
                            "an L4 has no stored attributes to wrap with it")
        wrapping_uid = info.unique_identifier
        if not isinstance(wrapping_uid, str) or not wrapping_uid.startswith(L3_PREFIX):
            raise KmipError(ResultReason.FEATURE_NOT_SUPPORTED,
                            "an L4 is wrapped only with a service key (l3-...)")
        try:
            kek = self._service_key(principal, wrapping_uid)
        except KmipError as e:
            if e.reason != ResultReason.OBJECT_NOT_FOUND:
                raise
            missing = wrapping_key_not_found(wrapping_uid)
            if isinstance(e, ServiceKeyUseDenied):  # still a refused attempt, to log
                raise e.restated(missing) from None
            raise missing from None
        _check_state(kek, protect=True, what="wrap")
        mode = _wrap_mode(info.cryptographic_parameters)
        encoding = spec.encoding_option
        if encoding == EncodingOption.NO_ENCODING:
            raw = value.key_material
            wrapped: KeyValue | bytes = aes_wrap(
                kek.key, raw.key if isinstance(raw, TransparentSymmetricKey) else raw, mode)
            if version < (2, 0):
                # KMIP 1.x keeps the Key Value structure and wraps its Key Material only
                # (1.4 §2.1.5), as the core does for managed keys.
                wrapped = KeyValue(key_material=wrapped)
        else:
            # No Encoding Option means TTLV Encoding: the whole Key Value structure.
            wrapped = aes_wrap(kek.key, encode(value.to_item(version)), mode)
        return KeyBlock(
            key_format_type=block.key_format_type, key_value=wrapped,
            cryptographic_algorithm=block.cryptographic_algorithm,
            cryptographic_length=block.cryptographic_length,
            key_wrapping_data=KeyWrappingData(
                wrapping_method=WrappingMethod.ENCRYPT,
                encryption_key_information=EncryptionKeyInformation(
                    unique_identifier=kek.uid,
                    cryptographic_parameters=info.cryptographic_parameters),
                encoding_option=encoding))

    # Encrypt / Decrypt --------------------------------------------------------------
    def encrypt(self, principal: Principal, version: Version,
                request: EncryptRequest) -> EncryptResponse:
        """Encrypt ``Data`` with an L4 (a record) or an L3 (a DEK): AES-GCM unless the
        Cryptographic Parameters say otherwise; a generated IV is returned."""
        uid = _identifier(request.unique_identifier)
        _no_stream(request)
        with_l3 = not uid.startswith(L4_PREFIX)
        if with_l3:
            key = self._l3_key(principal, uid, protect=True)
        else:
            key = self._l4_key(principal, version, uid, protect=True)[0]
        data = _data(request.data)
        requested = request.cryptographic_parameters
        spec = _spec(requested)
        aad = request.authenticated_encryption_additional_data
        if with_l3:
            _check_l3_encrypt(spec, requested, request.iv_counter_nonce, aad)
        iv, generated = encrypt_iv(spec, request.iv_counter_nonce, self._random_bytes)
        if spec is AES_GCM_DEFAULT and len(iv) == 12:
            # The hot path: one AEAD call, the tag split off the end.
            sealed = key.aesgcm().encrypt(iv, data, aad or None)
            ciphertext, tag = sealed[:-16], sealed[-16:]
        else:
            with cryptographic_failure():
                ciphertext, tag = encrypt_once(spec, key.key, iv, data, aad)
        ciphertext, tag = aead_tag.answer_data(version, ciphertext, tag)
        if with_l3 and self._used is not None:
            self._used(uid)
        return EncryptResponse(unique_identifier=uid, data=ciphertext,
                               iv_counter_nonce=generated, authenticated_encryption_tag=tag)

    def decrypt(self, principal: Principal, version: Version,
                request: DecryptRequest) -> DecryptResponse:
        """Decrypt ``Data`` with an L4 or an L3; Cryptographic Failure if it does not verify."""
        uid = _identifier(request.unique_identifier)
        _no_stream(request)
        with_l3 = not uid.startswith(L4_PREFIX)
        if with_l3:
            key = self._l3_key(principal, uid, protect=False)
        else:
            key = self._l4_key(principal, version, uid, protect=False)[0]
        data = _data(request.data)
        spec = _spec(request.cryptographic_parameters)
        iv = decrypt_iv(spec, request.iv_counter_nonce)
        aad = request.authenticated_encryption_additional_data
        if with_l3:
            _check_l3_decrypt(spec, iv, aad)
        tag = request.authenticated_encryption_tag
        if spec.aead:
            data, tag = aead_tag.request_data(version, data, tag, spec.tag_length)
        if spec is AES_GCM_DEFAULT and len(iv) == 12 and tag is not None and len(tag) == 16:
            # The hot path, as encrypt's: one AEAD call (decrypt_once answers the same; the
            # library's refusals as cryptographic_failure() has them, without its context
            # manager, which cost more than the call).
            try:
                plaintext = key.aesgcm().decrypt(iv, data + tag, aad or None)
            except InvalidTag:
                raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE,
                                "the tag does not verify") from None
            except ValueError as e:
                raise KmipError(ResultReason.CRYPTOGRAPHIC_FAILURE, str(e)) from None
        else:
            with cryptographic_failure():
                plaintext = decrypt_once(spec, key.key, iv, data, aad, tag)
        return DecryptResponse(unique_identifier=uid, data=plaintext)

    # Revoke / Destroy (the core records it) -----------------------------------------
    def tombstone(self, principal: Principal, version: Version, uid: str) -> Tombstone:
        """What Revoke or Destroy of L4 ``uid`` must record, once the caller may do it.

        The token must be well-formed, name an L3 the caller may use and, while that L3
        still exists, open under it (so forged identifiers leave no tombstones). A token
        already tombstoned is answered again (Revoke then Destroy is the usual sequence).
        """
        sealed = _parse(uid)
        l3 = self._service_key(principal, sealed.l3_uid)
        destroyed = l3.state in DESTROYED_STATES
        if not destroyed:
            _open(uid, sealed, l3)
        return Tombstone(sealed.token_id, l3.tenant, l3.uid, destroyed)

    # Keys ---------------------------------------------------------------------------
    def _service_key(self, principal: Principal, uid: str) -> ServiceKey:
        """L3 ``uid`` for a caller who may use it. The source decided who asks before
        anything else; asking again here costs nothing and holds for any source."""
        l3 = self._keys.service_key(uid)
        check_service_key_use(principal, l3.tenant, l3.service, uid=uid)
        return l3

    def _l3_key(self, principal: Principal, uid: str, *, protect: bool) -> OpenedKey:
        """The key of L3 ``uid`` (a text that is no L4's) for a caller who may use it to
        wrap (``protect``) or unwrap a DEK."""
        if not uid.startswith(L3_PREFIX):
            raise KmipError(ResultReason.INVALID_FIELD,
                            f"{identifier_label(uid)} is neither a service key (l3-) nor an "
                            "L4 token (l4.)")
        l3 = self._service_key(principal, uid)
        _check_state(l3, protect=protect, what="wrap a DEK" if protect else "unwrap a DEK")
        return OpenedKey(l3.key)

    def _l4_key(self, principal: Principal, version: Version, uid: str, *,
                protect: bool) -> tuple[OpenedKey, ServiceKey]:
        """The DEK of L4 ``uid`` for a caller who may use it, and its L3."""
        sealed = _parse(uid)
        l3 = self._service_key(principal, sealed.l3_uid)
        # A destroyed L3 first: every token under it is gone alike, revoked or not, so that
        # a gateway may forget the tombstones of a destroyed L3 (kcm.gateway.l3_cache).
        if l3.state in DESTROYED_STATES:
            raise KmipError(ResultReason.OBJECT_DESTROYED,
                            f"the service key {l3.uid} was destroyed: the L4s sealed under "
                            "it are crypto-erased")
        if self._keys.is_tombstoned(sealed.token_id):
            raise KmipError(ResultReason.OBJECT_NOT_FOUND,
                            f"the L4 {sealed.token_id} was revoked or destroyed")
        _check_state(l3, protect=protect,
                     what="encrypt with its L4s" if protect else "open its L4s")
        # (every check above is made for every item and request all the same)
        dek = self._opened.get(uid)
        if dek is None:
            cache = self._opened_keys
            dek = cache.get(uid, l3) if cache is not None else None
            if dek is None:
                opened = _open(uid, sealed, l3)
                dek = (cache.put(uid, sealed.token_id, l3, opened) if cache is not None
                       else OpenedKey(opened))
            self._opened[uid] = dek
        return dek, l3


#: The L4 operations whose answer sets the batch's ID Placeholder (KMIP 1.4 §4, 2.1 §6: an
#: operation that makes or finds an object): a Create (its new token). A Get, Encrypt or
#: Decrypt uses it and leaves it unchanged. The gateway's runs and classifier go by it;
#: kcm.core.l4_requests sets it in the same cases.
SETS_ID_PLACEHOLDER = frozenset((int(Operation.CREATE),))

#: The engine's method for each operation (one table for every engine: an engine is built
#: per request).
_OPERATIONS: dict[int, Callable[..., Any]] = {
    Operation.CREATE: L4Engine.create, Operation.GET: L4Engine.get,
    Operation.ENCRYPT: L4Engine.encrypt, Operation.DECRYPT: L4Engine.decrypt,
}


# Helpers ------------------------------------------------------------------------------
def _parse(uid: str) -> token.SealedToken:
    """The token ``uid``; a text that is not one names nothing (the missing answer)."""
    try:
        return token.parse(uid)
    except token.TokenError:
        raise object_not_found(uid) from None


def _open(uid: str, sealed: token.SealedToken, l3: ServiceKey) -> bytes:
    """The DEK of token ``uid``; one that does not open under its L3 (forged, or sealed
    for another tenant or service) names nothing either."""
    try:
        return token.open_sealed(sealed, l3)
    except token.TokenError:
        raise object_not_found(uid) from None


def _check_state(l3: ServiceKey, *, protect: bool, what: str) -> None:
    usable = l3.usable_to_protect if protect else l3.usable_to_process
    if not usable:
        raise wrong_state(f"the service key {l3.uid} is "
                                   f"{enum_label(State, l3.state)}: it cannot {what}")


def _identifier(unique_identifier: object) -> str:
    if isinstance(unique_identifier, str):
        return unique_identifier
    raise KmipError(ResultReason.INVALID_FIELD,
                    "an L4 operation needs the Unique Identifier as text (the ID Placeholder is "
                    "resolved before the engine)")


def _no_stream(request: EncryptRequest | DecryptRequest) -> None:
    if request.init_indicator or request.correlation_value is not None \
            or request.final_indicator is not None:
        raise KmipError(ResultReason.FEATURE_NOT_SUPPORTED,
                        "streaming (Init Indicator, Correlation Value) is not offered with "
                        "service keys and L4s; send each message whole")


def _data(data: bytes | None) -> bytes:
    if data is None:
        raise KmipError(ResultReason.INVALID_MESSAGE, "the request has no Data")
    return data


def _spec(requested: CryptographicParameters | None) -> CipherSpec:
    if requested is None:
        return AES_GCM_DEFAULT
    return resolve_spec(_AES, None, requested)


#: What a client's Encrypt or Decrypt with a service key runs (docs/link-protocol.md §3).
_L3_CIPHER = ("a service key (l3-...) wraps DEKs with AES-GCM only: a 12-byte IV and a "
              "16-byte tag")
_GCM = int(BlockCipherMode.GCM)
_L3_IV_LENGTH = 12
_L3_TAG_LENGTH = 16


def _check_l3_cipher(spec: CipherSpec) -> None:
    """Refuse parameters other than AES-GCM, 16-byte tag, 96-bit IV with a service key.

    An L3 also seals L4 tokens (AES-GCM, 12-byte random nonce, the token binding as
    associated data): a client's Encrypt or Decrypt under it is held to that one cipher,
    whose every output is bound to its IV and associated data, so none of it is a block,
    keystream or short-tag oracle on the key (NIST SP 800-57 Pt 1 §5.2: one key, one
    purpose). The request's Cryptographic Parameters were resolved first
    (:func:`kcm.crypto.symmetric.resolve_spec`), so what no key runs is refused as for
    any key."""
    if spec is not AES_GCM_DEFAULT and (
            spec.mode != _GCM or spec.tag_length != _L3_TAG_LENGTH
            or spec.iv_length not in (None, _L3_IV_LENGTH)):
        raise unsupported(_L3_CIPHER)


def _check_l3_aad(aad: bytes | None) -> None:
    if token.is_binding(aad):
        raise KmipError(ResultReason.INVALID_FIELD,
                        "with a service key (l3-...), associated data may not begin with "
                        "l4.1 (L4 tokens' own)")


def _check_l3_encrypt(spec: CipherSpec, requested: CryptographicParameters | None,
                      iv: bytes | None, aad: bytes | None) -> None:
    """Refuse an Encrypt with a service key that is not AES-GCM with an IV the server
    draws (12 bytes) and a 16-byte tag, or whose associated data could be a token's
    (:func:`kcm.l4.token.is_binding`): a client never makes a token's ciphertext."""
    _check_l3_cipher(spec)
    if requested is not None and requested.random_iv is False:
        raise unsupported("a service key (l3-...) encrypts only with an IV the server draws: "
                          "Random IV False is refused")
    if iv is not None:
        raise KmipError(ResultReason.INVALID_FIELD,
                        "a service key (l3-...) takes no IV on Encrypt: the server draws it")
    _check_l3_aad(aad)


def _check_l3_decrypt(spec: CipherSpec, iv: bytes, aad: bytes | None) -> None:
    """Refuse a Decrypt with a service key that is not AES-GCM with a 12-byte IV and a
    16-byte tag, or whose associated data could be a token's: a client never opens a
    token's ciphertext."""
    _check_l3_cipher(spec)
    if len(iv) != _L3_IV_LENGTH:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"the IV is {len(iv)} bytes; a service key (l3-...) takes 12")
    _check_l3_aad(aad)


def _wrap_mode(parameters: CryptographicParameters | None) -> int:
    mode = parameters.block_cipher_mode if parameters is not None else None
    if mode is None:
        return int(BlockCipherMode.NISTKEYWRAP)
    if mode not in WRAP_MODES:
        raise KmipError(ResultReason.FEATURE_NOT_SUPPORTED,
                        f"keys are wrapped with NIST Key Wrap or AES Key Wrap with Padding, "
                        f"not {enum_label(BlockCipherMode, mode)}")
    return int(mode)


def _dek_length(attributes: list[Attribute], version: Version) -> int:
    """The DEK length in bits the Create asks for (AES; 256 unless it says 128 or 192);
    refuses what is no attribute of the request's version, as a stored object's Create does
    (2.x Invalid Attribute, 1.x Invalid Field), and the attributes an L4 cannot keep."""
    length = 256
    for attribute in attributes:
        tag = attribute.tag
        value = attribute.value.value if attribute.value is not None else None
        if tag == Tag.CRYPTOGRAPHIC_ALGORITHM:
            if value != _AES:
                raise KmipError(ResultReason.INVALID_FIELD,
                                f"an L4 is an AES key, not "
                                f"{enum_label(CryptographicAlgorithm, value)}")
        elif tag == Tag.CRYPTOGRAPHIC_LENGTH:
            if value not in _DEK_BITS:
                raise KmipError(ResultReason.INVALID_FIELD,
                                f"an L4 is 128, 192 or 256 bits, not {value}")
            length = int(value)  # type: ignore[arg-type]
        elif tag == Tag.CRYPTOGRAPHIC_USAGE_MASK:
            _check_usage_mask(value)
        elif tag == Tag.LINK:
            link = attribute.typed
            if not isinstance(link, Link) or link.link_type != LinkType.PARENT_LINK:
                raise KmipError(ResultReason.INVALID_FIELD,
                                "an L4 links only to its parent service key")
        elif tag == VENDOR_TAG and attribute.vendor_identification == VENDOR \
                and attribute.name in (LEVEL_NAME, SERVICE_NAME):
            continue
        elif not defined_in(attribute, version):
            # (the attributes above are every version's: only the rest need asking)
            raise KmipError(ResultReason.INVALID_ATTRIBUTE,
                            f"{attribute_label(attribute)} is not an attribute of KMIP "
                            f"{version[0]}.{version[1]}",
                            v1_reason=ResultReason.INVALID_FIELD)
        elif tag not in _IGNORED_CREATE_ATTRIBUTES:
            raise KmipError(ResultReason.INVALID_FIELD,
                            f"an L4 is not stored, so it cannot keep the attribute "
                            f"{attribute_label(attribute)}; L4s are not inventoried")
    return length


def _check_usage_mask(mask: object) -> None:
    """Refuse a Cryptographic Usage Mask that lacks a use every L4 allows."""
    if not isinstance(mask, int) or mask & _L4_USAGE != _L4_USAGE:
        raise KmipError(ResultReason.INVALID_FIELD,
                        "an L4 always encrypts and decrypts: its Cryptographic Usage Mask "
                        "must include Encrypt and Decrypt")


def _vendor_text(attributes: list[Attribute], name: str) -> str | None:
    for attribute in attributes:
        if attribute.tag == VENDOR_TAG and attribute.vendor_identification == VENDOR \
                and attribute.name == name and attribute.value is not None:
            value = attribute.value.value
            return value if isinstance(value, str) else None
    return None

