"""kcm-gateway's answer to one KMIP request: run it here, forward it, or both.

Plain L4 requests are answered by :mod:`kcm.gateway.fast_path` when one is given, which
declines everything it is not sure of; the rest comes here. The classifier decides per
batch item (:mod:`kcm.gateway.classifier`); this module promises:

* ALL_REMOTE: the request's bytes go to the core unchanged and the core's answer comes back
  byte for byte. With the link down the answer is at once a KMIP General Failure saying the
  core is unreachable, never a hang.
* ALL_LOCAL: decoded, run with the L4 engine against the L3 cache and answered
  *synchronously* (bytes, not a Deferred) when the cache holds the L3s it needs; otherwise
  every L3 the request names that the cache lacks is fetched at once (ARCHITECTURE §4), and
  the request runs once more (decoded payloads are never changed, so that is safe).
* MIXED: split into runs of consecutive local or remote items, run in order; each remote run
  is forwarded as one sub-request under the client's header; the answers are merged into one
  response in the client's order, with its Unique Batch Item IDs. Stop and Continue are
  honoured across the runs. Undo could not be (the core cannot roll back what the gateway
  answered, nor the other way round), so a mixed request whose Batch Error Continuation
  Option is Undo is forwarded whole, as ALL_REMOTE: the core runs its L4 items as the
  gateway does, and rolls the whole batch back when one item fails. The ID Placeholder
  is the core's: a request in which a remote item may refer to a placeholder set before
  its run is forwarded whole (:mod:`kcm.gateway.classifier`); a local item refers only to a
  placeholder set by a local item.
* No answer the gateway builds is longer than its maximum message size (the client's
  Maximum Response Size when smaller): successful items answer Response Too Large, as at
  the core. A forwarded answer comes back as the core bounded it, or, when it does not fit
  the link, as Response Too Large items (the core may have carried them out). A mixed
  request's answer is bounded once, as the core bounds its whole answer, and never held
  beyond that bound meanwhile: each remote run goes with what the merged answer has left as
  its Maximum Response Size; once the core withholds a run's successes for it, every
  success of the request answers Response Too Large, as at the core (which still runs each
  item: so does the gateway).
* The gateway and the core answer the same request the same way. A request whose routing
  facts cannot be read is forwarded whole, so the core says what is wrong with it; a local
  or mixed request is decoded whole first, with the core's decoder, and one the core would
  refuse (a Batch Count that is not the number of items, a stray field in its header, ...)
  is refused in the core's words before anything runs; a batch item that cannot be read (a
  field of the wrong type, unknown or missing, in it or its payload) fails alone, under the
  batch's continuation option, as at the core. A request of more than ``max_batch_items`` items
  (``[gateway.limits]``) is not run here, whatever its items: known from its header and
  ``max_batch_items + 1`` item heads (:func:`kcm.kernel.batch_limit.over_batch_limit`),
  before any item is read, it is forwarded whole, and the core judges it by its own limit
  (the same 64 by default: refused, in the same words, and audited) and answers any L4
  item in it as the gateway would. If the link cannot carry such a request, it is
  answered General Failure whole, not item by item. An unexpected exception is
  answered General Failure with a correlation id, which is logged; the connection keeps
  serving.
* A client that disconnects while its request awaits the core has that call cancelled
  (:meth:`GatewayRequestHandler.connection_lost`): the core stops it at its next batch-item
  boundary, and nothing more of a mixed request is run or forwarded.
* A local item refused because its caller may not use the service key it names (another
  tenant's token or L3, another service's) is logged as a warning: the caller, the
  operation, the L3 and the token's TokenId — never the token, which carries the sealed DEK
  (docs/link-protocol.md §3 "Who may"); coalesced per tenant and reason, the first of an
  interval at once and the rest counted (:mod:`kcm.gateway.denied_uses`), so that a refused
  item costs what a missing key's does.

Every answer is timed and its items counted (:mod:`kcm.gateway.metrics`; on the fast path
with children bound in advance). A request relayed whole is timed when its answer comes
back and counted by ``later`` (kcm-gateway: when the reactor's turn is over), after the
answer has been written: reading the items of the core's answer is no part of its way to
the client. Nothing here touches the disk or a database, and only errors and refusals are
logged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import groupby
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from kcm.gateway.classifier import Classified, Route, classify, may_run_here
from kcm.gateway.denied_uses import DeniedUses
from kcm.gateway.fast_path import FastPath
from kcm.gateway.l3_cache import FetchErrors, L3Cache, Need
from kcm.gateway.l3_needs import l3_needs, wrapping_needs
from kcm.gateway.link_client import (
    AnswerTooLarge,
    GatewayStopping,
    LinkBusy,
    LinkDown,
    LinkLost,
    LinkTimeout,
    RequestTooLarge,
)
from kcm.gateway.local_batch import LocalRun, LocalRunner
from kcm.gateway.metrics import GatewayMetrics
from kcm.gateway.subrequest import sub_request
from kcm.identity import Principal
from kcm.kernel.batch_limit import over_batch_limit
from kcm.kernel.correlation import new_correlation_id
from kcm.kernel.item_limit import item_limit, over_item_limit
from kcm.kernel.responses import (
    CLIENT_GONE,
    encode_items,
    fail_item,
    failed_item,
    failure_response,
    internal_error,
    response_wire,
    too_large_message,
)
from kcm.kernel.versions import answer_version, version_of
from kcm.kmip.enums import BatchErrorContinuationOption, ResultReason, ResultStatus
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import (
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    ResponseBatchItem,
    decode_request,
)
from kcm.kmip.versions import Version
from kcm.kmip_protocol import DEFAULT_MAX_BATCH_ITEMS, ConnectionInfo
from kcm.ttlv import Item, TtlvError, decode, decode_item
from kcm.ttlv.peek import PeekedBatchItem, PeekedRequest, peek_request, peek_response

__all__ = ["GatewayRequestHandler", "Link"]

log = Logger()

_CONTINUE = BatchErrorContinuationOption.CONTINUE
_UNDO = BatchErrorContinuationOption.UNDO
_FAILED = int(ResultStatus.OPERATION_FAILED)

#: How many keys one item names at most (its own L3 and a wrapping L3). Every L3 a local
#: run's items name is fetched before its second run; should a run still miss one not
#: fetched yet, it fetches it and runs again (each round fetches something new), up to
#: this many rounds per item, after which its misses are final.
_KEYS_PER_ITEM = 2


class Link(Protocol):
    """What the handler needs of the link to the core (kcm.gateway.link_client)."""

    def forward(self, wire: bytes, caller: Principal, source: str) -> Deferred[bytes]: ...


class GatewayRequestHandler:
    """The gateway's :class:`kcm.kmip_protocol.RequestHandler`."""

    def __init__(self, *, runner: LocalRunner, cache: L3Cache, link: Link,
                 clock: Callable[[], float], max_message_size: int = 1 << 20,
                 max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS,
                 fast_path: FastPath | None = None,
                 metrics: GatewayMetrics | None = None,
                 later: Callable[[Callable[[], object]], None] | None = None,
                 denied_uses: DeniedUses | None = None) -> None:
        """``clock``: the wall clock, read for the answers' time stamps (a date).
        ``denied_uses``: logs refused uses of service keys, coalesced (by default on
        ``clock``, with no timer)."""
        self._runner = runner
        self._metrics = metrics = metrics or GatewayMetrics()
        self._timer = metrics.timer
        self._local_duration = metrics.local_duration
        self._cache = cache
        self._link = link
        self._clock = clock
        self._max_message_size = max_message_size
        self._fast_path = fast_path
        self._max_batch_items = max_batch_items
        #: The most TTLV items of a request run here (:mod:`kcm.kernel.item_limit`).
        self._max_items = item_limit(max_batch_items)
        #: The forwarded calls and the service-key fetches awaiting the core, by client
        #: connection (reactor thread): cancelled if the client leaves first.
        self._forwarding: dict[int, set[Deferred[Any]]] = {}
        #: Runs a call once the answers at hand are written (None: at once).
        self._later = later
        #: Relayed answers, their durations and their calls, forgotten and counted by the
        #: next :meth:`_count_relayed`.
        self._uncounted: list[tuple[bytes, float, int, set[Deferred[Any]] | None,
                                    Deferred[bytes]]] = []
        #: Refused uses of service keys: one line at once per tenant and reason, the rest
        #: counted (a refused item must cost what a missing key's does).
        self._denied_uses = denied_uses or DeniedUses(clock)

    # RequestHandler ---------------------------------------------------------------------

    def flush_denied(self) -> None:
        """Log the counts of refused uses of service keys not logged yet (the gateway
        stops)."""
        self._denied_uses.flush()
    def handle_request(self, wire: bytes, connection: ConnectionInfo) -> bytes | Deferred[bytes]:
        """Answer ``wire``; never raises, and a returned Deferred never fails."""
        started = self._timer()
        if not may_run_here(wire, self._max_batch_items) or (
                len(wire) > 8 * self._max_items
                and over_item_limit(wire, self._max_items) is not None):
            # Forwarded whole, unpeeked (most forwarded requests): nothing here could
            # answer any of it, the fast path included; or it holds more fields than any
            # request needs, which the core refuses and audits, and nothing here decodes.
            # Timed, counted and never failing.
            return self._relay(wire, None, connection, started)
        routed = _Routed()
        try:
            fast_path = self._fast_path
            if fast_path is not None:
                answer = fast_path.answer(wire, connection.principal)  # counts its items
                if answer is not None:
                    self._local_duration.observe(self._timer() - started)
                    return answer
            answer = self._route(wire, connection, routed, started)
        except Exception:
            answer = self._general_failure(version_of(wire), Failure())
        if isinstance(answer, Deferred):
            if routed.relayed:  # timed, counted and never failing already
                return answer
            answer.addErrback(self._unexpected, wire)  # the version is read only if needed
            return answer.addCallback(self._count, routed, started)
        return self._count(answer, routed, started)

    def _count(self, answer: bytes, routed: _Routed, started: float) -> bytes:
        """Count ``answer``'s items and time (the general path's), and return it."""
        metrics = self._metrics
        local = routed.local
        duration = (metrics.local_duration if local is True else
                    metrics.forwarded_duration if local is False else metrics.mixed_duration)
        duration.observe(self._timer() - started)
        metrics.answered(answer, local)
        return answer

    def failure_response(self, reason: int, message: str) -> bytes:
        """A one-item failed response for a request the handler never saw."""
        return failure_response((1, 0), reason, message, int(self._clock()))

    def connection_lost(self, connection: ConnectionInfo) -> None:
        """``connection`` closed while a request of it was being answered: its calls to the
        core are cancelled (the core stops them at their next batch-item boundary and
        audits the items left as cancelled), and so are the service-key fetches it awaits
        (those no other request awaits leave their tenant's queue: kcm.gateway.l3_cache);
        what is left of the request is not run."""
        calls = self._forwarding.pop(connection.connection_id, None)
        for call in list(calls or ()):
            call.cancel()

    # Routing ----------------------------------------------------------------------------
    def _route(self, wire: bytes, connection: ConnectionInfo, routed: _Routed,
               started: float) -> bytes | Deferred[bytes]:
        """The general path's answer to a request that :func:`may_run_here`; ``routed``
        learns where it was answered. One of more items than the gateway's limit is not
        run here: it goes whole to the core, judged at the cost of its header, before
        anything else is read (the core bounds it by its own limit and answers L4 items as
        the gateway would)."""
        if over_batch_limit(wire, self._max_batch_items) is not None:
            routed.local = False
            routed.relayed = True
            return self._relay(wire, None, connection, started)
        try:
            classified = classify(wire)
        except TtlvError:
            # Not even the routing facts can be read: nothing here may run, and what is
            # wrong with the request is the core's to say, in the core's words.
            routed.local = False
            return self._forward_unread(wire, connection)
        if classified.route is Route.ALL_REMOTE or (
                # Undo across the two planes is the core's alone to honour.
                classified.route is Route.MIXED
                and _continuation_of(wire, classified.request) == _UNDO) or (
                self._cache.overflowed and self._names_overflowed(classified, connection)):
            routed.local = False
            routed.relayed = True
            return self._relay(wire, classified.request, connection, started)
        if classified.route is Route.ALL_LOCAL:
            return self._all_local(wire, classified, connection, routed)
        routed.local = classified.local
        return Deferred.fromCoroutine(self._mixed(wire, classified, connection, routed))

    def _relay(self, wire: bytes, request: PeekedRequest | None, connection: ConnectionInfo,
               started: float) -> Deferred[bytes]:
        """A request forwarded whole: the core's answer relayed as it came, or the items'
        failures when the link could not carry it; timed and counted, and never failing.
        One callback pair on the link's Deferred does it all (the hot path of a forward).
        ``request``: its peek, or None when it was not needed to route it (it is then
        peeked only if the link fails)."""
        try:
            call = self._link.forward(wire, connection.principal, connection.peer)
        except Exception:
            call = fail(Failure())
        calls = None
        if not call.called:  # awaiting the core: cancelled if the client leaves first
            calls = self._forwarding.get(connection.connection_id)
            if calls is None:
                calls = self._forwarding[connection.connection_id] = set()
            calls.add(call)
        return call.addCallbacks(
            self._relayed, self._relay_failed,
            callbackArgs=(connection.connection_id, calls, call, started),
            errbackArgs=(wire, request, connection.connection_id, calls, call, started))

    def _relayed(self, answer: bytes, connection_id: int, calls: set[Deferred[bytes]] | None,
                 call: Deferred[bytes], started: float) -> bytes:
        elapsed = self._timer() - started
        if self._later is None:
            if calls is not None:
                self._answered_call(connection_id, calls, call)
            self._count_relayed_one(answer, elapsed)
            return answer
        # The answer is written first; the call is forgotten when it is counted (cancelling
        # a call answered meanwhile does nothing).
        uncounted = self._uncounted
        if not uncounted:
            self._later(self._count_relayed)
        uncounted.append((answer, elapsed, connection_id, calls, call))
        return answer

    def _count_relayed(self) -> None:
        """Forget, time and count the relayed answers written since the last call."""
        uncounted, self._uncounted = self._uncounted, []
        for answer, elapsed, connection_id, calls, call in uncounted:
            if calls is not None:
                self._answered_call(connection_id, calls, call)
            self._count_relayed_one(answer, elapsed)

    def _count_relayed_one(self, answer: bytes, elapsed: float) -> None:
        metrics = self._metrics
        metrics.forwarded_duration.observe(elapsed)
        metrics.answered(answer, False)

    def _relay_failed(self, failure: Failure, wire: bytes, request: PeekedRequest | None,
                      connection_id: int, calls: set[Deferred[bytes]] | None,
                      call: Deferred[bytes], started: float) -> bytes:
        if calls is not None:
            self._answered_call(connection_id, calls, call)
        try:
            if request is None and over_batch_limit(wire, self._max_batch_items) is None:
                request = peek_request(wire)
        except TtlvError:  # its routing facts cannot be read
            request = None
        if request is None:  # unreadable, or too many items to answer one by one: whole
            answer = self._unreachable(wire, failure)
        else:
            try:
                version = answer_version(request.version)
                stop = _continuation_of(wire, request) != _CONTINUE
                items = _unreachable_items(request.items, failure, stop, version)
                answer = self._answer(version, encode_items(items, version), None,
                                      new_correlation_id())
            except Exception:
                answer = self._general_failure(version_of(wire), Failure())
        metrics = self._metrics
        metrics.forwarded_duration.observe(self._timer() - started)
        metrics.answered(answer, False)
        return answer

    def _fetched_for(self, connection_id: int, needs: set[Need], principal: Principal
                     ) -> Deferred[dict[Need, KmipError]]:
        """The cache's fetch of ``needs`` for a request of connection ``connection_id``,
        cancelled if the client leaves first (its fetches then count as failed)."""
        fetching = self._cache.ensure(needs, principal)
        if fetching.called:
            return fetching
        calls = self._forwarding.get(connection_id)
        if calls is None:
            calls = self._forwarding[connection_id] = set()
        calls.add(fetching)

        def settled(result: Any) -> Any:
            self._answered_call(connection_id, calls, fetching)
            return result

        return fetching.addBoth(settled)

    def _answered_call(self, connection_id: int, calls: set[Deferred[Any]],
                       call: Deferred[Any]) -> None:
        """``call`` (of connection ``connection_id``) is no longer awaited."""
        calls.discard(call)
        if not calls and self._forwarding.get(connection_id) is calls:
            del self._forwarding[connection_id]

    def _forward_unread(self, wire: bytes, connection: ConnectionInfo) -> Deferred[bytes]:
        return self._forward(wire, connection).addErrback(
            lambda failure: self._unreachable(wire, failure))

    def _unreachable(self, wire: bytes, failure: Failure) -> bytes:
        """The answer to a request that cannot be peeked, when the link could not carry
        it: General Failure, saying why."""
        return self._refuse(version_of(wire), ResultReason.GENERAL_FAILURE,
                            _unreachable_message(failure))

    def _forward(self, wire: bytes, connection: ConnectionInfo) -> Deferred[bytes]:
        try:
            call = self._link.forward(wire, connection.principal, connection.peer)
        except Exception:
            d: Deferred[bytes] = Deferred()
            d.errback(Failure())
            return d
        if not call.called:  # awaiting the core: cancelled if the client leaves first
            connection_id = connection.connection_id
            calls = self._forwarding.setdefault(connection_id, set())
            calls.add(call)

            def answered(result: object) -> object:
                self._answered_call(connection_id, calls, call)
                return result

            call.addBoth(answered)
        return call

    # All local: the hot path --------------------------------------------------------------
    def _all_local(self, wire: bytes, classified: Classified, connection: ConnectionInfo,
                   routed: _Routed) -> bytes | Deferred[bytes]:
        message = self._decoded(wire)
        if isinstance(message, bytes):
            return message
        header = message.header
        principal = connection.principal
        correlation_id = new_correlation_id()
        run = self._run_local(message.batch_items, header, principal, correlation_id,
                              lambda: self._lacking(classified, message.batch_items,
                                                    range(len(classified.local)), principal),
                              to_core=lambda: self._names_overflowed(classified, connection),
                              connection_id=connection.connection_id)
        if isinstance(run, LocalRun):
            return self._local_answer(header, principal, run, correlation_id)
        return run.addCallback(
            lambda done: self._local_answer(header, principal, done, correlation_id)
            if done is not None else self._forward_after_all(wire, connection, routed))

    def _forward_after_all(self, wire: bytes, connection: ConnectionInfo,
                           routed: _Routed) -> Deferred[bytes]:
        """A request routed here that turns out the core's once its L3s are fetched (one
        came without all its tombstones, or gave them up meanwhile), forwarded whole before
        anything of it ran here."""
        routed.local = False
        return self._forward_unread(wire, connection)

    def _names_overflowed(self, classified: Classified, connection: ConnectionInfo) -> bool:
        """Whether a local item uses an L3 whose tombstones the cache gave up, and which the
        caller may use: then the core, which holds them all, answers the whole request."""
        items = classified.request.items
        attributes = classified.create_attributes
        needs = l3_needs(((items[i], attributes[i])
                          for i, local in enumerate(classified.local) if local),
                         connection.principal)
        return self._cache.names_overflowed(needs, connection.principal)

    def _lacking(self, classified: Classified, decoded: Sequence[RequestBatchItem],
                 indexes: Sequence[int] | range, principal: Principal) -> set[Need]:
        """The L3s the local items at ``indexes`` (``decoded``: the request's items, decoded)
        need, wrapping keys included, and the cache does not hold."""
        items = classified.request.items
        attributes = classified.create_attributes
        needs = l3_needs(((items[i], attributes[i]) for i in indexes), principal)
        needs |= wrapping_needs(decoded[i] for i in indexes)
        return {need for need in needs if self._cache.lacks(need, principal)}

    def _run_local(self, items: list[RequestBatchItem], header: RequestHeader,
                   principal: Principal, correlation_id: str,
                   peek_needs: Callable[[], set[Need]], fetched: FetchErrors | None = None,
                   rounds: int = 0, to_core: Callable[[], bool] | None = None,
                   connection_id: int = -1) -> LocalRun | Deferred[LocalRun | None]:
        """Run ``items`` with the keys the cache holds: the answer when nothing was missing
        (the hot path: nothing else is done). On the first miss, every L3 the items name
        that the cache lacks (``peek_needs``, wrapping keys included) is fetched with the
        missed ones, and the items (never changed by a run) run once more; a key missed that
        was not foreseen costs another round, up to ``_KEYS_PER_ITEM`` rounds an item, after
        which misses are final. ``fetched``: what this request fetched already, and why
        each failed fetch failed. ``to_core``: asked after each fetch, whether the request
        is now the core's (an L3 it uses has tombstones this gateway does not hold): the
        answer is then None, and nothing more runs here. ``connection_id``: the client's
        connection, whose leaving cancels the fetches."""
        fetched = fetched or {}
        keys = self._cache.key_source(principal, fetched=fetched,
                                      final=rounds >= _KEYS_PER_ITEM * len(items))
        run = self._runner.run(items, principal=principal, version=header.version, keys=keys,
                               continuation=header.effective_error_continuation,
                               correlation_id=correlation_id)
        unseen = set(keys.misses) - fetched.keys()
        if not unseen:
            return run
        if not fetched:
            unseen |= peek_needs()
        return self._fetched_for(connection_id, unseen, principal).addCallback(
            lambda errors: None if to_core is not None and to_core() else self._run_local(
                items, header, principal, correlation_id, peek_needs,
                {**fetched, **_fetched(unseen, errors)}, rounds + 1, to_core, connection_id))

    def _local_answer(self, header: RequestHeader, principal: Principal, run: LocalRun,
                      correlation_id: str) -> bytes:
        if run.denied:
            self._denied_uses.note(run.denied, principal)
        version = header.version
        return self._answer(version, encode_items(run.items, version),
                            header.maximum_response_size, correlation_id)

    # Mixed ------------------------------------------------------------------------------
    async def _mixed(self, wire: bytes, classified: Classified, connection: ConnectionInfo,
                     routed: _Routed) -> bytes:
        request = classified.request
        # Decoded whole before anything runs, as the core decodes it: a request the core
        # would refuse is refused here in the same words, not half run.
        message = self._decoded(wire)
        if isinstance(message, bytes):
            return message
        header = message.header
        header_item = decode_item(wire, request.header_start)[0]
        version = header.version
        correlation_id = new_correlation_id()
        # (Never Undo: such a request is relayed whole, :meth:`_route`.)
        stop = header.effective_error_continuation != _CONTINUE
        principal = connection.principal
        local_indexes = [i for i, local in enumerate(classified.local) if local]
        needs = self._lacking(classified, message.batch_items, local_indexes, principal)
        fetched = (_fetched(needs, await self._fetched_for(connection.connection_id, needs,
                                                           principal)) if needs else {})
        if needs and self._names_overflowed(classified, connection):
            return await self._forward_after_all(wire, connection, routed)
        answered: list[bytes] = []
        core_correlation: list[str] = []
        failed = False
        # What the merged answer may hold (the limit response_wire applies), what its items
        # hold so far, and those the core withheld (answered Response Too Large) because
        # the budget it was given ran out: the whole answer is then over the limit.
        limit = _answer_limit(header.maximum_response_size, self._max_message_size)
        held = 0
        withheld: set[int] = set()
        indexed = enumerate(zip(request.items, classified.local, strict=True))
        for local, run in groupby(indexed, key=lambda pair: pair[1][1]):
            if failed and stop:
                break
            indexes, items = zip(*((i, peeked) for i, (peeked, _) in run), strict=True)
            if local:
                run_items, run_failed = await self._mixed_local(
                    [message.batch_items[i] for i in indexes], header, principal,
                    correlation_id, fetched, connection.connection_id)
            else:
                # What the answer has left: the core answers the run within it (its
                # header is as long as the merged answer's), so no more than that is
                # ever held here. Once it withheld successes, the answer is over: the
                # next runs are given no room, and the core still runs every item, as it
                # would the whole request, answering each success Response Too Large.
                run_items, run_failed, run_withheld = await self._mixed_remote(
                    wire, header_item, list(items), connection, stop, version,
                    core_correlation, 1 if withheld else max(limit - held, 1))
                withheld.update(len(answered) + i for i in run_withheld)
            answered.extend(run_items)
            held += sum(map(len, run_items))
            failed = failed or run_failed
        # One remote run: its correlation value names the request in the core's audit log.
        if len(core_correlation) == 1:
            correlation_id = core_correlation[0]
        if withheld:
            answered = _over_limit(answered, withheld, version, too_large_message(
                limit, header.maximum_response_size))
        return self._answer(version, answered, header.maximum_response_size, correlation_id)

    async def _mixed_local(self, items: list[RequestBatchItem], header: RequestHeader,
                           principal: Principal, correlation_id: str,
                           fetched: FetchErrors, connection_id: int
                           ) -> tuple[list[bytes], bool]:
        version = header.version
        # The needs of every local item were fetched before the first run: nothing to add.
        run = self._run_local(items, header, principal, correlation_id, set, fetched,
                              connection_id=connection_id)
        if isinstance(run, Deferred):
            run = await run
        if run.denied:
            self._denied_uses.note(run.denied, principal)
        return encode_items(run.items, version), run.failed

    async def _mixed_remote(self, wire: bytes, header_item: Item,
                            peeked: list[PeekedBatchItem], connection: ConnectionInfo,
                            stop: bool, version: Version, core_correlation: list[str],
                            maximum_response_size: int,
                            ) -> tuple[list[bytes], bool, list[int]]:
        """A remote run's answer from the core within ``maximum_response_size``: its items,
        whether one failed, and which the core withheld for that size (successes it
        answered Response Too Large: they count as successes for Stop)."""
        try:
            answer = await self._forward(
                sub_request(wire, header_item, peeked, maximum_response_size), connection)
        except CancelledError:
            raise  # the client left: nothing more of its request runs
        except Exception:
            return encode_items(_unreachable_items(peeked, Failure(), stop, version),
                                version), True, []
        try:
            relayed = peek_response(answer)
        except TtlvError:
            log.failure("unreadable answer from the core")
            first = peeked[0]
            return encode_items([failed_item(first.operation, first.unique_batch_item_id,
                                             version, ResultReason.GENERAL_FAILURE,
                                             "the core's answer could not be read")],
                                version), True, []
        if relayed.server_correlation_value is not None:
            core_correlation.append(relayed.server_correlation_value)
        items = [answer[item.start:item.end] for item in relayed.items]
        if not _item_by_item(relayed.items, len(peeked), stop):
            # The core refused the run whole (its store unavailable, a limit of its own):
            # each item is answered, with the core's reason, as when the link fails.
            return encode_items(_refused_items(peeked, items, relayed.items, stop, version),
                                version), True, []
        failed = [index for index, item in enumerate(relayed.items)
                  if item.result_status == _FAILED]
        # Only failed items are read (few and small): Response Too Large is the core's
        # answer to a success that did not fit, and no other failure's.
        withheld = [index for index in failed
                    if _reason_of(items[index], version) == ResultReason.RESPONSE_TOO_LARGE]
        return items, len(failed) > len(withheld), withheld

    def _decoded(self, wire: bytes) -> RequestMessage | bytes:
        """The request, decoded as the core decodes it, or the answer refusing it (the
        core's words: :meth:`kcm.core.request_handler.CoreRequestHandler.respond`). A batch
        item that cannot be read is no refusal: it fails alone when its run runs, as at
        the core."""
        try:
            return decode_request(decode(wire, max_size=self._max_message_size),
                                  max_batch_items=self._max_batch_items, per_item=True)
        except KmipError as e:
            return self._refuse(version_of(wire), e.reason, e.message)
        except TtlvError as e:
            return self._refuse(version_of(wire), ResultReason.INVALID_MESSAGE,
                                f"malformed TTLV: {e}")

    # Answers ----------------------------------------------------------------------------
    def _answer(self, version: Version, items: list[bytes], maximum_response_size: int | None,
                correlation_id: str) -> bytes:
        return response_wire(version, int(self._clock()), correlation_id, items,
                             maximum_response_size, server_limit=self._max_message_size)

    def _refuse(self, version: Version, reason: int, message: str) -> bytes:
        return failure_response(version, reason, message, int(self._clock()),
                                new_correlation_id())

    def _unexpected(self, failure: Failure, wire: bytes) -> bytes:
        if failure.check(CancelledError):  # the client left: nobody reads this
            return self._refuse(version_of(wire), ResultReason.GENERAL_FAILURE, CLIENT_GONE)
        return self._general_failure(version_of(wire), failure)

    def _general_failure(self, version: Version, failure: Failure) -> bytes:
        correlation_id = new_correlation_id()
        log.failure("request failed [correlation id {cid}]", failure, cid=correlation_id)
        return failure_response(version, ResultReason.GENERAL_FAILURE,
                                internal_error(correlation_id), int(self._clock()),
                                correlation_id)


