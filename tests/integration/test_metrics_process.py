"""Metrics and health of real `twistd kcm-core` and `twistd kcm-gateway` processes, scraped
over HTTP from their ``metrics_listen`` listeners and read with prometheus_client's parser:

* counters move by exactly the traffic sent (per batch item, by operation, result and, at the
  gateway, path), and the link, cache, connection and outbox gauges say what is going on;
* the gateway's ``/readyz`` stays 200 (not linked) when the core stops, turns 503 once
  ``max_stale`` has passed, and is 200 (linked) again when the core is back;
* the core's ``/readyz`` is 503 while its database file is gone, 200 when it is back;
* with ``workers = 2`` the supervisor's listener answers for both workers;
* a connection pipelining thousands of requests to either listener gets one answer, and
  the process's KMIP service is not held up meanwhile;
* each process reports when its certificates (its own, per listener and link, and the
  CA's) and its CRLs expire, and counts the connections it refused by reason.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from contextlib import ExitStack, suppress
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kcm.conformance.client import KmipClient, KmipClientError
from kcm.kmip.enums import ResultStatus
from kcm.testing.processes import free_port, scrape
from tests.e2e_support import CoreProcess, GatewayProcess, wait_until
from tests.gateway_support import (
    create_l4,
    create_managed,
    encrypt,
    get,
    locate,
    request,
    response,
)


def metrics(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample the listener on ``port`` exposes, as Prometheus' parser reads it."""
    status, body = scrape(port)
    assert status == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples}


def ready(port: int) -> tuple[int, dict]:
    status, body = scrape(port, "/readyz")
    return status, json.loads(body)


def moved(before: dict, after: dict, name: str, **labels: str) -> float:
    """How much one sample moved between two scrapes."""
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture
def core(core_process_with_metrics: CoreProcess) -> CoreProcess:
    """A kcm-core with its metrics listener."""
    return core_process_with_metrics


def gateway_of(core: CoreProcess, root: Path, **settings: float) -> GatewayProcess:
    gateway = GatewayProcess(root, core, metrics_port=free_port(), **settings)
    gateway.start()
    gateway.wait_linked()
    return gateway


def ok(answer: bytes) -> list:
    items = response(answer).batch_items
    assert {i.result_status for i in items} == {ResultStatus.SUCCESS}, \
        [i.result_message for i in items]
    return [i.response_payload for i in items]


def test_the_core_counts_what_it_answered(core: CoreProcess) -> None:
    assert scrape(core.metrics_port, "/healthz") == (200, b'{"alive": true}')
    status, body = ready(core.metrics_port)
    assert status == 200 and body["ready"] is True and body["database"] == "ok"
    before = metrics(core.metrics_port)
    with core.client() as client:
        for _ in range(3):
            ok(client.send(request(create_managed(), locate())))
        failed = response(client.send(request(get("no-such-object"))))
        assert failed.batch_items[0].result_status == ResultStatus.OPERATION_FAILED
        during = metrics(core.metrics_port)
    after = metrics(core.metrics_port)
    requests = "kcm_core_requests_total"
    assert moved(before, after, requests, operation="CREATE", result="success") == 3
    assert moved(before, after, requests, operation="LOCATE", result="success") == 3
    assert moved(before, after, requests, operation="GET", result="operation_failed") == 1
    assert moved(before, after, "kcm_core_request_duration_seconds_count",
                 source="direct") == 4
    assert moved(before, after, "kcm_core_audit_records_total") == 7
    assert moved(before, after, "kcm_core_db_transaction_duration_seconds_count",
                 kind="write") >= 4
    assert during[("kcm_core_open_connections", ())] >= 1
    # The queues are reported (idle here), and nothing was unavailable or expired.
    assert after[("kcm_core_queued_requests", (("queue", "workers"),))] == 0
    assert ("kcm_core_queued_requests", (("queue", "writer"),)) in after
    # (each kind exported from 0, so that an alert on any increase sees the first)
    zero = [value for key, value in after.items()
            if key[0] in ("kcm_core_store_unavailable_total", "kcm_core_requests_expired_total")]
    assert len(zero) == 5 and not any(zero)


