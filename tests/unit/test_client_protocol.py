"""kcm.client.protocol over a StringTransport and a task.Clock: pipelining, answers matched
by Unique Batch Item ID whatever order the server answers in (messages and batch items), in
order when the server gives no ID, the bound on requests in flight, deadlines, and a lost
connection; and the pool's choice of connection and failover over fake endpoints."""

from __future__ import annotations

import random

import pytest
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from kcm.client.errors import KmipClientError, KmipOperationFailed
from kcm.client.pool import KmipClient
from kcm.client.protocol import KmipClientProtocol
from kcm.kmip.enums import Operation, ResultReason, ResultStatus
from kcm.kmip.messages import (
    ProtocolVersion,
    RequestBatchItem,
    ResponseBatchItem,
    ResponseHeader,
    ResponseMessage,
    decode_request,
    encode_response,
)
from kcm.kmip.payloads.lifecycle import GetRequest
from kcm.kmip.payloads.mac_hash_rng import RngRetrieveResponse
from kcm.ttlv import decode, encode
from kcm.ttlv.framer import Framer


def get(uid: str) -> RequestBatchItem:
    return RequestBatchItem(operation=Operation.GET,
                            request_payload=GetRequest(unique_identifier=uid))


def answer(items: list[ResponseBatchItem], version=(1, 4)) -> bytes:
    header = ResponseHeader(protocol_version=ProtocolVersion.of(version), time_stamp=0,
                            batch_count=len(items))
    return encode(encode_response(ResponseMessage(header, items)))


def echo_item(request_item, with_id: bool = True) -> ResponseBatchItem:
    """A failed item whose message names the request's Unique Identifier: what it answers."""
    return ResponseBatchItem(
        operation=request_item.operation,
        unique_batch_item_id=request_item.unique_batch_item_id if with_id else None,
        result_status=ResultStatus.OPERATION_FAILED,
        result_reason=ResultReason.ITEM_NOT_FOUND,
        result_message=request_item.request_payload.unique_identifier)


class FakeServer:
    """Reads what the client wrote; answers as told."""

    def __init__(self, transport: StringTransport) -> None:
        self.transport = transport
        self.framer = Framer(1 << 20)

    def requests(self):
        data = self.transport.value()
        self.transport.clear()
        return [decode_request(decode(wire)) for wire in self.framer.feed(data)]


def connected(clock=None, **options) -> tuple[KmipClientProtocol, FakeServer]:
    protocol = KmipClientProtocol(clock or task.Clock(), **options)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, FakeServer(transport)


class Results(list):
    """What each Deferred fired with, in the Deferreds' order (missing: not fired yet)."""

    def __init__(self, deferreds) -> None:
        super().__init__()
        self._got: dict[int, object] = {}
        self._count = len(deferreds)
        for index, d in enumerate(deferreds):
            d.addBoth(self._fired, index)

    def _fired(self, result, index) -> None:
        self._got[index] = result
        self[:] = [self._got[i] for i in sorted(self._got)]


results = Results


def test_a_thousand_in_flight_answered_in_reverse_are_matched_by_id() -> None:
    protocol, server = connected()
    sent = [protocol.send((1, 4), [get(f"uid-{n}")]) for n in range(1000)]
    got = results(sent)
    requests = server.requests()
    assert len(requests) == 1000 and protocol.outstanding == 1000  # all written at once
    ids = {r.batch_items[0].unique_batch_item_id for r in requests}
    assert len(ids) == 1000
    order = list(reversed(requests))
    random.Random(7).shuffle(order)
    protocol.dataReceived(b"".join(answer([echo_item(r.batch_items[0])]) for r in order))
    assert [g.batch_items[0].result_message for g in got] == [f"uid-{n}" for n in range(1000)]
    assert protocol.outstanding == 0


def test_batch_items_answered_out_of_order_come_back_in_request_order() -> None:
    protocol, server = connected()
    got = results([protocol.send((2, 1), [get("a"), get("b"), get("c")])])
    (request,) = server.requests()
    assert request.header.version == (2, 1)
    items = request.batch_items
    protocol.dataReceived(answer([echo_item(items[2]), echo_item(items[0]),
                                  echo_item(items[1])], (2, 1)))
    assert [i.result_message for i in got[0].batch_items] == ["a", "b", "c"]