class _Routed:
    """Where the general path answered one request, for its metrics: ``local`` is True,
    False, or per item for a mixed one."""

    __slots__ = ("local", "relayed")

    def __init__(self) -> None:
        self.local: bool | Sequence[bool] = True
        #: Forwarded whole: the answer's Deferred times and counts it itself.
        self.relayed = False


def _answer_limit(maximum_response_size: int | None, max_message_size: int) -> int:
    """The most an answer may hold: the client's Maximum Response Size when smaller than the
    server's maximum message size (as :func:`kcm.kernel.responses.response_wire` has it)."""
    if maximum_response_size is None:
        return max_message_size
    return min(maximum_response_size, max_message_size)


def _reason_of(raw: bytes, version: Version) -> int | None:
    """The Result Reason of the encoded response batch item ``raw`` (None: it has none,
    or it cannot be read)."""
    try:
        reason = ResponseBatchItem.from_item(decode_item(raw)[0], version).result_reason
    except (TtlvError, KmipError):
        return None
    return None if reason is None else int(reason)


def _over_limit(items: list[bytes], withheld: set[int], version: Version,
                message: str) -> list[bytes]:
    """A mixed answer some of whose remote successes the core withheld: over the limit, as
    the core's own answer to the whole request would have been, so every success answers
    Response Too Large with ``message`` (the words of the merged answer's limit), and so do
    the withheld ones (the core named the size it was given); failures stay as they are."""
    shrunk = []
    for index, raw in enumerate(items):
        item = ResponseBatchItem.from_item(decode_item(raw)[0], version)
        if index in withheld or item.result_status == ResultStatus.SUCCESS:
            fail_item(item, version, ResultReason.RESPONSE_TOO_LARGE, message)
            raw = encode_items([item], version)[0]
        shrunk.append(raw)
    return shrunk


