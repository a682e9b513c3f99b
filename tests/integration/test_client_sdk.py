"""kcm.client against real kcm-core and kcm-gateway processes (twistd, mutual TLS): every
operation of the blocking and the Twisted client, 1,000 requests in flight on one
connection, failover between two gateways, split-horizon routing with the core away, the
envelope (round trip, tampering, revocation within the cache's bound, a blob opened with
`cryptography` and a PyKMIP Get alone) and ``kcm seal`` / ``kcm open``."""

from __future__ import annotations

import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet import defer

from kcm.client import DataKeyRefused, EnvelopeError, KmipClientError, KmipOperationFailed, Session
from kcm.client.data_key_cache import CacheLimits
from kcm.client.envelope import parse_header
from kcm.client.routing import SplitHorizon
from kcm.client.sealer import Envelope
from kcm.kmip.attributes import Attribute, AttributeReference, CryptographicParameters, Name
from kcm.kmip.enums import (
    CryptographicAlgorithm,
    CryptographicUsageMask,
    HashingAlgorithm,
    NameType,
    Operation,
    PaddingMethod,
    ResultReason,
    ValidityIndicator,
)
from kcm.kmip.tags import Tag
from kcm.testing.processes import (
    CoreProcess,
    GatewayProcess,
    deploy,
    process_env,
    running,
)
from tests.e2e_support import wait_until


@pytest.fixture(scope="module")
def planes(tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[CoreProcess, GatewayProcess]]:
    root = tmp_path_factory.mktemp("sdk")
    core = deploy(root / "core", f"sqlite:///{root / 'core' / 'kcm.db'}")
    with running(core, GatewayProcess(root / "gateway", core)) as both:
        yield both


def files(core: CoreProcess) -> dict[str, str]:
    return {"cert": str(core.pki.app.cert), "key": str(core.pki.app.key),
            "ca": str(core.pki.ca.cert)}


def session(core: CoreProcess, *ports: int, version=(1, 4)) -> Session:
    return Session.connect([f"127.0.0.1:{port}" for port in ports], version=version,
                           **files(core))


def name(text: str) -> Attribute:
    return Attribute.of(Tag.NAME, Name(value=text, type=NameType.UNINTERPRETED_TEXT_STRING))


# Every operation -----------------------------------------------------------------------------

@pytest.mark.parametrize("version", [(1, 4), (2, 1)])
def test_every_operation_of_the_blocking_client(planes, version) -> None:
    core, _ = planes
    label = f"sdk-tour-{version[0]}{version[1]}"
    with session(core, core.port, version=version) as s:
        assert version in s.discover_versions()
        assert Operation.CREATE in s.query().operations
        assert len(s.rng_retrieve(16)) == 16
        s.rng_seed(b"\x01" * 16)
        digest = s.hash(cryptographic_parameters=CryptographicParameters(
            hashing_algorithm=HashingAlgorithm.SHA_256), data=b"abc")
        assert digest.data.hex().startswith("ba7816bf")

        uid = s.create(attributes=[name(label)])
        assert s.locate([name(label)]) == [uid]
        references = s.get_attribute_list(uid).attribute_references
        assert any(r.tag == Tag.CRYPTOGRAPHIC_LENGTH for r in references)
        note = Attribute.vendor("x", "sdk-note", _text("one"))
        s.add_attribute(unique_identifier=uid, attribute=note)
        s.modify_attribute(unique_identifier=uid, attribute=Attribute.vendor(
            "x", "sdk-note", _text("two")))
        found = s.get_attributes(uid, [Tag.CRYPTOGRAPHIC_LENGTH])
        assert [a.typed for a in found] == [256]
        s.delete_attribute(unique_identifier=uid, attribute_reference=AttributeReference(
            note.tag, vendor_identification="x", name=note.name))
        s.activate(uid)
        assert s.check(unique_identifier=uid).unique_identifier == uid
        sealed = s.encrypt(uid, b"a record", aad=b"ctx")
        assert s.decrypt(uid, sealed.data, iv=sealed.iv_counter_nonce,
                         tag=sealed.authenticated_encryption_tag, aad=b"ctx") == b"a record"
        material = s.get(uid).object.key_block.key_bytes
        assert len(material) == 32
        rekeyed = s.rekey(unique_identifier=uid)
        assert rekeyed.unique_identifier != uid

        registered = s.register_symmetric(bytes(range(16)), attributes=[name(label + "-r")])
        assert s.get(registered).object.key_block.key_bytes == bytes(range(16))

        mac_key = s.create(CryptographicAlgorithm.HMAC_SHA256, 256, [Attribute.of(
            Tag.CRYPTOGRAPHIC_USAGE_MASK,
            CryptographicUsageMask.MAC_GENERATE | CryptographicUsageMask.MAC_VERIFY)])
        s.activate(mac_key)
        mac = s.mac(unique_identifier=mac_key, data=b"abc").mac_data
        assert s.mac_verify(unique_identifier=mac_key, data=b"abc", mac_data=mac
                            ).validity_indicator == ValidityIndicator.VALID

        pair = s.create_key_pair(
            common_attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM,
                                            CryptographicAlgorithm.RSA),
                               Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 2048)],
            private_key_attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK,
                                                 CryptographicUsageMask.SIGN)],
            public_key_attributes=[Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK,
                                                CryptographicUsageMask.VERIFY)])
        for key in (pair.private_key_unique_identifier, pair.public_key_unique_identifier):
            s.activate(key)
        how = CryptographicParameters(padding_method=PaddingMethod.PSS,
                                      hashing_algorithm=HashingAlgorithm.SHA_256,
                                      cryptographic_algorithm=CryptographicAlgorithm.RSA)
        signature = s.sign(unique_identifier=pair.private_key_unique_identifier,
                           cryptographic_parameters=how, data=b"signed").signature_data
        assert s.signature_verify(unique_identifier=pair.public_key_unique_identifier,
                                  cryptographic_parameters=how, data=b"signed",
                                  signature_data=signature
                                  ).validity_indicator == ValidityIndicator.VALID

        s.revoke(uid, message="tour")
        s.destroy(uid)
        with pytest.raises(KmipOperationFailed) as missing:
            s.get(uid)
        assert missing.value.reason in (ResultReason.ITEM_NOT_FOUND, ResultReason.OBJECT_DESTROYED,
                                        ResultReason.OBJECT_NOT_FOUND)
        assert missing.value.message