def test_answers_without_ids_are_matched_in_order() -> None:
    protocol, server = connected()
    got = results([protocol.send((1, 4), [get(u)]) for u in ("x", "y")])
    requests = server.requests()
    protocol.dataReceived(b"".join(answer([echo_item(r.batch_items[0], with_id=False)])
                                   for r in requests))
    assert [g.batch_items[0].result_message for g in got] == ["x", "y"]


def test_answers_split_across_reads_are_framed() -> None:
    protocol, server = connected()
    got = results([protocol.send((1, 4), [get("split")])])
    wire = answer([echo_item(server.requests()[0].batch_items[0])])
    for n in range(len(wire)):
        protocol.dataReceived(wire[n:n + 1])
    assert got[0].batch_items[0].result_message == "split"


def test_no_more_than_max_in_flight_are_sent_the_rest_wait_in_order() -> None:
    protocol, server = connected(max_in_flight=3)
    got = results([protocol.send((1, 4), [get(str(n))]) for n in range(7)])
    first = server.requests()
    assert len(first) == 3 and protocol.outstanding == 7
    protocol.dataReceived(answer([echo_item(first[1].batch_items[0])]))
    second = server.requests()
    assert [r.batch_items[0].request_payload.unique_identifier for r in second] == ["3"]
    rest = [first[0], first[2], *second]
    protocol.dataReceived(b"".join(answer([echo_item(r.batch_items[0])]) for r in rest))
    rest = server.requests()
    assert len(rest) == 3
    protocol.dataReceived(b"".join(answer([echo_item(r.batch_items[0])]) for r in rest))
    assert [g.batch_items[0].result_message for g in got] == [str(n) for n in range(7)]


def test_answers_before_an_unreadable_header_reach_their_callers_then_it_closes() -> None:
    protocol, server = connected(max_in_flight=1)
    got = results([protocol.send((1, 4), [get(u)]) for u in ("first", "second")])
    (first,) = server.requests()
    protocol.dataReceived(answer([echo_item(first.batch_items[0])]) + bytes(8))
    assert got[0].batch_items[0].result_message == "first"
    assert isinstance(got[1], Failure) and "not TTLV" in str(got[1].value)
    assert server.transport.disconnected and server.requests() == []  # nothing more sent


def test_a_request_past_its_deadline_fails_and_closes_the_connection() -> None:
    clock = task.Clock()
    protocol, server = connected(clock, timeout=5.0)
    got = results([protocol.send((1, 4), [get("slow")]), protocol.send((1, 4), [get("next")])])
    clock.advance(5.0)
    assert all(isinstance(g, Failure) and g.check(KmipClientError) for g in got)
    assert "no answer within 5 s" in str(got[0].value)
    assert server.transport.disconnecting


def test_a_lost_connection_fails_what_is_outstanding_and_what_follows() -> None:
    protocol, _ = connected(max_in_flight=1)
    got = results([protocol.send((1, 4), [get("a")]), protocol.send((1, 4), [get("b")])])
    protocol.connectionLost(Failure(ConnectionError("reset")))
    later = results([protocol.send((1, 4), [get("c")])])
    assert all(g.check(KmipClientError) for g in got + later)


def test_a_close_the_server_never_completes_is_aborted_after_the_grace() -> None:
    """close() sends the TLS close and waits for the server's; a server that no longer
    answers (a hung gateway) does not keep the connection, nor whoever waits for it to be
    lost: it is aborted after CLOSE_GRACE seconds. One that closes in time is not."""
    from kcm.client.protocol import CLOSE_GRACE

    class Transport(StringTransport):
        aborted = 0

        def abortConnection(self) -> None:
            self.aborted += 1
            self.protocol.connectionLost(Failure(ConnectionError("aborted")))

    for server_closes in (False, True):
        clock = task.Clock()
        protocol = KmipClientProtocol(clock)
        transport = Transport()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        protocol.close()
        assert transport.disconnecting and not protocol.lost.called
        if server_closes:
            protocol.connectionLost(Failure(ConnectionError("closed")))
        clock.advance(CLOSE_GRACE)
        assert protocol.lost.called
        assert transport.aborted == (0 if server_closes else 1)
        assert clock.getDelayedCalls() == []


def test_an_answer_nobody_asked_for_closes_the_connection() -> None:
    protocol, server = connected()
    protocol.dataReceived(answer([ResponseBatchItem(result_status=ResultStatus.SUCCESS)]))
    assert server.transport.disconnecting


# The pool over fake endpoints -------------------------------------------------------------

