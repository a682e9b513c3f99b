"""Metrics and health of a kcm-gateway with workers: the supervisor's ``metrics_listen``
answers for all of them (docs/operations.md, "Metrics and health").

What it promises:

* Each worker serves its own ``/metrics`` and ``/readyz`` (:mod:`kcm.gateway.metrics`, as
  one gateway does) on a Unix socket in a directory only the supervisor's user may enter
  (made when the supervisor starts, removed when it stops): :meth:`WorkerMetrics.listen_for`
  is the ``metrics_listen`` a worker is started with.
* ``/metrics`` at the supervisor asks every running worker at once and answers with all
  their samples, each with a ``worker`` label (``"1"``, ``"2"``, ...), one HELP and TYPE per
  family (:func:`merged_exposition`); then ``kcm_gateway_worker_up`` (1 for a worker that
  answered, 0 for one that did not: its samples are missing from that scrape),
  ``kcm_gateway_workers`` (running), ``kcm_gateway_worker_restarts_total`` (per worker),
  ``kcm_gateway_handoffs_total`` (connections handed to each worker, ``by="cpu"`` when it
  is pinned to the CPU they arrived on, else ``by="count"``). The supervisor's own process
  metrics (``worker="supervisor"``) are samples of the workers' same families, as are the
  connections it closed because no worker could take them
  (``kcm_gateway_connections_refused_total{reason="no_worker", worker="supervisor"}``).
* ``/readyz`` at the supervisor is 200 while at least one worker answers ready, else 503;
  its body has each worker's answer (:func:`merged_readiness`). The supervisor hands new
  connections to the ready workers (:mod:`kcm.gateway.balance`), so one that is not ready
  (restarting, linking, stopping) takes none while another is: the gateway serves.
* Bounds: a worker has :data:`ANSWER_TIMEOUT` seconds to answer and at most
  :data:`MAX_ANSWER` bytes; past either it counts as not answering. Scrapes that arrive
  while the workers are being asked share that answer: each worker renders one exposition
  at a time, however hard the supervisor's listener is scraped.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    TimeoutError,
    maybeDeferred,
)
from twisted.internet.endpoints import UNIXClientEndpoint, quoteStringArgument
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseDone
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from kcm.metrics import Readiness
from kcm.throttled_line import ThrottledLine

__all__ = ["ANSWER_TIMEOUT", "MAX_ANSWER", "WorkerMetrics", "merged_exposition",
           "merged_readiness"]

log = Logger()

#: Seconds a worker has to answer a scrape or a readiness probe.
ANSWER_TIMEOUT = 2.0
#: The most bytes of a worker's answer read.
MAX_ANSWER = 8 * 1024 * 1024
#: The longest directory the workers' sockets go in (their paths must fit in 107 bytes).
_LONGEST_DIRECTORY = 80
#: The label each worker's samples get.
WORKER_LABEL = "worker"


def merged_exposition(answers: Mapping[str, str | None], own: Iterable[Metric] = (),
                      stopped: Iterable[str] = ()) -> bytes:
    """One Prometheus text exposition from the workers' (``answers``: worker label -> its
    exposition, or None when it did not answer; one that cannot be parsed counts as not
    answering; ``stopped``: the workers not running now, which were not asked, up 0),
    each sample labelled with its worker, and ``own`` families: merged into
    the workers' family of the same name and type (the process metrics), else after them,
    so that each family has one HELP and one TYPE. A family whose type differs from the
    first worker's that had it is left out for that worker (never mixed), as is an ``own``
    family whose type differs from the workers'."""
    parsed: dict[str, list[Metric] | None] = {}
    for worker, text in answers.items():
        try:
            parsed[worker] = None if text is None else list(
                text_string_to_metric_families(text))
        except ValueError:  # not Prometheus' text format: as if it had not answered
            parsed[worker] = None
    families: dict[str, Metric] = {}
    for worker, worker_families in parsed.items():
        for family in worker_families or ():
            merged = _family_for(families, family)
            if merged is not None:
                merged.samples.extend(
                    Sample(sample.name, {**sample.labels, WORKER_LABEL: worker}, sample.value,
                           sample.timestamp, sample.exemplar) for sample in family.samples)
    up = GaugeMetricFamily("kcm_gateway_worker_up",
                           "1 if the worker answered this scrape, else 0 (its samples are "
                           "missing)", labels=[WORKER_LABEL])
    down = set(stopped) - set(parsed)
    for worker in sorted({*parsed, *down}, key=_by_index):
        up.add_metric([worker], 0.0 if parsed.get(worker) is None else 1.0)
    running = GaugeMetricFamily("kcm_gateway_workers", "worker processes running")
    running.add_metric([], float(len(answers)))
    apart: list[Metric] = []
    for family in own:
        if family.name not in families:
            apart.append(family)
            continue
        merged = _family_for(families, family)
        if merged is not None:
            merged.samples.extend(family.samples)
    collected = [*families.values(), up, running, *apart]

    class _Once:
        def collect(self) -> Iterator[Metric]:
            return iter(collected)

    return generate_latest(_Once())  # type: ignore[arg-type]


