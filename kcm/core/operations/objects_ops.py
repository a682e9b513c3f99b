"""Register, Re-key, Get and Locate (KMIP 1.4 §4.3, §4.4, §4.11, §4.9; 2.1 §6.1.39,
§6.1.41, §6.1.18, §6.1.27).

* Register stores any managed object: Symmetric Key, Secret Data and Opaque Object as
  models, every other kind (certificates, public, private and split keys, ...) as the
  raw structure the client sent. A key block that arrives wrapped (Key Wrapping Data
  present) is stored as it is. Attributes the object itself determines (the key
  block's algorithm and length, a certificate's type, length and names) are set by
  the server; a client may repeat them only with the same value.
* Re-key replaces a symmetric key with a new one of the same algorithm and length;
  the replacement inherits the existing key's attributes as the spec's Re-key
  attribute table says, takes over its Names, and the two are linked (Replacement /
  Replaced Object Link). Replacing a tenant key (L2) or a service key (L3) makes the
  next version of that key, and the old version is deactivated when the new one
  becomes active, so a tenant or service has one active version at a time.
* Get returns the material as stored or in another format of the same key, unwrapped
  (Key Wrap Type Not Wrapped) or wrapped with another key of the tenant (AES key wrap,
  RFC 3394 / NIST SP 800-38F). L2 and L3 material never leaves through Get.
* Locate finds the caller's tenant's objects matching every attribute given.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from kcm.core import events, l4_requests, lifecycle, managed, policy
from kcm.core.attribute_blob import decode_attributes
from kcm.core.attribute_rules import check_client_attributes, rule_for
from kcm.core.batch import operation
from kcm.core.context import OperationContext
from kcm.core.operations.asymmetric_ops import rsa_key_block_in_format
from kcm.core.operations.create import generate_key, key_spec, server_attributes
from kcm.core.store import repository
from kcm.core.store.schema import LEVEL_SERVICE_KEY, LEVEL_TENANT_KEY, WRAPPED_BY_L1
from kcm.crypto.key_wrap import aes_unwrap as _aes_unwrap
from kcm.crypto.key_wrap import aes_wrap as _aes_wrap
from kcm.kmip import registry
from kcm.kmip.attributes import VENDOR_TAG, Attribute, CryptographicParameters, Link, Name
from kcm.kmip.enums import (
    BlockCipherMode,
    CryptographicAlgorithm,
    CryptographicUsageMask,
    EncodingOption,
    KeyFormatType,
    KeyWrapType,
    LinkType,
    ObjectGroupMember,
    ObjectType,
    Operation,
    ResultReason,
    State,
    StorageStatusMask,
    WrappingMethod,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.fields import Struct
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
    LocateRequest,
    LocateResponse,
    RegisterRequest,
    RegisterResponse,
    ReKeyRequest,
    ReKeyResponse,
)
from kcm.kmip.tags import Tag
from kcm.l4.identifiers import new_l3_uid
from kcm.ttlv import Item, ItemType, decode, encode

Version = tuple[int, int]

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

_AES_KEY_BITS = frozenset({128, 192, 256})
_DESTROYED = (State.DESTROYED, State.DESTROYED_COMPROMISED)
_WRAP_MODES = (BlockCipherMode.NISTKEYWRAP, BlockCipherMode.AESKEYWRAPPADDING)

# Certificate name fields as KMIP 2.x attributes (2.1 §4.9 "Certificate Attributes").
_SUBJECT_FIELDS: tuple[tuple[Any, int, int], ...] = (
    (NameOID.COMMON_NAME, Tag.CERTIFICATE_SUBJECT_CN, Tag.CERTIFICATE_ISSUER_CN),
    (NameOID.ORGANIZATION_NAME, Tag.CERTIFICATE_SUBJECT_O, Tag.CERTIFICATE_ISSUER_O),
    (NameOID.ORGANIZATIONAL_UNIT_NAME, Tag.CERTIFICATE_SUBJECT_OU, Tag.CERTIFICATE_ISSUER_OU),
    (NameOID.EMAIL_ADDRESS, Tag.CERTIFICATE_SUBJECT_EMAIL, Tag.CERTIFICATE_ISSUER_EMAIL),
    (NameOID.COUNTRY_NAME, Tag.CERTIFICATE_SUBJECT_C, Tag.CERTIFICATE_ISSUER_C),
    (NameOID.STATE_OR_PROVINCE_NAME, Tag.CERTIFICATE_SUBJECT_ST, Tag.CERTIFICATE_ISSUER_ST),
    (NameOID.LOCALITY_NAME, Tag.CERTIFICATE_SUBJECT_L, Tag.CERTIFICATE_ISSUER_L),
    (NameOID.USER_ID, Tag.CERTIFICATE_SUBJECT_UID, Tag.CERTIFICATE_ISSUER_UID),
    (NameOID.SERIAL_NUMBER, Tag.CERTIFICATE_SUBJECT_SERIAL_NUMBER,
     Tag.CERTIFICATE_ISSUER_SERIAL_NUMBER),
    (NameOID.TITLE, Tag.CERTIFICATE_SUBJECT_TITLE, Tag.CERTIFICATE_ISSUER_TITLE),
    (NameOID.DOMAIN_COMPONENT, Tag.CERTIFICATE_SUBJECT_DC, Tag.CERTIFICATE_ISSUER_DC),
    (NameOID.DN_QUALIFIER, Tag.CERTIFICATE_SUBJECT_DN_QUALIFIER,
     Tag.CERTIFICATE_ISSUER_DN_QUALIFIER),
)


# =====================================================================================
# Register
# =====================================================================================

@operation(Operation.REGISTER)
def register(ctx: OperationContext, request: RegisterRequest) -> RegisterResponse:
    """Store the client's object under a new identifier (Pre-Active, or Active when its
    Activation Date has passed) and set the ID Placeholder to it."""
    if request.template_names:
        raise KmipError(ResultReason.ITEM_NOT_FOUND, "templates are not supported")
    managed_object = request.object
    object_tag = managed_object.tag if isinstance(managed_object, Item) else managed_object.TAG
    object_type = OBJECT_TYPE_OF_TAG.get(object_tag)
    if object_type is None or int(request.object_type) != object_type:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"Object Type {_enum_label(ObjectType, request.object_type)} does not "
                        f"match the object sent ({_enum_label(ObjectType, object_type)})")
    derived = _derived_attributes(managed_object, object_type)
    client = _without_derived(list(request.attributes or []), derived)
    # An object made elsewhere may bring its Original Creation Date (1.4 §3.43: set by
    # the client on Register, else by the server); the rule table speaks for Create.
    original = [a for a in client if a.tag == Tag.ORIGINAL_CREATION_DATE]
    client = [a for a in client if a.tag != Tag.ORIGINAL_CREATION_DATE]
    if len(original) > 1:
        raise KmipError(ResultReason.INVALID_FIELD, "Original Creation Date given twice")
    check_client_attributes(client, ctx.version)
    algorithm = _agreed(client, derived, Tag.CRYPTOGRAPHIC_ALGORITHM)
    length = _agreed(client, derived, Tag.CRYPTOGRAPHIC_LENGTH)
    if object_type == ObjectType.SYMMETRIC_KEY:
        _check_symmetric_key(managed_object, algorithm, length)
    uid = ctx.keyring.new_uid()
    key_bytes, key_format = _plain_key(managed_object)
    stored = server_attributes(ctx, uid, object_type, client, algorithm=algorithm,
                               length=length, key_bytes=key_bytes, key_format=key_format)
    stored = _client_fresh_wins(stored, client)
    stored += [a for a in derived
               if a.tag not in (Tag.CRYPTOGRAPHIC_ALGORITHM, Tag.CRYPTOGRAPHIC_LENGTH)]
    if original:
        stored = [original[0] if a.tag == Tag.ORIGINAL_CREATION_DATE else a for a in stored]
    managed.insert(ctx, uid=uid, object_type=object_type, attributes=stored,
                   managed_object=managed_object)
    ctx.id_placeholder.set(uid)
    return RegisterResponse(unique_identifier=uid)


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
            found = block_item.find(Tag.CRYPTOGRAPHIC_ALGORITHM)
            algorithm = found.value if found is not None else None
            found = block_item.find(Tag.CRYPTOGRAPHIC_LENGTH)
            length = found.value if found is not None else None
        if object_type == ObjectType.CERTIFICATE:
            derived += _certificate_attributes(managed_object)
    if algorithm is not None:
        derived.append(Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, int(algorithm)))
    if length is not None:
        derived.append(Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, int(length)))
    return derived


def _certificate_attributes(certificate: Item) -> list[Attribute]:
    """Certificate Type and Length, and for X.509 the subject and issuer name fields."""
    found = certificate.find(Tag.CERTIFICATE_TYPE)
    value = certificate.find(Tag.CERTIFICATE_VALUE)
    attributes = []
    if found is not None:
        attributes.append(Attribute.of(Tag.CERTIFICATE_TYPE, found.value, ItemType.ENUMERATION))
    if value is None or not isinstance(value.value, bytes):
        return attributes
    der = value.value
    attributes.append(Attribute.of(Tag.CERTIFICATE_LENGTH, len(der), ItemType.INTEGER))
    try:
        parsed = x509.load_der_x509_certificate(der)
        subject, issuer = parsed.subject, parsed.issuer
    except ValueError:
        return attributes  # not X.509 DER we can read: stored, but not described
    attributes.append(Attribute.of(Tag.X_509_CERTIFICATE_SUBJECT, subject.public_bytes(),
                                   ItemType.BYTE_STRING))
    attributes.append(Attribute.of(Tag.X_509_CERTIFICATE_ISSUER, issuer.public_bytes(),
                                   ItemType.BYTE_STRING))
    for oid, subject_tag, issuer_tag in _SUBJECT_FIELDS:
        for name, tag in ((subject, subject_tag), (issuer, issuer_tag)):
            for entry in name.get_attributes_for_oid(oid):
                if isinstance(entry.value, str):
                    attributes.append(Attribute.of(tag, entry.value, ItemType.TEXT_STRING))
    return attributes


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
                            f"{_tag_label(attribute.tag)} does not match the object registered")
    return kept


def _agreed(client: list[Attribute], derived: list[Attribute], tag: int) -> int | None:
    """The value of ``tag`` from the key block, or the client's; refused if they differ."""
    ours = [a.typed for a in derived if a.tag == tag]
    theirs = [a.typed for a in client if a.tag == tag]
    if ours and theirs and int(ours[0]) != int(theirs[0]):
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"the {_tag_label(tag)} attribute ({theirs[0]}) contradicts the key "
                        f"block ({ours[0]})")
    value = ours[0] if ours else theirs[0] if theirs else None
    return None if value is None else int(value)


