"""Managed objects as the operations see them: attributes, state, wrapped material.

The attribute list is the record of truth; the store's columns (state, algorithm,
length, usage mask, dates, names, groups, the keys of Links and vendor attributes) are
copies for Locate, refreshed in :func:`save`. The
material is the object's KMIP structure (Symmetric Key, Secret Data, ...) encoded as
TTLV together with the protocol version it was encoded for, wrapped by the keyring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from kcm.core import attribute_keys, events, policy
from kcm.core.attribute_blob import decode_attributes, encode_attributes
from kcm.core.context import OperationContext, about_to_write
from kcm.core.keyring import Binding, Flags, flags_of
from kcm.core.store import repository
from kcm.core.store.object_cache import (
    CACHE_EPOCH_INFO,
    OBJECT_CACHE_INFO,
    CachedObject,
    ObjectCache,
    written_in,
)
from kcm.core.store.schema import LEVEL_SERVICE_KEY, LEVEL_TENANT_KEY
from kcm.core.store.schema import ManagedObject as Row
from kcm.kernel import lifecycle
from kcm.kernel.missing import object_not_found
from kcm.kmip.attributes import ATTRIBUTE_TYPES, MAX_ATTRIBUTES, Attribute, Name
from kcm.kmip.enums import ResultReason, State
from kcm.kmip.errors import KmipError
from kcm.kmip.fields import Struct
from kcm.kmip.objects import ManagedObjectCodec
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType, decode, encode

#: Attribute tags copied into date columns of the store.
DATE_COLUMNS: dict[int, str] = {
    Tag.INITIAL_DATE: "initial_date",
    Tag.ACTIVATION_DATE: "activation_date",
    Tag.DEACTIVATION_DATE: "deactivation_date",
    Tag.DESTROY_DATE: "destroy_date",
    Tag.COMPROMISE_DATE: "compromise_date",
    Tag.COMPROMISE_OCCURRENCE_DATE: "compromise_occurrence_date",
    Tag.LAST_CHANGE_DATE: "last_change_date",
    Tag.PROCESS_START_DATE: "process_start_date",
    Tag.PROTECT_STOP_DATE: "protect_stop_date",
}

T = TypeVar("T")
#: The earliest and the latest a Date-Time holds (a signed 64-bit count of seconds); the
#: latest is what clients give for "never" (and Locate for "no date").
EARLIEST_DATE, LATEST_DATE = -(1 << 63), (1 << 63) - 1


def bounded_date(when: int) -> int:
    """``when``, a date computed from others (a date plus an interval, a shift), kept within
    what a Date-Time holds: past the latest it is the latest ("never")."""
    return max(EARLIEST_DATE, min(when, LATEST_DATE))


_OBJECT_CODEC = ManagedObjectCodec()
_MATERIAL_VERSION = (2, 1)


class StoredObject:
    """One managed object loaded in the current transaction. ``row`` is its stored row
    in the session, or its columns as read (an immutable tuple, replaced by the row as
    written when :func:`save` changes it; :meth:`stored_row` puts it in the session for a
    change made through the ORM); ``cached`` is its entry in the store's object cache."""

    __slots__ = ("row", "_attributes", "_cached", "_stored")

    def __init__(self, row: Row | repository.ObjectColumns,
                 attributes: list[Attribute] | None,
                 cached: CachedObject | None = None,
                 stored: tuple[Attribute, ...] | None = None) -> None:
        """``attributes`` None: they are ``stored``'s, copied when first asked for (most
        operations only read a few values, which :meth:`value` and :meth:`first` find in
        ``stored`` itself)."""
        self.row = row
        self._attributes = attributes
        self._cached = cached
        #: The attributes as stored (not changed in place by operations), or None: a new
        #: object's. What the store's Name and Object Group copies hold (:func:`save`).
        self._stored = tuple(attributes or ()) if stored is None else stored

    @property
    def attributes(self) -> list[Attribute]:
        """The object's attributes, the operation's to change in place (copies of the
        stored ones: operations renumber them)."""
        attributes = self._attributes
        if attributes is None:
            attributes = self._attributes = [
                Attribute(a.tag, a.value, a.index, a.vendor_identification, a.name)
                for a in self._stored]
        return attributes

    @attributes.setter
    def attributes(self, attributes: list[Attribute]) -> None:
        self._attributes = attributes

    @property
    def cached(self) -> CachedObject | None:
        """The object's entry in the store's object cache (None: not read through it)."""
        return self._cached

    @property
    def changed_here(self) -> bool:
        """Whether this request may have changed the attributes (it asked for copies)."""
        return self._attributes is not None

    def number_to_read(self, number: Callable[[list[Attribute]], None]) -> None:
        """Have :attr:`attributes` numbered by ``number``, for an operation that only reads
        them: unless this request changed them, the numbered copies are made once per
        content of the object and shared, kept with its cache entry (:meth:`memo`). The
        operation must not change them in place."""
        if self._attributes is not None:  # changed in this request: numbered here alone
            number(self._attributes)
            return

        def numbered() -> tuple[Attribute, ...]:
            copies = self.attributes
            number(copies)
            return tuple(copies)

        self._attributes = list(self.memo("numbered attributes", numbered))

    def stored_row(self, session: Session) -> Row:
        """The object's row in ``session``, to change it."""
        row = self.row
        if not isinstance(row, Row):
            row = self.row = repository.attach_object(session, row)
        return row

    def memo(self, name: str, compute: Callable[[], T]) -> T:
        """``compute()``, kept with the object's cache entry for the next request that
        loads the same content (not kept once this object has been changed)."""
        cached = self._cached
        if cached is None or self.row.revision != cached.stamp[0]:
            return compute()
        views = cached.views
        if name in views:
            return views[name]  # type: ignore[no-any-return]
        value = views[name] = compute()
        return value

    def remember(self, name: str, value: object) -> None:
        """Keep ``value`` as ``name`` with the object's cache entry, replacing what was
        kept (not kept once this object has been changed); :meth:`memo` reads it back."""
        cached = self._cached
        if cached is not None and self.row.revision == cached.stamp[0]:
            cached.views[name] = value

    @property
    def uid(self) -> str:
        return self.row.uid

    @property
    def tenant(self) -> str:
        return self.row.tenant

    @property
    def object_type(self) -> int:
        return self.row.object_type

    @property
    def level(self) -> int | None:
        return self.row.level

    @property
    def state(self) -> State:
        value = self.value(Tag.STATE)
        return State(value if value is not None else self.row.state)

    # Attribute access -----------------------------------------------------
    def all(self, tag: int) -> list[Attribute]:
        return [a for a in self.attributes if a.tag == tag]

    def first(self, tag: int) -> Attribute | None:
        """The first attribute ``tag``, to read: change attributes through :meth:`set`,
        :meth:`remove` or :attr:`attributes` (it may be the stored attribute itself)."""
        attributes = self._attributes
        for attribute in self._stored if attributes is None else attributes:
            if attribute.tag == tag:
                return attribute
        return None

    def value(self, tag: int) -> Any:
        """The primitive value (or typed model) of a single-valued attribute, or None."""
        attribute = self.first(tag)
        return None if attribute is None else attribute.typed

    def set(self, tag: int, value: Any, item_type: ItemType | None = None) -> None:
        """Set a single-valued attribute (replacing any value)."""
        new = Attribute.of(tag, value, item_type)
        for i, attribute in enumerate(self.attributes):
            if attribute.tag == tag:
                self.attributes[i] = new
                return
        self.attributes.append(new)

    def remove(self, tag: int) -> None:
        self.attributes = [a for a in self.attributes if a.tag != tag]


