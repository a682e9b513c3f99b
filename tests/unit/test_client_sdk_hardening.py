"""kcm.client, mended: an envelope opens only under an L4 token (never asking the server for
anything else), SplitHorizon routes as the gateway's classifier does, the blocking client's
timeout bounds a whole request (a server trickling its answer cannot hold it), and the
Twisted pool gives up an endpoint whose connection failed a request, and closes what it was
connecting when the client was closed meanwhile."""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from kcm.client.deferred_envelope import DeferredEnvelope
from kcm.client.envelope import ALGORITHM_AES_256_GCM_STREAM, header_prefix
from kcm.client.errors import DataKeyRefused, EnvelopeError, KmipClientError
from kcm.client.operations import l4_marker, symmetric_attributes
from kcm.client.pool import KmipClient
from kcm.client.protocol import KmipClientProtocol
from kcm.client.routing import SplitHorizon, is_l4_request
from kcm.client.sealer import Envelope
from kcm.client.stream import StreamOpener
from kcm.client.wire import encode_items
from kcm.conformance.client import KmipClient as BlockingClient
from kcm.gateway.classifier import Route, classify
from kcm.kmip.attributes import Attribute, Link
from kcm.kmip.enums import LinkType, ObjectType, Operation
from kcm.kmip.messages import RequestBatchItem
from kcm.kmip.payloads.crypto import DecryptRequest, EncryptRequest
from kcm.kmip.payloads.lifecycle import CreateRequest, DestroyRequest, GetRequest
from kcm.kmip.payloads.mac_hash_rng import RngRetrieveResponse
from kcm.kmip.tags import Tag
from kcm.pki import PkiPaths, init_pki
from kcm.ttlv import Item, ItemType
from tests.unit.test_client_envelope import DeferredGateway, FakeGateway, fired
from tests.unit.test_client_protocol import FakeEndpoint, pool, respond, results

MANAGED = "3ad24cc5-b266-45dc-b285-9216eadae5e7"  # an ordinary managed key's UID
L3 = "l3-83201977-47ec-4a54-92f3-838634dc4481"


# An envelope names an L4, or it is refused before any Get ------------------------------------

def forged_record(gateway: FakeGateway, token: str, aad: bytes) -> bytes:
    """A record sealed under ``token``'s key, which the gateway would give on a Get."""
    gateway.keys[token] = os.urandom(32)
    nonce = os.urandom(12)
    header = header_prefix(token) + nonce
    return header + AESGCM(gateway.keys[token]).encrypt(nonce, b"forged", header + aad)


@pytest.mark.parametrize("token", [MANAGED, L3, "L4.1.upper-case", "x"])
def test_a_record_under_anything_but_an_l4_is_refused_without_a_get(token: str) -> None:
    gateway = FakeGateway()
    blob = forged_record(gateway, token, b"row")
    with pytest.raises(EnvelopeError) as refused:
        Envelope(gateway).open(blob, b"row")
    assert type(refused.value) is EnvelopeError and "not an L4" in str(refused.value)
    assert gateway.calls == []


def test_a_stream_under_a_managed_key_is_refused_without_a_get() -> None:
    gateway = FakeGateway()
    gateway.keys[MANAGED] = os.urandom(32)
    header = (header_prefix(MANAGED, ALGORITHM_AES_256_GCM_STREAM)
              + struct.pack(">I", 16) + os.urandom(7))
    opener = StreamOpener(Envelope(gateway))
    with pytest.raises(EnvelopeError, match="not an L4"):
        opener.update(header + b"\x00" * 40)
    assert gateway.calls == []


def test_the_deferred_envelope_refuses_it_too_without_a_get() -> None:
    gateway = FakeGateway()
    blob = forged_record(gateway, MANAGED, b"row")
    remote = DeferredGateway(gateway)
    opened = DeferredEnvelope(remote).open(blob, b"row")
    assert not remote.pending and gateway.calls == []
    failure = fired(opened)
    assert failure.check(EnvelopeError) and not failure.check(DataKeyRefused)


