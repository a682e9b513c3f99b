"""What the core says about itself (Query, Discover Versions), and the configured access
rules every operation reads (:class:`kcm.core.policy.AccessPolicy`)."""

from __future__ import annotations

from dataclasses import dataclass

import kcm
from kcm.core.policy import AccessPolicy
from kcm.kernel.versions import SUPPORTED_VERSIONS, Version
from kcm.kmip.enums import (
    DestroyAction,
    ObjectType,
    ProfileName,
    ProtectionStorageMask,
    RNGAlgorithm,
    RNGMode,
    ShreddingAlgorithm,
    UnwrapMode,
)
from kcm.kmip.tags import Tag
from kcm.ttlv import ItemType

#: KCM's extension tags (KMIP 1.4 §9.1.3.1: 0x540000-0x54FFFF are for extensions), used in
#: the vendor-defined Server Information of KMIP 1.x; Query Extension List/Map lists them.
EXTENSION_PRODUCT_NAME = 0x540001
EXTENSION_SERVER_VERSION = 0x540002
EXTENSION_TAGS: dict[int, tuple[str, ItemType]] = {
    EXTENSION_PRODUCT_NAME: ("KCM Product Name", ItemType.TEXT_STRING),
    EXTENSION_SERVER_VERSION: ("KCM Server Version", ItemType.TEXT_STRING),
}

#: Key material comes from the operating system's CSPRNG, which is none of the algorithms
#: the RNG Algorithm enumeration names (docs/conformance.md).
RNG_ALGORITHM = RNGAlgorithm.UNSPECIFIED

#: Objects are kept in software (the database, under the L1 key).
PROTECTION_STORAGE_MASKS: tuple[int, ...] = (int(ProtectionStorageMask.SOFTWARE),)

#: The object types Create and Create Key Pair make.
CREATED_OBJECT_TYPES: tuple[ObjectType, ...] = (
    ObjectType.SYMMETRIC_KEY, ObjectType.PUBLIC_KEY, ObjectType.PRIVATE_KEY)

#: Attributes every new object gets unless the client sets them (the spec's defaults for
#: Sensitive and Extractable, KMIP 1.4 §3.45, §3.47; storage in software):
#: kcm.core.operations.create.server_attributes, reported by Query Defaults Information.
DEFAULT_ATTRIBUTES: dict[int, tuple[ItemType, object]] = {
    Tag.SENSITIVE: (ItemType.BOOLEAN, False),
    Tag.EXTRACTABLE: (ItemType.BOOLEAN, True),
    Tag.PROTECTION_STORAGE_MASK: (ItemType.INTEGER, int(ProtectionStorageMask.SOFTWARE)),
}

#: Capability Information: streaming Encrypt/Decrypt (Init/Final Indicator) yes, the
#: asynchronous and attestation protocols no, Undo and Continue batches yes.
CAPABILITY_FLAGS: dict[int, bool] = {
    Tag.STREAMING_CAPABILITY: True,
    Tag.ASYNCHRONOUS_CAPABILITY: False,
    Tag.ATTESTATION_CAPABILITY: False,
    Tag.BATCH_UNDO_CAPABILITY: True,
    Tag.BATCH_CONTINUE_CAPABILITY: True,
}
#: Destroy deletes the key material and keeps the metadata (state Destroyed); the rest is
#: nothing KCM promises.
CAPABILITY_MODES: dict[int, int] = {
    Tag.UNWRAP_MODE: UnwrapMode.UNSPECIFIED,
    Tag.DESTROY_ACTION: DestroyAction.KEY_MATERIAL_DELETED,
    Tag.SHREDDING_ALGORITHM: ShreddingAlgorithm.UNSUPPORTED,
    Tag.RNG_MODE: RNGMode.UNSPECIFIED,
}

#: The shortest Rotate Interval a managed key may have, in seconds, unless the configuration
#: says otherwise (``[core.limits] min_rotate_interval``): each rotation makes a new object.
DEFAULT_MIN_ROTATE_INTERVAL = 3600

#: The profiles KCM claims, by the names each version gives them (KMIP 1.3 introduced Query
#: Profiles; 2.x names carry no version). Only profiles whose OASIS cases all pass: the
#: Baseline server (2.x; KMIP 1.x ties its baseline to TLS suites KCM does not offer by
#: default), the Symmetric Key Lifecycle, Basic, Advanced and RNG Cryptographic servers
#: (docs/conformance.md).
_PROFILES: dict[Version, tuple[ProfileName, ...]] = {
    (1, 3): (ProfileName.SYMMETRIC_KEY_LIFECYCLE_SERVER_KMIP_V1_3,
             ProfileName.BASIC_CRYPTOGRAPHIC_SERVER_KMIP_V1_3,
             ProfileName.ADVANCED_CRYPTOGRAPHIC_SERVER_KMIP_V1_3,
             ProfileName.RNG_CRYPTOGRAPHIC_SERVER_KMIP_V1_3),
    (1, 4): (ProfileName.SYMMETRIC_KEY_LIFECYCLE_SERVER_KMIP_V1_4,
             ProfileName.BASIC_CRYPTOGRAPHIC_SERVER_KMIP_V1_4,
             ProfileName.ADVANCED_CRYPTOGRAPHIC_SERVER_KMIP_V1_4,
             ProfileName.RNG_CRYPTOGRAPHIC_SERVER_KMIP_V1_4),
    (2, 0): (ProfileName.BASELINE_SERVER, ProfileName.SYMMETRIC_KEY_LIFECYCLE_SERVER,
             ProfileName.BASIC_CRYPTOGRAPHIC_SERVER, ProfileName.ADVANCED_CRYPTOGRAPHIC_SERVER,
             ProfileName.RNG_CRYPTOGRAPHIC_SERVER),
}


def claimed_profiles(version: Version) -> tuple[ProfileName, ...]:
    """The Profile Names KCM claims in ``version`` (none before 1.3)."""
    if version >= (2, 0):
        return _PROFILES[(2, 0)]
    return _PROFILES.get(version, ())


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """Static facts about this server, reported by Query and Discover Versions."""

    vendor_identification: str = "KCM"
    server_name: str = "kcm-core"
    product_name: str = "KCM"
    server_version: str = kcm.__version__
    versions: tuple[Version, ...] = SUPPORTED_VERSIONS
    #: The configured access rules (``application_objects``); carried here because every
    #: operation's context holds this object.
    access: AccessPolicy = AccessPolicy()
    #: The shortest Rotate Interval accepted (``[core.limits] min_rotate_interval``; 0:
    #: any), checked where an object is stored (:mod:`kcm.core.managed`).
    min_rotate_interval: int = DEFAULT_MIN_ROTATE_INTERVAL
