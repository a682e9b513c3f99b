"""kcm-core's two ways in, side by side: the same request over the link, as a gateway sends
it, and over a direct KMIP connection.

A forwarded request's cost over the core directly (``gateway_bench.py``'s forwarded
target) includes whatever the core's link path costs beyond its KMIP path. This measures
that without a gateway: one client process, on Twisted and ``kcm.eager_tls`` as a gateway
is, holds a link to kcm-core (``LinkClient``, the gateway's certificate, the application
as the asserted caller) and a direct KMIP connection (the application's certificate), and
sends the same Get Attributes of one managed key on each, one at a time, in blocks of
``--block`` that alternate (the order flipping every round). It prints each path's p50 and
p99 and the difference. What the client itself spends differs too (a ``LinkClient`` call
against one write and a framer), so the difference is an upper bound on the core's.

    .venv/bin/python benchmarks/link_path_bench.py [--requests N] [--block N] [--keep]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.harness import Server, payload_of, send, work_directory  # noqa: E402
from kcm.identity import Principal, Role  # noqa: E402
from kcm.kmip.enums import Operation  # noqa: E402
from kcm.kmip.tags import Tag  # noqa: E402
from kcm.testing.processes import deploy  # noqa: E402
from kcm.testing.requests import create_managed, get_attributes, request  # noqa: E402

#: The development PKI's trust domain, which kcm.testing deploys the core with.
TRUST_DOMAIN = "kcm.test"


def percentile(values: list[int], fraction: float) -> float:
    """The ``fraction`` percentile of ``values`` (ns), in ms."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] / 1e6


def run(core: Any, wire: bytes, caller: Principal, requests: int, block: int
        ) -> dict[str, list[int]]:
    """Both paths' latencies (ns), ``requests`` each, from this process's reactor."""
    from twisted.internet import defer, protocol, reactor

    from kcm.gateway.link_client import LinkClient
    from kcm.tls import client_tls_options, tls_client_endpoint
    from kcm.ttlv.framer import Framer

    pki = core.pki
    link = LinkClient(tls_client_endpoint(
        reactor, f"tcp:127.0.0.1:{core.link_port}",
        client_tls_options(pki.gateway.cert, pki.gateway.key, pki.ca.cert, "localhost")),
        clock=reactor)

    class Direct(protocol.Protocol):
        """One request at a time on a direct KMIP connection."""

        def connectionMade(self) -> None:
            self.framer = Framer(1 << 20)
            self.waiting: defer.Deferred[bytes] | None = None

        def dataReceived(self, data: bytes) -> None:
            for message in self.framer.feed(data):
                waiting, self.waiting = self.waiting, None
                if waiting is not None:
                    waiting.callback(message)

        def ask(self, message: bytes) -> defer.Deferred[bytes]:
            self.waiting = defer.Deferred()
            self.transport.write(message)
            return self.waiting

    results: dict[str, list[int]] = {"link": [], "direct": []}
    answers: dict[str, bytes] = {}

    @defer.inlineCallbacks
    def measure() -> Any:
        try:
            link.startService()
            yield link.when_connected()
            direct = yield tls_client_endpoint(
                reactor, f"tcp:127.0.0.1:{core.port}",
                client_tls_options(pki.app.cert, pki.app.key, pki.ca.cert, "localhost")
            ).connect(protocol.Factory.forProtocol(Direct))
            ask = {"link": lambda: link.forward(wire, caller, "bench:1"),
                   "direct": lambda: direct.ask(wire)}
            for _ in range(200):  # warm-up, untimed
                yield ask["link"]()
                yield ask["direct"]()
            rounds = max(1, requests // block)
            for index in range(rounds):
                for name in ("link", "direct") if index % 2 == 0 else ("direct", "link"):
                    for _ in range(block):
                        started = time.perf_counter_ns()
                        answers[name] = yield ask[name]()
                        results[name].append(time.perf_counter_ns() - started)
            direct.transport.loseConnection()
        finally:
            link.stopService()
            reactor.stop()

    reactor.callWhenRunning(measure)
    reactor.run()
    if answers.get("link") is None or len(answers["link"]) != len(answers.get("direct", b"")):
        raise RuntimeError("the two paths did not give answers alike")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="per path (default 3000)")
    parser.add_argument("--block", type=int, default=500,
                        help="requests per path before the other's turn (default 500)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    with work_directory("kcm-link-path-bench-", args.keep) as work:
        core = deploy(work / "core", f"sqlite:///{work / 'core' / 'kcm.db'}")
        core.start()
        try:
            assert core.process is not None
            direct = Server("core", core.port, core.pki, core.process.pid)
            uid = payload_of(Operation.CREATE,
                             send(direct, request(create_managed()))).unique_identifier
            caller = Principal(Role.SERVICE, TRUST_DOMAIN, tenant="demo", service="app",
                               uri=f"spiffe://{TRUST_DOMAIN}/tenant/demo/service/app")
            results = run(core, request(get_attributes(uid, Tag.STATE)), caller,
                          args.requests, args.block)
        finally:
            core.stop()
    print(f"# kcm-core, Get Attributes of one managed key, {args.requests} per path in "
          f"blocks of {args.block}, one client")
    for name, values in results.items():
        print(f"{name:7s} p50 {percentile(values, 0.5):.3f} ms  p99 "
              f"{percentile(values, 0.99):.3f} ms")
    difference = (percentile(results["link"], 0.5) - percentile(results["direct"], 0.5)) * 1e3
    print(f"the link path minus the direct path, p50: {difference:+.0f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
