"""ORIGIN (link version 7): the core names its database (deployment id, restore
generation) ahead of any event, and a gateway links only to a core of the database it
follows (kcm.core.link_server, kcm.gateway.link_client, kcm.gateway.core_origin)."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure

from kcm.core.lineage import Lineage
from kcm.core.link_server import LinkServerFactory, LinkServerProtocol
from kcm.gateway.core_origin import FollowedOrigin, Origin
from kcm.gateway.link_client import WELCOME_TIMEOUT, LinkClient, LinkClientProtocol
from kcm.identity import SubjectMap
from kcm.link.frames import LINK_VERSION, VIEW_VERSION, Frame, FrameType, encode_frame
from tests.core_support import LINEAGE
from tests.gateway_support import core_welcome, origin
from tests.unit.test_link_cancel import frames_in
from tests.unit.test_link_session import GATEWAY, TD, FakeHandler, MemoryFanout

OTHER = "ab" * 16


def welcome(sequence: int = 0) -> bytes:
    """A WELCOME of a core of link version 7 (its ORIGIN is to follow)."""
    return encode_frame(Frame(FrameType.WELCOME, link_version=7, peer_name="core",
                              sequence=sequence, heartbeat_interval=1))


# The core's end ---------------------------------------------------------------------------

def core_link(lineage: Lineage | None = LINEAGE, events: int = 3
              ) -> tuple[LinkServerProtocol, StringTransport, Clock]:
    """A core's link whose outbox holds ``events`` events, past the HELLO of a gateway that
    resumes after none of them (so all are to be sent)."""
    clock = Clock()
    fanout = MemoryFanout(clock)
    fanout.commit(events)
    fanout.poll()
    factory = LinkServerFactory(handler=FakeHandler(), store=None, keyring=None, fanout=fanout,
                                resolve_peer=lambda transport: GATEWAY, trust_domain=TD,
                                subject_map=SubjectMap({}), clock=clock,
                                lineage=lambda: lineage)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.handshakeCompleted()
    protocol.dataReceived(encode_frame(Frame(FrameType.HELLO, link_version=1,
                                             peer_name="gw1", sequence=0)))
    return protocol, transport, clock


def test_the_core_sends_origin_after_version_7_ahead_of_view_and_of_every_event() -> None:
    protocol, transport, clock = core_link()
    assert [f.type for f in frames_in(transport)] == [FrameType.WELCOME]
    clock.advance(0.5)
    protocol.pauseProducing()
    protocol.resumeProducing()
    assert frames_in(transport) == []  # the events wait for the gateway's first frame
    protocol.dataReceived(encode_frame(Frame(FrameType.VERSION, link_version=7)))
    sent = frames_in(transport)
    assert [f.type for f in sent] == [FrameType.ORIGIN, FrameType.VIEW] + [FrameType.EVENT] * 3
    assert (sent[0].deployment, sent[0].restore_generation) == (LINEAGE.deployment, 0)
    assert [f.sequence for f in sent[2:]] == [1, 2, 3]


def test_a_gateway_of_version_6_is_sent_no_origin() -> None:
    protocol, transport, _ = core_link()
    frames_in(transport)
    protocol.dataReceived(encode_frame(Frame(FrameType.VERSION, link_version=VIEW_VERSION)))
    assert [f.type for f in frames_in(transport)] == [FrameType.VIEW] + [FrameType.EVENT] * 3


def test_a_gateway_that_sends_no_version_gets_the_events_after_its_first_frame() -> None:
    """A gateway before link version 4 sends no VERSION: its first PING (or request)
    starts the stream, at most a heartbeat after WELCOME."""
    protocol, transport, clock = core_link()
    frames_in(transport)
    clock.advance(1.0)
    assert [f.type for f in frames_in(transport)] == [FrameType.PING]  # (the core's)
    protocol.dataReceived(encode_frame(Frame(FrameType.PING, stream_id=1)))
    assert [f.type for f in frames_in(transport)] == [FrameType.PONG] + [FrameType.EVENT] * 3


def test_the_core_pings_only_from_welcome_on() -> None:
    """A PONG the core reads after WELCOME answers a PING sent after it: the gateway sent
    VERSION first (it answers WELCOME at once)."""
    clock = Clock()
    factory = LinkServerFactory(handler=FakeHandler(), store=None, keyring=None,
                                fanout=MemoryFanout(clock), resolve_peer=lambda t: GATEWAY,
                                trust_domain=TD, subject_map=None, clock=clock)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.handshakeCompleted()
    clock.advance(2.5)
    assert frames_in(transport) == [] and not protocol.closing


def test_a_core_that_has_not_read_its_database_sends_a_gateway_of_version_7_away() -> None:
    protocol, transport, _ = core_link(lineage=None)
    frames_in(transport)
    protocol.dataReceived(encode_frame(Frame(FrameType.VERSION, link_version=7)))
    [goaway] = frames_in(transport)
    assert goaway.type is FrameType.GOAWAY and "has not read its database" in goaway.error


# The gateway's end ------------------------------------------------------------------------

class Gateway:
    """A LinkClient and its links over StringTransports, all to the same peer."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.resyncs = 0
        self.events: list[int] = []
        self.client = LinkClient(None, clock=self.clock,  # type: ignore[arg-type]
                                 on_resync=self._resync,
                                 on_event=lambda seq, *_: self.events.append(seq))

    def _resync(self) -> None:
        self.resyncs += 1

    def link(self) -> tuple[LinkClientProtocol, StringTransport]:
        protocol = LinkClientProtocol(self.client)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def linked(self, generation: int, deployment: str = LINEAGE.deployment, *,
               sequence: int = 0) -> tuple[LinkClientProtocol, StringTransport]:
        protocol, transport = self.link()
        protocol.dataReceived(welcome(sequence) + origin(generation, deployment))
        return protocol, transport

    def lose(self, protocol: LinkClientProtocol) -> None:
        protocol.connectionLost(Failure(ConnectionDone()))