# Loading ----------------------------------------------------------------------
def load(ctx: OperationContext, uid: str, *, for_update: bool = True) -> StoredObject:
    """The caller's object ``uid``; Item Not Found for a missing one or another tenant's
    (and for any, to an application whose service is not provisioned); Permission Denied
    for another service's object that the policy does not let an application use.

    A refusal names ``uid`` in the item's audit record, with why for a refusal because of
    who asks (:meth:`~kcm.core.context.OperationContext.refused`). Time-driven state changes
    (an Activation or Deactivation Date that has passed) are applied here, so every
    operation sees the state the object is in now.
    """
    try:
        obj = _usable(ctx, uid, for_update)
    except KmipError as e:
        ctx.refused(uid, e.why if isinstance(e, policy.AccessDenied) else None)
        raise
    _charge(ctx, len(obj._stored), len(obj.row.attributes or b""))
    current = obj.state
    moved = state_now(obj, ctx.now)
    if moved != current:
        obj.set(Tag.STATE, int(moved))
        if for_update:
            save(ctx, obj, changed=False)
    ctx.touched(uid)
    return obj


def _charge(ctx: OperationContext, count: int, size: int) -> None:
    """Count a read or write of ``count`` attributes (``size`` bytes) against the request's
    bound (:meth:`~kcm.core.context.RequestWork.charge_attributes`). The server's own
    steps (a tenant key's rotation, the sweeper's) pass contexts of their own, without
    one: their batches are bounded where they are made."""
    work = getattr(ctx, "work", None)
    if work is not None:
        work.charge_attributes(count, size)


