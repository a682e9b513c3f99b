"""The gateway's service keys (L3s), held in memory (ARCHITECTURE §4).

What it promises:

* An L3 is fetched from the core on first use, by uid or as the current version of a
  (tenant, service); reads never touch the network: a read of something not held is a
  *miss*, which the request handler fetches (the one synchronous call to the core a hot-path
  request may make) before running the request again. Why a fetch failed belongs to the
  request that asked (:meth:`L3Cache.ensure` answers it), never to the cache, save the
  core's "no such L3", which is the same for every caller and remembered briefly (below).
* An L3 is fresh for ``ttl`` seconds after the core last confirmed it. A stale one keeps
  serving and is refreshed in the background while the core is reachable, as is every one
  held that a request used in the last ``idle`` seconds, as it comes due
  (:meth:`L3Cache.refresh_due`): at ``ttl``, up to :data:`REFRESH_JITTER` of it early,
  drawn at each confirmation so that keys fetched together (a prewarm, a relink) do not
  stay in step, in the order they come due, at most ``refresh_batch`` in one reactor turn
  (the rest in the next), so that no turn's work grows with the number held.
* What no request used for ``idle`` seconds (a service read by its current version, a
  version read by uid) is not refreshed any more, and once also past ``max_stale`` (when it
  could not serve anyway) it is forgotten: the service's state, the version's material,
  their refresh schedules and the version's opened DEKs, so that memory and the core's
  refresh load follow the working set. Its tombstones stay. A later request fetches it
  again, as a miss. A read marks it used by storing the clock value the read takes anyway;
  ``idle`` 0 never forgets (each is refreshed for as long as it is held).
* With the core unreachable an L3 serves up to ``max_stale`` seconds after its last
  successful refresh; after that every use fails closed with a KmipError saying why.
* Who asks is decided before anything about a version is looked at: a version held here
  (or dropped) that the caller may not use (:func:`kcm.l4.authorize.may_use_service_key`)
  is a miss for that caller, fetched on its behalf like a version never seen, so that the
  core answers (and audits) it, and another tenant's key costs the same work and gets the
  same answer as an unknown one. A refusal of who asks from the core names the key's
  tenant and service; it becomes a :class:`ServiceKeyUseDenied`, which the handler logs.
* Events from the core apply at once: ``l3.rotated`` fetches the new current version,
  ``l3.state`` updates a version (Deactivated: it only decrypts from then on; Active: the
  service's current version is fetched again, as on ``l3.rotated``) or drops it
  (Compromised, Destroyed: its material is forgotten, and the version is kept as a marker
  of its tenant, service and state, which the L4 engine answers by exactly as the core's
  engine does; at most ``max_dropped`` markers, least recently used out first),
  ``l4.tombstone`` refuses the token, ``tenant.removed`` forgets all of the tenant's
  (markers too: its tokens are then answered as the core answers them, Object Not Found),
  ``policy`` is only logged here (the gateway service applies the policy it carries to new
  client connections: :class:`kcm.gateway.service.GatewayService`). Each applied event is
  logged with its sequence number (an operator sees what a gateway caught up on after a reconnect).
  An event about one version finds the services it is current for by its uid, without
  looking at the others held.

Tombstones come with each version fetched (those made before this process followed the
core's events: :meth:`L3Cache.store` takes them before the version is used) and then from
``l4.tombstone`` events; a version that came without them (a core older than link version 5,
or too many to send) is overflowed at once (below), and, from a core of link version 9, has
them paged in meanwhile (:mod:`kcm.gateway.tombstone_pages`): once all are in, it is held
whole and served here again (:meth:`L3Cache.whole`).

Tombstones are bounded. They are held by the L3 they belong to, and go with it when it is
destroyed (the engine answers Object Destroyed for every token under a destroyed L3, at the
core too, whether or not the token was revoked first). Beyond ``max_tombstones`` the L3 with
the most is given up: its tombstones are forgotten and it joins :attr:`L3Cache.overflowed`,
whose L4 requests the gateway forwards to the core (which keeps every tombstone) instead of
answering them; an error is logged and the metrics show it. Rotating the service key and
destroying the old version ends it.

The DEKs the L4 engine opened under the L3s held here (``opened_keys``, when the gateway
keeps them: :mod:`kcm.l4.opened_keys`) are forgotten with what could change their use: an
L3 version's state change, its destruction or drop, or its tombstones given up forget its
DEKs, a tombstone forgets its token's, a resync forgets them all.

Fetches are bounded per tenant, so that one tenant's misses cannot crowd out another's
requests (docs/operations.md, "Limits and hostile clients"):

* one fetch of a need runs at a time on behalf of one caller: a request that needs what is
  being fetched for that caller already (or waits to be) awaits that fetch;
* at most ``max_fetches_per_tenant`` fetches of one tenant's callers (requests and
  background refreshes alike) are in flight at once; the others wait their turn in that
  tenant's queue, in order, and are answered as they would have been (a queue, not a
  refusal: a tenant with many keys and a cold cache is served, only later). A request
  whose client left is cancelled (:meth:`L3Cache.ensure`'s Deferred): its waiting fetches
  that no other request awaits leave the queue. At most ``max_waiting_per_tenant`` wait
  per tenant; a fetch beyond that fails at once (General Failure, try again), so clients
  that send and leave faster than the core answers cannot grow the queue;
* the core's "no such L3" for a uid (Object Not Found, about no one's key) is remembered
  per (caller's tenant, uid) for ``not_found_ttl`` seconds, at most ``max_not_found`` of
  them (least recently used out first): asked again meanwhile, the same answer is given
  without asking the core. An ``l3.rotated`` or ``l3.state`` event naming the uid, and a
  version of it fetched, forget it at once, so a new L3 is usable as soon as its event
  comes; a "not found" whose fetch was sent before an ``l3.rotated`` event came is not
  remembered (the L3 may have been made meanwhile). So is the core's refusal of another
  tenant's L3 (the same answer, which no caller of the asking tenant can ever change),
  so that asking again costs what asking for a missing one does; a refusal of another
  service of the caller's own tenant is not (another of its callers may be allowed). Such a
  refusal is not forgotten with the uid's "not found" (the owner fetching, using or
  rotating it): it stays its ``not_found_ttl``, as a missing uid's answer does, or
  another tenant's next request would go to the core whenever the owner used its key.
* An overflowed L3 sends a request to the core only when its caller may use it
  (:meth:`L3Cache.names_overflowed`); another tenant's is answered as a missing one.

Conditional fetches (link version 8; with ``conditional``, as kcm-gateway runs it): a
fetch of something held (a refresh, mostly) says what is held, as the digest of the answer
that would leave it exactly so (:meth:`L3Cache._held_answer`: each version as held, its
state as the events left it, with the tombstones held of it (of an overflowed one, those
the core's answers carry of it, when known: :meth:`L3Cache._note_sent`), or none for one
whose do not fit in the answer, by the core's rule; a service's versions
as its last answer listed them). The core answers
:class:`~kcm.link.keys_digest.Unchanged` when its answer would be exactly that, and the
cache then takes, as that answer, what it holds, if it still holds exactly that and no
event said meanwhile that the service has a version to fetch (an "unchanged" is not
ordered with the events: one read before a revocation or a new version may come after its
event); otherwise the whole answer is fetched at once. Nothing held, or
a version of the service's last answer no longer held, sends a plain fetch. A core of an
earlier version gets plain fetches (:meth:`kcm.gateway.link_client.LinkClient.
fetch_service_keys`).

Fetches sent that failed are counted by why (:attr:`L3Cache.fetch_failures`, by
:data:`FETCH_FAILURES`: ``refused`` the core's answer, ``link_down``, ``timeout``, ``busy``
the link's bound or the tenant's queue full, ``error`` anything else); a "not found"
answered from memory, and a fetch whose requests all left, are not.

Time comes from the injected ``clock``, later reactor turns from ``call_later``, the
refresh jitter from ``random``; the core is reached only through the injected
``fetch``. Nothing here blocks, writes to disk or logs on the read path.
"""

from __future__ import annotations

