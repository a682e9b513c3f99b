"""Derive Key (KMIP 1.4 §4.6, 2.1 §6.1.11): a Symmetric Key or Secret Data made from stored
key material.

The derivation methods are :mod:`kcm.crypto.derivation`'s; this handler loads the base
objects, applies the policy and the key-use rule, and stores what it makes:

* The first base object's key material is derived from; without Derivation Data a second
  base Secret Data supplies it. An object named twice is refused (Invalid Field). Every base
  is named by its Unique Identifier: the ID Placeholder SHALL NOT stand for one here (the
  new object's identifier does go into it, as a Create's does).
* The template's Cryptographic Length (bits, a whole number of bytes) is required, and for
  a Symmetric Key its Cryptographic Algorithm.
* Base objects must be usable for derivation (:data:`kcm.kernel.key_use.DERIVE`: Pre-Active
  or Active, the Derive Key bit when a mask is set) and their material exportable: derived
  material is a function of the base's, so what may not leave may not be derived: never
  from a tenant or service key, nor from a Sensitive or non-Extractable object (refused
  Sensitive, Not Extractable): the derived object, returned in the clear, would carry its
  material out (ENCRYPT with a first base the caller knows returns a second base's bytes
  encrypted under it).
* The new object links to its bases (Derivation Base Object Link) and each base to it
  (Derived Key Link).
"""

from __future__ import annotations

from kcm.core import managed, policy
from kcm.core.context import OperationContext, Pbkdf2Results
from kcm.core.operations._objects_common import (
    clear_key_bytes,
    link_attribute,
    require_usable,
    single_value,
)
from kcm.core.operations.create import client_attributes, server_attributes
from kcm.crypto.derivation import Pbkdf2, derive, pbkdf2
from kcm.kernel import key_use
from kcm.kernel.missing import identifier_label
from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import (
    CryptographicAlgorithm,
    DerivationMethod,
    KeyFormatType,
    LinkType,
    ObjectType,
    ResultReason,
    SecretDataType,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.fields import Struct
from kcm.kmip.labels import enum_label
from kcm.kmip.objects import KeyBlock, KeyValue, SecretData, SymmetricKey
from kcm.kmip.payloads import DeriveKeyRequest, DeriveKeyResponse
from kcm.kmip.tags import Tag
from kcm.ttlv import Item

_DERIVABLE = (ObjectType.SYMMETRIC_KEY, ObjectType.SECRET_DATA)


def derive_key(ctx: OperationContext, request: DeriveKeyRequest) -> DeriveKeyResponse:
    prepared = ctx.key_pairs
    object_type, attributes, length_bits, algorithm, bases, derived = _derivation(
        ctx, request, pbkdf2 if prepared is None else prepared.pbkdf2.take)
    uid = ctx.keyring.new_uid()
    if object_type == ObjectType.SYMMETRIC_KEY:
        new_object: Struct = SymmetricKey(key_block=KeyBlock(
            key_format_type=KeyFormatType.RAW, key_value=KeyValue(key_material=derived),
            cryptographic_algorithm=int(algorithm),  # type: ignore[arg-type]
            cryptographic_length=length_bits))
        stored = server_attributes(ctx, uid, object_type, attributes,
                                   algorithm=algorithm, length=length_bits)
    else:
        new_object = SecretData(secret_data_type=SecretDataType.SEED, key_block=KeyBlock(
            key_format_type=KeyFormatType.OPAQUE, key_value=KeyValue(key_material=derived)))
        # Secret Data has no algorithm or length of its own (PyKMIP drops them too).
        stored = server_attributes(ctx, uid, object_type, attributes, algorithm=None,
                                   length=None)
    stored += [link_attribute(LinkType.DERIVATION_BASE_OBJECT_LINK, base.uid)
               for base in bases]
    managed.insert(ctx, uid=uid, object_type=object_type, attributes=stored,
                   managed_object=new_object)
    for base in bases:
        base.attributes.append(link_attribute(LinkType.DERIVED_KEY_LINK, uid))
        managed.save(ctx, base)
    ctx.id_placeholder.set(uid)
    return DeriveKeyResponse(unique_identifier=uid)


def prepare_pbkdf2(ctx: OperationContext, request: DeriveKeyRequest,
                   results: Pbkdf2Results) -> None:
    """For a tenant's worker, before the request's group commit (``ctx`` in a read-only
    transaction): the PBKDF2 derivation ``request`` asks for, computed with every check
    the operation makes and kept in ``results``; the writer's :func:`derive_key` takes it
    when it reads the same base material, and computes nothing. Raises what the operation
    would refuse; stores nothing."""
    if request.derivation_method == DerivationMethod.PBKDF2:
        _derivation(ctx, request, results.compute, for_update=False)


def _derivation(ctx: OperationContext, request: DeriveKeyRequest, compute_pbkdf2: Pbkdf2,
                *, for_update: bool = True
                ) -> tuple[int, list[Attribute], int, int | None, list[managed.StoredObject],
                           bytes]:
    """What ``request`` derives, from what, and as what: (object type, client attributes,
    length in bits, algorithm, base objects, the derived bytes), its PBKDF2 computed by
    ``compute_pbkdf2``. ``for_update`` False: the bases are read, not locked (a read-only
    transaction's, which PostgreSQL refuses a lock in)."""
    object_type = int(request.object_type)
    if object_type not in _DERIVABLE:
        raise KmipError(ResultReason.INVALID_FIELD,
                        "Derive Key makes a Symmetric Key or Secret Data only")
    attributes = client_attributes(ctx, request.template_names, request.attributes)
    length_bits = single_value(attributes, Tag.CRYPTOGRAPHIC_LENGTH)
    if length_bits is None:
        raise KmipError(ResultReason.INVALID_FIELD,
                        "Derive Key needs a Cryptographic Length attribute")
    if length_bits <= 0 or length_bits % 8:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"Cryptographic Length {length_bits} is not a whole number of bytes")
    algorithm = single_value(attributes, Tag.CRYPTOGRAPHIC_ALGORITHM)
    if object_type == ObjectType.SYMMETRIC_KEY and algorithm is None:
        raise KmipError(ResultReason.INVALID_FIELD,
                        "deriving a Symmetric Key needs a Cryptographic Algorithm attribute")
    if object_type == ObjectType.SYMMETRIC_KEY:
        _check_derived_length(int(algorithm), length_bits)
    uids = _named_bases(request.unique_identifiers)
    _no_repeated_base(uids)
    bases = [_derivation_base(ctx, uid, for_update) for uid in uids]
    key_material = clear_key_bytes(ctx, bases[0])
    parameters = request.derivation_parameters
    data = parameters.derivation_data
    if data is None:
        data = next((clear_key_bytes(ctx, base) for base in bases[1:]
                     if base.object_type == ObjectType.SECRET_DATA), None)
    method = int(request.derivation_method)
    derived = derive(method, parameters, key_material, data, length_bits // 8,
                     bases[0].value(Tag.CRYPTOGRAPHIC_ALGORITHM),
                     charge_pbkdf2=ctx.work.charge_pbkdf2, compute_pbkdf2=compute_pbkdf2)
    ctx.audit_detail["derivation_method"] = enum_label(DerivationMethod, method)
    return object_type, attributes, length_bits, algorithm, bases, derived


