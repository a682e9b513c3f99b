"""Run the local batch items of one request at the gateway, synchronously, in memory.

A run takes decoded batch items (Create of an L4, Get of an L4, Encrypt / Decrypt with an L3
or an L4), executes each with the L4 engine against a KeySource, and returns one Response
Batch Item per item that ran, in order, with the item's operation and Unique Batch Item ID.
A KmipError becomes a failed item with its Result Reason; any other exception a General
Failure naming a correlation id, which is logged. After a failed item a Stop run ends there.

The ID Placeholder (KMIP 1.4 §4, 2.1 §6) works within a run: an item without a Unique
Identifier uses the identifier of the previous item of the run (the new token of a Create,
the key of a Get, Encrypt or Decrypt).

An item refused because its caller may not use the service key it reached for (another
tenant's token or L3, another service's; refused here or by the core on a fetch) is listed
in :attr:`LocalRun.denied`, for the handler to log once it answers with that run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.logger import Logger

from kcm.core.batch import fail_item, operation_name
from kcm.gateway.link_client import ServiceKeyRefused
from kcm.identity import Principal
from kcm.kmip.enums import Operation, ResultReason, ResultStatus
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import IdPlaceholder, RequestBatchItem, ResponseBatchItem
from kcm.kmip.versions import Version
from kcm.l4.authorize import ServiceKeyUseDenied
from kcm.l4.engine import KeySource, L4Engine
from kcm.ttlv.types import Item

__all__ = ["Engine", "LocalRun", "LocalRunner", "l4_engine"]

log = Logger()



class Engine(Protocol):
    """What runs one local batch item: :class:`kcm.l4.engine.L4Engine`."""

    def execute(self, operation: int, principal: Principal, version: Version,
                payload: Any) -> Any: ...


#: Builds the engine for one run over that run's KeySource.
EngineFactory = Callable[[KeySource], Engine]


def l4_engine(keys: KeySource) -> Engine:
    """The L4 engine over ``keys``, with the operating system's random source."""
    return L4Engine(keys, os.urandom)


@dataclass(slots=True)
class LocalRun:
    """What a run produced: the answered items, whether one of them failed, and the items
    refused because the caller may not use the service key they name (with the refusal)."""

    items: list[ResponseBatchItem]
    failed: bool
    denied: list[tuple[RequestBatchItem, KmipError]] = field(default_factory=list)


class LocalRunner:
    """Executes local batch items with the L4 engine (one engine per run, over the run's
    KeySource)."""

    def __init__(self, *, new_correlation_id: Callable[[], str],
                 engine_factory: EngineFactory = l4_engine) -> None:
        self._engine_factory = engine_factory
        self._new_correlation_id = new_correlation_id

    def run(self, items: list[RequestBatchItem], *, principal: Principal, version: Version,
            keys: KeySource, stop_on_failure: bool) -> LocalRun:
        """Run ``items`` in order (see the module docstring)."""
        engine = self._engine_factory(keys)
        placeholder = IdPlaceholder()
        answered: list[ResponseBatchItem] = []
        denied: list[tuple[RequestBatchItem, KmipError]] = []
        failed = False
        for item in items:
            if failed and stop_on_failure:
                break
            response = ResponseBatchItem(operation=item.operation,
                                         unique_batch_item_id=item.unique_batch_item_id,
                                         result_status=ResultStatus.SUCCESS)
            try:
                response.response_payload = _one(engine, item, principal, version,
                                                 placeholder)
            except KmipError as e:
                fail_item(response, e.reason, e.message)
                failed = True
                if _is_denied_use(e):
                    denied.append((item, e))
            except Exception:
                correlation_id = self._new_correlation_id()
                log.failure("local {op} failed [correlation id {cid}]",
                            op=operation_name(item.operation), cid=correlation_id)
                fail_item(response, ResultReason.GENERAL_FAILURE,
                          f"internal error (correlation id {correlation_id})")
                failed = True
            answered.append(response)
        return LocalRun(answered, failed, denied)


def _one(engine: Engine, item: RequestBatchItem, principal: Principal, version: Version,
         placeholder: IdPlaceholder) -> Any:
    payload = item.request_payload
    if isinstance(payload, Item):
        raise KmipError(ResultReason.OPERATION_NOT_SUPPORTED,
                        f"operation {operation_name(item.operation)} is not supported")
    operation = int(item.operation)
    if operation != Operation.CREATE:
        payload.unique_identifier = placeholder.resolve(payload.unique_identifier)
    answer = engine.execute(operation, principal, version, payload)
    uid = getattr(answer, "unique_identifier", None)
    if isinstance(uid, str):
        placeholder.set(uid)
    return answer


def _is_denied_use(error: KmipError) -> bool:
    if isinstance(error, ServiceKeyUseDenied):
        return True
    return isinstance(error, ServiceKeyRefused) and error.reason == ResultReason.PERMISSION_DENIED


