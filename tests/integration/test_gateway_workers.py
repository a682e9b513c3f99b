"""kcm-gateway with ``workers = 2``, end to end: a real `twistd kcm-gateway` supervisor and its
two worker processes sharing one KMIP port, in front of a real kcm-core, with mutual TLS on
loopback.

Which worker serves a connection is read from the kernel (Linux ``/proc``): the process that
holds the server side of the client's TCP connection. The worker pids come from the
supervisor's log (``kcm-gateway worker I started: pid P``).

* Connections are spread over both workers, and each answers L4 requests itself and forwards
  the rest to the core; the supervisor hands each new connection to the worker with the
  fewest (with ``pin_workers = "never"``: 8 fall 4/4; after one worker's 4 close, the
  next 4 go to it).
* A revocation (a destroyed L4 token, a compromised L3) reaches every worker within 1 s.
* A worker killed with SIGKILL is restarted and serves again; the other kept serving.
* Pinned workers (``pin_workers``) each run on a CPU of their own, and a connection goes
  to the worker on the CPU it arrives on; connections from one CPU still reach both.
* With ``busy_poll_us``, each worker polls before it sleeps, serves as usual, and rests
  when its clients are idle.
* SIGTERM to the supervisor stops every worker; a supervisor killed outright takes its
  workers with it; SIGHUP restarts the workers one at a time, and a client opening new
  connections all the while is served every time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kcm.conformance.client import KmipClient, KmipClientError
from kcm.kmip.enums import ResultReason, RevocationReasonCode
from kcm.kmip.payloads.crypto import EncryptResponse
from kcm.testing.processes import free_port, running, scrape
from tests.e2e_support import (
    CoreProcess,
    GatewayProcess,
    decrypt_sealed,
    deploy,
    refusals,
    send_v21,
    succeeded_v21,
    wait_until,
)
from tests.gateway_support import create_l4, create_managed, encrypt, get, locate
from tests.integration.test_gateway_sync import (
    PROPAGATION_BOUND,
    destroy,
    enforced_within,
    envelope,
    report,
    revoke,
)

#: Reads /proc. Most tests here assert timings (marked serial: run alone, after the parallel
#: part of `make test`).
pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(),
                                reason="reads which process serves a connection from /proc")


def two_workers(tmp_path: Path, **options: Any) -> Iterator[tuple[CoreProcess, GatewayProcess]]:
    """A running kcm-core and a kcm-gateway of two workers (``GatewayProcess`` ``options``),
    both linked to it."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(tmp_path / "gateway", core, workers=2, **options)
    with running(core, gateway) as pair:
        assert len(gateway.worker_pids()) == 2
        yield pair


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[CoreProcess, GatewayProcess]]:
    """Two workers as configured by default (on a machine with 2 usable CPUs, each pinned
    to one)."""
    yield from two_workers(tmp_path)


@pytest.fixture
def counted_deployment(tmp_path: Path) -> Iterator[tuple[CoreProcess, GatewayProcess]]:
    """As :func:`deployment`, with ``pin_workers = "never"``: connections go by count only,
    wherever the test's threads run."""
    yield from two_workers(tmp_path, settings={"pin_workers": "never"})


# Who serves a connection ----------------------------------------------------------------------
def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def established(port: int, pid: int) -> int:
    """How many established TCP connections to ``port`` (the server side) ``pid`` holds."""
    inodes = _socket_inodes(pid)
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if int(local.split(":")[1], 16) == port and state == "01" and inode in inodes:
            count += 1
    return count


def serving_pid(client: KmipClient, candidates: list[int]) -> int | None:
    """Which of ``candidates`` holds the server side of ``client``'s connection."""
    assert client._socket is not None, "connect first"
    client_port = client._socket.getsockname()[1]
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if (int(local.split(":")[1], 16) == client.port
                and int(remote.split(":")[1], 16) == client_port):
            inodes.add(inode)
    for pid in candidates:
        if inodes & _socket_inodes(pid):
            return pid
    return None


