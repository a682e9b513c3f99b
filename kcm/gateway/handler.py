"""kcm-gateway's answer to one KMIP request: run it here, forward it, or both.

The classifier decides per batch item (:mod:`kcm.gateway.classifier`); this module promises:

* ALL_REMOTE: the request's bytes go to the core unchanged and the core's answer comes back
  byte for byte. With the link down the answer is at once a KMIP General Failure saying the
  core is unreachable, never a hang.
* ALL_LOCAL: decoded, run with the L4 engine against the L3 cache and answered
  *synchronously* (bytes, not a Deferred) when the cache holds the L3s it needs; otherwise
  those are fetched first (ARCHITECTURE §4) and the answer follows.
* MIXED: split into runs of consecutive local or remote items, run in order; each remote run
  is forwarded as one sub-request under the client's header; the answers are merged into one
  response in the client's order, with its Unique Batch Item IDs. Stop and Continue are
  honoured across the runs; Undo cannot be (the core cannot roll back what the gateway
  answered, nor the other way round), so a mixed Undo batch is refused. ID Placeholders work
  within a run (and a local Get/Encrypt/Decrypt right after a local Create uses its token);
  a remote item cannot refer to a placeholder set by a local item.
* A request whose routing facts cannot be read is answered Invalid Message here. An
  unexpected exception is answered General Failure with a correlation id, which is logged;
  the connection keeps serving.
* A local item refused because its caller may not use the service key it names (another
  tenant's token or L3, another service's) is logged as a warning: the caller, the
  operation, the L3 and the token's TokenId — never the token, which carries the sealed DEK
  (docs/link-protocol.md §3 "Who may").

Nothing here touches the disk or a database, and only errors and refusals are logged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from itertools import groupby
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from kcm.core.batch import fail_item, operation_name, response_header
from kcm.core.request_handler import failure_message
from kcm.gateway.classifier import Classified, Route, classify
from kcm.gateway.l3_cache import L3Cache
from kcm.gateway.link_client import LinkBusy, LinkDown, LinkTimeout
from kcm.gateway.local_batch import LocalRun, LocalRunner
from kcm.gateway.subrequest import sub_request
from kcm.identity import Principal
from kcm.kernel.versions import answer_version
from kcm.kmip.enums import BatchErrorContinuationOption, Operation, ResultReason, ResultStatus
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import (
    RequestBatchItem,
    RequestHeader,
    ResponseBatchItem,
    ResponseMessage,
    decode_request,
    encode_response,
)
from kcm.kmip.tags import Tag
from kcm.kmip.versions import Version
from kcm.kmip_protocol import ConnectionInfo
from kcm.l4 import token
from kcm.l4.identifiers import L3_PREFIX, L4_PREFIX
from kcm.l4.marking import l4_target
from kcm.ttlv import Item, ItemType, TtlvError, decode, decode_item, encode
from kcm.ttlv.peek import PeekedBatchItem, PeekedRequest, peek_request

__all__ = ["GatewayRequestHandler", "Link"]

log = Logger()


_CONTINUE = BatchErrorContinuationOption.CONTINUE
_UNDO = BatchErrorContinuationOption.UNDO
_FAILED = int(ResultStatus.OPERATION_FAILED)


class Link(Protocol):
    """What the handler needs of the link to the core (kcm.gateway.link_client)."""

    def forward(self, wire: bytes, caller: Principal, source: str) -> Deferred[bytes]: ...


def new_correlation_id() -> str:
    """A fresh id naming one request in answers and in the log."""
    return os.urandom(8).hex()


class GatewayRequestHandler:
    """The gateway's :class:`kcm.kmip_protocol.RequestHandler`."""

    def __init__(self, *, runner: LocalRunner, cache: L3Cache, link: Link,
                 clock: Callable[[], float], max_message_size: int = 1 << 20) -> None:
        self._runner = runner
        self._cache = cache
        self._link = link
        self._clock = clock
        self._max_message_size = max_message_size

    # RequestHandler ---------------------------------------------------------------------
    def handle_request(self, wire: bytes, connection: ConnectionInfo) -> bytes | Deferred[bytes]:
        """Answer ``wire``; never raises, and a returned Deferred never fails."""
        try:
            answer = self._route(wire, connection)
        except Exception:
            return self._general_failure(_version_of(wire), Failure())
        if isinstance(answer, Deferred):
            answer.addErrback(lambda failure: self._general_failure(_version_of(wire), failure))
        return answer

    def failure_response(self, reason: int, message: str) -> bytes:
        """A one-item failed response for a request the handler never saw."""
        return encode(encode_response(failure_message((1, 0), reason, message,
                                                      int(self._clock()))))

    # Routing ----------------------------------------------------------------------------
    def _route(self, wire: bytes, connection: ConnectionInfo) -> bytes | Deferred[bytes]:
        try:
            classified = classify(wire)
        except TtlvError as e:
            return self._refuse(_version_of(wire), ResultReason.INVALID_MESSAGE,
                                f"malformed request: {e}")
        request = classified.request
        if classified.route is Route.ALL_REMOTE:
            return self._forward_whole(wire, request, connection)
        if classified.route is Route.ALL_LOCAL:
            return self._all_local(wire, connection)
        return Deferred.fromCoroutine(self._mixed(wire, classified, connection))

    def _forward_whole(self, wire: bytes, request: PeekedRequest,
                       connection: ConnectionInfo) -> Deferred[bytes]:
        d = self._forward(wire, connection)

        def link_failed(failure: Failure) -> bytes:
            version = answer_version(request.version)
            stop = _continuation_of(wire, request) != _CONTINUE
            items = _unreachable_items(request.items, failure, stop)
            return self._encode(version, items, None, new_correlation_id())

        return d.addErrback(link_failed)

    def _forward(self, wire: bytes, connection: ConnectionInfo) -> Deferred[bytes]:
        try:
            return self._link.forward(wire, connection.principal, connection.peer)
        except Exception:
            d: Deferred[bytes] = Deferred()
            d.errback(Failure())
            return d

    # All local: the hot path --------------------------------------------------------------
    def _all_local(self, wire: bytes, connection: ConnectionInfo) -> bytes | Deferred[bytes]:
        try:
            message = decode_request(decode(wire, max_size=self._max_message_size))
        except (TtlvError, KmipError) as e:
            reason = e.reason if isinstance(e, KmipError) else ResultReason.INVALID_MESSAGE
            text = e.message if isinstance(e, KmipError) else f"malformed TTLV: {e}"
            return self._refuse(_version_of(wire), reason, text)
        header = message.header
        principal = connection.principal
        keys = self._cache.key_source(principal)
        run = self._run(message.batch_items, header, principal, keys)
        if not keys.misses:
            return self._local_answer(header, principal, run)

        # The first use of an L3: fetch it, then run the request again from the start.
        def retry(_: None) -> bytes:
            # Payloads were resolved in place by the first run; decode afresh.
            again = decode_request(decode(wire, max_size=self._max_message_size))
            final = self._cache.key_source(principal, final=True)
            return self._local_answer(header, principal,
                                      self._run(again.batch_items, header, principal, final))

        return self._cache.ensure(keys.misses, principal).addCallback(retry)

    def _run(self, items: list[RequestBatchItem], header: RequestHeader, principal: Principal,
             keys: Any) -> LocalRun:
        return self._runner.run(items, principal=principal, version=header.version, keys=keys,
                                stop_on_failure=header.effective_error_continuation != _CONTINUE)

    def _local_answer(self, header: RequestHeader, principal: Principal,
                      run: LocalRun) -> bytes:
        if run.denied:
            _log_denials(run, principal)
        if run.failed and header.effective_error_continuation == _UNDO:
            # Local operations leave nothing behind, so undoing them is only a status.
            for item in run.items:
                if item.result_status == ResultStatus.SUCCESS:
                    item.result_status = ResultStatus.OPERATION_UNDONE
        version = header.version
        return self._encode(version, [item.to_item(version) for item in run.items],
                            header.maximum_response_size, new_correlation_id())

    # Mixed ------------------------------------------------------------------------------
    async def _mixed(self, wire: bytes, classified: Classified,
                     connection: ConnectionInfo) -> bytes:
        request = classified.request
        try:
            header = RequestHeader.from_item(decode_item(wire, request.header_start)[0])
        except (TtlvError, KmipError) as e:
            return self._refuse(_version_of(wire), ResultReason.INVALID_MESSAGE,
                                f"malformed request header: {e}")
        version = header.version
        continuation = header.effective_error_continuation
        if continuation == _UNDO:
            return self._encode(version, _refused_undo(request.items, version),
                                header.maximum_response_size, new_correlation_id())
        stop = continuation != _CONTINUE
        principal = connection.principal
        answered: list[Item] = []
        core_correlation: list[str] = []
        failed = False
        pairs = zip(request.items, classified.local, strict=True)
        for local, run in groupby(pairs, key=lambda pair: pair[1]):
            if failed and stop:
                break
            items = [peeked for peeked, _ in run]
            if local:
                run_items = await self._mixed_local(wire, items, header, principal)
            else:
                run_items = await self._mixed_remote(wire, request, items, connection, stop,
                                                     core_correlation)
            answered.extend(run_items)
            failed = failed or any(_status(item) == _FAILED for item in run_items)
        # One remote run: its correlation value names the request in the core's audit log.
        correlation_id = (core_correlation[0] if len(core_correlation) == 1
                          else new_correlation_id())
        return self._encode(version, answered, header.maximum_response_size, correlation_id)

    async def _mixed_local(self, wire: bytes, peeked: list[PeekedBatchItem],
                           header: RequestHeader, principal: Principal) -> list[Item]:
        version = header.version
        try:
            items = [RequestBatchItem.from_item(decode_item(wire, p.start)[0], version)
                     for p in peeked]
        except (TtlvError, KmipError) as e:
            reason = e.reason if isinstance(e, KmipError) else ResultReason.INVALID_MESSAGE
            text = e.message if isinstance(e, KmipError) else f"malformed batch item: {e}"
            return [_failed_item(peeked[0], reason, text, version)]
        keys = self._cache.key_source(principal)
        run = self._run(items, header, principal, keys)
        if keys.misses:
            await self._cache.ensure(keys.misses, principal)
            items = [RequestBatchItem.from_item(decode_item(wire, p.start)[0], version)
                     for p in peeked]
            run = self._run(items, header, principal,
                            self._cache.key_source(principal, final=True))
        if run.denied:
            _log_denials(run, principal)
        return [item.to_item(version) for item in run.items]

    async def _mixed_remote(self, wire: bytes, request: PeekedRequest,
                            peeked: list[PeekedBatchItem], connection: ConnectionInfo,
                            stop: bool, core_correlation: list[str]) -> list[Item]:
        version = answer_version(request.version)
        try:
            answer = await self._forward(sub_request(wire, request, peeked), connection)
        except Exception:
            return [item.to_item(version)
                    for item in _unreachable_items(peeked, Failure(), stop)]
        try:
            header, *items = decode(answer, max_size=self._max_message_size).value
        except (TtlvError, TypeError, ValueError):
            log.failure("unreadable answer from the core")
            return [_failed_item(peeked[0], ResultReason.GENERAL_FAILURE,
                                 "the core's answer could not be read", version)]
        for child in header.value:
            if child.tag == Tag.SERVER_CORRELATION_VALUE:
                core_correlation.append(child.value)
        return items

    # Answers ----------------------------------------------------------------------------
    def _encode(self, version: Version, items: list[Item] | list[ResponseBatchItem],
                maximum_response_size: int | None, correlation_id: str) -> bytes:
        header = response_header(version, int(self._clock()), correlation_id, len(items))
        batch = [item if isinstance(item, Item) else item.to_item(version) for item in items]
        wire = encode(Item(Tag.RESPONSE_MESSAGE, ItemType.STRUCTURE,
                           [header.to_item(version), *batch]))
        if maximum_response_size is not None and len(wire) > maximum_response_size:
            return self._too_large(version, batch, maximum_response_size, correlation_id)
        return wire

    def _too_large(self, version: Version, batch: list[Item], limit: int,
                   correlation_id: str) -> bytes:
        items = [ResponseBatchItem.from_item(item, version) for item in batch]
        for item in items:
            if item.result_status == ResultStatus.SUCCESS:
                fail_item(item, ResultReason.RESPONSE_TOO_LARGE,
                          f"the response exceeds the Maximum Response Size of {limit} bytes")
        header = response_header(version, int(self._clock()), correlation_id, len(items))
        return encode(encode_response(ResponseMessage(header, items)))

    def _refuse(self, version: Version, reason: int, message: str) -> bytes:
        return encode(encode_response(failure_message(version, reason, message,
                                                      int(self._clock()),
                                                      new_correlation_id())))

    def _general_failure(self, version: Version, failure: Failure) -> bytes:
        correlation_id = new_correlation_id()
        log.failure("request failed [correlation id {cid}]", failure, cid=correlation_id)
        return self._refuse(version, ResultReason.GENERAL_FAILURE,
                            f"internal error (correlation id {correlation_id})")


