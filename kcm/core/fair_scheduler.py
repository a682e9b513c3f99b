"""Fair shares of kcm-core's request workers: one queue per tenant, served in turn.

Requests run on a few worker threads (the store's). Served first come, first served, a
tenant that sends many heavy requests would fill every worker and the queue in front of
them, and every other tenant's requests would wait behind its work. The
:class:`FairScheduler` keeps one FIFO per *share key* (the caller's tenant; a principal
without one is its own key) and, whenever a worker is free, starts the oldest request of
the next key in turn that has one waiting (round robin), so that a tenant's wait for a
worker depends on how many tenants are busy, not on how much the busy ones have sent.

A key may hold at most ``per_key`` of the ``workers`` at once, so that a worker is free
soon for a tenant that arrives while another keeps all of them busy; a key alone keeps
``per_key`` busy. It runs on the reactor thread; ``start`` is how a request reaches a
worker (e.g. :meth:`kcm.core.store.engine.Store.defer`).

A call submitted with ``expires`` (its request's deadline) that is still waiting for a
worker then is taken out and failed with :class:`~kcm.core.queue_expiry.RequestExpired`,
never started (:mod:`kcm.core.queue_expiry`): workers held by a silent database no longer
hold the requests waiting for them past their deadlines.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from kcm.core.queue_expiry import QueueExpiry, RequestExpired

T = TypeVar("T")

#: A call waiting: its result, the call, its arguments, and when it expires (or None).
_Call = tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...], float | None]

__all__ = ["FairScheduler"]


class FairScheduler:
    """Runs submitted calls through ``start`` with at most ``workers`` at once, at most
    ``per_key`` of one key, starting the waiting keys in turn."""

    def __init__(self, start: Callable[..., Deferred[Any]], *, workers: int,
                 per_key: int, reactor: IReactorTime | None = None,
                 timer: Callable[[], float] | None = None) -> None:
        """``reactor``: the timer that fails the calls still waiting at their ``expires``
        (:meth:`submit`, on ``timer``, ``reactor.seconds`` when not given); None: they wait
        however long."""
        if workers < 1 or not 1 <= per_key <= workers:
            raise ValueError("need workers >= 1 and 1 <= per_key <= workers")
        self._start = start
        self._workers = workers
        self._per_key = per_key
        self._running = 0
        #: Calls waiting, per key; a key is present only while it has some.
        self._waiting: dict[Hashable, deque[_Call]] = {}
        #: Keys with calls waiting, in the order they will be served.
        self._turns: deque[Hashable] = deque()
        self._busy: dict[Hashable, int] = {}
        self._expiry = None if reactor is None else QueueExpiry(reactor, self._expire, timer)

    @property
    def running(self) -> int:
        """Calls started and not finished."""
        return self._running

    @property
    def waiting(self) -> int:
        """Calls submitted and not started."""
        return sum(len(calls) for calls in self._waiting.values())

    def submit(self, key: Hashable, fn: Callable[..., T], *args: Any,
               expires: float | None = None) -> Deferred[T]:
        """``start(fn, *args)`` when ``key``'s turn comes; fires with its result.
        ``expires``: when the call, if it is still waiting then, fails with
        :class:`~kcm.core.queue_expiry.RequestExpired` instead (on the ``timer``; only
        with a ``reactor``)."""
        result: Deferred[T] = Deferred()
        calls = self._waiting.get(key)
        if calls is None:
            calls = self._waiting[key] = deque()
            self._turns.append(key)
        calls.append((result, fn, args, expires))
        self._dispatch()
        if expires is not None and self._expiry is not None and key in self._waiting:
            self._expiry.waits(expires)
        return result

    def _expire(self, now: float) -> float | None:
        """The calls waiting whose ``expires`` is ``now`` or earlier taken out and
        failed; the earliest ``expires`` of those still waiting."""
        expired: list[Deferred[Any]] = []
        earliest: float | None = None
        for key, calls in list(self._waiting.items()):
            kept: deque[_Call] = deque()
            for call in calls:
                expires = call[3]
                if expires is not None and expires <= now:
                    expired.append(call[0])
                else:
                    kept.append(call)
                    if expires is not None and (earliest is None or expires < earliest):
                        earliest = expires
            if len(kept) < len(calls):
                if kept:
                    self._waiting[key] = kept
                else:
                    del self._waiting[key]
                    self._turns.remove(key)
        for result in expired:
            result.errback(Failure(RequestExpired("store's workers")))
        return earliest

    def _dispatch(self) -> None:
        # Each key in turn at most once per pass; a pass that starts nothing ends it.
        while self._running < self._workers and self._turns:
            for _ in range(len(self._turns)):
                key = self._turns[0]
                self._turns.rotate(-1)
                if self._busy.get(key, 0) < self._per_key:
                    self._run(key)
                    break
            else:
                return

    def _run(self, key: Hashable) -> None:
        calls = self._waiting[key]
        result, fn, args, _ = calls.popleft()
        if not calls:
            del self._waiting[key]
            self._turns.remove(key)
        self._running += 1
        self._busy[key] = self._busy.get(key, 0) + 1

        def finished(outcome: object) -> object:
            self._running -= 1
            left = self._busy[key] - 1
            if left:
                self._busy[key] = left
            else:
                del self._busy[key]
            self._dispatch()
            return outcome

        self._start(fn, *args).addBoth(finished).chainDeferred(result)
