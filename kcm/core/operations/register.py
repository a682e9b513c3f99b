"""Register (KMIP 1.4 §4.3, 2.1 §6.1.42): store an object the client brings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from kcm.core import managed
from kcm.core.attribute_rules import check_client_attributes, check_offered
from kcm.core.certificate_attributes import x509_attributes
from kcm.core.context import OperationContext, PrivateKeyResults, private_key_inputs
from kcm.core.operations._objects_common import OBJECT_TYPE_OF_TAG, single_value
from kcm.core.operations.create import server_attributes
from kcm.crypto.rsa_keys import check_registered_key, private_key_der, validate_private
from kcm.kernel.quantum_safe import check_quantum_safe
from kcm.kernel.templates import refuse_template_names
from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import (
    CryptographicAlgorithm,
    KeyFormatType,
    ObjectType,
    ResultReason,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.fields import Struct
from kcm.kmip.labels import enum_label, tag_label
from kcm.kmip.objects import (
    KeyBlock,
    SecretData,
    SymmetricKey,
)
from kcm.kmip.payloads import (
    RegisterRequest,
    RegisterResponse,
)
from kcm.kmip.tags import Tag
from kcm.kmip.versions import Version
from kcm.ttlv import Item, ItemType


def register(ctx: OperationContext, request: RegisterRequest) -> RegisterResponse:
    """Store the client's object under a new identifier (Pre-Active, or Active when its
    Activation Date has passed) and set the ID Placeholder to it."""
    refuse_template_names(request.template_names)
    managed_object = request.object
    object_tag = managed_object.tag if isinstance(managed_object, Item) else managed_object.TAG
    object_type = OBJECT_TYPE_OF_TAG.get(object_tag)
    if object_type is None or int(request.object_type) != object_type:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"Object Type {enum_label(ObjectType, request.object_type)} does not "
                        f"match the object sent ({enum_label(ObjectType, object_type)})")
    derived = _derived_attributes(managed_object, object_type)
    client = _without_derived(list(request.attributes or []), derived)
    # An object made elsewhere may bring its Original Creation Date (1.4 §3.43: set by
    # the client on Register, else by the server); the rule table speaks for Create.
    original = [a for a in client if a.tag == Tag.ORIGINAL_CREATION_DATE]
    client = [a for a in client if a.tag != Tag.ORIGINAL_CREATION_DATE]
    if len(original) > 1:
        raise KmipError(ResultReason.INVALID_FIELD, "Original Creation Date given twice")
    # Likewise the Random Number Generator that made it (1.4 §3.44; TC-RNG-ATTR-1-14): the
    # server sets it only for what it generates.
    generator = [a for a in client if a.tag == Tag.RANDOM_NUMBER_GENERATOR]
    client = [a for a in client if a.tag != Tag.RANDOM_NUMBER_GENERATOR]
    _check_generator(generator, ctx.version)
    check_client_attributes(client, ctx.version)
    algorithm = _agreed(client, derived, Tag.CRYPTOGRAPHIC_ALGORITHM)
    length = _agreed(client, derived, Tag.CRYPTOGRAPHIC_LENGTH)
    if object_type == ObjectType.SYMMETRIC_KEY:
        _check_symmetric_key(managed_object, algorithm, length)
    elif object_type in (ObjectType.PRIVATE_KEY, ObjectType.PUBLIC_KEY):
        rsa_bits = _check_asymmetric_key(
            managed_object, object_type, algorithm, length, lambda key: ctx.private_key_operation(
                _key_check_inputs(key), lambda: _key_check(key)))
        if rsa_bits is not None and algorithm is None:
            # Said by the Key Value (KMIP 1.4 §2.1.3): an RSA key of that many bits.
            algorithm, length = int(CryptographicAlgorithm.RSA), rsa_bits
    else:
        _check_key_block(managed_object)
    if algorithm is not None:
        check_quantum_safe(single_value(client, Tag.QUANTUM_SAFE), int(algorithm), length)
    uid = ctx.keyring.new_uid()
    key_bytes, key_format = _plain_key(managed_object)
    stored = server_attributes(ctx, uid, object_type, client, algorithm=algorithm,
                               length=length, key_bytes=key_bytes, key_format=key_format)
    stored = _client_fresh_wins(stored, client)
    stored += [a for a in derived
               if a.tag not in (Tag.CRYPTOGRAPHIC_ALGORITHM, Tag.CRYPTOGRAPHIC_LENGTH)]
    if original:
        stored = [original[0] if a.tag == Tag.ORIGINAL_CREATION_DATE else a for a in stored]
    stored += generator
    managed.insert(ctx, uid=uid, object_type=object_type, attributes=stored,
                   managed_object=managed_object)
    ctx.id_placeholder.set(uid)
    return RegisterResponse(unique_identifier=uid)


def _check_generator(given: list[Attribute], version: Version) -> None:
    """A Register's Random Number Generator: an attribute of the request's version (1.3
    and later), once, a structure with its RNG Algorithm."""
    for attribute in given:
        check_offered(attribute, version)
    if len(given) > 1:
        raise KmipError(ResultReason.INVALID_FIELD, "Random Number Generator given twice")
    if given and (given[0].value is None or given[0].value.type is not ItemType.STRUCTURE
                  or given[0].value.find(Tag.RNG_ALGORITHM) is None):
        raise KmipError(ResultReason.INVALID_FIELD,
                        "Random Number Generator must be a structure with an RNG Algorithm")


def _plain_key(managed_object: Struct | Item) -> tuple[bytes | None, int]:
    """The plain key bytes to digest and their Key Format Type (None when wrapped/absent)."""
    if isinstance(managed_object, SymmetricKey | SecretData):
        block = managed_object.key_block
        return block.key_bytes, int(block.key_format_type)
    if isinstance(managed_object, Item):
        block = managed_object.find(Tag.KEY_BLOCK)
        if block is None or block.type is not ItemType.STRUCTURE:
            return None, KeyFormatType.RAW
        fmt = block.find(Tag.KEY_FORMAT_TYPE)
        value = block.find(Tag.KEY_VALUE)
        material = (value.find(Tag.KEY_MATERIAL)
                    if value is not None and value.type is ItemType.STRUCTURE else None)
        if (material is None or material.type is not ItemType.BYTE_STRING
                or block.find(Tag.KEY_WRAPPING_DATA) is not None):
            return None, KeyFormatType.RAW
        return material.value, fmt.value if fmt is not None else KeyFormatType.RAW
    return None, KeyFormatType.RAW


def _client_fresh_wins(stored: list[Attribute], client: list[Attribute]) -> list[Attribute]:
    """One Fresh attribute: the client's when it gave one, else the server's default."""
    if not any(a.tag == Tag.FRESH for a in client):
        return stored
    seen = False
    kept = []
    for attribute in stored:
        if attribute.tag == Tag.FRESH:
            if seen:
                continue
            seen = True
        kept.append(attribute)
    return kept


def _derived_attributes(managed_object: Struct | Item, object_type: int) -> list[Attribute]:
    """The attributes the object itself determines."""
    derived: list[Attribute] = []
    algorithm = length = None
    if isinstance(managed_object, SymmetricKey | SecretData):
        block = managed_object.key_block
        algorithm, length = block.cryptographic_algorithm, block.cryptographic_length
        if block.key_value is None:
            # The key lives elsewhere (Key Value Location): say so (1.4 §3.42).
            derived.append(Attribute.of(Tag.KEY_VALUE_PRESENT, False, ItemType.BOOLEAN))
        key = block.key_bytes
        if (length is None and key is not None and object_type == ObjectType.SYMMETRIC_KEY):
            length = (168 if algorithm == CryptographicAlgorithm.DES3 and len(key) == 24
                      else len(key) * 8)
    elif isinstance(managed_object, Item):
        block_item = managed_object.find(Tag.KEY_BLOCK)
        if block_item is not None and block_item.type is ItemType.STRUCTURE:
            if block_item.find(Tag.KEY_VALUE) is None:
                derived.append(Attribute.of(Tag.KEY_VALUE_PRESENT, False, ItemType.BOOLEAN))
            algorithm = _field(block_item, Tag.CRYPTOGRAPHIC_ALGORITHM, ItemType.ENUMERATION)
            length = _field(block_item, Tag.CRYPTOGRAPHIC_LENGTH, ItemType.INTEGER)
        if object_type == ObjectType.CERTIFICATE:
            derived += _certificate_attributes(managed_object)
    if algorithm is not None:
        derived.append(Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, int(algorithm)))
    if length is not None:
        derived.append(Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, int(length)))
    return derived


def _field(structure: Item, tag: int, item_type: ItemType) -> Any:
    """The value of ``structure``'s field ``tag`` (None if absent), refused (Invalid Field)
    when it is not of ``item_type``: the object is stored as sent, but what is read from it
    is read as its type."""
    found = structure.find(tag)
    if found is None:
        return None
    if found.type is not item_type:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"{tag_label(tag)} in {tag_label(structure.tag)} must be of type "
                        f"{item_type.name.replace('_', ' ').title()}")
    return found.value


def _certificate_attributes(certificate: Item) -> list[Attribute]:
    """Certificate Type and Length, and for X.509 what the certificate says of itself
    (:mod:`kcm.core.certificate_attributes`)."""
    certificate_type = _field(certificate, Tag.CERTIFICATE_TYPE, ItemType.ENUMERATION)
    value = certificate.find(Tag.CERTIFICATE_VALUE)
    attributes = []
    if certificate_type is not None:
        attributes.append(Attribute.of(Tag.CERTIFICATE_TYPE, certificate_type,
                                       ItemType.ENUMERATION))
    if value is None or not isinstance(value.value, bytes):
        return attributes
    der = value.value
    attributes.append(Attribute.of(Tag.CERTIFICATE_LENGTH, len(der), ItemType.INTEGER))
    try:
        return attributes + x509_attributes(x509.load_der_x509_certificate(der))
    except ValueError:
        return attributes  # not X.509 DER we can read: stored, but not described


def _without_derived(client: list[Attribute], derived: list[Attribute]) -> list[Attribute]:
    """The client's attributes minus server-derived ones it repeated with the same value.

    Algorithm and Length stay (a client may state them); a different value of a derived
    attribute is refused.
    """
    by_tag: dict[int, list[Item | None]] = {}
    for attribute in derived:
        by_tag.setdefault(attribute.tag, []).append(attribute.value)
    kept = []
    for attribute in client:
        values = by_tag.get(attribute.tag)
        if values is None or attribute.tag in (Tag.CRYPTOGRAPHIC_ALGORITHM,
                                               Tag.CRYPTOGRAPHIC_LENGTH):
            kept.append(attribute)
        elif attribute.value not in values:
            raise KmipError(ResultReason.INVALID_FIELD,
                            f"{tag_label(attribute.tag)} does not match the object registered")
    return kept


def _agreed(client: list[Attribute], derived: list[Attribute], tag: int) -> int | None:
    """The value of ``tag`` from the key block, or the client's; refused if they differ."""
    ours = [a.typed for a in derived if a.tag == tag]
    theirs = [a.typed for a in client if a.tag == tag]
    if ours and theirs and int(ours[0]) != int(theirs[0]):
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"the {tag_label(tag)} attribute ({theirs[0]}) contradicts the key "
                        f"block ({ours[0]})")
    value = ours[0] if ours else theirs[0] if theirs else None
    return None if value is None else int(value)