def test_a_link_to_a_core_of_version_7_is_made_once_its_origin_comes() -> None:
    gateway = Gateway()
    protocol, transport = gateway.link()
    gateway.clock.advance(1.5)  # no PING before WELCOME: VERSION is the first frame after it
    assert [f.type for f in frames_in(transport)] == [FrameType.HELLO]
    protocol.dataReceived(welcome())
    assert [(f.type, f.link_version) for f in frames_in(transport)] == [
        (FrameType.VERSION, LINK_VERSION)]
    assert not gateway.client.connected
    with capturedLogs() as logged:
        protocol.dataReceived(origin(0))
    assert gateway.client.connected and gateway.client.followed.origin == Origin(
        LINEAGE.deployment, 0)
    assert any("following the core's database: deployment 0f0f" in formatEvent(e)
               for e in logged)
    gateway.clock.advance(1.0)
    assert [f.type for f in frames_in(transport)] == [FrameType.PING]


def test_a_higher_generation_of_the_same_deployment_is_followed_and_resynchronises() -> None:
    gateway = Gateway()
    first, _ = gateway.linked(0, sequence=5)
    gateway.lose(first)
    with capturedLogs() as logged:
        second, _ = gateway.linked(1, sequence=5)
    assert gateway.client.connected and gateway.client.followed.origin.generation == 1
    assert gateway.resyncs == 1
    assert any("is a restored copy" in formatEvent(e) for e in logged)
    gateway.lose(second)
    gateway.linked(1, sequence=5)  # the same again: nothing to resynchronise
    assert gateway.resyncs == 1


def test_a_lower_generation_is_refused_a_failed_attempt_logged_once_per_core() -> None:
    gateway = Gateway()
    gateway.lose(gateway.linked(2)[0])
    with capturedLogs() as logged:
        for _ in range(3):
            protocol, transport = gateway.linked(1)
            [version, goaway] = frames_in(transport)[1:]
            assert goaway.type is FrameType.GOAWAY
            assert goaway.error == "older copy of the database (generation 1 < 2)"
            assert protocol.closing and not gateway.client.connected
            gateway.lose(protocol)
    assert gateway.client._refusals == 3  # each a failed attempt (the next core is tried)
    assert gateway.client.followed.refusals["older_copy"] == 3
    lines = [formatEvent(e) for e in logged if "refusing the link" in e.get("log_format", "")]
    assert len(lines) == 1 and "restore generation 1" in lines[0], lines
    assert lines[0].endswith("; is a core still running on the old database?"), lines
    assert "follows deployment 0f0f" in lines[0] and lines[0].isascii()
    gateway.linked(2)  # a link to that core made: a refusal of it is logged again
    assert gateway.client.connected and gateway.client.followed.origin.generation == 2


def test_another_deployment_is_refused() -> None:
    gateway = Gateway()
    gateway.lose(gateway.linked(0)[0])
    with capturedLogs() as logged:
        protocol, transport = gateway.linked(7, OTHER)
    assert frames_in(transport)[-1].error == "another deployment"
    # (not "a core still running on the old database": a backup from before deployment
    # ids, restored, is given a new one, and a gateway that ran through must restart)
    [line] = [formatEvent(e) for e in logged if "refusing the link" in e.get("log_format", "")]
    assert line.endswith("; is this core of another database, or was its database restored "
                         "from a backup older than its deployment id (then restart this "
                         "gateway)?"), line
    assert not gateway.client.connected
    assert gateway.client.followed.refusals == {"older_copy": 0, "another_deployment": 1}
    assert gateway.client.followed.origin == Origin(LINEAGE.deployment, 0)


