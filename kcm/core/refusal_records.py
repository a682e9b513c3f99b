"""How many audit records kcm-core writes for requests refused from senders it accepts no
identity of: coalesced, so that a client reconnecting in a loop cannot fill the audit log.

A refused certificate of the deployment's CA that names no accepted identity, or a caller a
gateway asserted that the core does not accept, is refused before any work; it has no
tenant whose own queue would bound it. :class:`RefusalRecords` lets each sender (its
certificate described, or the gateway and the caller it asserted) have one record written
at once, before its answer, the first time it is refused; the sender's further refusals in
the next ``interval`` seconds are answered at once and only counted, and at the end of that
interval one record stands for them all (``detail.count``, ``detail.first`` and
``detail.last``: the wall-clock seconds of the first and the last it counts). While the
sender keeps being refused that goes on, one record per interval; an interval without any
ends its turn, and its next refusal is recorded at once again. When kcm-core stops,
:meth:`RefusalRecords.flush` writes the records of the intervals not yet ended, so that no
counted refusal goes unrecorded. At most
:data:`MAX_SENDERS` senders are followed at once; the refusals of any other share one
(:data:`OTHER_SENDERS`), whose records say so (``detail.other_senders``).

Refusals of accepted principals (a request over ``max_message_size``) are not coalesced:
their own tenant's queue bounds them.

:class:`ThrottledLine` is the same rule for a log line (a store outage's ``not audited``, a
gateway's unacceptable callers): the first at once, then at most one line per interval, with
how many it stands for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from kcm.connection_guard import LOG_INTERVAL
from kcm.core.audit import JsonValue
from kcm.kmip_protocol import Refusal

__all__ = ["MAX_SENDERS", "OTHER_SENDERS", "RefusalRecords", "sender_of"]

log = Logger()

#: The most senders whose refusals are followed one by one at once (about 2 KB each).
MAX_SENDERS = 1024
#: The one sender all others count as while :data:`MAX_SENDERS` are followed.
OTHER_SENDERS = ("other", "")

#: Writes the record of ``refusal`` (the last one counted) standing for several, with
#: these facts to add to its ``detail``.
RecordMany = Callable[[Refusal, Mapping[str, JsonValue]], object]


def sender_of(refusal: Refusal) -> tuple[str, str]:
    """Who ``refusal`` counts as: the gateway that relayed it (``""``: none) and who the
    sender claimed to be (its certificate described: subject, names and serial number; or
    the caller the gateway asserted). Not its address: a client reconnecting has a new
    port each time."""
    return (refusal.gateway.id if refusal.gateway is not None else "",
            refusal.claimed or "")


class _Sender:
    """One sender's interval: the refusals counted since its last record."""

    __slots__ = ("count", "first", "last", "refusal", "timer")

    def __init__(self, timer: IDelayedCall) -> None:
        self.timer = timer
        self.count = 0
        self.first = 0
        self.last = 0
        self.refusal: Refusal | None = None


class RefusalRecords:
    """Which refusals of unidentified senders are recorded one by one (see the module)."""

    def __init__(self, reactor: IReactorTime, wall: Callable[[], float],
                 record_many: RecordMany, *, interval: float = LOG_INTERVAL,
                 max_senders: int = MAX_SENDERS) -> None:
        """``reactor``: the intervals' time and timers; ``wall``: the dates a record gives
        (``detail.first``, ``detail.last``); ``record_many``: writes a record standing for
        several refusals."""
        self._reactor = reactor
        self._wall = wall
        self._record_many = record_many
        self._interval = interval
        self._max_senders = max_senders
        self._senders: dict[tuple[str, str], _Sender] = {}

    def __len__(self) -> int:
        return len(self._senders)

    def record_now(self, refusal: Refusal) -> bool:
        """Whether ``refusal`` gets its own record now (the first of its sender's turn);
        otherwise it is counted, in the record at the end of the interval."""
        sender = sender_of(refusal)
        if sender not in self._senders and len(self._senders) >= self._max_senders:
            sender = OTHER_SENDERS
        following = self._senders.get(sender)
        if following is None:
            self._senders[sender] = _Sender(self._reactor.callLater(
                self._interval, self._interval_ended, sender))
            return True
        now = int(self._wall())
        if not following.count:
            following.first = now
        following.count += 1
        following.last = now
        following.refusal = refusal
        return False

    def _interval_ended(self, sender: tuple[str, str]) -> None:
        """One record for the refusals ``sender`` had counted, and another interval; or,
        when it had none, the end of its turn."""
        following = self._senders[sender]
        if not following.count or following.refusal is None:
            del self._senders[sender]
            return
        refusal, facts = self._counted(sender, following)
        following.timer = self._reactor.callLater(self._interval, self._interval_ended,
                                                  sender)
        self._record_many(refusal, facts)

    def flush(self) -> list[object]:
        """End every interval now (kcm-core stops): one record for each sender's refusals
        counted and not yet recorded; no timer is left. What each record's writing returned
        (:data:`RecordMany`), in turn."""
        written = []
        senders, self._senders = self._senders, {}
        for sender, following in senders.items():
            if following.timer.active():
                following.timer.cancel()
            if following.count and following.refusal is not None:
                written.append(self._record_many(*self._counted(sender, following)))
        return written

    @staticmethod
    def _counted(sender: tuple[str, str], following: _Sender
                 ) -> tuple[Refusal, dict[str, JsonValue]]:
        """The last refusal ``following`` counted and the facts of its record (the count
        starts again)."""
        assert following.refusal is not None
        facts: dict[str, JsonValue] = {"count": following.count, "first": following.first,
                                       "last": following.last}
        if sender == OTHER_SENDERS:
            facts["other_senders"] = True
        refusal, following.refusal, following.count = following.refusal, None, 0
        return refusal, facts


