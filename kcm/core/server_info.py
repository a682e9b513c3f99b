"""What the core says about itself (Query, Discover Versions)."""

from __future__ import annotations

from dataclasses import dataclass

import kcm
from kcm.kernel.versions import SUPPORTED_VERSIONS, Version


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """Static facts about this server, reported by Query and Discover Versions."""

    vendor_identification: str = "KCM"
    server_name: str = "kcm-core"
    server_version: str = kcm.__version__
    versions: tuple[Version, ...] = SUPPORTED_VERSIONS