def _check_symmetric_key(key: Struct | Item, algorithm: int | None, length: int | None) -> None:
    """Refuse an AES key whose bytes do not have the stated length.

    Other sizes than AES's own are accepted: clients register longer "AES" keys as
    key-derivation bases (PyKMIP's NIST 800-108 tests use 512 bits); using such a key
    for AES itself fails where it is used.
    """
    if not isinstance(key, SymmetricKey) or algorithm != CryptographicAlgorithm.AES:
        return
    material = key.key_block.key_bytes
    if material is None:
        return  # wrapped: stored as is
    bits = len(material) * 8
    if length is not None and length != bits:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"Cryptographic Length {length} does not match the {bits}-bit key")


# =====================================================================================
# Re-key
# =====================================================================================

# KMIP 1.4 §4.4 Table 169 / 2.1 §6.1.41 "Re-key Attribute Requirements": not copied to
# the replacement key (set afresh, or not at all).
_NOT_COPIED = frozenset({
    Tag.UNIQUE_IDENTIFIER, Tag.OBJECT_TYPE, Tag.INITIAL_DATE, Tag.ALWAYS_SENSITIVE,
    Tag.NEVER_EXTRACTABLE, Tag.FRESH, Tag.DESTROY_DATE, Tag.COMPROMISE_OCCURRENCE_DATE,
    Tag.COMPROMISE_DATE, Tag.REVOCATION_REASON, Tag.STATE, Tag.DIGEST, Tag.LINK,
    Tag.LAST_CHANGE_DATE, Tag.RANDOM_NUMBER_GENERATOR, Tag.ORIGINAL_CREATION_DATE,
    Tag.ARCHIVE_DATE, Tag.SHORT_UNIQUE_IDENTIFIER, Tag.KEY_VALUE_PRESENT,
    Tag.ACTIVATION_DATE, Tag.PROCESS_START_DATE, Tag.PROTECT_STOP_DATE,
    Tag.DEACTIVATION_DATE,
})
_SHIFTED_DATES = (Tag.PROCESS_START_DATE, Tag.PROTECT_STOP_DATE, Tag.DEACTIVATION_DATE)