def _family_for(families: dict[str, Metric], family: Metric) -> Metric | None:
    """The merged family ``family``'s samples go to (made on first use), or None when the
    one of its name has another type."""
    merged = families.get(family.name)
    if merged is None:
        merged = families[family.name] = Metric(family.name, family.documentation,
                                                family.type)
    return merged if merged.type == family.type else None


def _by_index(worker: str) -> tuple[int, str]:
    return (int(worker), "") if worker.isdigit() else (1 << 30, worker)


def merged_readiness(answers: Mapping[str, Readiness | None],
                     stopped: Iterable[str] = ()) -> Readiness:
    """Ready while at least one worker is (``answers``: worker label -> its readiness, or
    None when it did not answer; ``stopped``: the workers not running now)."""
    workers = {worker: ({"ready": False, "reason": "did not answer"} if answer is None
                        else {"ready": answer.ready, **answer.details})
               for worker, answer in answers.items()}
    for worker in set(stopped) - set(answers):
        workers[worker] = {"ready": False, "reason": "not running (being restarted)"}
    workers = dict(sorted(workers.items(), key=lambda item: _by_index(item[0])))
    ready = any(answer is not None and answer.ready for answer in answers.values())
    details: dict[str, Any] = {"workers": workers}
    if not answers:
        details["reason"] = "no worker is running"
    elif not ready:
        details["reason"] = "no worker is ready"
    return Readiness(ready, details)


class _Body(Protocol):
    """A response body, read up to :data:`MAX_ANSWER` bytes."""

    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_ANSWER:
            self.transport.stopProducing()  # type: ignore[attr-defined]
            if not self.done.called:
                self.done.errback(ValueError(f"answer over {MAX_ANSWER} bytes"))
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.done.called:
            return
        if reason is None or reason.check(ResponseDone):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


@implementer(IAgentEndpointFactory)
class _WorkerSockets:
    """The Unix socket of the worker a request's host names (``worker-I``)."""

    def __init__(self, reactor: Any, path_for: Callable[[str], str]) -> None:
        self.reactor = reactor
        self.path_for = path_for

    def endpointForURI(self, uri: Any) -> _Quiet:
        return _Quiet(UNIXClientEndpoint(self.reactor, self.path_for(uri.host.decode()),
                                         timeout=ANSWER_TIMEOUT))


@implementer(IStreamClientEndpoint)
class _Quiet:
    """``endpoint``, whose connections' factories do not log their start and stop: the
    HTTP client makes one a connection, and each scrape or probe would log two lines a
    worker."""

    def __init__(self, endpoint: UNIXClientEndpoint) -> None:
        self.endpoint = endpoint

    def connect(self, factory: Any) -> Deferred[Any]:
        factory.noisy = False
        return self.endpoint.connect(factory)


