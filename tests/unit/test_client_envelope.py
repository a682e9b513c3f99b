"""kcm.client's envelope over a fake gateway: the documented format byte by byte (opened with
`cryptography` alone), tampering refused, the cache's bounds (age, messages, bytes, entries),
revocation honoured after max_age, zeroization on eviction, and streams (STREAM chunks:
reordered, dropped, cut or changed chunks refused)."""

from __future__ import annotations

import io
import itertools
import os
import struct
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet import defer
from twisted.python.failure import Failure

from kcm.client.data_key_cache import CacheLimits
from kcm.client.deferred_envelope import DeferredEnvelope
from kcm.client.envelope import parse_header
from kcm.client.errors import DataKeyRefused, EnvelopeError, KmipOperationFailed
from kcm.client.routing import is_l4_request
from kcm.client.sealer import Envelope
from kcm.client.stream import StreamOpener, StreamSealer, open_stream, seal_stream
from kcm.kmip.enums import Operation, ResultReason, ResultStatus
from kcm.kmip.payloads.lifecycle import CreateRequest, DestroyRequest, GetRequest


class FakeGateway:
    """create_l4 and get as the gateway answers them; ``refused`` tokens fail Get."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.refused: set[str] = set()
        #: Set: every Get fails with General Failure (the gateway cannot serve now).
        self.unavailable = False
        self.calls: list[str] = []
        self._serial = itertools.count(1)

    def create_l4(self) -> str:
        self.calls.append("create")
        token = f"l4.1.fake-{next(self._serial)}"
        self.keys[token] = os.urandom(32)
        return token

    def get(self, token: str):
        self.calls.append("get")
        if self.unavailable:
            raise KmipOperationFailed(Operation.GET, ResultStatus.OPERATION_FAILED,
                                      ResultReason.GENERAL_FAILURE,
                                      "the service key is not cached at the gateway and the "
                                      "core is unreachable")
        if token in self.refused or token not in self.keys:
            raise KmipOperationFailed(Operation.GET, ResultStatus.OPERATION_FAILED,
                                      ResultReason.ITEM_NOT_FOUND, "no such object")
        return SimpleNamespace(unique_identifier=token, object=SimpleNamespace(
            key_block=SimpleNamespace(key_bytes=self.keys[token])))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


def test_the_format_is_as_documented_and_opens_with_cryptography_alone(gateway) -> None:
    blob = Envelope(gateway).seal(b"a record", aad=b"row 7")
    (token,) = gateway.keys
    assert blob[:3] == b"KCM" and blob[3] == 1 and blob[4] == 1
    (length,) = struct.unpack(">H", blob[5:7])
    assert blob[7:7 + length].decode() == token
    nonce = blob[7 + length:19 + length]
    header = blob[:19 + length]
    plain = AESGCM(gateway.keys[token]).decrypt(nonce, blob[19 + length:], header + b"row 7")
    assert plain == b"a record" and len(blob) == 19 + length + len(b"a record") + 16


def test_round_trip_with_and_without_aad_and_empty(gateway) -> None:
    envelope = Envelope(gateway)
    for plain, aad in ((b"", b""), (b"x" * 4096, b""), (b"y", b"context")):
        assert envelope.open(envelope.seal(plain, aad), aad) == plain
    assert gateway.calls == ["create", "get"]  # one data key, fetched once


@pytest.mark.parametrize("where", ["version", "algorithm", "token", "nonce", "body", "tag"])
def test_a_tampered_blob_is_refused(gateway, where) -> None:
    envelope = Envelope(gateway)
    blob = bytearray(envelope.seal(b"the plaintext", b"aad"))
    length = struct.unpack(">H", blob[5:7])[0]
    offset = {"version": 3, "algorithm": 4, "token": 7 + length - 1, "nonce": 7 + length,
              "body": 19 + length, "tag": len(blob) - 1}[where]
    blob[offset] ^= 0x01
    with pytest.raises(EnvelopeError):
        envelope.open(bytes(blob), b"aad")


def test_other_associated_data_or_a_cut_blob_is_refused(gateway) -> None:
    envelope = Envelope(gateway)
    blob = envelope.seal(b"the plaintext", b"aad")
    with pytest.raises(EnvelopeError, match="not authentic"):
        envelope.open(blob, b"other")
    for cut in (2, 10, len(blob) - 20):
        with pytest.raises(EnvelopeError):
            envelope.open(blob[:cut], b"aad")
    with pytest.raises(EnvelopeError, match="does not start with 'KCM'"):
        envelope.open(b"XYZ" + blob[3:], b"aad")


def test_a_token_the_gateway_refuses_is_a_clear_error(gateway) -> None:
    envelope = Envelope(gateway)
    blob = bytearray(envelope.seal(b"p"))
    other = Envelope(gateway)  # no cache: asks the gateway
    blob[12] ^= 0x01  # a byte of the token: another token, unknown to the gateway
    with pytest.raises(DataKeyRefused, match="refused data key") as refused:
        other.open(bytes(blob))
    assert refused.value.cause.reason == ResultReason.ITEM_NOT_FOUND


def test_a_gateway_that_cannot_serve_now_is_no_refusal_of_the_key(gateway) -> None:
    blob = Envelope(gateway).seal(b"a good record")
    gateway.unavailable = True  # the core away, the gateway's service key not cached
    opener = Envelope(gateway)
    with pytest.raises(KmipOperationFailed) as failed:
        opener.open(blob)
    assert not isinstance(failed.value, EnvelopeError)
    assert failed.value.reason == ResultReason.GENERAL_FAILURE
    gateway.unavailable = False
    assert opener.open(blob) == b"a good record"


def test_sealing_moves_to_a_new_key_at_each_bound(gateway) -> None:
    clock = Clock()
    envelope = Envelope(gateway, CacheLimits(max_age=60, max_messages=3, max_bytes=100),
                        clock=clock)
    tokens = [parse_header(envelope.seal(b"x" * 10)).token for _ in range(4)]
    assert len(set(tokens[:3])) == 1 and tokens[3] != tokens[0]  # messages
    envelope.seal(b"x" * 80)
    assert parse_header(envelope.seal(b"x" * 20)).token not in tokens  # bytes
    before = parse_header(envelope.seal(b"x")).token
    clock.now += 60
    assert parse_header(envelope.seal(b"x")).token != before  # age
    with pytest.raises(ValueError, match="use kcm.client.stream"):
        envelope.seal(b"x" * 101)


def test_a_revoked_key_still_opens_until_max_age_then_fails(gateway) -> None:
    clock = Clock()
    sealer = Envelope(gateway, CacheLimits(max_age=30), clock=clock)
    blob = sealer.seal(b"secret")
    opener = Envelope(gateway, CacheLimits(max_age=30), clock=clock)
    assert opener.open(blob) == b"secret"
    gateway.refused.add(parse_header(blob).token)
    clock.now += 29
    assert opener.open(blob) == b"secret"  # within the bound: the cached key
    clock.now += 1
    with pytest.raises(DataKeyRefused):
        opener.open(blob)
    assert len(opener.cache) == 0


def test_evicted_and_expired_keys_are_zeroized(gateway) -> None:
    clock = Clock()
    envelope = Envelope(gateway, CacheLimits(max_age=10, max_entries=2), clock=clock)
    blobs = [Envelope(gateway).seal(b"r") for _ in range(3)]
    for blob in blobs:
        envelope.open(blob)
    first = parse_header(blobs[0]).token
    assert len(envelope.cache) == 2 and envelope.cache.for_opening(first) is None
    key = envelope.cache.for_opening(parse_header(blobs[2]).token)
    material = key.material
    clock.now += 10
    assert envelope.cache.for_opening(key.token) is None
    assert key.zeroized and material == bytearray(32)
    envelope.close()
    assert len(envelope.cache) == 0


def test_limits_refuse_more_than_2_to_the_32_messages_per_key() -> None:
    with pytest.raises(ValueError, match="2\\^32"):
        CacheLimits(max_messages=2 ** 32 + 1)


# Streams --------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 99, 100, 101, 1000])
def test_streams_round_trip_at_every_chunk_boundary(gateway, size) -> None:
    envelope = Envelope(gateway)
    plain = os.urandom(size)
    sealed = io.BytesIO()
    assert seal_stream(envelope, io.BytesIO(plain), sealed, b"file", chunk_size=100) == size
    out = io.BytesIO()
    assert open_stream(Envelope(gateway), io.BytesIO(sealed.getvalue()), out, b"file",
                       read_size=37) == size
    assert out.getvalue() == plain


def sealed_stream(gateway, plain: bytes, chunk: int = 10) -> tuple[bytes, list[bytes], int]:
    sealer = StreamSealer(Envelope(gateway), chunk_size=chunk)
    body = sealer.update(plain) + sealer.finish()
    return sealer.header, [body[i:i + chunk + 16] for i in range(0, len(body), chunk + 16)], chunk


def opened(gateway, data: bytes) -> bytes:
    opener = StreamOpener(Envelope(gateway))
    return opener.update(data) + opener.finish()


def test_a_stream_opens_with_cryptography_alone(gateway) -> None:
    header, chunks, _ = sealed_stream(gateway, b"0123456789abcdef")
    length = struct.unpack(">H", header[5:7])[0]
    assert header[4] == 2 and struct.unpack(">I", header[7 + length:11 + length]) == (10,)
    prefix = header[11 + length:18 + length]
    aead = AESGCM(gateway.keys[header[7:7 + length].decode()])
    plain = [aead.decrypt(prefix + struct.pack(">IB", i, i == len(chunks) - 1), c, header)
             for i, c in enumerate(chunks)]
    assert b"".join(plain) == b"0123456789abcdef"


@pytest.mark.parametrize("attack", ["swap", "drop_last", "drop_middle", "duplicate", "flip",
                                    "extra"])
def test_a_changed_stream_is_refused(gateway, attack) -> None:
    header, chunks, _ = sealed_stream(gateway, os.urandom(35))
    changed = {
        "swap": [chunks[1], chunks[0], *chunks[2:]],
        "drop_last": chunks[:-1],
        "drop_middle": [chunks[0], *chunks[2:]],
        "duplicate": [chunks[0], *chunks],
        "flip": [chunks[0], bytes([chunks[1][0] ^ 1]) + chunks[1][1:], *chunks[2:]],
        "extra": [*chunks, b"\x00" * 26],
    }[attack]
    with pytest.raises(EnvelopeError):
        opened(gateway, header + b"".join(changed))


def test_each_stream_has_a_data_key_of_its_own(gateway) -> None:
    envelope = Envelope(gateway)
    StreamSealer(envelope)
    StreamSealer(envelope)
    assert gateway.calls.count("create") == 2


# Routing ----------------------------------------------------------------------------------------

def test_split_horizon_sends_l4_operations_to_the_gateway() -> None:
    from kcm.client.operations import l4_marker, symmetric_attributes

    l4_create = CreateRequest(object_type=2, attributes=symmetric_attributes(3, 256,
                                                                             [l4_marker()]))
    plain_create = CreateRequest(object_type=2, attributes=symmetric_attributes(3, 256))
    assert is_l4_request(Operation.CREATE, l4_create)
    assert not is_l4_request(Operation.CREATE, plain_create)
    assert is_l4_request(Operation.GET, GetRequest(unique_identifier="l4.1.abc"))
    assert not is_l4_request(Operation.GET, GetRequest(unique_identifier="1234"))
    assert not is_l4_request(Operation.DESTROY, DestroyRequest(unique_identifier="l4.1.abc"))


# The envelope with Deferreds ----------------------------------------------------------------

class DeferredGateway:
    """FakeGateway's answers as Deferreds that fire when the test says."""

    def __init__(self, gateway: FakeGateway) -> None:
        self.gateway = gateway
        self.pending: list[tuple[defer.Deferred, Callable[[], object]]] = []

    def _later(self, call: Callable[[], object]) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.pending.append((d, call))
        return d

    def create_l4(self) -> defer.Deferred:
        return self._later(self.gateway.create_l4)

    def get(self, token: str) -> defer.Deferred:
        return self._later(lambda: self.gateway.get(token))

    def answer_all(self) -> None:
        while self.pending:
            d, call = self.pending.pop(0)
            try:
                d.callback(call())
            except Exception as e:
                d.errback(e)


