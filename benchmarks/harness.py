"""What the process benchmarks share (``core_bench.py``, ``gateway_bench.py``): servers seen from
the client side, load driven from client processes, answers checked, latencies recorded.

The servers themselves are started with :mod:`kcm.testing.processes`, as the end-to-end tests
start them. A scenario is a list of *plans*, one per client process: ``(server index, request
bytes)`` pairs sent back to back over one persistent mutual-TLS connection per server. Every
client is its own process (multiprocessing, fork), so client-side Python never shares a GIL
with another client. Latencies are per request, client side, in HDR histograms (ns, 3
significant digits); every answer is checked afterwards, untimed.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import multiprocessing.synchronize
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from kcm.conformance.client import KmipClient, KmipClientError
from kcm.kmip.enums import Operation, ResultStatus
from kcm.kmip.tags import Tag
from kcm.pki import PkiPaths
from kcm.testing.requests import get_attributes, request, response
from kcm.testing.unix_client import UnixKmipClient

#: Seconds client processes wait for each other at the start (and end) of a timed part.
START_TIMEOUT = 30.0
#: Untimed requests each client sends on each connection before the clock starts.
WARMUP = 200
#: Objects read back after a scenario to check what the server stored.
VERIFY_SAMPLE = 50
#: "other load" (:attr:`Outcome.foreign_cores`: cores busy with anything but the watched
#: servers and the clients) above which a row was disturbed: a target judged from it is
#: printed UNDECIDED (:func:`verdict`) rather than met or not met.
OTHER_LOAD_LIMIT = 0.1
#: What the latencies are, for the benchmarks' printed headers.
LATENCY_METHOD = ("latencies are closed-loop service times: each connection has one request "
                  "in flight and sends the next when the answer is in, and coordinated "
                  "omission is not corrected (a stall delays the requests behind it rather "
                  "than showing in their latencies)")


def parse_args(parser: argparse.ArgumentParser, **defaults: tuple[Any, Any]
               ) -> argparse.Namespace:
    """Add ``--keep``, ``--quick`` and ``--cpu-latency-us`` to ``parser`` and parse the
    command line. An option named in ``defaults`` that was not given takes ``(full run,
    quick run)[--quick]``."""
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--quick", action="store_true",
                        help="a short run proving the benchmark works (figures mean little)")
    add_cpu_latency_option(parser)
    args = parser.parse_args()
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    hold_cpu_latency(args.cpu_latency_us)
    return args


def add_cpu_latency_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cpu-latency-us", type=int, default=None, metavar="N",
        help="hold a PM QoS CPU latency request of N microseconds for the run "
             "(/dev/cpu_dma_latency, root only): idle CPUs stay in states they leave within "
             "N us, as tuned's latency-performance profile does (docs/operations.md); "
             "default: the machine's idle states as they are")


#: The open /dev/cpu_dma_latency, whose request holds while it is open (until the run ends).
_CPU_LATENCY_REQUEST: list[int] = []


def hold_cpu_latency(microseconds: int | None) -> None:
    """With ``microseconds``, ask the kernel for at most that CPU wake-up latency until this
    process exits (it drops the request when the file closes), and say so."""
    if microseconds is None:
        return
    fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    os.write(fd, microseconds.to_bytes(4, "little", signed=True))
    _CPU_LATENCY_REQUEST.append(fd)
    print(f"# CPU latency request held for the run: {microseconds} us "
          f"(/dev/cpu_dma_latency; figures are not the machine's default)")


@contextlib.contextmanager
def work_directory(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary directory for the servers' files, removed afterwards unless ``keep``."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if keep:
            print(f"# kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


@dataclass
class Server:
    """A running KMIP server on loopback and how a client reaches it."""

    name: str
    port: int
    pki: PkiPaths
    pid: int
    #: Count the CPU time of the process's live children too (a kcm-gateway supervisor's
    #: workers).
    with_children: bool = False
    #: The Unix stream socket the server listens on instead of ``port`` (None: TCP).
    path: str | None = None

    def client(self) -> KmipClient:
        if self.path is not None:
            return UnixKmipClient(self.path, cert=self.pki.app.cert, key=self.pki.app.key,
                                  ca=self.pki.ca.cert)
        return KmipClient("127.0.0.1", self.port, cert=self.pki.app.cert, key=self.pki.app.key,
                          ca=self.pki.ca.cert)

    def cpu_seconds(self) -> float:
        """CPU time the server process (and with :attr:`with_children`, its live children)
        has used so far, in nanoseconds' resolution (:func:`process_cpu_ns`)."""
        pids = [self.pid] + (_children(self.pid) if self.with_children else [])
        return sum(process_cpu_ns(pid) for pid in pids) / 1e9


