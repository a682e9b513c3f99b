"""kcm-gateway with ``workers = 2``, end to end, where a worker goes wrong: a real `twistd
kcm-gateway` supervisor and its workers in front of a real kcm-core.

* A worker stopped outright (SIGSTOP: as a deadlock or a busy loop) is noticed: new
  connections go to the other worker, and the stopped one is killed and restarted.
* A worker whose link to the core is cut (the other's is not) gets no new connections
  while it cannot serve, and gets them again once it is linked again.
* SIGHUP sent to every process of the gateway (``systemctl kill -s HUP``, whom: all) is a
  rolling restart: no worker dies of it. One gateway process (workers = 1) logs it and
  serves on.
* A certificate that names no gateway stops a supervisor at its start, as it stops one
  gateway process, instead of leaving its workers exiting again and again.
* The supervisor's ``/metrics`` has one HELP and one TYPE per family.
* The metrics listener refuses a request body before reading it, and holds at most
  MAX_CONNECTIONS connections.

Which worker serves a connection is read from /proc (tests.integration.test_gateway_workers).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kcm.metrics_http import MAX_CONNECTIONS, REQUEST_TIMEOUT
from kcm.testing.processes import free_port, running, scrape
from tests.e2e_support import (
    CoreProcess,
    GatewayProcess,
    deploy,
    succeeded_v21,
    wait_until,
)
from tests.gateway_support import locate
from tests.integration.test_gateway_workers import _socket_inodes, alive, serving_pid

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(),
                                reason="reads which process holds a connection from /proc")


@pytest.fixture
def counted(tmp_path: Path) -> Iterator[tuple[CoreProcess, GatewayProcess]]:
    """A core, and a gateway of two workers handing connections by count only, with a
    metrics listener."""
    yield from _two_workers(tmp_path)


#: The hung-worker test's ``hung_worker_timeout`` (the default is 10 s): time enough after
#: the 2 s of silence for the other worker to be seen taking every new connection.
HUNG_WORKER_TIMEOUT = 5


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[CoreProcess, GatewayProcess]]:
    """:func:`counted`'s gateway with a hung worker killed after
    :data:`HUNG_WORKER_TIMEOUT` seconds."""
    yield from _two_workers(tmp_path, hung_worker_timeout=HUNG_WORKER_TIMEOUT)


def _two_workers(tmp_path: Path, **settings: float
                 ) -> Iterator[tuple[CoreProcess, GatewayProcess]]:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(tmp_path / "gateway", core, workers=2, metrics_port=free_port(),
                             settings={"pin_workers": "never", **settings})
    with running(core, gateway) as pair:
        yield pair


def both_ready(gateway: GatewayProcess) -> bool:
    import json

    assert gateway.metrics_port is not None
    status, body = scrape(gateway.metrics_port, "/readyz")
    workers = json.loads(body).get("workers", {})
    return status == 200 and len(workers) == 2 and all(w["ready"] for w in workers.values())


def served_by(gateway: GatewayProcess, count: int, timeout: float = 5.0) -> Counter[int | None]:
    """``count`` new connections, each answering a Locate within ``timeout``: how many each
    worker (pid) served."""
    served: Counter[int | None] = Counter()
    for _ in range(count):
        client = gateway.client()
        client.timeout = timeout
        with client:
            client.connect()
            succeeded_v21(client, locate())
            # (of the workers alive now: one killed meanwhile has no /proc entry)
            pids = [pid for pid in gateway.worker_pids().values() if alive(pid)]
            served[serving_pid(client, pids)] += 1
    return served


# A hung worker --------------------------------------------------------------------------------
def test_a_stopped_worker_gets_no_new_connections_and_is_killed_and_restarted(watched) -> None:
    _, gateway = watched
    wait_until(lambda: both_ready(gateway), "both workers ready", timeout=20.0)
    pids = gateway.worker_pids()
    stopped, other = pids[1], pids[2]
    os.kill(stopped, signal.SIGSTOP)
    try:
        silent = f"kcm-gateway worker 1 (pid {stopped}) has not reported for"
        wait_until(lambda: silent in gateway.log.read_text(),
                   "the supervisor to notice the stopped worker", timeout=15.0)
        # Every new connection from now on is answered, by the other worker.
        assert served_by(gateway, 8) == {other: 8}
        wait_until(lambda: gateway.worker_pids()[1] != stopped,
                   "the stopped worker to be restarted", timeout=30.0)
        assert not alive(stopped)
        log = gateway.log.read_text()
        assert "hung; killing it" in log
        [silence] = re.findall(rf"worker 1 \(pid {stopped}\) has not reported for ([0-9.]+) s: "
                               "hung", log)
        assert HUNG_WORKER_TIMEOUT <= float(silence) < HUNG_WORKER_TIMEOUT + 2
        assert f"kcm-gateway worker 1 (pid {stopped}) exited: signal SIGKILL" in log
        gateway.wait_linked(more_than=2, timeout=20.0)
        wait_until(lambda: both_ready(gateway), "the new worker ready", timeout=20.0)
        new = gateway.worker_pids()[1]
        wait_until(lambda: new in served_by(gateway, 2), "the new worker to take connections",
                   timeout=10.0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stopped, signal.SIGKILL)


# A worker whose link is cut -------------------------------------------------------------------
class LinkRelay:
    """A TCP relay in front of the core's link listener that can cut the links of one
    process (found in /proc by the relay's peer port) and refuse its new ones."""

    def __init__(self, target_port: int, candidates: Callable[[], list[int]]) -> None:
        self.target = target_port
        self.candidates = candidates
        self.blocked: set[int] = set()
        self.pairs: list[tuple[int | None, socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _owner(self, peer_port: int) -> int | None:
        inodes = set()
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == peer_port:
                inodes.add(fields[9])
        for pid in self.candidates():
            with contextlib.suppress(FileNotFoundError):
                if inodes & _socket_inodes(pid):
                    return pid
        return None

    def _accept(self) -> None:
        while True:
            try:
                downstream, address = self.listener.accept()
            except OSError:
                return
            owner = self._owner(address[1])
            if owner in self.blocked:
                downstream.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.pairs.append((owner, downstream, upstream))
            threading.Thread(target=self._relay, args=(downstream, upstream),
                             daemon=True).start()

    @staticmethod
    def _relay(a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                readable, _, _ = select.select([a, b], [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        raise OSError("closed")
                    (b if sock is a else a).sendall(data)
        except OSError:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def cut(self, pid: int) -> None:
        self.blocked.add(pid)
        with self.lock:
            for owner, a, b in self.pairs:
                if owner == pid:
                    for sock in (a, b):
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_RDWR)

    def mend(self, pid: int) -> None:
        self.blocked.discard(pid)

    def close(self) -> None:
        self.listener.close()


def test_a_worker_that_cannot_serve_gets_no_new_connections_until_it_can(
        tmp_path: Path) -> None:
    """operations.md: the supervisor hands new connections to the ready workers only; a
    worker whose link is down (here with no service key held: not ready at once, as one
    past max_stale) takes none. Its readiness was said once, at its start."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(tmp_path / "gateway", core, workers=2, metrics_port=free_port(),
                             prewarm=(), settings={"pin_workers": "never"})
    core.start()
    relay = LinkRelay(core.link_port, lambda: list(gateway.worker_pids().values()))
    try:
        gateway.write_config()
        gateway.config.write_text(gateway.config.read_text().replace(
            f"tcp:127.0.0.1:{core.link_port}", f"tcp:127.0.0.1:{relay.port}"))
        gateway.start()
        gateway.wait_linked()
        wait_until(lambda: both_ready(gateway), "both workers ready", timeout=20.0)
        pids = gateway.worker_pids()
        relay.cut(pids[1])
        wait_until(lambda: not both_ready(gateway), "worker 1 to be unready", timeout=10.0)

        def only_worker_2() -> bool:
            # /readyz asks the workers now; the supervisor hands connections out by their
            # reports (the next within 0.2 s): until it has worker 1's, a connection it
            # gives worker 1 is refused the Locate.
            try:
                return served_by(gateway, 2) == {pids[2]: 2}
            except AssertionError:
                return False

        wait_until(only_worker_2, "connections to go to worker 2 only", timeout=10.0)
        assert served_by(gateway, 8) == {pids[2]: 8}
        relay.mend(pids[1])
        wait_until(lambda: pids[1] in served_by(gateway, 2),
                   "worker 1, linked again, to take connections", timeout=20.0)
        assert gateway.worker_pids() == pids  # nothing was restarted
    finally:
        gateway.stop()
        relay.close()
        core.stop()


# SIGHUP -------------------------------------------------------------------------------------
def test_sighup_to_every_process_is_a_rolling_restart_and_the_metrics_families_are_whole(
        counted) -> None:
    _, gateway = counted
    assert gateway.process is not None and gateway.metrics_port is not None
    wait_until(lambda: both_ready(gateway), "both workers ready", timeout=20.0)
    # One HELP and one TYPE per family, the supervisor's process metrics among the workers'.
    status, body = scrape(gateway.metrics_port)
    text = body.decode()
    for kind in ("# HELP", "# TYPE"):
        named = Counter(line.split()[2] for line in text.splitlines() if line.startswith(kind))
        assert set(named.values()) == {1}, {n: c for n, c in named.items() if c > 1}
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert {s.labels["worker"] for s in families["process_cpu_seconds"].samples} == {
        "1", "2", "supervisor"}

    before = gateway.worker_pids()
    # What `systemctl kill -s HUP kcm-gateway` does (--kill-whom=all by default).
    for pid in (gateway.process.pid, *before.values()):
        os.kill(pid, signal.SIGHUP)
    wait_until(lambda: "every kcm-gateway worker was restarted" in gateway.log.read_text(),
               "the rolling restart to finish", timeout=60.0)
    log = gateway.log.read_text()
    assert "signal SIGHUP" not in log  # no worker died of it
    for index, pid in before.items():
        assert f"kcm-gateway worker {index} (pid {pid}) exited as asked" in log
    assert gateway.process.poll() is None
    served_by(gateway, 2)


def test_one_gateway_process_logs_a_sighup_and_serves_on(tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(tmp_path / "gateway", core)
    with running(core, gateway):
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "looks at its TLS files now" in gateway.log.read_text(),
                   "the SIGHUP logged")
        assert gateway.process.poll() is None
        with gateway.client() as client:
            succeeded_v21(client, locate())


# A configuration no worker can start with --------------------------------------------------
def test_a_certificate_that_names_no_gateway_stops_the_supervisor_at_its_start(
        tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(tmp_path / "gateway", core, workers=2)
    gateway.write_config()
    pki = core.pki
    gateway.config.write_text(gateway.config.read_text()
                              .replace(str(pki.gateway.cert), str(pki.app.cert))
                              .replace(str(pki.gateway.key), str(pki.app.key)))
    try:
        with pytest.raises(RuntimeError):
            gateway.start()
        assert gateway.process is not None
        assert gateway.process.wait(timeout=20) == 1
        log = gateway.log.read_text()
        assert "kcm-gateway did not start: kcm-gateway-identity: " in log
        assert "does not name a gateway" in log
        assert "kcm-gateway worker 1 started" not in log
    finally:
        gateway.stop()


# The metrics listener -------------------------------------------------------------------
@pytest.fixture
def core_with_metrics(core_process_with_metrics: CoreProcess) -> CoreProcess:
    return core_process_with_metrics


def test_a_request_body_is_refused_before_it_is_read(core_with_metrics) -> None:
    """A 300 MB POST was read whole (to a temporary file) before it was refused."""
    port = core_with_metrics.metrics_port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 314572800\r\n\r\n")
        # Answered without a byte of the body sent, and closed.
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert scrape(port, "/healthz") == (200, b'{"alive": true}')


def test_the_listener_holds_at_most_its_cap_of_connections(core_with_metrics) -> None:
    """Connections past the cap are closed as they arrive; those within it are held until
    their request deadline (REQUEST_TIMEOUT after they connected)."""
    port = core_with_metrics.metrics_port
    assert port is not None
    # Served once first: by then the listener has seen the end of every connection made
    # before (the start-up probe's, closed by the client, is counted until it has).
    assert scrape(port, "/healthz") == (200, b'{"alive": true}')
    with ExitStack() as stack:
        started = time.monotonic()
        held: list[socket.socket] = []
        for _ in range(MAX_CONNECTIONS + 16):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            with contextlib.suppress(OSError):  # (one past the cap may be closed already)
                sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # never finished
            held.append(sock)

        def closed_by_the_server(sock: socket.socket) -> bool:
            sock.setblocking(False)
            try:
                return sock.recv(1) == b""
            except BlockingIOError:
                return False
            except OSError:  # reset
                return True

        def closed() -> int:
            return sum(map(closed_by_the_server, held))

        # Which 16 are closed is the order the server accepted them in, not always the
        # order they connected in (a full accept queue drops handshakes, retried later).
        wait_until(lambda: closed() >= 16, "the connections past the cap closed",
                   timeout=REQUEST_TIMEOUT - 2)
        # Before the first connection reaches its deadline, only those 16 are closed. (A
        # machine slow enough to take that long proves nothing here.)
        count = closed()
        if time.monotonic() - started < REQUEST_TIMEOUT - 0.5:
            assert count == 16

    # Room again once the listener has read the ends of the connections just closed here (it
    # may take a new connection before it has read them all, and close it as past the cap).
    def served() -> bool:
        try:
            return scrape(port, "/healthz") == (200, b'{"alive": true}')
        except OSError:  # closed as past the cap: not yet
            return False

    wait_until(served, "room again after the held connections closed", timeout=10.0)