def fired(d: defer.Deferred):
    """What ``d`` has fired with (None: not yet), leaving its result in place."""
    out = []

    def keep(result):
        out.append(result)
        return result

    d.addBoth(keep)
    if out and isinstance(out[0], Failure):
        d.addErrback(lambda _: None)  # seen here: not an unhandled error
    return out[0] if out else None


def test_the_deferred_envelope_creates_one_key_for_concurrent_seals(gateway) -> None:
    remote = DeferredGateway(gateway)
    envelope = DeferredEnvelope(remote)
    waiting = [envelope.seal(b"r%d" % n) for n in range(5)]
    assert all(fired(d) is None for d in waiting) and len(remote.pending) == 1
    remote.answer_all()  # the Create, then the one Get it leads to
    blobs = [fired(d) for d in waiting]
    assert gateway.calls == ["create", "get"]
    assert len({parse_header(b).token for b in blobs}) == 1
    # Cached: fired at once, and opened by the blocking envelope as well.
    assert fired(envelope.open(blobs[3])) == b"r3"
    assert Envelope(gateway).open(fired(envelope.seal(b"sync"))) == b"sync"


def test_the_deferred_envelope_refuses_what_the_gateway_refuses(gateway) -> None:
    clock = Clock()
    blob = Envelope(gateway).seal(b"x")
    remote = DeferredGateway(gateway)
    envelope = DeferredEnvelope(remote, CacheLimits(max_age=10), clock=clock)
    first, second = envelope.open(blob), envelope.open(blob)
    remote.answer_all()
    assert fired(first) == fired(second) == b"x" and gateway.calls.count("get") == 2
    gateway.refused.add(parse_header(blob).token)
    clock.now += 10
    refused = envelope.open(blob)
    remote.answer_all()
    failure = fired(refused)
    assert failure.check(DataKeyRefused) and len(envelope.cache) == 0
    assert fired(envelope.open(b"KCM\x09rest of it")).check(EnvelopeError)


