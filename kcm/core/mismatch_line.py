"""The log line of a stored object refused because its row does not match its wrapping
(:class:`kcm.core.keyring.WrappingMismatch`): one line, written by the keyring where it finds
the mismatch, naming the request (its operation and the correlation id the client's General
Failure gives) when a request's worker found it (:func:`in_request`), and nothing else
logged for it.

A client may ask for such an object in a loop: one object's line is written at most once
every :data:`INTERVAL` seconds, the first at once, the next saying how many more were
refused in between (``kcm_core_wrapping_mismatches_total`` counts each). What is kept to
know that is bounded: the :data:`KEPT` objects last logged. Thread-safe: the keyring unwraps
on the store's threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from twisted.logger import Logger

__all__ = ["INTERVAL", "KEPT", "MismatchLines", "in_request"]

log = Logger(namespace="kcm.core.keyring")

#: Seconds between two lines of one object at most.
INTERVAL = 60.0
#: Objects whose last line is remembered (the least recently logged forgotten first).
KEPT = 1024

#: (operation, correlation id) of the request the current thread runs, if any.
_REQUEST: ContextVar[tuple[str, str] | None] = ContextVar("kcm_mismatch_request",
                                                          default=None)


@contextmanager
def in_request(operation: str, correlation_id: str) -> Iterator[None]:
    """A mismatch found within is logged as the request's (``operation``,
    ``correlation_id``)."""
    token = _REQUEST.set((operation, correlation_id))
    try:
        yield
    finally:
        _REQUEST.reset(token)


class MismatchLines:
    """Writes the line of each mismatch (:meth:`note`), one object's at most once every
    ``interval`` seconds on ``clock`` (monotonic)."""

    def __init__(self, clock: Callable[[], float], *, interval: float = INTERVAL,
                 kept: int = KEPT) -> None:
        self._clock = clock
        self._interval = interval
        self._kept = kept
        self._lock = threading.Lock()
        #: (tenant, uid) -> (when its line was written, how many refused since, unwritten)
        self._objects: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()

    def note(self, tenant: str, uid: str, why: str) -> None:
        """Object ``uid`` of ``tenant`` was refused (``why``): its line, unless one was
        written less than the interval ago."""
        now, key = self._clock(), (tenant, uid)
        with self._lock:
            seen = self._objects.get(key)
            if seen is not None and now - seen[0] < self._interval:
                self._objects[key] = (seen[0], seen[1] + 1)
                return
            more = 0 if seen is None else seen[1]
            self._objects[key] = (now, 0)
            self._objects.move_to_end(key)
            while len(self._objects) > self._kept:
                self._objects.popitem(last=False)
        request = _REQUEST.get()
        log.error("{request}object {uid} of tenant {tenant} refused: its row does not match "
                  "its wrapping ({why}); the database was changed outside kcm-core{more}",
                  request="" if request is None else
                  f"operation {request[0]} failed [correlation id {request[1]}]: ",
                  uid=uid, tenant=tenant, why=why,
                  more=f" ({more} more refused since its last line, one a "
                       f"{self._interval:g} s at most)" if more else "")
