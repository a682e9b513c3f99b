"""The gateway's CPU per L4 request, in process, on a warm L3 cache, and per forwarded one.

Assembles what :func:`kcm.gateway.tap.makeService` assembles for the KMIP data plane (an L3
cache holding the service key, the usage counter's engines, the fast path, the request
handler with its metrics, the link client) and feeds it the requests of
``benchmarks/gateway_bench.py`` (KMIP 1.4, one item: Encrypt of a 64-byte record, Decrypt
of it, Get, Create of an L4; ``forward``: a Get Attributes of a managed key, relayed over
the link, whose end at the core answers each REQUEST at once with a recorded answer; the
link's frames in and out are counted, not its TLS), at three depths:

* ``handler``: :meth:`GatewayRequestHandler.handle_request` alone;
* ``protocol``: bytes into a :class:`kcm.kmip_protocol.KmipServerProtocol` over a
  ``StringTransport`` (framing, timers, the write);
* ``tls``: TLS records into the gateway's TLS layer (:mod:`kcm.eager_tls`) around that
  protocol, a client TLS connection in memory making them and reading the answers (only
  the server's calls are timed).

It reports CPU microseconds per request (``time.process_time`` over ``--requests``
requests, the best of ``--rounds`` runs: CPU time barely moves when other processes load
the machine, wall-clock time does). With ``--profile OP:DEPTH`` it prints a cProfile of
that case instead. With ``--legs`` it times a forwarded Get Attributes at the protocol depth
in three parts instead: the request's leg (the client's bytes in, to the REQUEST frame
written on the link), the answer's leg (the RESPONSE frame in, to the answer written to the
client) and the count kcm-gateway runs at the end of the reactor's turn (``later``).

    .venv/bin/python benchmarks/gateway_cpu_bench.py [--requests N] [--rounds N]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.defer import succeed  # noqa: E402
from twisted.internet.protocol import Factory  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from kcm.eager_tls import EagerTLSFactory  # noqa: E402
from kcm.gateway.fast_path import FastPath  # noqa: E402
from kcm.gateway.handler import GatewayRequestHandler, new_correlation_id  # noqa: E402
from kcm.gateway.l3_cache import L3Cache  # noqa: E402
from kcm.gateway.link_client import LinkClient, LinkClientProtocol  # noqa: E402
from kcm.gateway.local_batch import LocalRunner, gateway_engines  # noqa: E402
from kcm.gateway.metrics import GatewayMetrics  # noqa: E402
from kcm.gateway.usage_report import UsageCounter  # noqa: E402
from kcm.identity import Principal, Role  # noqa: E402
from kcm.kernel.responses import encode_items, response_wire  # noqa: E402
from kcm.kmip.attributes import Attribute  # noqa: E402
from kcm.kmip.enums import Operation, ResultStatus, State  # noqa: E402
from kcm.kmip.messages import ResponseBatchItem  # noqa: E402
from kcm.kmip.payloads import DecryptRequest, EncryptRequest, GetRequest  # noqa: E402
from kcm.kmip.payloads.attribute_ops import GetAttributesResponse  # noqa: E402
from kcm.kmip.tags import Tag  # noqa: E402
from kcm.kmip_protocol import ConnectionInfo, ConnectionLimits, KmipServerFactory  # noqa: E402
from kcm.l4.opened_keys import OpenedKeys  # noqa: E402
from kcm.l4.service_key import ServiceKey  # noqa: E402
from kcm.link.framer import LinkFramer  # noqa: E402
from kcm.link.frames import (  # noqa: E402
    DEFAULT_MAX_FRAME_SIZE,
    LINK_VERSION,
    Frame,
    FrameType,
    decode_frame,
    encode_frame,
)
from kcm.link.relay import response_frame, split_request  # noqa: E402
from kcm.pki import init_pki  # noqa: E402
from kcm.testing.requests import (  # noqa: E402
    create_l4,
    get_attributes,
    item,
    request,
    response,
)
from kcm.tls import client_tls_options, server_tls_options  # noqa: E402
from kcm.ttlv import Item, ItemType  # noqa: E402

APP = Principal(Role.SERVICE, "kcm.test", tenant="demo", service="app",
                uri="spiffe://kcm.test/tenant/demo/service/app")
L3_UID = "l3-00000000-0000-4000-8000-000000000001"
L3 = ServiceKey(L3_UID, "demo", "app", 1, State.ACTIVE, os.urandom(32))
CONNECTION = ConnectionInfo(1, APP, "127.0.0.1:40000")
OPERATIONS = ("encrypt", "decrypt", "get", "create", "forward")
DEPTHS = ("handler", "protocol", "tls")


#: What the core answers a forwarded Get Attributes (State: Pre-Active), made once.
FORWARD_ANSWER = response_wire((1, 4), 1_700_000_000, "0123456789abcdef", encode_items([
    ResponseBatchItem(operation=Operation.GET_ATTRIBUTES, result_status=ResultStatus.SUCCESS,
                      response_payload=GetAttributesResponse(
                          unique_identifier="6f1d0c8a-5b7e-4a8e-9a3c-2f4b6d8e0a1c",
                          attributes=[Attribute(Tag.STATE, Item(
                              Tag.STATE, ItemType.ENUMERATION, int(State.PRE_ACTIVE)))]))],
    (1, 4)))


class _Keys:
    """The core's side of service-key fetches: the one L3."""

    def fetch(self, caller: Principal, tenant: str, service: str, uid: str | None = None):
        return succeed([L3])