import random as random_module
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from kcm.gateway.link_client import LinkBusy, LinkDown, LinkError, LinkTimeout, ServiceKeyRefused
from kcm.gateway.refresh_schedule import RefreshSchedule
from kcm.identity import Principal
from kcm.kernel.missing import identifier_label
from kcm.kmip.enums import ResultReason, State
from kcm.kmip.errors import KmipError
from kcm.l4.authorize import (
    ServiceKeyUseDenied,
    check_service_key_use,
    denial_reason,
    may_use_service_key,
)
from kcm.l4.opened_keys import OpenedKeys
from kcm.l4.service_key import DESTROYED_STATES, WITHOUT_MATERIAL_STATES, ServiceKey
from kcm.link.events import EventKind
from kcm.link.frames import MAX_SENT_TOMBSTONES
from kcm.link.keys_digest import Unchanged, keys_digest
from kcm.metrics import Tally

__all__ = ["FETCH_FAILURES", "CachedKeySource", "L3Cache", "Need", "ServiceKeyMissing"]

log = Logger()

#: ``fetch(caller, tenant, service, uid)``: the core's SERVICE_KEYS answer (current first).
#: With a uid, tenant and service are empty: the core finds the version by uid alone. With
#: conditional fetches, also ``fetch(..., held=digest)``, which may answer
#: :class:`~kcm.link.keys_digest.Unchanged`.
Fetch = Callable[..., Deferred]

#: What one request fetched: each need, and why its fetch failed (None: it succeeded).
FetchErrors = Mapping["Need", "KmipError | None"]

#: Fetches of one tenant's callers in flight at once (the rest wait their turn).
MAX_FETCHES_PER_TENANT = 8
#: Fetches in flight at once in all, every tenant's together: half the link's own bound on
#: fetches (its ``max_in_flight``, 1,024 by default), which fails a fetch beyond it at once.
#: Beyond this one a fetch waits in its tenant's queue, and the tenants with fetches waiting
#: take the free turns in turn: 300 tenants fetching at once (a gateway prewarming 3,000
#: services) failed other tenants' requests "core unreachable" at the link's bound.
MAX_FETCHES = 512
#: Fetches of one tenant's callers that may wait their turn (module docstring).
MAX_WAITING_PER_TENANT = 1024
#: What a fetch beyond them fails with (General Failure).
FETCHES_BUSY = "too many service key fetches wait for this tenant; try again"
#: TokenIds kept of overflowed versions, over all of them, for their refreshes' digests
#: (:meth:`L3Cache._note_sent`: at most an answer's room each): 20 answers' worth, about 3 MB.
MAX_OVERFLOWED_SENT = 20 * MAX_SENT_TOMBSTONES
#: Seconds the core's "no such L3" for a uid is remembered per tenant.
NOT_FOUND_TTL = 5.0
#: (tenant, uid) pairs whose "not found" is remembered at most.
MAX_NOT_FOUND = 10_000
#: Markers of dropped (Compromised, Destroyed) versions kept at most, least recently used
#: out first: a version whose marker went is fetched again when next named, and the core
#: answers it (its row says the same).
MAX_DROPPED = 100_000
#: Background refreshes started in one reactor turn at most; the rest follow in later turns,
#: so that requests are answered between them (10,000 in one turn stalled the gateway's
#: L4 answers for up to 355 ms).
REFRESH_BATCH = 256
#: Seconds a held service or version may go unused by requests before it is no longer
#: refreshed in the background (and is forgotten once past ``max_stale``): a day.
L3_IDLE = 86400.0
#: Up to this fraction of ``ttl`` early a held version or service is refreshed in the
#: background, drawn anew at each confirmation: keys fetched together (a prewarm, a relink)
#: are refreshed spread over this window, not all in one turn every ``ttl``.
REFRESH_JITTER = 0.125

#: Why a fetch failed, as the metrics count it (module docstring).
FETCH_FAILURES = ("refused", "link_down", "timeout", "busy", "error")

#: ``call_later(delay, f)``: run ``f`` in a later reactor turn (``reactor.callLater``).
CallLater = Callable[[float, Callable[[], None]], object]


@dataclass(frozen=True, slots=True)
class Need:
    """What a request needs and the cache lacks: one version by ``uid`` (``tenant`` and
    ``service`` empty: a uid names its L3 alone, whichever tenant owns it), or (``uid`` None)
    the current version of ``tenant``/``service``."""

    tenant: str = ""
    service: str = ""
    uid: str | None = None


class ServiceKeyMissing(KmipError):
    """A read of an L3 the cache does not hold (yet): the handler fetches ``need``."""

    def __init__(self, need: Need) -> None:
        super().__init__(ResultReason.GENERAL_FAILURE,
                         f"{_named(need)} is not available at the gateway")
        self.need = need


@dataclass(slots=True)
class _Held:
    key: ServiceKey
    confirmed_at: float  # when the core last answered for this version
    caller: Principal  # on whose behalf background refreshes ask the core
    used_at: float  # when a request last read it by uid (or it was fetched)


@dataclass(slots=True)
class _ServiceState:
    current_uid: str | None
    confirmed_at: float
    caller: Principal  # on whose behalf background refreshes ask the core
    used_at: float  # when a request last read its current version (or it was fetched)
    refreshing: bool = False
    #: The versions the core's last answer for the service carried, in its order (what a
    #: conditional fetch says is held: :meth:`L3Cache._held_answer`).
    answered: tuple[str, ...] = ()
    #: Events that had the service fetched again (a new version, another one Active): an
    #: "unchanged" to a fetch sent before one is not taken (it may have been read before).
    rotations: int = 0


class _Fetch:
    """One need fetched on behalf of one caller, and every request awaiting it (each with
    where to say why it failed)."""

    __slots__ = ("caller", "need", "tenant", "waiters", "rotations")

    def __init__(self, caller: Principal, need: Need, tenant: str) -> None:
        self.caller = caller
        self.need = need
        self.tenant = tenant
        self.waiters: list[tuple[Deferred[None], dict[Need, KmipError] | None]] = []
        #: :attr:`L3Cache._rotations` when it was sent.
        self.rotations = 0


class _NotFound:
    """The uids the core lately said it has no L3 for, per caller's tenant: each for ``ttl``
    seconds (those past it go as the next is added), at most ``size`` (the oldest out
    first). What it keeps is the answer's words, not the error raised: an exception that
    has been raised holds the frames it went through, and with them the request (its
    plaintext), so each use gets an error of its own (:func:`_detached`)."""

    def __init__(self, clock: Callable[[], float], ttl: float, size: int) -> None:
        self._clock = clock
        self._ttl = ttl
        self._size = size
        self._answers: OrderedDict[tuple[str, str], tuple[float, KmipError]] = OrderedDict()
        self._tenants_of: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, tenant: str, uid: str) -> KmipError | None:
        """The core's answer for ``uid`` to ``tenant``, if still remembered."""
        if not self._answers:
            return None
        key = (tenant, uid)
        found = self._answers.get(key)
        if found is None:
            return None
        if found[0] <= self._clock():
            self._remove(key)
            return None
        return _detached(found[1])

    def add(self, tenant: str, uid: str, error: KmipError) -> None:
        key = (tenant, uid)
        now = self._clock()
        self._answers[key] = (now + self._ttl, _detached(error))
        self._answers.move_to_end(key)  # (in the order they expire: one ttl for all)
        self._tenants_of.setdefault(uid, set()).add(tenant)
        answers = self._answers
        while answers and (len(answers) > self._size
                           or next(iter(answers.values()))[0] <= now):
            self._remove(next(iter(answers)))

    def forget(self, uid: str, owner: str | None = None) -> None:
        """Forget the answers for ``uid`` that may be untrue now (it exists now, or may, as
        a key of tenant ``owner`` when known): each "no such L3", and every answer to
        ``owner``'s callers. Another tenant's refusal of it stays until it expires: nothing
        the owner does changes it, and dropping it whenever the owner fetches, uses or
        rotates the key would send that tenant's next request to the core, which a
        missing uid's is not (a timing by which it could tell the two apart)."""
        tenants = self._tenants_of.get(uid)
        if tenants is None:
            return
        answers = self._answers
        for tenant in list(tenants):
            if tenant == owner or _owner_of(answers[(tenant, uid)][1]) is None:
                self._remove((tenant, uid))

    def clear(self) -> None:
        self._answers.clear()
        self._tenants_of.clear()

    def _remove(self, key: tuple[str, str]) -> None:
        del self._answers[key]
        tenants = self._tenants_of.get(key[1])
        if tenants is not None:
            tenants.discard(key[0])
            if not tenants:
                del self._tenants_of[key[1]]


