"""The attribute operations: Get Attributes, Get Attribute List, Add, Modify, Delete,
Set and Adjust Attribute (KMIP 1.4 §4.12–§4.16; KMIP 2.1 §6.1, the operations of the
same names).

Who may change which attribute is :mod:`kcm.core.attribute_rules`'s decision; these
handlers apply it, answer in the request's version, and save every change through
:func:`kcm.core.managed.save`.

Instances of a multi-valued attribute carry the 1.x Attribute Index (KMIP 1.4 §2.1.1):
the server assigns it, it starts at 0, and an instance keeps its index when others
are added or deleted. Stored attributes without an index (as Create writes them) take
the lowest free one when loaded; index 0 is stored as "none". KMIP 1.4 §4.14–§4.16 let
a response omit an index of 0, and the OASIS test cases do; PyKMIP's client suite
expects it on the instances a client manages. So an index of 0 is written only where a
client needs it to address the instance: in Get Attributes, for the multi-valued
attributes a client may change (Name, Link, x-…), and in a Modify or Delete answer
whose request named the index itself. KMIP 2.x has no index: an instance is named by
its value (Current Attribute).

None of them sets the ID Placeholder (KMIP 1.4 §4, 2.1 §6: it is the operand's identifier
before, unchanged after): an item naming another object leaves it to the later items.
"""

from __future__ import annotations

from collections.abc import Iterable

from kcm.core import managed, policy, usage_limits
from kcm.core.attribute_rules import (
    Rule,
    check_date_change,
    check_hierarchy_date,
    check_hierarchy_mask,
    check_offered,
    protected_error,
    rule_for,
)
from kcm.core.context import OperationContext
from kcm.core.keyring import flags_of
from kcm.core.store.schema import LEVEL_SERVICE_KEY, LEVEL_TENANT_KEY
from kcm.kernel import lifecycle
from kcm.kmip import registry
from kcm.kmip.attributes import (
    TYPED_ATTRIBUTES,
    VENDOR_TAG,
    Attribute,
    AttributeReference,
    Link,
    check_value_type,
)
from kcm.kmip.enums import AdjustmentType, LinkType, ResultReason, State
from kcm.kmip.errors import KmipError
from kcm.kmip.payloads import (
    AddAttributeRequest,
    AddAttributeResponse,
    AdjustAttributeRequest,
    DeleteAttributeRequest,
    DeleteAttributeResponse,
    GetAttributeListRequest,
    GetAttributeListResponse,
    GetAttributesRequest,
    GetAttributesResponse,
    ModifyAttributeRequest,
    ModifyAttributeResponse,
    SetAttributeRequest,
    UniqueIdentifierResponse,
)
from kcm.kmip.tags import Tag
from kcm.kmip.versions import Version
from kcm.ttlv import Item, ItemType

#: What names one attribute: its tag, or for a vendor attribute (vendor, name) too.
Key = tuple[int, str | None, str | None]

_V2 = (2, 0)

# Value ranges of the numeric TTLV types (KMIP 1.4 §9.1.1.4 "Item Value").
_RANGES: dict[ItemType, tuple[int, int]] = {
    ItemType.INTEGER: (-(1 << 31), (1 << 31) - 1),
    ItemType.LONG_INTEGER: (-(1 << 63), (1 << 63) - 1),
    ItemType.INTERVAL: (0, (1 << 32) - 1),
    ItemType.DATE_TIME: (-(1 << 63), (1 << 63) - 1),
    ItemType.DATE_TIME_EXTENDED: (-(1 << 63), (1 << 63) - 1),
}
_NUMBERS = frozenset({ItemType.INTEGER, ItemType.LONG_INTEGER, ItemType.BIG_INTEGER,
                      ItemType.INTERVAL})
_DATES = frozenset({ItemType.DATE_TIME, ItemType.DATE_TIME_EXTENDED})


# Reading ---------------------------------------------------------------------------------