def test_the_gateway_counts_local_and_forwarded_items(core: CoreProcess,
                                                      tmp_path: Path) -> None:
    gateway = gateway_of(core, tmp_path / "gateway")
    try:
        port = gateway.metrics_port
        status, body = ready(port)
        assert (status, body) == (200, {"ready": True, "linked": True})
        # Linked is not yet pre-warmed: the pre-warm fetch may still be on its way.
        wait_until(lambda: metrics(port).get(("kcm_gateway_l3_cache_keys", ()), 0) >= 1,
                   "the gateway's pre-warm of demo/app", timeout=10)
        before, core_before = metrics(port), metrics(core.metrics_port)
        with gateway.client() as client:
            [created] = ok(client.send(request(create_l4())))
            token = created.unique_identifier
            ok(client.send(request(*[encrypt(token)] * 5)))  # the fast path
            ok(client.send(request(get(token))))
            ok(client.send(request(create_managed(), locate())))  # forwarded whole
            ok(client.send(request(create_l4(), locate())))  # mixed
            during = metrics(port)
        after = metrics(port)
        requests = "kcm_gateway_requests_total"
        assert moved(before, after, requests, operation="CREATE", result="success",
                     path="local") == 2
        assert moved(before, after, requests, operation="ENCRYPT", result="success",
                     path="local") == 5
        assert moved(before, after, requests, operation="GET", result="success",
                     path="local") == 1
        assert moved(before, after, requests, operation="CREATE", result="success",
                     path="forwarded") == 1
        assert moved(before, after, requests, operation="LOCATE", result="success",
                     path="forwarded") == 2
        duration = "kcm_gateway_request_duration_seconds_count"
        assert moved(before, after, duration, path="local") == 3
        assert moved(before, after, duration, path="forwarded") == 1
        assert moved(before, after, duration, path="mixed") == 1
        # demo/app was pre-warmed: every read of its L3 was a hit.
        assert moved(before, after, "kcm_gateway_l3_cache_lookups_total", result="hit") >= 8
        assert moved(before, after, "kcm_gateway_l3_cache_lookups_total", result="miss") == 0
        assert after[("kcm_gateway_link_up", ())] == 1
        assert after[("kcm_gateway_link_reconnects_total", ())] == 0
        assert after[("kcm_gateway_link_in_flight", ())] == 0
        assert during[("kcm_gateway_open_connections", ())] == 1
        # The core saw the forwarded items as a gateway's, and the gateway is not behind.
        core_after = metrics(core.metrics_port)
        assert moved(core_before, core_after, "kcm_core_requests_total", operation="LOCATE",
                     result="success") == 2
        assert moved(core_before, core_after, "kcm_core_request_duration_seconds_count",
                     source="gateway") == 2
        gateway_id = (("gateway", "spiffe://kcm.test/gateway/gw1"),)
        links = {key: value for key, value in core_after.items()
                 if key[0] == "kcm_core_gateway_links"}
        assert list(links.values()) == [1], links
        [(_, gateway_id)] = links
        assert core_after[("kcm_core_outbox_lag_events", gateway_id)] == 0
    finally:
        gateway.stop()


