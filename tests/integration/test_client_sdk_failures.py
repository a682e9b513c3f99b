"""kcm.client against real kcm-core and kcm-gateway processes, on what a review found: a
record under another service's readable key is not authentic, a Session used on both sides
of a fork gives each process its own connection, and the Twisted client (and the
DeferredEnvelope over it) fails over from a gateway that is hung (SIGSTOP: the kernel still
takes TCP connections) or from an endpoint that accepts TCP and closes; plus
kcm.eager_tls's wait for the handshake, which the pool uses and the gateway's link does
not."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet import protocol
from twisted.internet.endpoints import TCP4ClientEndpoint

from kcm.client import EnvelopeError, KmipClientError, Session
from kcm.client.envelope import header_prefix
from kcm.client.sealer import Envelope
from kcm.eager_tls import EagerTLSClientEndpoint, HandshakeFailed
from kcm.testing.processes import CoreProcess, GatewayProcess, deploy, running


@pytest.fixture(scope="module")
def planes(tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[CoreProcess, GatewayProcess, GatewayProcess]]:
    """A core, two gateways linked to it, and a second service (``legacy``) in the tenant."""
    root = tmp_path_factory.mktemp("hs-sdk")
    core = deploy(root / "core", f"sqlite:///{root / 'core' / 'kcm.db'}")
    second = GatewayProcess(root / "gateway-b", core)
    with running(core, GatewayProcess(root / "gateway-a", core)) as (_, first):
        core.kcm("core", "service", "add", "demo", "legacy")
        second.start()
        try:
            second.wait_linked()
            yield core, first, second
        finally:
            second.stop()


def files(core: CoreProcess, who: str = "app") -> dict[str, str]:
    pair = getattr(core.pki, who)
    return {"cert": str(pair.cert), "key": str(pair.key), "ca": str(core.pki.ca.cert)}


def session(core: CoreProcess, *ports: int, who: str = "app", timeout: float = 30.0
            ) -> Session:
    return Session.connect([f"127.0.0.1:{port}" for port in ports], timeout=timeout,
                           **files(core, who))


@contextmanager
def hung(gateway: GatewayProcess) -> Iterator[None]:
    """``gateway`` stopped (SIGSTOP): connections are still taken by the kernel, and
    nothing answers them."""
    assert gateway.process is not None
    os.kill(gateway.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(gateway.process.pid, signal.SIGCONT)


# Only an L4 makes a record authentic -------------------------------------------------------

def test_a_record_forged_by_another_service_under_a_readable_key_is_refused(planes) -> None:
    core, gateway, _ = planes
    with session(core, gateway.port) as app, session(core, gateway.port, who="admin") as admin, \
            session(core, gateway.port, who="legacy") as legacy:
        genuine = Envelope(app).seal(b'{"amount": 10}', aad=b"payments/7")
        assert Envelope(app).open(genuine, aad=b"payments/7") == b'{"amount": 10}'

        # A tenant administrator's key (no service): service legacy may read it.
        shared = admin.create(attributes=[])
        admin.activate(shared)
        material = legacy.get(shared).object.key_block.key_bytes
        nonce = os.urandom(12)
        header = header_prefix(shared) + nonce
        forged = header + AESGCM(material).encrypt(nonce, b'{"amount": 1000000}',
                                                   header + b"payments/7")
        reader = Envelope(app)
        with pytest.raises(EnvelopeError, match="not an L4 data key"):
            reader.open(forged, aad=b"payments/7")
        assert reader.stats == {"create": 0, "get": 0}  # refused before any Get


@pytest_twisted.ensureDeferred
async def test_the_deferred_envelope_refuses_the_forgery_too(planes) -> None:
    from twisted.internet import reactor

    from kcm.client.deferred_envelope import DeferredEnvelope
    from kcm.client.pool import KmipClient

    core, gateway, _ = planes
    with session(core, gateway.port, who="admin") as admin:
        shared = admin.create(attributes=[])
        admin.activate(shared)
        material = admin.get(shared).object.key_block.key_bytes
    nonce = os.urandom(12)
    header = header_prefix(shared) + nonce
    forged = header + AESGCM(material).encrypt(nonce, b"forged", header)
    client = KmipClient.tls(reactor, [f"127.0.0.1:{gateway.port}"], **files(core))
    try:
        envelope = DeferredEnvelope(client)
        with pytest.raises(EnvelopeError, match="not an L4 data key"):
            await envelope.open(forged)
        assert envelope.stats["get"] == 0
    finally:
        await client.close()


# A session across fork ---------------------------------------------------------------------

def _in_child(work) -> int:
    """Run ``work`` in a forked child; its exit status (0: it returned True)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if work() else 3
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_session_used_across_fork_gives_the_child_a_connection_of_its_own(planes) -> None:
    core, gateway, _ = planes
    with session(core, gateway.port) as s:
        token = s.create_l4()
        records = {who: s.encrypt(token, f"{who}'s record".encode()) for who in ("a", "b")}
        parent_socket = s.transport._clients[0]._socket
        assert parent_socket is not None
        parent_address = parent_socket.getsockname()

        def child() -> bool:
            record = records["b"]
            plain = s.decrypt(token, record.data, iv=record.iv_counter_nonce,
                              tag=record.authenticated_encryption_tag)
            mine = s.transport._clients[0]._socket.getsockname()
            s.close()  # writes nothing on the parent's connection
            return plain == b"b's record" and mine != parent_address

        for _ in range(3):
            assert _in_child(child) == 0
            record = records["a"]
            # The parent's connection is untouched: same socket, its answers its own.
            assert s.decrypt(token, record.data, iv=record.iv_counter_nonce,
                             tag=record.authenticated_encryption_tag) == b"a's record"
            assert s.transport._clients[0]._socket is parent_socket