def _check_symmetric_key(key: Struct | Item, algorithm: int | None, length: int | None) -> None:
    """Refuse a symmetric key whose Key Value is not in the form its block says, whose
    bytes do not have the stated length, that is empty, or a DES3 key that is not two
    or three DES keys (16 or 24 bytes: 8 are single DES).

    Other sizes than an algorithm's own are accepted: clients register longer "AES" keys
    as key-derivation bases (PyKMIP's NIST 800-108 tests use 512 bits); using such a key
    for AES itself fails where it is used.
    """
    if not isinstance(key, SymmetricKey):
        return
    block = key.key_block
    if block.key_wrapping_data is None and isinstance(block.key_value, bytes):
        raise KmipError(ResultReason.INVALID_FIELD,
                        "a Key Value is a Byte String only when the key is wrapped (with Key "
                        "Wrapping Data)")
    material = block.key_bytes
    if material is None:
        return  # wrapped, or elsewhere: stored as is
    transparent = not isinstance(getattr(block.key_value, "key_material", None), bytes)
    if transparent != (block.key_format_type == KeyFormatType.TRANSPARENT_SYMMETRIC_KEY):
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"Key Format Type {enum_label(KeyFormatType, block.key_format_type)} "
                        f"does not match the Key Material's form")
    bits = len(material) * 8
    if not material:
        raise KmipError(ResultReason.INVALID_FIELD, "the key material is empty")
    if algorithm == CryptographicAlgorithm.DES3 and len(material) not in (16, 24):
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"a DES3 key is 16 or 24 bytes, not {len(material)}")
    # DES and DES3 keys may state their length without the parity bits (a byte's eighth):
    # 56, 112 and 168 for 8, 16 and 24 bytes, as payment HSMs export them.
    des = algorithm in (CryptographicAlgorithm.DES, CryptographicAlgorithm.DES3)
    stated = {bits, bits * 7 // 8} if des else {bits}
    if length is not None and length not in stated:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"Cryptographic Length {length} does not match the {bits}-bit key")