def _fetched(needs: set[Need], errors: dict[Need, KmipError]) -> dict[Need, KmipError | None]:
    """What a request fetched: every need in ``needs``, with why its fetch failed (None:
    it succeeded)."""
    return {need: errors.get(need) for need in needs}


def _continuation_of(wire: bytes, request: PeekedRequest) -> int:
    try:
        header = RequestHeader.from_item(decode_item(wire, request.header_start)[0])
    except (TtlvError, KmipError):
        return BatchErrorContinuationOption.STOP
    return header.effective_error_continuation


def _unreachable_items(peeked: list[PeekedBatchItem], failure: Failure, stop: bool,
                       version: Version) -> list[ResponseBatchItem]:
    """Failed items for a run whose answer did not come back from the core: the first
    (``stop``) or every item, General Failure saying why; every item Response Too Large
    when the core answered beyond what the link takes (it ran them all)."""
    error = failure.value
    if isinstance(error, AnswerTooLarge):
        return [failed_item(p.operation, p.unique_batch_item_id, version,
                            ResultReason.RESPONSE_TOO_LARGE,
                            f"{error}; the operation may have been carried out")
                for p in peeked]
    message = _unreachable_message(failure)
    return [failed_item(p.operation, p.unique_batch_item_id, version,
                        ResultReason.GENERAL_FAILURE, message)
            for p in (peeked[:1] if stop else peeked)]