def _usable(ctx: OperationContext, uid: str, for_update: bool) -> StoredObject:
    """The caller's object ``uid`` if the policy lets the caller use it; refused otherwise
    (:func:`load` says how). Whether another tenant holds ``uid`` is asked only once the
    caller's holds none, and for every such ``uid``, missing or not: the answer is the same
    either way, only the audit record tells them apart."""
    principal = ctx.principal
    tenant = policy.tenant_of(principal)
    if not policy.is_provisioned(ctx.session, principal):
        raise policy.hidden_object(uid, policy.not_provisioned(principal))
    if "\x00" in uid:
        # No object has one (identifiers are the server's); PostgreSQL's text could not
        # even be asked for it.
        raise object_not_found(uid)
    obj = _read(ctx.session, tenant, uid, for_update, ctx.keyring.check_row)
    if obj is None:
        if _held_elsewhere(ctx.session, uid):
            raise policy.hidden_object(uid, policy.ANOTHER_TENANTS_OBJECT)
        raise object_not_found(uid)
    policy.check_object_use(principal, ctx.server_info.access, obj.row.service)
    return obj


def _held_elsewhere(session: Session, uid: str) -> bool:
    """Whether some tenant holds an object ``uid`` (read, never locked)."""
    return session.scalar(select(Row.uid).where(Row.uid == uid)) is not None


def state_now(obj: StoredObject, now: int) -> State:
    """The state ``obj`` is in at ``now``: its own, moved by an Activation or Deactivation
    Date that has passed (:func:`load` applies it). What it is moved from is read once per
    content of an object that this request has not changed (:meth:`StoredObject.memo`)."""
    def moved_from() -> tuple[State, lifecycle.LifecycleDates]:
        return obj.state, lifecycle.LifecycleDates(obj.value(Tag.ACTIVATION_DATE),
                                                   obj.value(Tag.DEACTIVATION_DATE))

    state, dates = moved_from() if obj.changed_here else obj.memo("lifecycle", moved_from)
    return lifecycle.state_at(state, dates, now)


def from_cache(cached: CachedObject) -> StoredObject | None:
    """The object a cache entry holds, as :func:`load` makes it from the entry (None: an
    entry not filled by a load)."""
    attributes = cached.views.get(_ATTRIBUTES)
    return None if attributes is None else StoredObject(cached.columns, None, cached,
                                                        attributes)


