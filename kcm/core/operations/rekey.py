"""Re-key (KMIP 1.4 §4.4, 2.1 §6.1.41): a new key replacing an old one, linked both ways."""

from __future__ import annotations

from kcm.core import events, managed, policy
from kcm.core.attribute_rules import (
    check_client_attributes,
    check_hierarchy_date,
    check_hierarchy_mask,
    level_takes,
    rule_for,
)
from kcm.core.context import OperationContext
from kcm.core.keyring import flags_of
from kcm.core.operations._objects_common import (
    DESTROYED,
    attribute_identity,
    link_attribute,
    value_of,
)
from kcm.core.operations.create import generate_key, key_spec, server_attributes
from kcm.core.store import repository
from kcm.core.store.schema import LEVEL_SERVICE_KEY, LEVEL_TENANT_KEY, WRAPPED_BY_L1
from kcm.kernel import lifecycle
from kcm.kernel.templates import refuse_template_names
from kcm.kmip.attributes import Attribute, Link
from kcm.kmip.enums import (
    KeyFormatType,
    LinkType,
    ObjectType,
    ResultReason,
    State,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.objects import (
    KeyBlock,
    KeyValue,
    SymmetricKey,
)
from kcm.kmip.payloads import (
    ReKeyRequest,
    ReKeyResponse,
)
from kcm.kmip.tags import Tag
from kcm.l4.identifiers import new_l3_uid
from kcm.ttlv import Item, ItemType

_NOT_COPIED = frozenset({
    Tag.UNIQUE_IDENTIFIER, Tag.OBJECT_TYPE, Tag.INITIAL_DATE, Tag.ALWAYS_SENSITIVE,
    Tag.NEVER_EXTRACTABLE, Tag.FRESH, Tag.DESTROY_DATE, Tag.COMPROMISE_OCCURRENCE_DATE,
    Tag.COMPROMISE_DATE, Tag.REVOCATION_REASON, Tag.STATE, Tag.DIGEST, Tag.LINK,
    Tag.LAST_CHANGE_DATE, Tag.RANDOM_NUMBER_GENERATOR, Tag.ORIGINAL_CREATION_DATE,
    Tag.ARCHIVE_DATE, Tag.SHORT_UNIQUE_IDENTIFIER, Tag.KEY_VALUE_PRESENT,
    Tag.ACTIVATION_DATE, Tag.PROCESS_START_DATE, Tag.PROTECT_STOP_DATE,
    Tag.DEACTIVATION_DATE, Tag.ROTATE_DATE, Tag.ROTATE_GENERATION, Tag.ROTATE_LATEST,
})
#: The attributes that make a key part of a rotation line (KMIP 2.1 §4): its Re-key, by a
#: client or by the sweeper, continues the line (:func:`_continue_rotation_line`).
_ROTATION_LINE = (Tag.ROTATE_AUTOMATIC, Tag.ROTATE_INTERVAL, Tag.ROTATE_GENERATION,
                  Tag.ROTATE_LATEST)
_SET_BY_ROTATION = frozenset({Tag.ROTATE_DATE, Tag.ROTATE_GENERATION, Tag.ROTATE_LATEST})
_SHIFTED_DATES = (Tag.PROCESS_START_DATE, Tag.PROTECT_STOP_DATE, Tag.DEACTIVATION_DATE)


def re_key(ctx: OperationContext, request: ReKeyRequest) -> ReKeyResponse:
    """Make the replacement of a symmetric key; the ID Placeholder becomes its identifier."""
    uid = ctx.id_placeholder.resolve(request.unique_identifier)
    old = managed.load(ctx, uid)
    policy.check_lifecycle_change(ctx.principal, old.level)
    if old.object_type != ObjectType.SYMMETRIC_KEY:
        raise KmipError(ResultReason.INVALID_OBJECT_TYPE, "Re-key replaces symmetric keys only")
    if old.state in DESTROYED:
        raise lifecycle.wrong_state("cannot re-key a destroyed key")
    replacement = _replacement_of(old)
    if replacement is not None and (old.level is not None or _on_rotation_line(old)):
        # A tenant or service key, or a managed key of a rotation line, hands its line on
        # once: a second replacement (two clients or cores at once, or a client's Re-key of
        # a key the sweeper rotated) forked a rotation line for good, and made a service
        # key version deactivated from its birth. (Another key may be re-keyed again: its
        # Replacement Object Link then names the newest replacement.)
        raise lifecycle.wrong_state(f"the key was re-keyed already, replaced by "
                                    f"{replacement}: re-key that one")
    refuse_template_names(request.template_names)
    if request.offset is not None and request.offset < 0:
        raise KmipError(ResultReason.INVALID_FIELD, "Offset must not be negative")
    client = list(request.attributes or [])
    check_client_attributes(client, ctx.version)
    for attribute in client:
        check_hierarchy_date(attribute.tag, old.level, ctx.version)
        check_hierarchy_mask(attribute, old.level, ctx.version)
    if any(_is_link(a, LinkType.REPLACED_OBJECT_LINK) for a in client):
        raise KmipError(ResultReason.INVALID_FIELD,
                        "Re-key links the new key to the existing one itself: send no "
                        "Replaced Object Link")

    new_uid = (new_l3_uid(ctx.keyring.random_bytes) if old.level == LEVEL_SERVICE_KEY
               else ctx.keyring.new_uid())
    inherited = _override(_inherited_attributes(ctx, old, request.offset), client)
    algorithm, length = key_spec(inherited)
    if old.level is not None and (algorithm, length) != (
            old.value(Tag.CRYPTOGRAPHIC_ALGORITHM), old.value(Tag.CRYPTOGRAPHIC_LENGTH)):
        raise KmipError(ResultReason.INVALID_FIELD,
                        "a tenant or service key keeps its algorithm and length")
    state = lifecycle.state_at(State.PRE_ACTIVE, lifecycle.LifecycleDates(
        value_of(inherited, Tag.ACTIVATION_DATE), value_of(inherited, Tag.DEACTIVATION_DATE)),
        ctx.now)
    key = generate_key(ctx, algorithm, length)
    # The hierarchy keys carry no Digest, as when they are provisioned.
    attributes = server_attributes(
        ctx, new_uid, ObjectType.SYMMETRIC_KEY, inherited, algorithm=algorithm, length=length,
        state=state, key_bytes=key if old.level is None else None, generated=True)
    attributes = _one_of_each(attributes)
    _continue_rotation_line(ctx, old, attributes)
    _insert_replacement(ctx, old, new_uid, attributes, key, algorithm, length)

    _link_to_replacement(old, new_uid)
    old.attributes = [a for a in old.attributes if a.tag != Tag.NAME]
    if old.level is not None:
        _retire_at(ctx, old, value_of(attributes, Tag.ACTIVATION_DATE))
    managed.save(ctx, old)
    ctx.touched(new_uid)
    ctx.id_placeholder.set(new_uid)
    return ReKeyResponse(unique_identifier=new_uid)


def _continue_rotation_line(ctx: OperationContext, old: managed.StoredObject,
                            attributes: list[Attribute]) -> None:
    """A managed key of a rotation line (Rotate Automatic, a Rotate Interval, or a place in
    a line) hands it on: the replacement is the latest (Rotate Latest true, Rotate
    Generation one more, Rotate Date now) and the existing key no longer is, so the sweeper
    rotates the replacement alone (a client's Re-key of a key due otherwise left both due,
    and the line forked at the next sweep). Other keys get none of these attributes."""
    if old.level is not None or not _on_rotation_line(old):
        return
    attributes[:] = [a for a in attributes if a.tag not in _SET_BY_ROTATION] + [
        Attribute.of(Tag.ROTATE_DATE, ctx.now, ItemType.DATE_TIME),
        Attribute.of(Tag.ROTATE_GENERATION, int(old.value(Tag.ROTATE_GENERATION) or 0) + 1,
                     ItemType.INTEGER),
        Attribute.of(Tag.ROTATE_LATEST, True, ItemType.BOOLEAN)]
    old.set(Tag.ROTATE_LATEST, False, ItemType.BOOLEAN)


def _link_to_replacement(old: managed.StoredObject, new_uid: str) -> None:
    """Point the existing key's Replacement Object Link at ``new_uid``. Link is
    multi-valued: its other Links (Parent, Certificate, Derived Key, ...) stay."""
    old.attributes = [a for a in old.attributes
                      if not _is_link(a, LinkType.REPLACEMENT_OBJECT_LINK)]
    old.attributes.append(link_attribute(LinkType.REPLACEMENT_OBJECT_LINK, new_uid))


def _on_rotation_line(old: managed.StoredObject) -> bool:
    """Whether ``old`` is a managed key of a rotation line (:func:`_continue_rotation_line`)."""
    return any(old.value(tag) is not None for tag in _ROTATION_LINE)


def _replacement_of(old: managed.StoredObject) -> str | None:
    """The identifier ``old``'s Replacement Object Link names (None: it has none)."""
    for attribute in old.attributes:
        if _is_link(attribute, LinkType.REPLACEMENT_OBJECT_LINK):
            return str(attribute.typed.linked_object_identifier)
    return None


def _is_link(attribute: Attribute, link_type: LinkType) -> bool:
    if attribute.tag != Tag.LINK:
        return False
    link = attribute.typed
    return isinstance(link, Link) and link.link_type == link_type


def _inherited_attributes(ctx: OperationContext, old: managed.StoredObject,
                          offset: int | None) -> list[Attribute]:
    """The existing key's attributes as the replacement inherits them (1.4 Table 169),
    before the server sets its own (identifier, dates, state, digest, ...)."""
    attributes = []
    for attribute in old.attributes:
        if attribute.tag in _NOT_COPIED or not level_takes(attribute.tag, old.level):
            continue
        if attribute.tag == Tag.USAGE_LIMITS and attribute.value is not None:
            attribute = Attribute(Tag.USAGE_LIMITS, _fresh_usage_limits(attribute.value))
        attributes.append(attribute)
    activation = old.value(Tag.ACTIVATION_DATE)
    dates: dict[int, int] = {}
    if offset is None:
        # No Offset: the dates are copied as they are (1.4 §4.4).
        for tag in (Tag.ACTIVATION_DATE, *_SHIFTED_DATES):
            if old.value(tag) is not None:
                dates[tag] = old.value(tag)
    else:
        # 1.4 §4.4 Table 168: AT2 = IT2 + Offset; the other dates keep their distance
        # to the activation date (DT2 = DT1 + (AT2 - AT1)). A key never given an
        # activation date measures from its Initial Date instead: else a replacement
        # activated an Offset ahead kept the old Deactivation Date, before its activation.
        dates[Tag.ACTIVATION_DATE] = managed.bounded_date(ctx.now + offset)
        since = activation if activation is not None else old.value(Tag.INITIAL_DATE)
        shift = 0 if since is None else dates[Tag.ACTIVATION_DATE] - int(since)
        for tag in _SHIFTED_DATES:
            when = old.value(tag)
            if when is not None:
                # ("never", the latest date, stays never; near it, the latest)
                dates[tag] = (when if when == managed.LATEST_DATE
                              else managed.bounded_date(when + shift))
    # (a tenant or service key set before these dates were refused does not pass them on)
    attributes += [managed.date_attribute(tag, when) for tag, when in dates.items()
                   if level_takes(tag, old.level)]
    attributes.append(link_attribute(LinkType.REPLACED_OBJECT_LINK, old.uid))
    return attributes


def _fresh_usage_limits(limits: Item) -> Item:
    """Usage Limits with the Count reset to the Total (1.4 Table 169)."""
    total = limits.find(Tag.USAGE_LIMITS_TOTAL)
    if total is None or limits.type is not ItemType.STRUCTURE:
        return limits
    children = [Item(Tag.USAGE_LIMITS_COUNT, ItemType.LONG_INTEGER, total.value)
                if child.tag == Tag.USAGE_LIMITS_COUNT else child for child in limits]
    return Item(limits.tag, limits.type, children)


def _override(attributes: list[Attribute], client: list[Attribute]) -> list[Attribute]:
    """The inherited attributes with the client's added: a single-valued attribute the
    client gives replaces the inherited one; values of a multi-valued one (Name, Object
    Group, ...) join the inherited values."""
    replaced = {attribute_identity(a) for a in client if not rule_for(a).multi}
    return [a for a in attributes if attribute_identity(a) not in replaced] + client


def _one_of_each(attributes: list[Attribute]) -> list[Attribute]:
    """One instance of each single-valued attribute, the last: the server appends what it
    sets on every new key (Lease Time, Key Format Type, Protection Storage Mask) after the
    inherited attributes, which carried the existing key's own; the replacement had both."""
    last = {attribute_identity(a): i for i, a in enumerate(attributes) if not rule_for(a).multi}
    return [a for i, a in enumerate(attributes)
            if rule_for(a).multi or last[attribute_identity(a)] == i]


def _insert_replacement(ctx: OperationContext, old: managed.StoredObject, uid: str,
                        attributes: list[Attribute], key: bytes, algorithm: int,
                        length: int) -> None:
    block = KeyBlock(key_format_type=KeyFormatType.RAW, key_value=KeyValue(key_material=key),
                     cryptographic_algorithm=algorithm, cryptographic_length=length)
    tenant = old.tenant
    if old.level == LEVEL_TENANT_KEY:
        # An L2 is wrapped by L1 and holds the bare key (see kcm.core.hierarchy).
        new = managed.insert(ctx, uid=uid, object_type=ObjectType.SYMMETRIC_KEY,
                             attributes=attributes, managed_object=None, tenant=tenant,
                             level=LEVEL_TENANT_KEY, inherits=old)
        assert new is not None
        repository.update_object(ctx.session, new.stored_row(ctx.session),
                                 wrapped_by=WRAPPED_BY_L1,
                                 material=ctx.keyring.wrap_tenant_key(tenant, uid, key,
                                                                     flags_of(attributes)))
        ctx.keyring.forget_current(tenant)
        return
    if old.level == LEVEL_SERVICE_KEY:
        service = old.row.service
        version = repository.newest_l3_version(ctx.session, tenant, service) + 1
        managed.insert(ctx, uid=uid, object_type=ObjectType.SYMMETRIC_KEY,
                       attributes=attributes, managed_object=SymmetricKey(key_block=block),
                       tenant=tenant, level=LEVEL_SERVICE_KEY, service=service,
                       key_version=version, inherits=old)
        ctx.audit_detail["service_key_version"] = version
        events.l3_rotated(ctx, tenant, uid, service, version)
        return
    # The replacement belongs to the service its predecessor belongs to (or to none).
    managed.insert(ctx, uid=uid, object_type=ObjectType.SYMMETRIC_KEY, attributes=attributes,
                   managed_object=SymmetricKey(key_block=block), tenant=tenant,
                   service=old.row.service, inherits=old)


def _retire_at(ctx: OperationContext, old: managed.StoredObject, when: int | None) -> None:
    """A replaced tenant or service key is deactivated when its successor activates.

    The spec leaves the existing key's state alone; the hierarchy keeps one active version
    per tenant and service, so the old version becomes decrypt-only from then on. A
    successor without an Activation Date leaves the old version as it is.
    """
    if when is None:
        return
    current = old.value(Tag.DEACTIVATION_DATE)
    if current is not None and current <= when:
        return
    old.set(Tag.DEACTIVATION_DATE, when, ItemType.DATE_TIME)
    moved = lifecycle.state_at(old.state, lifecycle.LifecycleDates(
        old.value(Tag.ACTIVATION_DATE), when), ctx.now)
    old.set(Tag.STATE, int(moved))


