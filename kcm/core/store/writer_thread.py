"""The store's one writer thread: the calls handed to it run there in order, one at a time,
and each one's outcome fires a Deferred on the reactor thread. (The store's one reader
thread, for the event fan-out's reads of the outbox, is another of these.)

It does what a one-thread ``twisted.python.threadpool.ThreadPool`` with
``deferToThreadPool`` does for :meth:`kcm.core.store.engine.Store.write`, and no more: a
``queue.SimpleQueue`` to hand a call over, ``callFromThread`` to hand the outcome back.
kcm-core hands it one group commit at a time, so both hand-offs are on every group's path;
Twisted's pool wraps each in its worker team, a condition variable and a log context.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["WriterThread"]

T = TypeVar("T")

_STOP = object()

log = Logger()


class WriterThread:
    """One thread running ``fn(*args)`` calls in the order submitted."""

    def __init__(self, reactor: IReactorFromThreads, name: str) -> None:
        self._reactor = reactor
        self._calls: SimpleQueue[Any] = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._stopping = False
        #: What the running call left to do once its outcome is handed over (this thread).
        self._afterwards: list[Callable[[], object]] = []
        #: Who waits for the thread's end (:meth:`ended`), and whether it has ended.
        self._ended_lock = threading.Lock()
        self._ended_waiters: list[Deferred[None]] = []
        self._has_ended = False

    def start(self) -> None:
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> Deferred[T]:
        """Run ``fn(*args)`` on the thread; fires (on the reactor thread) with its result,
        or fails with its exception. A call still queued when the thread stops never runs,
        and its Deferred never fires."""
        done: Deferred[T] = Deferred()
        self._calls.put((done, fn, args))
        return done

    def after_answer(self, hook: Callable[[], object]) -> None:
        """Call ``hook()`` on this thread once the running call's outcome has been handed to
        the reactor, before the next call runs (work its caller need not wait for, done
        while the reactor wakes up); an error there is logged. Call it from the running
        call only."""
        self._afterwards.append(hook)

    def is_current(self) -> bool:
        """Whether the calling thread is this one."""
        return threading.current_thread() is self._thread

    def stop(self, timeout: float | None = None) -> None:
        """Let the running call finish, drop the queued ones, and end the thread (blocks
        until it has ended, or ``timeout`` seconds: a call still running then is left to
        the daemon thread, its Deferred firing when it ends if the reactor still runs)."""
        self._stopping = True
        self._calls.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def ended(self) -> Deferred[None]:
        """Fires (on the reactor thread) once the thread has ended: at once if it has, or
        never started; else when the call a timed-out :meth:`stop` left to it returns."""
        with self._ended_lock:
            if self._has_ended or not self._thread.is_alive():
                return succeed(None)
            waiter: Deferred[None] = Deferred()
            self._ended_waiters.append(waiter)
            return waiter

    def _run(self) -> None:
        try:
            self._run_calls()
        finally:
            with self._ended_lock:
                self._has_ended = True
                waiters, self._ended_waiters = self._ended_waiters, []
            for waiter in waiters:
                self._reactor.callFromThread(waiter.callback, None)

    def _run_calls(self) -> None:
        calls, reactor = self._calls, self._reactor
        while True:
            call = calls.get()
            if call is _STOP or self._stopping:
                return
            done, fn, args = call
            try:
                result = fn(*args)
            except BaseException:
                reactor.callFromThread(done.errback, Failure())
            else:
                reactor.callFromThread(done.callback, result)
            if self._afterwards:
                self._run_afterwards()

    def _run_afterwards(self) -> None:
        hooks, self._afterwards = self._afterwards, []
        for hook in hooks:
            try:
                hook()
            except Exception:
                log.failure("after a store write")