def get_attributes(ctx: OperationContext, request: GetAttributesRequest) -> GetAttributesResponse:
    """The requested attributes (all when none is named), every instance of each, in the
    order asked; names the object does not have are simply absent, a name asked twice is
    refused."""
    obj = _load(ctx, request.unique_identifier, for_update=False)
    if request.attribute_references:
        # The object's attributes by key, once: a request naming thousands of keys (of an
        # object holding thousands) costs their sum, not their product (it held the
        # writer thread, which every tenant shares, for seconds).
        by_key: dict[Key, list[Attribute]] = {}
        for attribute in obj.attributes:
            by_key.setdefault(_key(attribute), []).append(attribute)
        chosen: list[Attribute] = []
        seen: set[Key] = set()
        for reference in request.attribute_references:
            key = _key(reference)
            if key in seen:
                # KMIP Test Cases 1.1 §17.1: a name asked twice is refused.
                raise KmipError(ResultReason.INVALID_FIELD,
                                f"{_key_label(key)} is asked for more than once")
            seen.add(key)
            chosen += sorted(by_key.get(key, ()), key=lambda a: a.index or 0)
    else:
        chosen = list(obj.attributes)
    return GetAttributesResponse(unique_identifier=obj.uid, attributes=[
        _on_wire(a, keep_zero=_client_managed_instances(a)) for a in chosen])


def get_attribute_list(ctx: OperationContext,
                       request: GetAttributeListRequest) -> GetAttributeListResponse:
    """The names (1.x) or references (2.x) of the attributes the object has, each once."""
    obj = _load(ctx, request.unique_identifier, for_update=False)
    references: list[AttributeReference] = []
    seen: set[Key] = set()
    for attribute in obj.attributes:
        key = _key(attribute)
        if key not in seen:
            seen.add(key)
            references.append(AttributeReference(attribute.tag, attribute.vendor_identification,
                                                 attribute.name))
    return GetAttributeListResponse(unique_identifier=obj.uid, attribute_references=references)


# Changing --------------------------------------------------------------------------------

def add_attribute(ctx: OperationContext, request: AddAttributeRequest) -> AddAttributeResponse:
    """Add an instance: the first value of any attribute, or a further value of a
    multi-valued one. 1.x answers with the attribute and its new index."""
    obj = _load(ctx, request.unique_identifier)
    new = request.attribute
    label = _label(new)
    _require_value(new, label)
    if ctx.version < _V2 and new.index is not None:
        # KMIP 1.4 §4.14: "The Attribute Index SHALL NOT be specified in the request".
        raise KmipError(ResultReason.INVALID_FIELD,
                        "Add Attribute takes no Attribute Index; the server assigns it")
    rule = _modifiable(new, ctx.version, label)
    existing = _instances(obj, _key(new))
    if existing and not rule.multi:
        raise _single_valued(label)
    _check_value(new, ctx.version, label)
    _check_unique_name(existing, new, ctx.version)
    _check_date(ctx, obj, new.tag)
    added = Attribute(new.tag, _as_stored(new, None), _free_index(existing),
                      new.vendor_identification, new.name)
    obj.attributes.append(added)
    answer = _on_wire(added)
    _save(ctx, obj, label)
    return AddAttributeResponse(unique_identifier=obj.uid, attribute=answer)


def modify_attribute(ctx: OperationContext,
                     request: ModifyAttributeRequest) -> ModifyAttributeResponse:
    """Give an existing instance a new value: 1.x names it by Attribute Index (0 when
    omitted), 2.x by its Current Attribute value (optional when there is one instance).

    Whichever of the two a request gives is honoured whatever version it declares (a
    request may use another version's fields, docs/conformance.md): a 2.x request's
    Attribute Index, or a 1.x request's Current Attribute, names the instance it names,
    never the first or only one; both at once is refused."""
    obj, new, label, existing = _change(ctx, request)
    current = request.current_attribute
    if current is not None and new.index is not None:
        raise KmipError(ResultReason.INVALID_FIELD,
                        "name the instance by Current Attribute or by Attribute Index, not both")
    if current is None and (ctx.version < _V2 or new.index is not None):
        target = _by_index(existing, new.index, label, missing=ResultReason.INVALID_FIELD)
    else:
        target = _by_value(existing, current, new, label)
    _check_value(new, ctx.version, label)
    _check_unique_name([a for a in existing if a is not target], new, ctx.version)
    _check_date(ctx, obj, new.tag)
    modified = Attribute(target.tag, _as_stored(new, target.value), target.index,
                         target.vendor_identification, target.name)
    _replace(obj, target, modified)
    answer = _on_wire(modified, keep_zero=new.index is not None)
    _save(ctx, obj, label)
    return ModifyAttributeResponse(unique_identifier=obj.uid, attribute=answer)