def test_what_cannot_be_one_record_is_refused_before_anything_is_counted_or_asked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A record of 2 GiB or more failed in cryptography with OverflowError after the key's
    counters had counted it; a str failed the same way; the Deferred envelope raised such
    errors at once on its cached path instead of failing its Deferred."""
    from kcm.client import sealer

    gateway = FakeGateway()
    envelope = Envelope(gateway)
    envelope.seal(b"warm")
    key = envelope.cache.sealing
    counted = (key.messages, key.bytes, dict(envelope.stats))
    monkeypatch.setattr(sealer, "MAX_RECORD", 16)
    with pytest.raises(ValueError, match="exceeds what one record may hold .16.; use "
                                         "kcm.client.stream"):
        envelope.seal(b"x" * 17)
    with pytest.raises(TypeError, match="plaintext must be bytes, not str"):
        envelope.seal("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="aad must be bytes, not str"):
        envelope.seal(b"x", "row")  # type: ignore[arg-type]
    assert (key.messages, key.bytes, envelope.stats) == counted
    assert envelope.open(envelope.seal(b"x" * 16)) == b"x" * 16
    with pytest.raises(EnvelopeError, match="longer than any record"):
        envelope.open(envelope.seal(b"x" * 16)[:-16] + b"y" * 20)

    remote = DeferredGateway(gateway)
    deferred = DeferredEnvelope(remote)
    sealing = deferred.seal(b"warm")
    remote.answer_all()
    assert not isinstance(fired(sealing), Failure)
    for plaintext in (b"x" * 17, "text"):
        assert fired(deferred.seal(plaintext)).check(ValueError, TypeError)  # not raised


def test_a_data_key_created_under_another_name_does_not_seal() -> None:
    gateway = FakeGateway()
    gateway.create_l4 = lambda: MANAGED  # a Create answered by something else than an L4
    gateway.keys[MANAGED] = os.urandom(32)
    with pytest.raises(EnvelopeError, match="not an L4"):
        Envelope(gateway).seal(b"x")
    remote = DeferredGateway(gateway)
    sealing = DeferredEnvelope(remote).seal(b"x")
    remote.answer_all()
    assert fired(sealing).check(EnvelopeError) and "get" not in gateway.calls


# SplitHorizon routes as the gateway's classifier -------------------------------------------

def _create(*extra: Attribute) -> CreateRequest:
    return CreateRequest(object_type=ObjectType.SYMMETRIC_KEY,
                         attributes=symmetric_attributes(3, 256, list(extra)))


def _level(vendor: str, name: str, value: str) -> Attribute:
    return Attribute.vendor(vendor, name, Item(Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING, value))


def _parent(uid: str, link_type: LinkType = LinkType.PARENT_LINK) -> Attribute:
    return Attribute.of(Tag.LINK, Link(link_type=link_type, linked_object_identifier=uid))


CASES = {
    "l4-marker": (Operation.CREATE, _create(l4_marker())),
    "parent-link-to-l3": (Operation.CREATE, _create(_parent(L3))),
    "parent-link-to-managed": (Operation.CREATE, _create(_parent(MANAGED))),
    "child-link-to-l3": (Operation.CREATE, _create(_parent(L3, LinkType.CHILD_LINK))),
    "vendor-y": (Operation.CREATE, _create(_level("y", "kcm-level", "L4"))),
    "level-lower-case": (Operation.CREATE, _create(_level("x", "kcm-level", "l4"))),
    "plain-create": (Operation.CREATE, _create()),
    "encrypt-l3": (Operation.ENCRYPT, EncryptRequest(unique_identifier=L3, data=b"dek")),
    "decrypt-l3": (Operation.DECRYPT, DecryptRequest(unique_identifier=L3, data=b"dek")),
    "get-l3": (Operation.GET, GetRequest(unique_identifier=L3)),
    "get-l4": (Operation.GET, GetRequest(unique_identifier="l4.1.abc")),
    "encrypt-l4": (Operation.ENCRYPT, EncryptRequest(unique_identifier="l4.1.abc", data=b"x")),
    "destroy-l4": (Operation.DESTROY, DestroyRequest(unique_identifier="l4.1.abc")),
    "get-managed": (Operation.GET, GetRequest(unique_identifier=MANAGED)),
    "encrypt-managed": (Operation.ENCRYPT, EncryptRequest(unique_identifier=MANAGED, data=b"x")),
}


@pytest.mark.parametrize("version", [(1, 4), (2, 1)], ids=["1.4", "2.1"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_split_horizon_sends_to_the_gateway_what_the_gateway_answers_itself(case, version
                                                                             ) -> None:
    operation, payload = CASES[case]
    wire = encode_items(version, [RequestBatchItem(operation=operation,
                                                   request_payload=payload)])
    local = classify(wire).route is Route.ALL_LOCAL
    split = SplitHorizon(gateway="gateway", control="core")
    assert is_l4_request(operation, payload) is local
    assert split.route(operation, payload) == ("gateway" if local else "core")


def test_the_cases_cover_both_answers() -> None:
    routed = {is_l4_request(*CASES[case]) for case in CASES}
    assert routed == {True, False}
    assert is_l4_request(*CASES["encrypt-l3"]) and is_l4_request(*CASES["parent-link-to-l3"])
    assert not is_l4_request(*CASES["vendor-y"])


# The blocking client's timeout is per request ------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return init_pki(Path(tmp_path_factory.mktemp("pki")))


class TricklingServer:
    """A TLS server that reads a request, then sends a valid-looking answer header and one
    byte every ``pause`` seconds, ``count`` bytes in all, then closes."""

    def __init__(self, pki: PkiPaths, pause: float, count: int) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(pki.core.cert), str(pki.core.key))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pause, self.count = pause, count
        self.sent = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.listener:
            raw, _ = self.listener.accept()
        try:
            with self.context.wrap_socket(raw, server_side=True) as tls:
                tls.recv(65536)
                # A ResponseMessage header announcing 4096 bytes, then the bytes, slowly.
                answer = struct.pack(">II", 0x42007B01, 4096) + b"\x00" * 4096
                for byte in answer[:self.count]:
                    tls.sendall(bytes([byte]))
                    self.sent += 1
                    time.sleep(self.pause)
        except OSError:
            pass


class StepClock:
    """Each reading is ``step`` seconds after the one before (the socket calls read it)."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_a_request_answered_by_a_trickle_fails_at_its_deadline(pki: PkiPaths) -> None:
    server = TricklingServer(pki, pause=0.01, count=200)
    client = BlockingClient("127.0.0.1", server.port, cert=pki.app.cert, key=pki.app.key,
                            ca=pki.ca.cert, timeout=5.0, clock=StepClock(1.0))
    client.connect()
    with pytest.raises(KmipClientError, match="no answer from 127.0.0.1:.* within 5 s"):
        client.send(b"\x42\x00\x78\x01\x00\x00\x00\x00")
    # The clock reads one second later at each socket call: the fifth second is past the
    # deadline, whatever the bytes that came meanwhile.
    assert client._socket is None
    server.thread.join(10)