@operation(Operation.RE_KEY)
def re_key(ctx: OperationContext, request: ReKeyRequest) -> ReKeyResponse:
    """Make the replacement of a symmetric key; the ID Placeholder becomes its identifier."""
    uid = ctx.id_placeholder.resolve(request.unique_identifier)
    old = managed.load(ctx, uid)
    policy.check_lifecycle_change(ctx.principal, old.level)
    if old.object_type != ObjectType.SYMMETRIC_KEY:
        raise KmipError(_invalid_object_type(ctx.version),
                        "Re-key replaces symmetric keys only")
    if old.state in _DESTROYED:
        raise lifecycle.wrong_state(ctx.version, "cannot re-key a destroyed key")
    if request.template_names:
        raise KmipError(ResultReason.ITEM_NOT_FOUND, "templates are not supported")
    if request.offset is not None and request.offset < 0:
        raise KmipError(ResultReason.INVALID_FIELD, "Offset must not be negative")
    client = list(request.attributes or [])
    check_client_attributes(client, ctx.version)

    new_uid = (new_l3_uid(ctx.keyring.random_bytes) if old.level == LEVEL_SERVICE_KEY
               else ctx.keyring.new_uid())
    inherited = _override(_inherited_attributes(ctx, old, request.offset), client)
    algorithm, length = key_spec(inherited)
    if old.level is not None and (algorithm, length) != (
            old.value(Tag.CRYPTOGRAPHIC_ALGORITHM), old.value(Tag.CRYPTOGRAPHIC_LENGTH)):
        raise KmipError(ResultReason.INVALID_FIELD,
                        "a tenant or service key keeps its algorithm and length")
    state = lifecycle.state_at(State.PRE_ACTIVE, lifecycle.LifecycleDates(
        _value(inherited, Tag.ACTIVATION_DATE), _value(inherited, Tag.DEACTIVATION_DATE)),
        ctx.now)
    key = generate_key(ctx, algorithm, length)
    # The hierarchy keys carry no Digest, as when they are provisioned.
    attributes = server_attributes(
        ctx, new_uid, ObjectType.SYMMETRIC_KEY, inherited, algorithm=algorithm, length=length,
        state=state, key_bytes=key if old.level is None else None, generated=True)
    _insert_replacement(ctx, old, new_uid, attributes, key, algorithm, length)

    old.set(Tag.LINK, Link(link_type=LinkType.REPLACEMENT_OBJECT_LINK,
                           linked_object_identifier=new_uid))
    old.attributes = [a for a in old.attributes if a.tag != Tag.NAME]
    if old.level is not None:
        _retire_at(ctx, old, _value(attributes, Tag.ACTIVATION_DATE))
    managed.save(ctx, old)
    ctx.touched(new_uid)
    ctx.id_placeholder.set(new_uid)
    return ReKeyResponse(unique_identifier=new_uid)


