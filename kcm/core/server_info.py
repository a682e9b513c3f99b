"""What the core says about itself (Query, Discover Versions), and the configured access
rules every operation reads (:class:`kcm.core.policy.AccessPolicy`)."""

from __future__ import annotations

from dataclasses import dataclass

import kcm
from kcm.core.policy import AccessPolicy
from kcm.kernel.versions import SUPPORTED_VERSIONS, Version


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """Static facts about this server, reported by Query and Discover Versions."""

    vendor_identification: str = "KCM"
    server_name: str = "kcm-core"
    server_version: str = kcm.__version__
    versions: tuple[Version, ...] = SUPPORTED_VERSIONS
    #: The configured access rules (``application_objects``); carried here because every
    #: operation's context holds this object.
    access: AccessPolicy = AccessPolicy()