@pytest.mark.serial  # asserts timings: run alone, after the parallel part of `make test`
def test_gateway_readiness_through_a_core_outage(core: CoreProcess, tmp_path: Path) -> None:
    gateway = gateway_of(core, tmp_path / "gateway", l3_ttl=1.0, max_stale=10.0)
    try:
        port = gateway.metrics_port
        assert ready(port) == (200, {"ready": True, "linked": True})
        with gateway.client() as client:  # the gateway holds the L3 (it was used)
            [created] = ok(client.send(request(create_l4())))
        token = created.unique_identifier
        core.stop()  # (SIGTERM: the core sends DRAIN, then goes)
        wait_until(lambda: ready(port)[1].get("linked") is False, "the link to drop")
        status, body = ready(port)
        assert status == 200 and body["ready"] is True, body
        # Ready first as waiting for the next link (5 s after the DRAIN at most), then by
        # the service key it holds.
        assert body.get("relinking") is True or "max_stale_left" in body, body
        wait_until(lambda: "max_stale_left" in ready(port)[1], "the wait for a link to end")
        status, body = ready(port)
        assert status == 200 and 0 < body["max_stale_left"] <= 10.0, body
        assert metrics(port)[("kcm_gateway_link_up", ())] == 0
        with gateway.client() as client:  # ready: it serves L4 operations
            ok(client.send(request(encrypt(token))))
        # The L3 was confirmed at most l3_ttl + 0.5 s before the core stopped.
        wait_until(lambda: ready(port)[0] == 503, "max_stale to pass", timeout=15.0)
        status, body = ready(port)
        assert body["ready"] is False and body["linked"] is False
        assert "max_stale" in body["reason"]
        with gateway.client() as client:  # not ready: it no longer does
            refused = response(client.send(request(encrypt(token)))).batch_items[0]
        assert refused.result_status == ResultStatus.OPERATION_FAILED
        assert "refusing to use it" in refused.result_message
        core.start()
        wait_until(lambda: ready(port) == (200, {"ready": True, "linked": True}),
                   "the link to come back", timeout=15.0)
        assert metrics(port)[("kcm_gateway_link_reconnects_total", ())] == 1
    finally:
        gateway.stop()


def test_core_readiness_follows_its_database(core: CoreProcess) -> None:
    port = core.metrics_port
    assert ready(port)[0] == 200
    database = Path(core.database.removeprefix("sqlite:///"))
    away = database.with_name("kcm.db.away")
    database.rename(away)
    try:
        status, body = ready(port)
        assert status == 503 and body["ready"] is False
        # (the core's own file moved away under it: said so, not "unreachable")
        assert body["database"].startswith(
            "refused: the SQLite database file was moved, replaced or removed"), body
        assert not database.exists()  # the check does not create an empty one
        assert scrape(port, "/healthz")[0] == 200  # alive all the same
    finally:
        away.rename(database)
    status, body = ready(port)
    assert status == 200 and body["database"] == "ok"


@pytest.mark.serial  # asserts timings: run alone, after the parallel part of `make test`
def test_a_gateway_with_workers_answers_for_all_of_them(core: CoreProcess,
                                                       tmp_path: Path) -> None:
    """``metrics_listen`` with ``workers = 2``: the supervisor's listener has every worker's
    samples (labelled), counts what each served, is ready while both are, and has a worker
    killed outright back once it is restarted (on its socket, left behind by the kill)."""
    gateway = GatewayProcess(tmp_path / "gateway", core, workers=2, metrics_port=free_port())
    gateway.start()
    try:
        port = gateway.metrics_port
        assert scrape(port, "/healthz") == (200, b'{"alive": true}')
        both = {"1": {"ready": True, "linked": True}, "2": {"ready": True, "linked": True}}
        wait_until(lambda: ready(port) == (200, {"ready": True, "workers": both}),
                   "both workers linked", timeout=15.0)
        # The start's check that the port listens made one connection, held back until
        # both workers were ready and handed then.
        wait_until(lambda: sum(value for (name, _), value in metrics(port).items()
                               if name == "kcm_gateway_handoffs_total") == 1,
                   "the start's probe connection to be handed", timeout=15.0)
        before = metrics(port)
        assert before[("kcm_gateway_workers", ())] == 2
        assert before[("kcm_gateway_worker_restarts_total", (("worker", "1"),))] == 0
        for worker in ("1", "2"):
            assert before[("kcm_gateway_worker_up", (("worker", worker),))] == 1
            assert before[("kcm_gateway_link_up", (("worker", worker),))] == 1
            assert ("process_cpu_seconds_total", (("worker", worker),)) in before
        assert ("process_cpu_seconds_total", (("worker", "supervisor"),)) in before
        # Four connections, each with one Encrypt: the supervisor hands them out (by count,
        # or to the worker pinned to the CPU they arrive on), and counts each handoff;
        # each worker counts the Encrypts of the connections it was handed.
        with ExitStack() as stack:
            clients = [stack.enter_context(gateway.client()) for _ in range(4)]
            for client in clients:
                client.connect()
            for client in clients:
                [created] = ok(client.send(request(create_l4())))
                ok(client.send(request(encrypt(created.unique_identifier))))
        after = metrics(port)
        served = {worker: moved(before, after, "kcm_gateway_requests_total",
                                operation="ENCRYPT", result="success", path="local",
                                worker=worker) for worker in ("1", "2")}
        handed = {worker: sum(moved(before, after, "kcm_gateway_handoffs_total",
                                    worker=worker, by=by) for by in ("cpu", "count"))
                  for worker in ("1", "2")}
        # (How they fall depends on the CPUs the client's connects ran on, and on the
        # loads the supervisor knew of: the start's probe may still count at one worker.)
        assert sum(served.values()) == 4, served
        assert served == handed, (served, handed)

        pids = gateway.worker_pids()
        os.kill(pids[1], signal.SIGKILL)
        wait_until(lambda: gateway.worker_pids().get(1, pids[1]) != pids[1],
                   "worker 1 to be restarted", timeout=15.0)
        wait_until(lambda: ready(port) == (200, {"ready": True, "workers": both}),
                   "the restarted worker to be ready", timeout=15.0)
        again = metrics(port)
        assert again[("kcm_gateway_worker_up", (("worker", "1"),))] == 1
        assert again[("kcm_gateway_worker_restarts_total", (("worker", "1"),))] == 1
        assert again[("kcm_gateway_worker_restarts_total", (("worker", "2"),))] == 0
        # Worker 1 is a new process: its counters started again.
        assert moved(before, again, "kcm_gateway_requests_total", operation="ENCRYPT",
                     result="success", path="local", worker="1") == 0
        # Asking the workers, at each scrape and probe above, logged nothing.
        assert "HTTP11ClientFactory" not in gateway.log.read_text()
    finally:
        gateway.stop()