def _inherited_attributes(ctx: OperationContext, old: managed.StoredObject,
                          offset: int | None) -> list[Attribute]:
    """The existing key's attributes as the replacement inherits them (1.4 Table 169),
    before the server sets its own (identifier, dates, state, digest, ...)."""
    attributes = []
    for attribute in old.attributes:
        if attribute.tag in _NOT_COPIED:
            continue
        if attribute.tag == Tag.USAGE_LIMITS and attribute.value is not None:
            attribute = Attribute(Tag.USAGE_LIMITS, _fresh_usage_limits(attribute.value))
        attributes.append(attribute)
    activation = old.value(Tag.ACTIVATION_DATE)
    dates: dict[int, int] = {}
    if offset is None:
        # No Offset: the dates are copied as they are (1.4 §4.4).
        for tag in (Tag.ACTIVATION_DATE, *_SHIFTED_DATES):
            if old.value(tag) is not None:
                dates[tag] = old.value(tag)
    else:
        # 1.4 §4.4 Table 168: AT2 = IT2 + Offset; the other dates keep their distance
        # to the activation date.
        dates[Tag.ACTIVATION_DATE] = ctx.now + offset
        for tag in _SHIFTED_DATES:
            if old.value(tag) is not None:
                shift = 0 if activation is None else dates[Tag.ACTIVATION_DATE] - activation
                dates[tag] = old.value(tag) + shift
    attributes += [managed.date_attribute(tag, when) for tag, when in dates.items()]
    attributes.append(Attribute.of(Tag.LINK, Link(link_type=LinkType.REPLACED_OBJECT_LINK,
                                                  linked_object_identifier=old.uid)))
    return attributes


def _fresh_usage_limits(limits: Item) -> Item:
    """Usage Limits with the Count reset to the Total (1.4 Table 169)."""
    total = limits.find(Tag.USAGE_LIMITS_TOTAL)
    if total is None or limits.type is not ItemType.STRUCTURE:
        return limits
    children = [Item(Tag.USAGE_LIMITS_COUNT, ItemType.LONG_INTEGER, total.value)
                if child.tag == Tag.USAGE_LIMITS_COUNT else child for child in limits]
    return Item(limits.tag, limits.type, children)


def _override(attributes: list[Attribute], client: list[Attribute]) -> list[Attribute]:
    """The inherited attributes with the client's added: a single-valued attribute the
    client gives replaces the inherited one; values of a multi-valued one (Name, Object
    Group, ...) join the inherited values."""
    replaced = {_identity(a) for a in client if not rule_for(a).multi}
    return [a for a in attributes if _identity(a) not in replaced] + client


