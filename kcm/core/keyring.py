"""The key hierarchy at work: L1 in memory, tenant keys (L2) unwrapped on demand.

The one place that wraps and unwraps stored material: an ordinary object or an L3 is
wrapped under its tenant's current L2, an L2 under L1 (ARCHITECTURE §1). It also holds the
audit key, derived from L1 once when L1 is given (:meth:`kcm.core.l1.L1Key.audit_key`).

L1 is a :class:`kcm.core.l1.L1Key`: a key file's bytes (:mod:`kcm.core.l1_file`) or a key in
a PKCS#11 token (:mod:`kcm.core.l1_pkcs11`); the keyring only asks it to wrap and unwrap.

Every wrap writes version 2 (:func:`kcm.core.keys.object_aad_v2`): the blob is bound to the
row's tenant, uid, object type, level, service and key version, and to the object's
effective Extractable and Sensitive (:class:`Binding`, :class:`Flags`), and an unwrap builds
them from the row as read. A row whose columns or flags were changed in the database (an
L3 made to look like an ordinary object, another service's key moved to an application's,
a key made Extractable) then fails: :class:`WrappingMismatch`, General Failure, logged at error
level in one line (:mod:`kcm.core.mismatch_line`: the request's, one object's at most once a
minute) and counted (:attr:`Keyring.mismatches`). A version 1 blob (tenant and uid only) is
opened while ``accept_v1`` (``[core] accept_v1_wrapping``) and re-wrapped as version 2 by
:meth:`Keyring.rewrap` (:mod:`kcm.core.wrap_upgrade`); refused like a tampered row without.

The rest of each row is authenticated by its row MAC (:mod:`kcm.core.store.row_seal`): the
keyring makes the :class:`~kcm.core.store.row_seal.RowSeal` when it is given L1, with
:meth:`Keyring._mismatch` as its refusal, and :meth:`Keyring.check_row` refuses a row read
to be used whose MAC does not match (or that has none, unless ``accept_unsealed``):
before any unwrap, and where :mod:`kcm.core.managed` and :mod:`kcm.core.l4_keys` read rows.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from sqlalchemy import event
from sqlalchemy.orm import Session

from kcm.core import keys
from kcm.core.attribute_blob import decode_attributes
from kcm.core.l1 import L1Key
from kcm.core.l1_file import FileL1
from kcm.core.mismatch_line import MismatchLines
from kcm.core.os_random import mix_into_os_pool
from kcm.core.store import repository
from kcm.core.store.row_seal import RowSeal, row_key
from kcm.core.store.savepoints import on_rollback
from kcm.core.store.schema import (
    LEVEL_SERVICE_KEY,
    LEVEL_TENANT_KEY,
    WRAPPED_BY_L1,
    ManagedObject,
)
from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import ObjectType, ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip.tags import Tag
from kcm.l4.identifiers import L3_PREFIX

#: Seconds a tenant's current L2 is trusted without asking the store again.
CURRENT_L2_TTL = 5.0
#: Objects whose unwrapped material the keyring keeps (the most recently used).
UNWRAPPED_CACHE_SIZE = 1024
#: Seconds an unwrapped material, or an L2 key, is kept after it was unwrapped, used or not
#: (the object cache's ttl): a Destroy committed by another core, which this keyring never
#: hears of, leaves its key in the clear here no longer than that (:meth:`Keyring.expire`).
KEPT_CLEAR_TTL = 300.0
#: Destroyed materials the keyring remembers, so as not to cache them again (see
#: :meth:`Keyring.forget_material`).
DESTROYED_REMEMBERED = 1024
#: ``Session.info``: the (keyring, tenant) pairs whose current L2 the transaction looked up,
#: forgotten again if any of its work rolls back (see :meth:`Keyring._current_tenant_key`).
CURRENT_L2_READ_INFO = "kcm.keyring.current_l2_read"
#: The Result Message of a row that does not match its wrapping (to the client, who is not
#: told more; the log names the object).
MISMATCH_MESSAGE = "the stored object failed its integrity check"


class Flags(NamedTuple):
    """An object's effective Extractable and Sensitive: whether its material may leave the
    server (Get, Derive Key), and whether in the clear. Absent, each is the server's
    default (:data:`kcm.core.server_info.DEFAULT_ATTRIBUTES`), as Get reads them."""

    extractable: bool
    sensitive: bool


#: The flags of an object with neither attribute.
DEFAULT_FLAGS = Flags(True, False)


def flags_of(attributes: Iterable[Attribute]) -> Flags:
    """The effective flags of an object with ``attributes`` (the first of each tag, as
    :meth:`kcm.core.managed.StoredObject.value` reads it): Extractable unless False,
    Sensitive only if True."""
    extractable = sensitive = None
    for attribute in attributes:
        tag = attribute.tag
        if tag == _EXTRACTABLE:
            if extractable is None:
                extractable = attribute.typed is not False
        elif tag == _SENSITIVE and sensitive is None:
            sensitive = attribute.typed is True
    return Flags(True if extractable is None else extractable, bool(sensitive))


#: Attribute blobs whose flags are remembered, at most :data:`FLAGS_MEMO_SIZE`: by the blob
#: itself up to :data:`FLAGS_MEMO_BLOB_BYTES`, by its SHA-256 above (an administrator's
#: service key of many attributes, up to 1 MiB, would otherwise be decoded at every L4
#: request, or kept whole in the memo).
FLAGS_MEMO_BLOB_BYTES = 4096
FLAGS_MEMO_SIZE = 1024

_flags_memo: OrderedDict[bytes | tuple[str, bytes], Flags] = OrderedDict()
_flags_memo_lock = threading.Lock()


def row_flags(row: Any) -> Flags:
    """The effective flags of a stored row, from its attribute blob as read (decoded once
    per content lately read: a tenant or service key's blob is read again at each use,
    an L4 request's or a gateway's fetch; a caller that has the decoded attributes gives
    :func:`flags_of` them instead)."""
    blob = row.attributes
    if not blob:
        return DEFAULT_FLAGS
    blob = bytes(blob)
    key: bytes | tuple[str, bytes] = blob if len(blob) <= FLAGS_MEMO_BLOB_BYTES \
        else ("sha256", hashlib.sha256(blob).digest())
    with _flags_memo_lock:
        flags = _flags_memo.get(key)
        if flags is not None:
            _flags_memo.move_to_end(key)
            return flags
    flags = flags_of(decode_attributes(blob))
    with _flags_memo_lock:
        _flags_memo[key] = flags
        while len(_flags_memo) > FLAGS_MEMO_SIZE:
            _flags_memo.popitem(last=False)
    return flags


_EXTRACTABLE, _SENSITIVE = int(Tag.EXTRACTABLE), int(Tag.SENSITIVE)


class Binding(NamedTuple):
    """What a version 2 blob is bound to: the columns of its row that decide who may read
    it, besides its tenant and uid, and its effective :class:`Flags`. Part of the keyring's
    cache key of an unwrapped material, so a row changed after it was unwrapped is never
    answered from the cache."""

    tenant: str
    uid: str
    object_type: int
    level: int | None
    service: str | None
    key_version: int | None
    extractable: bool
    sensitive: bool

    @classmethod
    def of(cls, row: Any, flags: Flags | None = None) -> Binding:
        """The binding of a stored row (an ORM object or the store's columns), as read;
        ``flags``: its attributes' (:func:`flags_of`), else read from its attribute blob."""
        if flags is None:
            flags = row_flags(row)
        return cls(row.tenant, row.uid, int(row.object_type), row.level, row.service,
                   row.key_version, flags[0], flags[1])

    @property
    def flags(self) -> Flags:
        return Flags(self.extractable, self.sensitive)

    def aad(self) -> bytes:
        return keys.object_aad_v2(self.tenant, self.uid, object_type=self.object_type,
                                  level=self.level, service=self.service,
                                  key_version=self.key_version,
                                  extractable=self.extractable, sensitive=self.sensitive)


def tenant_key_binding(tenant: str, uid: str, flags: Flags) -> Binding:
    """The binding of an L2 (a Symmetric Key of its tenant, of no service or version)."""
    return Binding(tenant, uid, int(ObjectType.SYMMETRIC_KEY), LEVEL_TENANT_KEY, None, None,
                   flags[0], flags[1])


def v1_row_refused(row: Any) -> str | None:
    """Why ``row``, whose blob is version 1 (bound to its tenant and uid only), is not a row
    kcm-core writes (None: it may be). Its level, service, key version and object type are
    not authenticated, but they must agree with its uid (an L3's is ``l3-...``, no other
    object's is) and with what wraps it (L1 wraps the tenant keys and nothing else): a
    service key made to look like an application's object is refused when read, and never
    re-wrapped as version 2 bound to what the database writer wrote."""
    is_l3_uid = row.uid.startswith(L3_PREFIX)
    if row.level == LEVEL_SERVICE_KEY:
        if not is_l3_uid:
            return "is a service key without a service key's identifier"
        if row.service is None or row.key_version is None:
            return "is a service key without a service or version"
    elif is_l3_uid:
        return "has a service key's identifier but is not one"
    elif row.level == LEVEL_TENANT_KEY:
        if row.wrapped_by != WRAPPED_BY_L1:
            return "is a tenant key not wrapped by L1"
        if row.service is not None or row.key_version is not None:
            return "is a tenant key with a service or version"
    elif row.level is not None:
        return f"has an unknown level {row.level}"
    elif row.key_version is not None:
        return "is an ordinary object with a key version"
    if row.level is not None and int(row.object_type) != int(ObjectType.SYMMETRIC_KEY):
        return "is a tenant or service key that is not a symmetric key"
    return None


class WrappingMismatch(KmipError):
    """A stored object's row does not match its wrapping (its columns were changed in the
    database, its blob was replaced, or it is a version 1 blob and they are refused): the
    store is not to be trusted. General Failure; :attr:`tenant` and :attr:`uid` name it."""

    def __init__(self, tenant: str, uid: str, why: str) -> None:
        super().__init__(ResultReason.GENERAL_FAILURE, MISMATCH_MESSAGE)
        self.tenant, self.uid, self.why = tenant, uid, why

    def __str__(self) -> str:
        return (f"object {self.uid!r} of tenant {self.tenant!r}: its row does not match its "
                f"wrapping ({self.why})")


class Keyring:
    """Holds L1; unwraps and caches L2s by uid (they never change once created; a destroyed
    one is dropped: :meth:`forget_tenant_key`, and a removed tenant's:
    :meth:`forget_tenant`).

    Made without ``l1``, it is assembled before L1 is opened, and :meth:`load` gives it L1
    when the service that opens it starts; until then nothing can be wrapped or unwrapped.
    ``l1`` is an :class:`kcm.core.l1.L1Key`, or the 32 bytes of a key-file L1.
    """

    def __init__(self, l1: L1Key | bytes | None = None, *,
                 random_bytes: keys.RandomBytes = os.urandom,
                 seed_random: Callable[[bytes], int] = mix_into_os_pool,
                 clock: Callable[[], float] = time.monotonic,
                 current_l2_ttl: float = CURRENT_L2_TTL,
                 kept_ttl: float = KEPT_CLEAR_TTL, accept_v1: bool = True,
                 accept_unsealed: bool = True) -> None:
        self._l1: L1Key | None = None
        #: Whether a version 1 blob (bound to tenant and uid only) is opened.
        self.accept_v1 = accept_v1
        #: Whether a row without a row MAC is taken as it is (``accept_rows_without_mac``).
        self._accept_unsealed = accept_unsealed
        #: MACs and checks the rows (:mod:`kcm.core.store.row_seal`), once L1 is given.
        self.row_seal: RowSeal | None = None
        #: Rows refused because they did not match their wrapping, since the start.
        self.mismatches = 0
        self._mismatch_lock = threading.Lock()
        self._audit_key: bytes | None = None
        if l1 is not None:
            self.load(l1)
        self._random_bytes = random_bytes
        self._seed_random = seed_random
        self._clock = clock
        #: The one log line of each mismatch (one object's at most once a minute).
        self._mismatch_lines = MismatchLines(clock)
        self._current_l2_ttl = current_l2_ttl
        self._kept_ttl = kept_ttl
        self._l2_by_uid: dict[str, bytes] = {}
        # L2 uid -> when it was unwrapped (its row, and so its material, read then).
        self._l2_read_at: dict[str, float] = {}
        # Taken to change _l2_by_uid, _l2_read_at and _l2_uids_of together (a store thread
        # unwrapping an L2 again while the reactor expires it left a key no expiry saw).
        self._l2_lock = threading.Lock()
        # tenant -> the uids of its L2s in _l2_by_uid (to forget a removed tenant's).
        self._l2_uids_of: dict[str, set[str]] = {}
        # tenant -> (uid of its current L2, when looked up): saves a query per new object.
        self._current_l2: dict[str, tuple[str, float]] = {}
        # The store's count of tenant removals _current_l2 was looked up under (None: not
        # compared yet): see _current_tenant_key.
        self._removals: int | None = None
        # The same of the count of tenant key revocations: see _current_tenant_key.
        self._revocations: int | None = None
        # (tenant, uid, wrapped material, binding) -> (plaintext, when unwrapped), least
        # recently used first. Keyed by the stored ciphertext itself, an entry can never
        # answer for other material: a change of the row's material (or its removal) is a
        # miss, whoever committed it; and by the row's binding, a change of its level,
        # service, key version or object type is a miss too (and then fails to unwrap).
        self._unwrapped: OrderedDict[tuple[str, str, bytes, Binding],
                                     tuple[bytes, float]] = OrderedDict()
        # Cache keys of materials destroyed here (the most recent): never cached again.
        self._destroyed: OrderedDict[tuple[str, str, bytes], None] = OrderedDict()
        self._unwrapped_lock = threading.Lock()

    def load(self, l1: L1Key | bytes) -> None:
        """Use ``l1`` as the L1 key from now on."""
        if isinstance(l1, bytes):
            l1 = FileL1(l1)
        self._audit_key = l1.audit_key()
        self.row_seal = RowSeal(row_key(self._audit_key), accept_unsealed=self._accept_unsealed,
                                refuse=self._mismatch)
        self._l1 = l1

    @property
    def accept_unsealed(self) -> bool:
        """Whether a row without a row MAC is taken as it is."""
        return self._accept_unsealed

    @accept_unsealed.setter
    def accept_unsealed(self, accept: bool) -> None:
        self._accept_unsealed = accept
        if self.row_seal is not None:
            self.row_seal.accept_unsealed = accept

    def check_row(self, row: Any) -> None:
        """Refuse ``row`` (:class:`WrappingMismatch`, logged and counted) if it does not
        match its row MAC, or has none and those are refused: a row read to be used, once
        per row read (a cached object is checked when it was read)."""
        seal = self.row_seal
        if seal is not None:
            seal.check(row)

    @property
    def loaded(self) -> bool:
        """Whether L1 has been given."""
        return self._l1 is not None

    def _master(self) -> L1Key:
        if self._l1 is None:
            raise KmipError(ResultReason.GENERAL_FAILURE, "the L1 key is not loaded")
        return self._l1

    @property
    def audit_key(self) -> bytes:
        """The key that MACs the audit chain (derived from L1 when it was given)."""
        if self._audit_key is None:
            raise KmipError(ResultReason.GENERAL_FAILURE, "the L1 key is not loaded")
        return self._audit_key

    @property
    def random_bytes(self) -> keys.RandomBytes:
        return self._random_bytes

    def seed_random(self, seed: bytes) -> int:
        """Mix ``seed`` into the random source (RNG Seed); the number of bytes used."""
        return self._seed_random(seed)

    def new_uid(self) -> str:
        """A fresh Unique Identifier for a managed object."""
        return str(uuid.UUID(bytes=self._random_bytes(16), version=4))

    # Wrapping -------------------------------------------------------------
    def wrap_for_tenant(
        self, session: Session, tenant: str, uid: str, plaintext: bytes, *, binding: Binding
    ) -> tuple[bytes, str]:
        """Wrap ``plaintext`` for object ``uid`` under ``tenant``'s current L2.

        Returns (blob, uid of the L2). A tenant without an active L2 is not provisioned.
        ``binding``: the object's (its tenant and uid must be these); the blob opens only
        for a row with these columns.
        """
        if (binding.tenant, binding.uid) != (tenant, uid):
            raise ValueError("the binding is another object's")
        l2_uid, kek = self._current_tenant_key(session, tenant)
        blob = keys.wrap(kek, plaintext, aad=binding.aad(), random_bytes=self._random_bytes)
        return blob, l2_uid

    def _current_tenant_key(self, session: Session, tenant: str) -> tuple[str, bytes]:
        """The tenant's current L2 (uid, key), looked up at most every ``current_l2_ttl``
        seconds: another core may rotate it, and objects wrapped meanwhile under the
        previous version stay readable, since every blob names the L2 that wrapped it.

        Removal is another matter: an L2 deleted with its tenant (``kcm core tenant
        remove``, perhaps run by another process) must never wrap anything committed. So
        a write transaction first compares the store's count of tenant removals (read
        once per transaction under the writers' lock, with the number a Create reads
        anyway: :func:`kcm.core.store.repository.tenant_removals`) with the count the
        cache was filled under; a change forgets every tenant's current L2 and L2 key. So too
        with the count of tenant keys that stopped being Active (read in the same statement:
        :func:`kcm.core.store.repository.tenant_key_retirements`): a change forgets every
        tenant's current L2, so that no core wraps under an L2 revoked (a Key Compromise),
        rotated or deactivated by date at another once that change has committed."""
        removals = repository.tenant_removals(session)
        if removals != self._removals and removals is not None:
            self._current_l2.clear()
            with self._l2_lock:
                self._l2_by_uid.clear()
                self._l2_read_at.clear()
                self._l2_uids_of.clear()
            self._removals = removals
        # A tenant key retired since (revoked, rotated or deactivated, perhaps at another
        # core): no current L2 looked up before is trusted to be Active still.
        revocations = repository.tenant_key_retirements(session)
        if revocations != self._revocations and revocations is not None:
            self._current_l2.clear()
            self._revocations = revocations
        cached = self._current_l2.get(tenant)
        now = self._clock()
        if cached is not None and now - cached[1] < self._current_l2_ttl:
            key = self._l2_by_uid.get(cached[0])
            if key is not None and now - self._l2_read_at.get(cached[0], 0.0) < self._kept_ttl:
                return cached[0], key
        l2 = repository.find_l2(session, tenant, active_only=True)
        if l2 is None:
            self._current_l2.pop(tenant, None)
            raise KmipError(
                ResultReason.PERMISSION_DENIED,
                f"tenant {tenant!r} is not provisioned (no active tenant key)",
            )
        self.check_row(l2)  # (a retired L2 made Active again in the database wraps nothing)
        key = self._l2_key(l2)
        self._current_l2[tenant] = (l2.uid, now)
        # The row read may be this very transaction's (a Re-key of the L2 earlier in it):
        # if any of the transaction's work rolls back, the lookup is forgotten, so that no
        # later request wraps under an L2 that was never committed.
        session.info.setdefault(CURRENT_L2_READ_INFO, []).append((self, tenant))
        return l2.uid, key

    def forget_current(self, tenant: str) -> None:
        """The tenant's current L2 changed here (a re-key): look it up again next time."""
        self._current_l2.pop(tenant, None)

    def forget_tenant(self, tenant: str) -> None:
        """``tenant`` was removed (its ``tenant.removed`` event): drop its L2 keys, current
        L2 and unwrapped materials. (A write transaction would not use them anyway: see
        :meth:`_current_tenant_key`; this frees them at once.)"""
        self._current_l2.pop(tenant, None)
        with self._l2_lock:
            for uid in self._l2_uids_of.pop(tenant, ()):
                self._l2_by_uid.pop(uid, None)
                self._l2_read_at.pop(uid, None)
        with self._unwrapped_lock:
            for cache_key in [k for k in self._unwrapped if k[0] == tenant]:
                del self._unwrapped[cache_key]

    def forget_tenant_key(self, tenant: str, uid: str) -> None:
        """L2 ``uid`` of ``tenant`` was destroyed here: drop its key, and stop taking it for
        the tenant's current one. (Another core drops it when it next reads the row:
        :meth:`_l2_key`; it never wraps under it again once a Destroy is allowed, see
        :func:`kcm.core.tenant_rotation.check_destroy`.)"""
        with self._l2_lock:
            self._l2_by_uid.pop(uid, None)
            self._l2_read_at.pop(uid, None)
            self._l2_uids_of.get(tenant, set()).discard(uid)
        cached = self._current_l2.get(tenant)
        if cached is not None and cached[0] == uid:
            self._current_l2.pop(tenant, None)

    def unwrap(self, session: Session, row: ManagedObject, flags: Flags | None = None
               ) -> bytes:
        """The plaintext material of a stored object (which must still have material).
        ``flags``: the object's as read (:func:`flags_of` its decoded attributes); without,
        its attribute blob is decoded for them."""
        if row.material is None:
            # (destroyed, perhaps by another core: what this keyring kept of it goes now)
            self.forget_material(row.tenant, row.uid)
            raise KmipError(ResultReason.KEY_VALUE_NOT_PRESENT, "the object has no key value")
        binding = Binding.of(row, flags or self.row_flags(row))
        cache_key = (row.tenant, row.uid, bytes(row.material), binding)
        now = self._clock()
        with self._unwrapped_lock:
            kept = self._unwrapped.get(cache_key)
            if kept is not None:
                if now - kept[1] < self._kept_ttl:
                    self._unwrapped.move_to_end(cache_key)
                    return kept[0]
                del self._unwrapped[cache_key]
        plaintext = self._unwrap(session, row, binding)
        with self._unwrapped_lock:
            if cache_key[:3] not in self._destroyed:
                self._unwrapped[cache_key] = (plaintext, now)
                if len(self._unwrapped) > UNWRAPPED_CACHE_SIZE:
                    self._unwrapped.popitem(last=False)
        return plaintext

    def expire(self) -> int:
        """Drop every material and L2 key unwrapped ``kept_ttl`` seconds ago or more, used
        or not; how many. Run with the object cache's expiry (kcm-core's
        ``kcm-object-cache-expiry``): a key another core destroyed is never read here
        again, and was kept in the clear as long as the process ran. An L2 dropped is read
        again (its row: destroyed, it is refused) when next needed."""
        now = self._clock()
        with self._unwrapped_lock:
            old = [k for k, (_, at) in self._unwrapped.items() if now - at >= self._kept_ttl]
            for cache_key in old:
                del self._unwrapped[cache_key]
        with self._l2_lock:
            stale = [uid for uid, at in self._l2_read_at.items()
                     if now - at >= self._kept_ttl]
            for uid in stale:
                del self._l2_by_uid[uid], self._l2_read_at[uid]
                for uids in self._l2_uids_of.values():
                    uids.discard(uid)
        return len(old) + len(stale)

    def forget_material(self, tenant: str, uid: str, material: bytes | None = None) -> None:
        """Drop what this keyring keeps in the clear of object ``uid`` of ``tenant``.

        ``material``: the object's stored (wrapped) material is being destroyed; it is not
        cached again either, by a request that read the row before the destruction and
        unwraps it after (remembered for the last :data:`DESTROYED_REMEMBERED` destroyed).
        Dropped at once, as the store's object cache drops an entry whose row changes: an
        entry is keyed by the stored material, so one dropped for a change that rolls back
        only costs an unwrap. (Another core's keyring never serves it again, the row no
        longer has it, and drops it at the latest ``kept_ttl`` after it unwrapped it:
        :meth:`expire`.)"""
        with self._unwrapped_lock:
            for cache_key in [k for k in self._unwrapped if k[0] == tenant and k[1] == uid]:
                del self._unwrapped[cache_key]
            if material is not None:
                destroyed = self._destroyed
                destroyed[(tenant, uid, bytes(material))] = None
                while len(destroyed) > DESTROYED_REMEMBERED:
                    destroyed.popitem(last=False)

    def _aad(self, row: Any, binding: Binding | None = None) -> bytes:
        """The associated data of ``row``'s blob, by its version, from the row as read."""
        version = keys.blob_version(row.material)
        if version == keys.WRAP_VERSION:
            return (binding or Binding.of(row, self.row_flags(row))).aad()
        if version == keys.WRAP_VERSION_V1:
            if not self.accept_v1:
                raise self._mismatch(row, "a version 1 blob, and accept_v1_wrapping is false")
            why = v1_row_refused(row)
            if why is not None:
                raise self._mismatch(row, f"a version 1 blob whose row {why}")
            return keys.object_aad(row.tenant, row.uid)
        raise self._mismatch(row, f"unknown blob version {version}")

    def row_flags(self, row: Any) -> Flags:
        """:func:`row_flags`; an attribute blob that does not decode is a row that does not
        match its wrapping (:class:`WrappingMismatch`, logged and counted), not an error
        that would fail a sweeper's step at every sweep."""
        try:
            return row_flags(row)
        except (ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
            raise self._mismatch(row, "its attributes do not decode") from e

    def _mismatch(self, row: Any, why: str) -> WrappingMismatch:
        """Log and count a row that does not match its wrapping; the error to raise."""
        with self._mismatch_lock:
            self.mismatches += 1
        self._mismatch_lines.note(row.tenant, row.uid, why)
        return WrappingMismatch(row.tenant, row.uid, why)

    def _open(self, row: Any, open_blob: Callable[[bytes], bytes],
              binding: Binding | None = None) -> bytes:
        """``open_blob(aad)`` for ``row``'s blob, a failure to authenticate being a
        mismatch (the key is the right one: the row names it, and it opened its blob)."""
        aad = self._aad(row, binding)
        try:
            return open_blob(aad)
        except keys.UnwrapError as e:
            raise self._mismatch(row, "it fails authentication") from e

    def _unwrap(self, session: Session, row: ManagedObject,
                binding: Binding | None = None) -> bytes:
        assert row.material is not None
        self.check_row(row)
        material = bytes(row.material)
        if row.wrapped_by == WRAPPED_BY_L1:
            if row.level != LEVEL_TENANT_KEY:
                raise self._mismatch(row, "wrapped by L1 but not a tenant key")
            master = self._master()
            return self._open(row, lambda aad: master.unwrap(material, aad=aad), binding)
        known = self._l2_by_uid.get(row.wrapped_by)
        if known is None or self._clock() - self._l2_read_at.get(
                row.wrapped_by, 0.0) >= self._kept_ttl:
            l2 = repository.get_object(session, row.tenant, row.wrapped_by)
            if l2 is None or l2.level != LEVEL_TENANT_KEY:
                raise KmipError(ResultReason.GENERAL_FAILURE,
                                "the key wrapping this object is missing")
            known = self._l2_key(l2)
        kek = known
        return self._open(row, lambda aad: keys.unwrap(kek, material, aad=aad), binding)

    def rewrap(self, session: Session, row: Any, flags: Flags | None = None,
               new_flags: Flags | None = None) -> bytes:
        """``row``'s material wrapped again as version 2, under the key that wraps it now
        (its ``wrapped_by`` stays), bound to its columns as read and to ``new_flags``
        (``flags`` if None): the upgrade of a version 1 blob (:mod:`kcm.core.wrap_upgrade`),
        or a change of the object's Extractable or Sensitive (:func:`kcm.core.managed.save`).
        ``flags``: the row's as read (:func:`flags_of`; else its attribute blob is decoded).
        Raises :class:`WrappingMismatch` (logged and counted) if the blob does not open
        (bound to ``flags``), or is version 1 and those are refused."""
        binding = Binding.of(row, flags or self.row_flags(row))
        plaintext = self._unwrap(session, row, binding)
        if new_flags is not None:
            binding = binding._replace(extractable=new_flags[0], sensitive=new_flags[1])
        if row.wrapped_by == WRAPPED_BY_L1:
            return self._master().wrap(plaintext, aad=binding.aad(),
                                       random_bytes=self._random_bytes)
        kek = self._l2_by_uid.get(row.wrapped_by)
        if kek is None:  # (read by the unwrap just now, unless expired meanwhile)
            l2 = repository.get_object(session, row.tenant, row.wrapped_by)
            assert l2 is not None
            kek = self._l2_key(l2)
        return keys.wrap(kek, plaintext, aad=binding.aad(), random_bytes=self._random_bytes)

    def _l2_key(self, l2: ManagedObject) -> bytes:
        if l2.material is None:
            # Destroyed (perhaps by another core): whatever this process kept of it goes.
            self.forget_tenant_key(l2.tenant, l2.uid)
            raise KmipError(ResultReason.GENERAL_FAILURE, "the tenant key was destroyed")
        key = self._l2_by_uid.get(l2.uid)
        now = self._clock()
        if key is None or now - self._l2_read_at.get(l2.uid, 0.0) >= self._kept_ttl:
            self.check_row(l2)
            material, master = bytes(l2.material), self._master()
            key = self._open(l2, lambda aad: master.unwrap(material, aad=aad))
            with self._l2_lock:
                self._l2_by_uid[l2.uid] = key
                self._l2_read_at[l2.uid] = now
                self._l2_uids_of.setdefault(l2.tenant, set()).add(l2.uid)
        return key

    def wrap_tenant_key(self, tenant: str, uid: str, key: bytes, flags: Flags) -> bytes:
        """Wrap a new L2 under L1 (bound to :func:`tenant_key_binding`); ``flags``: its
        attributes' (:func:`flags_of`)."""
        return self._master().wrap(key, aad=tenant_key_binding(tenant, uid, flags).aad(),
                                   random_bytes=self._random_bytes)


def _forget_current_read(session: Session, *_: object) -> None:
    """Some of ``session``'s work rolled back (a savepoint, or the whole transaction):
    every current L2 it looked up is looked up again next time."""
    for keyring, tenant in session.info.pop(CURRENT_L2_READ_INFO, ()):
        keyring.forget_current(tenant)


def _committed(session: Session, *_: object) -> None:
    if not session.in_nested_transaction():  # (a savepoint released is not yet committed)
        session.info.pop(CURRENT_L2_READ_INFO, None)


event.listen(Session, "after_soft_rollback", _forget_current_read)
event.listen(Session, "after_commit", _committed)
on_rollback(_forget_current_read)