def test_a_slow_answer_within_the_deadline_is_read_whole(pki: PkiPaths) -> None:
    server = TricklingServer(pki, pause=0.0, count=4104)
    client = BlockingClient("127.0.0.1", server.port, cert=pki.app.cert, key=pki.app.key,
                            ca=pki.ca.cert, timeout=30.0)
    answer = client.send(b"\x42\x00\x78\x01\x00\x00\x00\x00")
    assert len(answer) == 4104
    client.close()
    server.thread.join(10)


# The pool gives up an endpoint whose connection failed a request --------------------------------

def test_a_timed_out_connection_moves_what_follows_to_the_next_endpoint() -> None:
    """(Since the call's timeout bounds it whole, a request that times out is not sent
    again: its call's time is up. What follows goes to the next endpoint.)"""
    endpoints = {"a:1": FakeEndpoint(), "b:2": FakeEndpoint()}
    clock = task.Clock()
    client = KmipClient(clock, list(endpoints), lambda e: endpoints[str(e)], size=2,
                        timeout=5.0)
    got = results([client.rng_retrieve(4), client.rng_retrieve(4)])
    a1, a2 = endpoints["a:1"].protocols  # busy pool: two connections to a
    respond(a2, RngRetrieveResponse(data=b"a2a2"))  # a2 answers, a1 hangs
    assert got == [b"a2a2"]
    clock.advance(5.0)  # a1's request times out, and with it its call
    assert str(client.endpoint) == "b:2" and not endpoints["b:2"].protocols
    assert "no answer within 5 s (the call's timeout)" in str(got[0].value)
    later = results([client.rng_retrieve(4)])  # not on a2, which is closed once idle
    assert not a2.usable and not a1.usable
    respond(endpoints["b:2"].protocols[0], RngRetrieveResponse(data=b"more"))
    assert later == [b"more"] and len(endpoints["a:1"].protocols) == 2