def _text(value: str):
    from kcm.ttlv import Item, ItemType

    return Item(Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING, value)


def test_operations_the_server_may_refuse_come_back_as_typed_errors(planes) -> None:
    """Derive Key, Set/Adjust Attribute, Log and Interop: a typed answer either way."""
    core, _ = planes
    with session(core, core.port, version=(2, 1)) as s:
        uid = s.create()
        from kcm.kmip.payloads import DerivationParameters

        derivation = DerivationParameters(
            cryptographic_parameters=CryptographicParameters(
                hashing_algorithm=HashingAlgorithm.SHA_256),
            salt=b"salt", iteration_count=1000)
        for call in (lambda: s.derive_key(object_type=2, unique_identifiers=[uid],
                                          derivation_method=1,
                                          derivation_parameters=derivation, attributes=[
                                              Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM,
                                                           CryptographicAlgorithm.AES),
                                              Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256)]),
                     lambda: s.set_attribute(unique_identifier=uid, attribute=Attribute.of(
                         Tag.CRYPTOGRAPHIC_USAGE_MASK, CryptographicUsageMask.ENCRYPT)),
                     lambda: s.log(log_message="from the sdk"),
                     lambda: s.interop(interop_function=1, interop_identifier="sdk")):
            try:
                answer = call()
            except KmipOperationFailed as e:
                assert e.reason is not None
            else:
                assert answer is not None


# The Twisted client ---------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_thousand_requests_in_flight_on_one_connection(planes) -> None:
    from twisted.internet import reactor

    from kcm.client.pool import KmipClient

    core, gateway = planes
    client = KmipClient.tls(reactor, [f"127.0.0.1:{gateway.port}"], size=1, **files(core))
    try:
        tokens = await defer.gatherResults([client.create_l4() for _ in range(20)])
        asked = [tokens[n % 20] for n in range(1000)]
        answers = await defer.gatherResults([client.get(token) for token in asked])
        assert client.connections == 1
        assert client._connections[0].most_in_flight == 1000  # all sent before any answer
        assert [a.unique_identifier for a in answers] == asked
        materials = {a.unique_identifier: a.object.key_block.key_bytes for a in answers}
        assert len(set(materials.values())) == 20
        # Encrypt/Decrypt pipelined too, each answer the one asked for.
        sealed = await defer.gatherResults(
            [client.encrypt(tokens[n % 20], b"record %d" % n) for n in range(200)])
        plain = await defer.gatherResults(
            [client.decrypt(tokens[n % 20], s.data, iv=s.iv_counter_nonce,
                            tag=s.authenticated_encryption_tag) for n, s in enumerate(sealed)])
        assert plain == [b"record %d" % n for n in range(200)]
        with pytest.raises(KmipOperationFailed):
            await client.activate("no-such-key")
    finally:
        await client.close()


