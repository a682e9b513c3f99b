"""One request for several threads: :class:`SingleFlight` runs a function once for all the
threads that ask for the same thing meanwhile (one Create of a data key for every sealer
that found the key due, one Get for every opener of a token not cached).

The first thread to ask runs the function, with no lock held (it may wait on the network);
the others wait for it and get its result, or its error. A thread that asks after the run
ended starts a new one: the function should check first whether it is still needed (the
caller's cache may hold its result by then). An exception that is not an ``Exception``
(``KeyboardInterrupt``, a signal handler's) stays in the thread that ran the function: the
waiters are told :data:`RETRY` and ask again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["RETRY", "SingleFlight"]

#: What waiters get when the run ended without a result or an ``Exception``.
RETRY: Any = object()


class _Run:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = RETRY
        self.error: Exception | None = None


class SingleFlight:
    """``run(key, function)``: ``function()``'s result, one call for all the threads that
    ask with the same ``key`` while it runs; see the module's docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[Hashable, _Run] = {}

    def run(self, key: Hashable, function: Callable[[], Any]) -> Any:
        mine = _Run()
        try:  # (from before the run is registered: an interrupt anywhere after forgets it)
            with self._lock:
                run = self._runs.setdefault(key, mine)
            if run is not mine:
                run.done.wait()
                if run.error is not None:
                    raise run.error
                return run.result
            mine.result = function()
            return mine.result
        except Exception as e:
            mine.error = e  # (a waiter's: nobody waits on its own unregistered run)
            raise
        finally:
            with self._lock:
                if self._runs.get(key) is mine:
                    del self._runs[key]
            mine.done.set()

    def after_fork(self) -> None:
        """In a child process: forget the runs of the parent's threads (none runs here)."""
        self._lock = threading.Lock()
        self._runs = {}
