"""A version's L4 tombstones asked for in pages (link version 9; docs/link-protocol.md §2,
"Tombstones in pages").

A version the core sent without its tombstones (more than one SERVICE_KEYS carries) is
overflowed at once (:class:`kcm.gateway.l3_cache.L3Cache`: its L4 requests go to the core);
:class:`TombstonePages` then asks the core for its tombstones, a page at a time
(FETCH_TOMBSTONES: the TokenIds after the last one received), as the caller whose fetch
brought the version. The ``l4.tombstone`` events of the version that come meanwhile are
kept with the pages (:meth:`TombstonePages.note`). Once the last page is in, the version's
tombstones are every one the core had when the first page was read (tombstones are deleted
only with their version) and every one made since the link's WELCOME (the events): the
cache holds them, and the version is served here again (:meth:`L3Cache.whole`).

What it bounds: one page in flight per version, at most ``at_once`` in all; the versions
waiting for a page wait in one queue per caller tenant, and the tenants take the free
places in turn (so one tenant's many versions delay another tenant's first by at most one
page, not all of theirs); the tombstones held and those paged together within the cache's
``max_tombstones`` (past it, the version stays overflowed and is paged no more, as at the
bound today). A core that sends no pages (an earlier release) leaves the version
overflowed until the link is made again to one that does (:meth:`TombstonePages.linked`: a
gateway that linked to a core of an earlier release first, in a rolling upgrade, pages them
in then). A failed page (the link lost, a timeout, the core busy or failing: a General
Failure) and a refused one (the caller may no longer use the version, or it is gone) start
the version over from its first page, on the link then up, after a back-off: ``retry``
seconds, doubled at each failure of the version in a row, at most ``max_retry``; the caller
asked for is then the one of the version's latest fetch. Meanwhile, and for a version that
is refused for good, its L4 requests go to the core, which answers them.
A version destroyed (or its tenant removed) meanwhile is forgotten (:meth:`forget`); its
page, if one comes, is dropped. A resync of the cache (events missed) starts every version
over (:meth:`start_over`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from kcm.gateway.link_client import TombstonePage
from kcm.identity import Principal
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError
from kcm.link.protocol import MAX_LINK_PAGES

__all__ = ["MAX_RETRY_DELAY", "RETRY_DELAY", "TombstonePages"]

log = Logger()

#: Seconds after a failed or refused page before the version starts over (doubled at each
#: failure of the version in a row, up to :data:`MAX_RETRY_DELAY`).
RETRY_DELAY = 1.0
#: The longest wait before a version is asked for again: a version the core refuses for
#: good (the caller may no longer use it, whoever fetched it) costs one page (and one audit
#: record at the core) a minute.
MAX_RETRY_DELAY = 60.0

#: ``fetch_page(caller, uid, after)``: the core's page (:class:`TombstonePage`).
FetchPage = Callable[[Principal, str, "str | None"], Deferred]


class PagedCache(Protocol):
    """What :class:`TombstonePages` needs of the L3 cache."""

    max_tombstones: int
    pages: Any
    overflowed: set[str]

    @property
    def tombstone_count(self) -> int: ...

    def whole(self, uid: str, token_ids: set[str], pages: int) -> None: ...

    def fetched_by(self, uid: str) -> Principal | None: ...


@dataclass(eq=False)
class _Paging:
    uid: str
    caller: Principal
    tokens: set[str] = field(default_factory=set)
    after: str | None = None
    pages: int = 0
    #: Whether a page of it is in flight, and whether to start over once it is in.
    in_flight: bool = False
    over: bool = False
    #: Its pages failed or refused in a row (the back-off).
    failures: int = 0
    #: The caller tenant its page in flight counts for.
    tenant: str = ""


class TombstonePages:
    """The versions whose tombstones are being paged in (module docstring)."""

    def __init__(self, cache: PagedCache, fetch_page: FetchPage, *,
                 connected: Callable[[], bool], taken: Callable[[], bool],
                 call_later: Callable[[float, Callable[[], None]], object],
                 at_once: int = MAX_LINK_PAGES, retry: float = RETRY_DELAY,
                 max_retry: float = MAX_RETRY_DELAY) -> None:
        self._cache = cache
        self._fetch_page = fetch_page
        self._connected = connected
        self._taken = taken
        self._call_later = call_later
        self.at_once = at_once
        self.retry = retry
        self.max_retry = max_retry
        self._paging: dict[str, _Paging] = {}
        #: The versions waiting for a page, per caller tenant, and the tenants in turn.
        self._waiting: dict[str, deque[_Paging]] = {}
        self._turns: deque[str] = deque()
        #: Pages in flight per caller tenant.
        self._running_of: dict[str, int] = {}
        self._running = 0
        #: Tombstones held here, of every version being paged.
        self._held = 0
        #: Versions a core that sends no pages left overflowed, each with the caller to page
        #: it for once a core sends them (:meth:`linked`).
        self._unpaged: dict[str, Principal] = {}
        cache.pages = self

    @property
    def pending(self) -> int:
        """Versions being paged (or waiting their turn)."""
        return len(self._paging)

    @property
    def running(self) -> int:
        """Pages asked for and not answered yet."""
        return self._running

    def start(self, uid: str, caller: Principal, held: set[str]) -> bool:
        """Page version ``uid`` in for ``caller`` (its tombstones held so far: ``held``);
        False when the core sends no pages (it stays overflowed)."""
        if uid in self._paging:
            return True
        if not self._taken():
            self._unpaged[uid] = caller
            return False
        self._unpaged.pop(uid, None)
        paging = self._paging[uid] = _Paging(uid, caller)
        for token_id in held:
            self._add(paging, token_id)
        if uid in self._paging:
            self._enqueue(paging)
            self._pump()
        return True

    def linked(self) -> None:
        """A link is up: if its core sends pages, page in each version a core that sends
        none left overflowed (a core of an earlier release, before a rolling upgrade
        reached it)."""
        if not self._unpaged or not self._taken():
            return
        unpaged, self._unpaged = self._unpaged, {}
        for uid, caller in unpaged.items():
            if uid in self._cache.overflowed and self.start(uid, caller, set()):
                log.info("the core sends tombstone pages: the L4 tombstones of service key "
                         "{uid} are paged in", uid=uid)

    def note(self, token_id: str, uid: str) -> None:
        """An ``l4.tombstone`` event of version ``uid``: kept with its pages."""
        paging = self._paging.get(uid)
        if paging is not None:
            self._add(paging, token_id)

    def forget(self, uid: str) -> None:
        """Stop paging version ``uid`` (destroyed, its tenant removed)."""
        self._unpaged.pop(uid, None)
        paging = self._paging.pop(uid, None)
        if paging is not None:
            self._held -= len(paging.tokens)

    def start_over(self) -> None:
        """Page every version being paged again from its first page (the cache
        resynchronised: events may have been missed, tombstones below the cursors among
        them); one whose page is in flight, once that page is in."""
        for paging in self._paging.values():
            if paging.in_flight:
                paging.over = True  # (once its page in flight is in: one at a time)
            else:
                paging.after = None

    def _add(self, paging: _Paging, token_id: str) -> None:
        if token_id in paging.tokens:
            return
        paging.tokens.add(token_id)
        self._held += 1
        cache = self._cache
        if cache.tombstone_count + self._held > cache.max_tombstones:
            self.forget(paging.uid)
            log.error("over {limit} L4 tombstones: service key {uid} is left to the core, "
                      "which answers its L4 requests (rotate the service and destroy this "
                      "version, or raise max_tombstones)", limit=cache.max_tombstones,
                      uid=paging.uid)

    def _enqueue(self, paging: _Paging) -> None:
        """``paging`` waits for its next page, in its caller tenant's queue."""
        tenant = _tenant_of(paging.caller)
        queue = self._waiting.get(tenant)
        if queue is None:
            queue = self._waiting[tenant] = deque()
            self._turns.append(tenant)
        queue.append(paging)

    def _pump(self) -> None:
        """Ask for pages while places are free: the tenants with versions waiting in turn,
        each one version's page at a time, the next place to the first in turn of those
        with the fewest pages in flight (a tenant that arrives while another holds every
        place takes the next one free)."""
        turns = self._turns
        while turns and self._running < self.at_once:
            running_of = self._running_of
            tenant = min(turns, key=lambda t: running_of.get(t, 0))
            turns.remove(tenant)
            queue = self._waiting[tenant]
            paging = queue.popleft()
            if queue:
                turns.append(tenant)
            else:
                del self._waiting[tenant]
            if self._paging.get(paging.uid) is paging:
                self._ask(paging)

    def _ask(self, paging: _Paging) -> None:
        self._running += 1
        paging.tenant = tenant = _tenant_of(paging.caller)
        self._running_of[tenant] = self._running_of.get(tenant, 0) + 1
        paging.in_flight = True
        try:
            d = self._fetch_page(paging.caller, paging.uid, paging.after)
        except Exception:
            d = Deferred()
            d.errback(Failure())
        d.addCallbacks(self._answered, self._failed, callbackArgs=(paging,),
                       errbackArgs=(paging,))

    def _landed(self, paging: _Paging) -> None:
        """``paging``'s page in flight is in (answered or failed)."""
        self._running -= 1
        paging.in_flight = False
        left = self._running_of[paging.tenant] - 1
        if left:
            self._running_of[paging.tenant] = left
        else:
            del self._running_of[paging.tenant]

    def _answered(self, page: TombstonePage, paging: _Paging) -> None:
        self._landed(paging)
        try:
            if self._paging.get(paging.uid) is not paging:
                return  # forgotten meanwhile: the page says nothing now
            paging.pages += 1
            paging.failures = 0
            for token_id in page.token_ids:
                self._add(paging, token_id)
                if self._paging.get(paging.uid) is not paging:
                    return  # (the bound gave it up)
            if page.token_ids:
                paging.after = page.token_ids[-1]
            if paging.over:  # (its tombstones are tombstones all the same: kept)
                paging.over, paging.after = False, None
                self._enqueue(paging)
                return
            if page.more:
                self._enqueue(paging)
                return
            del self._paging[paging.uid]
            self._held -= len(paging.tokens)
            self._cache.whole(paging.uid, paging.tokens, paging.pages)
        finally:
            self._pump()

    def _failed(self, failure: Failure, paging: _Paging) -> None:
        self._landed(paging)
        paging.over = False
        try:
            if self._paging.get(paging.uid) is not paging:
                return
            paging.after = None  # (the next attempt starts over)
            paging.failures += 1
            delay = min(self.retry * 2 ** min(paging.failures - 1, 32), self.max_retry)
            if isinstance(failure.value, KmipError) \
                    and failure.value.reason != ResultReason.GENERAL_FAILURE:
                # The core's refusal (the caller may no longer use the version, or it is
                # gone; a General Failure, the core busy or failing, is a failure): asked
                # again all the same, as the caller of its latest fetch, after the back-off.
                log.warn("the core refused the L4 tombstones of service key {uid}: {why}; "
                         "its L4 requests go to the core (asking again in {delay:g} s)",
                         uid=paging.uid, why=failure.value.message, delay=delay)
            self._call_later(delay, lambda: self._again(paging))
        finally:
            self._pump()

    def _again(self, paging: _Paging) -> None:
        if self._paging.get(paging.uid) is not paging:
            return
        if self._connected() and not self._taken():
            self.forget(paging.uid)
            self._unpaged[paging.uid] = paging.caller  # (paged once a core sends pages)
            log.warn("the core sends no tombstone pages (a core older than link version 9): "
                     "the L4 requests of service key {uid} go to the core", uid=paging.uid)
            return
        caller = self._cache.fetched_by(paging.uid)
        if caller is not None:
            paging.caller = caller  # (the one who fetched it last may use it still)
        self._enqueue(paging)
        self._pump()


def _tenant_of(caller: Principal) -> str:
    """The tenant whose turn a page of ``caller`` takes (a principal without one: its own)."""
    return caller.tenant if caller.tenant is not None else caller.id
