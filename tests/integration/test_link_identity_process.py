"""Who a real `twistd kcm-gateway` takes for its core, and what a real `twistd kcm-core`
logs of clients TLS refused, with the development PKI's certificates.

* A peer at the gateway's ``core`` address that presents a gateway's certificate (same CA,
  same host names, serverAuth: everything TLS checks) is refused once the handshake is done,
  before the gateway sends it anything, and the gateway's log says why.
* A client whose certificate another CA issued is refused by TLS, and the core's log gets
  the summarised line with OpenSSL's reason and the client's address.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import time
from pathlib import Path

from kcm.pki import CertKeyPaths, issue_certificate, new_ca, write_certificate
from kcm.testing.processes import free_port, start_python_server, stop_process
from tests.e2e_support import CoreProcess, GatewayProcess, deploy, wait_until

#: A TLS server that poses as the core with the certificate and key it is given, requires a
#: client certificate of the CA, and prints how many bytes each client sent after the
#: handshake: ``python -c FAKE_CORE CERT KEY CA PORT``.
FAKE_CORE = """
import socket, ssl, sys
cert, key, ca, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
context.load_verify_locations(ca)
context.verify_mode = ssl.CERT_REQUIRED
listener = socket.create_server(("127.0.0.1", port))
while True:
    raw, _ = listener.accept()
    raw.settimeout(5)
    try:
        tls = context.wrap_socket(raw, server_side=True)
        print("handshake done", flush=True)
        received = b""
        while chunk := tls.recv(65536):
            received += chunk
    except (OSError, ssl.SSLError) as e:
        print("closed:", type(e).__name__, flush=True)
        received = locals().get("received", b"")
    print("received", len(received), "bytes", flush=True)
    raw.close()
"""


def test_a_gateway_refuses_a_peer_with_a_gateway_certificate_as_its_core(
        tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.link_port = free_port()  # where the gateway looks for its core: the impostor
    pki = core.pki
    impostor_log = tmp_path / "impostor.log"
    impostor = start_python_server(
        FAKE_CORE, [str(pki.gateway.cert), str(pki.gateway.key), str(pki.ca.cert),
                    str(core.link_port)], core.link_port, "fake core", impostor_log)
    gateway = GatewayProcess(tmp_path / "gateway", core)
    address = f"127.0.0.1:{core.link_port}"
    try:
        gateway.start()
        # Every line asserted below: the refusal and the failed link are logged one after
        # another, not at once (a loaded machine showed the gap).
        wait_until(lambda: all(line in gateway.log.read_text() for line in (
                       "refusing the link", f"cannot link to core tcp:{address}"))
                   and impostor_log.read_text().count("received") >= 2,
                   "the gateway to refuse the fake core twice", timeout=20)
        log = gateway.log.read_text()
    finally:
        gateway.stop()
        stop_process(impostor)
    assert (f"refusing the link: {address} is not a core: its certificate carries a URI SAN "
            "(spiffe://kcm.test/gateway/gw1); a core's carries none") in log
    assert f"cannot link to core tcp:{address}: {address} is not a core" in log
    assert "linked to core" not in log
    # Twisted's line at each retry is not written at log_level info (kcm.logging's
    # QUIET_NAMESPACES; at debug it names the core, not an object's address:
    # tests/unit/test_gateway_core_endpoints.py).
    assert "Scheduling retry" not in log and "to connect core" not in log
    assert "CoreFailoverEndpoint object at" not in log
    # The handshakes completed (the impostor holds a certificate of the CA) and the gateway
    # sent nothing on them: not its HELLO, nor anything after.
    handled = impostor_log.read_text()
    assert "handshake done" in handled
    assert [line for line in handled.splitlines() if line.startswith("received")] and all(
        line == "received 0 bytes" for line in handled.splitlines()
        if line.startswith("received")), handled


def _stranger(directory: Path) -> CertKeyPaths:
    """A client certificate, with a valid SPIFFE ID, that another CA issued."""
    now = dt.datetime.now(dt.UTC)
    issued = issue_certificate(new_ca("Another CA", now=now), "app", now=now,
                               uris=["spiffe://kcm.test/tenant/demo/service/app"])
    paths = CertKeyPaths(directory / "stranger.pem", directory / "stranger.key")
    write_certificate(paths, issued.cert, issued.key)
    return paths


def _try_tls(core: CoreProcess, client: CertKeyPaths) -> str:
    """Connect to the core's KMIP port with ``client``'s certificate; what ended it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(core.pki.ca.cert)
    context.load_cert_chain(client.cert, client.key)
    with socket.create_connection(("127.0.0.1", core.port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.recv(1)  # TLS 1.3: the server's refusal comes after our side is done
        except (OSError, ssl.SSLError) as e:
            return type(e).__name__
    return "open"


def test_a_client_of_another_ca_is_logged_by_the_core_in_summary(tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    stranger = _stranger(tmp_path)
    core.start()
    try:
        for _ in range(20):  # a small flood
            assert _try_tls(core, stranger) != "open"
        wait_until(lambda: "handshake(s) failed" in core.log.read_text(),
                   "the core to log the failed handshakes")
        time.sleep(0.5)
        log = core.log.read_text()
    finally:
        core.stop()
    lines = [json.loads(line) for line in log.splitlines() if "handshake(s) failed" in line]
    assert len(lines) == 1, lines  # the first at once; the rest at the interval's end
    assert (lines[0]["level"], lines[0]["text"]) == (
        "warn", "1 TLS handshake(s) failed in the last 10s; last from 127.0.0.1: certificate "
                "verify failed: unable to get local issuer certificate")
