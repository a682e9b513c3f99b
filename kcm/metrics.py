"""Metrics for kcm-core and kcm-gateway (docs/operations.md, "Metrics and health"); served
over HTTP by :mod:`kcm.metrics_http`.

What it promises:

* Each service has its own :class:`prometheus_client.CollectorRegistry` (never the global
  one), so tests and several services in one process do not collide.
* :class:`ReactorCounter` and :class:`ReactorHistogram` are labelled families for values
  changed on the reactor thread only (the gateway's hot path): a child is bound once
  (:meth:`ReactorCounter.labels`, kept by the caller or in a dict), and changing it is one
  attribute update, without the lock and label lookup of a ``prometheus_client`` metric.
  They are read when scraped, which also happens on the reactor thread (twisted.web), so a
  scrape never sees half an update. Values changed on other threads (the core's store
  threads) use ``prometheus_client``'s own thread-safe metrics.
* :class:`CallbackGauge` reads a value when scraped (link state, open connections, outbox
  lag): nothing is kept up to date between scrapes; :class:`CallbackCounter` reads a
  counter its part keeps itself (the L3 cache's hits, connections refused).
* :class:`Readiness` is what a readiness check says (``/readyz``); :func:`unready_while`
  makes a check not ready while something else stops the process serving (its own
  certificate expired).
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from twisted.internet.defer import Deferred

from kcm.kernel.responses import operation_name
from kcm.kmip.enums import Operation, ResultStatus
from kcm.tally import Tally

__all__ = ["LATENCY_BUCKETS", "CallbackCounter", "CallbackGauge", "Readiness", "ReactorCounter",
           "ReactorHistogram", "operation_label", "result_label", "unready_while"]




def operation_label(operation: int | None) -> str:
    """The ``operation`` label of a request's item: the Operation's name, or ``unknown``
    (a request refused whole, or an operation value KMIP does not define). A client picks
    the value, so the label never takes it as it came: a client could make series without
    bound."""
    return _OPERATION_LABELS.get(operation, "unknown")  # type: ignore[arg-type]


#: Each Operation KMIP defines, by value: its label (counted for every item on both planes).
_OPERATION_LABELS = {value: operation_name(value) for value in Operation._value2member_map_}


def result_label(status: int | None) -> str:
    """The ``result`` label of a request's item, on both planes: the Result Status's name in
    lower case (``success``, ``operation_failed``, ...), or ``unknown`` for none or a value
    KMIP does not define, so that the label's values stay the few the spec has."""
    try:
        return ResultStatus(status).name.lower()
    except ValueError:
        return "unknown"


#: Latency buckets (seconds): from the gateway's sub-millisecond L4 answers to the core's
#: slowest durable work.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ReactorCounter:
    """A labelled counter family changed on the reactor thread only (see the module
    docstring); register it in a registry to have it scraped."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Tally] = {}

    def labels(self, *values: str) -> Tally:
        """The child for these label values (made on first use); bind it once and keep it."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}")
            child = self._children[values] = Tally()
        return child

    def value(self, *values: str) -> float:
        """The current value of one child (0 when it was never made)."""
        child = self._children.get(values)
        return 0.0 if child is None else child.value

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self._children.items()):
            family.add_metric(values, child.value)
        yield family


class Latency:
    """One labelled child of a :class:`ReactorHistogram`."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds


class ReactorHistogram:
    """A labelled histogram family changed on the reactor thread only."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self._children: dict[tuple[str, ...], Latency] = {}

    def labels(self, *values: str) -> Latency:
        """The child for these label values (made on first use); bind it once and keep it."""
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}")
            child = self._children[values] = Latency(self.bounds)
        return child

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation,
                                       labels=self.labelnames)
        for values, child in list(self._children.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*self.bounds, float("inf")), child.counts, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound),
                                cumulative))
            family.add_metric(values, buckets, child.sum)
        yield family


class CallbackGauge:
    """A gauge family read when scraped: ``read()`` yields (label values, value) pairs."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 read: Callable[[], Iterable[tuple[Sequence[str], float]]]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._read = read

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, value in self._read():
            family.add_metric(list(values), float(value))
        yield family


class CallbackCounter(CallbackGauge):
    """A counter family read when scraped: ``read()`` yields (label values, count) pairs."""

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, value in self._read():
            family.add_metric(list(values), float(value))
        yield family


@dataclass(frozen=True, slots=True)
class Readiness:
    """A readiness check's answer: ``ready`` (200) or not (503), and what the body says."""

    ready: bool
    details: dict[str, Any] = field(default_factory=dict)

    def body(self) -> bytes:
        return json.dumps({"ready": self.ready, **self.details}, sort_keys=True).encode()


def unready_while(check: ReadinessCheck, why: Callable[[], str | None], key: str
                  ) -> ReadinessCheck:
    """``check``, but not ready while ``why()`` gives a reason (read after ``check``
    answers), which its answer then carries under ``key`` beside what ``check`` said."""
    def with_why(readiness: Readiness) -> Readiness:
        reason = why()
        if reason is None:
            return readiness
        return Readiness(False, {**readiness.details, key: reason})

    def checked() -> Readiness | Deferred[Readiness]:
        answer = check()
        if isinstance(answer, Deferred):
            return answer.addCallback(with_why)
        return with_why(answer)

    return checked


#: What ``/readyz`` answers while the process stops.
STOPPING = Readiness(False, {"reason": "stopping"})

#: A readiness check: a Readiness, or a Deferred firing with one (never blocking).
ReadinessCheck = Callable[[], "Readiness | Deferred[Readiness]"]


#: What ``/metrics`` answers: the exposition, or a Deferred firing with it (never blocking).
Exposition = Callable[[], "bytes | Deferred[bytes]"]