#: The lengths in bits a derived DES3 key may have: two or three DES keys (8 bytes would
#: be single DES under the name of DES3).
_DERIVED_DES3_LENGTHS = frozenset({128, 192})


def _check_derived_length(algorithm: int, length_bits: int) -> None:
    """Refuse a derived DES3 key that is not two or three DES keys. Other lengths are the
    client's: PyKMIP's suite derives a 160-bit "AES" key (RFC 6070's PBKDF2 vector), which
    no Encrypt then takes."""
    lengths = _DERIVED_DES3_LENGTHS if algorithm == CryptographicAlgorithm.DES3 else None
    if lengths is not None and length_bits not in lengths:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"a derived {enum_label(CryptographicAlgorithm, algorithm)} key cannot "
                        f"be {length_bits} bits")


def _named_bases(references: list[str | Item]) -> list[str]:
    """The base objects' identifiers, as the request names them: the ID Placeholder SHALL
    NOT be used in place of a Unique Identifier in Derive Key (KMIP 1.4 §4.6, 2.1 alike),
    so none omitted (Missing Data, as for an item with nothing to stand for its identifier)
    and none the 2.x ID Placeholder reference (Invalid Field)."""
    if not references:
        raise KmipError(ResultReason.MISSING_DATA,
                        "Derive Key needs its base object's Unique Identifier "
                        "(not the ID Placeholder)")
    uids = [reference for reference in references if isinstance(reference, str)]
    if len(uids) != len(references):
        raise KmipError(ResultReason.INVALID_FIELD,
                        "Derive Key takes no ID Placeholder for a base object")
    return uids


def _no_repeated_base(uids: list[str]) -> None:
    """Refuse a base object named twice: one object is one base (and is loaded and
    updated once)."""
    seen: set[str] = set()
    for uid in uids:
        if uid in seen:
            raise KmipError(ResultReason.INVALID_FIELD,
                            f"the base object {identifier_label(uid)} is named twice")
        seen.add(uid)


def _derivation_base(ctx: OperationContext, uid: str,
                     for_update: bool = True) -> managed.StoredObject:
    obj = managed.load(ctx, uid, for_update=for_update)
    if obj.object_type not in _DERIVABLE:
        raise KmipError(ResultReason.INVALID_OBJECT_TYPE,
                        f"a {enum_label(ObjectType, obj.object_type)} cannot be a derivation "
                        "base")
    # Derived material is a function of the base's: what may not leave may not be derived.
    policy.check_material_export(ctx.principal, obj.level)
    policy.check_key_use(ctx.principal, obj.level, obj.row.service)
    if obj.value(Tag.EXTRACTABLE) is False:
        raise KmipError(ResultReason.NOT_EXTRACTABLE,
                        f"the base object {identifier_label(uid)} is not extractable")
    if obj.value(Tag.SENSITIVE) is True:
        raise KmipError(ResultReason.SENSITIVE,
                        f"the base object {identifier_label(uid)} is sensitive")
    require_usable(ctx, obj, key_use.DERIVE, named=True)
    return obj