def _insert_replacement(ctx: OperationContext, old: managed.StoredObject, uid: str,
                        attributes: list[Attribute], key: bytes, algorithm: int,
                        length: int) -> None:
    block = KeyBlock(key_format_type=KeyFormatType.RAW, key_value=KeyValue(key_material=key),
                     cryptographic_algorithm=algorithm, cryptographic_length=length)
    tenant = old.tenant
    if old.level == LEVEL_TENANT_KEY:
        # An L2 is wrapped by L1 and holds the bare key (see kcm.core.hierarchy).
        new = managed.insert(ctx, uid=uid, object_type=ObjectType.SYMMETRIC_KEY,
                             attributes=attributes, managed_object=None, tenant=tenant,
                             level=LEVEL_TENANT_KEY)
        repository.update_object(ctx.session, new.row, wrapped_by=WRAPPED_BY_L1,
                                 material=ctx.keyring.wrap_tenant_key(tenant, uid, key))
        return
    if old.level == LEVEL_SERVICE_KEY:
        service = old.row.service
        versions = repository.find_l3(ctx.session, tenant, service)
        version = max((v.key_version or 0) for v in versions) + 1
        managed.insert(ctx, uid=uid, object_type=ObjectType.SYMMETRIC_KEY,
                       attributes=attributes, managed_object=SymmetricKey(key_block=block),
                       tenant=tenant, level=LEVEL_SERVICE_KEY, service=service,
                       key_version=version)
        ctx.audit_detail["service_key_version"] = version
        events.l3_rotated(ctx, tenant, uid, service, version)
        return
    managed.insert(ctx, uid=uid, object_type=ObjectType.SYMMETRIC_KEY, attributes=attributes,
                   managed_object=SymmetricKey(key_block=block), tenant=tenant)


def _retire_at(ctx: OperationContext, old: managed.StoredObject, when: int | None) -> None:
    """A replaced tenant or service key is deactivated when its successor activates.

    The spec leaves the existing key's state alone; the hierarchy keeps one active version
    per tenant and service, so the old version becomes decrypt-only from then on. A
    successor without an Activation Date leaves the old version as it is.
    """
    if when is None:
        return
    current = old.value(Tag.DEACTIVATION_DATE)
    if current is not None and current <= when:
        return
    old.set(Tag.DEACTIVATION_DATE, when, ItemType.DATE_TIME)
    moved = lifecycle.state_at(old.state, lifecycle.LifecycleDates(
        old.value(Tag.ACTIVATION_DATE), when), ctx.now)
    old.set(Tag.STATE, int(moved))


# =====================================================================================
# Get
# =====================================================================================

@operation(Operation.GET)
def get(ctx: OperationContext, request: GetRequest) -> GetResponse:
    """The object's material: as stored, converted, unwrapped or wrapped on request."""
    if (l4_answer := l4_requests.get(ctx, request)) is not None:
        return l4_answer
    uid = ctx.id_placeholder.resolve(request.unique_identifier)
    obj = managed.load(ctx, uid)
    policy.check_material_export(ctx.principal, obj.level)
    if obj.state in _DESTROYED or obj.row.material is None:
        if obj.state in _DESTROYED:
            # KMIP 2.x has Object Destroyed; the KMIP 1.1 test cases (3.1.4) answer a Get
            # of a destroyed key with Item Not Found.
            reason = (ResultReason.OBJECT_DESTROYED if ctx.version >= (2, 0)
                      else ResultReason.ITEM_NOT_FOUND)
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
    if block is not None and block.key_wrapping_data is not None and wants_clear:
        block = _unwrapped(ctx, block)
    if request.key_format_type is not None:
        block = _in_format(result, block, int(request.key_format_type))
    if spec is not None:
        if block is None:
            raise KmipError(ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED,
                            "only objects with a key block can be wrapped")
        block = _wrapped(ctx, obj, block, spec)
    if block is not None:
        result = _with_key_block(result, block, ctx.version)
    if obj.value(Tag.FRESH) is True:
        # Fresh: the object has not been retrieved yet (2.1 §4.24); this Get retrieves it.
        obj.set(Tag.FRESH, False, ItemType.BOOLEAN)
        managed.save(ctx, obj, changed=False)
    return GetResponse(object_type=obj.object_type, unique_identifier=uid, object=result)


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


