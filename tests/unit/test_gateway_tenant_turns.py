"""Each tenant's share of kcm-gateway's reactor (kcm.gateway.tenant_turns), driven through
the shared KMIP protocol over StringTransports, with a fake clock the handler advances by
what each request costs."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from kcm.gateway.tenant_turns import TenantTurns
from kcm.identity import Principal, Role
from kcm.kmip_protocol import PAUSED_BY_SHARE, ConnectionInfo, ConnectionLimits, KmipServerFactory
from kcm.ttlv import Item, ItemType, encode
from kcm.ttlv.types import structure

#: What one request costs of the reactor, in seconds of the fake clock; the turn's time.
COST = 0.6
TURN = 1.0


def message(n: int) -> bytes:
    return encode(structure(0x420078, Item(0x420020, ItemType.INTEGER, n)))


def app(tenant: str) -> Principal:
    return Principal(Role.SERVICE, "kcm.test", tenant=tenant, service="app",
                     uri=f"spiffe://kcm.test/tenant/{tenant}/service/app")


class World:
    """A factory with a share, the calls waiting for the end of the turn, and the order in
    which requests ran (tenant, request number)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.ran: list[tuple[str, int]] = []
        self.turn_ends: list[Callable[[], None]] = []
        self.wakes = 0
        self.share = TenantTurns(TURN, self.turn_ends.append, self._wake,
                                 clock=lambda: self.now)
        self.factory = KmipServerFactory(self, ConnectionLimits(), self._who, Clock(),
                                         share=self.share)
        self._next: Principal | None = None

    def _wake(self) -> None:
        self.wakes += 1

    def _who(self, transport: object) -> Principal | None:
        return self._next

    def handle_request(self, wire: bytes, connection: ConnectionInfo) -> bytes:
        self.now += COST
        self.ran.append((connection.principal.tenant, wire[-5]))
        return wire

    def failure_response(self, reason: int, message: str) -> bytes:
        return b"FAIL"

    def connect(self, tenant: str) -> tuple:
        self._next = app(tenant)
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.handshakeCompleted()
        return protocol, transport

    def end_turn(self) -> None:
        ends, self.turn_ends[:] = list(self.turn_ends), []
        for end in ends:
            end()


def test_a_tenant_over_its_time_waits_for_its_next_turn_and_others_run_meanwhile() -> None:
    world = World()
    (a1, a1_transport), (a2, a2_transport) = world.connect("a"), world.connect("a")
    b, b_transport = world.connect("b")
    a1.dataReceived(message(1) + message(2) + message(3))
    # Two requests take a's time in this turn (the second crosses it); the third waits,
    # and the connection reads nothing meanwhile.
    assert world.ran == [("a", 1), ("a", 2)]
    assert PAUSED_BY_SHARE in a1.paused_by and a1_transport.producerState == "paused"
    a2.dataReceived(message(4))
    assert a2_transport.producerState == "paused" and world.ran[-1] == ("a", 2)
    b.dataReceived(message(5))  # another tenant's request is not held behind a's
    assert world.ran[-1] == ("b", 5) and b_transport.value() == message(5)
    assert world.share.parked("a") == 2
    # The next turn: a's parked connections run, the oldest first, until its time is had
    # again; the rest waits for the turn after, and the reactor is told not to sleep.
    world.end_turn()
    assert world.ran[3:] == [("a", 3), ("a", 4)]
    assert a1_transport.value() == message(1) + message(2) + message(3)
    assert a1.paused_by == frozenset() and a1_transport.producerState == "producing"
    assert a2.paused_by == frozenset() and world.share.parked("a") == 0
    assert world.wakes == 0  # nothing was left parked


def test_a_lone_tenant_is_only_split_over_turns() -> None:
    world = World()
    a, transport = world.connect("a")
    a.dataReceived(b"".join(message(n) for n in range(1, 8)))
    turns = 0
    while world.turn_ends:
        turns += 1
        world.end_turn()
    assert [n for _, n in world.ran] == list(range(1, 8))
    assert transport.value() == b"".join(message(n) for n in range(1, 8))
    # (the last turn ran one request: nothing waits, the reactor may sleep, no turn is due)
    assert turns == 3 and world.wakes == 2 and a.paused_by == frozenset()


def test_a_parked_connection_that_goes_is_not_run() -> None:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    world = World()
    a, _ = world.connect("a")
    a.dataReceived(message(1) + message(2) + message(3))
    a.connectionLost(Failure(ConnectionDone()))
    world.end_turn()
    assert world.ran == [("a", 1), ("a", 2)] and world.share.parked("a") == 0