#: GETs each flooding connection sends in one write (about 70 KB), reading no answer.
PIPELINED = 2000


def pipelining(port: int, connections: int = 8) -> list[socket.socket]:
    """``connections`` connections to the listener on ``port``, each having sent
    :data:`PIPELINED` GETs of /metrics at once (as much as the kernel took) and read
    nothing."""
    one = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    socks = []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        with suppress(BlockingIOError):
            sock.send(one * PIPELINED)
        socks.append(sock)
    return socks


def answers_then_closed(sock: socket.socket) -> int:
    """The HTTP answers ``sock`` receives before the server closes it."""
    sock.setblocking(True)
    sock.settimeout(15.0)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return data.count(b"HTTP/1.1 ")


def test_pipelined_requests_to_the_listeners_get_one_answer_and_hold_up_no_kmip(
        core: CoreProcess, tmp_path: Path) -> None:
    """What 8 connections each sending 2,000 GETs of /metrics in one write did: every one
    answered back to back in one reactor turn, a KMIP Locate at the core took 17.7 s and
    an L4 Create at the gateway 15.3 s, the core grew by 180 MB."""
    gateway = gateway_of(core, tmp_path / "gateway")
    try:
        flood = pipelining(core.metrics_port) + pipelining(gateway.metrics_port)
        time.sleep(0.3)  # the listeners have the requests
        with core.client() as client:
            started = time.monotonic()
            ok(client.send(request(locate())))
            at_core = time.monotonic() - started
        with gateway.client() as client:
            started = time.monotonic()
            ok(client.send(request(create_l4())))
            at_gateway = time.monotonic() - started
        assert [answers_then_closed(sock) for sock in flood] == [1] * len(flood)
        # Milliseconds on a quiet machine; the bound is far above a loaded machine's, far
        # below the stall.
        assert at_core < 5.0 and at_gateway < 5.0, (at_core, at_gateway)
        for port in (core.metrics_port, gateway.metrics_port):  # and serving as before
            assert scrape(port, "/healthz") == (200, b'{"alive": true}')
    finally:
        gateway.stop()