class FakeEndpoint:
    """Connects a protocol to a StringTransport, or refuses."""

    def __init__(self, refuse: bool = False, error: Exception | None = None) -> None:
        self.refuse = refuse or error is not None
        self.error = error
        self.protocols: list[KmipClientProtocol] = []

    def connect(self, factory):
        if self.refuse:
            return defer.fail(self.error or ConnectionRefusedError("refused"))
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.protocols.append(protocol)
        return defer.succeed(protocol)


def respond(protocol: KmipClientProtocol, payload=None, status=ResultStatus.SUCCESS) -> None:
    server = FakeServer(protocol.transport)
    for request in server.requests():
        item = request.batch_items[0]
        protocol.dataReceived(answer([ResponseBatchItem(
            operation=item.operation, unique_batch_item_id=item.unique_batch_item_id,
            result_status=status,
            result_reason=None if status == ResultStatus.SUCCESS else ResultReason.ITEM_NOT_FOUND,
            result_message=None if status == ResultStatus.SUCCESS else "gone",
            response_payload=payload)]))


def pool(endpoints: dict[str, FakeEndpoint], **options) -> KmipClient:
    return KmipClient(task.Clock(), list(endpoints),
                      lambda e: endpoints[str(e)], **options)


def test_the_pool_fails_over_to_the_next_endpoint_and_keeps_it() -> None:
    endpoints = {"a:1": FakeEndpoint(refuse=True), "b:2": FakeEndpoint()}
    client = pool(endpoints)
    got = results([client.rng_retrieve(4)])
    respond(endpoints["b:2"].protocols[0], RngRetrieveResponse(data=b"abcd"))
    assert got == [b"abcd"] and str(client.endpoint) == "b:2"


def test_no_endpoint_answering_is_a_client_error_naming_each() -> None:
    client = pool({"a:1": FakeEndpoint(refuse=True), "b:2": FakeEndpoint(refuse=True)})
    (got,) = results([client.rng_retrieve(4)])
    assert got.check(KmipClientError) and "a:1" in str(got.value) and "b:2" in str(got.value)


def test_failure_answers_reach_the_caller() -> None:
    endpoints = {"a:1": FakeEndpoint()}
    client = pool(endpoints)
    got = results([client.destroy("x")])
    respond(endpoints["a:1"].protocols[0], status=ResultStatus.OPERATION_FAILED)
    assert got[0].check(KmipOperationFailed)
    assert got[0].value.reason == ResultReason.ITEM_NOT_FOUND and got[0].value.message == "gone"


def test_a_busy_pool_opens_up_to_size_connections() -> None:
    endpoints = {"a:1": FakeEndpoint()}
    client = pool(endpoints, size=2)
    results([client.rng_retrieve(1) for _ in range(5)])
    assert len(endpoints["a:1"].protocols) == 2
    assert sorted(p.outstanding for p in endpoints["a:1"].protocols) == [2, 3]


def test_an_idempotent_request_is_sent_again_when_its_connection_breaks() -> None:
    endpoints = {"a:1": FakeEndpoint()}
    client = pool(endpoints, size=1)
    got = results([client.rng_retrieve(4)])
    endpoints["a:1"].protocols[0].connectionLost(Failure(ConnectionError("reset")))
    assert not got and len(endpoints["a:1"].protocols) == 2
    respond(endpoints["a:1"].protocols[1], RngRetrieveResponse(data=b"wxyz"))
    assert got == [b"wxyz"]


@pytest.mark.parametrize("operation", [Operation.CREATE, Operation.DESTROY])
def test_a_non_idempotent_request_is_not(operation) -> None:
    endpoints = {"a:1": FakeEndpoint()}
    client = pool(endpoints, size=1)
    got = results([client.destroy("x") if operation == Operation.DESTROY
                   else client.create()])
    endpoints["a:1"].protocols[0].connectionLost(Failure(ConnectionError("reset")))
    assert got[0].check(KmipClientError) and len(endpoints["a:1"].protocols) == 1