def connect(stack: ExitStack, gateway: GatewayProcess, who: str = "app") -> KmipClient:
    client = stack.enter_context(gateway.client(who))
    client.connect()
    return client


def clients_by_worker(stack: ExitStack, gateway: GatewayProcess, count: int,
                      who: str = "app") -> dict[int, list[KmipClient]]:
    """``count`` open connections, by the pid of the worker serving each."""
    pids = list(gateway.worker_pids().values())
    by_pid: dict[int, list[KmipClient]] = {pid: [] for pid in pids}
    for _ in range(count):
        client = connect(stack, gateway, who)
        succeeded_v21(client, locate())  # the handshake is done and a worker served it
        pid = serving_pid(client, pids)
        assert pid is not None, "no worker holds the connection"
        by_pid[pid].append(client)
    return by_pid


def one_client_per_worker(stack: ExitStack, gateway: GatewayProcess, who: str = "app",
                          tries: int = 40) -> dict[int, KmipClient]:
    """A connection to each worker (connecting until each has served one)."""
    pids = list(gateway.worker_pids().values())
    chosen: dict[int, KmipClient] = {}
    for _ in range(tries):
        client = connect(stack, gateway, who)
        succeeded_v21(client, locate())
        pid = serving_pid(client, pids)
        if pid is not None and pid not in chosen:
            chosen[pid] = client
        if len(chosen) == len(pids):
            return chosen
    raise AssertionError(f"{tries} connections reached only workers {sorted(chosen)}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (its parent has not reaped it yet).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


# (a) ---------------------------------------------------------------------------------------------
@pytest.mark.serial  # asserts timings: run alone, after the parallel part of `make test`
def test_connections_are_spread_over_both_workers_and_each_answers_l4_and_forwarded_requests(
        deployment) -> None:
    _, gateway = deployment
    with ExitStack() as stack:
        by_pid = clients_by_worker(stack, gateway, 16)
        counts = {pid: len(clients) for pid, clients in by_pid.items()}
        print(f"\n16 connections over the workers: {counts}")
        assert all(counts.values()), counts
        for clients in by_pid.values():
            for client in clients:
                # L4, answered by the worker itself: a new token, its DEK, a record.
                [created] = succeeded_v21(client, create_l4())
                token = created.unique_identifier
                assert token.startswith("l4.1.")
                key, sealed = succeeded_v21(client, get(token), encrypt(token, b"a record"))
                [opened] = succeeded_v21(client, decrypt_sealed(token, sealed))
                assert opened.data == b"a record"
                assert len(key.object.key_block.key_value.key_material) == 32
                # Forwarded to the core: a managed key, found again by Locate.
                [managed] = succeeded_v21(client, create_managed())
                assert not managed.unique_identifier.startswith(("l4.", "l3-"))
                [found] = succeeded_v21(client, locate())
                assert managed.unique_identifier in found.unique_identifiers
        # Every token works at every worker: they share the service key, not a cache.
        [first, second] = [clients[0] for clients in by_pid.values()]
        [created] = succeeded_v21(first, create_l4())
        [sealed] = succeeded_v21(first, encrypt(created.unique_identifier, b"crosses workers"))
        [opened] = succeeded_v21(second, decrypt_sealed(created.unique_identifier, sealed))
        assert opened.data == b"crosses workers"


@pytest.mark.serial  # asserts timings: run alone, after the parallel part of `make test`
def test_eight_connections_fall_four_to_each_worker_and_new_ones_go_to_the_emptier(
        counted_deployment) -> None:
    """A database's or a storage array's few long-lived connections: the supervisor hands
    each to the worker holding the fewest, so 8 fall 4/4 (counted from the kernel: the
    established sockets each worker holds on the KMIP port), and once one worker's 4 have
    closed (and it has said so, within 0.2 s), the next 4 all go to it."""
    _, gateway = counted_deployment
    pids = list(gateway.worker_pids().values())
    with ExitStack() as stack:
        by_pid = clients_by_worker(stack, gateway, 8)
        counts = {pid: len(clients) for pid, clients in by_pid.items()}
        print(f"\n8 connections over the workers: {counts}")
        assert sorted(counts.values()) == [4, 4], counts
        assert [established(gateway.port, pid) for pid in pids] == [4, 4]
        emptied, kept = pids
        for client in by_pid[emptied]:
            client.close()
        wait_until(lambda: established(gateway.port, emptied) == 0,
                   "the worker to see its connections close", 5.0)
        time.sleep(1.0)  # its report of them (every 0.2 s at most) reaches the supervisor
        more = clients_by_worker(stack, gateway, 4)
        assert (len(more[emptied]), len(more[kept])) == (4, 0), more
        assert [established(gateway.port, pid) for pid in pids] == [4, 4]


@pytest.mark.serial  # asserts timings: run alone, after the parallel part of `make test`
def test_a_burst_of_connects_is_spread_evenly_over_the_workers(counted_deployment) -> None:
    """Sixteen clients connecting at the same instant (as a pool starting up does): the
    supervisor accepts them all and hands them out by count, however the workers are
    scheduled: 8/8."""
    _, gateway = counted_deployment
    pids = list(gateway.worker_pids().values())
    with ExitStack() as stack:
        clients = [stack.enter_context(gateway.client()) for _ in range(16)]
        start = threading.Barrier(len(clients))

        def connect_together(client: KmipClient) -> None:
            start.wait(timeout=10)
            client.connect()
            succeeded_v21(client, locate())

        with ThreadPoolExecutor(len(clients)) as pool:
            list(pool.map(connect_together, clients))
        counts = [sum(serving_pid(c, pids) == pid for c in clients) for pid in pids]
    print(f"\na burst of 16 connects over the workers: {counts}")
    assert counts == [8, 8], counts


# (b) ---------------------------------------------------------------------------------------------
@pytest.mark.serial  # asserts timings: run alone, after the parallel part of `make test`
def test_a_revocation_reaches_every_worker_within_1s(deployment) -> None:
    core, gateway = deployment
    with ExitStack() as stack:
        apps = one_client_per_worker(stack, gateway)
        names = {pid: f"worker pid {pid}" for pid in apps}
        clients = {names[pid]: client for pid, client in apps.items()}
        first = next(iter(clients.values()))
        admin = connect(stack, gateway, "admin")
        destroyed, kept = envelope(first), envelope(first)
        for client in clients.values():  # every worker holds the L3 and serves both tokens
            assert refusals(send_v21(client, get(destroyed.token), encrypt(kept.token, b"x"))) \
                == [None, None]

        # A destroyed L4 token.
        probe = [get(destroyed.token), encrypt(destroyed.token, b"more"),
                 decrypt_sealed(destroyed.token, destroyed.record)]
        sent = time.monotonic()
        succeeded_v21(first, destroy(destroyed.token))
        answered = time.monotonic()
        delays = enforced_within(clients, probe, [ResultReason.OBJECT_NOT_FOUND] * 3,
                                 since=sent)
        report("L4 destruction enforced", delays, sent, answered)
        assert max(delays.values()) < PROPAGATION_BOUND, delays

        # A compromised L3: everything under it stops, decrypting included.
        probe = [encrypt(kept.l3, kept.dek), encrypt(kept.token, b"more"),
                 create_l4(via_link=kept.l3), decrypt_sealed(kept.token, kept.record),
                 decrypt_sealed(kept.l3, kept.wrapped), get(kept.token)]
        sent = time.monotonic()
        succeeded_v21(admin, revoke(kept.l3, RevocationReasonCode.KEY_COMPROMISE))
        answered = time.monotonic()
        delays = enforced_within(clients, probe,
                                 [ResultReason.WRONG_KEY_LIFECYCLE_STATE] * len(probe),
                                 since=sent)
        report("L3 compromise enforced", delays, sent, answered)
        assert max(delays.values()) < PROPAGATION_BOUND, delays
        with core.client("app") as direct:
            assert refusals(send_v21(direct, get(destroyed.token))) == [
                ResultReason.OBJECT_NOT_FOUND]


# (c) ---------------------------------------------------------------------------------------------
@pytest.mark.serial  # asserts timings: run alone, after the parallel part of `make test`
def test_a_killed_worker_is_restarted_and_serves_while_the_other_kept_serving(
        deployment) -> None:
    _, gateway = deployment
    before = gateway.worker_pids()
    with ExitStack() as stack:
        apps = one_client_per_worker(stack, gateway)
        [token] = [p.unique_identifier for p in succeeded_v21(next(iter(apps.values())),
                                                            create_l4())]
        killed_index, killed = 1, before[1]
        [survivor] = [pid for pid in before.values() if pid != killed]
        os.kill(killed, signal.SIGKILL)
        # The other worker keeps serving, on the connection it had, while its sibling is
        # down and being restarted.
        restarted = wait_until(lambda: gateway.worker_pids()[killed_index] != killed
                               and survivor_serves(apps[survivor], token),
                               "the killed worker to be started again", timeout=15.0)
        new = gateway.worker_pids()[killed_index]
        print(f"\nworker {killed_index} (pid {killed}) restarted as pid {new} "
              f"within {restarted:.2f} s")
        assert not alive(killed) and alive(survivor)
        assert gateway.worker_pids() == {**before, killed_index: new}
        # The connection the killed worker held is gone...
        with pytest.raises(KmipClientError):
            send_v21(apps[killed], encrypt(token, b"x"))
        # ...and the new worker serves once it is linked (a connection lands on it).
        gateway.wait_linked(more_than=2)
        pids = [survivor, new]
        for _ in range(40):
            client = connect(stack, gateway)
            [sealed] = succeeded_v21(client, encrypt(token, b"after the restart"))
            if serving_pid(client, pids) == new:
                [opened] = succeeded_v21(client, decrypt_sealed(token, sealed))
                assert opened.data == b"after the restart"
                succeeded_v21(client, locate())  # forwarded, over the new worker's own link
                break
        else:
            raise AssertionError("no connection reached the restarted worker")
        assert survivor_serves(apps[survivor], token)
    log = gateway.log.read_text()
    assert f"kcm-gateway worker {killed_index} (pid {killed}) exited: signal SIGKILL" in log


def test_a_token_destroyed_before_a_worker_restarted_is_refused_by_the_new_worker(
        deployment) -> None:
    """The restarted worker links anew, from the head of the core's events: the tombstones
    made before come with the L3 it fetches (docs/link-protocol.md §2)."""
    _, gateway = deployment
    before = gateway.worker_pids()
    with gateway.client("app") as client:
        [created] = succeeded_v21(client, create_l4())
        token = created.unique_identifier
        [sealed] = succeeded_v21(client, encrypt(token, b"a record"))
        succeeded_v21(client, revoke(token, RevocationReasonCode.CESSATION_OF_OPERATION),
                      destroy(token))
    killed_index, killed = 1, before[1]
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: gateway.worker_pids()[killed_index] != killed,
               "the killed worker to be started again", timeout=15.0)
    gateway.wait_linked(more_than=2)
    new = gateway.worker_pids()[killed_index]
    uses = (get(token), encrypt(token, b"more"), decrypt_sealed(token, sealed))
    served: set[int | None] = set()
    with ExitStack() as stack:
        for _ in range(40):
            client = connect(stack, gateway)
            answers = send_v21(client, *uses)
            assert refusals(answers) == [ResultReason.OBJECT_NOT_FOUND] * 3, \
                [a.result_message for a in answers]
            served.add(serving_pid(client, list(gateway.worker_pids().values())))
            if new in served:
                break
    assert new in served, "no connection reached the restarted worker"