def _read(session: Session, tenant: str, uid: str, for_update: bool,
          check: Callable[[Any], None] = lambda row: None) -> StoredObject | None:
    """``tenant``'s object ``uid`` as this transaction sees it, or None. Its decoded
    attributes come from the store's object cache when the row has not changed since
    (:mod:`kcm.core.store.object_cache`), so that a known object costs a two-number read.
    ``check(row)`` refuses a row that does not match its row MAC
    (:meth:`kcm.core.keyring.Keyring.check_row`): each row read, before it is used or
    cached (an entry served again was checked when it was filled)."""
    info = session.info
    cache: ObjectCache | None = info.get(OBJECT_CACHE_INFO)
    if cache is None or repository.in_session(session, uid):
        row = repository.get_object(session, tenant, uid, for_update=for_update)
        if row is None:
            return None
        # Checked even when the session held it already: not every step that loads rows
        # checks each (the state sweeper's, in a group commit's session shared with the
        # requests after it, loads whatever the columns it selects by name), and a row
        # expired by a savepoint's rollback is read again from the database. (The query
        # flushed this transaction's changes first: their MAC is the row's.)
        check(row)
        return StoredObject(row, decode_attributes(row.attributes))
    if written_in(info, tenant, uid):  # not cached: its stamp names uncommitted content
        columns = repository.object_columns(session, tenant, uid, for_update=for_update)
        if columns is None:
            return None
        check(columns)
        return StoredObject(columns, None, None, tuple(decode_attributes(columns.attributes)))
    cached = None
    if cache.holds(tenant, uid):  # else its stamp would be read for nothing
        stamp = repository.object_stamp(session, tenant, uid, for_update=for_update)
        if stamp is None:
            return None
        cached = cache.get(tenant, uid, stamp)
    if cached is None:
        columns = repository.object_columns(session, tenant, uid, for_update=for_update)
        if columns is None:
            return None
        check(columns)
        stamp = repository.stamp_of(columns.revision, columns.created_seq, columns.row_mac)
        cached = cache.put(tenant, uid, stamp, columns, info.get(CACHE_EPOCH_INFO))
        cached.views[_ATTRIBUTES] = tuple(decode_attributes(columns.attributes))
    # (copied when an operation asks for them: it may renumber them in place)
    return from_cache(cached)


_ATTRIBUTES = "attributes"

#: The most attributes one object keeps: a request's most (:data:`MAX_ATTRIBUTES`) and
#: room for the server's own. Every later load, Locate and Get Attributes of the object
#: reads them all, so one added at a time must not grow without bound either.
MAX_STORED_ATTRIBUTES = MAX_ATTRIBUTES + 64


#: The most bytes one attribute (its encoded value, vendor and name) may take. Far above
#: any the specification defines or the server derives (a certificate's Subject or
#: Issuer is its DER name); an application's own data belongs in a Secret Data object.
MAX_ATTRIBUTE_BYTES = 64 * 1024
#: The most bytes of encoded attributes one object keeps. Every change of the object
#: rewrites them all in the store's one writer, shared by every tenant, and Get
#: Attributes answers them all in one message of at most 1 MiB.
MAX_OBJECT_ATTRIBUTE_BYTES = 1024 * 1024
#: What a change may still add to an object over :data:`MAX_OBJECT_ATTRIBUTE_BYTES`: the
#: server's own small values (State, dates, Revocation Reason), so that a full object,
#: or one stored over the bound by an earlier release, can still be revoked, destroyed
#: and trimmed. New values then are small, and their count is bounded: so is the object.
SMALL_CHANGE_BYTES = 1024


