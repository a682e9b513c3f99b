"""kcm.metrics: the reactor-thread families as Prometheus reads them, and the HTTP
resources (/metrics, /healthz, /readyz) rendered without a socket."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, succeed
from twisted.web.resource import getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from kcm.kmip.enums import Operation
from kcm.metrics import (
    CallbackGauge,
    ReactorCounter,
    ReactorHistogram,
    Readiness,
    operation_label,
)
from kcm.metrics_http import metrics_listener, metrics_site


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    """Every sample of ``registry`` as Prometheus' own parser reads the exposition."""
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_reactor_counter_children_are_bound_once_and_exposed() -> None:
    registry = CollectorRegistry()
    counter = ReactorCounter("kcm_test_requests", "Requests.", ("operation", "path"))
    registry.register(counter)
    child = counter.labels("Get", "local")
    assert counter.labels("Get", "local") is child
    child.value += 1
    child.inc(2)
    counter.labels("Locate", "forwarded").inc()
    got = samples(registry)
    assert got[("kcm_test_requests_total", (("operation", "Get"), ("path", "local")))] == 3
    assert got[("kcm_test_requests_total",
                (("operation", "Locate"), ("path", "forwarded")))] == 1
    assert counter.value("Get", "local") == 3
    assert counter.value("Encrypt", "local") == 0
    with pytest.raises(ValueError):
        counter.labels("Get")


def test_reactor_histogram_buckets_are_cumulative_and_inclusive() -> None:
    registry = CollectorRegistry()
    histogram = ReactorHistogram("kcm_test_seconds", "Time.", ("path",),
                                 buckets=(0.001, 0.01, 0.1))
    registry.register(histogram)
    child = histogram.labels("local")
    for seconds in (0.0005, 0.001, 0.005, 0.5):
        child.observe(seconds)
    got = samples(registry)

    def bucket(le: str) -> float:
        return got[("kcm_test_seconds_bucket", (("le", le), ("path", "local")))]

    assert [bucket(le) for le in ("0.001", "0.01", "0.1", "+Inf")] == [2, 3, 3, 4]
    assert got[("kcm_test_seconds_count", (("path", "local"),))] == 4
    assert got[("kcm_test_seconds_sum", (("path", "local"),))] == pytest.approx(0.5065)


def test_callback_gauge_is_read_when_scraped() -> None:
    registry = CollectorRegistry()
    state = {"value": 1}
    registry.register(CallbackGauge("kcm_test_up", "Up.", (), lambda: [((), state["value"])]))
    assert samples(registry)[("kcm_test_up", ())] == 1
    state["value"] = 0
    assert samples(registry)[("kcm_test_up", ())] == 0


# HTTP ---------------------------------------------------------------------------------------

def get(site, path: bytes) -> DummyRequest:
    """GET ``path`` from ``site``'s resources; the request, finished or not."""
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.method = b"GET"
    resource = getChildForRequest(site.resource, request)
    body = resource.render(request)
    if body is not NOT_DONE_YET:
        request.write(body)
        request.finish()
    return request


def body(request: DummyRequest) -> bytes:
    return b"".join(request.written)


def test_metrics_is_the_registry_in_prometheus_text_format() -> None:
    registry = CollectorRegistry()
    counter = ReactorCounter("kcm_test_requests", "Requests.", ("operation",))
    registry.register(counter)
    counter.labels("Get").inc(5)
    request = get(metrics_site(registry, lambda: Readiness(True)), b"/metrics")
    assert request.finished
    assert request.responseCode in (None, 200)
    assert request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(
        b"text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(body(request).decode())}
    assert families["kcm_test_requests"].samples[0].value == 5


def test_healthz_answers_alive() -> None:
    request = get(metrics_site(CollectorRegistry(), lambda: Readiness(False)), b"/healthz")
    assert request.responseCode in (None, 200)
    assert json.loads(body(request)) == {"alive": True}


@pytest.mark.parametrize("ready, code", [(True, 200), (False, 503)])
def test_readyz_answers_the_check(ready: bool, code: int) -> None:
    site = metrics_site(CollectorRegistry(),
                        lambda: succeed(Readiness(ready, {"linked": ready})))
    request = get(site, b"/readyz")
    assert request.finished and request.responseCode == code
    assert json.loads(body(request)) == {"ready": ready, "linked": ready}
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]


def test_readyz_waits_for_a_check_that_answers_later() -> None:
    pending: Deferred[Readiness] = Deferred()
    request = get(metrics_site(CollectorRegistry(), lambda: pending), b"/readyz")
    assert not request.finished
    pending.callback(Readiness(False, {"database": "unreachable: gone"}))
    assert request.finished and request.responseCode == 503
    assert json.loads(body(request)) == {"ready": False, "database": "unreachable: gone"}


