"""Envelope encryption with Deferreds, over the Twisted client: :class:`DeferredEnvelope`.

The same format, cache, bounds and revocation rule as :class:`~kcm.client.sealer.Envelope`
(whose docstring says them), for a program that runs a reactor: ``seal`` and ``open`` return
Deferreds, which have already fired when the key is cached (no reactor turn on the hot
path). While a data key is being created or fetched, every seal or open that needs it waits
for that one request (no duplicate Creates or Gets); a seal that finds the new key already
at a bound when it fires asks for the next.

``client`` is a :class:`~kcm.client.pool.KmipClient`, or a
:class:`~kcm.client.routing.SplitHorizon` of two.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from kcm.client.data_key_cache import DEFAULT_LIMITS, CacheLimits, DataKey, DataKeyCache
from kcm.client.envelope import ALGORITHM_AES_256_GCM, NONCE_SIZE, header_prefix
from kcm.client.errors import DataKeyRefused, EnvelopeError, KmipOperationFailed
from kcm.client.sealer import (
    check_record,
    data_key_token,
    material_of,
    open_record,
    record_header,
    refuses_key,
    seal_record,
)

__all__ = ["DeferredEnvelope"]


class DeferredEnvelope:
    """``seal(plaintext, aad=b"") -> Deferred[bytes]``, ``open(blob, aad=b"") ->
    Deferred[bytes]``; see the module's docstring."""

    def __init__(self, client: Any, limits: CacheLimits = DEFAULT_LIMITS, *,
                 clock: Callable[[], float] = time.monotonic,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        self.client = client
        self.cache = DataKeyCache(limits, clock)
        self.random = random
        self.stats = {"create": 0, "get": 0}
        self._creating: list[Deferred[DataKey]] | None = None
        self._fetching: dict[str, list[Deferred[DataKey]]] = {}

    def seal(self, plaintext: bytes, aad: bytes = b"") -> Deferred[bytes]:
        # Every error a failed Deferred, on the cached path too (it raised there).
        try:
            check_record(plaintext, aad)
            key = self.cache.reserve(len(plaintext))
            if key is not None:
                return succeed(seal_record(key.aead, key.prefix, self.random(NONCE_SIZE),
                                           plaintext, aad))
        except Exception:
            return _failed(Failure())
        if len(plaintext) > self.cache.limits.max_bytes:
            return _failed(Failure(ValueError(
                f"{len(plaintext)} bytes exceed what one key may seal "
                f"({self.cache.limits.max_bytes}); use kcm.client.stream")))
        return self._new_sealing_key(len(plaintext)).addCallback(
            self._seal_on, plaintext, aad)

    def _seal_on(self, key: DataKey | None, plaintext: bytes, aad: bytes) -> Any:
        """Seal on ``key``, made for this record and counted already; None: the key was
        another seal's, so this one reserves anew (a new key when it is already due)."""
        if key is None:
            return self.seal(plaintext, aad)
        return seal_record(key.aead, key.prefix, self.random(NONCE_SIZE), plaintext, aad)

    def _new_sealing_key(self, size: int) -> Deferred[DataKey | None]:
        """A new sealing key: the seal that asks first gets it with its record of ``size``
        bytes counted on it (so every Create serves at least one seal, however short
        ``max_age``); those that ask while it is made get None once it is."""
        waiter: Deferred[DataKey | None] = Deferred()
        if self._creating is not None:
            self._creating.append(waiter)
            return waiter
        self._creating = [waiter]
        self.cache.retire_sealing()
        self.stats["create"] += 1
        d = self.client.create_l4()
        d.addCallback(self._fetch, size)
        d.addBoth(self._created)
        return waiter

    def _created(self, result: DataKey | Failure) -> None:
        waiters, self._creating = self._creating or [], None
        if isinstance(result, Failure):
            _fire(waiters, result)
            return
        first, *others = waiters
        first.callback(result)
        _fire(others, None)

    def key_for(self, token: str) -> Deferred[DataKey]:
        """The cached key of ``token``, or fetched (revalidated) at the gateway."""
        key = self.cache.for_opening(token)
        return succeed(key) if key is not None else self._fetch(token)

    def _fetch(self, token: str, seal: int | None = None) -> Deferred[DataKey]:
        """``token``'s key, fetched (one Get for every caller meanwhile) and cached; with
        ``seal``, a new key made the sealing key with a record of ``seal`` bytes counted."""
        try:
            data_key_token(token)  # before any Get: only an L4 proves who sealed
        except EnvelopeError:
            return _failed(Failure())
        waiter: Deferred[DataKey] = Deferred()
        waiting = self._fetching.get(token)
        if waiting is not None:
            waiting.append(waiter)
            return waiter
        self._fetching[token] = [waiter]
        self.stats["get"] += 1
        d = self.client.get(token)
        d.addCallbacks(self._fetched, self._refused, callbackArgs=(token, seal),
                       errbackArgs=(token,))
        d.addBoth(lambda result: _fire(self._fetching.pop(token, []), result))
        return waiter

    def _fetched(self, answer: Any, token: str, seal: int | None) -> DataKey:
        material = material_of(answer, token)
        prefix = header_prefix(token, ALGORITHM_AES_256_GCM)
        if seal is None:
            return self.cache.new_key(token, material, prefix)
        return self.cache.new_sealing_key(token, material, prefix, seal)

    def _refused(self, failure: Failure, token: str) -> Failure:
        if failure.check(KmipOperationFailed) and refuses_key(failure.value):
            self.cache.drop(token)
            return Failure(DataKeyRefused(token, failure.value))
        return failure

    def open(self, blob: bytes, aad: bytes = b"") -> Deferred[bytes]:
        try:
            header = record_header(blob)
        except Exception:
            return _failed(Failure())
        return self.key_for(header.token).addCallback(
            lambda key: open_record(key.aead, header, blob, aad))

    def close(self) -> None:
        """Zeroize every cached key."""
        self.cache.clear()


def _fire(waiters: list[Deferred[Any]], result: Any) -> None:
    for waiter in waiters:
        if isinstance(result, Failure):
            waiter.errback(result)
        else:
            waiter.callback(result)


def _failed(failure: Failure) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(failure)
    return d