def test_a_further_connection_refused_sends_on_the_open_one_and_backs_off() -> None:
    """The pool opens a second connection when its one is busy; when that one was refused
    (a gateway's cap on connections from one address), the requests waiting for it failed
    `no endpoint answered`, never sent, while the open connection could carry them."""
    from kcm.client.pool import MORE_CONNECTIONS_BACKOFF

    endpoint = FakeEndpoint()
    clock = task.Clock()
    client = KmipClient(clock, ["a:1"], lambda e: endpoint, size=2)
    first = results([client.rng_retrieve(4)])
    (only,) = endpoint.protocols
    endpoint.refuse = True
    more = results([client.rng_retrieve(4), client.rng_retrieve(4)])  # one open, busy
    assert not [r for r in more if isinstance(r, Failure)]
    assert only.outstanding == 3 and len(endpoint.protocols) == 1
    endpoint.refuse = False
    results([client.rng_retrieve(4)])  # within the backoff: no new attempt
    assert len(endpoint.protocols) == 1
    respond(only, RngRetrieveResponse(data=b"abcd"))
    assert first == [b"abcd"] and more == [b"abcd", b"abcd"]
    clock.advance(MORE_CONNECTIONS_BACKOFF)
    results([client.rng_retrieve(4), client.rng_retrieve(4)])
    assert len(endpoint.protocols) == 2


def test_a_further_connection_refused_never_sends_to_an_endpoint_given_up() -> None:
    """The fallback to an open connection took one to an endpoint already given up (which
    takes no new requests): a retry went back to the endpoint that had just failed."""
    from twisted.internet.error import ConnectionLost

    endpoints = {"a:1": FakeEndpoint(), "b:2": FakeEndpoint()}
    client = pool(endpoints, size=2)
    got = results([client.rng_retrieve(4), client.rng_retrieve(4)])
    a1, a2 = endpoints["a:1"].protocols
    assert a1.outstanding == a2.outstanding == 1
    endpoints["a:1"].refuse = endpoints["b:2"].refuse = True
    a1.connectionLost(Failure(ConnectionLost()))  # a is given up; the retry finds no endpoint
    assert str(client.endpoint) == "b:2"
    [failed] = got
    assert isinstance(failed, Failure) and "no endpoint answered" in str(failed.value)
    assert a2.outstanding == 1  # its own request only: the retry was not sent to a


# KmipClientError.temporary: whether the same call may succeed later (docs/sdk.md, "Errors")

def test_the_twisted_clients_errors_say_whether_they_may_pass_as_the_blocking_ones_do() -> None:
    """The blocking client marked a refused connection or a late answer ``temporary`` and
    the Twisted client never did: a service retrying on it never retried with Deferreds."""
    from OpenSSL.SSL import Error as SslError
    from twisted.internet.error import DNSLookupError

    from kcm.eager_tls import HandshakeFailed

    def error_of(endpoints: dict[str, FakeEndpoint], **options) -> KmipClientError:
        (got,) = results([pool(endpoints, **options).rng_retrieve(4)])
        assert isinstance(got, Failure) and got.check(KmipClientError)
        return got.value

    # Connecting: temporary only if every endpoint's failure may pass.
    assert error_of({"a:1": FakeEndpoint(refuse=True)}).temporary
    assert error_of({"a:1": FakeEndpoint(error=HandshakeFailed("no TLS handshake")),
                     "b:2": FakeEndpoint(refuse=True)}).temporary
    assert not error_of({"a:1": FakeEndpoint(
        error=HandshakeFailed("certificate verify failed", temporary=False))}).temporary
    assert not error_of({"a:1": FakeEndpoint(refuse=True),
                         "b:2": FakeEndpoint(error=DNSLookupError("b"))}).temporary

    # A request: late, or its connection broke, may pass; a bad answer or a TLS alert not.
    clock = task.Clock()
    protocol, _ = connected(clock, timeout=5.0)
    got = results([protocol.send((1, 4), [get("slow")]), protocol.send((1, 4), [get("b")])])
    clock.advance(5.0)
    assert [g.value.temporary for g in got] == [True, True]
    for reason, passing in ((ConnectionError("reset"), True), (SslError("unknown ca"), False)):
        protocol, _ = connected()
        got = results([protocol.send((1, 4), [get("a")])])
        protocol.connectionLost(Failure(reason))
        got += results([protocol.send((1, 4), [get("after")])])
        assert [g.value.temporary for g in got] == [passing, passing]
    protocol, _ = connected()
    got = results([protocol.send((1, 4), [get("a")])])
    protocol.dataReceived(b"not TTLV at all, this")
    assert got[0].check(KmipClientError) and not got[0].value.temporary

    # The call's timeout while the connection is being made.
    endpoint = FakeEndpoint()
    endpoint.connect = lambda factory: defer.Deferred()  # never connects
    clock = task.Clock()
    client = KmipClient(clock, ["a:1"], lambda e: endpoint, timeout=2.0)
    got = results([client.rng_retrieve(4)])
    clock.advance(2.0)
    assert got[0].check(KmipClientError) and got[0].value.temporary
