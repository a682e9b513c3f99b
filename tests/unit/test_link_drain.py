"""VERSION and DRAIN (link version 4): a stopping core asks each gateway that takes DRAIN to
send its new requests elsewhere; the gateway finishes its streams on the old link, closes
it, and sends what came meanwhile on its next link. Each end over StringTransport and a
Clock, frame by frame."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure

from kcm.core.link_server import LinkServerFactory, LinkServerProtocol
from kcm.gateway.link_client import (
    RELINK_AFTER,
    RELINK_JITTER,
    LinkBusy,
    LinkClient,
    LinkClientProtocol,
    LinkDown,
)
from kcm.link.frames import (
    DRAIN_VERSION,
    HELLO_VERSION,
    LINK_VERSION,
    USAGE_VERSION,
    Frame,
    FrameType,
    encode_frame,
)
from tests.gateway_support import core_welcome
from tests.unit.test_link_cancel import (
    APP,
    NeverConnects,
    core_factory,
    frames_in,
    hello,
    request_frame,
    welcome,
)

# The core's end -------------------------------------------------------------------------------


def linked(factory: LinkServerFactory, version: int | None) -> tuple[LinkServerProtocol,
                                                                        StringTransport]:
    """A link of a gateway that names ``version`` in VERSION (None: sends no VERSION, as
    gateways before version 4)."""
    protocol, transport = hello(factory)
    if version is not None:
        protocol.dataReceived(encode_frame(Frame(FrameType.VERSION, link_version=version)))
    frames_in(transport)
    return protocol, transport


def test_a_stopping_core_sends_drain_only_to_gateways_that_take_it_and_waits_for_them() -> None:
    factory, handler, clock = core_factory()
    new, new_wire = linked(factory, LINK_VERSION)
    old, old_wire = linked(factory, USAGE_VERSION)
    legacy, legacy_wire = linked(factory, None)
    for link in (new, old, legacy):
        link.dataReceived(request_frame(1))
    done: list = []
    factory.drain().addCallback(done.append)

    [drain] = frames_in(new_wire)
    assert (drain.type, drain.error) == (FrameType.DRAIN, "the core is stopping")
    assert frames_in(old_wire) == [] and frames_in(legacy_wire) == []
    # A request that crossed the DRAIN is still served and answered.
    new.dataReceived(request_frame(2))
    assert len(handler.calls) == 4
    for _, _, answer in handler.calls:
        answer.callback(b"ans")
    assert [f.type for f in frames_in(new_wire)] == [FrameType.RESPONSE] * 2
    clock.advance(1)
    assert done == []  # the drained gateway has not closed its link yet
    new.dataReceived(encode_frame(Frame(FrameType.GOAWAY, error="drained")))
    assert new_wire.disconnecting
    new.connectionLost(Failure(ConnectionDone()))
    clock.advance(0.05)
    assert done == [None]


def test_a_gateway_that_does_not_take_drain_is_waited_for_until_nothing_is_in_flight() -> None:
    factory, handler, clock = core_factory()
    legacy, _ = linked(factory, None)
    legacy.dataReceived(request_frame(1))
    done: list = []
    factory.drain().addCallback(done.append)
    clock.advance(1)
    assert done == []
    handler.calls[0][2].callback(b"ans")
    clock.advance(0.05)
    assert done == [None]


def test_a_draining_core_welcomes_no_new_link() -> None:
    factory, _, _ = core_factory()
    factory.drain()
    protocol, transport = hello(factory)
    [goaway] = frames_in(transport)
    assert goaway.type is FrameType.GOAWAY and "stopping" in (goaway.error or "")
    assert transport.disconnecting and protocol not in factory.links


def test_a_version_that_crosses_the_drain_is_sent_drain() -> None:
    factory, _, _ = core_factory()
    protocol, transport = linked(factory, None)
    factory.drain()
    assert frames_in(transport) == []
    protocol.dataReceived(encode_frame(Frame(FrameType.VERSION, link_version=DRAIN_VERSION)))
    assert [f.type for f in frames_in(transport)] == [FrameType.DRAIN]


def test_version_comes_once_and_after_hello() -> None:
    factory, _, _ = core_factory()
    for first in (LINK_VERSION, HELLO_VERSION):
        protocol, transport = linked(factory, first)
        protocol.dataReceived(encode_frame(Frame(FrameType.VERSION, link_version=LINK_VERSION)))
        [goaway] = frames_in(transport)
        assert goaway.type is FrameType.GOAWAY and goaway.error == "a second VERSION"
    early = factory.buildProtocol(None)
    transport = StringTransport()
    early.makeConnection(transport)
    early.handshakeCompleted()
    early.dataReceived(encode_frame(Frame(FrameType.VERSION, link_version=LINK_VERSION)))
    [goaway] = frames_in(transport)
    assert goaway.error == "VERSION before HELLO"


# The gateway's end ----------------------------------------------------------------------------


def gateway_link(clock: Clock, *, max_in_flight: int = 4) -> LinkClient:
    client = LinkClient(NeverConnects(), clock=clock, max_in_flight=max_in_flight,
                        first_link_wait=0.0, drain_wait=5.0)
    client.startService()
    return client


def welcomed(client: LinkClient, core_version: int = LINK_VERSION
             ) -> tuple[LinkClientProtocol, StringTransport]:
    return welcome(client, core_version)


def answer(protocol: LinkClientProtocol, stream_id: int, message: bytes) -> None:
    protocol.dataReceived(encode_frame(Frame(FrameType.RESPONSE, stream_id=stream_id,
                                             message=message)))


def test_the_gateway_names_its_version_to_a_core_that_takes_it() -> None:
    client = gateway_link(Clock())
    _, transport = welcomed(client)
    [hello, version] = frames_in(transport)
    assert hello.link_version == HELLO_VERSION
    assert (version.type, version.link_version) == (FrameType.VERSION, LINK_VERSION)
    _, transport = welcomed(client, core_version=USAGE_VERSION)
    assert [f.type for f in frames_in(transport)] == [FrameType.HELLO]  # a frame it lacks
    client.stopService()


def test_after_drain_calls_in_flight_finish_on_the_old_link_and_new_ones_go_to_the_next() -> None:
    clock = Clock()
    client = gateway_link(clock)
    old, old_wire = welcomed(client)
    in_flight = client.forward(b"before", APP, "h:1")
    [sent] = [f for f in frames_in(old_wire) if f.type is FrameType.REQUEST]

    old.dataReceived(encode_frame(Frame(FrameType.DRAIN, error="the core is stopping")))
    assert client.links_drained == 1 and not client.connected and client.relinking
    held = client.forward(b"after", APP, "h:1")
    assert frames_in(old_wire) == []  # nothing new goes on the draining link
    assert not old_wire.disconnecting  # its stream is still to be answered
    answer(old, sent.stream_id, b"first answer")
    assert in_flight.result == b"first answer"
    [goaway] = frames_in(old_wire)
    assert goaway.type is FrameType.GOAWAY and old_wire.disconnecting
    old.connectionLost(Failure(ConnectionDone()))
    assert client.retry_delay(1) <= RELINK_JITTER  # the next link is made at once
    assert client.retry_delay(1) >= 0.2  # and only that once

    clock.advance(0.2)
    assert not held.called
    new, new_wire = welcomed(client)
    [moved] = [f for f in frames_in(new_wire) if f.type is FrameType.REQUEST]
    assert moved.message == b"after"
    answer(new, moved.stream_id, b"second answer")
    assert held.result == b"second answer" and client.in_flight == 0
    assert client.connected and not client.relinking
    # The new link is an ordinary one: lost, it fails calls at once.
    new.connectionLost(Failure(ConnectionDone()))
    failures: list = []
    client.forward(b"x", APP, "h:1").addErrback(failures.append)
    assert failures and failures[0].check(LinkDown)
    client.stopService()


def test_a_drained_link_with_nothing_in_flight_closes_at_once_and_the_wait_is_bounded() -> None:
    clock = Clock()
    client = gateway_link(clock)
    old, old_wire = welcomed(client)
    frames_in(old_wire)
    old.dataReceived(encode_frame(Frame(FrameType.DRAIN)))
    assert [f.type for f in frames_in(old_wire)] == [FrameType.GOAWAY]
    failures: list = []
    client.forward(b"held", APP, "h:1").addErrback(failures.append)
    clock.advance(4.9)
    assert failures == []
    assert client.relinking
    clock.advance(0.1)
    assert [f.value.args for f in failures] == [("no link to the core",)]
    assert not client.relinking  # the wait is over: no link is no link
    client.forward(b"late", APP, "h:1").addErrback(failures.append)
    assert len(failures) == 2  # past the hold: at once
    client.stopService()


def test_held_calls_are_bounded_and_released_when_the_gateway_stops() -> None:
    clock = Clock()
    client = gateway_link(clock, max_in_flight=2)
    old, _ = welcomed(client)
    old.dataReceived(encode_frame(Frame(FrameType.DRAIN)))
    outcomes: list = []
    for _ in range(5):
        client.forward(b"held", APP, "h:1").addBoth(outcomes.append)
    assert len(outcomes) == 1 and outcomes[0].check(LinkBusy)  # 4 wait, the fifth does not
    client.stopService()
    assert len(outcomes) == 5 and all(o.check(LinkDown) for o in outcomes[1:])
    assert not clock.getDelayedCalls()


def test_drain_before_welcome_is_a_protocol_error() -> None:
    client = gateway_link(Clock())
    protocol = LinkClientProtocol(client)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(encode_frame(Frame(FrameType.DRAIN)))
    assert [f.type for f in frames_in(transport)] == [FrameType.HELLO, FrameType.GOAWAY]
    client.stopService()


def test_a_usage_report_waits_for_the_next_link_during_a_drain() -> None:
    client = gateway_link(Clock())
    old, old_wire = welcomed(client)
    frames_in(old_wire)
    old.dataReceived(encode_frame(Frame(FrameType.DRAIN)))
    assert client.report_usage({"l3-1": 3}) is False  # kept for the next report
    client.stopService()


def test_a_link_lost_after_living_a_while_is_made_again_at_once_a_young_one_backs_off() -> None:
    """The core endpoint tries the next core when the last one refuses, so a gateway whose
    core died links to another without the back-off's first delay; a link that dies young
    (a core that takes links and drops them) backs off as usual."""
    clock = Clock()
    client = gateway_link(clock)
    old, _ = welcomed(client)
    clock.advance(RELINK_AFTER)
    old.connectionLost(Failure(ConnectionDone()))
    assert client.retry_delay(1) <= RELINK_JITTER
    young, _ = welcomed(client)
    clock.advance(RELINK_AFTER / 2)
    young.connectionLost(Failure(ConnectionDone()))
    assert client.retry_delay(1) >= 0.2
    client.stopService()


def test_a_call_lost_with_its_link_after_it_was_sent_may_have_run() -> None:
    """A forwarded request sent on a link that is then lost: the core may have run it.
    It was answered "the core is unreachable", as one never sent is, so a client retried
    a Create that had been committed (a review: 12 of 48 such Creates were there after
    the core's restart)."""
    from kcm.gateway.handler import _unreachable_message
    from kcm.gateway.link_client import LinkLost

    clock = Clock()
    client = gateway_link(clock)
    link, _ = welcomed(client)
    sent: list = []
    client.forward(b"sent", APP, "h:1").addErrback(sent.append)
    link.connectionLost(Failure(ConnectionDone()))
    [lost] = sent
    assert lost.check(LinkLost)
    assert _unreachable_message(lost) == ("the link to the core was lost before its answer; "
                                          "the operation may or may not have happened")
    never: list = []
    client.forward(b"not sent", APP, "h:1").addErrback(never.append)
    [down] = never
    assert down.check(LinkDown) and not down.check(LinkLost)
    assert _unreachable_message(down).startswith("the core is unreachable")
    client.stopService()
    stopping: list = []  # and a gateway that stops does not blame the core
    client.forward(b"late", APP, "h:1").addErrback(stopping.append)
    assert _unreachable_message(stopping[0]) == "the gateway is stopping; try again"


def test_a_gateway_that_stops_does_not_warn_of_the_link_it_closed() -> None:
    """Each SIGTERM of a gateway, and each worker a SIGHUP restarts, logged the link it
    closed itself as a warning, ``link to the core lost: Connection was closed cleanly``."""
    from twisted.logger import formatEvent, globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        client = gateway_link(Clock())
        lost, _ = welcomed(client)
        lost.connectionLost(Failure(ConnectionDone()))  # running: the core went away
        stopping, _ = welcomed(client)
        client.stopService()
        stopping.connectionLost(Failure(ConnectionDone()))
    finally:
        globalLogPublisher.removeObserver(events.append)
    said = [(e["log_level"].name, formatEvent(e)) for e in events
            if "link to the core" in formatEvent(e)]
    assert said == [("warn", "link to the core lost: Connection was closed cleanly."),
                    ("info", "link to the core closed: this gateway stops")], said


def test_a_stopping_gateway_forwards_nothing_on_a_link_still_up() -> None:
    """A forward goes straight to the link's protocol when one is up, but not once the
    gateway stops, before its link is closed: refused as stopping, as any call then."""
    from kcm.gateway.handler import _unreachable_message

    client = gateway_link(Clock())
    link, _ = welcomed(client)
    client.stopService()
    in_flight = client._in_flight
    refused: list = []
    client.forward(b"late", APP, "h:1").addErrback(refused.append)
    [stopping] = refused
    assert _unreachable_message(stopping) == "the gateway is stopping; try again"
    assert client._in_flight == in_flight and not link.streams


def candidate_of(client: LinkClient) -> tuple[LinkClientProtocol, StringTransport]:
    """The connection a renewal's candidate connector makes (HELLO sent, not welcomed)."""
    assert client._candidate is not None
    protocol = LinkClientProtocol(client, client._candidate)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_a_renewed_certificate_s_link_is_made_before_the_old_one_is_broken() -> None:
    """The gateway's certificate was renewed (kcm.tls_refresh): a second link is opened
    while the first carries every call; once the core welcomes it, new calls go on it,
    the call in flight is answered on the old link, which then closes; none fails, none
    waits."""
    clock = Clock()
    client = gateway_link(clock)
    assert not client.relink("renewed")  # no link: nothing to make again
    old, old_wire = welcomed(client)
    old.connector = client._connector  # (the link's ClientService made it)
    in_flight = client.forward(b"before", APP, "h:1")
    [sent] = [f for f in frames_in(old_wire) if f.type is FrameType.REQUEST]
    assert client.relink("this gateway's certificate was renewed")
    assert client.connected and not client.relinking and client.links_renewed == 0
    new, new_wire = candidate_of(client)
    assert [f.type for f in frames_in(new_wire)] == [FrameType.HELLO]
    # Until the core welcomes the new link, calls go on the old one.
    meanwhile = client.forward(b"meanwhile", APP, "h:1")
    [kept] = [f for f in frames_in(old_wire) if f.type is FrameType.REQUEST]
    new.dataReceived(core_welcome(LINK_VERSION))
    assert client.links_renewed == 1 and client.connected and client._protocol is new
    assert old.draining and not old_wire.disconnecting  # two calls still in flight on it
    after = client.forward(b"after", APP, "h:1")
    [moved] = [f for f in frames_in(new_wire) if f.type is FrameType.REQUEST]
    assert moved.message == b"after" and frames_in(old_wire) == []
    answer(old, sent.stream_id, b"first answer")
    assert not old_wire.disconnecting
    answer(old, kept.stream_id, b"kept answer")
    assert (in_flight.result, meanwhile.result) == (b"first answer", b"kept answer")
    [goaway] = frames_in(old_wire)
    assert goaway.type is FrameType.GOAWAY and old_wire.disconnecting
    retired = old.connector
    assert retired is not client._connector and retired.service.parent is client
    old.connectionLost(Failure(ConnectionDone()))
    assert client.connected and client._protocol is new
    clock.advance(0)
    assert retired.service.parent is None and not retired.service.running  # stopped
    answer(new, moved.stream_id, b"second answer")
    assert after.result == b"second answer" and client.in_flight == 0
    client.stopService()


def test_a_renewed_certificate_the_core_refuses_leaves_the_link_in_use() -> None:
    """The core refuses the link with the new certificate (before WELCOME): the old link
    goes on carrying every call, the refusal is said once and counted at each attempt,
    and the new link is tried again on a back-off (at once at the next renewal)."""
    clock = Clock()
    client = gateway_link(clock)
    old, old_wire = welcomed(client)
    assert client.relink("renewed")
    with capturedLogs() as logs:
        for _ in range(3):
            new, _ = candidate_of(client)
            new.connectionLost(Failure(ConnectionDone("tlsv1 alert unknown ca")))
    said = [formatEvent(e) for e in logs if e.get("log_level") is LogLevel.warn]
    assert len(said) == 1 and "refused a link with this gateway's renewed" in said[0]
    assert "tlsv1 alert unknown ca" in said[0] and "stays in use" in said[0]
    assert said[0].isascii()
    assert client.links_renew_refused == 3 and client.links_renewed == 0
    assert client._protocol is old and client.connected and client._refusals == 0
    assert 8.0 <= client._connector_delay(client._candidate, 0) <= 8.2  # 1 s doubling
    done = client.forward(b"still", APP, "h:1")
    [sent] = [f for f in frames_in(old_wire) if f.type is FrameType.REQUEST]
    answer(old, sent.stream_id, b"answered")
    assert done.result == b"answered" and not old_wire.disconnecting
    # The next renewal tries at once, and is said again if refused.
    first = client._candidate
    assert client.relink("renewed again")
    assert client._candidate is not first and first.service.parent is None
    assert 1.0 <= client._connector_delay(client._candidate, 0) <= 1.2
    with capturedLogs() as logs:
        new, _ = candidate_of(client)
        new.connectionLost(Failure(ConnectionDone()))
    assert sum(e.get("log_level") is LogLevel.warn for e in logs) == 1
    client.stopService()


def test_a_renewal_s_pending_link_is_given_up_when_the_link_in_use_is_lost() -> None:
    """The old link lost while the new one is not welcomed: the link's own reconnection
    (with the newest certificate) takes over, and the candidate is closed."""
    clock = Clock()
    client = gateway_link(clock)
    old, _ = welcomed(client)
    assert client.relink("renewed")
    candidate = client._candidate
    new, new_wire = candidate_of(client)
    old.connectionLost(Failure(ConnectionDone()))
    assert client._candidate is None and candidate.service.parent is None
    assert client.links_renew_refused == 0 and not client.connected
    client.stopService()


def test_a_renewal_s_link_made_while_the_old_one_is_down_retires_the_old_connector() -> None:
    """The old link was lost (its connector trying again) when the renewal's link is
    welcomed: the old connector is stopped at once, and a connection of it completing
    anyway is closed, never taken for the link."""
    from kcm.gateway.link_certificates import LinkCertificates
    from kcm.tls import RenewableClientTLS

    clock = Clock()
    newest = RenewableClientTLS(object())
    certificate = ["old"]
    certificates = LinkCertificates(lambda: newest, lambda: certificate[0])
    certificates.accepted()
    client = LinkClient(NeverConnects(), clock=clock, max_in_flight=4, first_link_wait=0.0,
                        renewal_endpoint=NeverConnects(), certificates=certificates)
    client.startService()
    old, _ = welcomed(client)
    old.connector = client._connector
    certificate[0] = "new"
    assert client.relink("renewed")
    old.connectionLost(Failure(ConnectionDone()))  # (the renewal's link tried again)
    previous = client._connector
    new, _ = candidate_of(client)
    new.dataReceived(core_welcome(LINK_VERSION))
    assert client._protocol is new and client._connector is not previous
    assert previous.service.parent is None and not previous.service.running
    late = LinkClientProtocol(client, previous)
    late_wire = StringTransport()
    late.makeConnection(late_wire)
    late.dataReceived(core_welcome(LINK_VERSION))
    assert client._protocol is new and late_wire.disconnecting
    assert [f.error for f in frames_in(late_wire) if f.type is FrameType.GOAWAY] == [
        "superseded by another link"]
    client.stopService()
