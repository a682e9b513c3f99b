"""The cache of data keys (L4s) an envelope uses, and the bounds on each key.

A :class:`DataKey` holds one L4's material, its AES-GCM object (made once: the hot path
reuses it), its precomputed header prefix and what it has sealed so far. A key seals at most
``max_messages`` records and ``max_bytes`` bytes and lives at most ``max_age`` seconds
(:class:`CacheLimits`; the defaults and why are in docs/sdk.md, "The cache"): past any bound
the sealer creates a fresh L4, and a key used only to open is fetched again (Get) at the
gateway, which is how a revocation reaches the application within ``max_age``. A key's age
counts from the answer to its Get (when the gateway last vouched for it). At most
``max_entries`` keys are kept for opening, the least recently used evicted first.

Evicted keys are zeroized as far as Python allows: the material kept here is a
``bytearray`` overwritten with zeros, and the references to the AES-GCM object are dropped;
copies inside OpenSSL's context and the immutable ``bytes`` the KMIP decoder produced are
beyond reach (freed, not wiped). The clock is injected (``time.monotonic`` by default).

A cache is not thread-safe: :class:`~kcm.client.sealer.Envelope` holds its lock around
every call. The sealing key is never zeroized while it is the sealing key (it is unset
first), and a key in the map is never zeroized while it is in the map.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["DEFAULT_LIMITS", "CacheLimits", "DataKey", "DataKeyCache"]


@dataclass(frozen=True, slots=True)
class CacheLimits:
    """How far one data key may be used (docs/sdk.md, "The cache")."""

    #: Seconds a key is used before the sealer makes a new one and an opener asks again.
    max_age: float = 300.0
    #: Records sealed under one key (random 96-bit nonces: collision chance below 2^-49).
    max_messages: int = 2 ** 24
    #: Plaintext bytes sealed under one key.
    max_bytes: int = 2 ** 36
    #: Keys kept for opening.
    max_entries: int = 1000

    def __post_init__(self) -> None:
        if self.max_age <= 0 or self.max_messages < 1 or self.max_bytes < 1 \
                or self.max_entries < 1:
            raise ValueError("cache limits must be positive")
        if self.max_messages > 2 ** 32:
            raise ValueError("more than 2^32 messages under one key with random nonces "
                             "breaks AES-GCM's bound (NIST SP 800-38D section 8.3)")


#: The defaults (docs/sdk.md, "The cache").
DEFAULT_LIMITS = CacheLimits()


class DataKey:
    """One cached L4: token, material, AES-GCM object, header prefix, use so far."""

    __slots__ = ("token", "material", "aead", "prefix", "expires", "messages", "bytes")

    def __init__(self, token: str, material: bytes, prefix: bytes, expires: float) -> None:
        if len(material) != 32:
            raise ValueError(f"a data key of {len(material)} bytes is not AES-256")
        self.token = token
        self.material: bytearray | None = bytearray(material)
        # From a copy: some cryptography releases (42) keep the buffer they are given, and
        # zeroize() would then turn a stream's kept AES-GCM object into an all-zero key.
        self.aead: AESGCM | None = AESGCM(bytes(material))
        self.prefix = prefix
        self.expires = expires
        self.messages = 0
        self.bytes = 0

    @property
    def zeroized(self) -> bool:
        return self.material is None

    def zeroize(self) -> None:
        """Overwrite the material with zeros and drop the AES-GCM object."""
        if self.material is not None:
            self.material[:] = bytes(len(self.material))
            self.material = None
        self.aead = None


class DataKeyCache:
    """Keys for opening, by token, bounded in age and number; see the module's docstring."""

    def __init__(self, limits: CacheLimits = DEFAULT_LIMITS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._keys: OrderedDict[str, DataKey] = OrderedDict()
        #: The key that seals now (also in the map, for opening).
        self.sealing: DataKey | None = None

    def __len__(self) -> int:
        return len(self._keys)

    def new_key(self, token: str, material: bytes, prefix: bytes) -> DataKey:
        """A key fetched now, valid until now + ``max_age``, added for opening."""
        key = DataKey(token, material, prefix, self.clock() + self.limits.max_age)
        self.put(key)
        return key

    def new_sealing_key(self, token: str, material: bytes, prefix: bytes,
                        size: int) -> DataKey:
        """A key fetched now to seal: added for opening, made the sealing key (the one
        before retired), with the record of ``size`` bytes that asked for it counted
        against it at once. That record is sealed at age 0, within every bound, so each
        key made for sealing takes at least the record it was made for, however short
        ``max_age`` is: a seal never loops creating keys that aged before it used them.
        ``size`` is at most ``max_bytes`` (the caller checked)."""
        key = self.new_key(token, material, prefix)
        self.retire_sealing()
        self.sealing = key
        key.messages = 1
        key.bytes = size
        return key

    def put(self, key: DataKey) -> None:
        old = self._keys.pop(key.token, None)
        if old is not None and old is not key:
            self._release(old)
        self._keys[key.token] = key
        while len(self._keys) > self.limits.max_entries:
            _, evicted = self._keys.popitem(last=False)
            self._release(evicted)

    def for_opening(self, token: str) -> DataKey | None:
        """The key of ``token`` if cached and younger than ``max_age``; an expired one is
        dropped (and zeroized) and None returned, so the caller asks the gateway again."""
        key = self._keys.get(token)
        if key is None:
            return None
        if self.clock() >= key.expires:
            self.drop(token)
            return None
        self._keys.move_to_end(token)
        return key

    def reserve(self, size: int) -> DataKey | None:
        """The sealing key with one more record of ``size`` bytes counted against it, or
        None when there is none or that record would pass one of its bounds (the caller
        makes a new key). The record is counted before it is sealed: a caller that fails
        to seal it leaves the key counted one record too many, never too few."""
        key = self.sealing
        limits = self.limits
        if (key is None or key.aead is None or key.messages >= limits.max_messages
                or key.bytes + size > limits.max_bytes or self.clock() >= key.expires):
            return None
        key.messages += 1
        key.bytes += size
        return key

    def drop(self, token: str) -> None:
        """Forget ``token`` (a key the gateway refused, or expired); zeroize it."""
        key = self._keys.pop(token, None)
        if self.sealing is not None and self.sealing.token == token:
            self.sealing, sealing = None, self.sealing
            sealing.zeroize()
        if key is not None:
            key.zeroize()

    def retire_sealing(self) -> None:
        """The sealing key reached a bound: stop sealing with it (it still opens until it
        expires or is evicted)."""
        key, self.sealing = self.sealing, None
        if key is not None and self._keys.get(key.token) is not key:
            key.zeroize()

    def clear(self) -> None:
        """Forget and zeroize every key."""
        for key in self._keys.values():
            key.zeroize()
        self._keys.clear()
        if self.sealing is not None:
            self.sealing.zeroize()
            self.sealing = None

    def _release(self, key: DataKey) -> None:
        if key is not self.sealing:
            key.zeroize()