# Failover and split horizon --------------------------------------------------------------------

@pytest.mark.long  # ten seconds or more: the parallel part of `make test` starts it first
def test_failover_between_two_gateways_and_l4_work_with_the_core_away(tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway_b = GatewayProcess(tmp_path / "gateway-b", core)
    with running(core, GatewayProcess(tmp_path / "gateway-a", core)) as (_, gateway_a):
        gateway_b.start()
        try:
            gateway_b.wait_linked()
            gateways = session(core, gateway_a.port, gateway_b.port)
            routed = SplitHorizon(gateways, session(core, core.port))
            token = routed.create_l4()
            material = routed.get(token).object.key_block.key_bytes
            assert gateways.transport.endpoint.port == gateway_a.port
            managed = routed.create()  # a control operation: straight to the core
            assert routed.control.transport.endpoint.port == core.port
            assert gateways.transport._open and routed.control.transport._open

            gateway_a.stop()
            assert routed.get(token).object.key_block.key_bytes == material
            assert gateways.transport.endpoint.port == gateway_b.port

            core.stop()
            sealed = routed.encrypt(token, b"while the core is away")
            assert routed.decrypt(token, sealed.data, iv=sealed.iv_counter_nonce,
                                  tag=sealed.authenticated_encryption_tag
                                  ) == b"while the core is away"
            assert routed.get(token).object.key_block.key_bytes == material
            with pytest.raises(KmipClientError):
                routed.activate(managed)  # the control endpoint is the core: gone
            routed.close()
        finally:
            gateway_b.stop()


@pytest_twisted.ensureDeferred
async def test_the_twisted_client_fails_over_too(tmp_path: Path) -> None:
    from twisted.internet import reactor

    from kcm.client.pool import KmipClient

    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway_b = GatewayProcess(tmp_path / "gateway-b", core)
    with running(core, GatewayProcess(tmp_path / "gateway-a", core)) as (_, gateway_a):
        gateway_b.start()
        gateway_b.wait_linked()
        client = KmipClient.tls(reactor, [f"127.0.0.1:{gateway_a.port}",
                                          f"127.0.0.1:{gateway_b.port}"], **files(core))
        try:
            token = await client.create_l4()
            assert client.endpoint.port == gateway_a.port
            gateway_a.stop()
            got = await client.get(token)  # the broken connection: sent again, to B
            assert got.unique_identifier == token
            assert client.endpoint.port == gateway_b.port
        finally:
            await client.close()
            gateway_b.stop()


# The envelope ------------------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_envelope_shared_by_16_threads_at_the_gateway(planes) -> None:
    """16 threads seal and open on one Envelope over one Session: every record opens, a
    second envelope opens them too, and each data key sealed exactly max_messages records
    (one Create per 250, the last key the rest)."""
    core, gateway = planes
    threads, per_thread, per_key = 16, 200, 250
    with session(core, gateway.port) as s:
        envelope = Envelope(s, CacheLimits(max_messages=per_key))
        sealed: list[list[bytes]] = [[] for _ in range(threads)]
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(per_thread):
                    sealed[n].append(envelope.seal(b"%d/%d" % (n, i), b"t%d" % n))
                    assert envelope.open(sealed[n][i // 2], b"t%d" % n) == b"%d/%d" % (n, i // 2)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        assert errors == []
        counts = sorted(Counter(parse_header(b).token for mine in sealed for b in mine).values())
        total = threads * per_thread
        assert counts == [total % per_key] + [per_key] * (total // per_key)
        assert envelope.stats == {"create": len(counts), "get": len(counts)}
        reader = Envelope(session(core, gateway.port))
        assert all(reader.open(b, b"t%d" % n) == b"%d/%d" % (n, i)
                   for n, mine in enumerate(sealed) for i, b in enumerate(mine))


def test_envelope_round_trip_and_tampering_at_the_gateway(planes) -> None:
    core, gateway = planes
    with session(core, gateway.port) as s:
        envelope = Envelope(s)
        blobs = [envelope.seal(b"record %d" % n, b"row") for n in range(100)]
        assert envelope.stats == {"create": 1, "get": 1}
        reader = Envelope(session(core, gateway.port))
        assert [reader.open(b, b"row") for b in blobs] == [b"record %d" % n for n in range(100)]
        assert reader.stats == {"create": 0, "get": 1}

        blob = blobs[0]
        length = struct.unpack(">H", blob[5:7])[0]
        for offset in (4, 7 + length, 19 + length, len(blob) - 1):  # header, nonce, body, tag
            changed = bytearray(blob)
            changed[offset] ^= 0x01
            with pytest.raises(EnvelopeError):
                reader.open(bytes(changed), b"row")
        changed = bytearray(blob)
        changed[7 + length // 2] ^= 0x01  # inside the sealed token
        with pytest.raises(DataKeyRefused) as refused:
            Envelope(s).open(bytes(changed), b"row")
        assert refused.value.cause.reason is not None


def test_a_destroyed_data_key_stops_opening_within_max_age(planes) -> None:
    core, gateway = planes
    clock = Clock()
    with session(core, gateway.port) as s, session(core, gateway.port) as other:
        limits = CacheLimits(max_age=5.0)
        sealer = Envelope(s, limits, clock=clock)
        blob = sealer.seal(b"soon unreadable")
        opener = Envelope(other, limits, clock=clock)
        assert opener.open(blob) == b"soon unreadable"
        token = parse_header(blob).token
        s.destroy(token)  # forwarded to the core: a tombstone, an event to the gateway

        def refused() -> bool:
            try:
                s.get(token)
            except KmipOperationFailed:
                return True
            return False

        wait_until(refused, "the gateway to refuse the destroyed L4", 10.0)
        clock.now = 4.9
        assert opener.open(blob) == b"soon unreadable"  # inside the bound: the cached key
        clock.now = 5.0
        with pytest.raises(DataKeyRefused, match="refused data key"):
            opener.open(blob)
        assert len(opener.cache) == 0
        # The sealer moves on to a new key once its own is past the bound.
        assert parse_header(sealer.seal(b"next")).token != token


def test_a_blob_opens_with_the_documented_format_and_a_pykmip_get(planes) -> None:
    core, gateway = planes
    with session(core, gateway.port) as s:
        blob = Envelope(s).seal(b"interoperable", b"aad")
    # Only the format of docs/sdk.md, PyKMIP's Get and `cryptography`:
    length = int.from_bytes(blob[5:7], "big")
    token = blob[7:7 + length].decode()
    header, nonce = blob[:19 + length], blob[7 + length:19 + length]
    client = gateway.pykmip()
    try:
        key = client.get(token).value
    finally:
        client.close()
    assert AESGCM(key).decrypt(nonce, blob[19 + length:], header + b"aad") == b"interoperable"


# kcm seal / kcm open --------------------------------------------------------------------------

def run_kcm(core: CoreProcess, port: int, *argv: str, data: bytes) -> subprocess.CompletedProcess:
    pair = core.pki.app
    return subprocess.run(
        [sys.executable, "-m", "kcm", *argv, "--server", f"127.0.0.1:{port}", "--cert",
         str(pair.cert), "--key", str(pair.key), "--ca", str(core.pki.ca.cert)],
        input=data, capture_output=True, env=process_env(), timeout=60, check=False)


@pytest.mark.parametrize("stream", [False, True])
def test_kcm_seal_and_open(planes, stream: bool) -> None:
    core, gateway = planes
    plain = bytes(range(256)) * 1000
    options = ["--stream", "--chunk-size", "4096"] if stream else []
    sealed = run_kcm(core, gateway.port, "seal", *options, "--aad-hex", "0a0b", data=plain)
    assert sealed.returncode == 0, sealed.stderr
    assert parse_header(sealed.stdout).algorithm == (2 if stream else 1)
    opened = run_kcm(core, gateway.port, "open", "--aad-hex", "0a0b", data=sealed.stdout)
    assert (opened.returncode, opened.stdout) == (0, plain), opened.stderr
    wrong = run_kcm(core, gateway.port, "open", data=sealed.stdout)
    assert wrong.returncode == 1 and wrong.stderr.decode().count("\n") == 1
    assert wrong.stderr.decode().startswith("kcm open: ")


def test_the_example_application_runs(planes) -> None:
    core, gateway = planes
    example = Path(__file__).resolve().parents[2] / "examples" / "envelope_app.py"
    done = subprocess.run(
        [sys.executable, str(example), "--gateway", f"127.0.0.1:{gateway.port}", "--core",
         f"127.0.0.1:{core.port}", "--pki", str(core.pki.directory)],
        capture_output=True, env=process_env(), timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    assert lines[:3] == ["1 Ada, 12 Analytical St", "2 Grace, 1 Cobol Way",
                         "3 Alan, 8 Turing Rd"]
    assert lines[3].startswith("moved blob refused: the envelope is not authentic")


def test_the_pykmip_example_runs(planes) -> None:
    core, gateway = planes
    example = Path(__file__).resolve().parents[2] / "examples" / "pykmip_l4.py"
    done = subprocess.run(
        [sys.executable, str(example), "--gateway", f"127.0.0.1:{gateway.port}",
         "--pki", str(core.pki.directory)],
        capture_output=True, env=process_env(), timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.decode().splitlines())
    assert lines["L4 token"].startswith("l4.")
    assert len(bytes.fromhex(lines["DEK"])) == 32
    assert lines["decrypted"] == "b'a customer record'"
    assert lines["managed key (served by the core)"]


@pytest_twisted.ensureDeferred
async def test_the_deferred_envelope_over_the_twisted_client(planes) -> None:
    from twisted.internet import reactor

    from kcm.client.deferred_envelope import DeferredEnvelope
    from kcm.client.pool import KmipClient

    core, gateway = planes
    client = KmipClient.tls(reactor, [f"127.0.0.1:{gateway.port}"], **files(core))
    try:
        envelope = DeferredEnvelope(client)
        blobs = await defer.gatherResults([envelope.seal(b"record %d" % n, b"t")
                                           for n in range(300)])
        assert envelope.stats == {"create": 1, "get": 1}
        reader = DeferredEnvelope(client)
        opened = await defer.gatherResults([reader.open(b, b"t") for b in blobs])
        assert opened == [b"record %d" % n for n in range(300)]
        assert reader.stats == {"create": 0, "get": 1}
        with session(core, gateway.port) as s:  # the blocking envelope reads them too
            assert Envelope(s).open(blobs[7], b"t") == b"record 7"
    finally:
        await client.close()


@pytest.mark.parametrize("version", [(1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 0), (2, 1)])
def test_every_protocol_version_at_core_and_gateway(planes, version) -> None:
    core, gateway = planes
    with session(core, core.port, version=version) as at_core, \
            session(core, gateway.port, version=version) as at_gateway:
        uid = at_core.create()
        at_core.activate(uid)
        assert len(at_core.get(uid).object.key_block.key_bytes) == 32
        token = at_gateway.create_l4()
        assert len(at_gateway.get(token).object.key_block.key_bytes) == 32
        if version < (1, 2):  # Encrypt and Decrypt came with KMIP 1.2
            with pytest.raises(KmipOperationFailed) as refused:
                at_gateway.encrypt(token, b"too early")
            assert refused.value.reason == ResultReason.OPERATION_NOT_SUPPORTED
            return
        sealed = at_gateway.encrypt(token, b"v%d.%d" % version)
        assert at_gateway.decrypt(token, sealed.data, iv=sealed.iv_counter_nonce,
                                  tag=sealed.authenticated_encryption_tag) == b"v%d.%d" % version
        with pytest.raises(KmipOperationFailed) as refused:
            at_gateway.get("no-such-object")
        assert refused.value.reason in (ResultReason.ITEM_NOT_FOUND,
                                        ResultReason.OBJECT_NOT_FOUND)


def test_a_connection_the_server_closed_while_idle_is_not_used(tmp_path: Path) -> None:
    """The core closes idle connections after 1 s here: a Create sent after that goes on
    a fresh connection (found closed before sending), and runs once."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}",
                  idle_timeout=1.0)
    core.start()
    try:
        with session(core, core.port) as client:
            first = client.create()
            time.sleep(2.5)  # the core closes the idle connection meanwhile
            second = client.create()
            assert first != second
            assert len(client.locate()) == 2
    finally:
        core.stop()


def test_a_session_whose_socket_is_past_descriptor_1023_keeps_working(planes) -> None:
    """A process with many files or connections open gives a Session's socket a descriptor
    of 1024 or more: the check made before each request (select) raised ValueError, so
    every request after the first failed, for good."""
    import os
    import resource

    core, gateway = planes
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        with session(core, gateway.port) as client:
            token = client.create_l4()
            transport = client.transport
            assert transport._clients[transport._current]._socket.fileno() >= 1024  # noqa: SLF001
            for _ in range(3):
                assert client.get(token).unique_identifier == token
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_closing_a_session_other_threads_use_waits_for_their_request(planes) -> None:
    """close() closed the socket under another thread's request: that thread got an
    AssertionError, AttributeError or EBADF (5 + 1 + 5 of 25,000 requests in a
    reviewer's run) instead of its answer."""
    import threading

    core, gateway = planes
    failures: list[BaseException] = []
    with session(core, gateway.port) as client:
        token = client.create_l4()
        stop = threading.Event()

        def work() -> None:
            while not stop.is_set():
                try:
                    client.get(token)
                except BaseException as e:  # noqa: BLE001 - every kind is the finding
                    failures.append(e)

        threads = [threading.Thread(target=work) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            for _ in range(40):
                time.sleep(0.01)
                client.close()
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
    assert failures == []
