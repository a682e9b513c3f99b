"""Locate (KMIP 1.4 §4.9, 2.1 §6.1.27): the caller's objects matching the given attributes."""

from __future__ import annotations

from typing import Any

from kcm.core import attribute_keys, managed, policy
from kcm.core.attribute_blob import decode_attributes
from kcm.core.context import OperationContext
from kcm.core.operations._objects_common import attribute_identity
from kcm.core.store import repository
from kcm.kernel import lifecycle
from kcm.kmip.attributes import VENDOR_TAG, Attribute, attribute_label, defined_in
from kcm.kmip.enums import (
    ObjectGroupMember,
    ResultReason,
    State,
    StorageStatusMask,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import tag_label
from kcm.kmip.payloads import (
    LocateRequest,
    LocateResponse,
)
from kcm.kmip.tags import Tag
from kcm.kmip.versions import Version
from kcm.ttlv import Item, ItemType

#: The Object Type each managed-object structure stands for.


#: The largest Date-Time (a signed 64-bit count of seconds, in every version). A Locate
#: criterion of this value stands for a date the object does not have (2.1 §6.1.27): one
#: value matches objects without the date, a range up to it objects without it too.
UNDEFINED_DATE = (1 << 63) - 1

_COLUMN_FILTERS = {
    Tag.OBJECT_TYPE: "object_type", Tag.CRYPTOGRAPHIC_ALGORITHM: "algorithm",
    Tag.CRYPTOGRAPHIC_LENGTH: "length", Tag.UNIQUE_IDENTIFIER: "uid",
}
#: The criteria the store judges whole from its columns (one of each): those of
#: :data:`_COLUMN_FILTERS` and the Cryptographic Usage Mask (every requested bit set).
_STORE_JUDGED = frozenset({*_COLUMN_FILTERS, Tag.CRYPTOGRAPHIC_USAGE_MASK})
#: How many Link or vendor attribute criteria the store narrows the search by (one
#: subquery each, :mod:`kcm.core.attribute_keys`); the others are judged on the objects
#: those leave (a request may carry a thousand criteria).
MAX_KEY_FILTERS = 4


def locate(ctx: OperationContext, request: LocateRequest) -> LocateResponse:
    """The caller's tenant's objects matching every attribute of the request, newest first.

    Attributes compare by equality, with the spec's exceptions (1.4 §4.9, 2.1 §6.1.27):
    one value of a date attribute matches that date, two values an inclusive range, and
    the largest Date-Time stands for a date the object does not have; a Cryptographic
    Usage Mask matches objects whose mask has every requested bit; a structure matches
    field by field, a field left out matching anything; Usage Limits match objects whose
    Total and Count are at least those asked.

    At most ``ctx.max_locate_results`` identifiers are returned: Maximum Items is "the
    maximum number of object identifiers the server MAY return", so a smaller one is
    honoured and an absent or larger one is the server's cap. The search ends as soon as
    the page is full. A client that pages with Offset Items is also told how many matched
    (Located Items; a client with more objects than the cap pages that way): the store
    counts them when it judges every criterion itself, else the search goes on to count
    every match. A long search stops when the request must (``ctx.check_stop``).
    """
    tenant = policy.tenant_of(ctx.principal)
    services = policy.object_services(ctx.principal, ctx.server_info.access)
    maximum, offset = request.maximum_items, request.offset_items
    if maximum is not None and maximum < 0 or offset is not None and offset < 0:
        raise KmipError(ResultReason.INVALID_FIELD,
                        "Maximum Items and Offset Items must not be negative")
    cap = ctx.max_locate_results
    capped = cap is not None and (maximum is None or maximum > cap)
    limit = cap if capped else maximum
    start = offset or 0
    # Located Items (with Offset Items, since KMIP 1.3) needs every match counted.
    counting = offset is not None and ctx.version >= (1, 3)
    criteria = _Criteria(list(request.attributes or []), ctx.version)
    storage = request.storage_status_mask or StorageStatusMask.ON_LINE_STORAGE
    fresh_only = request.object_group_member == ObjectGroupMember.GROUP_MEMBER_FRESH
    # The store counts the matches when it judges every criterion; else the search does.
    count_in_store = counting and criteria.judged_by_store and not fresh_only
    # Else the search ends with the page; one match more tells whether the cap cut it.
    enough = (None if counting and not count_in_store or limit is None
              else start + limit + (1 if capped else 0))
    located: int | None = None
    if not storage & (StorageStatusMask.ON_LINE_STORAGE | StorageStatusMask.DESTROYED_STORAGE):
        found: list[str] = []  # only archived objects were asked for; nothing is archived
    elif not policy.is_provisioned(ctx.session, ctx.principal):
        found = []  # an application whose service does not exist holds nothing
    elif criteria.names_a_nul():
        # No object has a Unique Identifier, Name or Object Group with a NUL character
        # (refused as they are made); PostgreSQL's text could not even be asked for one.
        found = []
        located = 0 if count_in_store else None
    else:
        found = []
        with_attributes = fresh_only or criteria.needs_attributes
        # The store keeps to the objects the policy lets the caller see (its levels and
        # services) and to the storage asked for: an application's few objects are not
        # sought among another service's.
        filters = dict(criteria.store_filters(), levels=policy.locate_levels(ctx.principal),
                       services=services, destroyed=_destroyed_wanted(storage))
        if count_in_store:
            located = repository.count_located(ctx.session, tenant, **filters)
        rows = repository.locate_rows(ctx.session, tenant, with_attributes=with_attributes,
                                      **filters)
        # Newest first, as the OASIS test cases (TC-OFFSET-*) page through the results.
        for row in rows:
            if enough is not None and len(found) >= enough:
                break
            ctx.check_stop()
            obj = managed.StoredObject(row, decode_attributes(row.attributes)
                                       if with_attributes else [])
            state = lifecycle.state_at(obj.state, lifecycle.LifecycleDates(
                row.activation_date, row.deactivation_date), ctx.now)
            if fresh_only and obj.value(Tag.FRESH) is not True:
                continue
            if criteria.matches(obj, state):
                found.append(row.uid)
    page = found[start:]
    if limit is not None:
        page = page[:limit]
    cut = capped and len(found) > start + len(page)
    for uid in page:
        ctx.touched(uid)
    # KMIP 1.4 §4.9, 2.1 §6.1.27: a single identifier returned goes into the ID
    # Placeholder, unless more than one object matched and Maximum Items was omitted or
    # above one (an Offset Items page of one, say): then, as with several returned, it is
    # emptied, so a following item without an identifier fails rather than guesses.
    # ``found`` holds every match whenever that matters: it stops early only at Offset
    # Items + Maximum Items (+1), which one returned identifier never reaches (or the
    # store counted them).
    if counting and located is None:
        located = len(found)
    matched = len(found) if located is None else located
    several_matched = matched > 1 and (maximum is None or maximum > 1)
    if len(page) == 1 and not several_matched:
        ctx.id_placeholder.set(page[0])
    else:
        ctx.id_placeholder.value = None
    # Located Items is optional ("a server MAY elect to omit this value ... if it is unable
    # or unwilling to determine the total count"); it says how many matched when the
    # client pages with Offset Items.
    if cut:
        ctx.audit_detail["capped_at"] = cap
    return LocateResponse(located_items=located, unique_identifiers=page)


def _destroyed_wanted(storage: int) -> bool | None:
    """The store's ``destroyed`` filter for a Storage Status Mask: destroyed objects only,
    the others only, or both (None). No date moves an object into or out of Destroyed
    (:func:`kcm.kernel.lifecycle.state_at`), so the stored state decides."""
    online = bool(storage & StorageStatusMask.ON_LINE_STORAGE)
    destroyed = bool(storage & StorageStatusMask.DESTROYED_STORAGE)
    return None if online and destroyed else destroyed


class _Criteria:
    """The attributes of a Locate request, grouped for the store and for the check."""

    def __init__(self, attributes: list[Attribute], version: Version) -> None:
        self.version = version
        self.dates: dict[int, tuple[int, int]] = {}
        self.others: list[Attribute] = []
        by_tag: dict[int, list[Attribute]] = {}
        for attribute in attributes:
            if not defined_in(attribute, version):
                # As every operation that takes attributes (attribute_rules.check_offered;
                # the server's read-only y- attributes are searchable): a 1.3 client found
                # objects by a Description it can neither set nor see, and an unknown
                # name ("Foo Bar") was a Success finding nothing.
                raise KmipError(ResultReason.INVALID_ATTRIBUTE,
                                f"{attribute_label(attribute)} is not an attribute of KMIP "
                                f"{version[0]}.{version[1]}", v1_reason=ResultReason.INVALID_FIELD)
            if attribute.value is None:
                raise KmipError(ResultReason.INVALID_FIELD,
                                f"{tag_label(attribute.tag)} has no value to match")
            if (attribute.tag == Tag.CRYPTOGRAPHIC_USAGE_MASK
                    and attribute.value.type is not ItemType.INTEGER):
                raise KmipError(ResultReason.INVALID_FIELD,
                                "Cryptographic Usage Mask must be an Integer")
            by_tag.setdefault(attribute.tag, []).append(attribute)
        for tag, group in by_tag.items():
            if group[0].value.type is ItemType.DATE_TIME and tag != VENDOR_TAG:
                if len(group) > 2:
                    raise KmipError(ResultReason.INVALID_FIELD,
                                    f"{tag_label(tag)} may be given once (a date) or twice "
                                    "(a range)")
                values = sorted(a.value.value for a in group)
                self.dates[tag] = (values[0], values[-1])
            else:
                self.others += group

        self.needs_attributes = self._needs_attributes()
        #: Whether the store's filters alone decide a match: then it may count them. A
        #: State is judged from the columns but at the request's time, not by the store.
        self.judged_by_store = not self.needs_attributes and all(
            attribute.tag != Tag.STATE for attribute in self.others)

    def _needs_attributes(self) -> bool:
        """Whether judging an object takes its attributes: not when every criterion is a
        State (judged from the columns) or one value of a column the store filters on
        exactly."""
        if self.dates:
            return True
        seen: set[int] = set()
        for attribute in self.others:
            if attribute.tag == Tag.STATE:
                continue
            if attribute.tag not in _STORE_JUDGED or attribute.tag in seen:
                return True
            seen.add(attribute.tag)
        return False

    def names_a_nul(self) -> bool:
        """Whether a text the store would be asked to match exactly (a Unique Identifier,
        a Name Value, an Object Group) holds a NUL character."""
        filters = self.store_filters()
        return any(isinstance(filters.get(name), str) and "\x00" in filters[name]
                   for name in ("uid", "name", "group"))

    def store_filters(self) -> dict[str, Any]:
        """The keyword filters of :func:`repository.locate` these criteria imply."""
        filters: dict[str, Any] = {}
        keys: list[tuple[str, str]] = []
        for attribute in self.others:
            column = _COLUMN_FILTERS.get(attribute.tag)
            if column is not None and column not in filters:
                filters[column] = attribute.value.value
            elif attribute.tag == Tag.NAME and "name" not in filters:
                # A Name criterion may leave out the Name Value (a field is a wildcard).
                name_value = attribute.value.find(Tag.NAME_VALUE)
                if name_value is not None and name_value.type is ItemType.TEXT_STRING:
                    filters["name"] = name_value.value
            elif attribute.tag == Tag.OBJECT_GROUP and "group" not in filters:
                filters["group"] = attribute.value.value
            elif attribute.tag == Tag.CRYPTOGRAPHIC_USAGE_MASK and "usage_mask" not in filters:
                filters["usage_mask"] = attribute.value.value
            elif len(keys) < MAX_KEY_FILTERS:
                # A Link or vendor attribute: the store keeps the objects that have its key,
                # :meth:`matches` judges them in full.
                key = attribute_keys.criterion_key(attribute)
                if key is not None and key not in keys:
                    keys.append(key)
        if keys:
            filters["keys"] = keys
        # The store never matches an unset date: a range up to the largest Date-Time, which
        # unset dates match too, is judged in :meth:`matches` alone.
        dates = {managed.DATE_COLUMNS[tag]: bounds for tag, bounds in self.dates.items()
                 if tag in managed.DATE_COLUMNS and bounds[1] != UNDEFINED_DATE}
        if dates:
            filters["dates"] = dates
        return filters

    def matches(self, obj: managed.StoredObject, state: State) -> bool:
        """Whether ``obj`` (in ``state`` now) meets every criterion."""
        for tag, (low, high) in self.dates.items():
            value = obj.value(tag)
            if value is None:
                if high != UNDEFINED_DATE:
                    return False
            elif not low <= value <= high:
                return False
        exact = not self.needs_attributes  # then the store has judged the columns
        have_by_identity: dict[tuple[int, str | None, str | None], _Values] | None = None
        for wanted in self.others:
            if wanted.tag == Tag.STATE:
                if int(state) != wanted.value.value:
                    return False
            elif exact:
                continue
            elif wanted.tag == Tag.CRYPTOGRAPHIC_USAGE_MASK:
                mask = obj.value(Tag.CRYPTOGRAPHIC_USAGE_MASK)
                bits = wanted.value.value
                if mask is None or mask & bits != bits:
                    return False
            else:
                if have_by_identity is None:  # once per object: criteria x attributes
                    # would be quadratic (a request may carry a thousand of each)
                    have_by_identity = {}
                    for have in obj.attributes:
                        values = have_by_identity.get(attribute_identity(have))
                        if values is None:
                            values = have_by_identity[attribute_identity(have)] = _Values()
                        values.haves.append(have)
                values = have_by_identity.get(attribute_identity(wanted))
                if values is None or not values.matched_by(wanted):
                    return False
        return True


#: An object's values of one attribute that are compared one by one with a criterion;
#: with more, they are looked up by hash (:class:`_Values`).
_COMPARED = 8


class _Values:
    """An object's values of one attribute (its Names, say, a thousand at most), judged
    against many criteria of that attribute: a thousand Name criteria against a thousand
    Names compared each with each, 10^6 comparisons an object (0.6 s). A criterion whose
    value, or each of whose fields, is one plain value is looked up by hash instead
    (:func:`_lookup_keys`): an index of the values, and of the structures' fields, made
    once per object when first needed; any other criterion is compared with each value
    (:func:`_same_value`)."""

    __slots__ = ("_index", "haves")

    def __init__(self) -> None:
        self.haves: list[Attribute] = []
        self._index: dict[tuple[object, ...], set[int]] | None = None

    def matched_by(self, wanted: Attribute) -> bool:
        if wanted.value is None:
            return False
        keys = _lookup_keys(wanted.value) if len(self.haves) > _COMPARED else None
        index = None if keys is None else self._indexed()
        if index is None:
            return any(_same_value(wanted, have) for have in self.haves)
        found: set[int] | None = None
        for key in keys:  # (each field given must match a field of the same structure)
            hits = index.get(key)
            if not hits:
                return False
            found = hits if found is None else found & hits
            if not found:
                return False
        return True

    def _indexed(self) -> dict[tuple[object, ...], set[int]] | None:
        """Each plain value, and each plain field of a structure value, with the values
        (their positions) that hold it; None when one cannot be hashed."""
        if self._index is None:
            index: dict[tuple[object, ...], set[int]] = {}
            try:
                for position, have in enumerate(self.haves):
                    value = have.value
                    if value is None:
                        continue
                    if value.type is ItemType.STRUCTURE:
                        for got in value:
                            if got.type is not ItemType.STRUCTURE:
                                index.setdefault(_field_key(got), set()).add(position)
                    else:
                        index.setdefault(_value_key(value), set()).add(position)
            except TypeError:  # (an unhashable value: compared one by one)
                return None
            self._index = index
        return self._index


def _value_key(item: Item) -> tuple[object, ...]:
    return ("value", item.type, type(item.value), item.value)


def _field_key(item: Item) -> tuple[object, ...]:
    return ("field", item.tag, item.type, type(item.value), item.value)


def _lookup_keys(wanted: Item) -> list[tuple[object, ...]] | None:
    """What a value matching ``wanted`` must hold, as index keys (:class:`_Values`): its
    own plain value, or each of its fields when every one is plain (a structure's value
    matching when, for each field given, it has a field of that tag equal to it, as
    :func:`_value_matches` judges); None when it takes comparing (a nested structure, no
    field, a value matched by "at least", one that cannot be hashed)."""
    try:
        if wanted.type is not ItemType.STRUCTURE:
            if wanted.tag in _AT_LEAST:
                return None
            key = _value_key(wanted)
            hash(key)
            return [key]
        fields = list(wanted)
        if not fields or any(f.type is ItemType.STRUCTURE or f.tag in _AT_LEAST
                             for f in fields):
            return None
        keys = [_field_key(f) for f in fields]
        for key in keys:
            hash(key)
        return keys
    except TypeError:
        return None


def _same_value(wanted: Attribute, have: Attribute) -> bool:
    if have.value is None or wanted.value is None:
        return False
    return _value_matches(wanted.value, have.value)


def _value_matches(wanted: Item, have: Item) -> bool:
    """Whether an object's value ``have`` meets the criterion ``wanted`` (1.4 §4.9,
    2.1 §6.1.27). A structure matches field by field, in any order: each field given must
    match one of the object's fields of that tag, and a field left out matches anything
    (a Link with only a Linked Object Identifier matches whatever its Link Type). Usage
    Limits Total and Count match when the object's are equal or larger. Other values
    match when equal (Big Integer padding is the sender's choice, not part of it)."""
    if wanted.type is ItemType.STRUCTURE:
        if have.type is not ItemType.STRUCTURE:
            return False
        return all(any(_value_matches(field, got) for got in have if got.tag == field.tag)
                   for field in wanted)
    if wanted.type is not have.type or type(wanted.value) is not type(have.value):
        return False
    if wanted.tag in _AT_LEAST:
        return have.value >= wanted.value  # type: ignore[operator]
    return wanted.value == have.value


#: KMIP 2.1 §6.1.27: "the Usage Limits Count and Usage Limits Total ... equal to or
#: larger than" those of the request.
_AT_LEAST = frozenset({Tag.USAGE_LIMITS_TOTAL, Tag.USAGE_LIMITS_COUNT})