def _in_format(managed_object: Struct | Item, block: KeyBlock | None,
               wanted: int) -> KeyBlock | None:
    """The key block in Key Format Type ``wanted``: Raw and Transparent Symmetric Key
    convert into each other; every other format only to itself."""
    if block is None:
        if (isinstance(managed_object, Item) and managed_object.tag == Tag.CERTIFICATE
                and wanted == KeyFormatType.X_509):
            return None
        raise KmipError(ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED,
                        f"this object has no key block to return as "
                        f"{_enum_label(KeyFormatType, wanted)}")
    if block.key_format_type == wanted:
        return block
    if (isinstance(managed_object, Item) and managed_object.tag in (Tag.PUBLIC_KEY,
                                                                    Tag.PRIVATE_KEY)
            and block.cryptographic_algorithm == CryptographicAlgorithm.RSA
            and block.key_wrapping_data is None):
        return rsa_key_block_in_format(
            ObjectType.PUBLIC_KEY if managed_object.tag == Tag.PUBLIC_KEY
            else ObjectType.PRIVATE_KEY, block, wanted)
    convertible = (isinstance(managed_object, SymmetricKey)
                   and block.key_wrapping_data is None
                   and {int(block.key_format_type), wanted}
                   == {KeyFormatType.RAW, KeyFormatType.TRANSPARENT_SYMMETRIC_KEY})
    key = block.key_bytes
    if not convertible or key is None or not isinstance(block.key_value, KeyValue):
        raise KmipError(ResultReason.KEY_FORMAT_TYPE_NOT_SUPPORTED,
                        f"cannot return a {_enum_label(KeyFormatType, block.key_format_type)} "
                        f"key as {_enum_label(KeyFormatType, wanted)}")
    material: bytes | TransparentSymmetricKey = (
        key if wanted == KeyFormatType.RAW else TransparentSymmetricKey(key=key))
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
                    _WRAP_MODES:
                mode = stored.block_cipher_mode
                break
    mode = BlockCipherMode.NISTKEYWRAP if mode is None else mode
    if mode not in _WRAP_MODES:
        raise KmipError(ResultReason.FEATURE_NOT_SUPPORTED,
                        f"keys are wrapped with NIST Key Wrap or AES Key Wrap with Padding, "
                        f"not {_enum_label(BlockCipherMode, mode)}")
    return int(mode)


def _wrapping_key(ctx: OperationContext, reference: str | Item, *,
                  protect: bool) -> tuple[managed.StoredObject, bytes]:
    """The tenant's AES key that (un)wraps another key, and its bytes."""
    uid = ctx.id_placeholder.resolve(reference)
    try:
        key = managed.load(ctx, uid, for_update=False)
    except KmipError as e:
        reason = (ResultReason.WRAPPING_OBJECT_NOT_FOUND if ctx.version >= (2, 1)
                  else ResultReason.ITEM_NOT_FOUND)
        raise KmipError(reason, f"no wrapping key {uid!r}") from e
    policy.check_key_use(ctx.principal, key.level, key.row.service)
    if key.state in _DESTROYED or key.row.material is None:
        reason = (ResultReason.WRAPPING_OBJECT_DESTROYED if ctx.version >= (2, 1)
                  else ResultReason.ITEM_NOT_FOUND)
        raise KmipError(reason, f"the wrapping key {uid!r} was destroyed")
    if not lifecycle.usable_for(key.state, protect=protect):
        raise lifecycle.wrong_state(
            ctx.version, f"the wrapping key {uid!r} is {key.state.name}; "
            + ("only an Active key wraps" if protect else "it cannot unwrap"))
    if (key.object_type != ObjectType.SYMMETRIC_KEY
            or key.value(Tag.CRYPTOGRAPHIC_ALGORITHM) != CryptographicAlgorithm.AES):
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"the wrapping key {uid!r} is not an AES key")
    mask = key.value(Tag.CRYPTOGRAPHIC_USAGE_MASK)
    if protect and mask is not None and not mask & CryptographicUsageMask.WRAP_KEY:
        reason = (ResultReason.INCOMPATIBLE_CRYPTOGRAPHIC_USAGE_MASK if ctx.version >= (2, 0)
                  else ResultReason.PERMISSION_DENIED)
        raise KmipError(reason, f"the key {uid!r} may not wrap keys (no Wrap Key usage)")
    material = managed.material(ctx, key)
    block = _key_block(material)
    key_bytes = block.key_bytes if block is not None else None
    if key_bytes is None or len(key_bytes) * 8 not in _AES_KEY_BITS:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"the wrapping key {uid!r} has no usable AES key value")
    return key, key_bytes