def survivor_serves(client: KmipClient, token: str) -> bool:
    [sealed] = succeeded_v21(client, encrypt(token, b"still here"))
    return isinstance(sealed, EncryptResponse) and bool(sealed.data)


# (d) ---------------------------------------------------------------------------------------------
def test_sigterm_to_the_supervisor_stops_every_worker(deployment) -> None:
    _, gateway = deployment
    assert gateway.process is not None
    workers = list(gateway.worker_pids().values())
    assert all(alive(pid) for pid in workers)
    gateway.process.send_signal(signal.SIGTERM)
    gateway.process.wait(timeout=20)
    wait_until(lambda: not any(alive(pid) for pid in workers), "every worker to exit", 5.0)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", gateway.port),
                                                          timeout=1):
        pass
    log = gateway.log.read_text()
    for index, pid in gateway.worker_pids().items():
        assert f"kcm-gateway worker {index} (pid {pid}) stopped: " in log
    gateway.process = None


def test_a_killed_supervisor_takes_its_workers_with_it(deployment) -> None:
    _, gateway = deployment
    assert gateway.process is not None
    workers = list(gateway.worker_pids().values())
    gateway.process.send_signal(signal.SIGKILL)
    gateway.process.wait(timeout=20)
    wait_until(lambda: not any(alive(pid) for pid in workers), "every worker to exit", 10.0)
    assert gateway.log.read_text().count("the kcm-gateway supervisor is gone") == 2
    gateway.process = None



