"""The protocol versions the core speaks, and how an unsupported one is answered."""

from __future__ import annotations

from kcm.kmip.enums import ResultReason
from kcm.kmip.versions import Version

#: Newest first, as Discover Versions lists them (KMIP 1.4 §4.26).
SUPPORTED_VERSIONS: tuple[Version, ...] = ((2, 1), (2, 0), (1, 4), (1, 3), (1, 2), (1, 1), (1, 0))


def is_supported(version: Version) -> bool:
    return version in SUPPORTED_VERSIONS


def answer_version(requested: Version) -> Version:
    """The version to answer in: the request's own, else the newest we speak that is not
    newer than it (or the oldest we speak)."""
    if requested in SUPPORTED_VERSIONS:
        return requested
    for version in SUPPORTED_VERSIONS:
        if version <= requested:
            return version
    return SUPPORTED_VERSIONS[-1]


def unsupported_reason(answer: Version) -> ResultReason:
    """KMIP 2.x names the failure; 1.x has only Invalid Message for it."""
    if answer >= (2, 0):
        return ResultReason.UNSUPPORTED_PROTOCOL_VERSION
    return ResultReason.INVALID_MESSAGE