def _wrapped(ctx: OperationContext, obj: managed.StoredObject, block: KeyBlock,
             spec: KeyWrappingSpecification) -> KeyBlock:
    """``block`` with its Key Value wrapped as ``spec`` asks (1.4 §2.1.5-2.1.6)."""
    if spec.wrapping_method != WrappingMethod.ENCRYPT:
        raise KmipError(ResultReason.FEATURE_NOT_SUPPORTED,
                        f"Wrapping Method {_enum_label(WrappingMethod, spec.wrapping_method)} "
                        "is not supported; use Encrypt")
    info = spec.encryption_key_information
    if info is None:
        raise KmipError(ResultReason.MISSING_DATA,
                        "Key Wrapping Specification needs Encryption Key Information")
    wrapping_key, kek = _wrapping_key(ctx, info.unique_identifier, protect=True)
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
        wrapped: KeyValue | bytes = _aes_wrap(kek, _plain_material(value), mode)
        if ctx.version < (2, 0):
            # KMIP 1.x (1.4 §2.1.5, TC-WRAP-1/3-14) keeps the Key Value structure and
            # wraps only its Key Material; 2.x makes the whole Key Value the Byte String.
            wrapped = KeyValue(key_material=wrapped, attributes=value.attributes)
    else:
        # Absent Encoding Option means TTLV Encoding: the whole Key Value structure.
        value = KeyValue(key_material=value.key_material,
                         attributes=_named_attributes(obj, spec.attribute_names, ctx.version)
                         or value.attributes)
        wrapped = _aes_wrap(kek, encode(value.to_item(ctx.version)), mode)
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
    if data.mac_signature_key_information is not None:
        raise KmipError(ResultReason.FEATURE_NOT_SUPPORTED,
                        "MAC or signature wrapped keys are not supported")
    wrapping_key, kek = _wrapping_key(ctx, info.unique_identifier, protect=False)
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
            raise KmipError(ResultReason.INVALID_FIELD, f"unknown attribute name {name!r}")
        found += obj.all(tag)
    return found


# =====================================================================================
# Locate
# =====================================================================================

#: Filters the store answers itself (the rest are checked on the loaded attributes).
_COLUMN_FILTERS = {
    Tag.OBJECT_TYPE: "object_type", Tag.CRYPTOGRAPHIC_ALGORITHM: "algorithm",
    Tag.CRYPTOGRAPHIC_LENGTH: "length", Tag.UNIQUE_IDENTIFIER: "uid",
}


@operation(Operation.LOCATE)
def locate(ctx: OperationContext, request: LocateRequest) -> LocateResponse:
    """The caller's tenant's objects matching every attribute of the request, newest first.

    Attributes compare by equality, with the spec's exceptions (1.4 §4.9, 2.1 §6.1.27):
    one value of a date attribute matches that date, two values an inclusive range; a
    Cryptographic Usage Mask matches objects whose mask has every requested bit.
    """
    tenant = policy.tenant_of(ctx.principal)
    maximum, offset = request.maximum_items, request.offset_items
    if maximum is not None and maximum < 0 or offset is not None and offset < 0:
        raise KmipError(ResultReason.INVALID_FIELD,
                        "Maximum Items and Offset Items must not be negative")
    criteria = _Criteria(list(request.attributes or []), ctx.version)
    storage = request.storage_status_mask or StorageStatusMask.ON_LINE_STORAGE
    fresh_only = request.object_group_member == ObjectGroupMember.GROUP_MEMBER_FRESH
    if not storage & (StorageStatusMask.ON_LINE_STORAGE | StorageStatusMask.DESTROYED_STORAGE):
        found: list[str] = []  # only archived objects were asked for; nothing is archived
    else:
        found = []
        candidates = repository.locate(ctx.session, tenant, levels=policy.locate_levels(
            ctx.principal), **criteria.store_filters())
        # Newest first, as the OASIS test cases (TC-OFFSET-*) page through the results.
        for uid in reversed(candidates):
            row = repository.get_object(ctx.session, tenant, uid)
            if row is None:
                continue
            obj = managed.StoredObject(row, decode_attributes(row.attributes))
            state = lifecycle.state_at(obj.state, lifecycle.LifecycleDates(
                obj.value(Tag.ACTIVATION_DATE), obj.value(Tag.DEACTIVATION_DATE)), ctx.now)
            destroyed = state in _DESTROYED
            wanted = (StorageStatusMask.DESTROYED_STORAGE if destroyed
                      else StorageStatusMask.ON_LINE_STORAGE)
            if not storage & wanted:
                continue
            if fresh_only and obj.value(Tag.FRESH) is not True:
                continue
            if criteria.matches(obj, state):
                found.append(uid)
    page = found[offset or 0:]
    if maximum is not None:
        page = page[:maximum]
    for uid in page:
        ctx.touched(uid)
    # 2.1 §6.1.27: a single identifier returned goes into the ID Placeholder; several
    # empty it, so a following item without an identifier fails rather than guesses.
    if len(page) == 1:
        ctx.id_placeholder.set(page[0])
    else:
        ctx.id_placeholder.value = None
    # Located Items is optional; it says how many matched when the client pages with
    # Offset Items (both arrived in KMIP 1.3).
    located = len(found) if offset is not None and ctx.version >= (1, 3) else None
    return LocateResponse(located_items=located, unique_identifiers=page)


