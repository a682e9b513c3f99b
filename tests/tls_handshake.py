"""A TLS handshake between a server of a listener's options and a client certificate, over
a socket pair: what the TLS unit tests (CRLs, renewals) look at."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import Any

from cryptography import x509
from OpenSSL import SSL

from kcm.pki import CertKeyPaths


def presented(options: Any, pair: CertKeyPaths, ca: Path) -> int | None:
    """The serial number of the certificate a server of ``options`` presents to a client
    of ``pair`` trusting ``ca``, once a message has gone each way; None when the handshake
    failed (the client speaks TLS 1.2 at most, so a refusal shows in the handshake)."""
    a, b = socket.socketpair()
    server = SSL.Connection(options.getContext(), a)
    server.set_accept_state()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(str(ca))
    context.load_cert_chain(str(pair.cert), str(pair.key))
    seen: list[int] = []

    def client() -> None:
        try:
            with context.wrap_socket(b) as tls:
                der = tls.getpeercert(binary_form=True)
                seen.append(x509.load_der_x509_certificate(der).serial_number)
                tls.sendall(b"ping")
                tls.recv(4)
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=client)
    thread.start()
    try:
        server.do_handshake()
        server.recv(4)
        server.sendall(b"pong")
        done = True
    except SSL.Error:
        done = False
    finally:
        a.close()
        thread.join(5)
        b.close()
    return seen[0] if done and seen else None