def delete_attribute(ctx: OperationContext,
                     request: DeleteAttributeRequest) -> DeleteAttributeResponse:
    """Delete one instance (1.x: by name and index; 2.x: by Current Attribute value), or
    every instance (2.x: by Attribute Reference). 1.x answers with the deleted attribute.

    As for Modify Attribute, a Current Attribute or an Attribute Index names the instance
    it names whatever version the request declares; both at once is refused."""
    obj = _load(ctx, request.unique_identifier)
    current = request.current_attribute
    reference = request.attribute_reference
    if current is not None and request.attribute_index is not None:
        raise KmipError(ResultReason.INVALID_FIELD,
                        "name the instance by Current Attribute or by Attribute Index, not both")
    if current is not None:
        if reference is not None and _key(reference) != _key(current):
            raise KmipError(ResultReason.INVALID_FIELD,
                            "Current Attribute and Attribute Reference name different attributes")
        key = _key(current)
    elif reference is not None:
        key = _key(reference)
    else:
        raise KmipError(ResultReason.INVALID_MESSAGE,
                        "Delete Attribute needs the attribute to delete "
                        + ("(Current Attribute or Attribute Reference)" if ctx.version >= _V2
                           else "(Attribute Name)"))
    label = _key_label(key)
    rule = _rule(key)
    if not rule.delete:
        raise protected_error(ctx.version, f"{label} may not be deleted by a client")
    existing = _instances(obj, key)
    if current is not None:
        doomed = [_by_value(existing, current, current, label)]
    elif ctx.version < _V2 or request.attribute_index is not None:
        doomed = [_by_index(existing, request.attribute_index, label,
                            missing=ResultReason.ITEM_NOT_FOUND)]
    else:
        if not existing:
            raise KmipError(ResultReason.ATTRIBUTE_NOT_FOUND, f"the object has no {label}")
        doomed = existing
    obj.attributes = [a for a in obj.attributes if not any(a is d for d in doomed)]
    answer = _on_wire(doomed[0], keep_zero=request.attribute_index is not None)
    _save(ctx, obj, label)
    return DeleteAttributeResponse(unique_identifier=obj.uid, attribute=answer)


def set_attribute(ctx: OperationContext, request: SetAttributeRequest) -> UniqueIdentifierResponse:
    """KMIP 2.x: give an attribute this one value, adding it if the object has none;
    refused when the object has several instances of it."""
    _require_v2(ctx, "Set Attribute")
    obj, new, label, existing = _change(ctx, request)
    if len(existing) > 1:
        raise KmipError(ResultReason.MULTI_VALUED_ATTRIBUTE,
                        f"the object has {len(existing)} values of {label}; change one with "
                        "Modify Attribute")
    _check_value(new, ctx.version, label)
    _check_date(ctx, obj, new.tag)
    value = Attribute(new.tag, _as_stored(new, existing[0].value if existing else None), None,
                      new.vendor_identification, new.name)
    if existing:
        value.index = existing[0].index
        _replace(obj, existing[0], value)
    else:
        obj.attributes.append(value)
    _save(ctx, obj, label)
    return UniqueIdentifierResponse(unique_identifier=obj.uid)


def adjust_attribute(ctx: OperationContext,
                     request: AdjustAttributeRequest) -> UniqueIdentifierResponse:
    """KMIP 2.x: increment or decrement a numeric or date attribute by the Adjustment
    Value, or negate a number or a Boolean, in place."""
    _require_v2(ctx, "Adjust Attribute")
    obj = _load(ctx, request.unique_identifier)
    key = _key(request.attribute_reference)
    label = _key_label(key)
    if not _rule(key).modify:
        raise protected_error(ctx.version, f"{label} is set by the server only")
    existing = _instances(obj, key)
    if not existing:
        raise KmipError(ResultReason.ATTRIBUTE_NOT_FOUND, f"the object has no {label}")
    if len(existing) > 1:
        raise KmipError(ResultReason.MULTI_VALUED_ATTRIBUTE,
                        f"the object has {len(existing)} values of {label}; adjust needs one")
    target = existing[0]
    adjusted = _adjusted(target.value, request.adjustment_type, request.adjustment_value, label)
    _check_date(ctx, obj, target.tag)
    _replace(obj, target, Attribute(target.tag, adjusted, target.index,
                                    target.vendor_identification, target.name))
    _save(ctx, obj, label)
    return UniqueIdentifierResponse(unique_identifier=obj.uid)


# Helpers ---------------------------------------------------------------------------------