def test_a_broken_connection_moves_the_retry_to_the_next_endpoint_within_the_call() -> None:
    endpoints = {"a:1": FakeEndpoint(), "b:2": FakeEndpoint()}
    clock = task.Clock()
    client = KmipClient(clock, list(endpoints), lambda e: endpoints[str(e)], size=1,
                        timeout=5.0)
    got = results([client.rng_retrieve(4)])
    clock.advance(2.0)
    endpoints["a:1"].protocols[0].connectionLost(Failure(ConnectionError("reset")))
    (b,) = endpoints["b:2"].protocols  # sent again, to b, with 3 s left
    assert str(client.endpoint) == "b:2" and b.outstanding == 1
    respond(b, RngRetrieveResponse(data=b"bbbb"))
    assert got == [b"bbbb"]


def test_a_create_whose_connection_timed_out_is_not_sent_again_but_the_next_one_moves_on(
) -> None:
    endpoints = {"a:1": FakeEndpoint(), "b:2": FakeEndpoint()}
    clock = task.Clock()
    client = KmipClient(clock, list(endpoints), lambda e: endpoints[str(e)], size=1,
                        timeout=5.0)
    got = results([client.create()])
    clock.advance(5.0)
    assert got[0].check(KmipClientError) and not endpoints["b:2"].protocols
    results([client.create()])
    (b,) = endpoints["b:2"].protocols
    assert b.outstanding == 1 and len(endpoints["a:1"].protocols) == 1


def test_requests_of_a_closed_client_are_not_a_reason_to_move() -> None:
    endpoints = {"a:1": FakeEndpoint(), "b:2": FakeEndpoint()}
    client = pool(endpoints, size=1)
    got = results([client.rng_retrieve(4)])
    client.close()
    assert got[0].check(KmipClientError) and str(client.endpoint) == "a:1"


# close() while a connection is being made ---------------------------------------------------

class SlowEndpoint:
    """Connects when the test says."""

    def __init__(self) -> None:
        self.pending: defer.Deferred | None = None
        self.factory = None

    def connect(self, factory):
        self.factory = factory
        self.pending = defer.Deferred()
        return self.pending

    def finish(self) -> tuple[KmipClientProtocol, StringTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.pending.callback(protocol)
        return protocol, transport


def test_close_while_connecting_closes_that_connection_and_fails_its_requests() -> None:
    endpoint = SlowEndpoint()
    client = KmipClient(task.Clock(), ["a:1"], lambda e: endpoint)
    got = results([client.discover_versions()])
    closed = client.close()
    assert not got and not fired(closed)
    protocol, transport = endpoint.finish()
    assert transport.disconnecting and transport.value() == b""  # nothing was sent
    assert client.connections == 0 and not fired(closed)
    protocol.connectionLost(Failure(ConnectionError("closed")))
    assert got[0].check(KmipClientError) and str(got[0].value) == "the client is closed"
    assert fired(closed) is not None


def test_the_blocking_client_refuses_an_encrypted_key_without_a_prompt(
        tmp_path: Path, pki: PkiPaths) -> None:
    """A library must never prompt: at a terminal, Python's ssl asked for the key's pass
    phrase there and the process waited for an answer (without one, the error was
    "[Errno 22] Invalid argument"). The key is refused, in the words of the Twisted
    client and ``kcm config check``."""
    import sys

    from tests.on_terminal import encrypted_copy, run_on_terminal

    encrypted = encrypted_copy(pki.app.key, tmp_path / "encrypted.key")
    script = ("from kcm.client.endpoints import FailoverConnection, TlsFiles\n"
              "try:\n"
              f"    FailoverConnection(['127.0.0.1:1'], TlsFiles({str(pki.app.cert)!r}, "
              f"{str(encrypted)!r}, {str(pki.ca.cert)!r}))\n"
              "except Exception as e:\n"
              "    print('refused:', e)\n")
    status, text = run_on_terminal([sys.executable, "-c", script])
    assert "pass phrase" not in text, text
    assert status == 0, text
    assert (f"refused: cannot load the client's certificate, key or CA: {encrypted} is "
            "encrypted (KCM needs the key unencrypted)") in text, text
