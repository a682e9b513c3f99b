"""kcm.client never hands a caller another request's answer, nor a garbled one: a blocking
request interrupted by any exception (a signal handler's, a timer's, Ctrl-C) closes its
connection, an answer naming another request's Unique Batch Item ID is refused, a success
that does not say which operation it answers or carries no payload of that operation is a
:class:`KmipClientError`; the Twisted pool takes a fractional timeout and does not wait for
ever after a connection attempt fails before it starts; threads of a forked child make one
lock; and key material and plaintexts stay out of a payload's ``repr``."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer

from kcm.client import KmipClientError, KmipOperationFailed, Session
from kcm.client.pool import KmipClient
from kcm.client.sealer import Envelope
from kcm.kmip.enums import CryptographicAlgorithm, KeyFormatType, ObjectType, ResultStatus
from kcm.kmip.messages import (
    ProtocolVersion,
    RequestMessage,
    ResponseBatchItem,
    ResponseHeader,
    ResponseMessage,
    decode_request,
    encode_response,
)
from kcm.kmip.objects import KeyBlock, KeyValue, SymmetricKey
from kcm.kmip.payloads.crypto import DecryptResponse, EncryptRequest
from kcm.kmip.payloads.lifecycle import GetResponse
from kcm.kmip.payloads.service import DiscoverVersionsResponse
from kcm.kmip.tags import Tag
from kcm.pki import PkiPaths, init_pki
from kcm.ttlv import Item, ItemType, decode, encode


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(Path(tmp_path_factory.mktemp("pki")))


def answer(items: list[ResponseBatchItem]) -> bytes:
    header = ResponseHeader(protocol_version=ProtocolVersion.of((1, 4)),
                            time_stamp=int(time.time()), batch_count=len(items))
    return encode(encode_response(ResponseMessage(header, items)))


def versions_of(request: RequestMessage, *, item_id: bytes | None = None,
                version: tuple[int, int] = (1, 4)) -> bytes:
    """A Discover Versions answer to ``request`` naming ``version``, echoing ``item_id``
    (default: the request's own Unique Batch Item ID)."""
    [item] = request.batch_items
    return answer([ResponseBatchItem(
        operation=item.operation,
        unique_batch_item_id=item.unique_batch_item_id if item_id is None else item_id,
        result_status=ResultStatus.SUCCESS,
        response_payload=DiscoverVersionsResponse(
            protocol_versions=[ProtocolVersion.of(version)]))])


class Server:
    """A TLS server (the PKI's core certificate) answering the n-th request it reads, on
    any connection, with ``respond(request, n)`` (None: no answer, the connection stays)."""

    def __init__(self, pki: PkiPaths,
                 respond: Callable[[RequestMessage, int], bytes | None]) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(pki.core.cert), str(pki.core.key))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.respond = respond
        self.requests = 0
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            with self.context.wrap_socket(raw, server_side=True) as tls:
                while True:
                    head = _read(tls, 8)
                    if head is None:
                        return
                    body = _read(tls, int.from_bytes(head[4:], "big"))
                    if body is None:
                        return
                    n, self.requests = self.requests, self.requests + 1
                    wire = self.respond(decode_request(decode(head + body)), n)
                    if wire is not None:
                        tls.sendall(wire)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()