def _as_stored(new: Attribute, old: Item | None) -> Item | None:
    """The value ``new`` is stored with: as given, but for Usage Limits, whose Count is the
    server's (:func:`kcm.core.usage_limits.as_stored`; ``old``: the value it replaces)."""
    if new.tag == Tag.USAGE_LIMITS:
        return usage_limits.as_stored(new.value, old)
    return new.value


def _load(ctx: OperationContext, unique_identifier: str | Item | None, *,
          for_update: bool = True) -> managed.StoredObject:
    """The object, its instances numbered; a change also needs the policy's consent. Read
    only (``for_update`` False), the numbered instances may be shared with other requests:
    the caller does not change them."""
    obj = managed.load(ctx, ctx.id_placeholder.resolve(unique_identifier),
                       for_update=for_update)
    if for_update:
        policy.check_lifecycle_change(ctx.principal, obj.level)
        _number(obj.attributes)
    else:
        obj.number_to_read(_number)
    return obj


def _check_succession(ctx: OperationContext, obj: managed.StoredObject) -> None:
    """Refuse an Activation Date of a tenant or service key version that Re-key made (not
    yet active) after the Deactivation Date of the version it replaces: the tenant or
    service would have no active key between the two (every Create, every L4 seal
    refused), the Re-key having set the old version's end at the new one's start once."""
    if obj.level not in (LEVEL_TENANT_KEY, LEVEL_SERVICE_KEY) or obj.state != State.PRE_ACTIVE:
        return
    activation = obj.value(Tag.ACTIVATION_DATE)
    replaced = next((a.typed.linked_object_identifier for a in obj.attributes
                     if a.tag == Tag.LINK and isinstance(a.typed, Link)
                     and a.typed.link_type == LinkType.REPLACED_OBJECT_LINK), None)
    if activation is None or replaced is None:
        return
    try:
        predecessor = managed.load(ctx, str(replaced), for_update=False)
    except KmipError:
        return  # (gone: nothing is left to hand over from)
    ends = predecessor.value(Tag.DEACTIVATION_DATE)
    if ends is not None and activation > ends and predecessor.state in (
            State.ACTIVE, State.PRE_ACTIVE):
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"the version this key replaces deactivates at {ends}: an Activation "
                        f"Date after it leaves no active key between the two; move that "
                        f"Deactivation Date first")


def _save(ctx: OperationContext, obj: managed.StoredObject, label: str) -> None:
    """Settle the state the (possibly new) dates imply, then save."""
    _check_succession(ctx, obj)
    moved = lifecycle.state_at(obj.state, lifecycle.LifecycleDates(
        obj.value(Tag.ACTIVATION_DATE), obj.value(Tag.DEACTIVATION_DATE)), ctx.now)
    if moved != obj.state:
        obj.set(Tag.STATE, int(moved))
    for attribute in obj.attributes:
        if attribute.index == 0:
            attribute.index = None
    was, now = managed.stored_flags(obj), flags_of(obj.attributes)
    if was != now:
        policy.check_protection_change(
            ctx.principal, was_extractable=was.extractable, was_sensitive=was.sensitive,
            extractable=now.extractable, sensitive=now.sensitive)
    managed.save(ctx, obj)
    ctx.audit_detail["attribute"] = label


def _key(item: Attribute | AttributeReference) -> Key:
    if item.tag == VENDOR_TAG:
        return (VENDOR_TAG, item.vendor_identification, item.name)
    return (item.tag, None, None)


def _rule(key: Key) -> Rule:
    tag, vendor, name = key
    return rule_for(Attribute(tag, None, vendor_identification=vendor, name=name))


def _number(attributes: list[Attribute]) -> None:
    """Give every instance an index: its own when it has a unique one, else the lowest free."""
    used: dict[Key, set[int]] = {}
    unnumbered = []
    for attribute in attributes:
        taken = used.setdefault(_key(attribute), set())
        if attribute.index is None or attribute.index < 0 or attribute.index in taken:
            unnumbered.append(attribute)
        else:
            taken.add(attribute.index)
    for attribute in unnumbered:
        taken = used[_key(attribute)]
        attribute.index = _lowest_free(taken)
        taken.add(attribute.index)


def _lowest_free(taken: Iterable[int]) -> int:
    taken = set(taken)
    index = 0
    while index in taken:
        index += 1
    return index


def _free_index(existing: list[Attribute]) -> int:
    return _lowest_free(a.index for a in existing if a.index is not None)


