"""Which Create makes an L4, and under which service key (docs/link-protocol.md §3).

A Create is an L4 Create when its attributes carry either

* a Link of type Parent Link to an L3 (``l3-…``): the L4 is sealed under that L3 version, or
* the custom attribute ``x-kcm-level`` = ``L4`` (KMIP 2.x: Vendor Attribute, vendor ``x``,
  name ``kcm-level``), optionally with ``x-kcm-service`` = a service name (default: the
  caller's own service): the L4 is sealed under that service's current Active L3.

Nothing else is an L4. The gateway's classifier asks :func:`is_l4_create` (it never raises);
the engine asks :func:`l4_target`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kcm.identity import Principal
from kcm.kmip.attributes import (
    VENDOR_TAG,
    Attribute,
    Link,
    attribute_from_item,
    attributes_from_container,
)
from kcm.kmip.enums import LinkType, ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip.tags import Tag
from kcm.kmip.versions import Version
from kcm.l4.identifiers import L3_PREFIX, is_l3
from kcm.ttlv import Item, ItemType

VENDOR = "x"
LEVEL_NAME = "kcm-level"
SERVICE_NAME = "kcm-service"
L4_LEVEL = "L4"

#: Bytes that the raw attributes of every L4 Create contain (the ``kcm-level`` name, or the
#: ``l3-`` of a Parent Link): a Create whose attributes hold neither is not an L4 Create,
#: and is forwarded without decoding them.
MARKER_BYTES: tuple[bytes, ...] = (LEVEL_NAME.encode(), L3_PREFIX.encode())



@dataclass(frozen=True, slots=True)
class L4Marking:
    """What a Create's attributes say about the L4: the parent L3 it links to (if any) and
    the service named by ``x-kcm-service`` (if any)."""

    l3_uid: str | None
    service: str | None


def l4_marking(attributes: Iterable[Attribute] | None) -> L4Marking | None:
    """The L4 marking of a Create's attributes, or None when it is not an L4 Create."""
    parent = level = service = None
    for attribute in attributes or ():
        if attribute.tag == Tag.LINK:
            link = _parent_l3(attribute)
            if link is not None and parent is None:
                parent = link
        elif attribute.tag == VENDOR_TAG and attribute.vendor_identification == VENDOR:
            if attribute.name == LEVEL_NAME:
                level = _text(attribute)
            elif attribute.name == SERVICE_NAME:
                service = _text(attribute)
    if parent is None and level != L4_LEVEL:
        return None
    return L4Marking(parent, service)


def is_l4_create(attributes: Iterable[Attribute] | None) -> bool:
    """Whether a Create with these attributes makes an L4 (never raises)."""
    return l4_marking(attributes) is not None


def l4_target(principal: Principal, attributes: Iterable[Attribute] | None
              ) -> tuple[str, str] | str:
    """The L3 an L4 Create seals under: the linked L3's identifier, or (tenant, service)
    whose current Active L3 to use. Invalid Field when it is not an L4 Create or names no
    service; who may use it is :mod:`kcm.l4.authorize`'s question, asked by the engine."""
    marking = l4_marking(attributes)
    if marking is None:
        raise KmipError(ResultReason.INVALID_FIELD,
                        "not an L4 Create: link a Parent L3 (l3-) or set x-kcm-level = L4")
    if marking.l3_uid is not None:
        return marking.l3_uid
    if principal.tenant is None:
        raise KmipError(ResultReason.PERMISSION_DENIED,
                        f"{principal.role.value} principals create no L4 keys")
    service = marking.service or principal.service
    if not service:
        raise KmipError(ResultReason.INVALID_FIELD,
                        "name the service whose key seals the L4 with x-kcm-service")
    return principal.tenant, service


def create_attributes(container: Item | None, version: Version) -> list[Attribute]:
    """The attributes of a peeked Create (its Template-Attribute or Attributes structure,
    see :func:`kcm.ttlv.peek.peek_request`), for :func:`is_l4_create`. A structure that is
    not well-formed yields what could be read; the executor validates the request."""
    if container is None or container.type is not ItemType.STRUCTURE:
        return []
    try:
        if container.tag == Tag.TEMPLATE_ATTRIBUTE:
            return [attribute_from_item(child, version) for child in container.value
                    if child.tag == Tag.ATTRIBUTE]  # type: ignore[union-attr]
        return attributes_from_container(container, version)
    except KmipError:
        return []


def _parent_l3(attribute: Attribute) -> str | None:
    try:
        link = attribute.typed
    except KmipError:
        return None
    if not isinstance(link, Link) or link.link_type != LinkType.PARENT_LINK:
        return None
    target = link.linked_object_identifier
    return target if is_l3(target) else None


def _text(attribute: Attribute) -> str | None:
    value = attribute.value
    if value is None or value.type is not ItemType.TEXT_STRING:
        return None
    return value.value  # type: ignore[return-value]