@pytest.mark.serial  # asserts timings: run alone, after the parallel part of `make test`
def test_sighup_restarts_the_workers_one_at_a_time_and_new_connections_are_served_throughout(
        deployment) -> None:
    """SIGHUP: worker 1 is stopped (SIGTERM) and started again, and only once the new one
    is up is worker 2 restarted; a client that opens a new connection for every request
    all the while is answered every time (by whichever worker is not restarting)."""
    _, gateway = deployment
    assert gateway.process is not None
    before = gateway.worker_pids()
    done = threading.Event()
    served: list[str] = []
    failed: list[str] = []

    def keep_connecting() -> None:
        while not done.is_set():
            try:
                with gateway.client("app") as client:
                    [created] = succeeded_v21(client, create_l4())
                served.append(created.unique_identifier)
            except Exception as e:  # what a client would see: counted, and the test fails
                failed.append(repr(e))

    client_thread = threading.Thread(target=keep_connecting)
    client_thread.start()
    try:
        wait_until(lambda: len(served) >= 5, "the client to be served before the SIGHUP")
        gateway.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "every kcm-gateway worker was restarted" in gateway.log.read_text(),
                   "the rolling restart to finish", timeout=40.0)
        count = len(served)
        wait_until(lambda: len(served) >= count + 5, "the client to be served after it")
    finally:
        done.set()
        client_thread.join(timeout=30)
    assert failed == [], failed[:5]
    after = gateway.worker_pids()
    assert set(after) == {1, 2} and not set(after.values()) & set(before.values())
    assert gateway.process.poll() is None  # the supervisor itself kept running
    log = gateway.log.read_text()
    steps = [f"restarting kcm-gateway worker 1 (pid {before[1]})",
             f"kcm-gateway worker 1 (pid {before[1]}) exited as asked",
             "kcm-gateway worker 1 is up again",
             f"restarting kcm-gateway worker 2 (pid {before[2]})",
             f"kcm-gateway worker 2 (pid {before[2]}) exited as asked",
             "kcm-gateway worker 2 is up again",
             "every kcm-gateway worker was restarted"]
    at = [log.index(step) for step in steps]
    assert at == sorted(at), steps
    print(f"\n{len(served)} connections served, none failed, through the rolling restart")


