"""What forwarding costs on this machine, with and without an interpreter on the way.

The same Get Attributes of one managed key, sent by one client one request at a time on
each of five paths:

* ``core``: kcm-core's KMIP port directly;
* ``gateway``: through kcm-gateway (classification, the link's frames and streams);
* ``relay``: through the bare TLS relay of ``benchmarks/gateway_bench.py`` (Python, the
  gateway's transport and reactor dispatch; no KMIP, no framing, a connection to the core
  per client);
* ``in-process``: through the Python relay above, which hands both connections, after the
  first request, to a thread of its own process running ``benchmarks/inprocess_splice.c``:
  the C relay's loop with no Python on the way (what a forward path in native code inside
  the gateway's process would cost);
* ``native``: through ``benchmarks/native_relay.c`` (the same splice in C and OpenSSL, a
  thread per client connection, a process of its own; built on first use into
  ``.bench-build/``, which needs OpenSSL's headers: Debian's ``libssl-dev``).

Each path alone for a block of ``--requests``, the five in another order each round; every
answer is checked afterwards (Success, State Pre-Active). It prints each round's p50 per
path and, over the rounds, the median of what each way adds at p50 over the core directly:
the gateway's against the floors of a relay through Python, of native code inside a Python
process, and of a process that never enters an interpreter (docs/benchmarks.md,
"Forwarding measured in steady state" and "Native code inside the gateway's process").

    .venv/bin/python benchmarks/forward_floor_bench.py [--requests N] [--rounds R]
        [--cpu-latency-us N] [--busy-poll-us N] [--keep]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.gateway_bench import _RELAY_SERVER, start_relay  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    Server,
    add_cpu_latency_option,
    hold_cpu_latency,
    kmip_check,
    payload_of,
    send,
    state_is,
    work_directory,
)
from benchmarks.native_client import build  # noqa: E402
from kcm.kmip.enums import Operation, State  # noqa: E402
from kcm.kmip.tags import Tag  # noqa: E402
from kcm.testing import processes  # noqa: E402
from kcm.testing.processes import (  # noqa: E402
    free_port,
    start_python_server,
    stop_process,
    wait_listening,
)
from kcm.testing.requests import create_managed, get_attributes, request  # noqa: E402

NATIVE_RELAY = Path(__file__).with_name("native_relay.c")
INPROCESS_SPLICE = Path(__file__).with_name("inprocess_splice.c")

#: What the in-process relay writes to its log each time it hands a client's connections over.
HANDED = "connections handed to the native thread"

# The bare relay of gateway_bench.py, which after relaying a client's request (in the next
# reactor turn, outside the TLS layer's calls; the first one that finds both handshakes done
# and nothing buffered) hands its two connections to a thread of inprocess_splice.c: Twisted
# stops reading them, they are made blocking and their TLS objects read and write the
# sockets themselves (SSL_set_fd, which frees the memory buffers they had: the TLS layer is
# told it has none any more), and the thread copies every byte after that. The handed
# connections are kept for the life of the process.
_INPROCESS_RELAY = _RELAY_SERVER.replace("""/ 1e6)
""", """/ 1e6)
import ctypes
from OpenSSL._util import ffi, lib
from kcm import eager_tls

splice_library = ctypes.CDLL(sys.argv.pop())
HANDED = HANDED_TEXT
def _pointer(value, kind=None):
    return ctypes.c_void_p(int(ffi.cast("uintptr_t", ffi.cast(kind, value) if kind else value)))
assert splice_library.kcm_splice_configure(
    _pointer(lib.SSL_read, "int(*)(void *, void *, int)"),
    _pointer(lib.SSL_write, "int(*)(void *, void *, int)"),
    _pointer(lib.SSL_pending, "int(*)(void *)")) == 0
handed = []

