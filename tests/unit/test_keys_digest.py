"""The KeysDigest of a conditional fetch (link version 8) is what docs/link-protocol.md §2
says: SHA-256 over "kcm link keys digest 1", a zero byte, then each ServiceKey Structure's
TTLV bytes in the answer's order, exactly as SERVICE_KEYS carries them. Both ends of a link
of two releases compute it, so it is pinned here, not only compared with itself."""

from __future__ import annotations

import hashlib

from kcm.kmip.enums import State
from kcm.l4.service_key import ServiceKey
from kcm.link.frames import Frame, FrameType, encode_frame
from kcm.link.keys_digest import KEYS_DIGEST_SIZE, keys_digest

NEW = ServiceKey("l3-00000000-0000-4000-8000-000000000002", "demo", "app", 2, State.ACTIVE,
                 bytes(range(32)), tombstones=frozenset({"bb" * 16, "aa" * 16}))
OLD = ServiceKey("l3-00000000-0000-4000-8000-000000000001", "demo", "app", 1, State.ACTIVE,
                 bytes(32), tombstones=None)
PREFIX = b"kcm link keys digest 1\0"


def test_the_digest_is_over_the_answers_service_key_structures_in_order() -> None:
    wire = encode_frame(Frame(FrameType.SERVICE_KEYS, stream_id=1, service_keys=[NEW, OLD]))
    # The frame's Structure header (8 bytes), FrameType and StreamId (16 each), then the
    # ServiceKey Structures and nothing else.
    assert keys_digest([NEW, OLD]) == hashlib.sha256(PREFIX + wire[40:]).digest()
    assert keys_digest([]) == hashlib.sha256(PREFIX).digest()
    assert len(keys_digest([NEW])) == KEYS_DIGEST_SIZE


def test_the_digest_is_pinned_across_releases() -> None:
    assert keys_digest([NEW, OLD]).hex() == (
        "12ee9a9d64a415e2d8945749471a24155705d6045009a1a90b8170e9b3f8f371")


def test_the_order_and_the_tombstones_count() -> None:
    assert keys_digest([NEW, OLD]) != keys_digest([OLD, NEW])
    # No TombstoneCount (not all sent) is not the same as none.
    assert keys_digest([OLD]) != keys_digest([ServiceKey(
        OLD.uid, OLD.tenant, OLD.service, OLD.version, OLD.state, OLD.key)])
