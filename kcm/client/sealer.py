"""Envelope encryption for applications: :class:`Envelope` seals and opens records under L4
data keys, cached and bounded.

The data key is created at the gateway (an L4 Create), fetched once (a Get of its token) and
used locally for up to the cache's bounds (:mod:`kcm.client.data_key_cache`); each sealed
record names its token in the header (:mod:`kcm.client.envelope`), so any holder of the
format and of a Get right on the token can open it. Opening a record of a token not cached,
or cached longer than ``max_age``, asks the gateway (Get); a key the gateway refuses is
dropped from the cache and :class:`DataKeyRefused` raised — a revoked or destroyed L4 stops
opening within ``max_age``. An unreachable gateway is :class:`KmipClientError`, and one that
cannot serve now (General Failure: the core away and the service key not cached) the
:class:`KmipOperationFailed` it answered, never a stale key past its bound.

Nonces are 12 bytes from ``os.urandom`` (the ``random`` argument), never a counter: a counter
kept in the process would repeat after a ``fork`` or in two processes that were handed the
same cached key, and repeating a GCM nonce under one key is fatal; random nonces are safe up
to the ``max_messages`` bound (2^24 by default, collision chance below 2^-49).

``client`` is a blocking client (:class:`~kcm.client.session.Session`,
:class:`~kcm.client.routing.SplitHorizon` over sessions). An Envelope may be shared by
threads: a lock guards the cache and the counts (each record is counted once, before it is
sealed, so a key seals exactly its bounds), and is never held across a request: while one
thread creates the next data key, the others seal on with the current one if it still
takes their record, or wait for that one Create (:mod:`kcm.client.single_flight`); the
openers of a token not cached wait for one Get. The AES-GCM work runs outside the lock, on
the key's AES-GCM object taken under it, so a key evicted meanwhile finishes the records
that began with it. Streams are :mod:`kcm.client.stream`'s; the same
envelope with Deferreds, over the Twisted client, is :mod:`kcm.client.deferred_envelope`.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kcm.client.data_key_cache import DEFAULT_LIMITS, CacheLimits, DataKey, DataKeyCache
from kcm.client.envelope import (
    ALGORITHM_AES_256_GCM,
    NONCE_SIZE,
    TAG_SIZE,
    Header,
    header_prefix,
    parse_header,
)
from kcm.client.errors import DataKeyRefused, EnvelopeError, KmipOperationFailed
from kcm.client.single_flight import RETRY, SingleFlight
from kcm.kmip.enums import ResultReason
from kcm.l4.identifiers import is_l4

__all__ = ["MAX_RECORD", "Envelope", "check_record", "data_key_token", "material_of",
           "open_record", "record_header", "refuses_key", "seal_record"]


def data_key_token(token: str) -> str:
    """``token`` if it names an L4 data key (``l4.``); :class:`EnvelopeError` otherwise.

    Only an L4 proves who sealed a record: the gateway gives an L4's key to its own
    service alone. Any other object the caller may Get (a tenant-wide managed key, say) may
    be readable by other services too, and a record under it could be forged by them; so a
    blob naming one is refused before anything is asked of the server."""
    if not is_l4(token):
        short = token if len(token) <= 40 else token[:37] + "..."
        raise EnvelopeError(f"the envelope names {ascii(short)}, which is not an L4 data key")
    return token


def refuses_key(error: KmipOperationFailed) -> bool:
    """Whether a failed Get of a data key refuses the key (revoked, destroyed, not the
    caller's, not a token: :class:`DataKeyRefused`), rather than says the gateway cannot
    answer now: General Failure (the core unreachable and the service key not cached or
    past max_stale, the gateway busy, a deadline passed), raised as it is, since the record
    may well be good once the gateway can serve again."""
    return error.reason != ResultReason.GENERAL_FAILURE


#: The most bytes one record may hold, and its associated data with the header: what
#: AES-GCM takes at once (cryptography refuses 2**31 and more); larger data is a stream.
MAX_RECORD = 2 ** 31 - 1 - 4096


def check_record(plaintext: object, aad: object) -> None:
    """TypeError or ValueError, before anything is counted or asked of the server, when
    ``plaintext`` and ``aad`` cannot make one record."""
    if type(plaintext) is bytes and type(aad) is bytes and len(plaintext) <= MAX_RECORD \
            and len(aad) <= MAX_RECORD:
        return  # the usual case in one test (the loop below costs a seal 0.1 us more)
    for name, value in (("plaintext", plaintext), ("aad", aad)):
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
        if len(value) > MAX_RECORD:
            raise ValueError(f"{name} of {len(value)} bytes exceeds what one record may hold "
                             f"({MAX_RECORD}); use kcm.client.stream")


def seal_record(aead: AESGCM, prefix: bytes, nonce: bytes, plaintext: bytes,
                aad: bytes) -> bytes:
    """``plaintext`` sealed with a key's AES-GCM object and header ``prefix`` under
    ``nonce`` (the format of :mod:`kcm.client.envelope`); the record was counted against
    the key's bounds before (:meth:`DataKeyCache.reserve`)."""
    header = prefix + nonce
    return header + aead.encrypt(nonce, plaintext, header + aad if aad else header)


def record_header(blob: bytes) -> Header:
    """The header of a sealed record; :class:`EnvelopeError` if ``blob`` is not one."""
    header = parse_header(blob)
    if header.algorithm != ALGORITHM_AES_256_GCM:
        raise EnvelopeError("this envelope is a stream: open it with kcm.client.stream")
    if len(blob) < header.body + TAG_SIZE:
        raise EnvelopeError("the envelope is truncated: no room for the tag")
    if len(blob) - header.body > MAX_RECORD + TAG_SIZE:
        raise EnvelopeError("the envelope is longer than any record: a stream, or not ours")
    return header


def open_record(aead: AESGCM | None, header: Header, blob: bytes, aad: bytes) -> bytes:
    """The plaintext of the record ``blob`` with the AES-GCM object of the key its
    ``header`` names (None: that key was zeroized)."""
    head = bytes(blob[:header.body])
    if aead is None:
        raise EnvelopeError(f"data key {header.token[:40]} was evicted while in use")
    try:
        return aead.decrypt(header.fields, bytes(blob[header.body:]),
                            head + aad if aad else head)
    except InvalidTag:
        raise EnvelopeError("the envelope is not authentic: its header, body or "
                            "associated data was changed, or it is not this key's") from None


def material_of(get_response: Any, token: str) -> bytes:
    """The raw key bytes of the answer to a Get of ``token``; :class:`EnvelopeError` if it
    answers for another object or holds no AES-256 key (what a data key is)."""
    if get_response.unique_identifier != token:
        raise EnvelopeError("the answer to the Get of a data key names another object")
    block = getattr(get_response.object, "key_block", None)
    material = None if block is None else block.key_bytes
    if not material or len(material) != 32:
        raise EnvelopeError("the key a blob names is not an AES-256 data key")
    return material


#: The envelopes of this process: a forked child gives each new locks (a thread of the
#: parent may have held one at the fork, and no thread of the child will release it).
_ENVELOPES: weakref.WeakSet[Envelope] = weakref.WeakSet()


def _new_locks_in_child() -> None:
    for envelope in list(_ENVELOPES):
        envelope.after_fork()


os.register_at_fork(after_in_child=_new_locks_in_child)


class Envelope:
    """``seal(plaintext, aad=b"") -> bytes`` and ``open(blob, aad=b"") -> bytes``; see the
    module's docstring. ``stats`` counts the requests sent to the gateway. Thread-safe."""

    def __init__(self, client: Any, limits: CacheLimits = DEFAULT_LIMITS, *,
                 clock: Callable[[], float] = time.monotonic,
                 random: Callable[[int], bytes] = os.urandom) -> None:
        self.client = client
        self.cache = DataKeyCache(limits, clock)
        self.random = random
        self.stats = {"create": 0, "get": 0}
        #: Held around every use of the cache and of ``stats``; never across a request.
        self._lock = threading.Lock()
        self._flights = SingleFlight()
        _ENVELOPES.add(self)

    # Sealing: the hot path ------------------------------------------------------------

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """``plaintext`` sealed under the current data key (a new one when the current one
        reached a bound), bound to ``aad``."""
        check_record(plaintext, aad)
        lock = self._lock
        lock.acquire()  # not ``with``: its two method calls cost the hot path 0.05 us
        try:
            key = self.cache.reserve(len(plaintext))
            if key is not None:
                aead, prefix = key.aead, key.prefix
        finally:
            lock.release()
        if key is None:
            aead, prefix = self._reserve_on_a_new_key(len(plaintext))
        return seal_record(aead, prefix, self.random(NONCE_SIZE), plaintext, aad)

    def _reserve_on_a_new_key(self, size: int) -> tuple[AESGCM, bytes]:
        """The AES-GCM object and header prefix of the sealing key, with this record
        counted, once a new key is made: by this thread, or by the one already making it."""
        if size > self.cache.limits.max_bytes:
            raise ValueError(f"{size} bytes exceed what one key may seal "
                             f"({self.cache.limits.max_bytes}); use kcm.client.stream")
        while True:
            # The thread that runs the renewal gets its record counted on the key it made
            # (``mine``): every Create serves at least one seal, and a key that ages before
            # another thread reserves on it costs that thread one more turn, not a loop.
            mine: list[tuple[AESGCM, bytes]] = []
            self._flights.run("seal", lambda mine=mine: self._renew_sealing_key(size, mine))
            if mine:
                return mine[0]
            with self._lock:
                key = self.cache.reserve(size)
                if key is not None:
                    return key.aead, key.prefix

    def _renew_sealing_key(self, size: int, mine: list[tuple[AESGCM, bytes]]) -> None:
        """Reserve ``size`` bytes on the sealing key, made now if need be; appended to
        ``mine``."""
        with self._lock:
            key = self.cache.reserve(size)
            if key is not None:  # another thread's Create made it while this one came
                mine.append((key.aead, key.prefix))
                return
            self.stats["create"] += 1
        key, aead = self._fetch(self.client.create_l4(), ALGORITHM_AES_256_GCM, seal=size)
        mine.append((aead, key.prefix))

    def new_data_key(self, algorithm: int) -> DataKey:
        """A fresh L4 (Create at the gateway, then Get), cached for opening."""
        return self.new_key_and_aead(algorithm)[0]

    def new_key_and_aead(self, algorithm: int) -> tuple[DataKey, AESGCM]:
        """A fresh L4, cached for opening, and its AES-GCM object: the caller's to keep
        (a stream's), even if the cache evicts and zeroizes the key meanwhile."""
        with self._lock:
            self.stats["create"] += 1
        return self._fetch(self.client.create_l4(), algorithm)

    def _fetch(self, token: str, algorithm: int, *,
               seal: int | None = None) -> tuple[DataKey, AESGCM]:
        """Get ``token``'s material at the gateway and cache it (an L4's only); with
        ``seal``, it seals from now on, a record of ``seal`` bytes counted on it already
        (:meth:`DataKeyCache.new_sealing_key`)."""
        data_key_token(token)
        with self._lock:
            self.stats["get"] += 1
        try:
            answer = self.client.get(token)
        except KmipOperationFailed as e:
            if not refuses_key(e):
                raise
            with self._lock:
                self.cache.drop(token)
            raise DataKeyRefused(token, e) from e
        material = material_of(answer, token)
        prefix = header_prefix(token, algorithm)
        with self._lock:
            if seal is None:
                key = self.cache.new_key(token, material, prefix)
            else:
                key = self.cache.new_sealing_key(token, material, prefix, seal)
            aead = key.aead
        assert aead is not None  # cached just now, under the lock
        return key, aead

    # Opening --------------------------------------------------------------------------

    def key_for(self, token: str) -> DataKey:
        """The cached key of ``token``, or fetched again (revalidated) at the gateway."""
        return self._opening(token)[0]

    def aead_for(self, token: str) -> AESGCM:
        """The AES-GCM object of ``token``'s key, cached or fetched again (revalidated) at
        the gateway: the caller's to keep, even if the cache evicts the key meanwhile."""
        lock = self._lock
        lock.acquire()  # not ``with``, as in seal
        try:
            key = self.cache.for_opening(token)
            if key is not None:
                return key.aead
        finally:
            lock.release()
        return self._opening(token)[1]

    def _opening(self, token: str) -> tuple[DataKey, AESGCM]:
        data_key_token(token)  # before any Get: only an L4 proves who sealed
        while True:
            found = self._flights.run(("open", token), lambda: self._cached_or_fetched(token))
            if found is not RETRY:
                return found

    def _cached_or_fetched(self, token: str) -> tuple[DataKey, AESGCM]:
        with self._lock:
            key = self.cache.for_opening(token)
            if key is not None:
                return key, key.aead
        return self._fetch(token, ALGORITHM_AES_256_GCM)

    def open(self, blob: bytes, aad: bytes = b"") -> bytes:
        """The plaintext of ``blob``; :class:`EnvelopeError` when it is malformed or not
        authentic, :class:`DataKeyRefused` when the gateway refuses its data key,
        :class:`KmipOperationFailed` (General Failure) or :class:`KmipClientError` when the
        gateway cannot serve it now."""
        header = record_header(blob)
        return open_record(self.aead_for(header.token), header, blob, aad)

    def close(self) -> None:
        """Zeroize every cached key."""
        with self._lock:
            self.cache.clear()

    def after_fork(self) -> None:
        """In a forked child (called by ``os.register_at_fork``): new locks, no Create or
        Get of the parent's threads to wait for, and no sealing with the parent's key
        (each process would seal its bounds under it: the child makes its own)."""
        self._lock = threading.Lock()
        self._flights.after_fork()
        self.cache.retire_sealing()