class _Core:
    """The core's end of the link, in memory: answers every REQUEST written so far with
    :data:`FORWARD_ANSWER` on its stream."""

    def __init__(self, link: LinkClient, clock: Clock) -> None:
        self.protocol = LinkClientProtocol(link)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(encode_frame(Frame(
            FrameType.WELCOME, link_version=LINK_VERSION, peer_name="core", sequence=0,
            heartbeat_interval=1)) + encode_frame(Frame(
            FrameType.ORIGIN, deployment="0f" * 16, restore_generation=0)))
        self.transport.clear()
        self._framer = LinkFramer(DEFAULT_MAX_FRAME_SIZE)

    def answer(self) -> None:
        sent = self.transport.value()
        if not sent:
            return
        self.transport.clear()
        answers = [encode_frame(Frame(FrameType.RESPONSE,
                                      stream_id=decode_frame(frame).stream_id,  # type: ignore[arg-type]
                                      message=FORWARD_ANSWER))
                   for frame in self._framer.feed(sent)]
        receive = self.protocol.dataReceived
        started = time.process_time()
        for frame in answers:
            receive(frame)
        self.spent += time.process_time() - started

    spent = 0.0  # CPU seconds the gateway's end spent taking answers


def gateway(clock: Clock, dek_cache_size: int = 10_000
            ) -> tuple[GatewayRequestHandler, _Core]:
    """The handler as makeService builds it, over a warm cache, and the link's other end."""
    keys = _Keys()
    link = LinkClient(None, clock=clock)  # type: ignore[arg-type]
    core = _Core(link, clock)
    opened_keys = (OpenedKeys(clock=clock.seconds, max_entries=dek_cache_size)
                   if dek_cache_size else None)
    cache = L3Cache(keys.fetch, connected=lambda: True, clock=clock.seconds,
                    opened_keys=opened_keys)
    cache.store([L3], APP, current_of=("demo", "app"))
    usage = UsageCounter()
    engines = gateway_engines(usage.used, opened_keys)
    metrics = GatewayMetrics()
    limits = ConnectionLimits()
    fast_path = FastPath(cache=cache, engine_factory=engines,
                         clock=clock.seconds, new_correlation_id=new_correlation_id,
                         max_message_size=limits.max_message_size,
                         max_batch_items=limits.max_batch_items, served=metrics.fast_served)
    return GatewayRequestHandler(
        runner=LocalRunner(new_correlation_id=new_correlation_id, engine_factory=engines),
        cache=cache, link=link, clock=clock.seconds, fast_path=fast_path,
        metrics=metrics), core