# busy polling ---------------------------------------------------------------------------------
WINDOW_US = 700


@pytest.fixture
def polling_deployment(tmp_path: Path) -> Iterator[tuple[CoreProcess, GatewayProcess]]:
    """As :func:`deployment`, with ``busy_poll_us`` set."""
    yield from two_workers(tmp_path, metrics_port=free_port(),
                           settings={"busy_poll_us": WINDOW_US})


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _spins(gateway: GatewayProcess) -> dict[tuple[str, str], float]:
    """The workers' busy-poll counts from the supervisor's metrics listener: by (worker,
    how the spins ended), and (worker, "seconds")."""
    assert gateway.metrics_port is not None
    status, body = scrape(gateway.metrics_port)
    assert status == 200
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "kcm_gateway_busy_poll_spins_total":
                found[(sample.labels["worker"], sample.labels["ended"])] = sample.value
            elif sample.name == "kcm_gateway_busy_poll_seconds_total":
                found[(sample.labels["worker"], "seconds")] = sample.value
    return found


def _log_lines(gateway: GatewayProcess) -> list[dict]:
    return [json.loads(line) for line in gateway.log.read_text().splitlines()
            if line.startswith("{")]


@pytest.mark.serial  # asserts timings: run alone, after the parallel part of `make test`
def test_with_busy_poll_each_worker_polls_serves_as_usual_and_rests_when_idle(
        polling_deployment) -> None:
    """``busy_poll_us``: each worker (not the supervisor) says it polls before it sleeps,
    answers L4 and forwarded requests as usual, catches events while it spins (its
    metrics count them), and spends next to no CPU once its clients are idle (the spin
    ends one window after the last event)."""
    _, gateway = polling_deployment
    said = [line for line in _log_lines(gateway) if "busy_poll_us" in line.get("text", "")]
    # Each worker says it polls; the supervisor (which only hands connections over) does not.
    assert sorted(line.get("worker") for line in said) == [1, 2], said
    assert all(f"{WINDOW_US} us" in line["text"] for line in said)
    pids = list(gateway.worker_pids().values())
    with ExitStack() as stack:
        clients = one_client_per_worker(stack, gateway)
        for _ in range(20):
            for client in clients.values():
                [created] = succeeded_v21(client, create_l4())
                token = created.unique_identifier
                [sealed] = succeeded_v21(client, encrypt(token, b"a record"))
                [opened] = succeeded_v21(client, decrypt_sealed(token, sealed))
                assert opened.data == b"a record"
        for client in clients.values():  # forwarded whole to the core
            [managed] = succeeded_v21(client, create_managed())
            [found] = succeeded_v21(client, locate())
            assert managed.unique_identifier in found.unique_identifiers
        # Each worker caught some of those events while it spun, without sleeping.
        spins = _spins(gateway)
        print(f"\nspins by worker and end: {spins}")
        for worker in ("1", "2"):
            assert spins[(worker, "event")] > 0, spins
            assert spins[(worker, "seconds")] > 0, spins
        # Idle connections: a worker spins one window after its last event, then sleeps.
        time.sleep(0.2)
        before = {pid: _cpu_seconds(pid) for pid in pids}
        time.sleep(2.0)
        spent = {pid: _cpu_seconds(pid) - before[pid] for pid in pids}
    print(f"\nCPU seconds over 2 s idle, by worker: {spent}")
    # Spinning throughout would be 2 s each; timers (usage reports, key refresh) cost a
    # few ms, each followed by at most one window.
    assert all(seconds < 0.2 for seconds in spent.values()), spent


