"""Provisioning the key hierarchy: a tenant's key (L2) and its services' keys (L3).

L2 and L3 are stored as ordinary Symmetric Key objects of their tenant, marked with
their level (and, for L3, the service and version), so Locate, Get Attributes and
the lifecycle operations work on them. They are created Active. An L3's identifier is
``l3-<uuid>`` (docs/link-protocol.md §3), so the gateway tells it apart by its text.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from kcm.core import events
from kcm.core.attribute_blob import encode_attributes
from kcm.core.attribute_rules import HIERARCHY_USAGE_MASK
from kcm.core.keyring import Binding, Keyring, flags_of
from kcm.core.managed import encode_material
from kcm.core.operations.create import server_attributes
from kcm.core.store import repository
from kcm.core.store.schema import LEVEL_SERVICE_KEY, LEVEL_TENANT_KEY, WRAPPED_BY_L1
from kcm.kmip.attributes import Attribute, Name
from kcm.kmip.enums import (
    CryptographicAlgorithm,
    KeyFormatType,
    NameType,
    ObjectType,
    State,
)
from kcm.kmip.objects import KeyBlock, KeyValue, SymmetricKey
from kcm.kmip.tags import Tag
from kcm.l4.identifiers import new_l3_uid


class _Stamp:
    """The few context fields :func:`server_attributes` reads."""

    def __init__(self, now: int) -> None:
        self.now = now


def tenant_key_name(tenant: str) -> str:
    return f"kcm/tenant/{tenant}/L2"


def service_key_name(tenant: str, service: str) -> str:
    return f"kcm/tenant/{tenant}/service/{service}/L3"


def provision_tenant(session: Session, keyring: Keyring, tenant: str, *, now: int) -> str:
    """Create ``tenant`` and its first L2 (idempotent: returns the existing active L2)."""
    repository.ensure_tenant(session, tenant, clock=lambda: now)
    existing = repository.find_l2(session, tenant, active_only=True)
    if existing is not None:
        return existing.uid
    uid = keyring.new_uid()
    key = keyring.random_bytes(32)
    attributes = _key_attributes(uid, tenant_key_name(tenant), now)
    repository.insert_object(
        session, uid=uid, tenant=tenant, object_type=ObjectType.SYMMETRIC_KEY,
        state=State.ACTIVE, attributes=encode_attributes(attributes),
        material=keyring.wrap_tenant_key(tenant, uid, key, flags_of(attributes)),
        wrapped_by=WRAPPED_BY_L1,
        level=LEVEL_TENANT_KEY, cryptographic_algorithm=CryptographicAlgorithm.AES,
        cryptographic_length=256, cryptographic_usage_mask=_KEY_USAGE,
        names=[(tenant_key_name(tenant), NameType.UNINTERPRETED_TEXT_STRING)],
        initial_date=now, activation_date=now, last_change_date=now)
    return uid


def provision_service(session: Session, keyring: Keyring, tenant: str, service: str, *,
                      now: int) -> str:
    """Create the next L3 version of ``tenant``/``service`` (the tenant must exist)."""
    version = repository.newest_l3_version(session, tenant, service) + 1
    uid = new_l3_uid(keyring.random_bytes)
    name = service_key_name(tenant, service)
    attributes = _key_attributes(uid, name, now)
    material = _material(keyring.random_bytes(32))
    blob, wrapped_by = keyring.wrap_for_tenant(
        session, tenant, uid, material, binding=Binding(
            tenant, uid, int(ObjectType.SYMMETRIC_KEY), LEVEL_SERVICE_KEY, service, version,
            *flags_of(attributes)))
    repository.insert_object(
        session, uid=uid, tenant=tenant, object_type=ObjectType.SYMMETRIC_KEY,
        state=State.ACTIVE, attributes=encode_attributes(attributes), material=blob,
        wrapped_by=wrapped_by, level=LEVEL_SERVICE_KEY, service=service, key_version=version,
        cryptographic_algorithm=CryptographicAlgorithm.AES, cryptographic_length=256,
        cryptographic_usage_mask=_KEY_USAGE,
        names=[(name, NameType.UNINTERPRETED_TEXT_STRING)], initial_date=now,
        activation_date=now, last_change_date=now)
    events.l3_rotated(session, tenant, uid, service, version)
    return uid


#: The Cryptographic Usage Mask of tenant and service keys (L2, L3).
_KEY_USAGE = HIERARCHY_USAGE_MASK


def _key_attributes(uid: str, name: str, now: int) -> list[Attribute]:
    attributes = server_attributes(
        _Stamp(now), uid, ObjectType.SYMMETRIC_KEY,
        [Attribute.of(Tag.NAME, Name(value=name, type=NameType.UNINTERPRETED_TEXT_STRING)),
         Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, _KEY_USAGE)],
        algorithm=CryptographicAlgorithm.AES, length=256, state=State.ACTIVE)
    attributes.append(Attribute.of(Tag.ACTIVATION_DATE, now))
    return attributes


def _material(key: bytes) -> bytes:
    block = KeyBlock(key_format_type=KeyFormatType.RAW, key_value=KeyValue(key_material=key),
                     cryptographic_algorithm=CryptographicAlgorithm.AES, cryptographic_length=256)
    return encode_material(SymmetricKey(key_block=block))
