"""What an identifier names, from its text alone (docs/link-protocol.md §3).

``l3-<uuid>`` is a service key (L3) version, ``l4.<...>`` a sealed L4 token, anything else a
managed object of the core. The gateway's classifier and the core's dispatch both ask here.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable

L3_PREFIX = "l3-"
L4_PREFIX = "l4."

_L3_UID_LENGTH = len(L3_PREFIX) + 36


def is_l3(uid: object) -> bool:
    """Whether ``uid`` names an L3 (a text starting ``l3-``)."""
    return isinstance(uid, str) and uid.startswith(L3_PREFIX)


def is_l4(uid: object) -> bool:
    """Whether ``uid`` names an L4 token (a text starting ``l4.``)."""
    return isinstance(uid, str) and uid.startswith(L4_PREFIX)


def new_l3_uid(random_bytes: Callable[[int], bytes]) -> str:
    """A fresh L3 Unique Identifier: ``l3-`` and a random (version 4) UUID."""
    return l3_uid_from_uuid(uuid.UUID(bytes=random_bytes(16), version=4).bytes)


def l3_uid_from_uuid(raw: bytes) -> str:
    """The L3 identifier for the 16 UUID bytes a token carries."""
    return L3_PREFIX + str(uuid.UUID(bytes=raw))


@functools.lru_cache(maxsize=1024)
def l3_uuid_bytes(uid: str) -> bytes:
    """The 16 UUID bytes of an L3 identifier in canonical form; ValueError otherwise.

    Only the canonical spelling (lowercase, hyphenated) is accepted, so an L3 has exactly
    one identifier and a token names it exactly one way. A gateway seals every L4 Create
    under the same few L3s: the last 1,024 answers are kept (a refusal is not).
    """
    if len(uid) != _L3_UID_LENGTH or not uid.startswith(L3_PREFIX):
        raise ValueError(f"not an L3 identifier: {uid!r}")
    raw = uuid.UUID(uid[len(L3_PREFIX):]).bytes
    if l3_uid_from_uuid(raw) != uid:
        raise ValueError(f"not a canonical L3 identifier: {uid!r}")
    return raw