# pinned workers ----------------------------------------------------------------------------------
@pytest.fixture
def pinned_deployment(tmp_path: Path) -> Iterator[tuple[CoreProcess, GatewayProcess]]:
    """As :func:`deployment`, with ``pin_workers = "always"`` and metrics."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("pinning two workers apart needs two usable CPUs (CI machines have 2)")
    yield from two_workers(tmp_path, metrics_port=free_port(),
                           settings={"pin_workers": "always"})


def _allowed_cpus(pid: int) -> set[str]:
    """The CPU lists every thread of ``pid`` may run on (``Cpus_allowed_list``)."""
    lists = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                lists.add(line.split(":", 1)[1].strip())
    return lists


def _connect_from(stack: ExitStack, gateway: GatewayProcess, cpu: int) -> KmipClient:
    """A client connected (and served once) from a thread that runs on ``cpu`` only."""
    client = stack.enter_context(gateway.client())

    def connect() -> None:
        os.sched_setaffinity(0, {cpu})  # this thread only
        client.connect()
        succeeded_v21(client, locate())

    thread = threading.Thread(target=connect)
    thread.start()
    thread.join(timeout=30)
    assert client._socket is not None, "the client did not connect"
    return client


def _handoffs(gateway: GatewayProcess) -> dict[tuple[str, str], float]:
    assert gateway.metrics_port is not None
    status, body = scrape(gateway.metrics_port)
    assert status == 200
    return {(sample.labels["worker"], sample.labels["by"]): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples if sample.name == "kcm_gateway_handoffs_total"}


@pytest.mark.serial  # asserts timings: run alone, after the parallel part of `make test`
def test_pinned_workers_each_run_on_a_cpu_and_get_the_connections_arriving_there(
        pinned_deployment) -> None:
    """``pin_workers``: worker 1 runs on the first usable CPU only and worker 2 on the
    second (every thread of each, as each says in its log); a client connecting from a
    thread on one of those CPUs is served by the worker pinned there (read from the kernel),
    and the supervisor counts those handoffs as by CPU. Clients that all connect from one
    CPU still reach both workers (5/3 for eight)."""
    _, gateway = pinned_deployment
    first, second = sorted(os.sched_getaffinity(0))[:2]
    pids = gateway.worker_pids()
    assert _allowed_cpus(pids[1]) == {str(first)} and _allowed_cpus(pids[2]) == {str(second)}
    said = {line.get("worker"): line["text"] for line in _log_lines(gateway)
            if "pin_workers" in line.get("text", "")}
    assert said == {1: f"kcm-gateway runs on CPU {first} only (pin_workers)",
                    2: f"kcm-gateway runs on CPU {second} only (pin_workers)"}, said
    with ExitStack() as stack:
        by_cpu: dict[int, list[KmipClient]] = {first: [], second: []}
        for _ in range(4):  # as two client threads on two CPUs open their pools
            for cpu in (first, second):
                by_cpu[cpu].append(_connect_from(stack, gateway, cpu))
        served = {cpu: [serving_pid(client, list(pids.values())) for client in clients]
                  for cpu, clients in by_cpu.items()}
        print(f"\nworkers serving connections from each CPU: {served}")
        assert served == {first: [pids[1]] * 4, second: [pids[2]] * 4}, served
        # Each serves as usual: L4 and forwarded requests.
        for clients in by_cpu.values():
            [created] = succeeded_v21(clients[0], create_l4())
            [sealed] = succeeded_v21(clients[0], encrypt(created.unique_identifier, b"rec"))
            [opened] = succeeded_v21(clients[-1], decrypt_sealed(created.unique_identifier,
                                                                  sealed))
            assert opened.data == b"rec"
            [managed] = succeeded_v21(clients[-1], create_managed())
            assert not managed.unique_identifier.startswith(("l4.", "l3-"))
        handoffs = _handoffs(gateway)
        assert handoffs.get(("1", "cpu"), 0) >= 4 and handoffs.get(("2", "cpu"), 0) >= 4, handoffs
        # Eight more from one CPU only (once the workers' reports of connections that
        # closed, every 0.2 s at most, have reached the supervisor: each holds 4): the
        # worker there takes them while it holds at most NEAR_SLACK (2) above the other,
        # so 5/3.
        time.sleep(1.0)
        more = [_connect_from(stack, gateway, first) for _ in range(8)]
        counts = [sum(serving_pid(c, [pid]) == pid for c in more) for pid in pids.values()]
        print(f"\n8 more connections from CPU {first}, by worker: {counts}")
        assert counts == [5, 3], counts