def _log_denials(run: LocalRun, principal: Principal) -> None:
    for item, error in run.denied:
        _log_denied_use(item, principal, error)


def _log_denied_use(item: RequestBatchItem, principal: Principal, error: KmipError) -> None:
    """Log the refused attempt of ``principal`` to use a service key with ``item``: who, which
    operation, and what it named (the L3 uid, the token's TokenId and L3, the service)."""
    payload = item.request_payload
    l3_uid = token_id = service = wrapping_key = None
    uid = getattr(payload, "unique_identifier", None)
    if isinstance(uid, str) and uid.startswith(L4_PREFIX):
        try:
            sealed = token.parse(uid)
        except token.TokenError:
            pass  # refused before the token was read; it is not named
        else:
            token_id, l3_uid = sealed.token_id, sealed.l3_uid
    elif isinstance(uid, str) and uid.startswith(L3_PREFIX):
        l3_uid = uid
    elif int(item.operation) == Operation.CREATE:
        try:
            target = l4_target(principal, getattr(payload, "attributes", None) or [])
        except KmipError:
            target = None
        if isinstance(target, str):
            l3_uid = target
        elif target is not None:
            service = "/".join(target)
    spec = getattr(payload, "key_wrapping_specification", None)
    info = getattr(spec, "encryption_key_information", None)
    kek = getattr(info, "unique_identifier", None)
    if isinstance(kek, str) and kek.startswith(L3_PREFIX):  # anything else may be a token
        wrapping_key = kek
    named = ", ".join(f"{label} {value}" for label, value in (
        ("L4", token_id), ("L3", l3_uid), ("service", service), ("wrapping key", wrapping_key))
        if value is not None) or "no key"
    log.warn("denied {operation} by {principal} ({named}): {reason}",
             operation=operation_name(item.operation), principal=principal.id, named=named,
             l3_uid=l3_uid, token_id=token_id, service=service, wrapping_key=wrapping_key,
             reason=error.message)