class WorkerMetrics(Service):
    """The supervisor's side (see the module docstring). ``running()`` names the workers
    running now (their indices), ``configured()`` every worker there should be (default:
    those running); time comes from ``reactor``."""

    name = "kcm-worker-metrics"

    def __init__(self, reactor: Any, running: Callable[[], Iterable[int]],
                 restarts: Callable[[], Mapping[int, int]] = dict,
                 handoffs: Callable[[], Mapping[tuple[int, str], int]] = dict,
                 configured: Callable[[], Iterable[int]] | None = None,
                 unplaced: Callable[[], int] = lambda: 0) -> None:
        """``restarts()``: each worker's restarts; ``handoffs()``: connections handed, by
        (worker, how: ``cpu`` or ``count``); ``unplaced()``: connections closed because no
        worker could take them."""
        self.reactor = reactor
        self.running_workers = running
        self.configured_workers = configured or running
        self.restarts = restarts
        self.handoffs = handoffs
        self.unplaced = unplaced
        self.directory: str | None = None
        #: Per path being asked: who waits for its answer.
        self._waiting: dict[str, list[Deferred[Any]]] = {}
        #: Per worker: its "did not answer" line, at most one each 10 s (probes every
        #: 0.1 s while a worker starts wrote one each).
        self._unanswered: dict[int, ThrottledLine] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self._agent = Agent.usingEndpointFactory(
            reactor, _WorkerSockets(reactor, lambda host: self._path(host.removeprefix(
                "worker-"))))

    def startService(self) -> None:
        # Only this user may enter it (mkdtemp: 0700): the workers' metrics are no one
        # else's to read. A Unix socket's path holds at most 107 bytes: under a long TMPDIR,
        # /tmp.
        directory = tempfile.mkdtemp(prefix="kcm-gateway-")
        if len(directory) > _LONGEST_DIRECTORY:
            os.rmdir(directory)
            directory = tempfile.mkdtemp(prefix="kcm-gateway-", dir="/tmp")
        self.directory = directory
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        for line in self._unanswered.values():
            line.flush()
        directory, self.directory = self.directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def listen_for(self, index: int) -> str:
        """The ``metrics_listen`` of worker ``index`` (a Unix socket, mode 0600)."""
        return f"unix:{quoteStringArgument(self._path(str(index)))}:mode=600"

    def _path(self, index: str) -> str:
        if self.directory is None:
            raise RuntimeError("the workers' metrics directory is not made yet")
        if not index.isdigit():
            raise ValueError(f"no worker {index!r}")
        return os.path.join(self.directory, f"worker-{index}.sock")

    # What the supervisor's listener answers --------------------------------------------
    def exposition(self) -> Deferred[bytes]:
        """``/metrics``: every running worker's, merged, and the supervisor's own."""
        return self._once("/metrics", lambda: self._ask_all("/metrics", lambda status, body: (
            body.decode() if status == 200 else None)).addCallback(
            lambda answers: merged_exposition(answers, self._own(), self._stopped())))

    def readiness(self) -> Deferred[Readiness]:
        """``/readyz``: every running worker's, merged, and those not running."""
        return self._once("/readyz", lambda: self._ask_all("/readyz", _readiness_of)
                          .addCallback(lambda answers: merged_readiness(
                              answers, self._stopped())))

    def _stopped(self) -> list[str]:
        """The workers there should be that are not running now (a crashed one waiting to
        be started again, its back-off up to 30 s)."""
        running = set(self.running_workers())
        return [str(index) for index in self.configured_workers() if index not in running]

    def _once(self, path: str, ask: Callable[[], Deferred[Any]]) -> Deferred[Any]:
        """What ``ask()`` answers; requests for ``path`` that come while it is being asked
        get the same answer (however often the listener is asked, each worker is asked
        for one path once at a time)."""
        d: Deferred[Any] = Deferred()
        waiting = self._waiting.get(path)
        if waiting is not None:
            waiting.append(d)
            return d
        self._waiting[path] = [d]

        def answered(result: Any) -> None:
            for each in self._waiting.pop(path):
                each.callback(result)

        maybeDeferred(ask).addBoth(answered)
        return d

    def _own(self) -> list[Metric]:
        restarts = CounterMetricFamily(
            "kcm_gateway_worker_restarts", "times the worker was started again (it exited, "
            "or a SIGHUP restarted it)", labels=[WORKER_LABEL])
        for index, count in sorted(self.restarts().items()):
            restarts.add_metric([str(index)], float(count))
        handoffs = CounterMetricFamily(
            "kcm_gateway_handoffs", "connections the supervisor handed to the worker, by "
            "whether it went by CPU (the worker is pinned to the one they arrived on) or by "
            "count", labels=[WORKER_LABEL, "by"])
        for (index, by), count in sorted(self.handoffs().items()):
            handoffs.add_metric([str(index), by], float(count))
        refused = CounterMetricFamily(
            "kcm_gateway_connections_refused", "Connections refused or cut before being "
            "served, by reason (the supervisor: no_worker, none could take it)",
            labels=["reason", WORKER_LABEL])
        refused.add_metric(["no_worker", "supervisor"], float(self.unplaced()))
        own: list[Metric] = [restarts, handoffs, refused]
        for family in self.registry.collect():
            family.samples = [Sample(s.name, {**s.labels, WORKER_LABEL: "supervisor"},
                                     s.value, s.timestamp, s.exemplar)
                              for s in family.samples]
            own.append(family)
        return own

    def _ask_all(self, path: str, read: Callable[[int, bytes], Any]
                 ) -> Deferred[dict[str, Any]]:
        workers = sorted(self.running_workers())
        asked = [self._ask(index, path, read) for index in workers]
        return DeferredList(asked, consumeErrors=True).addCallback(
            lambda results: {str(index): value if ok else None
                             for index, (ok, value) in zip(workers, results, strict=True)})

    def _ask(self, index: int, path: str, read: Callable[[int, bytes], Any]) -> Deferred[Any]:
        asked = self._agent.request(b"GET", f"http://worker-{index}{path}".encode())

        def body(response: Any) -> Deferred[Any]:
            done: Deferred[bytes] = Deferred()
            response.deliverBody(_Body(done))
            return done.addCallback(lambda data: read(response.code, data))

        def failed(failure: Failure) -> None:
            line = self._unanswered.get(index)
            if line is None:
                line = self._unanswered[index] = ThrottledLine(
                    self.reactor, _UNANSWERED, level=LogLevel.info, logger=log)
            line.note(index=index, path=path, why=_why(failure))
            return None

        asked.addCallback(body)
        asked.addTimeout(ANSWER_TIMEOUT, self.reactor)
        return asked.addErrback(failed)