def test_the_deferred_envelope_passes_on_a_general_failure(gateway) -> None:
    blob = Envelope(gateway).seal(b"x")
    remote = DeferredGateway(gateway)
    envelope = DeferredEnvelope(remote)
    gateway.unavailable = True
    failing = envelope.open(blob)
    remote.answer_all()
    failure = fired(failing)
    assert failure.check(KmipOperationFailed) and not failure.check(EnvelopeError)
    gateway.unavailable = False
    again = envelope.open(blob)
    remote.answer_all()
    assert fired(again) == b"x"


def test_a_stream_survives_its_key_being_evicted_from_the_cache(gateway) -> None:
    envelope = Envelope(gateway, CacheLimits(max_entries=1))
    sealer = StreamSealer(envelope, chunk_size=10)
    sealed = sealer.header + sealer.update(b"x" * 25)
    envelope.open(Envelope(gateway).seal(b"another key"))  # evicts (zeroizes) the stream's
    sealed += sealer.update(b"y" * 5) + sealer.finish()
    assert opened(gateway, sealed) == b"x" * 25 + b"y" * 5


def test_a_sealing_key_evicted_while_it_sealed_is_zeroized_once_retired(gateway) -> None:
    """(Found unchecked by a mutation review.) A sealing key the cache evicted is kept
    while it seals, and zeroized when it reaches its bound."""
    envelope = Envelope(gateway, CacheLimits(max_messages=1, max_entries=1))
    other = Envelope(gateway).seal(b"other")
    envelope.seal(b"one")
    first = envelope.cache.sealing
    envelope.open(other)  # evicts the sealing key from the map: it still seals
    assert not first.zeroized
    envelope.seal(b"two")  # at its bound: retired, and cached no more
    assert first.zeroized and envelope.cache.sealing is not first


def test_a_stream_over_a_deferred_envelope_is_refused_saying_what_to_do(gateway) -> None:
    """docs/sdk.md offered streams and a DeferredEnvelope "that does the same", and a
    Twisted program that handed one to seal_stream got AttributeError 'new_key_and_aead'
    (or, opening, a Deferred where an AES-GCM object was due)."""
    envelope = DeferredEnvelope(DeferredGateway(gateway))
    for start in (lambda: seal_stream(envelope, io.BytesIO(b"x"), io.BytesIO()),
                  lambda: open_stream(envelope, io.BytesIO(b"KCM"), io.BytesIO()),
                  lambda: StreamSealer(envelope), lambda: StreamOpener(envelope)):
        with pytest.raises(TypeError, match="blocking Envelope.*deferToThread"):
            start()
    assert gateway.calls == []