def requests(handler: GatewayRequestHandler) -> dict[str, bytes]:
    """The benchmark's four requests, under one L4 made by the gateway itself."""
    created = handler.handle_request(request(create_l4()), CONNECTION)
    token = response(created).batch_items[0].response_payload.unique_identifier
    encrypt = request(item(Operation.ENCRYPT, EncryptRequest(
        unique_identifier=token, data=os.urandom(64))))
    sealed = response(handler.handle_request(encrypt, CONNECTION)
                      ).batch_items[0].response_payload
    decrypt = request(item(Operation.DECRYPT, DecryptRequest(
        unique_identifier=token, data=sealed.data, iv_counter_nonce=sealed.iv_counter_nonce,
        authenticated_encryption_tag=sealed.authenticated_encryption_tag)))
    get = request(item(Operation.GET, GetRequest(unique_identifier=token)))
    forward = request(get_attributes("6f1d0c8a-5b7e-4a8e-9a3c-2f4b6d8e0a1c", Tag.STATE))
    return {"encrypt": encrypt, "decrypt": decrypt, "get": get, "create": request(create_l4()),
            "forward": forward}


def handler_case(handler: GatewayRequestHandler, wire: bytes,
                 core: _Core | None) -> Callable[[], float]:
    """``core``: the link's other end, answering what the run forwarded (None: L4)."""
    handle = handler.handle_request
    answer = core.answer if core is not None else None

    def run() -> float:
        handle(wire, CONNECTION)
        if answer is not None:
            answer()
        return 0.0

    return run


def protocol_case(handler: GatewayRequestHandler, wire: bytes, clock: Clock,
                  core: _Core | None) -> Callable[[], float]:
    factory = KmipServerFactory(handler, ConnectionLimits(), lambda transport: APP, clock)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.handshakeCompleted()
    feed = protocol.dataReceived

    answer = core.answer if core is not None else None

    def run() -> float:
        feed(wire)
        if answer is not None:
            answer()
        transport.clear()
        return 0.0

    return run


def tls_case(handler: GatewayRequestHandler, wire: bytes, clock: Clock,
             core: _Core | None, pki_dir: Path) -> Callable[[], float]:
    """Returns a run whose value is the server's CPU seconds for one request (the client's
    encryption and decryption are not counted)."""
    pki = init_pki(pki_dir)
    kmip = KmipServerFactory(handler, ConnectionLimits(), lambda transport: APP, clock)
    server_factory = EagerTLSFactory(
        server_tls_options(pki.gateway.cert, pki.gateway.key, pki.ca.cert), False, kmip)
    received: list[bytes] = []

    class Client:
        def makeConnection(self, transport) -> None:
            self.transport = transport

        def dataReceived(self, data: bytes) -> None:
            received.append(data)

        def connectionLost(self, reason) -> None:
            pass

    client_factory = EagerTLSFactory(
        client_tls_options(pki.app.cert, pki.app.key, pki.ca.cert, "localhost"), True,
        Factory.forProtocol(lambda: Client()))  # type: ignore[arg-type, return-value]
    server = server_factory.buildProtocol(None)
    client = client_factory.buildProtocol(None)
    server_transport, client_transport = StringTransport(), StringTransport()
    server.makeConnection(server_transport)
    client.makeConnection(client_transport)

    def pump() -> float:
        """Move bytes both ways until quiet; the server's CPU time spent."""
        spent = 0.0
        clock_ = time.process_time
        while True:
            to_server, to_client = client_transport.value(), server_transport.value()
            if not to_server and not to_client:
                return spent
            client_transport.clear()
            server_transport.clear()
            if to_server:
                started = clock_()
                server.dataReceived(to_server)
                spent += clock_() - started
            if to_client:
                client.dataReceived(to_client)

    pump()
    app = client.wrappedProtocol

    def run() -> float:
        app.transport.write(wire)
        received.clear()
        spent = pump()
        if core is not None:  # forwarded: the answer comes from the core
            core.spent = 0.0
            core.answer()
            spent += core.spent + pump()
        assert received, "no answer"
        return spent

    return run