def _why(failure: Failure) -> str:
    """Why a worker did not answer, in short ASCII: its time passed (a hung worker; its
    request, cancelled, failed with Twisted's list of failures, which the line quoted as
    ``[<twisted.python.failure.Failure ...CancelledError: >]``), or the first cause."""
    reasons = getattr(failure.value, "reasons", None)  # (ResponseNeverReceived, ...Failed)
    causes = [reason for reason in reasons if isinstance(reason, Failure)] if isinstance(
        reasons, list) else []
    if failure.check(TimeoutError, CancelledError) or any(
            cause.check(TimeoutError, CancelledError) for cause in causes):
        return f"no answer within {ANSWER_TIMEOUT:g} s"
    first = causes[0] if causes else failure
    why = first.getErrorMessage() or type(first.value).__name__
    return "".join(c if " " <= c <= "~" else "?" for c in why.splitlines()[0])[:200]


_UNANSWERED = ("kcm-gateway worker {index} did not answer {path}: {why} ({count} time(s) in "
               "the last {interval} s)")


def _readiness_of(status: int, body: bytes) -> Readiness | None:
    """A worker's ``/readyz`` answer as a Readiness (None: not one)."""
    if status not in (200, 503):
        return None
    try:
        details = json.loads(body)
    except ValueError:
        return None
    if not isinstance(details, dict):
        return None
    details.pop("ready", None)
    return Readiness(status == 200, details)