def test_parent_and_child_asking_at_once_each_get_their_own_answer(planes) -> None:
    core, gateway, _ = planes
    with session(core, gateway.port) as s:
        token = s.create_l4()
        records = {who: s.encrypt(token, f"{who}'s record".encode()) for who in ("a", "b")}

        def ask(who: str) -> bytes:
            record = records[who]
            return s.decrypt(token, record.data, iv=record.iv_counter_nonce,
                             tag=record.authenticated_encryption_tag)

        for _ in range(5):
            s.discover_versions()  # connected before the fork
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    os.write(write, ask("b"))
                finally:
                    os._exit(0)
            try:
                mine = ask("a")
            finally:
                os.waitpid(pid, 0)
            theirs = os.read(read, 100)
            os.close(read)
            os.close(write)
            assert (mine, theirs) == (b"a's record", b"b's record")


# The Twisted client fails over from a hung gateway or a broken endpoint ------------------------

@pytest_twisted.ensureDeferred
async def test_the_twisted_client_connects_past_a_hung_gateway(planes) -> None:
    from twisted.internet import reactor

    from kcm.client.deferred_envelope import DeferredEnvelope
    from kcm.client.pool import KmipClient

    core, first, second = planes
    with hung(first):
        client = KmipClient.tls(reactor, [f"127.0.0.1:{first.port}",
                                          f"127.0.0.1:{second.port}"],
                                **files(core), timeout=5.0, connect_timeout=2.0)
        try:
            assert (2, 1) in await client.discover_versions()
            assert client.endpoint.port == second.port
            token = await client.create_l4()  # not idempotent: sent once, to the second
            assert (await client.get(token)).unique_identifier == token
            envelope = DeferredEnvelope(client)
            blob = await envelope.seal(b"a record")
            assert await DeferredEnvelope(client).open(blob) == b"a record"
        finally:
            await client.close()


