"""The gateway's way to one of several cores: :class:`CoreFailoverEndpoint`.

Every core on one database serves the same inventory and the same event stream, so a gateway
may link to any of them. It keeps to the core it reached last while that core answers; when
a connection attempt fails it tries the next core in the list at once, round the list once,
before the link's own back-off waits for the next round. An attempt fails when the core
cannot be reached, and also when it was reached but the link was lost before it was of use
(:meth:`CoreFailoverEndpoint.attempt_failed`: a hung core completes the TCP connection from
its listen backlog and never the TLS handshake, and a stopping core refuses the link). A
gateway that lost its core (the link closed, or heartbeats stopped) thus links to the next
within one connection attempt, and resumes the event stream after the last event it applied
(sequences are the database's, the same at every core).

Which core a gateway tries first: with ``order = "spread"`` (the default) a random one, so
that a fleet of gateways with the same list spreads over the cores; with ``"listed"`` the
first listed (an operator who lists each zone's nearest core first).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kcm.tls import with_tcp_option

__all__ = ["ORDERS", "CoreFailoverEndpoint", "with_connect_timeout"]

log = Logger()

#: The ways a gateway may pick the first core to try.
ORDERS = ("spread", "listed")
#: Seconds a connection attempt to one core may take unless its endpoint string says.
CONNECT_TIMEOUT = 3


def with_connect_timeout(description: str, seconds: int = CONNECT_TIMEOUT) -> str:
    """``description`` with ``timeout=seconds`` added if it is a ``tcp:``/``tcp6:`` client
    endpoint naming no timeout of its own (Twisted's default is 30 s: too long to wait for a
    core that vanished before trying the next)."""
    return with_tcp_option(description, "timeout", seconds)


@implementer(IStreamClientEndpoint)
class CoreFailoverEndpoint:
    """Connects to one of ``endpoints`` (named ``names`` in the log), as the module says."""

    def __init__(self, endpoints: Sequence[Any], names: Sequence[str], *,
                 order: str = "spread",
                 random_index: Callable[[int], int] = random.randrange) -> None:
        if not endpoints or len(endpoints) != len(names):
            raise ValueError("a gateway needs at least one core, each with a name")
        if order not in ORDERS:
            raise ValueError(f"core order {order!r} is not one of {', '.join(ORDERS)}")
        self.endpoints = list(endpoints)
        self.names = list(names)
        #: The index of the core tried first next time (the one reached last).
        self.current = random_index(len(endpoints)) if order == "spread" else 0

    @property
    def current_name(self) -> str:
        """The core this gateway links to (or tries first)."""
        return self.names[self.current]

    def load(self) -> None:
        """Read the TLS files of every core's endpoint (those that need it)."""
        for endpoint in self.endpoints:
            load = getattr(endpoint, "load", None)
            if load is not None:
                load()

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        """Connect to the current core, else to each next one in turn; fails with the last
        core's error when none could be reached."""
        return self._attempt(protocolFactory, self.current, len(self.endpoints))

    def _attempt(self, factory: IProtocolFactory, index: int, left: int) -> Deferred[Any]:
        try:
            d = self.endpoints[index].connect(factory)
        except Exception:
            d = fail()

        def reached(protocol: Any) -> Any:
            if index != self.current:
                log.info("linking to core {core} ({previous} was unreachable)",
                         core=self.names[index], previous=self.names[self.current])
                self.current = index
            return protocol

        def failed(failure: Failure) -> Any:
            if left <= 1 or failure.check(CancelledError):
                return failure
            log.info("core {core} unreachable ({error}); trying {next}",
                     core=self.names[index], error=failure.getErrorMessage(),
                     next=self.names[(index + 1) % len(self.endpoints)])
            return self._attempt(factory, (index + 1) % len(self.endpoints), left - 1)

        return d.addCallbacks(reached, failed)

    def attempt_failed(self, reason: str, in_a_row: int = 1) -> bool:
        """The connection :meth:`connect` made last was lost before it was of use (its core
        did not complete the link: hung in the TLS handshake, or refused the link), the
        ``in_a_row``-th such loss since the last link of use: that core counts as
        unreachable, and the next :meth:`connect` starts at the next core. True when that
        one should be tried at once: another core, still in the first round of the list
        (after it, and with one core, the link's back-off waits)."""
        if len(self.endpoints) == 1:
            return False
        failed = self.current
        self.current = (failed + 1) % len(self.endpoints)
        log.info("core {core} did not complete the link ({error}); trying {next}",
                 core=self.names[failed], error=reason, next=self.current_name)
        return in_a_row < len(self.endpoints)