def _encoded_attributes(attributes: list[Attribute], stored: Iterable[Attribute] = (),
                        stored_bytes: int = 0) -> bytes:
    """The stored form of an object's ``attributes``, refused (Server Limit Exceeded)
    when there are more than :data:`MAX_STORED_ATTRIBUTES`, when one not in ``stored``
    (the object's attributes as stored, ``stored_bytes`` long) is over
    :data:`MAX_ATTRIBUTE_BYTES`, or when they grow over :data:`MAX_OBJECT_ATTRIBUTE_BYTES`
    by more than a small change."""
    if len(attributes) > MAX_STORED_ATTRIBUTES:
        raise KmipError(ResultReason.SERVER_LIMIT_EXCEEDED,
                        f"an object keeps at most {MAX_STORED_ATTRIBUTES} attributes")
    blob = encode_attributes(attributes)
    if len(blob) > MAX_ATTRIBUTE_BYTES:  # else no attribute can be over either bound
        _check_bytes(attributes, stored, len(blob), stored_bytes)
    return blob


def _check_bytes(attributes: list[Attribute], stored: Iterable[Attribute], size: int,
                 stored_bytes: int) -> None:
    """Refuse the attributes new in this change (not in ``stored``, by value identity:
    an operation keeps the stored value of an attribute it does not change) when one is
    over :data:`MAX_ATTRIBUTE_BYTES`, or when the object's ``size`` is over
    :data:`MAX_OBJECT_ATTRIBUTE_BYTES`, larger than stored and not a small change."""
    kept = {(id(a.value), a.vendor_identification, a.name) for a in stored}
    added = 0
    for attribute in attributes:
        if (id(attribute.value), attribute.vendor_identification, attribute.name) in kept:
            continue
        attribute_bytes = _attribute_bytes(attribute)
        if attribute_bytes > MAX_ATTRIBUTE_BYTES:
            raise KmipError(ResultReason.SERVER_LIMIT_EXCEEDED,
                            f"an attribute takes at most {MAX_ATTRIBUTE_BYTES} bytes")
        added += attribute_bytes
    if size > MAX_OBJECT_ATTRIBUTE_BYTES and size > stored_bytes and added > SMALL_CHANGE_BYTES:
        raise KmipError(ResultReason.SERVER_LIMIT_EXCEEDED,
                        f"an object keeps at most {MAX_OBJECT_ATTRIBUTE_BYTES} bytes of "
                        "attributes")


def _attribute_bytes(attribute: Attribute) -> int:
    """What ``attribute`` takes in the stored form, near enough: its encoded value and
    the UTF-8 of its vendor and name."""
    assert attribute.value is not None  # (encode_attributes refused it)
    return (len(encode(attribute.value)) + len((attribute.vendor_identification or "").encode())
            + len((attribute.name or "").encode()))


def insert(ctx: OperationContext, *, uid: str, object_type: int, attributes: list[Attribute],
           managed_object: Struct | Item | None, tenant: str | None = None,
           level: int | None = None, service: str | None = None,
           key_version: int | None = None, returning: bool = True,
           inherits: StoredObject | None = None) -> StoredObject | None:
    """Store a new object: attributes as given (the caller set the server-side ones),
    material wrapped under the tenant's key. Without ``tenant`` it is the caller's: in the
    caller's tenant, and an application's belongs to its service (which must be
    provisioned); with ``tenant``, ``service`` is recorded as given. ``returning=False``
    returns None, which saves making the object for a caller that does not need it.
    ``inherits``: the object whose attributes the new one copies (Re-key's replacement):
    its attributes count against the byte bounds as stored, not as new, so a key at the
    bound can be replaced (what the new one adds is judged as a change would be)."""
    about_to_write(ctx.session)
    if tenant is None:
        try:
            tenant = policy.tenant_of(ctx.principal)
            policy.check_provisioned(ctx.session, ctx.principal)
        except policy.AccessDenied as e:
            ctx.audit_detail["denied"] = e.why
            raise
        service = policy.service_of(ctx.principal)
    check_rotate_interval(ctx, _rotate_interval(attributes))
    attributes = _usage_limits_as_stored(attributes)
    material = wrapped_by = None
    if managed_object is not None:
        flags = flags_of(attributes)  # (as stored: the transaction does not change them)
        material, wrapped_by = ctx.keyring.wrap_for_tenant(
            ctx.session, tenant, uid, encode_material(managed_object), binding=Binding(
                tenant, uid, int(object_type), level, service, key_version, *flags))
    obj = StoredObject(_NewRow(uid, tenant, level), attributes)
    columns = _columns(obj)
    row = repository.insert_object(
        ctx.session, uid=uid, tenant=tenant, object_type=object_type,
        attributes=_encoded_attributes(*_bounded_by(attributes, inherits)), material=material,
        material_format=None, wrapped_by=wrapped_by, level=level, service=service,
        key_version=key_version, names=_names(obj), groups=_groups(obj),
        keys=attribute_keys.keys_of(attributes), attach=returning,
        bounded=True, **columns)  # (a request's: a tenant or service key's Re-key too)
    ctx.touched(uid)
    return None if row is None else StoredObject(row, attributes)