def hand_over(client_tls, core_tls):
    ends = []
    for tls in (client_tls, core_tls):
        if (tls._ssl is None or not tls._handshakeDone or tls._appSendBuffer
                or lib.SSL_pending(tls._ssl) or eager_tls._buffered(tls._into_bio)
                or eager_tls._buffered(tls._out_bio) or tls._send_now_on() < 0):
            return False  # (a handshake going on, something unread or unsent: not yet)
        ends.append(tls)
    ssl = [tls._ssl for tls in ends]
    for tls in ends:
        reactor.removeReader(tls.transport)
        tls.transport.socket.setblocking(True)
        assert lib.SSL_set_fd(tls._ssl, tls.transport.socket.fileno()) == 1
        # (SSL_set_fd freed the memory buffers: the TLS layer must never reach them again)
        tls._ssl = tls._into_bio = tls._out_bio = None
        tls._c_ssl = tls._c_into = tls._c_out = 0
    handed.append((ends, ssl))
    sys.stderr.write(f"{HANDED}\\n")
    sys.stderr.flush()
    (client, core) = ends
    assert splice_library.kcm_splice_start(client.transport.socket.fileno(), _pointer(ssl[0]),
                                           core.transport.socket.fileno(), _pointer(ssl[1])) == 0
    return True
""").replace("""        else:
            self.core.transport.write(data)
""", """        else:
            self.core.transport.write(data)
            if not getattr(self, "handing", False):  # once out of the TLS layer's calls
                self.handing = True
                reactor.callLater(0, self.hand_over)

    def hand_over(self):
        self.handing = hand_over(self.transport, self.core.transport)  # (True: done)
""").replace("HANDED_TEXT", repr(HANDED))
assert "def hand_over(client_tls" in _INPROCESS_RELAY and "self.hand_over)" in _INPROCESS_RELAY, \
    "gateway_bench's relay script changed: update this one"


def start_native_relay(core: processes.CoreProcess, work: Path) -> tuple[subprocess.Popen, int]:
    """The C relay in front of ``core``'s KMIP port, on a port of its own."""
    binary = build(NATIVE_RELAY)
    pki, port, log = core.pki, free_port(), work / "native-relay.log"
    output = open(log, "ab")  # noqa: SIM115 - owned by the child process
    process = subprocess.Popen(
        [str(binary), str(port), str(pki.gateway.cert), str(pki.gateway.key), str(pki.ca.cert),
         str(core.port), str(pki.app.cert), str(pki.app.key), "localhost"],
        stdout=output, stderr=subprocess.STDOUT)
    wait_listening(process, [port], "native relay", log)
    return process, port