@pytest_twisted.ensureDeferred
async def test_the_twisted_client_moves_on_when_its_gateway_hangs_under_it(planes) -> None:
    from twisted.internet import reactor

    from kcm.client.pool import KmipClient

    core, first, second = planes
    client = KmipClient.tls(reactor, [f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"],
                            **files(core), timeout=3.0, connect_timeout=2.0)
    try:
        token = await client.create_l4()
        assert client.endpoint.port == first.port
        with hung(first):
            # The call's timeout is spent on the first (it bounds the call as a whole,
            # resend included); the first is given up, and the next call goes to the second.
            with pytest.raises(KmipClientError, match="no answer within 3 s"):
                await client.get(token)
            assert client.endpoint.port == second.port
            assert (await client.get(token)).unique_identifier == token
            assert (await client.create_l4()).startswith("l4.")  # straight to the second
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_a_create_whose_gateway_hangs_fails_once_and_the_next_goes_on(planes) -> None:
    from twisted.internet import reactor

    from kcm.client.pool import KmipClient

    core, first, second = planes
    client = KmipClient.tls(reactor, [f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"],
                            **files(core), timeout=3.0, connect_timeout=2.0, size=1)
    try:
        await client.create_l4()  # (an L4 operation: answered even while a relink goes on)
        with hung(first):
            with pytest.raises(KmipClientError, match="no answer within"):
                await client.create_l4()  # never sent again behind the caller's back
            assert client.endpoint.port == second.port
            assert (await client.create_l4()).startswith("l4.")
    finally:
        await client.close()


@contextmanager
def closing_listener() -> Iterator[int]:
    """A port that accepts TCP connections and closes each at once (no TLS)."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(5)


@pytest_twisted.ensureDeferred
async def test_an_endpoint_that_accepts_and_closes_is_a_refusal(planes) -> None:
    from twisted.internet import reactor

    from kcm.client.pool import KmipClient

    core, _, second = planes
    with closing_listener() as port:
        client = KmipClient.tls(reactor, [f"127.0.0.1:{port}", f"127.0.0.1:{second.port}"],
                                **files(core), timeout=5.0)
        try:
            for _ in range(3):
                assert (2, 1) in await client.discover_versions()
            assert client.endpoint.port == second.port
        finally:
            await client.close()
        alone = KmipClient.tls(reactor, [f"127.0.0.1:{port}"], **files(core), timeout=5.0)
        with pytest.raises(KmipClientError, match="TLS handshake"):
            await alone.discover_versions()
        await alone.close()


@contextmanager
def stranger(directory: Path) -> Iterator[int]:
    """A TLS server whose certificate another CA issued: the client's verification fails."""
    from kcm.pki import init_pki

    pki = init_pki(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.core.cert), str(pki.core.key))
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            try:
                with context.wrap_socket(connection, server_side=True) as tls:
                    tls.recv(1)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(5)


@pytest_twisted.ensureDeferred
async def test_an_endpoint_whose_certificate_fails_verification_is_a_refusal(
        planes, tmp_path: Path) -> None:
    from twisted.internet import reactor

    from kcm.client.pool import KmipClient

    core, _, second = planes
    with stranger(tmp_path / "other-pki") as port:
        client = KmipClient.tls(reactor, [f"127.0.0.1:{port}", f"127.0.0.1:{second.port}"],
                                **files(core), timeout=5.0)
        try:
            assert (2, 1) in await client.discover_versions()
            assert client.endpoint.port == second.port
        finally:
            await client.close()
        alone = KmipClient.tls(reactor, [f"127.0.0.1:{port}"], **files(core), timeout=5.0)
        with pytest.raises(KmipClientError, match="TLS handshake failed: .*certificate verify"):
            await alone.discover_versions()
        await alone.close()


# kcm.eager_tls: waiting for the handshake is the pool's choice, not the link's ---------------

class Silent(protocol.Protocol):
    """Takes whatever comes and never answers."""


@pytest_twisted.ensureDeferred
async def test_the_endpoint_waits_for_the_handshake_only_when_asked(planes, tmp_path: Path
                                                                    ) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from kcm.tls import client_tls_options

    core, _, _ = planes
    options = client_tls_options(core.pki.app.cert, core.pki.app.key, core.pki.ca.cert,
                                 "127.0.0.1")
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(Silent))
    inner = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=5)
    try:
        # As before (the gateway's link): connected at TCP connect.
        plain = await EagerTLSClientEndpoint(options, inner).connect(
            protocol.Factory.forProtocol(protocol.Protocol))
        plain.transport.abortConnection()
        # Asked to: a handshake that does not come in time fails, and the connection goes.
        waiting = EagerTLSClientEndpoint(options, inner, handshake_timeout=0.5, clock=reactor)
        with pytest.raises(HandshakeFailed, match="no TLS handshake within 0.5 s"):
            await waiting.connect(protocol.Factory.forProtocol(protocol.Protocol))
    finally:
        await port.stopListening()
    with pytest.raises(ValueError):
        EagerTLSClientEndpoint(options, inner, handshake_timeout=1.0)
