"""kcm-core's answer to one KMIP request: decode, execute in the store, encode.

Plugged into :class:`kcm.kmip_protocol.KmipServerProtocol` for direct clients, and
(through :meth:`CoreRequestHandler.handle_as`) into the gateway link, where the
caller's identity is asserted by a gateway.

Every request leaves audit records, whatever happens to it: one per answered batch item
when it runs, one for a request refused whole (unreadable, an unsupported protocol version,
too many batch items; also those the protocol refuses before this handler reads them:
:meth:`CoreRequestHandler.refuse`, where those of a sender the core accepts no identity of
are coalesced, one record per sender per interval with their count:
:mod:`kcm.core.refusal_records`), and one for a request that failed with an unexpected
error (General Failure, logged with its traceback and correlation id). Requests refused
over their tenant's request rate are the exception: counted as they are refused, one record
per tenant per minute at most stands for them (:mod:`kcm.core.throttle_records`).

The work of one request is bounded (``[core.limits]``, :class:`kcm.core.config.CoreLimits`):
its header is judged before any batch item is decoded (protocol version, number of items),
a Locate returns at most ``max_locate_results`` identifiers, and at each batch-item
boundary the request stops when its deadline has passed or its client has disconnected
(:class:`RequestWatch`; the kernel's ``should_stop`` hook).

Most requests run in a group commit (:class:`kcm.core.group_commit.GroupCommitter`, on the
store's writer thread): each in a savepoint of one write transaction shared with the other
requests waiting, answered once that has committed. A batch of read-only operations
(:data:`kcm.core.operations.READ_ONLY`) with a Locate in it instead reaches the store's
worker threads through a :class:`kcm.core.fair_scheduler.FairScheduler`, one queue per
tenant served in turn, and runs in a read-only transaction, which neither waits for the
writer nor holds it; its audit records then ride in a group commit, before the answer is
sent. A batch of storeless operations (:data:`kcm.core.operations.STORELESS`: Discover
Versions, Query) is answered on the reactor without a transaction, and its audit records
likewise ride in a group commit, a lean one (no ORM session) when they can. Either way an
answer leaves only once its changes and audit records are durable.

What the writer thread would spend long on for one request is done before its group commit,
on the tenant's worker in its turn (:meth:`CoreRequestHandler._prepare`): decoding a long
request, and making the key pairs of its Create Key Pair items (an RSA-4096 pair takes about
half a second), which the group commit then only stores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from kcm.core.attribute_answers import recall, remember
from kcm.core.audit import (
    AuditEvent,
    JsonValue,
    RequestSavepoint,
    append_audit,
    append_records,
    savepoint,
)
from kcm.core.batch import (
    audit_event,
    client_correlation,
    execute,
    with_client_correlation,
)
from kcm.core.config import CoreLimits
from kcm.core.context import (
    Caller,
    KeyPairs,
    OperationContext,
    RequestWork,
    WritesHere,
    prepared_key_pairs,
)
from kcm.core.disk_full_line import DiskFullLine
from kcm.core.fair_scheduler import FairScheduler
from kcm.core.group_commit import GroupCommitter
from kcm.core.keyring import Keyring
from kcm.core.keys import L1Error
from kcm.core.managed import from_cache, state_now
from kcm.core.metrics import CoreMetrics
from kcm.core.operations import READ_ONLY, STORELESS
from kcm.core.operations.asymmetric_ops import checked_key_pair_request, prepare_sign
from kcm.core.operations.crypto_ops import prepare_decrypt
from kcm.core.operations.derive import prepare_pbkdf2
from kcm.core.operations.register import prepare_register
from kcm.core.queue_expiry import LATE_GRACE_S, RequestExpired
from kcm.core.refusal_records import RefusalRecords
from kcm.core.request_rates import TenantRates
from kcm.core.server_info import ServerInfo
from kcm.core.store.disk_space import DiskSpace
from kcm.core.store.engine import Store
from kcm.core.store.lean import LeanTransaction
from kcm.core.store.transaction_lost import check_transaction
from kcm.core.store.unavailable import (
    StoreStopped,
    log_failure,
    store_unavailable,
    store_unavailable_message,
)
from kcm.core.throttle_records import THROTTLE_OPERATION, ThrottleRecords
from kcm.crypto.rsa_keys import generate_key_pair
from kcm.kernel.batch import RunElsewhere, Savepoint
from kcm.kernel.batch_limit import over_batch_limit
from kcm.kernel.correlation import new_correlation_id
from kcm.kernel.item_limit import item_limit, over_item_limit
from kcm.kernel.plain_messages import (
    NOT_PLAIN,
    READABLE_VERSIONS,
    answer_item,
    read_create_payload,
    read_discover_versions,
    read_get_attributes,
    read_request,
    response_item,
)
from kcm.kernel.responses import (
    CLIENT_GONE,
    encode_items,
    fail_item,
    failed_item,
    failure_response,
    internal_error,
    operation_name,
    response_wire,
    too_large_message,
    withheld,
)
from kcm.kernel.versions import answer_version, is_supported, version_of
from kcm.kmip.enums import (
    BatchErrorContinuationOption,
    DerivationMethod,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
)
from kcm.kmip.errors import KmipError
from kcm.kmip.labels import enum_label
from kcm.kmip.messages import (
    IdPlaceholder,
    ProtocolVersion,
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    ResponseBatchItem,
    batch_count_mismatch,
    decode_request_header,
    decode_request_items,
    too_many_batch_items,
)
from kcm.kmip.payloads import (
    CreateKeyPairRequest,
    DecryptRequest,
    DeriveKeyRequest,
    RegisterRequest,
    SignRequest,
)
from kcm.kmip.tags import Tag
from kcm.kmip.versions import Version
from kcm.kmip_protocol import ConnectionInfo, Refusal
from kcm.logging import printable
from kcm.throttled_line import ThrottledLine
from kcm.ttlv import TtlvError, decode
from kcm.ttlv.peek import operation_values, peek_request

log = Logger()


class RequestWatch:
    """Whether one request must stop: past its deadline (``limit`` seconds of ``clock``, a
    monotonic one, from when the watch was made, the request's arrival), or its client
    gone (:attr:`lost`, set on the reactor thread when the connection closes).

    :meth:`stop_reason` (also the watch called) is the kernel's ``should_stop`` hook; it
    runs on a store thread, and reads only a flag and the clock. :attr:`deadline` is when
    the request, still waiting in a queue then, is answered without running
    (:mod:`kcm.core.queue_expiry`).
    """

    __slots__ = ("_clock", "_limit", "deadline", "lost")

    def __init__(self, clock: Callable[[], float], limit: float) -> None:
        self._clock = clock
        self._limit = limit
        #: When the request must stop, on ``clock``.
        self.deadline = clock() + limit
        self.lost = False

    def __call__(self) -> str | None:
        return self.stop_reason()

    def stop_reason(self) -> str | None:
        """None while the request may go on; else why it must stop (short ASCII)."""
        if self.lost:
            return CLIENT_GONE
        if self._clock() >= self.deadline:
            return f"request deadline of {self._limit:g} s exceeded"
        return None


class _Withheld(Exception):
    """Raised in a request's savepoint to roll its work back: its answer passes the limits
    and its successes are withheld (:meth:`CoreRequestHandler._withholds`)."""


class _Refused(Exception):
    """A request answered with one failed item, without running any of its batch;
    ``client``: its Client Correlation Value (:func:`client_correlation`), if its header
    was read."""

    def __init__(self, version: Version, reason: int, message: str,
                 client: str | None = None) -> None:
        super().__init__(message)
        self.version = version
        self.reason = reason
        self.message = message
        self.client = client


class CoreRequestHandler:
    """Answers whole request messages with whole response messages.

    No answer is longer than ``max_message_size`` (the core's ``limits.max_message_size``,
    which also bounds requests): one that would be has its successful items answer Response
    Too Large (KMIP's word for it), or, when even that is too long, is a single Response Too
    Large item. The client's own Maximum Response Size applies when it is smaller.
    """

    def __init__(self, store: Store, keyring: Keyring, *, clock: Callable[[], float],
                 timer: Callable[[], float] | None = None,
                 server_info: ServerInfo | None = None,
                 limits: CoreLimits | None = None, workers: int = 4,
                 committer: GroupCommitter | None = None,
                 metrics: CoreMetrics | None = None,
                 group_start: Callable[[Callable[[], None]], object] | None = None,
                 reactor: IReactorTime | None = None,
                 rates: TenantRates | None = None) -> None:
        """``clock``: the wall clock, whose time is a request's (its dates, its answer's
        time stamp); ``timer``: the monotonic clock its deadline runs on (kcm-core's
        reactor; ``clock`` when not given). ``group_start``: when its group commits start
        (:class:`GroupCommitter`'s ``start``; kcm-core's is the end of the reactor's
        turn). ``reactor``: the intervals and timers of the refusals it coalesces
        (:class:`RefusalRecords`) and of the requests' deadlines in its queues (Twisted's
        reactor when not given). ``rates``: the tenants' request rates, counted as each
        request arrives (None: none)."""
        self._store = store
        self._metrics = metrics or CoreMetrics()
        self._keyring = keyring
        self._clock = clock
        self._timer = timer if timer is not None else clock
        self._server_info = server_info or ServerInfo()
        self._limits = limits or CoreLimits()
        #: The most TTLV items of one request (:mod:`kcm.kernel.item_limit`).
        self._max_items = item_limit(self._limits.max_batch_items)
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor  # type: ignore[assignment]
        assert reactor is not None
        # A request still waiting for a worker or a group commit at its deadline is
        # answered then, unrun (kcm.core.queue_expiry).
        self._scheduler = FairScheduler(
            store.defer, workers=workers,
            per_key=min(workers, self._limits.max_workers_per_tenant), reactor=reactor,
            timer=self._timer)
        self._committer = committer or GroupCommitter(
            store.write, max_jobs=self._limits.max_group_commit, start=group_start,
            write_lean=store.write_lean, reactor=reactor, timer=self._timer,
            on_group=self._metrics.group_answered, check=check_transaction)
        #: The watches of the requests in flight, by connection id (reactor thread only).
        self._in_flight: dict[int, set[RequestWatch]] = {}
        self._refusal_records = RefusalRecords(reactor, clock, self._record_refusals)
        self._unaudited_line = ThrottledLine(reactor, _NOT_AUDITED, logger=log)
        #: The tenants' refusals over their rate, one record per tenant per interval.
        self._throttle_records = ThrottleRecords(reactor, clock, self._record_throttled)
        self._unaudited_throttle = ThrottledLine(reactor, _THROTTLE_NOT_AUDITED, logger=log)
        self._disk_full_line = DiskFullLine(reactor, store.url)
        self._reactor = reactor
        #: Keys found counting uses against Usage Limits in a lean group (each use writes):
        #: a request naming one takes a session group at once (:meth:`_writes_nothing`). Added
        #: to by the writer thread only, at most :data:`COUNTING_KEYS` (the oldest go).
        self._counting: dict[str, None] = {}
        self._rates = rates

    @property
    def disk_space(self) -> DiskSpace | None:
        """The disk of the SQLite database (None: another database), as its log line
        reads it: the readiness check shares it (:func:`kcm.core.metrics.database_state`)."""
        return self._disk_full_line.disk

    @property
    def limits(self) -> CoreLimits:
        return self._limits

    def queue_waiting(self) -> list[tuple[str, int]]:
        """The requests (and audit records) waiting for a store worker and for the writer
        (the metrics' ``kcm_core_queued_requests``)."""
        return [("workers", self._scheduler.waiting), ("writer", self._committer.waiting)]

    def write_in_turn(self, key: tuple[str, str], fn: Callable[[Session], Any]
                      ) -> Deferred[Any]:
        """``fn(session)`` in a group commit as share key ``key`` (in a savepoint of its
        own); fires with its result after the commit. The server's own background writes
        (a state sweep: :data:`SWEEPER_SHARE`) take their turn on the writer thread with
        the tenants' requests, by the writer's time each has used
        (:mod:`kcm.core.writer_shares`): on a worker of their own they contended with the
        group commits for the database, and every request waited for whole sweeps (a
        tenant key's re-wrap made another tenant's Create 4.0 ms at p50 become 262 ms)."""
        return self._committer.submit(key, fn)

    # RequestHandler ---------------------------------------------------------
    def handle_request(self, wire: bytes, connection: ConnectionInfo) -> Deferred[bytes]:
        watch = self._watch()
        watching = self._in_flight.setdefault(connection.connection_id, set())
        watching.add(watch)

        def done(result: object) -> object:
            watching.discard(watch)
            if not watching and self._in_flight.get(connection.connection_id) is watching:
                del self._in_flight[connection.connection_id]
            return result

        return self._answer(wire, Caller(connection.principal, connection.peer),
                            watch).addBoth(done)

    def connection_lost(self, connection: ConnectionInfo) -> None:
        """``connection`` closed: its requests still running stop at their next batch-item
        boundary (the items left fail, and are audited, as cancelled)."""
        for watch in self._in_flight.pop(connection.connection_id, ()):
            watch.lost = True

    def failure_response(self, reason: int, message: str) -> bytes:
        return failure_response((1, 0), reason, message, int(self._clock()))

    def refuse(self, refusal: Refusal) -> Deferred[bytes]:
        """The answer to a request refused whole before it reached :meth:`handle_request`
        or :meth:`handle_as` (:class:`~kcm.kmip_protocol.Refusal`: a client certificate
        naming no accepted identity, a request over ``max_message_size``, a caller a gateway
        asserted that the core does not accept): :meth:`failure_response`'s, sent once the
        request's audit record (operation ``?``) has committed, so that these requests
        leave one too. It rides a group commit like any other record; the refusals of
        senders the core accepts no identity of share one fair share there
        (:data:`UNIDENTIFIED_SHARE`), so a flood of them delays another tenant's request by
        one record per group at most, and are coalesced (:class:`RefusalRecords`): a
        sender's first is recorded before its answer, those that follow within the
        interval are answered at once and counted in one record at its end. A record that
        cannot be written is logged (at most once per interval), and the client answered
        all the same."""
        wire = self.failure_response(refusal.reason, refusal.message)
        self._metrics.item(None)
        if refusal.principal is None and not self._refusal_records.record_now(refusal):
            return succeed(wire)
        return self._record_refusals(refusal).addCallback(lambda _: wire)

    def flush_refusals(self) -> Deferred[None]:
        """The records of the refusals counted and not yet recorded (kcm-core stops:
        :meth:`RefusalRecords.flush`, :meth:`ThrottleRecords.flush`) committed; never fails
        (a failure is logged, its line written once they are done)."""
        written = self._refusal_records.flush() + self._throttle_records.flush()
        self._unaudited_line.flush()
        if self._rates is not None:
            self._rates.flush()

        def done(_: object) -> None:
            self._unaudited_line.flush()
            self._unaudited_throttle.flush()

        return DeferredList(written, consumeErrors=True).addCallback(done)

    def _record_throttled(self, tenant: str, facts: Mapping[str, JsonValue]
                          ) -> Deferred[None]:
        """The audit record of ``tenant``'s requests refused over its rate
        (:class:`ThrottleRecords`) committed, in a group commit of its own share; a failure
        logged (at most once per interval) and not retried."""
        event = throttle_event(tenant, new_correlation_id(), facts)
        return self._committer.submit(THROTTLE_SHARE, _append_all, [event],
                                      lean=append_records).addCallbacks(
            lambda _: None, _unaudited_throttle,
            errbackArgs=(event, self._unaudited_throttle))

    def _record_refusals(self, refusal: Refusal,
                         coalesced: Mapping[str, JsonValue] | None = None) -> Deferred[None]:
        """The audit record of ``refusal`` (and of the refusals ``coalesced`` counts)
        committed; a failure to commit it logged (and swallowed)."""
        event = refusal_event(refusal, new_correlation_id(), coalesced)
        key = UNIDENTIFIED_SHARE if refusal.principal is None else share_of(
            Caller(refusal.principal, refusal.peer))
        return self._committer.submit(key, _append_all, [event], lean=append_records
                                      ).addCallbacks(lambda _: None, _unaudited_refusal,
                                                     errbackArgs=(event,
                                                                  self._unaudited_line))

    # ------------------------------------------------------------------------
    def handle_as(self, wire: bytes, caller: Caller,
                  watch: RequestWatch | None = None) -> Deferred[bytes]:
        """Answer ``wire`` on behalf of ``caller`` on a store worker thread; never fails
        (errors are answers). The request's deadline runs from now, or from when ``watch``
        (:meth:`new_watch`, kept to :meth:`cancel` the request) was made."""
        return self._answer(wire, caller, watch or self._watch())

    def new_watch(self) -> RequestWatch:
        """A watch for one request about to be handed to :meth:`handle_as`."""
        return self._watch()

    def cancel(self, watch: RequestWatch) -> None:
        """Nobody will read the answer of ``watch``'s request (a gateway's client left): it
        stops at its next batch-item boundary, as when a direct client disconnects."""
        watch.lost = True

    def _watch(self) -> RequestWatch:
        return RequestWatch(self._timer, self._limits.request_deadline)

    def _answer(self, wire: bytes, caller: Caller, watch: RequestWatch) -> Deferred[bytes]:
        metrics = self._metrics
        duration = metrics.direct_duration if caller.gateway is None else \
            metrics.gateway_duration
        started = metrics.timer()

        def timed(result: object) -> object:
            duration.observe(metrics.timer() - started)
            return result

        now, key, should_stop = int(self._clock()), share_of(caller), watch
        most = self._limits.max_batch_items
        # Read once for every choice below, and no further than one over the limit: a
        # request of more items is refused in a group commit at the cost of its header.
        found = operation_values(wire, most)
        tenant = caller.principal.tenant
        if tenant is not None and self._rates is not None:
            # Counted before the request waits for anything (kcm.core.request_rates).
            items = max(len(found), 1)
            refused = self._rates.admit(tenant, items)
            if refused is not None:
                self._metrics.item(None)
                rate, burst = self._rates.limit(tenant)
                self._throttle_records.note(
                    tenant, items, rate=rate, burst=burst, cores=self._rates.cores,
                    principal=caller.principal.id, source=caller.source,
                    gateway=None if caller.gateway is None else caller.gateway.id)
                return succeed(failure_response(
                    _answer_version(wire), ResultReason.SERVER_LIMIT_EXCEEDED, refused,
                    now)).addBoth(timed)
        over = len(found) > most
        if not over and _beside_writer(wire, found):
            answering = self._scheduler.submit(
                key, self._read, wire, caller, now, should_stop,
                expires=self._expires(watch)).addCallbacks(
                self._audit_then_answer, self._write_not_durable,
                callbackArgs=(key, wire, caller, now, should_stop),
                errbackArgs=(key, caller, wire, now))
        elif len(wire) > PREDECODE_BYTES or (not over and (
                _CREATE_KEY_PAIR in found or _DERIVE_KEY in found)):
            # Decoded, and its key pairs made and PBKDF2 computed, on the tenant's worker
            # first, its group commit given the result: on the writer, a long request of
            # small items, a batch of RSA-4096 pairs or of slow derivations, would delay
            # every tenant's writes.
            answering = self._scheduler.submit(
                key, self._prepare, wire, should_stop, caller, now,
                expires=self._expires(watch)).addCallbacks(
                self._write_prepared, self._write_not_durable,
                callbackArgs=(key, wire, caller, now, should_stop),
                errbackArgs=(key, caller, wire, now))
        elif over:
            answering = self._write(key, wire, caller, now, should_stop)
        elif _storeless(wire, found):
            answering = self._audit_then_answer(
                self._read(wire, caller, now, should_stop, storeless=True), key, wire,
                caller, now, should_stop)
        else:
            answering = self._write(key, wire, caller, now, should_stop,
                                    lean=_reads_only(wire, found) and (
                                        _GET_ENCRYPT_VALUES.isdisjoint(found)
                                        or (_CONTINUE not in wire and self._writes_nothing(
                                            wire, tenant, now, _GET_VALUE in found))))
        return answering.addBoth(timed)

    def _writes_nothing(self, wire: bytes, tenant: str | None, now: int,
                        gets: bool = True) -> bool:
        """(reactor) Whether a request with a Get or an Encrypt may run in a lean group, by
        what the object cache says of the objects it names (a hint: one that writes after
        all stops before it does, :meth:`_read_lean`): every Unique Identifier in it
        (:data:`_UID_HEAD`) names an object of ``tenant``'s in the cache, not Fresh if the
        request ``gets`` (a key's first Get clears that), with no Usage Limits (each use is
        counted) and no state a date has moved at ``now``, and not remembered counting uses
        (an L4, an L3); and it has no Correlation Value (a stream's later part spends it)."""
        if tenant is None or _CORRELATION_HEAD in wire:
            return False
        cache, counting = self._store.objects, self._counting
        start = wire.find(_UID_HEAD)
        if start < 0:
            return False
        while start >= 0:
            length = int.from_bytes(wire[start + 4:start + 8], "big")
            try:
                uid = wire[start + 8:start + 8 + length].decode()
            except UnicodeDecodeError:
                return False
            entry = cache.peek(tenant, uid)
            if entry is None or uid in counting:
                return False
            obj = from_cache(entry)
            if obj is None:
                return False
            fresh, limited = obj.memo("lean facts", lambda o=obj: (
                o.value(Tag.FRESH) is True, o.first(Tag.USAGE_LIMITS) is not None))
            if limited or (fresh and gets):
                return False
            if state_now(obj, now) != obj.state:
                return False
            start = wire.find(_UID_HEAD, start + 8 + length)
        return True

    def _write(self, key: tuple[str, str], wire: bytes, caller: Caller, now: int,
               should_stop: Callable[[], str | None], *, lean: bool = False,
               decoded: RequestMessage | Exception | None = None,
               key_pairs: KeyPairs | None = None) -> Deferred[bytes]:
        """The request run in a group commit, answered once that has committed. ``lean``:
        it may run in a lean group (:meth:`_read_lean`). ``decoded``, ``key_pairs``: what
        :meth:`_prepare` made for ``wire`` already; without them, the request's first pass
        may find that it needs preparing (:meth:`_unless_it_needs_preparing`)."""
        first_pass = decoded is None and key_pairs is None
        if first_pass:
            key_pairs = _FIRST_PASS
        running = self._committer.submit(key, self._respond_in, wire, caller, now,
                                         should_stop, decoded, key_pairs, own_savepoint=True,
                                         lean=self._read_lean if lean else None,
                                         expires=self._expires(should_stop))
        if lean:
            running.addCallback(self._unless_it_writes, key, wire, caller, now, should_stop)
        if first_pass:
            running.addCallback(self._unless_it_needs_preparing, key, wire, caller, now,
                                should_stop)
        return running.addErrback(self._write_not_durable, key, caller, wire, now)

    def _unless_it_needs_preparing(self, answer: bytes | object, key: tuple[str, str],
                                   wire: bytes, caller: Caller, now: int,
                                   should_stop: Callable[[], str | None]
                                   ) -> bytes | Deferred[bytes]:
        """``answer``; or, when the writer met work that the tenant's worker computes
        beforehand (:data:`_PREPARE`: an RSA private-key operation), the request prepared
        (:meth:`_prepare`) and written again, with nothing of the first pass kept."""
        if answer is not _PREPARE:
            return answer  # type: ignore[return-value]
        return self._scheduler.submit(
            key, self._prepare, wire, should_stop, caller, now,
            expires=self._expires(should_stop)).addCallbacks(
            self._write_prepared, self._write_not_durable,
            callbackArgs=(key, wire, caller, now, should_stop),
            errbackArgs=(key, caller, wire, now))

    def _read_lean(self, transaction: LeanTransaction, wire: bytes, caller: Caller, now: int,
                   should_stop: Callable[[], str | None],
                   _decoded: None = None, _key_pairs: None = None) -> bytes | object:
        """The writer thread, in a lean group (no ORM session of its own): the answer to a
        request of read-only operations (:func:`_reads_only` picked it), executed with a
        session that only reads in the group's transaction, its audit records appended
        there; :data:`_WRITES` if it turns out to write after all (it then takes the
        general way, :meth:`_unless_it_writes`). (The group hands it the job's arguments,
        :meth:`_respond_in`'s; a request prepared beforehand never runs lean.)"""
        answer = self._recalled(transaction, wire, caller, now, should_stop) or self._read(
            wire, caller, now, should_stop, transaction=transaction)
        if answer is None:
            return _WRITES
        append_records(transaction, answer.events)
        return answer.wire

    def _recalled(self, transaction: LeanTransaction, wire: bytes, caller: Caller, now: int,
                  should_stop: Callable[[], str | None] | None) -> _Answer | None:
        """The answer to a plain request of Get Attributes whose every item has an answer
        kept with its object (:mod:`kcm.core.attribute_answers`), made from those; None:
        the request is executed."""
        if should_stop is not None and should_stop() is not None:
            return None  # (executed, it says why its items did not run)
        request = _plain_request(wire, self._limits, read_get_attributes)
        if request is None:
            return None
        store = self._store
        try:
            payloads = recall(transaction.connection, store.objects, store.known,
                              caller.principal, self._server_info.access, request, now)
        except DBAPIError:
            raise  # the database's: the group fails
        except Exception:
            log.failure("a kept Get Attributes answer could not be recalled; executing it")
            return None
        if payloads is None:
            return None
        correlation_id = new_correlation_id()
        version = request.header.version
        asked = request.batch_items
        items = [ResponseBatchItem(operation=Operation.GET_ATTRIBUTES,
                                   unique_batch_item_id=item.unique_batch_item_id,
                                   result_status=ResultStatus.SUCCESS) for item in asked]
        encoded = [answer_item(_GET_ATTRIBUTES, item.unique_batch_item_id, payload)
                   for item, payload in zip(asked, payloads, strict=True)]
        if self._withholds(request, now, correlation_id, items, encoded):
            self._withheld_items(request, items, [])  # (audited as answered, below)
        self._metrics.answered(items)
        answer = response_wire(
            version, now, correlation_id, encoded,
            request.header.maximum_response_size, server_limit=self._limits.max_message_size)
        return _Answer(answer, [
            audit_event(caller, answered, correlation_id, [item.request_payload.unique_identifier])
            for item, answered in zip(asked, items, strict=True)], version, correlation_id)

    def _remember(self, transaction: LeanTransaction, caller: Caller,
                  request: RequestMessage, items: list[ResponseBatchItem], now: int) -> None:
        """Keep the answers of an executed Get Attributes (:func:`remember`); the answer
        stands whatever happens to that."""
        try:
            remember(transaction.connection, self._store.objects, caller.principal, request,
                     items, now)
        except DBAPIError:
            raise  # the database's: the group fails
        except Exception:
            log.failure("the answers of a Get Attributes could not be kept")

    def _unless_it_writes(self, answer: bytes | object, key: tuple[str, str], wire: bytes,
                          caller: Caller, now: int,
                          should_stop: Callable[[], str | None]) -> bytes | Deferred[bytes]:
        if answer is _WRITES:
            return self._write(key, wire, caller, now, should_stop)
        return answer  # type: ignore[return-value]

    def _write_not_durable(self, failure: Failure, key: tuple[str, str], caller: Caller,
                           wire: bytes, now: int) -> Deferred[bytes]:
        """:meth:`_not_durable` for a request of :meth:`_write` (its version read only now:
        rarely needed, and a peek of every request on the reactor otherwise)."""
        return self._not_durable(failure, key, caller, _answer_version(wire), now)

    def _audit_then_answer(self, answer: _Answer | None, key: tuple[str, str], wire: bytes,
                           caller: Caller, now: int,
                           should_stop: Callable[[], str | None]) -> Deferred[bytes]:
        """A read-only request's answer, sent once its audit records have committed (in a
        group commit); a request that turned out not to be read-only takes the write path."""
        if answer is None:
            return self._write(key, wire, caller, now, should_stop)
        return self._committer.submit(
            key, _append_all, answer.events, lean=append_records,
            expires=self._expires(should_stop)).addCallbacks(
            lambda _: answer.wire, self._not_durable,
            errbackArgs=(key, caller, answer.version, now, True))

    def _not_durable(self, failure: Failure, key: tuple[str, str], caller: Caller,
                     version: Version, now: int, ran: bool = False) -> Deferred[bytes]:
        """General Failure for a request whose group did not commit, answered at once.
        ``ran``: the request was executed (read-only), its audit records did not commit.

        A store that is unavailable (locked by another process, full, unreachable) is named
        in the answer, and the failure is recorded by one log line, with the caller, not in
        the audit chain: writing there would meet the same store, and each attempt would
        hold the writer (up to the SQLite lock wait) ahead of every other request. Any
        other failure is logged with its traceback and its audit record attempted in a
        later group, which the answer does not wait for."""
        correlation_id = new_correlation_id()
        if isinstance(failure.value, RequestExpired):
            return succeed(self._expired_answer(key, caller, version, correlation_id, now,
                                                ran))
        unavailable = store_unavailable(failure.value)
        answer = self._failed_answer(caller, version, correlation_id, now,
                                     unavailable=unavailable is not None)
        if unavailable is not None:
            self._unaudited(caller, correlation_id, failure.value, unavailable)
            return succeed(answer.wire)
        log.failure("request failed [correlation id {cid}]", failure, cid=correlation_id)

        def unaudited(failure: Failure) -> None:
            log.failure("the audit record of failed request {cid} could not be written",
                        failure, cid=correlation_id)

        self._committer.submit(key, _append_all, answer.events,
                               lean=append_records).addErrback(unaudited)
        return succeed(answer.wire)

    def _unaudited(self, caller: Caller, correlation_id: str, error: BaseException,
                   why: str, *, writer: bool = False) -> None:
        """A request answered that the store is unavailable (``why``): one line, counted,
        and the disk looked at (by the reactor: ``writer``, called from the writer
        thread)."""
        self._metrics.unavailable(
            "stopped" if isinstance(error, StoreStopped)
            else "l1" if isinstance(error, L1Error) else "database")
        log.error("request of {caller} failed [correlation id {cid}]: the key store is "
                  "unavailable ({why}); not audited", caller=caller.principal.id,
                  cid=correlation_id, why=why)
        if writer:
            self._reactor.callFromThread(self._disk_full_line.failed)
        else:
            self._disk_full_line.failed()

    def _expires(self, should_stop: Callable[[], str | None] | None) -> float | None:
        """When a request whose ``should_stop`` hook this is, about to wait in a queue,
        is answered unrun if it still waits: its deadline, or, handed over at or after it
        (it ran up to its deadline, and its answer waits for its commit),
        :data:`~kcm.core.queue_expiry.LATE_GRACE_S` from now. None: it has no watch."""
        if not isinstance(should_stop, RequestWatch):
            return None
        return max(should_stop.deadline, self._timer() + LATE_GRACE_S)

    def _expired_answer(self, key: tuple[str, str], caller: Caller, version: Version,
                        correlation_id: str, now: int, ran: bool = False) -> bytes:
        """General Failure for a request still waiting in a queue at its deadline (it did
        not run; ``ran``: it ran, read-only, and its audit records waited to be written,
        which they now never are); its audit record is written in a later group, which the
        answer does not wait for (a failure to write it is logged)."""
        answer = self._failed_answer(caller, version, correlation_id, now,
                                     expired=(self._limits.request_deadline, ran))
        self._metrics.expired_in_queue(ran)

        def unaudited(failure: Failure) -> None:
            log_failure(log, failure, f"the audit record of request {correlation_id}, "
                        "answered unrun at its deadline,")

        self._committer.submit(key, _append_all, answer.events,
                               lean=append_records).addErrback(unaudited)
        return answer.wire

    def respond(self, wire: bytes, caller: Caller, now: int,
                should_stop: Callable[[], str | None] | None = None) -> bytes:
        """Decode, execute, encode, in transactions of its own (no group commit): the
        answer and its audit records are durable when it returns. Blocking: never on the
        reactor. ``should_stop`` is asked at each batch-item boundary (None: never stop)."""
        answer = self._read(wire, caller, now, should_stop)
        if answer is None:
            return self._store.run_sync(
                lambda session: self._respond_in(session, wire, caller, now, should_stop))
        try:
            self._store.run_sync(lambda session: _append_all(session, answer.events))
        except Exception:
            log.failure("request failed [correlation id {cid}]", cid=answer.correlation_id)
            failure = self._failed_answer(caller, answer.version, answer.correlation_id, now)
            try:
                self._store.run_sync(lambda session: _append_all(session, failure.events))
            except Exception:
                log.failure("the audit record of failed request {cid} could not be written",
                            cid=answer.correlation_id)
            return failure.wire
        return answer.wire

    def _read(self, wire: bytes, caller: Caller, now: int,
              should_stop: Callable[[], str | None] | None, *,
              storeless: bool = False,
              transaction: LeanTransaction | None = None) -> _Answer | None:
        """A store worker: the answer to a request of read-only operations, executed in a
        read-only transaction, and the audit records to write before it is sent; a request
        refused whole or failed is answered here too. None: the request writes.

        ``storeless``: the reactor, for a request :func:`_storeless` picked, executed with
        no transaction at all; None also when it holds an operation that is not
        :data:`~kcm.core.operations.STORELESS` after all. ``transaction``: the writer
        thread, executed in that lean transaction (:meth:`_read_lean`)."""
        correlation_id = new_correlation_id()
        try:
            request = self._decode(
                wire, read=read_discover_versions if storeless
                else read_get_attributes if transaction is not None
                and _GET_ENCRYPT_VALUES.isdisjoint(operation_values(wire)) else _read_plain)
        except _Refused as refused:
            return self._refused_answer(caller, refused, correlation_id, now)
        except Exception:
            log.failure("request failed [correlation id {cid}]", cid=correlation_id)
            return self._failed_answer(caller, _answer_version(wire), correlation_id, now)
        # (An item that could not be read may have no Operation: the general way then.)
        if not all(item.operation in (STORELESS if storeless else LEAN if transaction
                                      is not None else READ_ONLY)
                   for item in request.batch_items):
            return None
        version = request.header.version
        events: list[AuditEvent] = []
        try:
            if storeless:
                items = self._execute(None, request, caller, now,  # type: ignore[arg-type]
                                      correlation_id, should_stop, events.append,
                                      savepoint=_NothingToUndo)
            elif transaction is not None:
                items = self._store.read_in(
                    transaction, lambda session: _wrote_nothing(session, self._execute(
                        session, request, caller, now, correlation_id, should_stop,
                        events.append, savepoint=_NothingToUndo)))
                if all(item.operation == Operation.GET_ATTRIBUTES
                       for item in request.batch_items):
                    self._remember(transaction, caller, request, items, now)
            else:
                items = self._store.run_sync(
                    lambda session: self._execute(session, request, caller, now,
                                                  correlation_id, should_stop,
                                                  events.append), write=False)
            encoded = _encoded(items, version)
            if self._withholds(request, now, correlation_id, items, encoded):
                items, events = self._withheld_items(request, items, events)
                encoded = _encoded(items, version)
            return _Answer(self._response(request, now, correlation_id, items, encoded), events,
                           version, correlation_id)
        except WritesHere as e:
            if e.counting is not None:
                counting = self._counting
                counting[e.counting] = None
                if len(counting) > COUNTING_KEYS:
                    del counting[next(iter(counting))]
            return None  # (nothing of this run kept: it runs in a session group)
        except Exception as e:
            unavailable = store_unavailable(e)
            if unavailable is None:
                log.failure("request failed [correlation id {cid}]", cid=correlation_id)
            else:
                log.error("request failed [correlation id {cid}]: the key store is "
                          "unavailable ({why})", cid=correlation_id, why=unavailable)
            return self._failed_answer(caller, version, correlation_id, now, request,
                                       unavailable=unavailable is not None)

    def _predecode(self, wire: bytes) -> RequestMessage | Exception:
        """A store worker (the tenant's turn): ``wire`` decoded, or why it cannot be (the
        exception, raised again by :meth:`_respond_in`, which answers it)."""
        try:
            return self._decode(wire)
        except Exception as e:
            return e

    def _prepare(self, wire: bytes, should_stop: Callable[[], str | None],
                 caller: Caller | None = None, now: int = 0
                 ) -> tuple[RequestMessage | Exception, KeyPairs | None]:
        """A store worker (the tenant's turn): ``wire`` decoded (:meth:`_predecode`) and,
        when it has Create Key Pair items, a key pair made for each that the operation
        would make one for (:func:`_key_pair_lengths`), ``should_stop`` asked before each
        (RSA key generation releases the GIL: it runs beside the writer, not in its turn);
        when it has Derive Key items by PBKDF2, those derivations computed, and when it has
        Sign or Decrypt items, their RSA private-key operations (as ``caller`` at ``now``:
        :meth:`_prepare_in_one_read`). The group commit stores the pairs
        (:meth:`KeyPairs.take`) and takes what was computed from what it reads itself."""
        decoded = self._predecode(wire)
        if isinstance(decoded, Exception):
            return decoded, None
        lengths = _key_pair_lengths(decoded)
        derivations = [item.request_payload for item in decoded.batch_items
                       if item.operation == Operation.DERIVE_KEY
                       and isinstance(item.request_payload, DeriveKeyRequest)
                       and item.request_payload.derivation_method == DerivationMethod.PBKDF2
                       and not item.critical_extension]
        private = [item for item in decoded.batch_items
                   if item.operation in _PRIVATE_KEY_OPERATIONS
                   and isinstance(item.request_payload, _PRIVATE_KEY_OPERATIONS[
                       item.operation][0]) and not item.critical_extension
                   and (item.operation != Operation.REGISTER
                        or item.request_payload.object_type == ObjectType.PRIVATE_KEY)]
        if lengths is None and not derivations and not private:
            return decoded, None
        key_pairs = KeyPairs()
        if (derivations or private) and caller is not None:
            self._prepare_in_one_read(decoded, [
                *[(prepare_pbkdf2, payload, key_pairs.pbkdf2) for payload in derivations],
                *[(_PRIVATE_KEY_OPERATIONS[item.operation][1], item.request_payload,
                   key_pairs.private) for item in private]], caller, now, should_stop)
        for length in lengths or ():
            key_pairs.stopped = should_stop()
            if key_pairs.stopped is not None:
                break
            try:
                key_pairs.add(length, generate_key_pair(length))
            except Exception as e:
                key_pairs.failure = e  # (the item that lacks its pair fails with it)
                break
        return decoded, key_pairs

    def _prepare_in_one_read(self, request: RequestMessage,
                             steps: list[tuple[Callable[..., None], object, object]],
                             caller: Caller, now: int,
                             should_stop: Callable[[], str | None]) -> None:
        """Each ``prepare(ctx, payload, results)`` of ``steps`` (the request's PBKDF2
        derivations, its RSA private-key operations), in one read-only transaction, with
        every check the operation makes: what each computes is kept in ``results``
        (:class:`~kcm.core.context.Pbkdf2Results`, :class:`~kcm.core.context.
        PrivateKeyResults`) for the writer, which runs every tenant's writes (a batch of
        RSA-4096 signatures or of slow derivations held every tenant for seconds there).
        PBKDF2 is bounded per request as the writer counts it. One that cannot be (refused,
        named by the ID Placeholder, the store failing) is left to the writer, which
        refuses it or computes it (a few private-key operations at most:
        :data:`~kcm.core.context.MAX_WRITER_PRIVATE_KEY_OPERATIONS`)."""
        if should_stop() is not None:
            return

        def compute(session: Session) -> None:
            work = RequestWork()
            for prepare, payload, results in steps:
                if should_stop() is not None:
                    return
                ctx = OperationContext(
                    session=session, caller=caller, version=request.header.version,
                    now=now, keyring=self._keyring, server_info=self._server_info,
                    id_placeholder=IdPlaceholder(), random_bytes=self._keyring.random_bytes,
                    key_pairs=None, work=work)
                try:
                    prepare(ctx, payload, results)
                except KmipError:
                    continue  # (the writer refuses it, with the reason)

        try:
            self._store.run_sync(compute, write=False)
        except Exception:
            log.failure("work could not be done before the group commit; the writer does it")

    def _write_prepared(self, prepared: tuple[RequestMessage | Exception, KeyPairs | None],
                        key: tuple[str, str], wire: bytes, caller: Caller, now: int,
                        should_stop: Callable[[], str | None]) -> Deferred[bytes]:
        """:meth:`_write` of what :meth:`_prepare` made; its key pairs not taken are
        dropped once the request is answered (or has failed)."""
        decoded, key_pairs = prepared
        answering = self._write(key, wire, caller, now, should_stop, decoded=decoded,
                                key_pairs=key_pairs)
        if key_pairs is not None:
            answering.addBoth(_dropping, key_pairs)
        return answering

    def _respond_in(self, session: Session, wire: bytes, caller: Caller, now: int,
                    should_stop: Callable[[], str | None] | None,
                    decoded: RequestMessage | Exception | None = None,
                    key_pairs: KeyPairs | None = None) -> bytes:
        """The writer thread, in ``session``'s (group's) transaction: the request's answer,
        its changes and every audit record of it written there. A batch that fails
        unexpectedly leaves nothing but its General Failure record; if even that cannot be
        written, nothing (it raises after its savepoint rolled back). ``decoded``,
        ``key_pairs``: the request and its key pairs as :meth:`_prepare` left them (None:
        decoded here; key pairs made by the items that need them)."""
        correlation_id = new_correlation_id()
        try:
            if decoded is None:
                request = self._decode(wire)
            elif isinstance(decoded, Exception):
                raise decoded
            else:
                request = decoded
        except _Refused as refused:
            answer = self._refused_answer(caller, refused, correlation_id, now)
        except Exception:
            log.failure("request failed [correlation id {cid}]", cid=correlation_id)
            answer = self._failed_answer(caller, _answer_version(wire), correlation_id, now)
        else:
            try:
                events: list[AuditEvent] = []
                version = request.header.version
                try:
                    with RequestSavepoint(session) as request_savepoint:
                        # A lone item shares the request's savepoint (one, not two). The
                        # key pairs reach the items' contexts (OperationContext.key_pairs).
                        token = None if key_pairs is None else prepared_key_pairs.set(
                            key_pairs)
                        try:
                            items = self._execute(
                                session, request, caller, now, correlation_id, should_stop,
                                events.append, savepoint=request_savepoint.item_savepoint
                                if len(request.batch_items) == 1 else None)
                        finally:
                            if token is not None:
                                prepared_key_pairs.reset(token)
                            if key_pairs is not None:
                                key_pairs.clear()
                        encoded = _encoded(items, version)
                        if self._withholds(request, now, correlation_id, items, encoded):
                            raise _Withheld  # (the request's work rolls back)
                        if request_savepoint.wrote or len(events) != 1:
                            _append_all(session, events)
                            events = []
                except _Withheld:
                    items, events = self._withheld_items(request, items, events)
                    encoded = _encoded(items, version)
                    with savepoint(session):
                        _append_all(session, events)
                    events = []
                # A request that wrote nothing has one record to write: one INSERT, which
                # leaves nothing if it fails, needs no savepoint (none was ever sent).
                _append_all(session, events)
                return self._response(request, now, correlation_id, items, encoded)
            except RunElsewhere:
                return _PREPARE  # (rolled back whole: it runs again once prepared)
            except Exception as e:
                # The store gone from under the request (a PostgreSQL session ended, a
                # locked or full SQLite file) is the operator's to fix: one line, and the
                # client told so; anything else is a bug, logged with its traceback.
                unavailable = store_unavailable(e)
                if unavailable is None:
                    log.failure("request failed [correlation id {cid}]", cid=correlation_id)
                answer = self._failed_answer(caller, request.header.version, correlation_id,
                                          now, request, unavailable=unavailable is not None)
                if unavailable is not None:
                    # Recorded as a group that could not commit is (:meth:`_not_durable`):
                    # one line naming the caller, counted, not audited (its record would
                    # meet the same store; tried, it failed and the group logged it again).
                    self._unaudited(caller, correlation_id, e, unavailable, writer=True)
                    return answer.wire
        with savepoint(session):
            _append_all(session, answer.events)
        return answer.wire

    def _execute(self, session: Session, request: RequestMessage, caller: Caller, now: int,
                 correlation_id: str, should_stop: Callable[[], str | None] | None,
                 record: Callable[[AuditEvent], object] | None = None,
                 savepoint: Callable[[], Savepoint] | None = None,
                 ) -> list[ResponseBatchItem]:
        return execute(session, request, caller, now=now, keyring=self._keyring,
                       server_info=self._server_info, correlation_id=correlation_id,
                       should_stop=should_stop,
                       max_locate_results=self._limits.max_locate_results, record=record,
                       savepoint=savepoint)

    def _refused_answer(self, *args: Any) -> _Answer:
        self._metrics.item(None)
        return _refusal(*args)

    def _failed_answer(self, *args: Any, **kwargs: Any) -> _Answer:
        self._metrics.item(None)
        return _general_failure(*args, **kwargs)

    def _response(self, request: RequestMessage, now: int, correlation_id: str,
                  items: list[ResponseBatchItem], encoded: list[bytes] | None = None
                  ) -> bytes:
        """The answer of ``items`` (``encoded``: as :func:`_encoded` wrote them)."""
        self._metrics.answered(items)
        # Never larger than the maximum message size, for a direct client as for a
        # gateway: the link carries answers up to that size and no larger.
        version = request.header.version
        return response_wire(version, now, correlation_id,
                             _encoded(items, version) if encoded is None else encoded,
                             request.header.maximum_response_size,
                             server_limit=self._limits.max_message_size)

    def _withholds(self, request: RequestMessage, now: int, correlation_id: str,
                   items: list[ResponseBatchItem], encoded: list[bytes]) -> bool:
        """Whether the answer of ``items`` passes the limits (the client's Maximum Response
        Size, the server's maximum message size) with successes in it, which it would
        withhold (:func:`kcm.kernel.responses.withheld`)."""
        return any(item.result_status == ResultStatus.SUCCESS for item in items) and withheld(
            request.header.version, now, correlation_id, encoded,
            request.header.maximum_response_size, server_limit=self._limits.max_message_size)

    def _withheld_items(self, request: RequestMessage, items: list[ResponseBatchItem],
                        events: list[AuditEvent]
                        ) -> tuple[list[ResponseBatchItem], list[AuditEvent]]:
        """``items`` and their audit ``events`` once their request was rolled back because
        its answer was too large: every success answers Response Too Large (as
        :func:`kcm.kernel.responses.response_wire` would write it), and is audited so."""
        limit = self._limits.max_message_size
        asked = request.header.maximum_response_size
        if asked is not None and (limit is None or asked < limit):
            limit = asked
        message = too_large_message(limit, asked)
        version = request.header.version
        too_large = enum_label(ResultReason, ResultReason.RESPONSE_TOO_LARGE)
        failed_name = ResultStatus.OPERATION_FAILED.name
        paired = len(events) == len(items)
        events = list(events)
        for index, item in enumerate(items):
            if item.result_status != ResultStatus.SUCCESS:
                continue
            fail_item(item, version, ResultReason.RESPONSE_TOO_LARGE, message)
            if paired:
                client = (events[index].detail or {}).get("client_correlation")
                events[index] = replace(
                    events[index], result_status=failed_name, result_reason=too_large,
                    detail=None if client is None else {"client_correlation": client})
        return items, events

    def _decode(self, wire: bytes, *, read: PlainReader | None = None) -> RequestMessage:
        """The request, or :class:`_Refused`. Its header is judged before any batch item is
        decoded: an unsupported version or too many items costs no more than the header.
        A plain request (:mod:`kcm.kernel.plain_messages`: ``read``, the reader of the
        kind of request expected, by default that of Encrypt, Decrypt, Get and Create) is
        read without the message tree, into the same model. A request long enough to hold
        more fields than a request may is counted first, plain or not: the plain reader
        decodes a Cryptographic Parameters structure whole, however many fields it holds."""
        long = len(wire) > 8 * self._max_items
        if long:
            refusal = over_batch_limit(wire, self._limits.max_batch_items) or \
                over_item_limit(wire, self._max_items)
        else:
            refusal = None
        if refusal is None:
            plain = _plain_request(wire, self._limits, read or _read_plain)
            if plain is not None:
                return plain
            if not long:
                refusal = over_batch_limit(wire, self._limits.max_batch_items)
        if refusal is not None:  # at the cost of the headers: no item is decoded
            raise _Refused(*refusal)
        try:
            tree = decode(wire, max_size=self._limits.max_message_size)
            header, batch = decode_request_header(tree)
        except KmipError as e:
            raise _Refused(version_of(wire), e.reason, e.message) from None
        except TtlvError as e:
            raise _Refused(version_of(wire), ResultReason.INVALID_MESSAGE,
                           f"malformed TTLV: {e}") from None
        version = header.version
        answer_in = answer_version(version)
        client = client_correlation(header)
        if not is_supported(version):
            raise _Refused(answer_in, ResultReason.UNSUPPORTED_PROTOCOL_VERSION,
                           f"protocol version {version[0]}.{version[1]} is not supported",
                           client)
        maximum = self._limits.max_batch_items
        if len(batch) > maximum:
            raise _Refused(answer_in, ResultReason.INVALID_MESSAGE,
                           too_many_batch_items(len(batch), maximum), client)
        if header.batch_count != len(batch):
            raise _Refused(answer_in, ResultReason.INVALID_MESSAGE,
                           batch_count_mismatch(header, batch), client)
        try:
            # An item that cannot be read fails alone, when the batch runs (KMIP 1.4 §11.1).
            return decode_request_items(header, batch, per_item=True)
        except KmipError as e:
            raise _Refused(answer_in, e.reason, e.message, client) from None


#: A reader of plain requests (:mod:`kcm.kernel.plain_messages`), given the most batch
#: items to read: (version, Maximum Response Size, [(operation, batch item id, payload)]),
#: or NOT_PLAIN raised.
PlainReader = Callable[..., tuple[Version, int | None, list[tuple[int, Any, Any]]]]


def _read_plain(wire: bytes, *, max_items: int | None = None
                ) -> tuple[Version, int | None, list[tuple[int, Any, Any]]]:
    """:func:`read_request` in every version kcm-core reads plainly, no more than
    ``max_items`` items, Creates included (:func:`read_create_payload`)."""
    return read_request(wire, read_create_payload, READABLE_VERSIONS, max_items=max_items)


def _plain_request(wire: bytes, limits: CoreLimits,
                   read: PlainReader = _read_plain) -> RequestMessage | None:
    """``wire`` read by ``read`` (by default :func:`kcm.kernel.plain_messages.read_request`;
    kcm-core also reads Discover Versions and Get Attributes plainly: what the general
    decoder reads from them, the property tests hold), or None: not plain, or one the
    general decoder refuses (too long, too many items)."""
    try:
        version, maximum_response_size, items = read(wire, max_items=limits.max_batch_items)
    except Exception:
        NOT_PLAIN.__traceback__ = None  # (see kcm.kernel.plain_messages)
        return None
    if (len(items) > limits.max_batch_items or len(wire) > limits.max_message_size
            or not is_supported(version)):
        return None
    header = RequestHeader(protocol_version=ProtocolVersion.of(version),
                           maximum_response_size=maximum_response_size,
                           batch_count=len(items))
    return RequestMessage(header, [
        RequestBatchItem(operation=Operation(operation), unique_batch_item_id=batch_id,
                         request_payload=payload)
        for operation, batch_id, payload in items])


def _encoded(items: list[ResponseBatchItem], version: Version) -> list[bytes]:
    """``items`` encoded: successful answers of plain operations written straight to bytes
    (:func:`kcm.kernel.plain_messages.response_item`, the same bytes), the others by the
    general encoder."""
    if version in READABLE_VERSIONS:
        try:
            return [_plain_item(item, version) for item in items]
        except Exception:
            NOT_PLAIN.__traceback__ = None
    return encode_items(items, version)


def _plain_item(item: ResponseBatchItem, version: Version) -> bytes:
    payload = item.response_payload
    if (item.result_status != ResultStatus.SUCCESS or item.result_reason is not None
            or item.result_message is not None
            or item.asynchronous_correlation_value is not None
            or item.message_extension is not None or item.operation is None
            # Before KMIP 1.4 the general encoder leaves out the tag, which is no field
            # of that version (the answer's Data carries it: kcm.kernel.aead_tag).
            or (version < (1, 4)
                and getattr(payload, "authenticated_encryption_tag", None) is not None)):
        raise NOT_PLAIN
    return response_item(int(item.operation), item.unique_batch_item_id, payload, version)


@dataclass(frozen=True, slots=True)
class _Answer:
    """An answer, with the audit records that must be durable before it is sent."""

    wire: bytes
    events: list[AuditEvent]
    version: Version
    correlation_id: str


def _refusal(caller: Caller, refused: _Refused, correlation_id: str, now: int) -> _Answer:
    item = failed_item(None, None, refused.version, refused.reason, refused.message)
    detail = None if refused.client is None else with_client_correlation(None, refused.client)
    return _Answer(response_wire(refused.version, now, correlation_id,
                                 encode_items([item], refused.version)),
                   [audit_event(caller, item, correlation_id, [], detail)], refused.version,
                   correlation_id)


#: Who the audit record of a refusal names when the core accepts no identity of its sender
#: (who it claimed to be is in the record's ``detail``).
UNIDENTIFIED = "unidentified"

#: The group commit's share key of those records: one for them all, whoever sent them.
UNIDENTIFIED_SHARE = ("unidentified", "")

#: The most characters of a refusal's message, and of who its sender claimed to be, that
#: its audit record keeps (printable ASCII; a certificate's description is shorter).
_REFUSED_LENGTH = 200
_CLAIMED_LENGTH = 800


def refusal_event(refusal: Refusal, correlation_id: str,
                  coalesced: Mapping[str, JsonValue] | None = None) -> AuditEvent:
    """The audit record of ``refusal`` (operation ``?``): its principal (or
    :data:`UNIDENTIFIED`) and tenant, the gateway that relayed it, its source, its Result
    Reason; ``detail.refused`` the message the client is answered, and who the sender
    claimed to be: ``detail.certificate`` (a direct client's certificate described) or
    ``detail.claimed`` (the caller a gateway asserted). ``coalesced``: when the record
    stands for several refusals of one sender, ``refusal`` the last
    (:class:`~kcm.core.refusal_records.RefusalRecords`: ``count``, ``first``, ``last``)."""
    principal = refusal.principal
    detail: dict[str, JsonValue] = {"refused": printable(refusal.message, _REFUSED_LENGTH)}
    if refusal.claimed is not None:
        detail["certificate" if refusal.gateway is None else "claimed"] = printable(
            refusal.claimed, _CLAIMED_LENGTH)
    detail.update(coalesced or {})
    return AuditEvent(
        principal=UNIDENTIFIED if principal is None else principal.id,
        tenant=None if principal is None else principal.tenant,
        gateway=None if refusal.gateway is None else refusal.gateway.id,
        source=refusal.peer, operation="?", result_status=ResultStatus.OPERATION_FAILED.name,
        result_reason=enum_label(ResultReason, refusal.reason),
        correlation_id=correlation_id, detail=detail)


#: The line of refusals not audited because the key store is unavailable (a
#: :class:`ThrottledLine`: at most one per interval, however many refusals).
_NOT_AUDITED = ("refusal of a request from {peer} [correlation id {cid}] not audited: the "
                "key store is unavailable ({why}); {count} refusal record(s) not written "
                "in the last {interval} s")


def _unaudited_refusal(failure: Failure, event: AuditEvent, line: ThrottledLine) -> None:
    """After the audit record ``event`` of a refusal failed to commit: a store that is
    unavailable noted on ``line`` (logged at most once per interval: an outage during a
    flood is one line, not one per refusal), the traceback of anything else."""
    unavailable = store_unavailable(failure.value)
    if unavailable is not None:
        line.note(peer=event.source, cid=event.correlation_id, why=unavailable)
    else:
        log.failure("the audit record of refused request {cid} could not be written",
                    failure, cid=event.correlation_id)


#: The group commit's share key of the records of tenants' refusals over their rate.
THROTTLE_SHARE = ("request-rate", "")
#: Who those records name: the core's request rates.
THROTTLE_PRINCIPAL = "kcm-core/request-rate"

#: The line of those records not written because the key store is unavailable.
_THROTTLE_NOT_AUDITED = ("record of tenant {tenant}'s {refused} request(s) refused over its "
                         "rate [correlation id {cid}] not audited: the key store is "
                         "unavailable ({why}); {count} such record(s) not written in the "
                         "last {interval} s")


def throttle_event(tenant: str, correlation_id: str,
                   facts: Mapping[str, JsonValue]) -> AuditEvent:
    """The audit record of ``tenant``'s requests refused over its request rate in one
    interval (:data:`THROTTLE_OPERATION`; ``facts``: its ``detail``, see
    :mod:`kcm.core.throttle_records`)."""
    return AuditEvent(
        principal=THROTTLE_PRINCIPAL, tenant=tenant, source="request-rate",
        operation=THROTTLE_OPERATION, result_status=ResultStatus.OPERATION_FAILED.name,
        result_reason=enum_label(ResultReason, ResultReason.SERVER_LIMIT_EXCEEDED),
        correlation_id=correlation_id, detail=dict(facts))


def _unaudited_throttle(failure: Failure, event: AuditEvent, line: ThrottledLine) -> None:
    """After the record ``event`` of a tenant's refusals failed to commit: a store that is
    unavailable noted on ``line``, the traceback of anything else; never retried."""
    unavailable = store_unavailable(failure.value)
    if unavailable is not None:
        refused = (event.detail or {}).get("count")
        line.note(tenant=event.tenant, refused=refused, cid=event.correlation_id,
                  why=unavailable)
    else:
        log.failure("the audit record {cid} of tenant {tenant}'s refusals over its rate "
                    "could not be written", failure, cid=event.correlation_id,
                    tenant=event.tenant)


def _general_failure(caller: Caller, version: Version, correlation_id: str, now: int,
                     request: RequestMessage | None = None, *,
                     unavailable: bool = False,
                     expired: tuple[float, bool] | None = None) -> _Answer:
    """A General Failure answer for a request that failed unexpectedly (the caller logs
    why), and its audit record; ``unavailable``: because the key store was; ``expired``:
    because it still waited in a queue at its deadline (its seconds, and whether it had
    run: :func:`expired_message`)."""
    item = failed_item(None, None, version, ResultReason.GENERAL_FAILURE,
                       store_unavailable_message(correlation_id) if unavailable
                       else expired_message(*expired, correlation_id) if expired is not None
                       else internal_error(correlation_id))
    detail: dict[str, object] | None = None
    if request is not None:
        detail = {"operations": [operation_name(i.operation) for i in request.batch_items]}
        client = client_correlation(request.header)
        if client is not None:
            detail = with_client_correlation(detail, client)
    return _Answer(response_wire(version, now, correlation_id, encode_items([item], version)),
                   [audit_event(caller, item, correlation_id, [], detail)], version,
                   correlation_id)


def expired_message(deadline: float, ran: bool, correlation_id: str) -> str:
    """The Result Message of a request still waiting in a queue at its deadline of
    ``deadline`` seconds: to run, or (``ran``, read-only) for its audit records to be
    written, without which its answer is not sent."""
    waited = "its audit records were written" if ran else "it ran"
    return (f"request deadline of {deadline:g} s exceeded before {waited}; try again "
            f"(correlation id {correlation_id})")


def _append_all(session: Session, events: list[AuditEvent]) -> None:
    for event in events:
        append_audit(session, event)


def _dropping(result: object, key_pairs: KeyPairs) -> object:
    key_pairs.clear()
    return result


#: The operations whose RSA private-key work a tenant's worker computes before the group
#: commit: their request payload's type, and how (``prepare(ctx, payload, results)``).
_PRIVATE_KEY_OPERATIONS: dict[int, tuple[type, Callable[..., None]]] = {
    Operation.SIGN: (SignRequest, prepare_sign),
    Operation.DECRYPT: (DecryptRequest, prepare_decrypt),
    Operation.REGISTER: (RegisterRequest, prepare_register),  # (an RSA private key's check)
}
#: What the writer's first pass of a request answers when it met such work unprepared.
_PREPARE = object()
#: The key pairs of a request's first pass: none, and no private-key operation computed
#: (shared: it is only ever asked, on the writer thread, and keeps nothing).
_FIRST_PASS = KeyPairs(first_pass=True)
_CREATE_KEY_PAIR = int(Operation.CREATE_KEY_PAIR).to_bytes(4, "big")
_DERIVE_KEY = int(Operation.DERIVE_KEY).to_bytes(4, "big")


def _key_pair_lengths(request: RequestMessage) -> list[int] | None:
    """The modulus length of the key pair each Create Key Pair item of ``request`` would
    make, in order; an item the operation refuses before making one (templates, its
    algorithm and length: the operation's own rules) has none. None: the request has no
    Create Key Pair item."""
    lengths: list[int] | None = None
    for item in request.batch_items:
        if item.operation != Operation.CREATE_KEY_PAIR:
            continue
        if lengths is None:
            lengths = []
        payload = item.request_payload
        if not isinstance(payload, CreateKeyPairRequest) or item.critical_extension:
            continue
        try:
            *_, length = checked_key_pair_request(payload, request.header.version)
        except Exception:
            continue  # the operation refuses it before making a pair
        lengths.append(length)
    return lengths


class _NothingToUndo:
    """The savepoint of a batch item of a read-only request run without one (storeless,
    or in a lean group; kcm.kernel.batch's hook): its handler writes nothing, so there is
    nothing to keep or to undo."""

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass


def _wrote_nothing(session: Session, items: list[ResponseBatchItem]) -> list[ResponseBatchItem]:
    """``items``, run in a lean group's read in ``session``, if they left no change there; a
    change left (a write the operation made without :func:`~kcm.core.context.about_to_write`
    first) would be lost as the session closes, so the request runs in a session group."""
    if session.new or session.dirty or session.deleted:
        raise WritesHere("a change was left in a lean read: it runs in a session group")
    return items


#: What :meth:`CoreRequestHandler._read_lean` answers for a request that writes.
_WRITES = object()

#: The operations a lean group runs: the read-only ones but Locate (a batch with one runs
#: beside the writer), and Get and Encrypt, which mostly write nothing: one that would
#: write (a Fresh key's first Get, a use counted against Usage Limits, a state moved by a
#: date, a stream's part spent, an L4's or L3's use) stops before it does
#: (:class:`~kcm.core.context.WritesHere`) and runs in a session group instead.
LEAN: frozenset[int] = frozenset(READ_ONLY - {Operation.LOCATE}) | {
    Operation.GET, Operation.ENCRYPT}
#: Their Operation values, as the peek reads them.
_LEAN_VALUES = frozenset(int(op).to_bytes(4, "big") for op in LEAN)
_GET_VALUE = int(Operation.GET).to_bytes(4, "big")
#: Get's and Encrypt's: a request with one is read by the default plain reader.
_GET_ENCRYPT_VALUES = frozenset(int(op).to_bytes(4, "big")
                                for op in (Operation.GET, Operation.ENCRYPT))


def _reads_only(wire: bytes, found: list[bytes] | None = None) -> bool:
    """Whether every Operation item found in ``wire`` (:func:`_only_operations`) is one of
    :data:`LEAN`: such a request may run in a lean group (a look-alike in a byte string
    can only make it False, or cost it a hop)."""
    return _only_operations(wire, _LEAN_VALUES, found=found)


def _only_operations(wire: bytes, values: frozenset[bytes], most: int | None = None, *,
                     found: list[bytes] | None = None) -> bool:
    """Whether ``wire`` has an Operation item, at most ``most`` of them (None: any
    number), and every one found has one of ``values`` (four bytes each). Every real
    Operation item is found (:func:`kcm.ttlv.peek.operation_values`; ``found``: what it
    found, if read already); a byte string that looks like one can only make it False."""
    if found is None:
        found = operation_values(wire)
    return bool(found) and (most is None or len(found) <= most) and all(
        value in values for value in found)


_GET_ATTRIBUTES = int(Operation.GET_ATTRIBUTES)

#: The most keys :attr:`CoreRequestHandler._counting` remembers.
COUNTING_KEYS = 1024
#: A Unique Identifier item's tag and type (Text String), as encoded (a look-alike in a
#: byte string only costs a session group).
_UID_HEAD = bytes.fromhex("42009407")
#: A Batch Error Continuation Option of Continue, as encoded: a Get or an Encrypt in such a
#: batch takes a session group at once (a lean run stopped by a later item would have run
#: the items that failed before it twice: a wrapping mismatch counted twice). A look-alike
#: in a byte string only costs a session group.
_CONTINUE = bytes.fromhex("42000e0500000004") + int(
    BatchErrorContinuationOption.CONTINUE).to_bytes(4, "big")
#: A Correlation Value's (Byte String): a stream's later part, which spends it (a write),
#: takes a session group at once (a look-alike only costs a session group).
_CORRELATION_HEAD = bytes.fromhex("4200d608")

#: Requests longer than this that run in a group commit are decoded first on a store
#: worker, in their tenant's turn (:meth:`CoreRequestHandler._predecode`): a 1 MiB request
#: of small items takes tens of milliseconds to decode, which the shared writer thread
#: would otherwise spend while every tenant's writes wait.
PREDECODE_BYTES = 64 << 10

#: The longest request :func:`_storeless` picks, and the most batch items: one is decoded,
#: executed and encoded on the reactor (a Query of every function takes about 0.15 ms; a
#: longer batch of them runs in a lean group on the writer thread instead).
STORELESS_MAX_BYTES = 4096
STORELESS_MAX_ITEMS = 4
#: The Operation values of :data:`STORELESS`, as the peek reads them.
_STORELESS_VALUES = frozenset(int(op).to_bytes(4, "big") for op in STORELESS)


def _storeless(wire: bytes, found: list[bytes] | None = None) -> bool:
    """Whether ``wire``, at most :data:`STORELESS_MAX_BYTES` long, has only
    :data:`~kcm.core.operations.STORELESS` operations, at most
    :data:`STORELESS_MAX_ITEMS` of them (:func:`_only_operations`). Such a request is
    answered on the reactor (its work there bounded by both), and only its audit records
    wait for a group commit, a lean one."""
    return len(wire) <= STORELESS_MAX_BYTES and _only_operations(
        wire, _STORELESS_VALUES, STORELESS_MAX_ITEMS, found=found)


def _beside_writer(wire: bytes, found: list[bytes] | None = None) -> bool:
    """Whether ``wire``, peeked at, is a batch of read-only operations with a Locate in it,
    which a store worker runs in a read-only transaction beside the writer: a Locate may
    examine every object of its tenant. Every other request, read-only ones included (short:
    they read one object each, or none), runs in a group commit, with its audit records, in
    one hop and on the writer's warm connection. A request that cannot be peeked at goes
    there too (its refusal is an audit record to write).

    Most requests have no Locate: a scan for an Operation item whose value is Locate, as
    the peek reads one, answers them without the peek (on the reactor, for every request).
    ``found``: :func:`~kcm.ttlv.peek.operation_values` of ``wire``, if read already (at
    most the limit's worth: the peek then reads no more items than that)."""
    if _LOCATE not in (operation_values(wire) if found is None else found):
        return False
    try:
        operations = [item.operation for item in peek_request(wire).items]
    except Exception:
        return False
    return (Operation.LOCATE in operations
            and all(operation in READ_ONLY for operation in operations))


_LOCATE = int(Operation.LOCATE).to_bytes(4, "big")


#: The state sweeper's share key (:meth:`CoreRequestHandler.write_in_turn`): no tenant's,
#: no principal's ("server" is neither of :func:`share_of`'s kinds).
SWEEPER_SHARE = ("server", "state sweeper")


def share_of(caller: Caller) -> tuple[str, str]:
    """The fair scheduler's key for ``caller``'s requests: its tenant, or the principal
    itself when it has none (operators, gateways)."""
    principal = caller.principal
    if principal.tenant is not None:
        return ("tenant", principal.tenant)
    return ("principal", principal.id)


def _answer_version(wire: bytes) -> Version:
    """:func:`version_of`, for a request that already failed in an unexpected way."""
    try:
        return version_of(wire)
    except Exception:
        return (1, 0)