#: What :meth:`Server.cpu_seconds` reads, for the benchmarks' printed headers.
CPU_SOURCE = ("server CPU is the scheduler's run time in ns (the process's CPU clock, "
              "clock_gettime of its CLOCK_PROCESS_CPUTIME_ID), not /proc/PID/stat's 10 ms ticks")


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state is [0], ppid [1])."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu_ns(pid: int) -> int:
    """Nanoseconds of CPU process ``pid`` has run so far, all its threads (0 once it is gone).

    The scheduler's own count (``sum_exec_runtime``, what /proc/PID/task/*/schedstat's first
    field shows per thread), read through the process's CPU clock (``clock_getcpuclockid``:
    Linux makes its id from the pid), which also keeps the time of threads that have already
    exited; summing the live threads' schedstat would lose it (a thread that ends between
    two readings would make the second smaller). /proc/PID/stat's utime + stime is the same
    in 10 ms ticks: a request costing 50-300 µs would be counted to within 10 ms over the
    whole scenario only. Falls back to the live threads' schedstat, then to the ticks, where
    the clock cannot be read."""
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2)  # CPUCLOCK_SCHED of the process
    except OSError:
        pass
    try:
        return sum(int((task / "schedstat").read_text().split()[0])
                   for task in Path(f"/proc/{pid}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        pass
    try:
        fields = _stat(pid)
    except FileNotFoundError:  # a child that has just exited
        return 0
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    children.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    return children


def machine_busy() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, stat.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def send(server: Server, wire: bytes) -> bytes:
    """One request on a connection of its own: the answer."""
    with server.client() as client:
        return client.send(wire)


# --- checking answers ---------------------------------------------------------------------------

#: Checks one answer to one request; returns None when it is right, else what is wrong.
Check = Callable[[bytes, bytes], "str | None"]


def payload_of(operation: Operation, wire_response: bytes) -> Any:
    """The response payload of a one-item answer for ``operation``; ValueError otherwise."""
    message = response(wire_response)
    if len(message.batch_items) != 1:
        raise ValueError(f"{len(message.batch_items)} batch items")
    item = message.batch_items[0]
    if item.result_status != ResultStatus.SUCCESS:
        status = getattr(item.result_status, "name", item.result_status)
        reason = getattr(item.result_reason, "name", item.result_reason)
        raise ValueError(f"{status} {reason}: {item.result_message}")
    if item.operation != operation:
        raise ValueError(f"answer for {item.operation!r}, not {operation!r}")
    return item.response_payload


def verdict(met: bool, *rows: Outcome) -> str:
    """"met" or "NOT met" for a target judged from ``rows``; "UNDECIDED" instead when the
    other load of any of them was above :data:`OTHER_LOAD_LIMIT` (the machine was busy with
    other work, so the figure says little either way)."""
    busy = max((row.foreign_cores for row in rows), default=0.0)
    if busy > OTHER_LOAD_LIMIT:
        return f"UNDECIDED (machine busy: other load {busy:.2f})"
    return "met" if met else "NOT met"


def kmip_check(operation: Operation, expect: Callable[[bytes, Any], str | None]) -> Check:
    """A check that the answer is a success for ``operation`` and that ``expect(request,
    payload)`` finds nothing wrong with its payload."""
    def check(wire_request: bytes, wire_response: bytes) -> str | None:
        try:
            return expect(wire_request, payload_of(operation, wire_response))
        except Exception as e:  # noqa: BLE001 - a failure to count, whatever it is
            return str(e) or repr(e)
    return check


def states_of(payload: Any) -> list[int]:
    """The State values in a Get Attributes answer's payload."""
    return [a.value.value for a in payload.attributes or [] if a.tag == Tag.STATE]


def state_is(expected: int) -> Callable[[bytes, Any], str | None]:
    """For :func:`kmip_check` of Get Attributes (State): the one State is ``expected``."""
    def check(_: bytes, payload: Any) -> str | None:
        states = states_of(payload)
        return None if states == [expected] else f"State {states}, expected {expected!r}"
    return check


def verify_states(server: Server, identifiers: list[str], expected: int | None,
                  version: tuple[int, int]) -> list[str]:
    """Read back a sample of objects' State with Get Attributes (KMIP ``version``): present,
    and ``expected`` when given. What is wrong, per object."""
    problems = []
    sample = random.Random(0).sample(identifiers, min(VERIFY_SAMPLE, len(identifiers)))
    with server.client() as client:
        for uid in sample:
            wire = request(get_attributes(uid, Tag.STATE), version=version)
            try:
                states = states_of(payload_of(Operation.GET_ATTRIBUTES, client.send(wire)))
            except (ValueError, KmipClientError) as e:
                problems.append(f"{uid}: {e}")
                continue
            if not states or (expected is not None and states[0] != expected):
                problems.append(f"{uid}: State {states}, expected {expected!r}")
    return problems


# --- driving the load ---------------------------------------------------------------------------

@dataclass
class ClientRun:
    """What one client process measured: latencies (ns) per connection, failures, CPU."""

    latencies_ns: dict[int, list[int]] = field(default_factory=dict)
    started_ns: int = 0
    finished_ns: int = 0
    failures: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0
    identifiers: list[str] = field(default_factory=list)
    #: With ``keep_answers``: that many answers that passed their check, spread over the run.
    answers: list[bytes] = field(default_factory=list)
    #: Machine-wide busy CPU and each watched server's CPU, read when the timed part began
    #: and when it ended (all clients together: see :func:`drive`).
    before: tuple[float, dict[str, float]] | None = None
    after: tuple[float, dict[str, float]] | None = None


def cpu_snapshot(watched: Sequence[Server]) -> tuple[float, dict[str, float]]:
    return machine_busy(), {server.name: server.cpu_seconds() for server in watched}


def drive(servers: Sequence[Server], plan: list[tuple[int, bytes]], check: Sequence[Check],
          start: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue,
          warmup: Sequence[bytes | None], warmup_requests: int, watched: Sequence[Server],
          keep_identifiers: bool, keep_answers: int = 0) -> None:
    """One client process: one persistent connection per server; untimed warm-up; then
    ``plan`` (server index, request) back to back, timing each; then, untimed, every answer
    checked with ``check[server index]``. All clients start the timed part together and wait
    for each other at its end, so CPU read between the two barriers is the timed load only."""
    run = ClientRun(latencies_ns={index: [] for index in range(len(servers))})
    answers: list[bytes] = []
    clients = [server.client() for server in servers]
    try:
        for client, warm in zip(clients, warmup, strict=True):
            client.connect()  # the TLS handshake is not part of any request's latency
            for _ in range(warmup_requests if warm else 0):
                client.send(warm)
        start.wait()
        run.before = cpu_snapshot(watched)
        clock = time.perf_counter_ns
        cpu_before = time.process_time()
        run.started_ns = time.monotonic_ns()
        for index, wire in plan:
            sent = clock()
            answers.append(clients[index].send(wire))
            run.latencies_ns[index].append(clock() - sent)
        run.finished_ns = time.monotonic_ns()
        run.cpu_seconds = time.process_time() - cpu_before
        start.wait()
        run.after = cpu_snapshot(watched)
    except (KmipClientError, threading.BrokenBarrierError) as e:
        start.abort()  # a client that cannot connect must not leave the others waiting
        run.finished_ns = time.monotonic_ns()
        run.failures.append(f"connection: {e!r}")
        run.failures.extend(["not sent"] * (len(plan) - len(answers) - 1))
    finally:
        for client in clients:
            client.close()
    for (index, wire_request), wire_response in zip(plan, answers, strict=False):
        problem = check[index](wire_request, wire_response)
        if problem:
            run.failures.append(problem)
        elif keep_identifiers:
            identifier = getattr(response(wire_response).batch_items[0].response_payload,
                                 "unique_identifier", None)
            run.identifiers.append(identifier or "")
    if keep_answers and answers:
        step = max(1, len(answers) // keep_answers)
        run.answers = [answer for (index, wire), answer
                       in list(zip(plan, answers, strict=False))[::step][:keep_answers]
                       if not check[index](wire, answer)]
    results.put(run)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1_000, 60_000_000_000, 3)  # 1 µs .. 60 s, in ns


@dataclass
class Outcome:
    """One scenario: per server, a histogram; overall, the wall time and CPU spent."""

    name: str
    clients: int
    requests: int
    failures: list[str]
    seconds: float
    histograms: list[HdrHistogram]
    client_cpu_seconds: float
    #: CPU each watched server process used meanwhile, by name.
    server_cpu_seconds: dict[str, float]
    #: CPU the rest of the machine used meanwhile (other work on it), in cores.
    foreign_cores: float
    #: With ``keep_identifiers``: the Unique Identifier of every answer that passed its check.
    identifiers: list[str]
    #: With ``keep_answers``: a sample of the answers that passed their check (untimed).
    answers: list[bytes] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.requests - len(self.failures)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def ms(self, percent: float, server: int = 0) -> float:
        """The ``percent`` percentile of the latencies at ``servers[server]``, in ms."""
        return self.histograms[server].get_value_at_percentile(percent) / 1e6


def load(name: str, servers: Sequence[Server], plans: list[list[tuple[int, bytes]]],
         check: Sequence[Check], watched: Sequence[Server],
         warmup: Sequence[bytes | None] | None = None, *, warmup_requests: int = WARMUP,
         keep_identifiers: bool = False, keep_answers: int = 0) -> Outcome:
    """Run one client process per plan, all together; gather the figures. ``warmup`` is a
    repeatable request per server (or None) each client sends ``warmup_requests`` times,
    untimed, first; ``keep_identifiers`` keeps the Unique Identifier of every good answer,
    ``keep_answers`` up to that many good answers per client, spread over its plan, for
    checks across answers made afterwards (both untimed)."""
    warmup = list(warmup) if warmup is not None else [None] * len(servers)
    context = multiprocessing.get_context("fork")
    start = context.Barrier(len(plans), timeout=START_TIMEOUT)
    results = context.Queue()
    workers = [context.Process(target=drive, args=(servers, plan, check, start, results, warmup,
                                                   warmup_requests, watched, keep_identifiers,
                                                   keep_answers))
               for plan in plans]
    for worker in workers:
        worker.start()
    runs = [results.get(timeout=1800) for _ in workers]
    for worker in workers:
        worker.join()
    # Counters only grow: the earliest reading at the start, the latest at the end.
    befores = [run.before for run in runs if run.before and run.after]
    afters = [run.after for run in runs if run.before and run.after]
    if befores:
        busy_before = min(busy for busy, _ in befores)
        busy_after = max(busy for busy, _ in afters)
        server_cpu = {server.name: max(cpu[server.name] for _, cpu in afters)
                      - min(cpu[server.name] for _, cpu in befores) for server in watched}
    else:  # a client failed to connect: no figures worth having
        busy_before = busy_after = 0.0
        server_cpu = {server.name: 0.0 for server in watched}
    histograms = []
    for index in range(len(servers)):
        histogram = new_histogram()
        for run in runs:
            for latency in run.latencies_ns[index]:
                histogram.record_value(max(1_000, latency))
        histograms.append(histogram)
    started = min((run.started_ns for run in runs if run.started_ns), default=0)
    finished = max(run.finished_ns for run in runs) if started else 0
    client_cpu = sum(run.cpu_seconds for run in runs)
    seconds = (finished - started) / 1e9
    foreign = (busy_after - busy_before) - sum(server_cpu.values()) - client_cpu
    return Outcome(name, len(plans), sum(len(plan) for plan in plans),
                   [failure for run in runs for failure in run.failures],
                   seconds, histograms, client_cpu, server_cpu,
                   max(0.0, foreign) / seconds if seconds else 0.0,
                   [uid for run in runs for uid in run.identifiers],
                   [answer for run in runs for answer in run.answers])


def split(server_index: int, requests: list[bytes], clients: int) -> list[list[tuple[int, bytes]]]:
    """``requests`` to one server, dealt round-robin into ``clients`` plans."""
    return [[(server_index, wire) for wire in requests[i::clients]] for i in range(clients)]


def merge(outcomes: list[Outcome]) -> Outcome:
    """Several rounds of one scenario as one outcome (histograms added, times summed)."""
    first = outcomes[0]
    histograms = []
    for index in range(len(first.histograms)):
        histogram = new_histogram()
        for outcome in outcomes:
            histogram.add(outcome.histograms[index])
        histograms.append(histogram)
    server_cpu = {name: sum(o.server_cpu_seconds[name] for o in outcomes)
                  for name in first.server_cpu_seconds}
    seconds = sum(o.seconds for o in outcomes)
    return Outcome(first.name, first.clients, sum(o.requests for o in outcomes),
                   [f for o in outcomes for f in o.failures], seconds, histograms,
                   sum(o.client_cpu_seconds for o in outcomes), server_cpu,
                   sum(o.foreign_cores * o.seconds for o in outcomes) / seconds if seconds
                   else 0.0, [uid for o in outcomes for uid in o.identifiers],
                   [answer for o in outcomes for answer in o.answers])