def _bounded_by(attributes: list[Attribute], inherits: StoredObject | None
                ) -> tuple[list[Attribute], Iterable[Attribute], int]:
    """:func:`_encoded_attributes`' arguments for a new object copying ``inherits``."""
    if inherits is None:
        return attributes, [], 0
    return attributes, inherits._stored, len(inherits.row.attributes or b"")


class _NewRow:
    """What :func:`insert` reads of a row before there is one (an ORM object costs more)."""

    __slots__ = ("uid", "tenant", "level", "state")

    def __init__(self, uid: str, tenant: str, level: int | None) -> None:
        self.uid, self.tenant, self.level, self.state = uid, tenant, level, None


def save(ctx: OperationContext, obj: StoredObject, *, changed: bool = True) -> None:
    """Write the object's attributes back (and their column copies).

    ``changed`` stamps the Last Change Date (KMIP 1.4 §3.38): a client-visible change.
    A service key (L3) whose state changes emits ``l3.state`` for the gateways, whatever
    changed it (an operation, or a date that has passed).
    """
    about_to_write(ctx.session)
    interval = obj.value(Tag.ROTATE_INTERVAL)
    if interval != _rotate_interval(obj._stored):
        check_rotate_interval(ctx, interval)
    _settle_history(obj)
    if changed:
        obj.set(Tag.LAST_CHANGE_DATE, ctx.now)
    stored_state = obj.row.state
    columns = _columns(obj)
    encoded = _encoded_attributes(obj.attributes, obj._stored, len(obj.row.attributes or b""))
    _charge(ctx, len(obj.attributes), len(encoded))
    _rebind(ctx, obj, columns)
    _update(ctx, obj, attributes=encoded, **columns)
    if (obj.level == LEVEL_TENANT_KEY and stored_state == State.ACTIVE
            and columns["state"] != stored_state):
        # No longer the tenant's current key (a Revoke, a rotation, its Deactivation Date):
        # no core wraps under it once this commits (each write transaction compares the
        # count it reads with the one its current L2s were looked up under).
        repository.count_tenant_key_retirement(ctx.session)
    # The Locate copies of Names, Object Groups, Links and vendor attributes are rewritten
    # only when they changed (a state change leaves them alone): one UPDATE in all for most
    # saves.
    names, groups = _names(obj), _groups(obj)
    stored_names = _names(obj._stored)
    stored_groups = _groups(obj._stored)
    known: dict = {}  # (the values the change kept: their keys computed once)
    keys = attribute_keys.keys_of(obj.attributes, known)
    stored_keys = attribute_keys.keys_of(obj._stored, known)
    if names != stored_names or groups != stored_groups or keys != stored_keys:
        repository.replace_locate_copies(
            ctx.session, obj.uid, obj.tenant, names=None if names == stored_names else names,
            groups=None if groups == stored_groups else groups,
            keys=None if keys == stored_keys else keys)
    obj._stored = tuple(obj.attributes)
    if obj.level == LEVEL_SERVICE_KEY and columns["state"] != stored_state:
        events.l3_state(ctx, obj.tenant, obj.uid, obj.row.service, columns["state"])


