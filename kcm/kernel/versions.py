"""The protocol versions KCM speaks, and which version answers a request."""

from __future__ import annotations

from kcm.kmip.versions import Version
from kcm.ttlv import TtlvError
from kcm.ttlv.peek import peek_request_head

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


def version_of(wire: bytes) -> Version:
    """The version to answer a request in that may not be readable: its own version when
    its header can be read (or the nearest we speak), else 1.0. Only the header is read."""
    try:
        return answer_version(peek_request_head(wire, max_items=0).version)
    except TtlvError:
        return (1, 0)
