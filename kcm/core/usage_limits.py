"""Usage Limits (KMIP 1.4 §3.21, 2.1 §4.63): what is left of a key's, and counting each
protecting use against it.

"It SHALL only reflect their usage for applying that protection": Encrypt (with a
Symmetric or a Public Key), Sign, MAC and wrapping another key (a Get with a Key Wrapping
Specification) count; Decrypt, Signature Verify, MAC Verify, unwrapping and Hash do not.
The handlers of those operations call :func:`consume_usage`; this module decides the rest.

* Usage Limits Unit Byte counts the bytes protected (each part of a stream); Object, or
  no unit, counts one per operation, a stream once at its first part (its Correlation
  Values are used once each, :mod:`kcm.core.stream_parts`, so no stream runs twice).
* A use beyond what is left is refused Permission Denied, which the OASIS CS-BC-M-7 cases
  expect, and takes nothing.
* The new Usage Limits Count is written to the key in the request's transaction, and a
  batch item that fails gives its count back with its savepoint. Two requests, on one core
  or several, cannot both spend the last use because every write transaction takes the
  writers' lock before it reads anything (PostgreSQL's advisory lock, SQLite's
  ``BEGIN IMMEDIATE``: :func:`kcm.core.store.repository.lock_writers`), so the key it reads,
  cached or not, is the last committed one and no other writer changes it before this one
  commits; and the count is written by an UPDATE conditional on the row's revision
  (:func:`kcm.core.store.repository.update_columns`), which would refuse a stale copy
  rather than lose a use. The locked read again of a key read unlocked
  (:func:`consume_usage`) adds nothing to that; it is kept as a second guard, and no test
  depends on it.

Keys a gateway uses (L3, L4) are counted by usage reports and rotation policies instead.
"""

from __future__ import annotations

from kcm.core import managed
from kcm.core.context import OperationContext, about_to_write
from kcm.kmip.enums import ResultReason, UsageLimitsUnit
from kcm.kmip.errors import KmipError
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType

__all__ = ["as_stored", "consume_usage", "remaining_usage"]


def as_stored(value: Item | None, old: Item | None = None) -> Item:
    """The Usage Limits a client gives (``value``), as the key keeps them: its Total and
    Unit, and the Count the server keeps. KMIP 1.4 §3.21, 2.1 §4.63: a client sets the Total
    and Unit; the Count is the server's (a client's was taken as it was, so one who may
    change a key's attributes could give it 1,000 uses of a Total of 2). A new value
    (``old`` None: a new key, or an Add) starts with its Total left; a changed one keeps
    what was used of the old (``old``), so the Total may not go below that, and the Unit
    may not change (what was counted would mean something else)."""
    if value is None or value.type is not ItemType.STRUCTURE:
        raise KmipError(ResultReason.INVALID_FIELD, "Usage Limits must be a structure")
    fields = {child.tag: child.value for child in value.value}  # type: ignore[union-attr]
    total, unit = fields.get(Tag.USAGE_LIMITS_TOTAL), fields.get(Tag.USAGE_LIMITS_UNIT)
    if not isinstance(total, int) or total < 0:
        raise KmipError(ResultReason.INVALID_FIELD, "Usage Limits needs a Usage Limits Total "
                        "of 0 or more")
    count = total
    if old is not None and old.type is ItemType.STRUCTURE:
        before = {child.tag: child.value for child in old.value}  # type: ignore[union-attr]
        old_total = before.get(Tag.USAGE_LIMITS_TOTAL)
        if isinstance(old_total, int):
            # (Object, or none: each use counts one; Byte: the bytes protected)
            if ((before.get(Tag.USAGE_LIMITS_UNIT) == UsageLimitsUnit.BYTE)
                    != (unit == UsageLimitsUnit.BYTE)):
                raise KmipError(ResultReason.INVALID_FIELD,
                                "the Usage Limits Unit of a key cannot change")
            used = old_total - int(before.get(Tag.USAGE_LIMITS_COUNT, old_total))
            if total < used:
                raise KmipError(ResultReason.INVALID_FIELD,
                                f"the Usage Limits Total cannot go below what was used ({used})")
            count = total - used
    children = [Item(Tag.USAGE_LIMITS_TOTAL, ItemType.LONG_INTEGER, total),
                Item(Tag.USAGE_LIMITS_COUNT, ItemType.LONG_INTEGER, count)]
    if unit is not None:
        children.append(Item(Tag.USAGE_LIMITS_UNIT, ItemType.ENUMERATION, int(unit)))
    return Item(Tag.USAGE_LIMITS, ItemType.STRUCTURE, children)


def remaining_usage(obj: managed.StoredObject) -> tuple[int, int | None] | None:
    """(uses left, Usage Limits Unit) of the object's Usage Limits, or None when it has
    none. Without a Count, nothing was used yet: the Total is left."""
    attribute = obj.first(Tag.USAGE_LIMITS)
    if attribute is None or attribute.value is None or attribute.value.type is not \
            ItemType.STRUCTURE:
        return None
    fields = {child.tag: child.value for child in attribute.value.value}
    left = fields.get(Tag.USAGE_LIMITS_COUNT, fields.get(Tag.USAGE_LIMITS_TOTAL))
    if left is None:
        return None
    return int(left), fields.get(Tag.USAGE_LIMITS_UNIT)


def consume_usage(ctx: OperationContext, obj: managed.StoredObject, amount_bytes: int, *,
                  first: bool = True, locked: bool = False) -> None:
    """Count one protecting use of ``obj`` over ``amount_bytes`` bytes against its Usage
    Limits, if it has any; Permission Denied when not enough is left. ``first``: a whole
    message or a stream's first part (False for the stream's later parts). ``locked``:
    ``obj`` was read for update in this transaction; otherwise a limited key is read again,
    locked, and the count written to that copy (a second guard only: the writers' lock and
    the revision-conditional UPDATE already keep the count exact, see the module's
    docstring)."""
    if remaining_usage(obj) is None:
        return  # the common case costs nothing more
    if not locked:
        obj = managed.load(ctx, obj.uid, for_update=True)
    usage = remaining_usage(obj)
    if usage is None:
        return
    left, unit = usage
    amount = amount_bytes if unit == UsageLimitsUnit.BYTE else int(first)
    if amount > left:
        raise KmipError(ResultReason.PERMISSION_DENIED,
                        f"the key's usage limit is used up ({left} left, {amount} needed)")
    if amount:
        about_to_write(ctx.session, counting=obj.uid)
        _write_count(ctx, obj, left - amount)


def _write_count(ctx: OperationContext, obj: managed.StoredObject, count: int) -> None:
    attribute = obj.first(Tag.USAGE_LIMITS)
    assert attribute is not None and attribute.value is not None
    children = [c for c in attribute.value.value if c.tag != Tag.USAGE_LIMITS_COUNT]
    # Total, Count, Unit is the spec's order (KMIP 1.4 §3.21, 2.1 §4.63).
    position = 1 if children and children[0].tag == Tag.USAGE_LIMITS_TOTAL else 0
    children.insert(position, Item(Tag.USAGE_LIMITS_COUNT, ItemType.LONG_INTEGER, count))
    obj.set(Tag.USAGE_LIMITS, children, ItemType.STRUCTURE)
    managed.save(ctx, obj)