def start_inprocess_relay(core: processes.CoreProcess, work: Path
                          ) -> tuple[subprocess.Popen, int]:
    """The Python relay whose connections a thread of native code splices (see
    :data:`_INPROCESS_RELAY`), in front of ``core``'s KMIP port, on a port of its own."""
    library = build(INPROCESS_SPLICE, library=True)
    pki, port = core.pki, free_port()
    process = start_python_server(
        _INPROCESS_RELAY, [str(pki.gateway.cert), str(pki.gateway.key), str(pki.ca.cert),
                           str(port), str(pki.app.cert), str(pki.app.key), str(core.port),
                           "localhost", str(library)],
        port, "in-process relay", work / "inprocess-relay.stderr")
    return process, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per path a round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--busy-poll-us", type=int, default=0, metavar="N",
                        help="the gateway's busy_poll_us, and the Python relays' (default 0)")
    add_cpu_latency_option(parser)
    args = parser.parse_args()
    if args.busy_poll_us:
        os.environ["KCM_BENCH_BUSY_POLL_US"] = str(args.busy_poll_us)  # (the relay scripts)
        print(f"# busy_poll_us = {args.busy_poll_us}: the gateway and the Python relays poll "
              f"that long before they sleep (the core does not)")
    hold_cpu_latency(args.cpu_latency_us)
    core = gateway = None
    relays: list[subprocess.Popen] = []
    with work_directory("kcm-forward-floor-", args.keep) as work:
        try:
            core = processes.deploy(work / "core", f"sqlite:///{work / 'core' / 'kcm.db'}")
            core.start()
            gateway = processes.GatewayProcess(work / "gateway", core,
                                               settings={"busy_poll_us": args.busy_poll_us})
            gateway.start()
            gateway.wait_linked()
            relay, relay_port = start_relay(core.pki, work, core)
            relays.append(relay)
            inprocess, inprocess_port = start_inprocess_relay(core, work)
            relays.append(inprocess)
            native, native_port = start_native_relay(core, work)
            relays.append(native)
            assert core.process is not None and gateway.process is not None
            servers = {"core": Server("core", core.port, core.pki, core.process.pid),
                       "gateway": Server("gateway", gateway.port, core.pki,
                                         gateway.process.pid),
                       "relay": Server("relay", relay_port, core.pki, relay.pid),
                       "in-process": Server("in-process", inprocess_port, core.pki,
                                            inprocess.pid),
                       "native": Server("native", native_port, core.pki, native.pid)}
            managed = payload_of(Operation.CREATE, send(servers["core"], request(
                create_managed()))).unique_identifier
            wire = request(get_attributes(managed, Tag.STATE))
            clients = {name: server.client() for name, server in servers.items()}
            for name, client in clients.items():
                try:
                    client.connect()
                    for _ in range(200):  # warm-up, untimed
                        client.send(wire)
                except Exception as e:
                    raise RuntimeError(f"the {name} path failed in its warm-up: {e}") from e
            check = kmip_check(Operation.GET_ATTRIBUTES, state_is(State.PRE_ACTIVE))
            failed: dict[str, list[str]] = {name: [] for name in clients}
            orders = list(itertools.permutations(clients))
            print(f"# {args.requests} Get Attributes per path a round, each path alone",
                  flush=True)
            added: dict[str, list[float]] = {name: [] for name in clients if name != "core"}
            every: dict[str, list[int]] = {name: [] for name in clients}
            for round_number in range(args.rounds):
                p50: dict[str, float] = {}
                for name in orders[round_number * (len(orders) - 1) % len(orders)]:
                    client, latencies, answers = clients[name], [], []
                    for _ in range(args.requests):
                        sent = time.perf_counter_ns()
                        answers.append(client.send(wire))
                        latencies.append(time.perf_counter_ns() - sent)
                    p50[name] = statistics.median(latencies) / 1e6
                    every[name].extend(latencies)
                    failed[name].extend(problem for answer in answers
                                        if (problem := check(wire, answer)) is not None)
                for name in added:
                    added[name].append(p50[name] - p50["core"])
                print(f"round {round_number + 1}: core p50 {p50['core']:.3f} ms; " + "; ".join(
                    f"{name} {p50[name]:.3f} ({p50[name] - p50['core']:+.3f})"
                    for name in added), flush=True)
            for client in clients.values():
                client.close()
            print("# median p50 added over the core: " + "; ".join(
                f"{name} {statistics.median(values):+.3f} ms"
                for name, values in added.items()))
            p99 = {name: sorted(values)[int(len(values) * 0.99)] / 1e6
                   for name, values in every.items()}
            print("# p99 over all rounds: " + "; ".join(
                f"{name} {value:.3f} ms" for name, value in p99.items()))
            log = (work / "inprocess-relay.stderr").read_text(errors="replace")
            if HANDED not in log:  # it relayed in Python all along: not the path it names
                failed["in-process"].append("the relay never handed its connections over")
            failures = sum(len(problems) for problems in failed.values())
            print(f"{failures} failed answers" + "".join(
                f"; {name}: {problems[0]} ({len(problems)})"
                for name, problems in failed.items() if problems))
            if failures:
                return 1
        finally:
            for process in relays:
                stop_process(process, timeout=10)
            if gateway is not None:
                gateway.stop()
            if core is not None:
                core.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
