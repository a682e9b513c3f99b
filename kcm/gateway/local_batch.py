"""Run the local batch items of one request at the gateway, synchronously, in memory.

A run is the kernel's batch (:func:`kcm.kernel.batch.run_batch`: order, Stop / Continue /
Undo, the ID Placeholder, failed items in the request's protocol version) with the L4 engine
as executor, over a KeySource: Create of an L4, Get of an L4, Encrypt / Decrypt with an L3
or an L4. Nothing runs that could need undoing, so a run has no savepoints, and running the
same decoded items again is safe: payloads are never changed in place.

The ID Placeholder (KMIP 1.4 §4, 2.1 §6) works within a run: an item without a Unique
Identifier uses the identifier the last Create (its new token) of the run set. A Get,
Encrypt or Decrypt sets none, as at the core (:mod:`kcm.core.l4_requests`).

An item refused because its caller may not use the service key it reached for (another
tenant's token or L3, another service's; refused here or by the core on a fetch) is listed
in :attr:`LocalRun.denied`, for the handler to log once it answers with that run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.logger import Logger
from twisted.python.failure import Failure

from kcm.gateway.link_client import ServiceKeyRefused
from kcm.identity import Principal
from kcm.kernel.batch import run_batch
from kcm.kernel.responses import operation_name
from kcm.kmip.enums import Operation, ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import IdPlaceholder, RequestBatchItem, ResponseBatchItem
from kcm.kmip.versions import Version
from kcm.l4.authorize import ServiceKeyUseDenied
from kcm.l4.engine import SETS_ID_PLACEHOLDER, KeySource, L4Engine
from kcm.l4.opened_keys import OpenedKeys

__all__ = ["Engine", "LocalRun", "LocalRunner", "gateway_engines", "l4_engine"]

log = Logger()

_CREATE = int(Operation.CREATE)


class Engine(Protocol):
    """What runs one local batch item: :class:`kcm.l4.engine.L4Engine`."""

    def execute(self, operation: int, principal: Principal, version: Version,
                payload: Any) -> Any: ...


#: Builds the engine for one run over that run's KeySource.
EngineFactory = Callable[[KeySource], Engine]


def l4_engine(keys: KeySource) -> Engine:
    """The L4 engine over ``keys``, with the operating system's random source."""
    return L4Engine(keys, os.urandom)


def gateway_engines(used: Callable[[str], None],
                    opened_keys: OpenedKeys | None) -> EngineFactory:
    """The gateway's engines: the operating system's random source, telling ``used`` of
    every encryption under an L3 (:class:`kcm.gateway.usage_report.UsageCounter`), keeping
    opened DEKs in ``opened_keys`` (None: none kept)."""

    def engine(keys: KeySource) -> Engine:
        return L4Engine(keys, os.urandom, used, opened_keys)

    return engine


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

    def run(self, items: Sequence[RequestBatchItem], *, principal: Principal,
            version: Version, keys: KeySource, continuation: int,
            correlation_id: str | None = None) -> LocalRun:
        """Run ``items`` in order (see the module docstring). An unexpected exception is a
        General Failure naming ``correlation_id`` (a fresh one if None)."""
        engine = self._engine_factory(keys)

        def execute(item: RequestBatchItem, placeholder: IdPlaceholder) -> Any:
            payload = item.request_payload
            operation = int(item.operation)
            if operation != _CREATE:
                uid = placeholder.resolve(payload.unique_identifier)  # type: ignore[union-attr]
                if uid is not payload.unique_identifier:  # type: ignore[union-attr]
                    payload = dataclasses.replace(payload, unique_identifier=uid)
            answer = engine.execute(operation, principal, version, payload)
            if operation in SETS_ID_PLACEHOLDER:
                placeholder.set(answer.unique_identifier)
            return answer

        cid = correlation_id or self._new_correlation_id()
        run = run_batch(items, execute, version=version, continuation=continuation,
                        correlation_id=cid)
        for item, error in run.unexpected:
            log.failure("local {op} failed [correlation id {cid}]", Failure(error),
                        op=operation_name(item.operation), cid=cid)
        denied = [(item, error) for item, error in run.errors
                  if isinstance(error, KmipError) and _is_denied_use(error)]
        return LocalRun(run.items, run.failed, denied)


def _is_denied_use(error: KmipError) -> bool:
    if isinstance(error, ServiceKeyUseDenied):
        return True
    return isinstance(error, ServiceKeyRefused) and error.reason == ResultReason.PERMISSION_DENIED
