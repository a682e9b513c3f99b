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

Why a gateway cannot link is logged as a warning naming the core and the error (connection
refused, certificate verify failed, not a core's certificate, ...): the first failure at once,
then at most one line every :data:`FAILURE_LOG_INTERVAL` seconds while the failures last (with
their number), and one line when a link is made again (:meth:`CoreFailoverEndpoint.linked`).
An error not logged yet while they last is logged at once, whatever the interval (a core
restarted refuses the connection, then its TLS handshake refuses the gateway's certificate:
the line must not say "connection refused" for half a minute more); at most
:data:`FAILURE_REASONS_LOGGED` of them so, then the interval again.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kcm.tls import with_tcp_option

__all__ = ["FAILURE_LOG_INTERVAL", "ORDERS", "CoreFailoverEndpoint", "with_connect_timeout"]

log = Logger()

#: The ways a gateway may pick the first core to try.
ORDERS = ("spread", "listed")
#: Seconds a connection attempt to one core may take unless its endpoint string says.
CONNECT_TIMEOUT = 3
#: Seconds between two warnings while the gateway's attempts to link keep failing.
FAILURE_LOG_INTERVAL = 30.0
#: The most errors of one spell of failures logged at once for being new.
FAILURE_REASONS_LOGGED = 8


def with_connect_timeout(description: str, seconds: int = CONNECT_TIMEOUT) -> str:
    """``description`` with ``timeout=seconds`` added if it is a ``tcp:``/``tcp6:`` client
    endpoint naming no timeout of its own (Twisted's default is 30 s: too long to wait for a
    core that vanished before trying the next)."""
    return with_tcp_option(description, "timeout", seconds)


@implementer(IStreamClientEndpoint)
class CoreFailoverEndpoint:
    """Connects to one of ``endpoints`` (named ``names`` in the log), as the module says.

    ``clock`` times the failure warnings; one built without (kcm-gateway's tap) takes the
    clock of the :class:`kcm.gateway.link_client.LinkClient` it is given to."""

    def __init__(self, endpoints: Sequence[Any], names: Sequence[str], *,
                 order: str = "spread",
                 random_index: Callable[[int], int] = random.randrange,
                 clock: IReactorTime | None = None) -> None:
        if not endpoints or len(endpoints) != len(names):
            raise ValueError("a gateway needs at least one core, each with a name")
        if order not in ORDERS:
            raise ValueError(f"core order {order!r} is not one of {', '.join(ORDERS)}")
        self.endpoints = list(endpoints)
        self.names = list(names)
        #: The index of the core tried first next time (the one reached last).
        self.current = random_index(len(endpoints)) if order == "spread" else 0
        self.clock = clock
        #: Failed attempts since the last link, and when the first of them was.
        self.failures = 0
        self._failing_since = 0.0
        #: When a failure was last logged (None: none of these failures yet).
        self._logged_at: float | None = None
        #: The errors logged since the failures began.
        self._errors_logged: set[str] = set()

    def __repr__(self) -> str:
        # (ClientService logs "Scheduling retry N to connect <this> in S seconds.")
        if len(self.names) == 1:
            return f"core {self.names[0]}"
        return f"cores {', '.join(self.names)} (next {self.current_name})"

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
            if failure.check(CancelledError):
                return failure
            following = (index + 1) % len(self.endpoints)
            self._failed(index, failure.getErrorMessage(), following if left > 1 else None)
            if left <= 1:
                return failure
            return self._attempt(factory, following, left - 1)

        return d.addCallbacks(reached, failed)

    def attempt_failed(self, reason: str, in_a_row: int = 1) -> bool:
        """The connection :meth:`connect` made last was lost before it was of use (its core
        did not complete the link: hung in the TLS handshake, or refused the link), the
        ``in_a_row``-th such loss since the last link of use: that core counts as
        unreachable, and the next :meth:`connect` starts at the next core. True when that
        one should be tried at once: another core, still in the first round of the list
        (after it, and with one core, the link's back-off waits)."""
        failed = self.current
        if len(self.endpoints) == 1:
            self._failed(failed, reason, None)
            return False
        self.current = (failed + 1) % len(self.endpoints)
        self._failed(failed, reason, self.current)
        return in_a_row < len(self.endpoints)

    def drained(self) -> None:
        """The core linked to sent DRAIN (it is stopping): the next :meth:`connect` starts
        at the next core, rather than trying the stopping one first (its refusal was
        logged as a warning at every rolling restart). With one core, nothing changes."""
        if len(self.endpoints) > 1:
            self.current = (self.current + 1) % len(self.endpoints)

    def linked(self) -> None:
        """A link to the current core is made (the core welcomed it): the failures before it
        are over (one line says so, if any was logged)."""
        if self._logged_at is not None:
            log.info("core {core} reached again after {count} failed attempt(s) in {seconds:.0f}s",
                     core=self.current_name, count=self.failures,
                     seconds=self._now() - self._failing_since)
        self.failures = 0
        self._logged_at = None
        self._errors_logged.clear()

    def _now(self) -> float:
        return self.clock.seconds() if self.clock is not None else time.monotonic()

    def _failed(self, index: int, error: str, following: int | None) -> None:
        """An attempt to link to core ``index`` failed with ``error``; the next attempt goes
        to core ``following`` now (None: after the back-off). Logged as the module says."""
        now = self._now()
        self.failures += 1
        if self.failures == 1:
            self._failing_since = now
        moving = following is not None and following != index
        # A move to another core is always said (at most one line a core of the list a
        # round, and the rounds back off); the failures of one core, at most one line every
        # FAILURE_LOG_INTERVAL.
        new_error = (error not in self._errors_logged
                     and len(self._errors_logged) < FAILURE_REASONS_LOGGED)
        if (not moving and not new_error and self._logged_at is not None
                and now - self._logged_at < FAILURE_LOG_INTERVAL):
            return
        self._logged_at = now
        self._errors_logged.add(error)
        then = "" if following is None else f"; trying {self.names[following]}"
        if self.failures == 1:
            log.warn("cannot link to core {core}: {error}{then}", core=self.names[index],
                     error=error, then=then)
        else:
            log.warn("cannot link to core {core}: {error}{then} ({count} failed attempts in "
                     "{seconds:.0f}s)", core=self.names[index], error=error, then=then,
                     count=self.failures, seconds=now - self._failing_since)