class _Criteria:
    """The attributes of a Locate request, grouped for the store and for the check."""

    def __init__(self, attributes: list[Attribute], version: Version) -> None:
        self.version = version
        self.dates: dict[int, tuple[int, int]] = {}
        self.others: list[Attribute] = []
        by_tag: dict[int, list[Attribute]] = {}
        for attribute in attributes:
            if attribute.value is None:
                raise KmipError(ResultReason.INVALID_FIELD,
                                f"{_tag_label(attribute.tag)} has no value to match")
            by_tag.setdefault(attribute.tag, []).append(attribute)
        for tag, group in by_tag.items():
            if group[0].value.type is ItemType.DATE_TIME and tag != VENDOR_TAG:
                if len(group) > 2:
                    raise KmipError(ResultReason.INVALID_FIELD,
                                    f"{_tag_label(tag)} may be given once (a date) or twice "
                                    "(a range)")
                values = sorted(a.value.value for a in group)
                self.dates[tag] = (values[0], values[-1])
            else:
                self.others += group

    def store_filters(self) -> dict[str, Any]:
        """The keyword filters of :func:`repository.locate` these criteria imply."""
        filters: dict[str, Any] = {}
        for attribute in self.others:
            column = _COLUMN_FILTERS.get(attribute.tag)
            if column is not None and column not in filters:
                filters[column] = attribute.value.value
            elif attribute.tag == Tag.NAME and "name" not in filters:
                filters["name"] = attribute.typed.value
            elif attribute.tag == Tag.OBJECT_GROUP and "group" not in filters:
                filters["group"] = attribute.value.value
        dates = {managed.DATE_COLUMNS[tag]: bounds for tag, bounds in self.dates.items()
                 if tag in managed.DATE_COLUMNS}
        if dates:
            filters["dates"] = dates
        return filters

    def matches(self, obj: managed.StoredObject, state: State) -> bool:
        """Whether ``obj`` (in ``state`` now) meets every criterion."""
        for tag, (low, high) in self.dates.items():
            value = obj.value(tag)
            if value is None or not low <= value <= high:
                return False
        for wanted in self.others:
            if wanted.tag == Tag.STATE:
                if int(state) != wanted.value.value:
                    return False
            elif wanted.tag == Tag.CRYPTOGRAPHIC_USAGE_MASK:
                mask = obj.value(Tag.CRYPTOGRAPHIC_USAGE_MASK)
                bits = wanted.value.value
                if mask is None or mask & bits != bits:
                    return False
            elif not any(_same_value(wanted, have) for have in obj.attributes
                         if _identity(have) == _identity(wanted)):
                return False
        return True


def _same_value(wanted: Attribute, have: Attribute) -> bool:
    if have.value is None or wanted.value is None:
        return False
    if wanted.tag == Tag.LINK:
        # A Link structure compares by type and identifier, whatever the wire order.
        want, got = wanted.typed, have.typed
        return (isinstance(want, Link) and isinstance(got, Link)
                and int(want.link_type) == int(got.link_type)
                and want.linked_object_identifier == got.linked_object_identifier)
    if wanted.tag == Tag.NAME:
        want, got = wanted.typed, have.typed
        return (isinstance(want, Name) and isinstance(got, Name) and want.value == got.value
                and int(want.type) == int(got.type))
    return encode(wanted.value) == encode(_retagged(have.value, wanted.value.tag))


def _retagged(item: Item, tag: int) -> Item:
    return item if item.tag == tag else Item(tag, item.type, item.value, item.width)


# =====================================================================================
# Small helpers
# =====================================================================================

def _identity(attribute: Attribute) -> tuple[int, str | None, str | None]:
    """What makes two attributes "the same attribute" (vendor ones by vendor and name)."""
    if attribute.tag == VENDOR_TAG:
        return (VENDOR_TAG, attribute.vendor_identification, attribute.name)
    return (attribute.tag, None, None)


def _value(attributes: Iterable[Attribute], tag: int) -> Any:
    for attribute in attributes:
        if attribute.tag == tag:
            return attribute.typed
    return None


def _invalid_object_type(version: Version) -> ResultReason:
    return ResultReason.INVALID_OBJECT_TYPE if version >= (2, 0) else ResultReason.INVALID_FIELD


def _tag_label(tag: int) -> str:
    return registry.tag_name(tag) or registry.tag_name(tag, (1, 4)) or f"0x{tag:06X}"


def _enum_label(enum: Any, value: Any) -> str:
    if value is None:
        return "none"
    try:
        return enum(value).name
    except ValueError:
        return f"0x{int(value):08X}"