def test_a_stopping_supervisor_answers_503_until_its_workers_have_stopped(
        core: CoreProcess, tmp_path: Path) -> None:
    """Its listener closed at once on SIGTERM, while the workers still drained: a load
    balancer's probe was refused rather than told "stopping"."""
    gateway = GatewayProcess(tmp_path / "gateway", core, workers=2, metrics_port=free_port())
    gateway.start()
    port = gateway.metrics_port
    try:
        wait_until(lambda: ready(port)[0] == 200, "the gateway to be ready", timeout=15.0)
        # A connection held open by a client keeps each worker draining (DRAIN_GRACE after
        # its last request at least), so the stop takes a while.
        with gateway.client() as client:
            ok(client.send(request(create_l4())))
            gateway.process.send_signal(signal.SIGTERM)
            answers = []
            while gateway.process.poll() is None and len(answers) < 200:
                try:
                    answers.append(ready(port))
                except OSError:  # (refused: the listener has closed)
                    break
                time.sleep(0.02)
        assert answers and answers[0][0] == 503, answers[:3]
        assert {status for status, _ in answers} == {503}
        assert answers[0][1] == {"ready": False, "reason": "stopping"}
        print(f"\n{len(answers)} answers of 503 while the workers stopped")
        assert gateway.process.wait(30) == -signal.SIGTERM  # (twistd ends by its signal)
    finally:
        gateway.stop()


def _not_after(path: Path) -> float:
    from cryptography import x509

    return min(c.not_valid_after_utc for c in x509.load_pem_x509_certificates(
        path.read_bytes())).timestamp()


def _not_tls(port: int) -> None:
    """A client that speaks no TLS: the server's handshake fails, and it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        with suppress(OSError):
            while sock.recv(4096):
                pass


def test_certificate_expiry_crl_freshness_and_refused_connections(tmp_path: Path) -> None:
    """What an SRE alerts on: a certificate or CRL about to expire, and connections
    refused (a client that speaks no TLS, one whose certificate a CRL lists), at the core
    and at a gateway, scraped from the real processes."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from kcm.pki import issue_crl, load_ca
    from kcm.testing.processes import GatewayProcess, deploy

    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.metrics_port = free_port()
    pki = core.pki
    crl = tmp_path / "core" / "crl.pem"
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    revoked = x509.load_pem_x509_certificate(pki.other_app.cert.read_bytes())
    crl.write_bytes(issue_crl(load_ca(pki.ca), [revoked], now=now, days=5).public_bytes(
        Encoding.PEM))
    core.tls_settings = {"crl": str(crl)}
    core.write_config()
    core.start()
    gateway = GatewayProcess(tmp_path / "gateway", core, metrics_port=free_port(),
                             prewarm=(), tls_settings={"crl": str(crl)})
    try:
        gateway.start()
        gateway.wait_linked()
        servers = {"kcm_core": (core.port, core.metrics_port, pki.core.cert),
                   "kcm_gateway": (gateway.port, gateway.metrics_port, pki.gateway.cert)}
        before = {plane: metrics(port) for plane, (_, port, _) in servers.items()}
        for plane, (port, _, cert) in servers.items():
            got = before[plane]
            for listener in ("kmip", "link"):
                labels = (("listener", listener),)
                assert got[(f"{plane}_tls_certificate_expiry_timestamp_seconds", labels)] \
                    == _not_after(cert), plane
                assert got[(f"{plane}_tls_ca_expiry_timestamp_seconds", labels)] == \
                    _not_after(pki.ca.cert), plane
            assert got[(f"{plane}_crl_next_update_timestamp_seconds", ())] == (
                now + dt.timedelta(days=5)).timestamp()
            assert now.timestamp() - 60 < got[(f"{plane}_crl_last_load_timestamp_seconds",
                                                ())] < time.time() + 1
            assert got[(f"{plane}_crl_load_failures_total", ())] == 0
            _not_tls(port)
            with pytest.raises((OSError, KmipClientError)), KmipClient(
                    "127.0.0.1", port, cert=pki.other_app.cert, key=pki.other_app.key,
                    ca=pki.ca.cert, timeout=5) as client:
                client.send(request(locate()))
        for plane, (_, metrics_port, _) in servers.items():
            refused = f"{plane}_connections_refused_total"
            wait_until(lambda plane=plane, port=metrics_port, refused=refused: moved(
                before[plane], metrics(port), refused, reason="revoked") == 1,
                f"{plane}: the revoked client counted")
            after = metrics(metrics_port)
            assert moved(before[plane], after, refused, reason="handshake") == 1, plane
            assert moved(before[plane], after, refused, reason="identity") == 0, plane
    finally:
        gateway.stop()
        core.stop()