def _rebind(ctx: OperationContext, obj: StoredObject, columns: dict[str, Any]) -> None:
    """The material of an object whose Extractable or Sensitive this change sets, clears or
    changes, wrapped again bound to its flags as they will be stored (opened bound to
    them as read): added to ``columns``. (Saving is where every change passes: Add, Modify,
    Set, Delete Attribute, Adjust, ...)"""
    if obj.row.material is None:
        return  # (destroyed: nothing bound)
    stored, new = flags_of(obj._stored), flags_of(obj.attributes)
    if stored != new:
        columns["material"] = ctx.keyring.rewrap(ctx.session, obj.row, stored, new)


def _settle_history(obj: StoredObject) -> None:
    """Always Sensitive and Never Extractable say what a key has always been (KMIP 1.4
    §3.50, §3.52; 2.1 §4 "Always Sensitive", "Never Extractable"): once its Sensitive is
    False or its Extractable True, by whatever change, they are False for good. Saving is
    where every change passes, so this is the one place that keeps them."""
    if obj.value(Tag.SENSITIVE) is False and obj.value(Tag.ALWAYS_SENSITIVE) is True:
        obj.set(Tag.ALWAYS_SENSITIVE, False)
    if obj.value(Tag.EXTRACTABLE) is True and obj.value(Tag.NEVER_EXTRACTABLE) is True:
        obj.set(Tag.NEVER_EXTRACTABLE, False)


def _update(ctx: OperationContext, obj: StoredObject, **changes: Any) -> None:
    """Write column ``changes`` of ``obj`` in one statement; ``obj.row`` is then the row
    as stored (:func:`kcm.core.store.repository.update_columns`)."""
    obj.row = repository.update_columns(ctx.session, obj.row, **changes)


def material(ctx: OperationContext, obj: StoredObject) -> Struct | Item:
    """The object's KMIP structure in the clear (a model object or a raw Item)."""
    return decode_material(ctx.keyring.unwrap(ctx.session, obj.row, stored_flags(obj)))


def stored_flags(obj: StoredObject) -> Flags:
    """The object's Extractable and Sensitive as stored (its row's, which bind its
    material), from its decoded attributes: no decoding again."""
    return flags_of(obj._stored)


def decode_material(blob: bytes) -> Struct | Item:
    """The KMIP structure of a stored plaintext (its version, then its TTLV; the inverse of
    :func:`encode_material`). Its size was bounded when the object was stored (by the
    maximum message size then in force), so the codec's default bound does not apply."""
    return _OBJECT_CODEC.decode(decode(blob[2:], max_size=len(blob)), (blob[0], blob[1]))


def destroy_material(ctx: OperationContext, obj: StoredObject) -> None:
    """Forget the key material for good; the metadata stays (KMIP 1.4 §4.21). What the
    keyring keeps in the clear of it goes too (:meth:`kcm.core.keyring.Keyring.forget_material`)."""
    material = obj.row.material
    _update(ctx, obj, material=None, wrapped_by=None)
    ctx.session.info[repository.MATERIAL_ERASED_INFO] = True  # (the store: what WAL holds)
    ctx.keyring.forget_material(obj.tenant, obj.uid,
                                None if material is None else bytes(material))


def encode_material(managed_object: Struct | Item) -> bytes:
    """The plaintext stored (wrapped) for an object: its version, then its TTLV."""
    item = _OBJECT_CODEC.encode(managed_object, 0, _MATERIAL_VERSION)
    return bytes(_MATERIAL_VERSION) + encode(item)


def _columns(obj: StoredObject) -> dict[str, Any]:
    columns: dict[str, Any] = {
        "state": int(obj.state),
        "cryptographic_algorithm": _int_or_none(obj.value(Tag.CRYPTOGRAPHIC_ALGORITHM)),
        "cryptographic_length": _int_or_none(obj.value(Tag.CRYPTOGRAPHIC_LENGTH)),
        "cryptographic_usage_mask": _int_or_none(obj.value(Tag.CRYPTOGRAPHIC_USAGE_MASK)),
    }
    for tag, column in DATE_COLUMNS.items():
        columns[column] = obj.value(tag)
    if obj.row.level is None:
        # (a tenant or service key's is the sweeper's schedule: kcm.core.rotation_schedule;
        # the store marks it when the key is made or judged otherwise)
        columns["rotate_due"] = rotate_due(obj)
    return columns


