"""The digest of a SERVICE_KEYS answer, for conditional fetches (link version 8;
docs/link-protocol.md §2, "Conditional fetches"). Pure: no I/O.

A gateway refreshing what it holds sends the digest of the answer it would have to receive
to hold exactly that; the core computes the digest of the answer it would send, and when
the two are equal answers "unchanged" (a SERVICE_KEYS of that digest alone) instead. The
digest is over exactly what the answer carries: each ServiceKey Structure's TTLV bytes, in
order (uid, version, state, key material, tenant, service and, link version 5, the
tombstones, or their absence), so equal digests mean equal answers, never a guess.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from kcm.l4.service_key import ServiceKey
from kcm.link.frames import KEYS_DIGEST_SIZE, service_key_item
from kcm.ttlv import encode

__all__ = ["KEYS_DIGEST_SIZE", "Unchanged", "keys_digest"]

_DOMAIN = b"kcm link keys digest 1\0"


def keys_digest(keys: Sequence[ServiceKey]) -> bytes:
    """SHA-256 of the ServiceKey Structures a SERVICE_KEYS carrying ``keys`` would hold, in
    order (:data:`KEYS_DIGEST_SIZE` bytes)."""
    digest = hashlib.sha256(_DOMAIN)
    for key in keys:
        digest.update(encode(service_key_item(key)))
    return digest.digest()


@dataclass(frozen=True, slots=True)
class Unchanged:
    """The core's answer to a conditional fetch whose ``digest`` matched: what the gateway
    holds is what the full answer would carry."""

    digest: bytes