def _read(tls: ssl.SSLSocket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        chunk = tls.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


@pytest.fixture
def serve(pki: PkiPaths) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(respond: Callable[[RequestMessage, int], bytes | None]) -> Server:
        servers.append(Server(pki, respond))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def session(pki: PkiPaths, server: Server, timeout: float = 10.0) -> Session:
    return Session.connect("127.0.0.1", server.port, cert=str(pki.app.cert),
                           key=str(pki.app.key), ca=str(pki.ca.cert), timeout=timeout)


class Interrupted(Exception):
    """What an application's signal handler raises (a soft time limit, say)."""


def _interrupt(*_: object) -> None:
    raise Interrupted()


# A request interrupted by any exception leaves no answer behind ---------------------------

def test_an_interrupted_request_closes_its_connection_and_the_next_gets_its_own_answer(
        pki: PkiPaths, serve: Callable[..., Server]) -> None:
    """The first request's answer (KMIP 1.0) comes 0.6 s late, after a SIGALRM handler has
    interrupted its caller; the next request (answered 2.1) must not read it."""
    def respond(request: RequestMessage, n: int) -> bytes:
        if n == 0:
            time.sleep(0.6)
            return versions_of(request, version=(1, 0))
        return versions_of(request, version=(2, 1))

    server = serve(respond)
    client = session(pki, server)
    before = signal.signal(signal.SIGALRM, _interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Interrupted):
            client.discover_versions()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
    # Asked at once, while the first answer is still on its way on the first connection.
    assert client.discover_versions() == [(2, 1)]
    assert server.connections == 2
    client.close()


def test_an_answer_naming_another_requests_batch_item_is_refused(
        pki: PkiPaths, serve: Callable[..., Server]) -> None:
    server = serve(lambda request, n: versions_of(request, item_id=b"\x00" * 8))
    client = session(pki, server)
    with pytest.raises(KmipClientError, match="answered another request"):
        client.discover_versions()
    client.close()


def test_every_blocking_request_carries_a_batch_item_id_of_its_own(
        pki: PkiPaths, serve: Callable[..., Server]) -> None:
    seen: list[bytes | None] = []

    def respond(request: RequestMessage, n: int) -> bytes:
        seen.append(request.batch_items[0].unique_batch_item_id)
        return versions_of(request)

    client = session(pki, serve(respond))
    for _ in range(3):
        assert client.discover_versions() == [(1, 4)]
    client.close()
    assert all(seen) and len(set(seen)) == 3


# A garbled success is a KmipClientError ----------------------------------------------------

def _without_operation(request: RequestMessage, n: int) -> bytes:
    [item] = request.batch_items
    return answer([ResponseBatchItem(
        unique_batch_item_id=item.unique_batch_item_id, result_status=ResultStatus.SUCCESS,
        response_payload=Item(Tag.RESPONSE_PAYLOAD, ItemType.STRUCTURE, []))])


def _without_payload(request: RequestMessage, n: int) -> bytes:
    [item] = request.batch_items
    return answer([ResponseBatchItem(operation=item.operation,
                                     unique_batch_item_id=item.unique_batch_item_id,
                                     result_status=ResultStatus.SUCCESS)])


@pytest.mark.parametrize("respond, why", [
    (_without_operation, "does not say which operation"),
    (_without_payload, "no response payload"),
])
def test_a_success_that_is_not_the_operations_answer_is_a_client_error(
        pki: PkiPaths, serve: Callable[..., Server], respond: Callable, why: str) -> None:
    client = session(pki, serve(respond))
    calls = {"create_l4": client.create_l4, "get": lambda: client.get("l4.1.x"),
             "locate": client.locate, "decrypt": lambda: client.decrypt("k", b"x"),
             "seal": lambda: Envelope(client).seal(b"x")}
    for name, call in calls.items():
        with pytest.raises(KmipClientError, match=why):
            call()
        assert name
    client.close()


def test_a_failure_without_an_operation_is_still_the_servers_refusal(
        pki: PkiPaths, serve: Callable[..., Server]) -> None:
    def refuse(request: RequestMessage, n: int) -> bytes:
        return answer([ResponseBatchItem(result_status=ResultStatus.OPERATION_FAILED,
                                         result_reason=4, result_message="invalid")])

    client = session(pki, serve(refuse))
    with pytest.raises(KmipOperationFailed, match="invalid"):
        client.discover_versions()
    client.close()


# The Twisted pool -------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_the_pool_takes_a_fractional_timeout(pki: PkiPaths,
                                                   serve: Callable[..., Server]) -> None:
    from twisted.internet import reactor

    server = serve(lambda request, n: versions_of(request))
    client = KmipClient.tls(reactor, [f"127.0.0.1:{server.port}"], cert=str(pki.app.cert),
                            key=str(pki.app.key), ca=str(pki.ca.cert), timeout=2.5)
    try:
        assert await client.discover_versions() == [(1, 4)]
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_connection_attempt_that_fails_before_it_starts_fails_its_requests() -> None:
    """An endpoint whose connect() raises at once: each request fails with that error, and
    the next one tries again (it does not wait for the attempt that never started)."""
    from twisted.internet import reactor

    class Broken:
        attempts = 0

        def connect(self, factory: object) -> defer.Deferred:
            Broken.attempts += 1
            raise ValueError("no such endpoint")

    client = KmipClient(reactor, ["127.0.0.1:1"], lambda endpoint: Broken())
    for attempt in (1, 2):
        with pytest.raises(ValueError, match="no such endpoint"):
            await client.discover_versions().addTimeout(5, reactor)
        assert Broken.attempts == attempt
    await client.close()


# A forked child's threads share one lock --------------------------------------------------

def test_threads_of_a_forked_child_take_one_lock() -> None:
    """In a child, eight threads ask for the session's lock at once (with a switch interval
    that makes a race likely): all get the same one."""
    transport = type("T", (), {"send": None, "close": lambda self: None})()
    shared = Session(transport)
    shared._lock_of_this_process()
    pid = os.fork()
    if pid == 0:  # the child: report through the exit status, never return into pytest
        try:
            import sys

            sys.setswitchinterval(1e-6)
            barrier = threading.Barrier(8)
            locks: list[object] = []

            def take() -> None:
                barrier.wait()
                locks.append(shared._lock_of_this_process())

            threads = [threading.Thread(target=take) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            os._exit(0 if len({id(lock) for lock in locks}) == 1 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# Secrets stay out of repr -----------------------------------------------------------------

def test_key_material_and_plaintexts_are_not_in_a_payloads_repr() -> None:
    secret = bytes(range(7, 39))
    block = KeyBlock(key_format_type=KeyFormatType.RAW, key_value=KeyValue(key_material=secret),
                     cryptographic_algorithm=CryptographicAlgorithm.AES,
                     cryptographic_length=256)
    got = GetResponse(object_type=ObjectType.SYMMETRIC_KEY, unique_identifier="l4.1.x",
                      object=SymmetricKey(key_block=block))
    plaintext = b"a medical record"
    shown = " ".join(repr(model) for model in (
        got, DecryptResponse(unique_identifier="k", data=plaintext),
        EncryptRequest(unique_identifier="k", data=plaintext)))
    assert repr(secret)[2:-1] not in shown and secret.hex() not in shown
    assert "medical" not in shown
    assert "l4.1.x" in shown and "RAW" in shown  # the rest is shown as before


def test_close_from_a_signal_handler_inside_the_request_closes_at_once() -> None:
    """close() takes the session's turn, so as not to close under another thread's request;
    called by a signal handler inside this thread's own request it waited for ever on the
    lock its own thread held. It closes at once there, and the request fails."""
    closed = threading.Event()

    class Transport:
        def send(self, wire: bytes) -> bytes:
            if closed.wait(3):
                raise KmipClientError("the connection was closed")
            raise AssertionError("the request was not interrupted")

        def close(self) -> None:
            closed.set()

    session = Session(Transport())
    before = signal.signal(signal.SIGALRM, lambda *_: session.close())
    started = time.monotonic()
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(KmipClientError, match="closed"):
            session.rng_retrieve(4)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
    assert time.monotonic() - started < 2
