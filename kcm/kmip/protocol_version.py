"""The Protocol Version structure (KMIP 1.4 §6.1, 2.1 §8.1)."""

from __future__ import annotations

from kcm.kmip.fields import Struct, Version, fld, kmip_struct
from kcm.kmip.tags import Tag
from kcm.ttlv.types import ItemType


@kmip_struct(Tag.PROTOCOL_VERSION)
class ProtocolVersion(Struct):
    """A KMIP protocol version; ``as_tuple`` is what the codecs take as ``version``."""

    major: int = fld(Tag.PROTOCOL_VERSION_MAJOR, ItemType.INTEGER, required=True)
    minor: int = fld(Tag.PROTOCOL_VERSION_MINOR, ItemType.INTEGER, required=True)

    def as_tuple(self) -> Version:
        """``(major, minor)``."""
        return (self.major, self.minor)

    @classmethod
    def of(cls, version: Version) -> ProtocolVersion:
        """Build from ``(major, minor)``."""
        return cls(major=version[0], minor=version[1])
