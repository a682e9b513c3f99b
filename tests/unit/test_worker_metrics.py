"""The supervisor's metrics and health for its workers (kcm.gateway.worker_metrics): the
merge of their expositions and readiness, and the asking, over real Unix sockets on the
real reactor, of workers served by :func:`kcm.metrics_http.metrics_site` (as a worker does)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol

from kcm.gateway.worker_metrics import WorkerMetrics, merged_exposition, merged_readiness
from kcm.metrics import ReactorCounter, ReactorHistogram, Readiness
from kcm.metrics_http import metrics_site


def samples(exposition: bytes) -> dict[tuple[str, tuple], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(exposition.decode())
            for sample in family.samples}


def worker_registry(items: float) -> CollectorRegistry:
    """What a worker exposes: a labelled counter and a histogram."""
    registry = CollectorRegistry()
    counter = ReactorCounter("kcm_gateway_items", "Items.", ("operation",))
    counter.labels("Encrypt").inc(items)
    histogram = ReactorHistogram("kcm_gateway_request_duration_seconds", "Time.", ("path",))
    histogram.labels("local").observe(0.0002)
    registry.register(counter)
    registry.register(histogram)
    return registry


def test_every_worker_s_samples_are_kept_under_its_label_one_family_each() -> None:
    merged = merged_exposition({"1": generate_latest(worker_registry(3)).decode(),
                                "2": generate_latest(worker_registry(5)).decode()})
    text = merged.decode()
    assert text.count("# TYPE kcm_gateway_items_total counter") == 1
    assert text.count("# TYPE kcm_gateway_request_duration_seconds histogram") == 1
    values = samples(merged)
    assert values["kcm_gateway_items_total", (("operation", "Encrypt"), ("worker", "1"))] == 3
    assert values["kcm_gateway_items_total", (("operation", "Encrypt"), ("worker", "2"))] == 5
    assert values["kcm_gateway_request_duration_seconds_count",
                  (("path", "local"), ("worker", "2"))] == 1
    assert values["kcm_gateway_worker_up", (("worker", "1"),)] == 1
    assert values["kcm_gateway_worker_up", (("worker", "2"),)] == 1
    assert values["kcm_gateway_workers", ()] == 2


def test_a_worker_that_did_not_answer_is_down_and_has_no_samples() -> None:
    values = samples(merged_exposition({"1": generate_latest(worker_registry(3)).decode(),
                                        "2": None}))
    assert values["kcm_gateway_worker_up", (("worker", "2"),)] == 0
    assert not [key for key in values
                if ("worker", "2") in key[1] and key[0] != "kcm_gateway_worker_up"]


def test_a_family_of_another_type_is_not_mixed_in() -> None:
    counter = "# HELP kcm_x Things.\n# TYPE kcm_x counter\nkcm_x_total 1.0\n"
    gauge = "# HELP kcm_x Things.\n# TYPE kcm_x gauge\nkcm_x 7.0\n"
    values = samples(merged_exposition({"1": counter, "2": gauge}))
    assert values["kcm_x_total", (("worker", "1"),)] == 1
    assert not [key for key in values if key[0] == "kcm_x"]


def test_ready_while_any_worker_is_the_ready_ones_taking_the_connections() -> None:
    linked = Readiness(True, {"linked": True})
    down = Readiness(False, {"linked": False, "reason": "the core is unreachable"})
    both = merged_readiness({"1": linked, "2": linked})
    assert both.ready
    assert json.loads(both.body()) == {"ready": True, "workers": {
        "1": {"ready": True, "linked": True}, "2": {"ready": True, "linked": True}}}
    one = merged_readiness({"1": linked, "2": down})  # (2 restarting: it gets none)
    assert one.ready and one.details["workers"]["2"]["ready"] is False
    silent = merged_readiness({"1": linked, "2": None})
    assert silent.ready
    assert silent.details["workers"]["2"] == {"ready": False, "reason": "did not answer"}
    none = merged_readiness({"1": down, "2": None})
    assert not none.ready and none.details["reason"] == "no worker is ready"
    nobody = merged_readiness({})
    assert not nobody.ready and nobody.details["reason"] == "no worker is running"


class _Silent(Protocol):
    """A worker that accepts and never answers."""


class Supervisor:
    """A started WorkerMetrics of the real reactor, whose ``running`` workers are those
    the test lists, and the worker listeners the test opens (:meth:`serve`): all closed
    at the end of an ``async with``."""

    def __init__(self, running: list[int], configured: list[int] | None = None) -> None:
        from twisted.internet import reactor

        self.reactor = reactor
        self.metrics = WorkerMetrics(
            reactor, lambda: running,
            configured=None if configured is None else (lambda: configured))
        self.ports: list[Any] = []

    async def __aenter__(self) -> Supervisor:
        self.metrics.startService()
        return self

    async def serve(self, index: int, factory: Any) -> None:
        """Worker ``index`` listens, served by ``factory``."""
        self.ports.append(await serverFromString(
            self.reactor, self.metrics.listen_for(index)).listen(factory))

    async def __aexit__(self, *exc: object) -> None:
        for port in self.ports:
            stopped: Deferred[None] = port.stopListening()
            await stopped
        self.metrics.stopService()


@pytest_twisted.ensureDeferred
async def test_the_supervisor_asks_each_running_worker_on_its_socket() -> None:
    running = [1, 2, 3]
    async with Supervisor(running) as supervisor:
        worker_metrics = supervisor.metrics
        directory = Path(worker_metrics.directory)
        assert directory.stat().st_mode & 0o777 == 0o700
        for index, ready in ((1, True), (2, False)):  # worker 3 never listens
            await supervisor.serve(index, metrics_site(
                worker_registry(index), lambda ready=ready: Readiness(ready, {"linked": ready})))
        assert (directory / "worker-1.sock").stat().st_mode & 0o777 == 0o600

        values = samples(await worker_metrics.exposition())
        assert values["kcm_gateway_items_total", (("operation", "Encrypt"), ("worker", "1"))] == 1
        assert values["kcm_gateway_items_total", (("operation", "Encrypt"), ("worker", "2"))] == 2
        assert values["kcm_gateway_worker_up", (("worker", "3"),)] == 0
        assert values["kcm_gateway_workers", ()] == 3
        assert [key for key in values if key[0] == "process_cpu_seconds_total"
                and ("worker", "supervisor") in key[1]]

        readiness = await worker_metrics.readiness()
        assert readiness.ready  # worker 1 is
        assert readiness.details["workers"] == {
            "1": {"ready": True, "linked": True}, "2": {"ready": False, "linked": False},
            "3": {"ready": False, "reason": "did not answer"}}
        running.remove(1)
        assert not (await worker_metrics.readiness()).ready
    assert not directory.exists()


@pytest_twisted.ensureDeferred
async def test_a_worker_that_does_not_answer_is_logged_once_an_interval() -> None:
    """Probes every 0.1 s while a worker started wrote a line each."""
    from twisted.logger import globalLogPublisher

    lines: list[dict] = []

    def observe(event: dict) -> None:
        if "did not answer" in event.get("log_format", ""):
            lines.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        async with Supervisor([1]) as supervisor:  # worker 1 never listens
            for _ in range(5):
                assert not (await supervisor.metrics.readiness()).ready
            assert len(lines) == 1
        assert len(lines) == 2 and lines[1]["count"] == 4  # the rest, written at the stop
    finally:
        globalLogPublisher.removeObserver(observe)


@pytest_twisted.ensureDeferred
async def test_a_worker_that_never_answers_is_given_up_on(monkeypatch) -> None:
    from twisted.logger import capturedLogs, formatEvent

    from kcm.gateway import worker_metrics as module

    monkeypatch.setattr(module, "ANSWER_TIMEOUT", 0.2)
    async with Supervisor([1]) as supervisor:
        await supervisor.serve(1, Factory.forProtocol(_Silent))
        with capturedLogs() as events:
            values = samples(await supervisor.metrics.exposition())
        assert values["kcm_gateway_worker_up", (("worker", "1"),)] == 0
        # (the line said "[<twisted.python.failure.Failure ...CancelledError: >]")
        assert [formatEvent(event) for event in events] == [
            "kcm-gateway worker 1 did not answer /metrics: no answer within 0.2 s (1 time(s) "
            "in the last 10 s)"]


@pytest_twisted.ensureDeferred
async def test_scrapes_meanwhile_share_one_asking_of_the_workers() -> None:
    asked: list[str] = []
    site = metrics_site(worker_registry(1), lambda: Readiness(True))

    class Counting(Factory):
        def buildProtocol(self, address):
            asked.append("connection")
            return site.buildProtocol(address)

    async with Supervisor([1]) as supervisor:
        await supervisor.serve(1, Counting())
        scrapes = [supervisor.metrics.exposition() for _ in range(5)]
        answers = [await scrape for scrape in scrapes]
        assert len(set(answers)) == 1 and b'worker="1"' in answers[0]
        assert asked == ["connection"]
        await supervisor.metrics.exposition()  # a later one asks again
        assert asked == ["connection"] * 2


@pytest_twisted.ensureDeferred
async def test_a_worker_not_running_is_down_and_not_ready_not_missing() -> None:
    """Worker 2 crashed and waits for its restart (a back-off of up to 30 s): it was left
    out of kcm_gateway_worker_up and of /readyz, so an alert on worker_up == 0 missed it."""
    async with Supervisor([1, 3], configured=[1, 2, 3]) as supervisor:
        for index in (1, 3):
            await supervisor.serve(index, metrics_site(
                worker_registry(index), lambda: Readiness(True, {"linked": True})))
        values = samples(await supervisor.metrics.exposition())
        assert {key[1]: value for key, value in values.items()
                if key[0] == "kcm_gateway_worker_up"} == {
            (("worker", "1"),): 1, (("worker", "2"),): 0, (("worker", "3"),): 1}
        assert values["kcm_gateway_workers", ()] == 2  # running
        readiness = await supervisor.metrics.readiness()
        assert readiness.ready
        assert list(readiness.details["workers"]) == ["1", "2", "3"]
        assert readiness.details["workers"]["2"] == {
            "ready": False, "reason": "not running (being restarted)"}


@pytest_twisted.ensureDeferred
async def test_with_no_worker_running_the_answer_comes_at_once() -> None:
    async with Supervisor([]) as supervisor:
        readiness = await supervisor.metrics.readiness()
        assert not readiness.ready and readiness.details["reason"] == "no worker is running"
        values = samples(await supervisor.metrics.exposition())
        assert values["kcm_gateway_workers", ()] == 0


def test_a_worker_answering_something_else_counts_as_not_answering() -> None:
    values = samples(merged_exposition({"1": generate_latest(worker_registry(3)).decode(),
                                        "2": "<html>not metrics</html>\n{{{"}))
    assert values["kcm_gateway_worker_up", (("worker", "1"),)] == 1
    assert values["kcm_gateway_worker_up", (("worker", "2"),)] == 0


@pytest_twisted.ensureDeferred
async def test_the_supervisor_counts_its_handoffs_by_worker_and_by_how() -> None:
    handed = {(1, "cpu"): 3, (2, "count"): 1}
    async with Supervisor([]) as supervisor:
        supervisor.metrics.handoffs = lambda: handed
        supervisor.metrics.restarts = lambda: {2: 1}
        values = samples(await supervisor.metrics.exposition())
    assert values["kcm_gateway_handoffs_total", (("by", "cpu"), ("worker", "1"))] == 3
    assert values["kcm_gateway_handoffs_total", (("by", "count"), ("worker", "2"))] == 1
    assert values["kcm_gateway_worker_restarts_total", (("worker", "2"),)] == 1


@pytest_twisted.ensureDeferred
async def test_connections_no_worker_took_join_the_workers_refusals() -> None:
    """The supervisor's own count (no_worker) is a sample of the workers' family, one HELP
    and TYPE for all."""
    from twisted.internet.task import Clock

    from kcm.connection_refusals import ConnectionRefusals
    from kcm.tls_metrics import CertificateExpiry, tls_collectors
    from kcm.tls_refresh import TlsRefresher

    refusals = ConnectionRefusals()
    refusals.refused("handshake")
    registry = CollectorRegistry()
    for collector in tls_collectors("kcm_gateway", expiry=CertificateExpiry(),
                                    refusals=refusals,
                                    refresher=TlsRefresher("c.pem", "k.pem", "ca.pem", Clock())):
        registry.register(collector)
    async with Supervisor([1]) as supervisor:
        await supervisor.serve(1, metrics_site(registry, lambda: Readiness(True, {})))
        supervisor.metrics.unplaced = lambda: 2
        exposition = await supervisor.metrics.exposition()
    values = samples(exposition)
    refused = "kcm_gateway_connections_refused_total"
    assert values[refused, (("reason", "handshake"), ("worker", "1"))] == 1
    assert values[refused, (("reason", "no_worker"), ("worker", "supervisor"))] == 2
    assert exposition.count(b"# TYPE kcm_gateway_connections_refused_total counter") == 1


@pytest_twisted.ensureDeferred
async def test_asking_the_workers_logs_nothing_when_they_answer() -> None:
    """Each scrape or probe connects to every worker: Twisted's HTTP client factory of each
    connection logged its start and stop (two info lines a worker, every scrape and probe)."""
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        async with Supervisor([1, 2]) as supervisor:
            for index in (1, 2):
                await supervisor.serve(index, metrics_site(
                    worker_registry(index), lambda: Readiness(True, {"linked": True})))
            await supervisor.metrics.exposition()
            assert (await supervisor.metrics.readiness()).ready
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert [e.get("log_format") for e in events
            if e.get("log_namespace", "").startswith("twisted.web.client")] == []