def test_readyz_is_503_when_the_check_fails() -> None:
    def broken() -> Readiness:
        raise RuntimeError("the check broke")

    request = get(metrics_site(CollectorRegistry(), broken), b"/readyz")
    assert request.finished and request.responseCode == 503
    assert json.loads(body(request)) == {"ready": False, "error": "the check broke"}


def test_readyz_answers_nobody_once_the_client_left() -> None:
    pending: Deferred[Readiness] = Deferred()
    request = get(metrics_site(CollectorRegistry(), lambda: pending), b"/readyz")
    request.processingFailed(Exception("client gone"))  # what a lost connection does
    pending.callback(Readiness(True))
    assert body(request) == b""


def test_unknown_paths_are_404() -> None:
    request = get(metrics_site(CollectorRegistry(), lambda: Readiness(True)), b"/nothing")
    assert request.responseCode == 404


def test_the_listener_is_a_named_endpoint_service_that_parses_at_once() -> None:
    from twisted.internet.task import Clock

    site = metrics_site(CollectorRegistry(), lambda: Readiness(True))
    service = metrics_listener(Clock(), "tcp:0:interface=127.0.0.1", site)
    assert service.name == "kcm-metrics-listener"
    with pytest.raises(ValueError):
        metrics_listener(Clock(), "nonsense:1", site)


def test_a_port_in_use_fails_the_listener_s_start() -> None:
    import socket

    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        site = metrics_site(CollectorRegistry(), lambda: Readiness(True))
        service = metrics_listener(reactor, f"tcp:{port}:interface=127.0.0.1", site)
        with pytest.raises(CannotListenError):  # ProcessService then stops the start
            service.startService()


def test_metrics_from_an_exposition_that_answers_later_or_fails() -> None:
    pending: Deferred[bytes] = Deferred()
    site = metrics_site(None, lambda: Readiness(True), exposition=lambda: pending)
    request = get(site, b"/metrics")
    assert not request.finished
    pending.callback(b"# nothing\n")
    assert request.finished and body(request) == b"# nothing\n"

    def broken() -> bytes:
        raise RuntimeError("a worker broke it")

    request = get(metrics_site(None, lambda: Readiness(True), exposition=broken), b"/metrics")
    assert request.finished and request.responseCode == 500
    assert body(request) == b"metrics unavailable; see the log\n"
    with pytest.raises(ValueError):
        metrics_site(None, lambda: Readiness(True))


def test_readyz_is_503_once_the_process_stops_without_asking_the_check() -> None:
    asked: list[bool] = []
    stopping = [False]

    def check() -> Readiness:
        asked.append(True)
        return Readiness(True)

    site = metrics_site(CollectorRegistry(), check, stopping=lambda: stopping[0])
    assert get(site, b"/readyz").responseCode == 200 and asked == [True]
    stopping[0] = True
    request = get(site, b"/readyz")
    assert request.finished and request.responseCode == 503 and asked == [True]
    assert json.loads(body(request)) == {"ready": False, "reason": "stopping"}


def test_both_planes_label_a_result_status_kmip_does_not_define_alike() -> None:
    """The ``result`` label is one rule (:func:`kcm.metrics.result_label`): a Result Status
    KMIP does not define is ``unknown`` on kcm-core and on kcm-gateway alike."""
    from kcm.core.metrics import CoreMetrics
    from kcm.gateway.metrics import GatewayMetrics
    from kcm.kernel.responses import failure_response
    from kcm.kmip.enums import ResultReason

    undefined = 5  # ResultStatus ends at 3 (Operation Undone)
    core = CoreMetrics()
    core.item(None, undefined)
    failed = failure_response((1, 4), int(ResultReason.GENERAL_FAILURE), "no", 0)
    status_failed = b"\x42\x00\x7f\x05\x00\x00\x00\x04\x00\x00\x00\x01"
    assert failed.count(status_failed) == 1
    gateway = GatewayMetrics()
    gateway.answered(failed.replace(status_failed, status_failed[:-1] + bytes([undefined])),
                     True)
    core_results = {dict(labels)["result"] for (name, labels), value
                    in samples(core.registry).items()
                    if name == "kcm_core_requests_total" and value}
    gateway_results = {dict(labels)["result"] for (name, labels), value
                       in samples(gateway.registry).items()  # (the fast path's, bound at 0)
                       if name == "kcm_gateway_requests_total" and value}
    assert core_results == gateway_results == {"unknown"}


def test_the_operation_label_is_the_operations_name_or_unknown() -> None:
    """Every Operation KMIP defines is labelled by its name; a value it does not define, or
    none, is ``unknown`` (a client picks the value: the label's values stay bounded)."""
    for operation in Operation:
        assert operation_label(int(operation)) == operation.name
    assert operation_label(Operation.GET_ATTRIBUTES) == "GET_ATTRIBUTES"
    for value in (None, 0, 0x7FFFFFFF, 0x80000001, 0xFFFFFFFF, max(Operation) + 1):
        assert operation_label(value) == "unknown"