def _owner_of(error: KmipError) -> tuple[str, str] | None:
    """The tenant and service of the L3 the core refused in ``error`` (None: the core said
    no L3 has the uid)."""
    return error.owner if isinstance(error, ServiceKeyRefused) else None


def _detached(error: KmipError) -> KmipError:
    """A new error of ``error``'s class saying what it says, with no traceback, cause or
    context (those hold the frames it was raised through)."""
    copy = type(error).__new__(type(error))
    copy.__dict__.update(error.__dict__)
    copy.args = error.args
    return copy


class _DroppedMarkers(OrderedDict[str, ServiceKey]):
    """The markers of dropped versions by uid, at most ``size``: a marker read (``get``)
    or dropped again is the most recently used; beyond ``size`` the least recently used
    goes."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get(self, uid: str, default: ServiceKey | None = None) -> ServiceKey | None:
        marker = super().get(uid)
        if marker is None:
            return default
        self.move_to_end(uid)
        return marker

    def put(self, marker: ServiceKey) -> None:
        self[marker.uid] = marker
        self.move_to_end(marker.uid)
        while len(self) > self.size:
            self.popitem(last=False)


class L3Cache:
    """Service keys by uid, the current one per (tenant, service), and L4 tombstones."""

    def __init__(self, fetch: Fetch, *, connected: Callable[[], bool],
                 clock: Callable[[], float], ttl: float = 300.0,
                 max_stale: float = 3600.0, idle: float = L3_IDLE,
                 max_tombstones: int = 1_000_000,
                 opened_keys: OpenedKeys | None = None,
                 max_fetches_per_tenant: int = MAX_FETCHES_PER_TENANT,
                 max_waiting_per_tenant: int = MAX_WAITING_PER_TENANT,
                 max_fetches: int = MAX_FETCHES,
                 not_found_ttl: float = NOT_FOUND_TTL,
                 max_not_found: int = MAX_NOT_FOUND,
                 max_dropped: int = MAX_DROPPED,
                 call_later: CallLater | None = None,
                 random: Callable[[], float] = random_module.random,
                 refresh_batch: int = REFRESH_BATCH,
                 conditional: bool = False) -> None:
        self._fetch = fetch
        #: Whether a fetch of something held says what is held (``fetch(..., held=digest)``,
        #: link version 8), so that the core may answer :class:`Unchanged` (module
        #: docstring, "Conditional fetches").
        self.conditional = conditional
        #: Fetches the core answered "unchanged", for the metrics.
        self.refreshes_unchanged = Tally()
        #: Fetches of one tenant's callers in flight at once (module docstring).
        self.max_fetches_per_tenant = max_fetches_per_tenant
        #: Fetches of one tenant's callers that may wait their turn (module docstring).
        self.max_waiting_per_tenant = max_waiting_per_tenant
        #: Fetches in flight at once in all (:data:`MAX_FETCHES`).
        self.max_fetches = max_fetches
        #: Fetches in flight in all, and the tenants with fetches waiting, in turn.
        self._running_total = 0
        self._turns: deque[str] = deque()
        self._in_turns: set[str] = set()
        #: Each fetch running or waiting, by (caller, need): a second request awaits it.
        self._fetches: dict[tuple[Principal, Need], _Fetch] = {}
        #: Fetches in flight, and those waiting their turn, by tenant.
        self._running: Counter[str] = Counter()
        self._waiting: dict[str, deque[_Fetch]] = {}
        #: Whether waiting fetches are being started (:meth:`_start_waiting`).
        self._starting = False
        #: The core's recent "no such L3", by (caller's tenant, uid).
        self._not_found = _NotFound(clock, not_found_ttl, max_not_found)
        #: ``l3.rotated`` events applied (a "not found" sent before one is not remembered).
        self._rotations = 0
        #: The DEKs opened under the L3s held here, forgotten with them (module docstring).
        self.opened_keys = opened_keys
        self._connected = connected
        self._clock = clock
        self.ttl = ttl
        self.max_stale = max_stale
        #: Seconds unused after which a service or version is not refreshed any more (0:
        #: never idle); forgotten once also past ``max_stale`` (module docstring).
        self.idle = idle
        #: Services forgotten that way, for the metrics.
        self.idle_forgotten = Tally()
        self._keys: dict[str, _Held] = {}
        self._services: dict[tuple[str, str], _ServiceState] = {}
        #: The services whose current version each uid is (so that an event about a
        #: version finds them without looking at every service held).
        self._current_of: dict[str, set[tuple[str, str]]] = {}
        #: When each held service and version is next refreshed in the background
        #: (:meth:`refresh_due`): services first, as a service's answer confirms its
        #: versions too.
        self._services_due: RefreshSchedule[tuple[str, str]] = RefreshSchedule()
        self._versions_due: RefreshSchedule[str] = RefreshSchedule()
        #: Where the rest of a refresh goes on in a later turn (None: in the same call).
        self._call_later = call_later
        self._random = random
        self.refresh_batch = refresh_batch
        self._refresh_continues = False
        #: Dropped versions: their tenant, service and state, without material (at most
        #: ``max_dropped``, least recently used out first; a removed tenant's forgotten).
        self._dropped = _DroppedMarkers(max_dropped)
        #: Revoked or destroyed L4 tokens (TokenIds), each with its L3, and by L3.
        self._tombstones: dict[str, str] = {}
        self._tombstones_of: dict[str, set[str]] = {}
        self.max_tombstones = max_tombstones
        #: L3s whose tombstones were given up at the bound: their L4 requests go to the core.
        self.overflowed: set[str] = set()
        #: Versions (of those in ``_tombstones_of``) whose every tombstone is held (taken from
        #: an answer or pages, the events applied since): still so when their key is
        #: forgotten idle, until a resync.
        self._whole: set[str] = set()
        #: Of overflowed versions, the tombstones the core's answers carry of them (the
        #: last answer's, or those held when given up at ``max_tombstones``, and the events
        #: since), while at most an answer's room: what a refresh's digest says of such a
        #: version, so that one refreshed unchanged can be answered "unchanged" (the core's
        #: answer carries them while they fit). Not used to serve anything; at most
        #: :data:`MAX_OVERFLOWED_SENT` TokenIds over all versions.
        self._sent_of: dict[str, set[str]] = {}
        self._sent_count = 0
        #: The versions whose tombstones are paged in (link version 9), when the gateway
        #: asks for them: :class:`kcm.gateway.tombstone_pages.TombstonePages` sets it.
        self.pages: Any = None
        self._refreshing_uids: set[str] = set()
        self.last_event_sequence = -1
        #: Reads by requests (:meth:`current`, :meth:`by_uid`), for the metrics: fresh,
        #: stale (past ``ttl``, served), missed (to fetch), expired (refused past max-stale).
        self.hits, self.stale_hits, self.misses, self.expired = Tally(), Tally(), Tally(), Tally()
        #: Fetches that failed, by why (:data:`FETCH_FAILURES`), for the metrics.
        self.fetch_failures: dict[str, Tally] = {why: Tally() for why in FETCH_FAILURES}

    # Reads (the engine's KeySource goes through these) ---------------------------------
    def key_source(self, principal: Principal, *, final: bool = False,
                   fetched: FetchErrors | None = None,
                   fast: bool = False) -> CachedKeySource:
        """A synchronous KeySource for one request of ``principal``. A miss of something in
        ``fetched`` (fetched for this request already: a need, and why its fetch failed if
        it did), or with ``final`` of anything, raises why the fetch failed (the request is
        not run again for it). Its reads are counted (:attr:`hits` and the others) once a
        request: in its first run on the general path, and, ``fast``, on the fast path
        unless they miss (the general path then reads them again); a run again after a fetch
        reads the same keys, uncounted."""
        return CachedKeySource(self, principal, final, fetched or {}, counted=not fetched,
                               misses=not fast)

    def lacks(self, need: Need, principal: Principal) -> bool:
        """Whether a read of ``need`` by ``principal`` would miss (so it must be fetched
        first, on that principal's behalf)."""
        try:
            if need.uid is None:
                self.current(need.tenant, need.service, counted=False)
            else:
                self.by_uid(need.uid, principal, counted=False)
        except ServiceKeyMissing:
            return True
        except KmipError:
            return False  # held, but refused: the run says why
        return False

    def is_tombstoned(self, token_id: str) -> bool:
        """Whether the core revoked or destroyed the L4 token ``token_id``."""
        return token_id in self._tombstones

    def current(self, tenant: str, service: str, *, counted: bool = True,
                misses: bool = True) -> ServiceKey:
        """The current version of ``tenant``/``service``; ServiceKeyMissing or KmipError.
        ``counted``: a request's read, counted in :attr:`hits` and the others (with
        ``misses`` false, not if it misses: the fast path's, whose miss the general path
        reads again). A read marks the service used (the clock value it reads anyway)."""
        state = self._services.get((tenant, service))
        held = None
        if state is not None and state.current_uid is not None:
            now = self._clock()
            if self._usable(now - state.confirmed_at, (tenant, service), counted and misses):
                held = self._keys.get(state.current_uid)
        if held is None:
            if counted and misses:
                self.misses.value += 1
            raise ServiceKeyMissing(Need(tenant, service))
        state.used_at = now
        if now - state.confirmed_at > self.ttl:
            if counted:
                self.stale_hits.value += 1
            self._refresh_service(tenant, service)
        elif counted:
            self.hits.value += 1
        return held.key

    def by_uid(self, uid: str, principal: Principal, *, counted: bool = True,
               misses: bool = True) -> ServiceKey:
        """Version ``uid`` for ``principal``; ServiceKeyMissing or KmipError.

        Who asks comes first: a version ``principal`` may not use is a miss, whether held,
        dropped or unknown here (the core answers it, the same way for each). A dropped
        version is its marker, without material: the engine answers by its state.
        ``counted``: as for :meth:`current`. A read of a held version marks it used."""
        held = self._keys.get(uid)
        known = held.key if held is not None else self._dropped.get(uid)
        if known is None or not may_use_service_key(principal, known.tenant, known.service):
            if counted and misses:
                self.misses.value += 1
            raise ServiceKeyMissing(Need(uid=uid))
        if held is None:
            if counted:
                self.hits.value += 1
            return known
        now = self._clock()
        if not self._usable(now - held.confirmed_at, uid, counted and misses):
            if counted and misses:
                self.misses.value += 1
            raise ServiceKeyMissing(Need(uid=uid))
        held.used_at = now
        if now - held.confirmed_at > self.ttl:
            if counted:
                self.stale_hits.value += 1
            self._refresh_uid(held)
        elif counted:
            self.hits.value += 1
        return held.key

    def _usable(self, age: float, key: str | tuple[str, str],
                counted: bool = False) -> bool:
        """Whether what was confirmed ``age`` seconds ago serves. False: past max-stale but
        the core is reachable, so fetch again. Raises: past max-stale and the core is
        unreachable (fail closed; ``counted``: in :attr:`expired`). ``key``: the version's
        uid, or (tenant, service) for a current version."""
        if age <= self.max_stale:
            return True
        if self._connected():
            return False
        if counted:
            self.expired.value += 1
        what = (f"service key {identifier_label(key)}" if isinstance(key, str)
                else f"the service key of {key[0]}/{key[1]}")
        raise KmipError(ResultReason.GENERAL_FAILURE,
                        f"{what} was last confirmed by the core {age:.0f} s ago, more than the "
                        f"{self.max_stale:.0f} s allowed while the core is unreachable; "
                        "refusing to use it")

    # Fetches ----------------------------------------------------------------------------
    def ensure(self, needs: Iterable[Need],
               caller: Principal) -> Deferred[dict[Need, KmipError]]:
        """Fetch every need on behalf of ``caller``; fires when all have answered, with why
        each failed fetch failed (never fails itself). Cancelled (the request's client
        left), it fires at once, its fetches counted as failed; those no other request
        awaits and not sent yet are not made."""
        errors: dict[Need, KmipError] = {}
        fetches = [self._fetch_need(need, caller, errors) for need in set(needs)]
        done: Deferred[dict[Need, KmipError]] = DeferredList(
            fetches, consumeErrors=True).addCallback(lambda _: errors)
        return done

    def _fetch_need(self, need: Need, caller: Principal,
                    errors: dict[Need, KmipError] | None = None) -> Deferred[None]:
        """Fetch ``need`` for ``caller`` (module docstring: merged with the same fetch
        running or waiting, in its tenant's turn, or answered from a recent "not found");
        fires when it has, with why it failed in ``errors``."""
        tenant = _tenant_of(caller)
        if need.uid is not None:
            not_found = self._not_found.get(tenant, need.uid)
            if not_found is not None:
                if errors is not None:
                    errors[need] = not_found
                return succeed(None)
        key = (caller, need)
        fetch = self._fetches.get(key)
        if fetch is None:
            if (self._running[tenant] < self.max_fetches_per_tenant
                    and self._running_total < self.max_fetches and tenant not in self._waiting):
                fetch = self._fetches[key] = _Fetch(caller, need, tenant)
                done = self._awaiting(fetch, errors)
                self._start(fetch)
                return done
            waiting = self._waiting.get(tenant)
            if waiting is None:
                waiting = self._waiting[tenant] = deque()
                if tenant not in self._in_turns:
                    self._turns.append(tenant)
                    self._in_turns.add(tenant)
            if len(waiting) >= self.max_waiting_per_tenant:
                self.fetch_failures["busy"].value += 1
                if errors is not None:
                    errors[need] = KmipError(ResultReason.GENERAL_FAILURE, FETCHES_BUSY)
                return succeed(None)
            fetch = self._fetches[key] = _Fetch(caller, need, tenant)
            waiting.append(fetch)
        return self._awaiting(fetch, errors)

    def _awaiting(self, fetch: _Fetch, errors: dict[Need, KmipError] | None
                  ) -> Deferred[None]:
        """A Deferred firing when ``fetch`` has answered; cancelled, it stops awaiting, and
        a fetch still waiting its turn that no one awaits any more leaves the queue."""

        def abandoned(done: Deferred[None]) -> None:
            if errors is not None:  # the request goes on as if the fetch had failed
                errors.setdefault(fetch.need, KmipError(ResultReason.GENERAL_FAILURE,
                                                        "the request was cancelled"))
            fetch.waiters = [waiter for waiter in fetch.waiters if waiter[0] is not done]
            if fetch.waiters or self._fetches.get((fetch.caller, fetch.need)) is not fetch:
                return
            waiting = self._waiting.get(fetch.tenant)
            if waiting is None or fetch not in waiting:
                return  # running: it finishes, and its keys are kept, as any fetch's
            waiting.remove(fetch)
            if not waiting:  # (its turn goes when next looked at: _start_waiting)
                del self._waiting[fetch.tenant]
            del self._fetches[(fetch.caller, fetch.need)]

        done: Deferred[None] = Deferred(abandoned)
        fetch.waiters.append((done, errors))
        return done

    def _start(self, fetch: _Fetch) -> None:
        caller, need = fetch.caller, fetch.need
        self._running[fetch.tenant] += 1
        self._running_total += 1
        fetch.rotations = self._rotations
        held = self._held_answer(need) if self.conditional else None
        rotations = self._rotations_of(need)
        d = self._send_fetch(caller, need, None if held is None else keys_digest(held))

        def fetched(keys: list[ServiceKey] | Unchanged) -> None:
            if isinstance(keys, Unchanged):
                now_held = self._held_answer(need)
                if now_held is None or keys_digest(now_held) != keys.digest \
                        or self._rotations_of(need) != rotations:
                    # An event changed what is held since the fetch was sent, or said the
                    # service has a version to fetch (the "unchanged" is not ordered with
                    # the events: it may have been read before that one's change), so ask
                    # for the whole answer.
                    self._send_fetch(caller, need, None).addCallbacks(fetched, failed)
                    return
                self.refreshes_unchanged.value += 1
                keys = now_held  # the answer that was not sent: exactly what is held
            try:
                self.store(keys, caller, current_of=None if need.uid else
                           (need.tenant, need.service))
            except Exception:
                self.fetch_failures["error"].value += 1
                self._finished(fetch, _as_kmip_error(Failure(), need))
                return
            self._finished(fetch, None)

        def failed(failure: Failure) -> None:
            self.fetch_failures[_failure_kind(failure)].value += 1
            error = _as_kmip_error(failure, need)
            if (need.uid is not None and fetch.rotations == self._rotations
                    and (_no_such_l3(error) or _another_tenants(error, fetch.tenant))):
                self._not_found.add(fetch.tenant, need.uid, error)
                if _no_such_l3(error) and need.uid in self._keys:
                    # The core has no L3 of this uid (a database restored from before it):
                    # what is held of it goes now, not at max_stale, and so do the DEKs it
                    # opened; it is answered as the missing key it is. (A refusal of who
                    # asks names the key's owner: that says nothing of the key.)
                    self._forget_version(need.uid)
            self._finished(fetch, error)

        d.addCallbacks(fetched, failed)

    def _send_fetch(self, caller: Principal, need: Need, held: bytes | None) -> Deferred:
        """``fetch`` ``need`` for ``caller``, saying it holds what ``held`` digests (None: a
        plain fetch); a fetch that fails synchronously is still just a failed fetch."""
        try:
            if held is None:
                return self._fetch(caller, need.tenant, need.service, need.uid)
            return self._fetch(caller, need.tenant, need.service, need.uid, held=held)
        except Exception:
            d: Deferred = Deferred()
            d.errback(Failure())
            return d

    def _rotations_of(self, need: Need) -> int:
        """How many events had ``need``'s service fetched again (0: a version by uid)."""
        if need.uid is not None:
            return 0
        state = self._services.get((need.tenant, need.service))
        return state.rotations if state is not None else 0

    def _held_answer(self, need: Need) -> list[ServiceKey] | None:
        """The SERVICE_KEYS answer for ``need`` that would leave what is held exactly as it
        is, or None when that cannot be told (nothing held, a version of the service's
        last answer no longer held): each version as held (its state as the events left
        it), with the tombstones held of it (:meth:`_as_sent`)."""
        if need.uid is not None:
            held = self._keys.get(need.uid)
            return None if held is None else self._as_sent([held.key])
        state = self._services.get((need.tenant, need.service))
        if state is None or not state.answered:
            return None
        keys = []
        for uid in state.answered:
            held = self._keys.get(uid)
            if held is None:
                return None
            keys.append(held.key)
        return self._as_sent(keys)

    def _as_sent(self, keys: list[ServiceKey]) -> list[ServiceKey]:
        """Held versions ``keys``, in order, as a SERVICE_KEYS would carry them to leave them
        so: each with the tombstones held of it (of an overflowed one, those the core's
        answers carry of it, when known; none when not: :meth:`_note_sent`), or none
        (absent) for one whose do not fit in what is left of the answer's
        :data:`~kcm.link.frames.MAX_SENT_TOMBSTONES` (the core's rule, newest first: a
        version held before its tombstones outgrew an answer is sent without them, and
        keeps those held, with the events'; :meth:`_learn_tombstones`)."""
        room = MAX_SENT_TOMBSTONES
        answer = []
        for key in keys:
            # (Counted before any is copied: a version may hold up to max_tombstones, whose
            # digest, 1,000,000 of them, took 3 s of the reactor's time.)
            held: Collection[str] | None = (
                self._sent_of.get(key.uid) if key.uid in self.overflowed  # (the core's)
                else self._tombstones_of.get(key.uid, ()))
            tombstones: frozenset[str] | None = None
            if held is not None and len(held) <= room:
                tombstones = frozenset(held)
                room -= len(held)
            answer.append(replace(key, tombstones=tombstones))
        return answer

    def _finished(self, fetch: _Fetch, error: KmipError | None) -> None:
        """``fetch`` answered (``error``: why it failed): its tenant's next fetch starts,
        then every request awaiting it goes on."""
        tenant = fetch.tenant
        del self._fetches[(fetch.caller, fetch.need)]
        self._running[tenant] -= 1
        self._running_total -= 1
        if self._running[tenant] <= 0:
            del self._running[tenant]
        try:
            for done, errors in fetch.waiters:
                if error is not None and errors is not None:
                    errors[fetch.need] = error
                done.callback(None)
        finally:
            self._start_waiting()

    def _start_waiting(self) -> None:
        """Start waiting fetches while there are turns free: the tenants with fetches
        waiting in turn, one fetch each time round, each within its own bound, all within
        :attr:`max_fetches`. A fetch that fails at once (no link, a busy link) finishes
        inside its start, which would start the next from there: one loop, not one level of
        recursion per waiting fetch, however many wait."""
        if self._starting:
            return  # (the loop below, further up the stack, goes on)
        self._starting = True
        try:
            turns = self._turns
            passed = 0  # tenants passed over since a fetch last started (all at their bound)
            while turns and passed < len(turns) and self._running_total < self.max_fetches:
                tenant = turns[0]
                waiting = self._waiting.get(tenant)
                if not waiting:
                    turns.popleft()  # (its last waiting fetch was given up)
                    self._in_turns.discard(tenant)
                    continue
                if self._running[tenant] >= self.max_fetches_per_tenant:
                    turns.rotate(-1)
                    passed += 1
                    continue
                following = waiting.popleft()
                if waiting:
                    turns.rotate(-1)
                else:
                    del self._waiting[tenant]
                    turns.popleft()
                    self._in_turns.discard(tenant)
                passed = 0
                self._start(following)
        finally:
            self._starting = False

    def prewarm(self, tenant: str, service: str,
                caller: Principal) -> Deferred[KmipError | None]:
        """Fetch the current version of ``tenant``/``service`` now; why it failed, if it
        did."""
        need = Need(tenant, service)
        return self.ensure([need], caller).addCallback(lambda errors: errors.get(need))

    def store(self, keys: list[ServiceKey], caller: Principal, *,
              current_of: tuple[str, str] | None = None) -> None:
        """Hold ``keys`` as confirmed now; with ``current_of``, the first Active one is that
        service's current version (the core sends the current version first). What was
        held keeps when it was last used (a refresh is no use); what was not is used now
        (a request, a prewarm or an event fetched it)."""
        now = self._clock()
        # One time for all: a service's answer confirms its versions, and a refresh of
        # the service (which comes first) confirms them again, not one fetch each.
        refresh_at = self._next_refresh(now)
        current: str | None = None
        for key in keys:
            if key.state not in DESTROYED_STATES:
                self._learn_tombstones(key, caller)
                if key.tombstones:
                    key = replace(key, tombstones=frozenset())  # held once: by L3 below
            if State(key.state) in WITHOUT_MATERIAL_STATES:
                self._drop(key)
                continue
            self._dropped.pop(key.uid, None)
            if len(self._not_found):
                self._not_found.forget(key.uid, key.tenant)
            held = self._keys.get(key.uid)
            if held is not None and held.key != key:
                self._forget_opened(key.uid)
            self._keys[key.uid] = _Held(key, now, caller,
                                        held.used_at if held is not None else now)
            self._versions_due.schedule(key.uid, refresh_at)
            if current is None and key.state == State.ACTIVE:
                current = key.uid
        if current_of is not None:
            state = self._services.get(current_of)
            if state is None:
                state = self._services[current_of] = _ServiceState(None, now, caller, now)
            else:
                state.confirmed_at, state.caller = now, caller
            self._set_current(current_of, state, current)
            state.answered = tuple(key.uid for key in keys)
            self._services_due.schedule(current_of, refresh_at)

    def _next_refresh(self, confirmed_at: float) -> float:
        """When something the core confirmed at ``confirmed_at`` is refreshed in the
        background: at ``ttl``, less up to :data:`REFRESH_JITTER` of it drawn at random, so
        that keys confirmed together do not stay in step."""
        return confirmed_at + self.ttl * (1.0 - REFRESH_JITTER * self._random())

    def _set_current(self, service: tuple[str, str], state: _ServiceState,
                     uid: str | None) -> None:
        """Make ``uid`` the current version of ``service`` (whose state is ``state``),
        keeping the index of services by current version."""
        old = state.current_uid
        if old == uid:
            return
        if old is not None:
            services = self._current_of.get(old)
            if services is not None:
                services.discard(service)
                if not services:
                    del self._current_of[old]
        state.current_uid = uid
        if uid is not None:
            self._current_of.setdefault(uid, set()).add(service)

    def _no_longer_current(self, uid: str) -> None:
        """Version ``uid`` is no service's current one any more (decrypt-only, dropped or
        forgotten): the next Create fetches the service's current version."""
        for service in self._current_of.pop(uid, ()):
            self._services[service].current_uid = None

    def _refresh_service(self, tenant: str, service: str) -> None:
        state = self._services[(tenant, service)]
        if state.refreshing or not self._connected():
            return
        state.refreshing = True

        def done(_: object) -> None:
            state.refreshing = False

        self._fetch_need(Need(tenant, service), state.caller).addBoth(done)

    def _refresh_uid(self, held: _Held) -> None:
        uid = held.key.uid
        if uid in self._refreshing_uids or not self._connected():
            return
        self._refreshing_uids.add(uid)
        self._fetch_need(Need(uid=uid), held.caller).addBoth(
            lambda _: self._refreshing_uids.discard(uid))

    @property
    def refresh_period(self) -> float:
        """Seconds between calls of :meth:`refresh_due` (the gateway's timer): half the
        jitter window (:data:`REFRESH_JITTER`), so that keys due at different times in it
        are refreshed in different calls; at least 0.5 s."""
        return max(self.ttl * REFRESH_JITTER / 2, 0.5)

    def refresh_due(self) -> None:
        """Refresh, in the background, everything held that is due (past its TTL, or up to
        :data:`REFRESH_JITTER` of it before), services first (a service's answer confirms
        its versions too). Called every :attr:`refresh_period`, so that keys not used for
        a while are still fresh when the core goes away.

        Only what is due is looked at (:class:`RefreshSchedule`), and at most
        ``refresh_batch`` of it in one call: the rest goes on in the next reactor turn
        (``call_later``; without one, in this call), until nothing is due. A refresh that
        does not confirm its key (the core failed it, its tenant's fetches were busy) is
        tried again a :attr:`refresh_period` later.

        What no request used for ``idle`` seconds (:meth:`current` for a service,
        :meth:`by_uid` for a version) is not refreshed when it comes due, but looked at
        again once past ``max_stale`` and then forgotten (:meth:`_forget_idle_service`,
        :meth:`_forget_idle_version`), unless used or confirmed meanwhile. A request for
        it afterwards is a miss, fetched as one never seen."""
        if not self._connected():
            return
        while self._refresh_some():
            if self._call_later is not None:
                if not self._refresh_continues:
                    self._refresh_continues = True
                    self._call_later(0, self._continue_refresh)
                return

    def _continue_refresh(self) -> None:
        self._refresh_continues = False
        self.refresh_due()

    def _refresh_some(self) -> bool:
        """Start the refresh of up to ``refresh_batch`` due services and versions; whether
        more are due."""
        now = self._clock()
        retry = now + self.refresh_period  # (its confirmation schedules it anew)
        # Last used before this: idle (0: never; an infinite past).
        unused_since = now - self.idle if self.idle > 0 else float("-inf")
        services_due, versions_due = self._services_due, self._versions_due
        for _ in range(self.refresh_batch):
            service = services_due.pop_due(now)
            if service is not None:
                state = self._services.get(service)
                if state is None:
                    continue
                if state.used_at >= unused_since or state.refreshing:
                    services_due.schedule(service, retry)
                    self._refresh_service(*service)
                elif now - state.confirmed_at >= self.max_stale:
                    self._forget_idle_service(service, state)
                else:
                    services_due.schedule(service, state.confirmed_at + self.max_stale)
                continue
            uid = versions_due.pop_due(now)
            if uid is None:
                return False
            held = self._keys.get(uid)
            if held is None:
                continue
            if self._confirmed_by_a_service(uid, unused_since):
                # The current version of a service refreshed in the background: that
                # refresh confirms it (and schedules it anew); a fetch by uid as well
                # asked the core twice a ttl for one key.
                versions_due.schedule(uid, retry)
            elif held.used_at >= unused_since or uid in self._refreshing_uids:
                versions_due.schedule(uid, retry)
                self._refresh_uid(held)
            elif now - held.confirmed_at >= self.max_stale:
                self._forget_idle_version(uid)
            else:  # (a service's answer may confirm it meanwhile: it is then kept)
                versions_due.schedule(uid, held.confirmed_at + self.max_stale)
        return services_due.any_due(now) or versions_due.any_due(now)

    def _confirmed_by_a_service(self, uid: str, unused_since: float) -> bool:
        """Whether ``uid`` is the current version of a held service that is refreshed in
        the background (used since ``unused_since``)."""
        for service in self._current_of.get(uid, ()):
            state = self._services.get(service)
            if state is not None and (state.used_at >= unused_since or state.refreshing):
                return True
        return False

    def _forget_idle_service(self, service: tuple[str, str], state: _ServiceState) -> None:
        """Forget ``service``, unused for ``idle`` and past ``max_stale`` (it would be
        fetched again if used now): its state and schedule. Its versions go by their own
        use; tombstones stay."""
        del self._services[service]
        self._set_current(service, state, None)
        self._services_due.forget(service)
        self.idle_forgotten.value += 1

    def _forget_idle_version(self, uid: str) -> None:
        """Forget version ``uid``, unused for ``idle`` and past ``max_stale``: its material,
        schedule and opened DEKs, and that it is a service's current one (the next Create
        fetches the service). Its tombstones and overflow stay: a revoked token never comes
        back, and a version fetched again finds them."""
        self._forget_version(uid)

    # Events -----------------------------------------------------------------------------
    def apply_event(self, sequence: int, kind: str, tenant: str | None,
                    payload: Mapping[str, Any]) -> None:
        """Apply one event of the core's stream (docs/link-protocol.md §2, event kinds)."""
        try:
            known: EventKind | None = EventKind(kind)
        except ValueError:
            known = None  # a kind this gateway does not know (a newer core): skipped
        if known is EventKind.L3_ROTATED:
            # A new version: a "not found" for its uid is forgotten, and one on its way
            # now is not remembered (it may have been read before the version was made).
            self._rotations += 1
            self._not_found.forget(str(payload.get("unique_identifier", "")), tenant)
            self._rotated(tenant or "", str(payload.get("service", "")))
        elif known is EventKind.L3_STATE:
            self._not_found.forget(str(payload.get("unique_identifier", "")), tenant)
            self._state_changed(str(payload.get("unique_identifier", "")), tenant or "",
                                str(payload.get("service", "")), int(payload.get("state", 0)))
        elif known is EventKind.L4_TOMBSTONE:
            self._add_tombstone(str(payload["token_id"]),
                                str(payload.get("unique_identifier", "")))
        elif known is EventKind.POLICY:
            log.info("policy changed at the core (event {seq}); it applies to new connections",
                     seq=sequence)
        elif known is EventKind.TENANT_REMOVED:
            self._tenant_removed(tenant or "")
        elif known is EventKind.REDACTED:
            # Another tenant's event, of which a scoped gateway is sent the number and a
            # digest: nothing to apply, nothing to log (link version 6).
            self.last_event_sequence = max(self.last_event_sequence, sequence)
            return
        else:
            log.warn("ignoring unknown event kind {kind!r} (event {seq})", kind=kind,
                     seq=sequence)
        self.last_event_sequence = max(self.last_event_sequence, sequence)
        if known is not None:
            log.info("applied event {seq}: {kind} for tenant {tenant}", seq=sequence, kind=kind,
                     tenant=tenant)

    def _rotated(self, tenant: str, service: str) -> None:
        state = self._services.get((tenant, service))
        if state is None:
            return  # never used here: fetched on first use
        # The old version stays current (it is still Active) until the new one arrives.
        state.refreshing = True
        state.rotations += 1

        def done(_: object) -> None:
            state.refreshing = False

        self._fetch_need(Need(tenant, service), state.caller).addBoth(done)

    # Tombstones --------------------------------------------------------------------------
    @property
    def tombstone_count(self) -> int:
        """How many tombstones are held."""
        return len(self._tombstones)

    def names_overflowed(self, needs: Iterable[Need], principal: Principal) -> bool:
        """Whether any of ``needs`` is an L3 whose tombstones this gateway gave up and that
        ``principal`` may use (so the request must be answered by the core). Who asks comes
        first, as for a read (:meth:`by_uid`): another tenant's overflowed L3, or one whose
        owner is not known here yet, takes the local path as a missing one does (a miss,
        fetched on ``principal``'s behalf and asked again after the fetch), so that it
        costs what a missing uid costs, not a round trip to the core."""
        overflowed = self.overflowed
        if not overflowed:
            return False
        for need in needs:
            if need.uid in overflowed:
                known = self.known(need.uid)
                if known is not None and may_use_service_key(principal, known.tenant,
                                                             known.service):
                    return True
        return False

    def _learn_tombstones(self, key: ServiceKey, caller: Principal) -> None:
        """Take the tombstones ``key`` came with from the core, before it is used: those made
        before this gateway followed the core's events (a restart) are known only so. A
        version that came without them all is left to the core, as an overflowed one,
        unless it is held: it came with them all before, and the events since added the
        rest (a refresh may come without them when a newer version took the frame's room)."""
        uid = key.uid
        if key.tombstones is not None:
            for token_id in key.tombstones:
                self._add_tombstone(token_id, uid)
            self._held_whole(uid)
            if uid in self.overflowed:
                self._note_sent(uid, key.tombstones)
            return
        if uid in self.overflowed or uid in self._keys or uid in self._whole:
            return  # (whole: its key forgotten idle, its tombstones kept, the events too)
        held = self._tombstones_of.get(uid, set())
        self._forget_tombstones(uid)
        self.overflowed.add(uid)
        self._forget_opened(uid)
        if self.pages is not None and self.pages.start(uid, caller, held):
            log.info("the core sent service key {uid} without its L4 tombstones (too many "
                     "to send): its L4 requests go to the core while they come in pages",
                     uid=uid)
            return
        log.warn("the core sent service key {uid} without its L4 tombstones (a core older "
                 "than link version 5, or too many to send): its L4 requests go to the core "
                 "until a core of link version 9 pages them in", uid=uid)

    def _add_tombstone(self, token_id: str, l3_uid: str) -> None:
        if self.opened_keys is not None:
            self.opened_keys.forget_token(token_id)
        if l3_uid in self.overflowed:
            if self.pages is not None:
                self.pages.note(token_id, l3_uid)  # (a version being paged keeps it)
            sent = self._sent_of.get(l3_uid)
            if sent is not None and token_id not in sent:
                if len(sent) < MAX_SENT_TOMBSTONES and self._sent_count < MAX_OVERFLOWED_SENT:
                    sent.add(token_id)
                    self._sent_count += 1
                else:  # (past an answer's room: the core's answers carry none of it)
                    self._forget_sent(l3_uid)
            return
        if token_id in self._tombstones:
            return
        self._tombstones[token_id] = l3_uid
        self._tombstones_of.setdefault(l3_uid, set()).add(token_id)
        if len(self._tombstones) > self.max_tombstones:
            self._overflow()

    def _overflow(self) -> None:
        """Give up the tombstones of the L3 that has the most (see the module docstring)."""
        l3_uid, tokens = max(self._tombstones_of.items(), key=lambda entry: len(entry[1]))
        self._forget_tombstones(l3_uid)
        self.overflowed.add(l3_uid)
        self._note_sent(l3_uid, tokens)
        self._forget_opened(l3_uid)
        log.error("over {limit} L4 tombstones: the {count} of service key {uid} are left to "
                  "the core, which answers its L4 requests from now on (rotate the service "
                  "and destroy this version, or raise max_tombstones)",
                  limit=self.max_tombstones, count=len(tokens), uid=l3_uid)

    def _note_sent(self, uid: str, token_ids: Collection[str]) -> None:
        """Overflowed version ``uid``'s tombstones are ``token_ids`` (an answer carried them,
        or they were held when it was given up): kept for its refreshes' digests when they
        fit in an answer (and in :data:`MAX_OVERFLOWED_SENT`)."""
        self._forget_sent(uid)
        if len(token_ids) <= MAX_SENT_TOMBSTONES \
                and self._sent_count + len(token_ids) <= MAX_OVERFLOWED_SENT:
            self._sent_of[uid] = set(token_ids)
            self._sent_count += len(token_ids)

    def _forget_sent(self, uid: str) -> None:
        sent = self._sent_of.pop(uid, None)
        if sent is not None:
            self._sent_count -= len(sent)

    def whole(self, uid: str, token_ids: set[str], pages: int) -> None:
        """Version ``uid``'s tombstones all came in (``pages`` pages, and the events since):
        held from now on, and its L4 requests served here again (link version 9,
        :mod:`kcm.gateway.tombstone_pages`)."""
        if uid not in self.overflowed:
            return
        self.overflowed.discard(uid)
        self._forget_sent(uid)
        for token_id in token_ids:
            self._add_tombstone(token_id, uid)
        self._held_whole(uid)
        log.info("service key {uid}: its {count} L4 tombstones came in {pages} pages; its L4 "
                 "requests are served here again", uid=uid, count=len(token_ids), pages=pages)

    def _held_whole(self, uid: str) -> None:
        """Every tombstone of version ``uid`` is held now: so it stays, its key forgotten
        idle or not, until they are forgotten or a resync. Only one that has any (a
        fetch of another carries them all again): at most one uid a version held of."""
        if uid not in self.overflowed and uid in self._tombstones_of:
            self._whole.add(uid)

    def _forget_tombstones(self, l3_uid: str) -> None:
        self._whole.discard(l3_uid)
        for token_id in self._tombstones_of.pop(l3_uid, ()):
            del self._tombstones[token_id]

    def _state_changed(self, uid: str, tenant: str, service: str, new_state: int) -> None:
        self._forget_opened(uid)
        if new_state in DESTROYED_STATES:
            # Every token under it now answers Object Destroyed: its tombstones say nothing.
            self._forget_tombstones(uid)
            self.overflowed.discard(uid)
            self._forget_sent(uid)
            if self.pages is not None:
                self.pages.forget(uid)
        if new_state in WITHOUT_MATERIAL_STATES:
            held = self._keys.get(uid)
            version = held.key.version if held is not None else 0
            self._drop(ServiceKey(uid, tenant, service, version, new_state, b""))
            return
        if new_state == State.ACTIVE:
            self._activated(uid, tenant, service)
        held = self._keys.get(uid)
        if held is None:
            return
        held.key = replace(held.key, state=new_state)
        if new_state != State.ACTIVE:
            self._no_longer_current(uid)  # decrypt-only now: the next Create fetches

    def _activated(self, uid: str, tenant: str, service: str) -> None:
        """Version ``uid`` of ``tenant``/``service`` became Active (a successor re-keyed
        with an Offset, activated before its date): the core may seal under it now, so the
        service's current version is fetched again, as for a rotation, unless it is that
        version already (held here or not: the event names tenant and service)."""
        state = self._services.get((tenant, service))
        if state is not None and state.current_uid != uid:
            self._rotated(tenant, service)

    def _forget_version(self, uid: str) -> None:
        """Forget version ``uid`` altogether (no marker: the core has no such key)."""
        self._keys.pop(uid, None)
        self._versions_due.forget(uid)
        self._forget_opened(uid)
        self._no_longer_current(uid)

    def _drop(self, key: ServiceKey) -> None:
        """Forget ``key``'s material; keep who owns it and its state, for the answers."""
        uid = key.uid
        self._keys.pop(uid, None)
        self._versions_due.forget(uid)
        self._forget_opened(uid)
        self._dropped.put(replace(key, key=b""))
        self._no_longer_current(uid)

    def _tenant_removed(self, tenant: str) -> None:
        """``tenant`` was removed with its key hierarchy (``tenant.removed``, after the
        ``l3.state`` Destroyed of each of its L3s): forget everything of it, markers of
        dropped versions included, so that its L4 tokens are answered as the core answers
        them now that its rows are gone (a fetch: Object Not Found), not Object Destroyed
        from a marker. A tenant added again under the name has new L3s (new uids)."""
        if not tenant:
            return
        uids = [uid for uid, marker in self._dropped.items() if marker.tenant == tenant]
        uids += [uid for uid, held in self._keys.items() if held.key.tenant == tenant]
        for uid in uids:
            self._dropped.pop(uid, None)
            self._keys.pop(uid, None)
            self._versions_due.forget(uid)
            self._forget_tombstones(uid)
            self.overflowed.discard(uid)
            self._forget_sent(uid)
            if self.pages is not None:
                self.pages.forget(uid)
            self._forget_opened(uid)
        for service in [service for service in self._services if service[0] == tenant]:
            self._set_current(service, self._services.pop(service), None)
            self._services_due.forget(service)

    def resync(self) -> None:
        """Forget every held key (the core's event log went back in time, so events may have
        been missed); tombstones stay, a revoked token never comes back."""
        self._keys.clear()
        self._services.clear()
        self._current_of.clear()
        self._services_due.clear()
        self._versions_due.clear()
        self._dropped.clear()
        self._not_found.clear()
        self._whole.clear()  # (events missed: a version not held is taken whole no more)
        self._sent_of.clear()  # (and what answers carry of an overflowed one is not known)
        self._sent_count = 0
        if self.opened_keys is not None:
            self.opened_keys.clear()
        if self.pages is not None:
            self.pages.start_over()  # (what was missed may be below the cursors)

    def _forget_opened(self, l3_uid: str) -> None:
        if self.opened_keys is not None:
            self.opened_keys.forget_l3(l3_uid)

    # Introspection (tests, health) -------------------------------------------------------
    @property
    def size(self) -> int:
        """How many service key versions are held (with their material)."""
        return len(self._keys)

    def serving_left(self, now: float) -> float | None:
        """Seconds until the most recently confirmed service key held passes max-stale (at
        most; it is refreshed meanwhile while the core is reachable): how long L4
        operations can still be served without the core. None: no key is held."""
        if not self._keys:
            return None
        newest = max(held.confirmed_at for held in self._keys.values())
        return newest + self.max_stale - now

    @property
    def fetches_waiting(self) -> int:
        """Fetches waiting for their tenant's turn."""
        return sum(len(waiting) for waiting in self._waiting.values())

    @property
    def fetches_running(self) -> int:
        """Fetches sent to the core and not yet answered."""
        return sum(self._running.values())

    def holds(self, uid: str) -> bool:
        """Whether version ``uid`` is held."""
        return uid in self._keys

    def fetched_by(self, uid: str) -> Principal | None:
        """On whose behalf version ``uid`` was last fetched (None: it is not held)."""
        held = self._keys.get(uid)
        return held.caller if held is not None else None

    def known(self, uid: str) -> ServiceKey | None:
        """Version ``uid`` as held or dropped (whoever asks), or None."""
        held = self._keys.get(uid)
        return held.key if held is not None else self._dropped.get(uid)


class CachedKeySource:
    """The engine's KeySource over an :class:`L3Cache`, for one request of one principal.

    Records every miss in :attr:`misses`, so the handler knows what to fetch even when the
    engine turns the raised error into a failed batch item."""

    def __init__(self, cache: L3Cache, principal: Principal, final: bool,
                 fetched: FetchErrors, *, counted: bool = True, misses: bool = True) -> None:
        self._cache = cache
        self._principal = principal
        self._final = final
        self._fetched = fetched
        self._counted, self._count_misses = counted, misses
        self.misses: list[Need] = []

    def current_service_key(self, tenant: str, service: str) -> ServiceKey:
        """The current L3 of ``tenant``/``service``."""
        try:
            return self._cache.current(tenant, service, counted=self._counted,
                                       misses=self._count_misses)
        except ServiceKeyMissing as e:
            raise self._missed(e) from None

    def service_key(self, uid: str) -> ServiceKey:
        """L3 version ``uid``, if this request's principal may use it."""
        try:
            # Asked for by uid alone: a version the principal may not use is fetched on its
            # behalf, so that the core's refusal (another tenant's: as a missing one) is the
            # answer, exactly as at the core.
            return self._cache.by_uid(uid, self._principal, counted=self._counted,
                                      misses=self._count_misses)
        except ServiceKeyMissing as e:
            raise self._missed(e) from None

    def is_tombstoned(self, token_id: str) -> bool:
        """Whether the L4 token ``token_id`` was revoked or destroyed."""
        return self._cache.is_tombstoned(token_id)

    def _missed(self, missing: ServiceKeyMissing) -> KmipError:
        need = missing.need
        if self._final or need in self._fetched:
            error = self._fetched.get(need)
            if error is not None:
                return _refusal(error, self._principal)
            # Fetched, yet not this principal's (the core served someone else meanwhile):
            # refused here by the same rule the core applies.
            known = self._cache.known(need.uid) if need.uid is not None else None
            if known is not None:
                try:
                    check_service_key_use(self._principal, known.tenant, known.service,
                                          uid=need.uid)
                except ServiceKeyUseDenied as denied:
                    return denied
            return missing
        self.misses.append(need)
        return missing


def _refusal(error: KmipError, principal: Principal) -> KmipError:
    """What the engine raises for a failed fetch: the core's refusal of who asks (it names
    the key's tenant and service) as the :class:`ServiceKeyUseDenied` it is, else ``error``."""
    if isinstance(error, ServiceKeyRefused) and error.owner is not None:
        tenant, service = error.owner
        why = denial_reason(principal, tenant, service) or "refused by the core"
        return ServiceKeyUseDenied(error.reason, error.message, why=why, tenant=tenant,
                                   service=service)
    return error


def _tenant_of(caller: Principal) -> str:
    """Whose turn a fetch for ``caller`` takes: its tenant (a principal of no tenant, such as
    an operator, is one of its own)."""
    return caller.tenant if caller.tenant is not None else caller.spiffe_id


def _no_such_l3(error: KmipError) -> bool:
    """Whether ``error`` is the core's "no L3 has this uid": Object Not Found, not about who
    asks (a refusal of who asks names the key's owner), so the same for every caller."""
    return (isinstance(error, ServiceKeyRefused) and error.owner is None
            and error.reason == ResultReason.OBJECT_NOT_FOUND)


def _another_tenants(error: KmipError, tenant: str) -> bool:
    """Whether ``error`` is the core's refusal of another tenant's L3 to a caller of
    ``tenant``: one no caller of that tenant is ever allowed, remembered as "no such L3"
    is, so that asking again costs what asking for a missing one does (it was one round
    trip to the core each time: 4-8 ms, against 0.6 ms for a missing one, which told the
    two apart). Kept with its owner: each use is still logged as the denial it is."""
    return (isinstance(error, ServiceKeyRefused) and error.owner is not None
            and error.owner[0] != tenant and error.reason == ResultReason.OBJECT_NOT_FOUND)


def _failure_kind(failure: Failure) -> str:
    """Why a fetch failed, as :data:`FETCH_FAILURES` names it."""
    value = failure.value
    if isinstance(value, KmipError):
        return "refused"
    if isinstance(value, LinkDown):
        return "link_down"
    if isinstance(value, LinkTimeout):
        return "timeout"
    if isinstance(value, LinkBusy):
        return "busy"
    return "error"


def _as_kmip_error(failure: Failure, need: Need) -> KmipError:
    if isinstance(failure.value, KmipError):
        return failure.value  # the core's refusal, with its reason
    what = _named(need)
    if isinstance(failure.value, LinkBusy):  # the core is there: this gateway is busy
        return KmipError(ResultReason.GENERAL_FAILURE,
                         f"{what} is not cached at the gateway, which is busy "
                         f"({failure.getErrorMessage()}); try again")
    if isinstance(failure.value, LinkError):
        return KmipError(ResultReason.GENERAL_FAILURE,
                         f"{what} is not cached at the gateway and the core is unreachable "
                         f"({failure.getErrorMessage()}); try again")
    log.failure("fetching {what} failed", failure, what=what)
    return KmipError(ResultReason.GENERAL_FAILURE, f"fetching {what} from the core failed")


def _named(need: Need) -> str:
    """``need`` as an answer names it (an identifier by its short label: it is the
    client's)."""
    if need.uid is not None:
        return identifier_label(need.uid)
    return f"the current service key of {need.tenant}/{need.service}"