def _instances(obj: managed.StoredObject, key: Key) -> list[Attribute]:
    """The object's instances of one attribute, by index."""
    return sorted((a for a in obj.attributes if _key(a) == key), key=lambda a: a.index or 0)


def _replace(obj: managed.StoredObject, old: Attribute, new: Attribute) -> None:
    for position, attribute in enumerate(obj.attributes):
        if attribute is old:
            obj.attributes[position] = new
            return


def _on_wire(attribute: Attribute, *, keep_zero: bool = False) -> Attribute:
    """The attribute as a response shows it; index 0 only when ``keep_zero``."""
    index = attribute.index if keep_zero else attribute.index or None
    return Attribute(attribute.tag, attribute.value, index, attribute.vendor_identification,
                     attribute.name)


def _client_managed_instances(attribute: Attribute) -> bool:
    rule = rule_for(attribute)
    return rule.multi and rule.modify


def _by_index(existing: list[Attribute], index: int | None, label: str, *,
              missing: ResultReason) -> Attribute:
    """1.x: the instance at ``index`` (0 when omitted, KMIP 1.4 §4.15–§4.16).

    ``missing`` is the reason when the object has no such attribute at all (KMIP 1.4 §11:
    Invalid Field for Modify, Item Not Found for Delete).
    """
    if not existing:
        hint = "; add it with Add Attribute" if missing == ResultReason.INVALID_FIELD else ""
        raise KmipError(missing, f"the object has no {label}{hint}")
    wanted = index or 0
    for attribute in existing:
        if (attribute.index or 0) == wanted:
            return attribute
    raise KmipError(ResultReason.ITEM_NOT_FOUND,
                    f"the object has no {label} with Attribute Index {wanted}")


def _by_value(existing: list[Attribute], current: Attribute | None, new: Attribute,
              label: str) -> Attribute:
    """2.x: the instance whose value is ``current``'s; without one, the only instance."""
    if current is not None and _key(current) != _key(new):
        raise KmipError(ResultReason.INVALID_FIELD,
                        "Current Attribute and New Attribute name different attributes")
    if not existing:
        raise KmipError(ResultReason.ATTRIBUTE_NOT_FOUND, f"the object has no {label}")
    if current is None:
        if len(existing) > 1:
            raise KmipError(ResultReason.MULTI_VALUED_ATTRIBUTE,
                            f"the object has {len(existing)} values of {label}; name the one "
                            "to change with Current Attribute")
        return existing[0]
    for attribute in existing:
        if _same_value(attribute.value, current.value):
            return attribute
    raise KmipError(ResultReason.ATTRIBUTE_INSTANCE_NOT_FOUND,
                    f"the object has no {label} with the value given as Current Attribute")


def _same_value(stored: Item | None, given: Item | None) -> bool:
    if stored is None or given is None:
        return stored is given
    if stored.type is ItemType.STRUCTURE and given.type is ItemType.STRUCTURE:
        return len(stored) == len(given) and all(
            _same_value(a, b) for a, b in zip(stored, given, strict=True))
    # Width (Big Integer padding) is the sender's choice, not part of the value.
    return (stored.tag == given.tag and stored.type == given.type
            and type(stored.value) is type(given.value) and stored.value == given.value)


def _change(ctx: OperationContext, request: ModifyAttributeRequest | SetAttributeRequest
            ) -> tuple[managed.StoredObject, Attribute, str, list[Attribute]]:
    """What a Modify or Set Attribute changes: the object, the new attribute (with a value,
    of a kind a client may change), its label, and the object's instances of it."""
    obj = _load(ctx, request.unique_identifier)
    new = request.attribute
    label = _label(new)
    _require_value(new, label)
    _modifiable(new, ctx.version, label)
    check_hierarchy_mask(new, obj.level, ctx.version)
    return obj, new, label, _instances(obj, _key(new))


def _modifiable(attribute: Attribute, version: Version, label: str) -> Rule:
    """The rule of an attribute a client gives a value (Add, Modify, Set), refused when it
    is none the version offers (:func:`check_offered`) or a client may not change it."""
    check_offered(attribute, version)
    rule = rule_for(attribute)
    if not rule.modify:
        if rule.on_create:
            raise protected_error(version, f"{label} can be set only when the object is "
                                           "created")
        raise protected_error(version, f"{label} is set by the server only")
    return rule