def rotate_due(obj: StoredObject) -> int | None:
    """When a managed key rotates by itself (KMIP 2.1 §4: Rotate Automatic true, a Rotate
    Interval, and it is still the latest of its line): its last rotation (Rotate Date; else
    when it became active, or was made) plus the interval; None otherwise, and once it is
    neither Pre-Active nor Active (revoked or destroyed: never rotated, so not kept due for
    the sweeper to read again). Tenant and service keys rotate by rotation policies instead
    (kcm.core.auto_rotation; their ``rotate_due`` is :mod:`kcm.core.rotation_schedule`'s)."""
    if obj.row.level is not None or obj.value(Tag.ROTATE_AUTOMATIC) is not True:
        return None
    if obj.state not in (State.PRE_ACTIVE, State.ACTIVE):
        return None
    interval = obj.value(Tag.ROTATE_INTERVAL)
    if not interval or obj.value(Tag.ROTATE_LATEST) is False:
        return None
    since = next((date for date in (obj.value(Tag.ROTATE_DATE),
                                     obj.value(Tag.ACTIVATION_DATE),
                                     obj.value(Tag.INITIAL_DATE)) if date is not None), None)
    # (A date near the largest a Date-Time holds, which clients use for "never": due never,
    # not past what the column holds.)
    return None if since is None else bounded_date(int(since) + int(interval))


def _usage_limits_as_stored(attributes: list[Attribute]) -> list[Attribute]:
    """A new object's attributes with its Usage Limits Count its Total, whatever the
    client said (:func:`kcm.core.usage_limits.as_stored`)."""
    if not any(attribute.tag == Tag.USAGE_LIMITS for attribute in attributes):
        return attributes
    from kcm.core.usage_limits import as_stored  # (it counts uses of what this stores)

    return [Attribute(a.tag, as_stored(a.value), a.index, a.vendor_identification, a.name)
            if a.tag == Tag.USAGE_LIMITS else a for a in attributes]


def check_rotate_interval(ctx: OperationContext, interval: Any) -> None:
    """Refuse (Invalid Field) a Rotate Interval shorter than the configured minimum
    (``ctx.server_info.min_rotate_interval``): every rotation makes a new object, so a key
    given a short one would fill the store by itself. 0 (never) passes. :func:`insert`
    checks a new object's (a Re-key's replacement inherits it), :func:`save` a changed one."""
    minimum = ctx.server_info.min_rotate_interval
    if interval and int(interval) < minimum:
        raise KmipError(ResultReason.INVALID_FIELD,
                        f"the Rotate Interval must be at least {minimum} s")


def _rotate_interval(attributes: Iterable[Attribute]) -> Any:
    return next((a.typed for a in attributes if a.tag == Tag.ROTATE_INTERVAL), None)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _names(obj: StoredObject | Iterable[Attribute]) -> list[tuple[str, int]]:
    names = []
    for attribute in obj.attributes if isinstance(obj, StoredObject) else obj:
        if attribute.tag == Tag.NAME:
            name = attribute.typed
            if isinstance(name, Name):
                names.append((name.value, int(name.type)))
    return names


def _groups(obj: StoredObject | Iterable[Attribute]) -> list[str]:
    return [a.typed for a in (obj.attributes if isinstance(obj, StoredObject) else obj)
            if a.tag == Tag.OBJECT_GROUP and isinstance(a.typed, str)]


def date_attribute(tag: int, when: int) -> Attribute:
    """A Date-Time attribute."""
    return Attribute.of(tag, when, ATTRIBUTE_TYPES.get(tag, ItemType.DATE_TIME))
