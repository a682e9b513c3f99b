"""Managed objects as last read, kept in memory so that an operation on a known object
reads its stamp from the database (two numbers and the row MAC) instead of the whole row.

An entry is keyed by (tenant, uid) and stamped with the row's (``revision``,
``created_seq``, ``row_mac``). Every change of a row raises its ``revision``
(:func:`kcm.core.store.repository.update_columns`, or the ORM's version counter in
:func:`~kcm.core.store.repository.update_object`), and ``created_seq``
tells a row apart from any other that ever had the same uid; so a stamp names exactly
one content of one row, and an entry whose stamp is the row's current one (read in the
caller's own transaction, :func:`kcm.core.store.repository.object_stamp`) holds what
the database holds. Nothing is served on trust: a change made by this core, by another
core on the same database, or by a transaction that later rolled back, only makes an
entry stale, and a stale entry is replaced on its next use. For that, an entry must name
committed content only: a row a transaction changed or inserted is never cached by that
transaction (:func:`written_in`), since its new stamp names content that a rollback
undoes, and which another core's committed change could later carry too.

What an entry holds besides the row's columns is the caller's (:mod:`kcm.core.managed`
keeps the decoded attributes and, once used, the clear key bytes). Entries are bounded
in number (least recently used go first), in age (an entry is dropped ``ttl`` seconds
after it was filled, so a key destroyed on another core does not stay in this one's
memory) and in the memory they may take in all (``max_bytes``, weighed by
:func:`weight`: one tenant's objects of a thousand attributes each must not make the
cache a few gigabytes); an object weighing more than ``max_bytes`` / 64 is not kept.
Thread-safe.

The row MAC (:mod:`kcm.core.store.row_seal`) is in the stamp for a database writer: it
changes with every column it covers, so an earlier ``revision`` put back in the database
(a column it leaves out) no longer makes a core serve the content its entry holds, as
it did while the two numbers were the stamp (a key revoked at another core, served as
Active here until the entry expired). Putting back the earlier MAC too is a rollback of
the row (docs/operations.md, "Still open").
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

#: Where a session of a :class:`kcm.core.store.engine.Store` finds its store's cache.
OBJECT_CACHE_INFO = "kcm.store.objects"

Stamp = tuple[Any, ...]  # (revision, created_seq, row_mac)

#: Where a write transaction's session notes the (tenant, uid) of the rows it changed or
#: inserted (:func:`note_written`).
WRITTEN_INFO = "kcm.store.objects.written"
#: Session info: the cache's :attr:`ObjectCache.epoch` when the transaction began (what
#: its reads may put in the cache: nothing forgotten since).
CACHE_EPOCH_INFO = "kcm.store.objects.epoch"
#: Forgotten keys remembered with their epoch, the most recent; a fill older than the
#: oldest of them is refused whatever its key (:meth:`ObjectCache.put`).
FORGOTTEN_KEPT = 4096


def note_written(info: dict[str, Any], tenant: str, uid: str) -> None:
    """Note in a session's ``info`` that its transaction changes (tenant, uid)'s row, and
    drop the row's cache entry: stale from now on, and not cached again by this
    transaction (its stamps name content not yet committed)."""
    written = info.get(WRITTEN_INFO)
    if written is None:
        written = info[WRITTEN_INFO] = set()
    written.add((tenant, uid))
    cache = info.get(OBJECT_CACHE_INFO)
    if cache is not None:
        cache.forget(tenant, uid)


def written_in(info: dict[str, Any], tenant: str, uid: str) -> bool:
    """Whether the session of ``info`` changed or inserted (tenant, uid)'s row."""
    written = info.get(WRITTEN_INFO)
    return written is not None and (tenant, uid) in written


#: What the memory of an entry is reckoned as (:func:`weight`): its stored bytes (the
#: attribute blob, the wrapped material), the attributes decoded (measured: about 6.4
#: times their blob; taken as 8), and what the caller may keep with it whatever the object
#: (the kept Get Attributes answers, kcm.core.attribute_answers: 4 of at most 2 KiB, the
#: clear key, Python's own overhead).
DECODED_FACTOR = 8
ENTRY_ALLOWANCE = 10 * 1024
#: The default bound on the cache's memory (``object_cache_bytes``): 10,000 ordinary
#: objects (an AES key's blob is a few hundred bytes) fit in it.
DEFAULT_MAX_BYTES = 128 << 20


def weight(columns: Any) -> int:
    """How much memory an entry of ``columns`` is reckoned to take (see
    :data:`DECODED_FACTOR`)."""
    attributes = getattr(columns, "attributes", None) or b""
    material = getattr(columns, "material", None) or b""
    return DECODED_FACTOR * len(attributes) + len(material) + ENTRY_ALLOWANCE


class CachedObject:
    """One object as read: its stamp, its columns as read (immutable) and the caller's
    decoded views of it (``views``: name → value, filled by the caller)."""

    __slots__ = ("stamp", "columns", "views", "filled", "weight")

    def __init__(self, stamp: Stamp, columns: Any, filled: float, weight: int = 0) -> None:
        self.stamp = stamp
        self.columns = columns
        self.views: dict[str, Any] = {}
        self.filled = filled
        self.weight = weight


