"""Which service keys (L3s) a request's local items need.

Worked out before a local run, so that every L3 the cache lacks is fetched at once and the
batch then runs once: from the peek (:func:`l3_needs`), an L4 token names its L3 version, an
``l3-`` identifier is one, and an L4 Create names the L3 it links to or the service whose
current L3 seals it; from the decoded items (:func:`wrapping_needs`, the peek does not read
that far), a Key Wrapping Specification names its wrapping L3. An item whose identifier is
the ID Placeholder uses a key an earlier item already needed.
"""

from __future__ import annotations

from collections.abc import Iterable

from kcm.gateway.l3_cache import Need
from kcm.identity import Principal
from kcm.kmip.attributes import Attribute
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import RequestBatchItem
from kcm.l4 import token
from kcm.l4.identifiers import is_l3, is_l4
from kcm.l4.marking import l4_target
from kcm.ttlv.peek import PeekedBatchItem

__all__ = ["l3_needs", "wrapping_needs"]


def l3_needs(items: Iterable[tuple[PeekedBatchItem, list[Attribute] | None]],
             principal: Principal) -> set[Need]:
    """The L3s that ``items`` (each with its L4 Create attributes, if a Create) use on
    behalf of ``principal``; an item whose key cannot be worked out needs nothing (its run
    refuses it)."""
    needs: set[Need] = set()
    for item, create_attributes in items:
        if create_attributes is not None:
            try:
                target = l4_target(principal, create_attributes)
            except KmipError:
                continue
            needs.add(Need(uid=target) if isinstance(target, str) else Need(*target))
            continue
        uid = item.unique_identifier
        if is_l3(uid):
            needs.add(Need(uid=uid))
        elif is_l4(uid):
            try:
                needs.add(Need(uid=token.parse(uid).l3_uid))  # type: ignore[arg-type]
            except token.TokenError:
                continue
    return needs


def wrapping_needs(items: Iterable[RequestBatchItem]) -> set[Need]:
    """The wrapping L3s that ``items`` (decoded) name: the Encryption Key Information of a
    Key Wrapping Specification, when it is an ``l3-`` identifier (the only wrapping key the
    L4 engine takes). A MAC/Signature Key Information is not a need: the engine refuses
    MAC or signature wrapping before it reads any key."""
    needs: set[Need] = set()
    for item in items:
        spec = getattr(item.request_payload, "key_wrapping_specification", None)
        if spec is None or spec.mac_signature_key_information is not None:
            continue
        info = spec.encryption_key_information
        uid = None if info is None else info.unique_identifier
        if isinstance(uid, str) and is_l3(uid):
            needs.add(Need(uid=uid))
    return needs
