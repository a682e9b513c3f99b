"""Work too long for the reactor's thread (parsing a large file, building a TLS context), run
in the reactor's thread pool: :data:`RunInThread` is how a unit takes that, so that a test
gives a fake (one that runs at once, or holds each call until the test fires it).

Work done this way still shares the GIL with the reactor: it keeps the reactor from
waiting for the whole of it, not for the longest single call that holds the GIL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

__all__ = ["RunInThread", "in_reactor_threads"]

#: ``run(fn, *args, **kwargs)``: a Deferred of what ``fn`` returns (or raises), fired on the
#: reactor's thread.
RunInThread = Callable[..., Deferred[Any]]


def in_reactor_threads(reactor: Any) -> RunInThread:
    """A :data:`RunInThread` that runs in ``reactor``'s thread pool (started when first
    used; the reactor stops it as it stops)."""

    def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args, **kwargs)

    return run