class ObjectCache:
    """At most ``size`` objects, each for at most ``ttl`` seconds, weighing at most
    ``max_bytes`` in all (:func:`weight`; ``size`` 0: none)."""

    def __init__(self, size: int = 10_000, ttl: float = 300.0,
                 clock: Callable[[], float] = time.monotonic,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if size < 0 or ttl <= 0 or max_bytes <= 0:
            raise ValueError("an object cache needs a size >= 0, a ttl > 0 and max_bytes > 0")
        self.size = size
        self.ttl = ttl
        self.max_bytes = max_bytes
        #: An object weighing more is not kept (it would push out 64 others' worth).
        self.max_entry_bytes = max_bytes // 64
        #: What the entries weigh in all (:func:`weight`).
        self.bytes = 0
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], CachedObject] = OrderedDict()
        self._lock = threading.Lock()
        #: Counts the forgets: a transaction notes it when it begins (:data:`CACHE_EPOCH_INFO`).
        self.epoch = 0
        #: The keys forgotten lately, with the epoch of their last forget (at most
        #: :data:`FORGOTTEN_KEPT`), and the latest epoch no longer remembered by key.
        self._forgotten: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._forgotten_floor = 0

    def __len__(self) -> int:
        return len(self._entries)

    def holds(self, tenant: str, uid: str) -> bool:
        """Whether there is an entry of (tenant, uid), current or not."""
        return (tenant, uid) in self._entries

    def peek(self, tenant: str, uid: str) -> CachedObject | None:
        """The entry of (tenant, uid), current or not, left as it is (any thread: a hint,
        never the object as a transaction reads it)."""
        return self._entries.get((tenant, uid))

    def get(self, tenant: str, uid: str, stamp: Stamp) -> CachedObject | None:
        """The entry of (tenant, uid) if it has ``stamp`` and is not too old; a stale or
        old entry is dropped."""
        key = (tenant, uid)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.stamp != stamp or self._clock() - entry.filled >= self.ttl:
                del self._entries[key]
                self.bytes -= entry.weight
                return None
            self._entries.move_to_end(key)
            return entry

    def put(self, tenant: str, uid: str, stamp: Stamp, columns: Any,
            since: int | None = None) -> CachedObject:
        """A new entry for (tenant, uid) at ``stamp`` (kept unless the cache has no room
        at all); the least recently used and the expired go to make room.

        ``since``: the :attr:`epoch` when the reading transaction began. An entry whose key
        was forgotten since is not kept (nor one read before the oldest forget remembered):
        a change committing meanwhile forgot it, and the read may be of the content before
        (a Destroy's key, put back in the clear after the Destroy dropped it)."""
        now = self._clock()
        entry = CachedObject(stamp, columns, now, weight(columns))
        if not self.size or entry.weight > self.max_entry_bytes:
            return entry  # (used by this request, kept by none)
        key = (tenant, uid)
        with self._lock:
            if since is not None and (since < self._forgotten_floor
                                      or self._forgotten.get(key, -1) > since):
                return entry
            entries = self._entries
            replaced = entries.pop(key, None)
            if replaced is not None:
                self.bytes -= replaced.weight
            entries[key] = entry
            self.bytes += entry.weight
            while len(entries) > self.size or self.bytes > self.max_bytes:
                self.bytes -= entries.popitem(last=False)[1].weight
            self._expire(now)
        return entry

    def forget(self, tenant: str, uid: str) -> None:
        """Drop (tenant, uid)'s entry: its row is changing (its key may be destroyed), or
        has changed (a transaction that changed it forgets it again once committed: what a
        reader put back meanwhile was read before). No transaction that began before this
        puts it back (:meth:`put`)."""
        key = (tenant, uid)
        with self._lock:
            self.epoch += 1
            forgotten = self._forgotten
            forgotten[key] = self.epoch
            forgotten.move_to_end(key)
            if len(forgotten) > FORGOTTEN_KEPT:
                self._forgotten_floor = forgotten.popitem(last=False)[1]
            entry = self._entries.pop(key, None)
            if entry is not None:
                self.bytes -= entry.weight

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0

    def expire(self) -> int:
        """Drop every entry filled ``ttl`` seconds ago or more, wherever it stands (those
        read again are at the recent end, filled long ago all the same); how many. Run
        every ``ttl / 10`` seconds (kcm-core's ``kcm-object-cache-expiry``): :meth:`put`
        and :meth:`get` drop only what they meet, so a cache no request fills kept its
        keys in the clear for as long as nobody asked."""
        now = self._clock()
        with self._lock:
            expired = [key for key, entry in self._entries.items()
                       if now - entry.filled >= self.ttl]
            for key in expired:
                self.bytes -= self._entries.pop(key).weight
        return len(expired)

    def _expire(self, now: float) -> None:
        """Drop expired entries from the least recently used end (those in use are
        dropped by :meth:`get`)."""
        entries = self._entries
        while entries:
            key, oldest = next(iter(entries.items()))
            if now - oldest.filled < self.ttl:
                return
            del entries[key]
            self.bytes -= oldest.weight
