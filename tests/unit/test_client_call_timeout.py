"""The Twisted client's ``timeout`` bounds a whole call, as the blocking client's does: the
wait for a connection along the endpoint list, the request (queued or written), its answer
and its resend on failover share one deadline. On a ``task.Clock``, over fake endpoints
that take their time to connect or to fail. (It bounded each attempt: a call with
failover could take several times ``timeout``.)"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from kcm.client.endpoints import FailoverConnection, TlsFiles, connect_timeout_for
from kcm.client.errors import KmipClientError
from kcm.client.pool import KmipClient
from kcm.kmip.payloads.mac_hash_rng import RngRetrieveResponse
from tests.unit.test_client_protocol import connected, get, respond, results


class TimedEndpoint:
    """Connects after ``after`` seconds on ``clock``, or fails then (``fails``): a server
    that takes TCP connections and never finishes the handshake fails at the end of
    ``connect_timeout``."""

    def __init__(self, clock: task.Clock, after: float = 0.0, fails: bool = False) -> None:
        self.clock = clock
        self.after = after
        self.fails = fails
        self.attempts = 0
        self.protocols: list[Any] = []

    def connect(self, factory: Any) -> defer.Deferred:
        self.attempts += 1
        d: defer.Deferred = defer.Deferred()

        def settle() -> None:
            if self.fails:
                d.errback(ConnectionError("the TLS handshake did not finish"))
                return
            protocol = factory.buildProtocol(None)
            protocol.makeConnection(StringTransport())
            self.protocols.append(protocol)
            d.callback(protocol)

        self.clock.callLater(self.after, settle)
        return d


def client_of(clock: task.Clock, endpoints: dict[str, TimedEndpoint], **options: Any
              ) -> KmipClient:
    return KmipClient(clock, list(endpoints), lambda e: endpoints[str(e)], **options)


def test_a_call_to_endpoints_that_never_connect_fails_at_its_timeout() -> None:
    clock = task.Clock()
    endpoints = {f"h{n}:1": TimedEndpoint(clock, after=2.0, fails=True) for n in range(3)}
    client = client_of(clock, endpoints, timeout=3.0)
    got = results([client.rng_retrieve(4)])
    clock.advance(2.999)
    assert got == []
    clock.advance(0.001)  # it failed at 6 s, then its resend at 12 s
    (failure,) = got
    assert failure.check(KmipClientError)
    assert str(failure.value).startswith("no answer within 3 s (the call's timeout): h0:1: ")
    clock.pump([2.0, 2.0])  # the opening ends on its own (for the calls to come)
    assert [e.attempts for e in endpoints.values()] == [1, 1, 1]
    assert clock.getDelayedCalls() == []


def test_a_hung_endpoint_then_a_good_one_answers_within_the_timeout() -> None:
    clock = task.Clock()
    endpoints = {"hung:1": TimedEndpoint(clock, after=1.0, fails=True),
                 "good:2": TimedEndpoint(clock)}
    client = client_of(clock, endpoints, timeout=2.0)
    got = results([client.rng_retrieve(4)])
    clock.advance(1.0)
    respond(endpoints["good:2"].protocols[0], RngRetrieveResponse(data=b"abcd"))
    assert got == [b"abcd"] and str(client.endpoint) == "good:2"


def test_a_request_and_its_resend_share_the_call_s_deadline() -> None:
    clock = task.Clock()
    endpoints = {"a:1": TimedEndpoint(clock), "b:2": TimedEndpoint(clock)}
    client = client_of(clock, endpoints, timeout=5.0, size=1)
    got = results([client.rng_retrieve(4)])
    clock.advance(2.0)
    endpoints["a:1"].protocols[0].connectionLost(Failure(ConnectionError("reset")))
    clock.advance(0)  # b connects; the resend waits there, silent
    assert endpoints["b:2"].protocols[0].outstanding == 1
    clock.advance(2.999)
    assert got == []
    clock.advance(0.001)  # at 5 s in all: the resend had 5 s of its own (7 s)
    (failure,) = got
    assert "no answer within 5 s (the call's timeout)" in str(failure.value)


def test_a_call_that_timed_out_waiting_leaves_the_connection_to_the_next() -> None:
    clock = task.Clock()
    slow = TimedEndpoint(clock, after=4.0)
    client = client_of(clock, {"slow:1": slow}, timeout=3.0)
    first = results([client.rng_retrieve(4)])
    clock.advance(3.0)
    assert first[0].check(KmipClientError) and "(the call's timeout)" in str(first[0].value)
    clock.advance(1.0)  # the connection is made: nothing was sent on it for the late call
    (protocol,) = slow.protocols
    assert protocol.outstanding == 0
    second = results([client.rng_retrieve(4)])
    respond(protocol, RngRetrieveResponse(data=b"wxyz"))
    assert second == [b"wxyz"] and slow.attempts == 1


def test_a_connection_made_at_the_call_s_deadline_is_not_spent_on_it() -> None:
    """(The request was written with no time left, timed out at once, and closed the
    connection just made, for the calls to come too.)"""
    clock = task.Clock()
    slow = TimedEndpoint(clock, after=3.0)
    client = client_of(clock, {"slow:1": slow}, timeout=3.0, size=1)
    got = results([client.rng_retrieve(4)])
    clock.advance(3.0)
    assert "(the call's timeout)" in str(got[0].value)
    (protocol,) = slow.protocols
    clock.advance(0)
    assert protocol.usable and protocol.outstanding == 0
    assert str(client.endpoint) == "slow:1"


def test_a_request_queued_past_its_deadline_fails_alone() -> None:
    """A request still in the connection's queue (behind max_in_flight) at its deadline
    was never sent: it fails, and the connection and what is in flight go on."""
    clock = task.Clock()
    protocol, server = connected(clock, max_in_flight=1)
    sent = results([protocol.send((1, 4), [get("a")], deadline=10.0)])
    queued = results([protocol.send((1, 4), [get("b")], deadline=1.0, late="too late")])
    clock.advance(1.0)
    assert str(queued[0].value) == "too late" and sent == []
    assert protocol.usable and protocol.outstanding == 1
    assert len(server.requests()) == 1  # b was never written


def test_a_request_that_timed_out_queued_keeps_the_endpoint() -> None:
    """Behind ``max_in_flight``, a call whose deadline passed before it was sent said
    nothing of the server, which answers what it was sent: the pool kept sending there.
    (It gave the endpoint up as if it had not answered.)"""
    clock = task.Clock()
    endpoints = {"a:1": TimedEndpoint(clock), "b:2": TimedEndpoint(clock)}
    client = client_of(clock, endpoints, timeout=10.0, size=1, max_in_flight=1)
    first = results([client.rng_retrieve(4)])
    clock.advance(0)
    (protocol,) = endpoints["a:1"].protocols
    queued = results([client.send([get("x")], deadline=clock.seconds() + 1.0)])
    clock.advance(1.0)
    assert queued[0].check(KmipClientError) and protocol.usable
    respond(protocol, RngRetrieveResponse(data=b"abcd"))
    assert first == [b"abcd"]
    assert str(client.endpoint) == "a:1" and endpoints["b:2"].attempts == 0
    second = results([client.rng_retrieve(4)])
    respond(protocol, RngRetrieveResponse(data=b"efgh"))
    assert second == [b"efgh"]


def test_a_written_request_past_its_deadline_closes_the_connection() -> None:
    clock = task.Clock()
    protocol, server = connected(clock)
    got = results([protocol.send((1, 4), [get("a")], deadline=1.0, late="too late"),
                   protocol.send((1, 4), [get("b")], deadline=9.0)])
    clock.advance(1.0)
    assert str(got[0].value) == "too late"
    assert "a request on it had no answer in time" in str(got[1].value)
    assert server.transport.disconnecting


def test_a_send_with_no_time_left_fails_at_once_and_opens_no_connection() -> None:
    clock = task.Clock()
    clock.advance(10.0)
    endpoint = TimedEndpoint(clock)
    client = client_of(clock, {"a:1": endpoint}, timeout=3.0)
    for deadline in (10.0, 9.0):
        got = results([client.send([get("a")], deadline=deadline)])
        assert "no answer within 3 s (the call's timeout)" in str(got[0].value)
    assert endpoint.attempts == 0 and clock.getDelayedCalls() == []


def test_a_late_call_names_what_its_own_opening_met_alone() -> None:
    """The endpoints a call's opening tried are named when it ends late; those an earlier
    opening tried are not."""
    clock = task.Clock()
    endpoints = {"a:1": TimedEndpoint(clock, after=1.0, fails=True),
                 "b:2": TimedEndpoint(clock, after=1.0)}
    client = client_of(clock, endpoints, timeout=5.0)
    first = results([client.rng_retrieve(4)])
    clock.advance(1.0)
    clock.advance(1.0)  # a refused, b connected
    respond(endpoints["b:2"].protocols[0], RngRetrieveResponse(data=b"abcd"))
    assert first == [b"abcd"]
    endpoints["b:2"].protocols[0].connectionLost(Failure(ConnectionError("reset")))
    endpoints["b:2"].after = 10.0  # b is slow to connect now
    second = results([client.rng_retrieve(4)])
    clock.advance(5.0)
    assert str(second[0].value) == "no answer within 5 s (the call's timeout)"


class NoPastClock(task.Clock):
    """Refuses a negative delay, as the reactor's callLater does."""

    def callLater(self, delay: float, *args: Any, **kwargs: Any) -> Any:  # noqa: N802
        assert delay >= 0, f"{delay} is not greater than or equal to 0 seconds"
        return super().callLater(delay, *args, **kwargs)


