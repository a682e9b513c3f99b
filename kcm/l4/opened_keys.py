"""Opened L4 DEKs kept between requests: a bounded, expiring cache (the gateway's).

Opening an L4 token (AES-GCM under its L3) is most of what an L4 request costs beyond its
own cipher call, and a data plane sees the same tokens again and again. The L4 engine
(:class:`kcm.l4.engine.L4Engine`) keeps each DEK it opened here, with the AES-GCM object
built on it, and looks here before opening a token again. What it promises:

* It is only a memo of :func:`kcm.l4.token.open_sealed`: the engine decides everything
  else first, for every request (who asks, the L3's state, its destruction, the token's
  tombstone), exactly as without it, so an answer never depends on whether a DEK was
  cached. An entry is served only for its own token text under the very L3 version it was
  opened under (uid, tenant, service and key bytes compared), so a token never opens here
  under another tenant, service or version than its own.
* At most ``max_entries`` DEKs are held (the least recently used go first), each for at
  most ``ttl`` seconds after it was opened (``clock`` is injected), whether or not it is
  used meanwhile; :meth:`OpenedKeys.expire` forgets the expired ones.
* Its owner forgets what may no longer be served: the DEKs of an L3 version
  (:meth:`OpenedKeys.forget_l3`: its state changed, it was destroyed, dropped, or its
  tombstones overflowed), one token (:meth:`OpenedKeys.forget_token`: a tombstone), or
  everything (:meth:`OpenedKeys.clear`). The gateway's L3 cache does
  (:mod:`kcm.gateway.l3_cache`).
* Each lookup is counted, :attr:`OpenedKeys.hits` or :attr:`OpenedKeys.misses` (an
  attribute update each; the gateway's metrics read them when scraped).

The trade-off: plaintext DEKs stay in this process's memory up to ``ttl`` seconds after a
request used them, where without the cache they live for one request
(docs/operations.md, "Opened DEK cache").
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kcm.l4.service_key import ServiceKey
from kcm.tally import Tally

__all__ = ["OpenedKey", "OpenedKeys"]


class OpenedKey:
    """A key as the engine uses it: its bytes, and the AES-GCM object on them (built on
    first use)."""

    __slots__ = ("key", "_aesgcm")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self._aesgcm: AESGCM | None = None

    def aesgcm(self) -> AESGCM:
        """``AESGCM(key)``, built once."""
        aesgcm = self._aesgcm
        if aesgcm is None:
            aesgcm = self._aesgcm = AESGCM(self.key)
        return aesgcm


class _Entry:
    __slots__ = ("opened", "l3", "token_id", "expires")

    def __init__(self, opened: OpenedKey, l3: ServiceKey, token_id: str,
                 expires: float) -> None:
        self.opened = opened
        self.l3 = l3
        self.token_id = token_id
        self.expires = expires


class OpenedKeys:
    """DEKs opened by the L4 engine, by token (see the module docstring)."""

    def __init__(self, *, clock: Callable[[], float], max_entries: int = 10_000,
                 ttl: float = 300.0) -> None:
        if max_entries < 1 or not ttl > 0:
            raise ValueError("an opened-DEK cache holds at least one entry for a positive time")
        self._clock = clock
        self.max_entries = max_entries
        self.ttl = ttl
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        #: Tokens by L3 uid and by TokenId, to forget them by either.
        self._tokens_of: dict[str, set[str]] = {}
        self._token_of_id: dict[str, str] = {}
        #: Lookups (:meth:`get`) that found a DEK to serve, and those that did not.
        self.hits, self.misses = Tally(), Tally()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str, l3: ServiceKey) -> OpenedKey | None:
        """The DEK of ``token`` opened under ``l3``, if held, unexpired, and opened under
        that same L3 version; else None."""
        entry = self._entries.get(token)
        if entry is None:
            self.misses.value += 1
            return None
        held = entry.l3
        if entry.expires <= self._clock():
            self._remove(token)
            self.misses.value += 1
            return None
        if held is not l3 and (held.uid != l3.uid or held.tenant != l3.tenant
                               or held.service != l3.service or held.key != l3.key):
            self.misses.value += 1
            return None
        self._entries.move_to_end(token)
        self.hits.value += 1
        return entry.opened

    def put(self, token: str, token_id: str, l3: ServiceKey, dek: bytes) -> OpenedKey:
        """Hold ``dek``, just opened from ``token`` (TokenId ``token_id``) under ``l3``."""
        opened = OpenedKey(dek)
        if token in self._entries:
            self._remove(token)
        self._entries[token] = _Entry(opened, l3, token_id, self._clock() + self.ttl)
        self._tokens_of.setdefault(l3.uid, set()).add(token)
        self._token_of_id[token_id] = token
        while len(self._entries) > self.max_entries:
            self._remove(next(iter(self._entries)))
        return opened

    def forget_l3(self, l3_uid: str) -> None:
        """Forget every DEK opened under L3 version ``l3_uid``."""
        for token in list(self._tokens_of.get(l3_uid, ())):
            self._remove(token)

    def forget_token(self, token_id: str) -> None:
        """Forget the DEK of the token with TokenId ``token_id``, if held."""
        token = self._token_of_id.get(token_id)
        if token is not None:
            self._remove(token)

    def expire(self) -> None:
        """Forget every DEK held longer than ``ttl``."""
        now = self._clock()
        # Entries are put in time order and a hit only moves an entry to the end, so the
        # oldest are not always first: look at all of them.
        for token in [token for token, entry in self._entries.items() if entry.expires <= now]:
            self._remove(token)

    def clear(self) -> None:
        """Forget every DEK."""
        self._entries.clear()
        self._tokens_of.clear()
        self._token_of_id.clear()

    def _remove(self, token: str) -> None:
        entry = self._entries.pop(token)
        tokens = self._tokens_of.get(entry.l3.uid)
        if tokens is not None:
            tokens.discard(token)
            if not tokens:
                del self._tokens_of[entry.l3.uid]
        if self._token_of_id.get(entry.token_id) == token:
            del self._token_of_id[entry.token_id]