def legs(count: int, rounds: int) -> tuple[float, float, float]:
    """CPU µs of a forwarded Get Attributes' request leg, answer leg and count (best of
    ``rounds`` of ``count``), the count put off as kcm-gateway puts it off."""
    clock = Clock()
    clock.advance(1_700_000_000)
    handler, core = gateway(clock)
    wire = requests(handler)["forward"]
    turn_end: list[Callable[[], object]] = []
    handler._later = turn_end.append
    protocol = KmipServerFactory(handler, ConnectionLimits(), lambda transport: APP,
                                 clock).buildProtocol(None)
    client = StringTransport()
    protocol.makeConnection(client)
    protocol.handshakeCompleted()
    link, feed, answer_in = core.transport, protocol.dataReceived, core.protocol.dataReceived
    clock_ = time.process_time

    def run() -> tuple[float, float, float]:
        started = clock_()
        feed(wire)
        sent = clock_()
        split = split_request(link.value())
        link.clear()
        assert split is not None, "no REQUEST written"
        frame = response_frame(split[0], FORWARD_ANSWER)
        answering = clock_()
        answer_in(frame)
        answered = clock_()
        assert client.value(), "no answer"
        client.clear()
        for call in turn_end:
            call()
        turn_end.clear()
        return sent - started, answered - answering, clock_() - answered

    for _ in range(min(count, 500)):
        run()
    best = [float("inf")] * 3
    for _ in range(rounds):
        spent = [0.0] * 3
        for _ in range(count):
            for index, value in enumerate(run()):
                spent[index] += value
        best = [min(best[i], spent[i] / count * 1e6) for i in range(3)]
    return best[0], best[1], best[2]


def measure(run: Callable[[], float], count: int, rounds: int, timed_inside: bool) -> float:
    """Best of ``rounds`` of ``count`` runs: CPU microseconds per run."""
    for _ in range(min(count, 500)):
        run()
    best = float("inf")
    for _ in range(rounds):
        if timed_inside:
            spent = sum(run() for _ in range(count))
        else:
            started = time.process_time()
            for _ in range(count):
                run()
            spent = time.process_time() - started
        best = min(best, spent / count * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--operations", default=",".join(OPERATIONS))
    parser.add_argument("--depths", default=",".join(DEPTHS))
    parser.add_argument("--dek-cache-size", type=int, default=10_000,
                        help="the gateway's dek_cache_size (0: no opened DEKs kept)")
    parser.add_argument("--profile", metavar="OP:DEPTH",
                        help="print a cProfile of one case instead (e.g. encrypt:tls)")
    parser.add_argument("--legs", action="store_true",
                        help="time a forward's request leg, answer leg and count instead")
    args = parser.parse_args()
    if args.legs:
        request_leg, answer_leg, count = legs(args.requests, args.rounds)
        print(f"forwarded Get Attributes, gateway CPU µs, in process, best of {args.rounds} x "
              f"{args.requests}: request leg {request_leg:.2f}, answer leg {answer_leg:.2f}, "
              f"count after the turn {count:.2f}")
        return
    clock = Clock()
    clock.advance(1_700_000_000)
    handler, core = gateway(clock, args.dek_cache_size)
    wires = requests(handler)
    with TemporaryDirectory() as scratch:
        def case(operation: str, depth: str) -> Callable[[], float]:
            wire = wires[operation]
            link_end = core if operation == "forward" else None
            if depth == "handler":
                return handler_case(handler, wire, link_end)
            if depth == "protocol":
                return protocol_case(handler, wire, clock, link_end)
            return tls_case(handler, wire, clock, link_end,
                            Path(scratch) / f"{operation}-pki")

        if args.profile:
            operation, depth = args.profile.split(":")
            run = case(operation, depth)
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(args.requests):
                run()
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(30)
            return
        depths = args.depths.split(",")
        print(f"gateway CPU µs per request, in process, best of {args.rounds} x "
              f"{args.requests}, dek_cache_size {args.dek_cache_size}")
        print(f"{'operation':10}" + "".join(f"{depth:>10}" for depth in depths))
        for operation in args.operations.split(","):
            row = [measure(case(operation, depth), args.requests, args.rounds,
                           depth == "tls") for depth in depths]
            print(f"{operation:10}" + "".join(f"{value:10.1f}" for value in row))


if __name__ == "__main__":
    main()
