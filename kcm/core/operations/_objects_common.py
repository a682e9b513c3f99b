"""Constants and small helpers the operation handlers share: attribute values, links, and
the core's side of "may this key be used now" (the rule is :mod:`kcm.kernel.key_use`'s)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from kcm.core import managed, policy
from kcm.core.context import OperationContext
from kcm.crypto.rsa_keys import load_private, load_public
from kcm.kernel.key_use import KeyUse, check_key_use
from kcm.kernel.lifecycle import DESTROYED_STATES
from kcm.kmip.attributes import VENDOR_TAG, Attribute, Link
from kcm.kmip.enums import (
    BlockCipherMode,
    LinkType,
    ObjectType,
    ResultReason,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import enum_label
from kcm.kmip.objects import KeyBlock, KeyValue, SecretData, SymmetricKey
from kcm.kmip.tags import Tag
from kcm.ttlv import Item

#: The Object Type each managed-object structure stands for.
OBJECT_TYPE_OF_TAG: dict[int, ObjectType] = {
    Tag.CERTIFICATE: ObjectType.CERTIFICATE,
    Tag.SYMMETRIC_KEY: ObjectType.SYMMETRIC_KEY,
    Tag.PUBLIC_KEY: ObjectType.PUBLIC_KEY,
    Tag.PRIVATE_KEY: ObjectType.PRIVATE_KEY,
    Tag.SPLIT_KEY: ObjectType.SPLIT_KEY,
    Tag.TEMPLATE: ObjectType.TEMPLATE,
    Tag.SECRET_DATA: ObjectType.SECRET_DATA,
    Tag.OPAQUE_OBJECT: ObjectType.OPAQUE_OBJECT,
    Tag.PGP_KEY: ObjectType.PGP_KEY,
    Tag.CERTIFICATE_REQUEST: ObjectType.CERTIFICATE_REQUEST,
}

AES_KEY_BITS = frozenset({128, 192, 256})
DESTROYED = DESTROYED_STATES  # (kcm.kernel.lifecycle)
WRAP_MODES = (BlockCipherMode.NISTKEYWRAP, BlockCipherMode.AESKEYWRAPPADDING)


def value_of(attributes: Iterable[Attribute], tag: int) -> Any:
    """The typed value of the first attribute with ``tag``, or None."""
    for attribute in attributes:
        if attribute.tag == tag:
            return attribute.typed
    return None


def single_value(attributes: Iterable[Attribute], tag: int) -> Any:
    """The plain value of the first attribute with ``tag`` that has one, or None."""
    for attribute in attributes:
        if attribute.tag == tag and attribute.value is not None:
            return attribute.value.value
    return None


def link_attribute(link_type: LinkType, uid: str) -> Attribute:
    """A Link attribute of ``link_type`` to the object ``uid``."""
    return Attribute.of(Tag.LINK, Link(link_type=link_type, linked_object_identifier=uid))


def attribute_identity(attribute: Attribute) -> tuple[int, str | None, str | None]:
    """What makes two attributes "the same attribute" (vendor ones by vendor and name)."""
    if attribute.tag == VENDOR_TAG:
        return (VENDOR_TAG, attribute.vendor_identification, attribute.name)
    return (attribute.tag, None, None)


def require_usable(ctx: OperationContext, obj: managed.StoredObject, use: KeyUse, *,
                   named: bool = False) -> None:
    """Refuse ``use`` of ``obj`` now: its state, Protect Stop Date, Process Start Date
    and Cryptographic Usage Mask decide (:func:`kcm.kernel.key_use.check_key_use`).
    ``named``: the messages name the object (one of several the request uses)."""
    check_key_use(use, obj.state, now=ctx.now,
                  protect_stop_date=obj.value(Tag.PROTECT_STOP_DATE),
                  process_start_date=obj.value(Tag.PROCESS_START_DATE),
                  usage_mask=obj.value(Tag.CRYPTOGRAPHIC_USAGE_MASK),
                  key=obj.uid if named else None)


def load_key_for(ctx: OperationContext, unique_identifier: object,
                 allowed: Collection[int], use: KeyUse) -> managed.StoredObject:
    """The caller's object ``unique_identifier`` (the ID Placeholder when None), if it is
    of an ``allowed`` Object Type, the policy lets the caller use it, and it may be used for
    ``use`` now (:func:`require_usable`)."""
    uid = ctx.id_placeholder.resolve(unique_identifier)  # type: ignore[arg-type]
    obj = managed.load(ctx, uid, for_update=False)
    if obj.object_type not in allowed:
        raise KmipError(ResultReason.INVALID_OBJECT_TYPE,
                        f"a {enum_label(ObjectType, obj.object_type)} cannot {use.verb}",
                        v1_reason=ResultReason.ILLEGAL_OPERATION)
    policy.check_key_use(ctx.principal, obj.level, obj.row.service)
    require_usable(ctx, obj, use)
    return obj


def clear_key_bytes(ctx: OperationContext, obj: managed.StoredObject) -> bytes:
    """The key bytes of a Symmetric Key or Secret Data, which the server must hold in the
    clear to compute with them (a key registered wrapped it cannot use)."""
    key = obj.memo("key_bytes", lambda: _key_bytes(managed.material(ctx, obj)))
    if key is None:
        raise KmipError(ResultReason.KEY_VALUE_NOT_PRESENT,
                        f"the key material of {obj.uid!r} is not available in the clear to "
                        "the server", v1_reason=ResultReason.CRYPTOGRAPHIC_FAILURE)
    return key


def _key_bytes(stored: object) -> bytes | None:
    return stored.key_block.key_bytes if isinstance(stored, SymmetricKey | SecretData) else None


def unwrapped_key_block(ctx: OperationContext, obj: managed.StoredObject) -> KeyBlock:
    """The Key Block of a key object (Public or Private Key, say) in the clear; a key
    registered wrapped, which the server cannot use, is refused."""
    stored = managed.material(ctx, obj)
    found = stored.find(Tag.KEY_BLOCK) if isinstance(stored, Item) else None
    if found is None:
        raise KmipError(ResultReason.INVALID_FIELD, "the object has no key block")
    block = KeyBlock.from_item(found)
    if block.key_wrapping_data is not None or not isinstance(block.key_value, KeyValue):
        raise KmipError(ResultReason.KEY_VALUE_NOT_PRESENT,
                        "the key is stored wrapped; the server cannot use it",
                        v1_reason=ResultReason.CRYPTOGRAPHIC_FAILURE)
    return block


def stored_rsa_private_key(ctx: OperationContext,
                           obj: managed.StoredObject) -> rsa.RSAPrivateKey | None:
    """The RSA private key a Private Key object holds (None: not an RSA key in a format
    read here), read without OpenSSL's validation: its material was checked when it was
    registered, or made here (:func:`kcm.crypto.rsa_keys.load_private` with ``stored``,
    which still bounds what using the key costs). Read once per content of the object and
    kept with its cache entry (:meth:`~kcm.core.managed.StoredObject.memo`)."""
    return obj.memo("rsa private key",
                    lambda: load_private(unwrapped_key_block(ctx, obj), stored=True))


def stored_rsa_public_key(ctx: OperationContext,
                          obj: managed.StoredObject) -> rsa.RSAPublicKey | None:
    """The RSA public key of a Public Key object, or the public half of a Private Key
    object's (None: not an RSA key in a format read here), as
    :func:`stored_rsa_private_key` reads it."""
    if obj.object_type == ObjectType.PRIVATE_KEY:
        private = stored_rsa_private_key(ctx, obj)
        return None if private is None else private.public_key()
    return obj.memo("rsa public key",
                    lambda: load_public(unwrapped_key_block(ctx, obj), stored=True))
