"""The gateway's service keys (L3s), held in memory (ARCHITECTURE §4).

What it promises:

* An L3 is fetched from the core on first use, by uid or as the current version of a
  (tenant, service); reads never touch the network: a read of something not held is a
  *miss*, which the request handler fetches (the one synchronous call to the core a hot-path
  request may make) before running the request again.
* An L3 is fresh for ``ttl`` seconds after the core last confirmed it. A stale one keeps
  serving and is refreshed in the background while the core is reachable.
* With the core unreachable an L3 serves up to ``max_stale`` seconds after its last
  successful refresh; after that every use fails closed with a KmipError saying why.
* Events from the core apply at once: ``l3.rotated`` fetches the new current version,
  ``l3.state`` updates a version (Deactivated: it only decrypts from then on) or drops it
  (Compromised, Destroyed: refused from then on), ``l4.tombstone`` refuses the token,
  ``policy`` is only logged here (the gateway service applies the policy it carries to new
  client connections: :class:`kcm.gateway.service.GatewayService`). Each applied event is
  logged with its sequence number (an operator sees what a gateway caught up on after a reconnect).

Time comes from the injected ``clock``; the core is reached only through the injected
``fetch``. Nothing here blocks, writes to disk or logs on the read path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from kcm.gateway.link_client import LinkError
from kcm.identity import Principal
from kcm.kmip.enums import ResultReason, State
from kcm.kmip.errors import KmipError
from kcm.l4.service_key import ServiceKey
from kcm.link.events import EventKind

__all__ = ["CachedKeySource", "L3Cache", "Need", "ServiceKeyMissing"]

log = Logger()

#: ``fetch(caller, tenant, service, uid)``: the core's SERVICE_KEYS answer (current first).
#: With a uid, tenant and service are empty: the core finds the version by uid alone.
Fetch = Callable[[Principal, str, str, "str | None"], Deferred]

#: States after which an L3 must not be used at all, not even to decrypt (ARCHITECTURE §4).
_DROP_STATES = frozenset((State.COMPROMISED, State.DESTROYED, State.DESTROYED_COMPROMISED))


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
        what = need.uid or f"the current service key of {need.tenant}/{need.service}"
        super().__init__(ResultReason.GENERAL_FAILURE, f"{what} is not available at the gateway")
        self.need = need


@dataclass(slots=True)
class _Held:
    key: ServiceKey
    confirmed_at: float  # when the core last answered for this version
    caller: Principal  # on whose behalf background refreshes ask the core


@dataclass(slots=True)
class _ServiceState:
    current_uid: str | None
    confirmed_at: float
    caller: Principal  # on whose behalf background refreshes ask the core
    refreshing: bool = False


class L3Cache:
    """Service keys by uid, the current one per (tenant, service), and L4 tombstones."""

    def __init__(self, fetch: Fetch, *, connected: Callable[[], bool],
                 clock: Callable[[], float], ttl: float = 300.0,
                 max_stale: float = 3600.0) -> None:
        self._fetch = fetch
        self._connected = connected
        self._clock = clock
        self.ttl = ttl
        self.max_stale = max_stale
        self._keys: dict[str, _Held] = {}
        self._services: dict[tuple[str, str], _ServiceState] = {}
        self._dropped: dict[str, int] = {}
        self._tombstones: set[str] = set()
        self._refreshing_uids: set[str] = set()
        self._fetch_errors: dict[Need, KmipError] = {}
        self.last_event_sequence = -1

    # Reads (the engine's KeySource goes through these) ---------------------------------
    def key_source(self, principal: Principal, *, final: bool = False,
                   fetched: frozenset[Need] = frozenset()) -> CachedKeySource:
        """A synchronous KeySource for one request of ``principal``. A miss of something in
        ``fetched`` (already fetched for this request), or with ``final`` of anything,
        raises the reason the last fetch failed (the request is not run again for it)."""
        return CachedKeySource(self, principal, final, fetched)

    def lacks(self, need: Need) -> bool:
        """Whether a read of ``need`` would miss (so it must be fetched first)."""
        try:
            if need.uid is None:
                self.current(need.tenant, need.service)
            else:
                self.by_uid(need.uid)
        except ServiceKeyMissing:
            return True
        except KmipError:
            return False  # held, but refused: the run says why
        return False

    def is_tombstoned(self, token_id: str) -> bool:
        """Whether the core revoked or destroyed the L4 token ``token_id``."""
        return token_id in self._tombstones

    def current(self, tenant: str, service: str) -> ServiceKey:
        """The current version of ``tenant``/``service``; ServiceKeyMissing or KmipError."""
        state = self._services.get((tenant, service))
        if state is None or state.current_uid is None:
            raise ServiceKeyMissing(Need(tenant, service))
        if not self._usable(state.confirmed_at, f"the service key of {tenant}/{service}"):
            raise ServiceKeyMissing(Need(tenant, service))
        held = self._keys.get(state.current_uid)
        if held is None:
            raise ServiceKeyMissing(Need(tenant, service))
        if self._is_stale(state.confirmed_at):
            self._refresh_service(tenant, service)
        return held.key

    def by_uid(self, uid: str) -> ServiceKey:
        """Version ``uid``, of whichever tenant (the engine decides who may use it)."""
        dropped = self._dropped.get(uid)
        if dropped is not None:
            raise KmipError(ResultReason.WRONG_KEY_LIFECYCLE_STATE,
                            f"service key {uid} is {State(dropped).name.lower()}; "
                            "the L4s under it can no longer be used")
        held = self._keys.get(uid)
        if held is None or not self._usable(held.confirmed_at, f"service key {uid}"):
            raise ServiceKeyMissing(Need(uid=uid))
        if self._is_stale(held.confirmed_at):
            self._refresh_uid(held)
        return held.key

    def _is_stale(self, confirmed_at: float) -> bool:
        return self._clock() - confirmed_at > self.ttl

    def _usable(self, confirmed_at: float, what: str) -> bool:
        """False: past max-stale but the core is reachable, so fetch again. Raises: past
        max-stale and the core is unreachable (fail closed)."""
        age = self._clock() - confirmed_at
        if age <= self.max_stale:
            return True
        if self._connected():
            return False
        raise KmipError(ResultReason.GENERAL_FAILURE,
                        f"{what} was last confirmed by the core {age:.0f} s ago, more than the "
                        f"{self.max_stale:.0f} s allowed while the core is unreachable; "
                        "refusing to use it")

    # Fetches ----------------------------------------------------------------------------
    def ensure(self, needs: Iterable[Need], caller: Principal) -> Deferred[None]:
        """Fetch every need on behalf of ``caller``; fires when all have answered (never
        fails: a failed fetch is remembered for the final retry's error)."""
        fetches = [self._fetch_need(need, caller) for need in set(needs)]
        done: Deferred[None] = DeferredList(fetches, consumeErrors=True).addCallback(
            lambda _: None)
        return done

    def _fetch_need(self, need: Need, caller: Principal) -> Deferred[None]:
        try:
            d = self._fetch(caller, need.tenant, need.service, need.uid)
        except Exception:  # a fetch that fails synchronously is still just a failed fetch
            d = Deferred()
            d.errback(Failure())

        def fetched(keys: list[ServiceKey]) -> None:
            self._fetch_errors.pop(need, None)
            self.store(keys, caller, current_of=None if need.uid else
                       (need.tenant, need.service))

        def failed(failure: Failure) -> None:
            self._fetch_errors[need] = _as_kmip_error(failure, need)

        return d.addCallbacks(fetched, failed)

    def fetch_error(self, need: Need) -> KmipError | None:
        """Why the last fetch of ``need`` failed, if it did."""
        return self._fetch_errors.get(need)

    def prewarm(self, tenant: str, service: str, caller: Principal) -> Deferred[None]:
        """Fetch the current version of ``tenant``/``service`` now."""
        return self.ensure([Need(tenant, service)], caller)

    def store(self, keys: list[ServiceKey], caller: Principal, *,
              current_of: tuple[str, str] | None = None) -> None:
        """Hold ``keys`` as confirmed now; with ``current_of``, the first Active one is that
        service's current version (the core sends the current version first)."""
        now = self._clock()
        current: str | None = None
        for key in keys:
            if State(key.state) in _DROP_STATES:
                self._drop(key.uid, key.state)
                continue
            self._dropped.pop(key.uid, None)
            self._keys[key.uid] = _Held(key, now, caller)
            if current is None and key.state == State.ACTIVE:
                current = key.uid
        if current_of is not None:
            state = self._services.get(current_of)
            if state is None:
                self._services[current_of] = _ServiceState(current, now, caller)
            else:
                state.current_uid, state.confirmed_at, state.caller = current, now, caller

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

    def refresh_due(self) -> None:
        """Refresh, in the background, everything held past its TTL (called periodically,
        so that keys not used for a while are still fresh when the core goes away)."""
        if not self._connected():
            return
        for (tenant, service), state in list(self._services.items()):
            if self._is_stale(state.confirmed_at):
                self._refresh_service(tenant, service)
        for held in list(self._keys.values()):
            if self._is_stale(held.confirmed_at):
                self._refresh_uid(held)

    # Events -----------------------------------------------------------------------------
    def apply_event(self, sequence: int, kind: str, tenant: str | None,
                    payload: Mapping[str, Any]) -> None:
        """Apply one event of the core's stream (docs/link-protocol.md §2, event kinds)."""
        try:
            known: EventKind | None = EventKind(kind)
        except ValueError:
            known = None  # a kind this gateway does not know (a newer core): skipped
        if known is EventKind.L3_ROTATED:
            self._rotated(tenant or "", str(payload.get("service", "")))
        elif known is EventKind.L3_STATE:
            self._state_changed(str(payload.get("unique_identifier", "")),
                                int(payload.get("state", 0)))
        elif known is EventKind.L4_TOMBSTONE:
            self._tombstones.add(str(payload["token_id"]))
        elif known is EventKind.POLICY:
            log.info("policy changed at the core (event {seq}); it applies to new connections",
                     seq=sequence)
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

        def done(_: object) -> None:
            state.refreshing = False

        self._fetch_need(Need(tenant, service), state.caller).addBoth(done)

    def _state_changed(self, uid: str, new_state: int) -> None:
        if new_state in _DROP_STATES:
            self._drop(uid, new_state)
            return
        held = self._keys.get(uid)
        if held is None:
            return
        held.key = replace(held.key, state=new_state)
        if new_state != State.ACTIVE:
            for state in self._services.values():
                if state.current_uid == uid:
                    state.current_uid = None  # decrypt-only now: the next Create fetches

    def _drop(self, uid: str, state: int) -> None:
        self._keys.pop(uid, None)
        self._dropped[uid] = state
        for service_state in self._services.values():
            if service_state.current_uid == uid:
                service_state.current_uid = None

    def resync(self) -> None:
        """Forget every held key (the core's event log went back in time, so events may have
        been missed); tombstones stay, a revoked token never comes back."""
        self._keys.clear()
        self._services.clear()
        self._dropped.clear()

    # Introspection (tests, health) -------------------------------------------------------
    def holds(self, uid: str) -> bool:
        """Whether version ``uid`` is held."""
        return uid in self._keys


class CachedKeySource:
    """The engine's KeySource over an :class:`L3Cache`, for one request of one principal.

    Records every miss in :attr:`misses`, so the handler knows what to fetch even when the
    engine turns the raised error into a failed batch item."""

    def __init__(self, cache: L3Cache, principal: Principal, final: bool,
                 fetched: frozenset[Need] = frozenset()) -> None:
        self._cache = cache
        self._principal = principal
        self._final = final
        self._fetched = fetched
        self.misses: list[Need] = []

    def current_service_key(self, tenant: str, service: str) -> ServiceKey:
        """The current L3 of ``tenant``/``service``."""
        try:
            return self._cache.current(tenant, service)
        except ServiceKeyMissing as e:
            raise self._missed(e) from None

    def service_key(self, uid: str) -> ServiceKey:
        """L3 version ``uid``."""
        try:
            # Asked for by uid alone: the core answers for whichever tenant's key it is, so a
            # refusal here (another tenant's, destroyed) says what the core itself would.
            return self._cache.by_uid(uid)
        except ServiceKeyMissing as e:
            raise self._missed(e) from None

    def is_tombstoned(self, token_id: str) -> bool:
        """Whether the L4 token ``token_id`` was revoked or destroyed."""
        return self._cache.is_tombstoned(token_id)

    def _missed(self, missing: ServiceKeyMissing) -> KmipError:
        if self._final or missing.need in self._fetched:
            return self._cache.fetch_error(missing.need) or missing
        self.misses.append(missing.need)
        return missing


def _as_kmip_error(failure: Failure, need: Need) -> KmipError:
    if isinstance(failure.value, KmipError):
        return failure.value  # the core's refusal, with its reason
    what = need.uid or f"the current service key of {need.tenant}/{need.service}"
    if isinstance(failure.value, LinkError):
        return KmipError(ResultReason.GENERAL_FAILURE,
                         f"{what} is not cached at the gateway and the core is unreachable "
                         f"({failure.getErrorMessage()})")
    log.failure("fetching {what} failed", failure, what=what)
    return KmipError(ResultReason.GENERAL_FAILURE, f"fetching {what} from the core failed")