def _check_asymmetric_key(key: Struct | Item, object_type: int, algorithm: int | None,
                          length: int | None,
                          validate: Callable[[rsa.RSAPrivateKey], None]) -> int | None:
    """Check a Public or Private Key's material once, here
    (:func:`kcm.crypto.rsa_keys.check_registered_key`): an RSA key of a size, exponent and
    stated length the server accepts, and valid (``validate``: OpenSSL's validation of a
    private key); every later use trusts what was stored. The modulus size of an RSA key
    read (None: not one)."""
    if not isinstance(key, Item):
        return None
    block = key.find(Tag.KEY_BLOCK)
    if block is None or block.type is not ItemType.STRUCTURE:
        return None
    decoded = KeyBlock.from_item(block)  # (a block no Get could read back is refused)
    return check_registered_key(object_type, decoded, algorithm=algorithm, length=length,
                                validate=validate)


def prepare_register(ctx: OperationContext, request: RegisterRequest,
                     results: PrivateKeyResults) -> None:
    """For a tenant's worker, before the request's group commit: OpenSSL's validation of
    the RSA private key ``request`` registers (a fifth of a second for RSA-4096), kept in
    ``results`` for :func:`register` on the writer, which makes every check again and
    validates nothing (a batch of such Registers held every tenant's writes for the
    request's whole deadline). Raises what Register would refuse before validating; stores
    nothing."""
    managed_object = request.object
    object_tag = managed_object.tag if isinstance(managed_object, Item) else managed_object.TAG
    if OBJECT_TYPE_OF_TAG.get(object_tag) != ObjectType.PRIVATE_KEY:
        return
    _check_asymmetric_key(managed_object, ObjectType.PRIVATE_KEY, None, None,
                          lambda key: results.compute(_key_check_inputs(key),
                                                      lambda: _key_check(key)))


def _key_check_inputs(key: rsa.RSAPrivateKey) -> tuple[object, ...]:
    return private_key_inputs("rsa-key-check", "", None, private_key_der(key))


def _key_check(key: rsa.RSAPrivateKey) -> bytes:
    validate_private(key)  # (Cryptographic Failure: kept, and raised again on the writer)
    return b"valid"


def _check_key_block(key: Struct | Item) -> None:
    """Refuse an object of a type not modelled here (a PGP Key, a Split Key) whose Key
    Block is not one: it is stored as sent, and every Get reads its block."""
    if not isinstance(key, Item):
        return
    block = key.find(Tag.KEY_BLOCK)
    if block is not None and block.type is ItemType.STRUCTURE:
        KeyBlock.from_item(block)


# KMIP 1.4 §4.4 Table 169 / 2.1 §6.1.41 "Re-key Attribute Requirements": not copied to
# the replacement key (set afresh, or not at all).
