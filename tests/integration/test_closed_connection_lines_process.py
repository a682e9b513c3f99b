"""The log lines of connections closed for what their clients sent, against real `twistd`
processes: a kcm-core and a kcm-gateway of two workers in front of it.

A client with an accepted certificate may reconnect in a loop and send, each time, an
unreadable message header or a message over ``max_message_size``. Each such connection was
one info line (`closing PEER: unreadable message header (...)`, `refusing a request from
PEER: too large (...)`): a walk with four client threads wrote 180 lines a second at the
core and 140 at the gateway, as fast as TLS handshakes go. Now each kind is written at most
once an interval per process (the first at once, then one line with how many it stands for),
and what was counted is written when the process stops.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from pathlib import Path

from kcm.connection_guard import LOG_INTERVAL
from kcm.kmip.enums import ResultStatus
from kcm.testing.processes import running
from kcm.testing.requests import query, request, response
from tests.e2e_support import CoreProcess, GatewayProcess, deploy

#: Connections of each kind sent to each server.
CONNECTIONS = 40
UNREADABLE = bytes.fromhex("420078010000000e")  # a structure length not a multiple of 8
TOO_LARGE = bytes.fromhex("420078017f000000")  # 2 GiB declared: over max_message_size


def _send_and_close(server: CoreProcess | GatewayProcess, header: bytes) -> None:
    """One TLS connection as the ``other`` tenant's application: ``header``, then whatever
    the server answers until it closes."""
    context = ssl.create_default_context(cafile=str(server.pki.ca.cert))
    context.check_hostname = False
    context.load_cert_chain(str(server.pki.other_app.cert), str(server.pki.other_app.key))
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(header)
        try:
            while tls.recv(4096):
                pass
        except OSError:  # aborted (an unreadable header on a connection that read nothing)
            pass


def _lines(log: Path, text: str) -> list[int]:
    """The ``count`` of each line of ``log`` whose text holds ``text``."""
    counts = []
    for line in log.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if text in event.get("text", ""):
            counts.append(int(event.get("count", 1)))  # (one a line before they were counted)
    return counts


def test_connections_closed_for_their_headers_are_logged_at_most_once_an_interval(
        tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(tmp_path / "gateway", core, workers=2)
    with running(core, gateway):
        began = time.monotonic()
        for server in (core, gateway):
            for _ in range(CONNECTIONS):
                _send_and_close(server, UNREADABLE)
                _send_and_close(server, TOO_LARGE)
        # At most one line of each kind an interval per process (the gateway's two
        # workers each log their own), the first at once: a line a connection was 40.
        intervals = 2 + int((time.monotonic() - began) // LOG_INTERVAL)
        bounds = {core.log: intervals, gateway.log: 2 * intervals}
        for server in (core, gateway):
            for text in ("unreadable message header", "refusing a request from"):
                assert 1 <= len(_lines(server.log, text)) <= bounds[server.log], (server, text)
            with server.client() as client:  # still serving
                answer = response(client.send(request(query())))
                assert answer.batch_items[0].result_status == ResultStatus.SUCCESS
    # Stopped: what was counted is written, every connection in one line or another.
    for server in (core, gateway):
        for text in ("unreadable message header", "refusing a request from"):
            counts = _lines(server.log, text)
            assert sum(counts) == CONNECTIONS, (server, text, counts)
            assert len(counts) <= bounds[server.log] + 2