def _version_of(wire: bytes) -> Version:
    """The request's version if its header can be read and is spoken here, else 1.0."""
    try:
        return answer_version(peek_request(wire).version)
    except TtlvError:
        return (1, 0)


def _continuation_of(wire: bytes, request: PeekedRequest) -> int:
    try:
        header = RequestHeader.from_item(decode_item(wire, request.header_start)[0])
    except (TtlvError, KmipError):
        return BatchErrorContinuationOption.STOP
    return header.effective_error_continuation


def _unreachable_items(peeked: list[PeekedBatchItem], failure: Failure,
                       stop: bool) -> list[ResponseBatchItem]:
    """Failed items for a run the core could not be asked to execute."""
    error = failure.value
    if isinstance(error, LinkDown):
        message = "the core is unreachable; only L4 operations are served until it is back"
    elif isinstance(error, LinkBusy):
        message = "the gateway has too many requests in flight to the core; retry"
    elif isinstance(error, LinkTimeout):
        message = "the core did not answer in time; the operation may or may not have happened"
    else:
        log.failure("forwarding to the core failed", failure)
        message = "the request could not be forwarded to the core"
    items = []
    for p in peeked[:1] if stop else peeked:
        item = ResponseBatchItem(operation=p.operation,
                                 unique_batch_item_id=p.unique_batch_item_id,
                                 result_status=ResultStatus.OPERATION_FAILED,
                                 result_reason=ResultReason.GENERAL_FAILURE,
                                 result_message=message)
        items.append(item)
    return items


def _refused_undo(peeked: list[PeekedBatchItem], version: Version) -> list[ResponseBatchItem]:
    message = ("Batch Error Continuation Option Undo cannot be honoured for a batch that "
               "mixes L4 operations (answered by the gateway) with control operations "
               "(answered by the core); send them as separate requests, or use Stop or "
               "Continue")
    return [ResponseBatchItem(operation=p.operation, unique_batch_item_id=p.unique_batch_item_id,
                              result_status=ResultStatus.OPERATION_FAILED,
                              result_reason=ResultReason.OPERATION_NOT_SUPPORTED,
                              result_message=message)
            for p in peeked]


def _failed_item(peeked: PeekedBatchItem, reason: int, message: str, version: Version) -> Item:
    return ResponseBatchItem(operation=peeked.operation,
                             unique_batch_item_id=peeked.unique_batch_item_id,
                             result_status=ResultStatus.OPERATION_FAILED, result_reason=reason,
                             result_message=message).to_item(version)


def _status(item: Item) -> int | None:
    for child in item.value:  # type: ignore[union-attr]
        if child.tag == Tag.RESULT_STATUS:
            return child.value  # type: ignore[return-value]
    return None
