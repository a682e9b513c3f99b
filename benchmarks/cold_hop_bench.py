"""What one TLS hop costs a Python server whose caches another process has just used.

A forwarded request wakes the gateway twice (the client's request, the core's answer), each
time right after another process ran: the client, or the core, whose request takes
milliseconds of its own CPU. This measures the server CPU per request of three servers on
loopback, first back to back (the server alone on the machine between its requests), then
with one Get Attributes sent to kcm-core directly between each of its requests:

* the bare Twisted TLS echo on ``kcm.eager_tls`` (``gateway_bench.py``'s), answering the L4
  Encrypt request's bytes;
* an L4 Encrypt at kcm-gateway;
* a Get Attributes forwarded by kcm-gateway (interleaved only with itself: the core's own
  work is then between every two gateway turns).

CPU is read from /proc for the server process (user + system), one sequential client.

    .venv/bin/python benchmarks/cold_hop_bench.py [--requests N] [--rounds R] [--keep]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.gateway_bench import start_echo  # noqa: E402
from benchmarks.harness import Server, payload_of, send, work_directory  # noqa: E402
from kcm.conformance.client import KmipClient  # noqa: E402
from kcm.kmip.enums import Operation  # noqa: E402
from kcm.kmip.tags import Tag  # noqa: E402
from kcm.testing.processes import CoreProcess, GatewayProcess, deploy, stop_process  # noqa: E402
from kcm.testing.requests import (  # noqa: E402
    create_l4,
    create_managed,
    encrypt,
    get_attributes,
    request,
)


def cpu_per_request(server: Server, timed: KmipClient,
                    plan: list[tuple[KmipClient, bytes]]) -> float:
    """Send ``plan`` in order; the server's CPU µs per request sent with ``timed``."""
    before = server.cpu_seconds()
    count = 0
    for client, wire in plan:
        client.send(wire)
        count += client is timed
    return 1e6 * (server.cpu_seconds() - before) / count


def measure(args: argparse.Namespace, work: Path) -> None:
    core: CoreProcess | None = None
    gateway_process: GatewayProcess | None = None
    echo_process: subprocess.Popen | None = None
    try:
        core = deploy(work / "core", f"sqlite:///{work / 'core' / 'kcm.db'}")
        core.start()
        gateway_process = GatewayProcess(work / "gateway", core)
        gateway_process.start()
        gateway_process.wait_linked()
        echo_process, echo_port = start_echo(core.pki, work, eager=True)
        assert core.process is not None and gateway_process.process is not None
        gateway = Server("gateway", gateway_process.port, core.pki,
                         gateway_process.process.pid)
        direct = Server("core", core.port, core.pki, core.process.pid)
        echo = Server("echo", echo_port, core.pki, echo_process.pid)
        managed = payload_of(Operation.CREATE,
                             send(direct, request(create_managed()))).unique_identifier
        get_state = request(get_attributes(managed, Tag.STATE))
        token = payload_of(Operation.CREATE,
                           send(gateway, request(create_l4()))).unique_identifier
        encrypt_wire = request(encrypt(token, os.urandom(256)))
        to_gateway, to_core, to_echo = gateway.client(), direct.client(), echo.client()
        for client in (to_gateway, to_core, to_echo):
            client.connect()
        for _ in range(200):  # warm-up, untimed
            to_gateway.send(get_state)
            to_gateway.send(encrypt_wire)
            to_core.send(get_state)
            to_echo.send(encrypt_wire)
        n = args.requests
        print(f"# server CPU µs per request, {n} requests per row, sequential, loopback")
        print(f"{'round':>5} {'echo':>8} {'echo, core between':>19} {'L4 Encrypt':>11} "
              f"{'Encrypt, core between':>22} {'forwarded GetAttr':>18}")
        for round_number in range(args.rounds):
            row = [
                cpu_per_request(echo, to_echo, [(to_echo, encrypt_wire)] * n),
                cpu_per_request(echo, to_echo,
                                [(to_core, get_state), (to_echo, encrypt_wire)] * n),
                cpu_per_request(gateway, to_gateway, [(to_gateway, encrypt_wire)] * n),
                cpu_per_request(gateway, to_gateway,
                                [(to_core, get_state), (to_gateway, encrypt_wire)] * n),
                cpu_per_request(gateway, to_gateway, [(to_gateway, get_state)] * n),
            ]
            print(f"{round_number + 1:>5} {row[0]:8.0f} {row[1]:19.0f} {row[2]:11.0f} "
                  f"{row[3]:22.0f} {row[4]:18.0f}", flush=True)
        for client in (to_gateway, to_core, to_echo):
            client.close()
    finally:
        stop_process(echo_process, timeout=10)
        if gateway_process is not None:
            gateway_process.stop()
        if core is not None:
            core.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    with work_directory("kcm-cold-hop-bench-", args.keep) as work:
        measure(args, work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
