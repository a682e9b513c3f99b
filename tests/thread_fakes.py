"""Fakes of :data:`kcm.reactor_threads.RunInThread` for unit tests (test support)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred


def run_inline(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
    """Runs the work at once, on the caller's thread: the unit behaves as if threads were
    instant."""
    return maybeDeferred(fn, *args, **kwargs)


class HeldThreads:
    """Holds each call until the test runs it (:meth:`finish`): what runs "in the thread"
    and what only after it, on the reactor, can be told apart."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any],
                               Deferred[Any]]] = []

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((fn, args, kwargs, d))
        return d

    def finish(self, index: int = 0) -> None:
        """Run the held call at ``index`` now and fire its Deferred with what it gave."""
        fn, args, kwargs, d = self.calls.pop(index)
        maybeDeferred(fn, *args, **kwargs).chainDeferred(d)
