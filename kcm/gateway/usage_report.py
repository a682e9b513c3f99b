"""How much this gateway used each service key (L3) version, reported to the core in
batches (docs/link-protocol.md, USAGE_REPORT; docs/operations.md, "Automatic rotation").

:class:`UsageCounter` is told by the L4 engine of every encryption under an L3's key (an L4
sealed, a DEK wrapped): one dictionary update on the reactor thread, nothing else on the
hot path. :class:`UsageReporter` sends what was counted every ``interval`` seconds in one
USAGE_REPORT frame (several when more than :data:`kcm.link.frames.MAX_USAGE_ENTRIES`
versions were used); counts it could not send (no link, or a core whose link version has no
USAGE_REPORT) are kept and sent with the next report. The core adds the reports of every
gateway up and rotates a version whose policy caps its use; the gateway stops sealing under
a version as soon as it learns that a newer one is current (the ``l3.rotated`` event).

A report written to a link that is lost before the core reads it is lost with it: a count
can fall short, never double. The interval rotation is the backstop.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from kcm.l4.engine import KeySource, L4Engine

__all__ = ["UsageCounter", "UsageReporter"]

log = Logger()


class UsageCounter:
    """Encryptions per L3 uid since the last report."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def used(self, uid: str) -> None:
        """One encryption under L3 ``uid``."""
        counts = self.counts
        counts[uid] = counts.get(uid, 0) + 1

    def engine_factory(self, keys: KeySource) -> L4Engine:
        """The gateway's L4 engine over ``keys``, counting into this counter."""
        return L4Engine(keys, os.urandom, self.used)

    def take(self) -> dict[str, int]:
        """What was counted since the last take; the counter starts again from nothing."""
        counts, self.counts = self.counts, {}
        return counts

    def put_back(self, counts: Mapping[str, int]) -> None:
        """Counts taken but not sent: they go with the next report."""
        for uid, count in counts.items():
            self.counts[uid] = self.counts.get(uid, 0) + count


class UsageReporter(Service):
    """Every ``interval`` seconds, hands the counter's counts to ``link.report_usage``."""

    name = "kcm-usage-report"

    def __init__(self, counter: UsageCounter, link: Any, clock: Any, *,
                 interval: float = 0.25) -> None:
        self.counter = counter
        self._report_usage: Callable[[Mapping[str, int]], bool] = link.report_usage
        self._clock = clock
        self.interval = interval
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.report)
        self._loop.clock = self._clock
        self._loop.start(self.interval, now=False).addErrback(
            lambda failure: log.failure("usage reports stopped", failure))

    def stopService(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.report()  # what was counted since the last tick, if the link is still up
        return super().stopService()

    def report(self) -> None:
        """Send what was counted since the last report; keep it when it cannot be sent."""
        counts = self.counter.take()
        if not counts:
            return
        try:
            sent = self._report_usage(counts)
        except Exception:  # a report must never stop the reports (nor the gateway)
            log.failure("sending a usage report failed; its counts go with the next one")
            sent = False
        if not sent:
            self.counter.put_back(counts)