def test_a_core_of_version_6_is_linked_at_welcome_as_before() -> None:
    """Cores of link version 6 or earlier send no ORIGIN (upgrade the cores first)."""
    gateway = Gateway()
    gateway.lose(gateway.linked(3)[0])
    protocol, _ = gateway.link()
    protocol.dataReceived(core_welcome(VIEW_VERSION))
    assert gateway.client.connected and gateway.client.followed.origin.generation == 3


def test_an_event_before_origin_ends_the_link_unapplied() -> None:
    gateway = Gateway()
    protocol, transport = gateway.link()
    protocol.dataReceived(welcome())
    protocol.dataReceived(encode_frame(Frame(FrameType.EVENT, sequence=1, kind="policy",
                                             payload={"policy": "{}"})))
    assert frames_in(transport)[-1].error == "EVENT before ORIGIN"
    assert gateway.events == [] and not gateway.client.connected


def test_no_origin_within_the_welcome_deadline_gives_the_link_up() -> None:
    gateway = Gateway()
    protocol, _ = gateway.link()
    protocol.dataReceived(welcome())
    gateway.clock.advance(WELCOME_TIMEOUT)
    assert protocol.closing and protocol.refused == "no ORIGIN within 2s (hung?)"


def test_an_origin_is_judged_by_the_deployment_and_the_highest_generation_followed() -> None:
    followed = FollowedOrigin()
    assert followed.judge(Origin("d", 4)) is None and followed.follow(Origin("d", 4)) is None
    assert followed.judge(Origin("d", 4)) is None
    assert followed.judge(Origin("d", 5)) is None
    assert followed.follow(Origin("d", 5)) == Origin("d", 4)  # (resynchronise)
    assert followed.judge(Origin("d", 4)).reason == "older_copy"
    assert followed.judge(Origin("e", 9)).message == "another deployment"
    assert str(Origin("d\x00\xe9", 1)) == "deployment d??, restore generation 1"


# Found by a mutation review: what the tests above left unchecked --------------------------

def test_the_core_sends_the_generation_it_read() -> None:
    """ORIGIN carries the database's own generation (a restored copy's is above 0)."""
    protocol, transport, _ = core_link(lineage=Lineage(LINEAGE.deployment, 3))
    frames_in(transport)
    protocol.dataReceived(encode_frame(Frame(FrameType.VERSION, link_version=7)))
    [sent] = [f for f in frames_in(transport) if f.type is FrameType.ORIGIN]
    assert (sent.deployment, sent.restore_generation) == (LINEAGE.deployment, 3)


def test_a_refusal_is_logged_again_once_a_link_to_that_core_was_made() -> None:
    gateway = Gateway()
    gateway.lose(gateway.linked(2)[0])

    def refusals_logged() -> int:
        with capturedLogs() as logged:
            protocol, _ = gateway.linked(1)
            gateway.lose(protocol)
        return sum("refusing the link" in e.get("log_format", "") for e in logged)

    assert refusals_logged() == 1
    assert refusals_logged() == 0  # (once per core)
    gateway.lose(gateway.linked(2)[0])  # a link to it made in between
    assert refusals_logged() == 1


def test_the_cores_whose_refusal_was_logged_are_remembered_at_most_64() -> None:
    followed = FollowedOrigin()
    assert all(followed.first_refusal(f"core{n}") for n in range(64))
    assert not followed.first_refusal("core0")
    assert followed.first_refusal("core64")  # (the set full: emptied first)
    assert len(followed._logged) == 1


def test_a_log_line_shows_40_characters_of_a_deployment_at_most() -> None:
    assert str(Origin("x" * 100, 2)) == f"deployment {'x' * 40}, restore generation 2"


def test_a_second_welcome_while_origin_is_awaited_ends_the_link() -> None:
    gateway = Gateway()
    protocol, transport = gateway.link()
    protocol.dataReceived(welcome() + welcome())
    assert frames_in(transport)[-1].error == "a second WELCOME"
    assert protocol.closing and not gateway.client.connected


def test_an_origin_out_of_turn_ends_the_link() -> None:
    gateway = Gateway()
    protocol, transport = gateway.link()
    protocol.dataReceived(origin(0))
    assert frames_in(transport)[-1].error == "ORIGIN before WELCOME"
    assert protocol.closing and gateway.client.followed.origin is None
    protocol, transport = gateway.linked(0)
    protocol.dataReceived(origin(1))  # another database, on a link made
    assert frames_in(transport)[-1].error == "a second ORIGIN"
    assert protocol.closing and gateway.client.followed.origin.generation == 0


def test_a_view_before_origin_ends_the_link_unapplied() -> None:
    gateway = Gateway()
    protocol, transport = gateway.link()
    protocol.dataReceived(welcome())
    protocol.dataReceived(encode_frame(Frame(FrameType.VIEW, view=b"\x01" * 32)))
    assert frames_in(transport)[-1].error == "VIEW before ORIGIN"
    assert protocol.closing and not gateway.client.connected and gateway.client.view is None
