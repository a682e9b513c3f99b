"""Tail the outbox and fan new events out to every connected gateway link, in order.

The outbox is the guarantee (ARCHITECTURE §4, §9): :class:`EventFanout` reads it off the
reactor (a read-only transaction on the store's reader thread, apart from its workers, so
that no queue of requests there delays an event: :meth:`Store.read_plain`) when woken
(:meth:`EventFanout.wake`: on PostgreSQL, the NOTIFY every commit that adds events sends,
whichever core made it, see :mod:`kcm.core.outbox_listener`; on SQLite, each commit of this
process that adds events, the store's ``on_outbox_written``) and every ``poll_interval`` in
any case, encodes each new event's EVENT frame once and hands it to every live subscriber. A
link that has just connected first catches up through :meth:`EventFanout.replay`, then goes
live; see :class:`kcm.core.link_server.LinkServerProtocol`.

A read that fails because the store is unavailable (PostgreSQL stopped, a SQLite file
locked) is logged at most once every :data:`UNAVAILABLE_LOG_INTERVAL` seconds for each of
the two reads (the poll, the head's check), with how many failed meanwhile: they are tried
several times a second, and made some three lines a second for as long as an outage
lasted. Any other error is logged each time, with its traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from kcm.core.store import repository
from kcm.core.store.engine import Store
from kcm.core.store.unavailable import store_unavailable
from kcm.link.events import EventKind
from kcm.link.frames import Frame, FrameError, FrameType, decode_payload, encode_frame
from kcm.throttled_line import ThrottledLine

log = Logger()

#: Seconds without a successful read of the outbox after which the fan-out is stale.
STALE_AFTER = 5.0

#: Seconds between two lines saying that a read of the outbox failed for want of the store.
UNAVAILABLE_LOG_INTERVAL = 30.0

class EncodedEvent(NamedTuple):
    """An event ready to send: its sequence number and its encoded EVENT frame, with what a
    scoped gateway's link needs to know of it without decoding the frame
    (:mod:`kcm.core.gateway_views`)."""

    seq: int
    wire: bytes
    #: The tenant the event names (None: none, a ``policy`` event).
    tenant: str | None = None
    #: A ``policy`` event's document (None: another kind).
    policy: str | None = None


class EventSubscriber(Protocol):
    """What the fan-out pushes live events to."""

    def deliver(self, events: list[EncodedEvent]) -> None:
        """Take new events in sequence order (it skips those it already has)."""


class EventFanout(Service):
    """Polls the outbox and pushes each new event to every subscriber, in sequence order."""

    name = "kcm-event-fanout"

    def __init__(self, store: Store, clock: IReactorTime, *, head: int | None = 0,
                 poll_interval: float = 0.05, batch_size: int = 1000,
                 stale_after: float | None = None) -> None:
        self._store = store
        self._clock = clock
        #: The newest sequence number published (or known at start); None: the outbox's
        #: head, read when the service starts.
        self.head = head
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self._subscribers: set[EventSubscriber] = set()
        #: Every event this process committed up to this sequence number has been
        #: published (or was rolled back with a savepoint): set by each read that began
        #: after those commits (:meth:`committed`, read as the read begins).
        self.settled = 0
        #: Called after each read that raised :attr:`settled` (links holding answers).
        self.on_settled: set[Callable[[], None]] = set()
        #: No read of the outbox has succeeded for ``stale_after`` seconds (a database
        #: out of reach or hung): what is sent on links may miss changes made at other
        #: cores, so the links are closed (:attr:`on_stale`) until a read succeeds again.
        #: (None: not watched. kcm-core watches on PostgreSQL, where other cores share the
        #: database; a SQLite file has no other core to send gateways to.)
        self.stale = False
        self.stale_after = stale_after
        #: Called once each time the fan-out becomes stale.
        self.on_stale: list[Callable[[], None]] = []
        #: Called when the outbox is found to end before :attr:`head` (the database was
        #: restored under this process): gateways must link again, and compare.
        self.on_went_back: list[Callable[[], None]] = []
        #: Seconds between two checks that the outbox still reaches :attr:`head`.
        self.head_check_interval = 1.0
        self._head_check: LoopingCall | None = None
        self._last_read = clock.seconds()
        self._watch: LoopingCall | None = None
        self._loop: LoopingCall | None = None
        self._waking = False
        self._wake_again = False
        #: The lines of reads failed for want of the store, by read (module docstring).
        self._unavailable = {what: ThrottledLine(
            clock, what + " failed: the key store is unavailable ({why}) ({count} in "
            "{interval} s)", interval=UNAVAILABLE_LOG_INTERVAL, logger=log)
            for what in ("polling the outbox", "reading the outbox's head")}

    def _read_failed(self, failure: Failure, what: str) -> None:
        """Log that the read ``what`` failed (module docstring); never fails."""
        why = store_unavailable(failure.value)
        if why is None:
            log.failure("{what} failed", failure, what=what)
        else:
            self._unavailable[what].note(why=why)

    def startService(self) -> None:
        if self.head is None:
            # Once, at start (before the reactor runs): links resume from here.
            self.head = self._store.run_sync(repository.outbox_head, write=False)
        super().startService()
        self._loop = LoopingCall(self.poll)
        self._loop.clock = self._clock
        self._loop.start(self.poll_interval, now=True)
        # A separate clock: a read that hangs holds the poll loop, never this.
        self._last_read = self._clock.seconds()
        if self.stale_after is not None:
            self._watch = LoopingCall(self.check_fresh)
            self._watch.clock = self._clock
            self._watch.start(min(1.0, self.stale_after / 2), now=False)
        self._head_check = LoopingCall(self.check_head)
        self._head_check.clock = self._clock
        self._head_check.start(self.head_check_interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        for loop in (self._loop, self._watch, self._head_check):
            if loop is not None and loop.running:
                loop.stop()
        for line in self._unavailable.values():
            line.flush()

    def check_fresh(self) -> None:
        """Become stale when no read has succeeded for ``stale_after`` seconds."""
        if self.stale or self.stale_after is None \
                or self._clock.seconds() - self._last_read < self.stale_after:
            return
        self.stale = True
        log.error("the event fan-out has not read the outbox for {seconds:g} s: closing the "
                  "gateways' links so they link to another core", seconds=self.stale_after)
        for stale in list(self.on_stale):
            stale()

    def check_head(self) -> Deferred[None]:
        """Whether the outbox still reaches :attr:`head`: a database restored under this
        process (``pg_restore --clean`` while it runs, a SQLite file replaced) ends before
        it, and the events it then commits, under numbers already published, would never
        be sent. The head goes back to the outbox's, this process's count of what it
        committed too, and :attr:`on_went_back` tells the links; never fails."""
        head = self.head

        def compare(found: int) -> None:
            if head is None or found >= head or self.head != head:
                return
            log.error("the event log ends at {found}, before the {head} already sent: the "
                      "database was restored under this process; its gateways link again "
                      "and resynchronise", found=found, head=head)
            self.head = found
            self.committed_went_back(found)
            for went_back in list(self.on_went_back):
                went_back()

        d = maybeDeferred(self.read_head)
        d.addCallback(compare)
        d.addErrback(self._read_failed, "reading the outbox's head")
        return d

    def subscribe(self, subscriber: EventSubscriber) -> None:
        """Push every event published from now on to ``subscriber``."""
        self._subscribers.add(subscriber)

    def unsubscribe(self, subscriber: EventSubscriber) -> None:
        self._subscribers.discard(subscriber)

    def wake(self) -> None:
        """Read the outbox now (new events were committed). Wakes that come while a read
        runs make one more read after it, not one each."""
        if self._waking:
            self._wake_again = True
            return
        self._waking = True
        self.poll().addBoth(self._woken)

    def _woken(self, _: object) -> None:
        self._waking = False
        if self._wake_again:
            self._wake_again = False
            self.wake()

    def committed(self) -> int:
        """The latest event this process has committed (the store's count)."""
        return self._store.outbox_committed

    def committed_went_back(self, head: int) -> None:
        """The outbox ends at ``head``: so does what this process counts as committed."""
        self._store.outbox_went_back(head)

    def poll(self) -> Deferred[None]:
        """Read the events after :attr:`head` and publish them (all of them, batch after
        batch); never fails."""
        committed = self.committed()  # before the read: it finds all of these
        d = self.read(self.head)
        d.addCallback(self._publish_and_continue, committed)
        d.addErrback(self._read_failed, "polling the outbox")
        return d

    def _publish_and_continue(self, records: list[repository.OutboxRecord],
                              committed: int) -> Deferred | None:
        self._last_read = self._clock.seconds()
        if self.stale:
            self.stale = False
            log.info("the event fan-out reads the outbox again: gateways may link")
        self._publish([encode_event(r) for r in records])
        if len(records) >= self.batch_size:  # more are waiting: read on at once
            return self.poll()
        if committed > self.settled:
            self.settled = committed
            for settled in list(self.on_settled):
                settled()
        return None

    def _publish(self, events: list[EncodedEvent]) -> None:
        events = [e for e in events if e[0] > self.head]  # a slow poll may overlap a replay
        if not events:
            return
        self.head = events[-1][0]
        for subscriber in list(self._subscribers):
            try:
                subscriber.deliver(events)
            except Exception:
                # One subscriber's failure must not keep the events from the others (a
                # gateway's link skipping them would break the gapless stream).
                log.failure("an event subscriber failed on events up to {seq}",
                            seq=self.head)

    def replay(self, after: int) -> Deferred[list[EncodedEvent]]:
        """Up to ``batch_size`` committed events after sequence ``after``, read off the
        reactor (a link catching up)."""
        return self.read(after).addCallback(lambda records: [encode_event(r) for r in records])

    def read_head(self) -> Deferred[int]:
        """The sequence number of the outbox's latest event (0: none), read as :meth:`read`
        reads."""
        return self._store.read_plain(repository.outbox_head_plain)

    def read(self, after: int) -> Deferred[list[repository.OutboxRecord]]:
        """Up to ``batch_size`` outbox rows after ``after``, from a read-only transaction
        with no ORM session (this runs five times a second on SQLite, mostly to find
        nothing new)."""
        return self._store.read_plain(
            lambda connection: repository.outbox_since_plain(connection, after,
                                                             self.batch_size))


def encode_event(record: repository.OutboxRecord) -> EncodedEvent:
    """The EVENT frame of an outbox row. A payload that does not decode is sent empty (and
    logged): the sequence must stay gapless even around a bad row."""
    try:
        payload = decode_payload(record.payload)
    except FrameError as e:
        log.error("outbox event {seq} has a malformed payload: {error}", seq=record.seq,
                  error=str(e))
        payload = {}
    frame = Frame(FrameType.EVENT, sequence=record.seq, kind=record.kind, tenant=record.tenant,
                  payload=payload)
    policy = payload.get("policy") if record.kind == EventKind.POLICY else None
    return EncodedEvent(record.seq, encode_frame(frame), record.tenant,
                        policy if isinstance(policy, str) else None)