def test_a_request_sent_past_its_deadline_fails_at_once_on_the_reactor() -> None:
    clock = NoPastClock()
    clock.advance(5.0)
    protocol, server = connected(clock)
    got = results([protocol.send((1, 4), [get("a")], deadline=4.0, late="too late")])
    clock.advance(0)
    assert str(got[0].value) == "too late"


@pytest.mark.parametrize(("timeout", "count", "given", "expected"), [
    (3.0, 3, None, 1.0),      # the endpoint's share of the call
    (60.0, 2, None, 10.0),    # at most 10 s
    (30.0, 1, 0.5, 0.5),      # as given
])
def test_both_clients_share_the_connect_timeout_default(
        monkeypatch: pytest.MonkeyPatch, timeout: float, count: int, given: float | None,
        expected: float) -> None:
    import kcm.client.pool as pool

    seen: list[float] = []

    def factory(reactor: Any, tls: Any, endpoints: Any, *, connect_timeout: float) -> Any:
        seen.append(connect_timeout)
        return lambda endpoint: None

    monkeypatch.setattr(pool, "tls_endpoint_factory", factory)
    monkeypatch.setattr("kcm.client.endpoints.KmipClient", lambda *a, **k: None)
    endpoints = [f"127.0.0.1:{n + 1}" for n in range(count)]
    KmipClient.tls(task.Clock(), endpoints, cert="c", key="k", ca="a", timeout=timeout,
                   connect_timeout=given)
    blocking = FailoverConnection(endpoints, TlsFiles("c", "k", "a"), timeout=timeout,
                                  connect_timeout=given)
    assert seen == [expected] and blocking.connect_timeout == expected


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "1"])
def test_a_connect_timeout_that_is_no_bound_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="connect_timeout must be a positive number"):
        connect_timeout_for(30.0, 1, bad)