def _item_by_item(answered: list, sent: int, stop: bool) -> bool:
    """Whether the core answered a run of ``sent`` items item by item: each answer names
    its operation, and there is one for every item (fewer only under Stop, which ends at
    the first failure)."""
    if not answered or len(answered) > sent or (len(answered) < sent and not stop):
        return False
    return all(item.operation is not None for item in answered)


def _refused_items(peeked: list[PeekedBatchItem], raw: list[bytes], answered: list,
                   stop: bool, version: Version) -> list[ResponseBatchItem]:
    """Failed items for a run the core refused whole: the first (``stop``) or every item,
    with the reason and message of the core's refusal (General Failure if it gave none)."""
    reason, message = ResultReason.GENERAL_FAILURE, "the core's answer did not match the request"
    for item, wire in zip(answered, raw, strict=True):
        if item.operation is None:
            try:
                refusal = ResponseBatchItem.from_item(decode_item(wire)[0], version)
            except (TtlvError, KmipError):
                break
            if refusal.result_reason is not None:
                reason = int(refusal.result_reason)
                message = refusal.result_message or message
            break
    return [failed_item(p.operation, p.unique_batch_item_id, version, reason, message)
            for p in (peeked[:1] if stop else peeked)]


def _unreachable_message(failure: Failure) -> str:
    """What a client is told when the core could not be asked (``failure`` says why)."""
    error = failure.value
    if isinstance(error, CancelledError):
        return CLIENT_GONE
    if isinstance(error, RequestTooLarge):
        return "the request is too large to forward to the core"
    if isinstance(error, LinkLost):  # (sent: it may have run, as at a timeout)
        return ("the link to the core was lost before its answer; the operation may or may "
                "not have happened")
    # (never sent: the same request may pass later. Each ends "; try again", the form by
    # which a client, the `kcm` command's exit status 75 among them, knows it may retry.)
    if isinstance(error, GatewayStopping):
        return "the gateway is stopping; try again"
    if isinstance(error, LinkDown):
        return ("the core is unreachable (only L4 operations are served until it is back); "
                "try again")
    if isinstance(error, LinkBusy):
        return "the gateway has too many requests in flight to the core; try again"
    if isinstance(error, LinkTimeout):
        return "the core did not answer in time; the operation may or may not have happened"
    log.failure("forwarding to the core failed", failure)
    return "the request could not be forwarded to the core"
