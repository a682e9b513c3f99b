"""A Correlation Value is used once (KMIP 1.4 §2.1.15 ff.: Init Indicator, Correlation
Value, Final Indicator).

A stream's state travels with the client, sealed (:mod:`kcm.crypto.sealed_state`), so any
core can continue it; the seal stops forgery, not replay. Each request that continues a
stream takes the part its Correlation Value names: the part is recorded in the store
(table ``spent_stream_parts``) in the request's own transaction, beside the Usage Limits it
counts and the audit record, and a value presented again is refused Invalid Correlation
Value. A part taken by an item that then fails is rolled back with the item's savepoint,
so the value may be sent again. Two requests racing with one value meet at the table's
primary key: one commits, the other is refused, on one core or several sharing one
PostgreSQL database.

So every stream is one chain of parts: one Init Indicator (which counts once against the
key's Usage Limits), one IV, one message. Nothing can run a stream's Final twice, under the
IV the server chose once, over two plaintexts.

Signature streams cannot be sealed under their key's material: Signature Verify's key may be
a Public Key, whose material anyone may hold. Sign and Signature Verify streams are sealed
under :func:`tenant_secret`, derived from the tenant key (L2) that wraps the object, which
only the server holds.

A record is kept until its value expires (:data:`~kcm.crypto.sealed_state.STREAM_LIFETIME`
after it was issued), then the state sweeper deletes it (:func:`purge_spent`), with a margin
for cores whose clocks differ.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.orm import Session

from kcm.core import managed
from kcm.core.context import OperationContext, about_to_write
from kcm.core.store import repository
from kcm.core.store.schema import LEVEL_TENANT_KEY, WRAPPED_BY_L1
from kcm.crypto.sealed_state import CLOCK_MARGIN, StreamPart, open_state, seal_state
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError

__all__ = ["PURGED_META_KEY", "PURGE_MARGIN", "open_once", "purge_spent", "seal_part",
           "tenant_secret"]

T = TypeVar("T")

#: Seconds a spent part is kept after its value expired: another core's clock may be
#: behind this one's by up to that much and still open the value.
PURGE_MARGIN = CLOCK_MARGIN


#: HKDF label of :func:`tenant_secret`: the key it derives from an L2 serves nothing else.
_TENANT_SECRET_LABEL = b"kcm stream state v1 "


def tenant_secret(ctx: OperationContext, obj: managed.StoredObject) -> bytes:
    """A secret to seal ``obj``'s streams under when its own material is not secret: derived
    (HKDF-SHA-256, a label of its own, the tenant's name) from the tenant key (L2) that wraps
    ``obj``. Only the server holds it, so a client that knows the object's material still
    cannot forge a Correlation Value (the sealing adds the stream's purpose and the object's
    identifier). An object moved to a newer L2 by a tenant key rotation
    (:mod:`kcm.core.tenant_rotation`) has its open streams begun again."""
    row = obj.row
    l2 = (None if row.wrapped_by in (None, WRAPPED_BY_L1)
          else repository.object_columns(ctx.session, row.tenant, row.wrapped_by))
    if l2 is None or l2.level != LEVEL_TENANT_KEY:
        raise KmipError(ResultReason.GENERAL_FAILURE, "the key wrapping this object is missing")
    tenant_key = ctx.keyring.unwrap(ctx.session, l2)  # type: ignore[arg-type]
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=_TENANT_SECRET_LABEL + row.tenant.encode()).derive(tenant_key)


def open_once(ctx: OperationContext, secret: bytes, purpose: bytes, uid: str, value: bytes,
              unpack: Callable[[bytes], T]) -> tuple[StreamPart, T]:
    """The part ``value`` names and the state it carries, the part taken in this request's
    transaction; Invalid Correlation Value when the value does not open (forged, another
    key's or kind's, expired) or was used already."""
    about_to_write(ctx.session)  # (the part is spent in this transaction)
    part, state = open_state(secret, purpose, uid, value, unpack, now=ctx.now)
    purged = repository.get_meta(ctx.session, PURGED_META_KEY)
    if (purged is not None and part.expires < int(purged)) or not \
            repository.spend_stream_part(ctx.session, part.stream_id, part.part, part.expires):
        # (a value whose record may have been purged is refused as used: the wall clock
        # went back since, and its record was all that made it one use)
        raise KmipError(ResultReason.INVALID_CORRELATION_VALUE,
                        "the Correlation Value was used already; each is used once")
    ctx.audit_detail["stream"] = f"{part.stream_id[:8].hex()}/{part.part}"
    return part, state


def seal_part(ctx: OperationContext, secret: bytes, purpose: bytes, uid: str, state: bytes,
              after: StreamPart | None) -> bytes:
    """The Correlation Value to answer: a new stream's first part when ``after`` is None,
    else the part that follows ``after``."""
    random_bytes: Callable[[int], bytes] = ctx.random_bytes  # type: ignore[assignment]
    part = (StreamPart.first(ctx.now, random_bytes) if after is None
            else after.following(ctx.now))
    return seal_state(secret, purpose, uid, state, random_bytes, part=part)


def purge_spent(session: Session, now: float) -> list[object]:
    """A step of the state sweeper (:mod:`kcm.core.sweep_steps`): forget the spent parts
    whose values expired more than :data:`PURGE_MARGIN` ago (they open nowhere any more),
    and record how far that went (:data:`PURGED_META_KEY`, which never goes back): a value
    that expired before it is refused as used whatever the wall clock says afterwards (a
    clock stepped back over 10 minutes opened a value whose record was gone, and ran its
    Final again under the IV the server chose once). Reports nothing: routine."""
    before = int(now) - PURGE_MARGIN
    purged = repository.get_meta(session, PURGED_META_KEY)
    if purged is not None and int(purged) >= before:
        before = int(purged)  # (the clock went back: nothing more expired)
    else:
        repository.set_meta(session, PURGED_META_KEY, str(before))
    repository.purge_stream_parts(session, before)
    return []


#: The ``meta`` row of how far spent parts were purged: values that expired before it are
#: refused (:func:`open_once`).
PURGED_META_KEY = "stream_parts.purged_before"
