"""The gateway's link failing over between cores as it runs: :class:`LinkClient` on its
``ClientService`` over a :class:`CoreFailoverEndpoint` of fake cores, driven by a Clock.

A fake core is live (WELCOME, PONG), hung (a stopped process: the TCP connection completes
from the listen backlog, and nothing more), refusing (GOAWAY after HELLO: a stopping core)
or down (the connection is refused)."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from OpenSSL import crypto
from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from kcm.gateway.core_endpoints import CoreFailoverEndpoint
from kcm.gateway.link_client import WELCOME_TIMEOUT, LinkClient
from kcm.link.framer import LinkFramer
from kcm.link.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    LINK_VERSION,
    Frame,
    FrameType,
    decode_frame,
    encode_frame,
)
from kcm.pki import issue_certificate, new_ca
from tests.core_support import LINEAGE

NOW = dt.datetime.now(dt.UTC)


class CoreTransport(StringTransport):
    """The gateway's end of a connection to a :class:`FakeCore`; the core answers what the
    gateway writes (on the next turn of the clock) as its mode says at that moment."""

    def __init__(self, core: FakeCore, protocol) -> None:
        super().__init__()
        self.core = core
        self.protocol = protocol
        self.framer = LinkFramer(DEFAULT_MAX_FRAME_SIZE)
        self.lost = False

    def write(self, data: bytes) -> None:
        super().write(data)
        for wire in self.framer.feed(data):
            self.core.received(self, decode_frame(wire))

    def deliver(self, frame: Frame) -> None:
        self.core.clock.callLater(0, lambda: None if self.lost else
                                  self.protocol.dataReceived(encode_frame(frame)))

    def loseConnection(self) -> None:
        self._lose(ConnectionDone())

    def abortConnection(self) -> None:
        self._lose(ConnectionAborted())

    def _lose(self, why: Exception) -> None:
        if not self.lost:
            self.lost = True
            self.core.clock.callLater(0, self.protocol.connectionLost, Failure(why))


class FakeCore:
    """A client endpoint to one fake core; ``mode`` is live, hung, refusing or down."""

    def __init__(self, name: str, clock: Clock, mode: str = "live", generation: int = 0
                 ) -> None:
        self.name = name
        self.clock = clock
        self.mode = mode
        #: The restore generation of its database (ORIGIN).
        self.generation = generation
        #: The reasons of the GOAWAYs gateways sent it.
        self.goaways: list[str | None] = []
        #: When each connection attempt was made (the clock's seconds).
        self.attempts: list[float] = []
        self.links: list[CoreTransport] = []

    def connect(self, factory):
        self.attempts.append(self.clock.seconds())
        if self.mode == "down":
            return fail(ConnectionRefusedError(self.name))
        protocol = factory.buildProtocol(None)
        transport = CoreTransport(self, protocol)
        self.links.append(transport)
        protocol.makeConnection(transport)
        return succeed(protocol)

    def received(self, transport: CoreTransport, frame: Frame) -> None:
        if self.mode == "hung":
            return
        if frame.type is FrameType.GOAWAY:
            self.goaways.append(frame.error)
        if frame.type is FrameType.HELLO:
            if self.mode == "refusing":
                transport.deliver(Frame(FrameType.GOAWAY, error="this core is stopping"))
                return
            transport.deliver(Frame(FrameType.WELCOME, link_version=LINK_VERSION,
                                    peer_name=self.name, sequence=0, heartbeat_interval=1))
            transport.deliver(Frame(FrameType.ORIGIN, deployment=LINEAGE.deployment,
                                    restore_generation=self.generation))
        elif frame.type is FrameType.PING:
            transport.deliver(Frame(FrameType.PONG, stream_id=frame.stream_id))


def gateway(*cores: FakeCore) -> tuple[LinkClient, CoreFailoverEndpoint]:
    endpoint = CoreFailoverEndpoint(list(cores), [c.name for c in cores], order="listed")
    client = LinkClient(endpoint, clock=cores[0].clock, random_fraction=lambda: 0.5,
                        first_link_wait=0.0)
    client.startService()
    return client, endpoint


def run(clock: Clock, seconds: float, step: float = 0.01) -> None:
    for _ in range(round(seconds / step)):
        clock.advance(step)


def linked_to(client: LinkClient, core: FakeCore) -> bool:
    protocol = client._protocol
    return protocol is not None and any(t.protocol._protocol is protocol for t in core.links)


def test_a_core_that_hangs_is_left_for_the_next_one_within_one_connection_attempt() -> None:
    """The defect: heartbeats found the hung core dead, the gateway connected to it again
    (its kernel still completes TCP connections) and, counting that a success, never
    tried the next core. A link found dead by its heartbeats now goes to the next core at
    once."""
    clock = Clock()
    a, b = FakeCore("a", clock), FakeCore("b", clock)
    client, endpoint = gateway(a, b)
    run(clock, 1.5)
    assert linked_to(client, a) and b.attempts == []

    a.mode = "hung"  # SIGSTOP
    hung_at = clock.seconds()
    run(clock, 1.9)
    assert linked_to(client, a)  # heartbeats have not given up on it yet
    for _ in range(200):  # three silent heartbeat intervals
        if b.attempts:
            break
        clock.advance(0.01)
    assert b.attempts and b.attempts[0] - hung_at <= 3.1  # the next core, at once
    run(clock, 0.1)
    assert linked_to(client, b) and endpoint.current_name == "b"
    assert a.links[-1].lost
    run(clock, 10)
    assert linked_to(client, b) and len(a.attempts) == 1 and len(b.attempts) == 1
    client.stopService()


def test_a_first_core_hung_at_start_is_left_for_the_next() -> None:
    clock = Clock()
    a, b = FakeCore("a", clock, "hung"), FakeCore("b", clock)
    client, endpoint = gateway(a, b)
    run(clock, WELCOME_TIMEOUT + 0.1)
    assert linked_to(client, b) and endpoint.current_name == "b"
    assert (len(a.attempts), len(b.attempts)) == (1, 1)
    client.stopService()


def test_a_single_hung_core_is_retried_with_backoff_and_taken_back_when_it_resumes() -> None:
    clock = Clock()
    a = FakeCore("a", clock, "hung")
    client, endpoint = gateway(a)
    run(clock, 30)
    gaps = [later - earlier for earlier, later in itertools.pairwise(a.attempts)]
    assert len(a.attempts) <= 30 / WELCOME_TIMEOUT
    assert all(gap >= WELCOME_TIMEOUT + 0.2 for gap in gaps)  # each attempt, then back-off
    assert gaps[-1] >= WELCOME_TIMEOUT + 1.0  # the back-off's cap
    assert all(link.lost for link in a.links[:-1])  # nothing left open
    a.mode = "live"  # SIGCONT: the next attempt links
    run(clock, WELCOME_TIMEOUT + 1.2)
    assert linked_to(client, a) and endpoint.current_name == "a"
    client.stopService()


def test_cores_that_refuse_before_welcome_are_tried_in_turn_with_backoff() -> None:
    """A stopping core answers HELLO with GOAWAY: the next attempt goes to the next core;
    after a round of the list, the link backs off (it does not spin)."""
    clock = Clock()
    a, b = FakeCore("a", clock, "refusing"), FakeCore("b", clock, "refusing")
    client, endpoint = gateway(a, b)
    run(clock, 10)
    assert 2 <= len(a.attempts) <= 12 and abs(len(a.attempts) - len(b.attempts)) <= 1
    attempts = sorted([(t, "a") for t in a.attempts] + [(t, "b") for t in b.attempts])
    assert [name for _, name in attempts[:4]] == ["a", "b", "a", "b"]
    assert attempts[1][0] - attempts[0][0] < 0.1  # the round goes at once ...
    assert attempts[2][0] - attempts[1][0] >= 0.2  # ... then the back-off waits
    b.mode = "live"
    run(clock, 3)
    assert linked_to(client, b) and endpoint.current_name == "b"
    assert client._refusals == 0
    client.stopService()


def test_a_core_refusing_every_link_is_said_once_an_interval_not_once_an_attempt() -> None:
    """A core that cannot read its database answers each HELLO with GOAWAY: every second
    or so the gateway tries again, and each refusal was an info line ("link peer ... went
    away") beside the endpoint's warning, which says it at most once every 30 s."""
    clock = Clock()
    core = FakeCore("a", clock, "refusing")
    with capturedLogs() as logged:
        client, _ = gateway(core)
        run(clock, 60)
    client.stopService()
    assert len(core.attempts) >= 10
    lines = [formatEvent(event) for event in logged]
    assert not [line for line in lines if "went away" in line], lines[:3]
    refusals = [line for line in lines if "cannot link to core a: GOAWAY: this core is "
                "stopping" in line]
    assert 2 <= len(refusals) <= 3, lines


def test_a_core_on_an_older_copy_of_the_database_is_refused_and_the_next_core_tried(
        ) -> None:
    """A gateway that a core on a restored copy welcomed (restore generation 1) refuses the
    core still running on the original (generation 0) when its own core stops: each such
    link ends at ORIGIN (GOAWAY naming why), a failed attempt of that core, so the gateway
    goes on to the next core, logs the refusal once, and links again to the copy's core
    when it is back; it is never linked to the original's."""
    clock = Clock()
    original = FakeCore("original", clock, "down", generation=0)
    restored = FakeCore("restored", clock, generation=1)
    client, endpoint = gateway(original, restored)
    run(clock, 1.5)
    assert linked_to(client, restored) and client.followed.origin.generation == 1
    original.mode, restored.mode = "live", "down"  # (the copy's core stops)
    with capturedLogs() as logged:
        restored.links[-1]._lose(ConnectionDone())
        run(clock, 10)
    assert client._protocol is None and len(original.goaways) >= 3  # (retried, backing off)
    assert set(original.goaways) == {"older copy of the database (generation 0 < 1)"}
    assert client.followed.refusals == {"older_copy": len(original.goaways),
                                        "another_deployment": 0}
    refused = [e for e in logged if "refusing the link" in e.get("log_format", "")]
    assert len(refused) == 1 and "(generation 0 < 1)" in formatEvent(refused[0])
    restored.mode = "live"
    run(clock, 2)
    assert linked_to(client, restored) and endpoint.current_name == "restored"
    assert not any(t.protocol.welcomed for t in original.links)
    client.stopService()


def test_an_unreachable_core_still_fails_over_within_the_same_attempt() -> None:
    clock = Clock()
    a, b = FakeCore("a", clock, "down"), FakeCore("b", clock)
    client, endpoint = gateway(a, b)
    clock.advance(0.01)
    assert linked_to(client, b) and (len(a.attempts), len(b.attempts)) == (1, 1)
    client.stopService()


# A peer that is not a core (issue: a gateway's certificate accepted as the core's) ---------

@pytest.fixture(scope="module")
def certificates() -> dict[str, crypto.X509]:
    """What the peers present: the core's certificate (host names only), a gateway's (the
    same host names, serverAuth, and its SPIFFE ID) and a CA-flagged one, of one CA."""
    ca = new_ca(now=NOW)
    hosts = {"dns_names": ["localhost"], "ip_addresses": ["127.0.0.1"]}
    issued = {
        "core": issue_certificate(ca, "kcm-core", server=True, client=False, now=NOW, **hosts),
        "gateway": issue_certificate(ca, "gw2", uris=["spiffe://kcm.test/gateway/gw2"],
                                     server=True, client=True, now=NOW, **hosts),
    }
    certificates = {name: crypto.X509.from_cryptography(i.cert) for name, i in issued.items()}
    certificates["ca"] = crypto.X509.from_cryptography(ca.cert)
    return certificates


class TLSCoreTransport(CoreTransport):
    """:class:`CoreTransport` as TLS would be: what the gateway writes before the handshake
    completes is held (not seen by the peer), and the peer's certificate is at hand."""

    def __init__(self, core: TLSFakeCore, protocol) -> None:
        super().__init__(core, protocol)
        self.handshaking = True
        self.held: list[bytes] = []

    def getPeerCertificate(self) -> crypto.X509:
        return self.core.certificate

    def write(self, data: bytes) -> None:
        if self.handshaking:
            self.held.append(data)
        elif not self.lost:
            super().write(data)

    def handshake_done(self) -> None:
        self.handshaking = False
        self.protocol.handshakeCompleted()
        held, self.held = self.held, []
        for data in held:
            self.write(data)


class TLSFakeCore(FakeCore):
    """A :class:`FakeCore` over TLS that presents ``certificate``; it counts the frames the
    gateway sent it."""

    def __init__(self, name: str, clock: Clock, certificate: crypto.X509,
                 mode: str = "live") -> None:
        super().__init__(name, clock, mode)
        self.certificate = certificate
        self.frames: list[Frame] = []

    def connect(self, factory):
        self.attempts.append(self.clock.seconds())
        protocol = factory.buildProtocol(None)
        transport = TLSCoreTransport(self, protocol)
        self.links.append(transport)
        protocol.makeConnection(transport)
        transport.handshake_done()
        return succeed(protocol)

    def received(self, transport: CoreTransport, frame: Frame) -> None:
        self.frames.append(frame)
        super().received(transport, frame)


@pytest.fixture
def link_warnings():
    seen: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_level") is LogLevel.warn and event.get("log_namespace", "") \
                .startswith("kcm.gateway"):
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def test_a_peer_with_a_gateways_certificate_is_refused_and_the_next_core_taken(
        certificates, link_warnings) -> None:
    """The defect: the link checked only the chain and the host name, which a gateway's
    certificate passes too (it names the same hosts). Its holder could pose as the core to
    other gateways. It is refused once the handshake completes: nothing is sent to it, and
    the next core is tried at once."""
    clock = Clock()
    impostor = TLSFakeCore("a", clock, certificates["gateway"])
    core = TLSFakeCore("b", clock, certificates["core"])
    client, endpoint = gateway(impostor, core)
    run(clock, 0.5)
    assert linked_to(client, core) and endpoint.current_name == "b"
    assert impostor.frames == [] and impostor.links[0].lost  # not even its HELLO
    assert len(impostor.attempts) == 1
    refused = [line for line in link_warnings if "not a core" in line]
    assert refused and all("spiffe://kcm.test/gateway/gw2" in line for line in refused)
    assert "refusing the link: 192.168.1.1:54321 is not a core: its certificate carries " \
           "a URI SAN (spiffe://kcm.test/gateway/gw2); a core's carries none" in refused[0]
    client.stopService()


def test_a_single_peer_that_is_not_a_core_is_never_linked_and_the_log_says_why(
        certificates, link_warnings) -> None:
    clock = Clock()
    impostor = TLSFakeCore("tcp:127.0.0.1:5697", clock, certificates["ca"])
    client, endpoint = gateway(impostor)
    run(clock, 60)
    assert not client.connected and client.links_made == 0 and impostor.frames == []
    assert len(impostor.attempts) >= 20  # retried (with back-off) all along
    # The refusal once, and the failed attempts at most once every FAILURE_LOG_INTERVAL.
    assert sum("refusing the link" in line for line in link_warnings) == 1
    failed = [line for line in link_warnings if line.startswith("cannot link")]
    assert 2 <= len(failed) <= 3, link_warnings
    assert failed[0].startswith("cannot link to core tcp:127.0.0.1:5697: 192.168.1.1:54321 "
                                "is not a core: its certificate is a CA's")
    client.stopService()


def test_the_cores_own_certificate_is_taken(certificates, link_warnings) -> None:
    clock = Clock()
    core = TLSFakeCore("a", clock, certificates["core"])
    client, _ = gateway(core)
    run(clock, 0.5)
    assert linked_to(client, core) and core.frames[0].type is FrameType.HELLO
    assert link_warnings == []
    client.stopService()