def _single_valued(label: str) -> KmipError:
    # KMIP 1.4 §11 (Add Attribute) answers "The specified attribute already exists" with
    # Illegal Operation.
    return KmipError(ResultReason.ATTRIBUTE_SINGLE_VALUED,
                     f"the object already has {label}, which has a single value; change it "
                     "with Modify or Set Attribute", v1_reason=ResultReason.ILLEGAL_OPERATION)


def _check_unique_name(others: list[Attribute], new: Attribute, version: Version) -> None:
    """The same Name twice on one object would make its instances indistinguishable.
    (Names need not be unique across objects: the server does not enforce that.)"""
    if new.tag != Tag.NAME:
        return
    if any(_same_value(a.value, new.value) for a in others):
        reason = ResultReason.NON_UNIQUE_NAME_ATTRIBUTE
        raise KmipError(reason, "the object already has this Name")


def _check_date(ctx: OperationContext, obj: managed.StoredObject, tag: int) -> None:
    check_hierarchy_date(tag, obj.level, ctx.version)
    check_date_change(tag, obj.state, obj.value(tag), ctx.now, ctx.version)


def _require_value(attribute: Attribute, label: str) -> None:
    if attribute.value is None:
        raise KmipError(ResultReason.INVALID_MESSAGE, f"{label} has no Attribute Value")


def _require_v2(ctx: OperationContext, name: str) -> None:
    if ctx.version < _V2:
        raise KmipError(ResultReason.OPERATION_NOT_SUPPORTED,
                        f"{name} exists from KMIP 2.0 on; this request is "
                        f"KMIP {ctx.version[0]}.{ctx.version[1]}")


def _check_value(attribute: Attribute, version: Version, label: str) -> None:
    """Refuse a value of the wrong type for a known attribute, or a malformed structure."""
    value = attribute.value
    if value is None or attribute.tag == VENDOR_TAG:
        return
    check_value_type(attribute, version, label)
    model = TYPED_ATTRIBUTES.get(attribute.tag)
    if model is not None:
        model.from_item(value, version)


def _adjusted(value: Item | None, adjustment: int, by: Item | None, label: str) -> Item:
    """``value`` after the adjustment (KMIP 2.1 Adjust Attribute, Adjustment Type)."""
    if value is None:  # stored attributes always have one; kept for the type checker
        raise KmipError(ResultReason.ATTRIBUTE_NOT_FOUND, f"{label} has no value")
    if adjustment == AdjustmentType.NEGATE:
        if value.type is ItemType.BOOLEAN:
            return Item(value.tag, value.type, not value.value)
        if value.type not in _NUMBERS:
            raise KmipError(ResultReason.INVALID_DATA_TYPE,
                            f"{label} is not a number or a Boolean; it cannot be negated")
        return _ranged(value, -int(value.value), label)  # type: ignore[arg-type]
    if adjustment not in (AdjustmentType.INCREMENT, AdjustmentType.DECREMENT):
        raise KmipError(ResultReason.INVALID_FIELD, f"unknown Adjustment Type {int(adjustment)}")
    if value.type not in _NUMBERS | _DATES:
        raise KmipError(ResultReason.INVALID_DATA_TYPE,
                        f"{label} is not a number or a date; it cannot be incremented")
    if by is None:
        raise KmipError(ResultReason.INVALID_MESSAGE,
                        "Increment and Decrement need an Adjustment Value")
    if by.type not in _NUMBERS or isinstance(by.value, bool):
        raise KmipError(ResultReason.INVALID_DATA_TYPE, "Adjustment Value must be a number")
    step = int(by.value)  # type: ignore[arg-type]
    if value.type is ItemType.DATE_TIME_EXTENDED:
        step *= 1_000_000  # the step is in seconds; the value in microseconds
    if adjustment == AdjustmentType.DECREMENT:
        step = -step
    return _ranged(value, int(value.value) + step, label)  # type: ignore[arg-type]


def _ranged(value: Item, result: int, label: str) -> Item:
    low, high = _RANGES.get(value.type, (result, result))
    if not low <= result <= high:
        raise KmipError(ResultReason.NUMERIC_RANGE,
                        f"the adjusted {label} does not fit its type")
    return Item(value.tag, value.type, result)


def _label(attribute: Attribute) -> str:
    return _key_label(_key(attribute)) if attribute.tag == VENDOR_TAG or not attribute.name \
        else attribute.name


def _key_label(key: Key) -> str:
    tag, vendor, name = key
    if tag == VENDOR_TAG:
        return f"{vendor}-{name}" if vendor else str(name)
    return registry.tag_name(tag) or f"attribute 0x{tag:06X}"
