"""kcm-gateway's workers out of file descriptors (``ulimit -n`` below their caps, as their
start warns, and taken up by connections that hold them): the clients connected are served
on, the connections handed to a worker with no room for them are closed, and the log says
so once (it said nothing: clients saw resets and the log no cause); once connections go,
new ones are served with no restart."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm.kmip.enums import ResultStatus
from kcm.testing.processes import running
from kcm.testing.requests import create_l4, create_managed, encrypt, request, response
from tests.e2e_support import CoreProcess, GatewayProcess, deploy

#: Each gateway process's soft limit on open files: well below its connection caps.
NOFILE = 128


@pytest.fixture
def starved_gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    core: CoreProcess = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(tmp_path / "gateway", core, workers=2)
    gateway.limits.update(handshake_timeout=60.0)
    gateway.nofile = NOFILE
    with running(core, gateway):
        yield gateway


def served(client, token: str) -> bool:
    answers = [response(client.send(request(item))).batch_items[0]
               for item in (encrypt(token, b"x"), create_managed())]
    return all(answer.result_status == ResultStatus.SUCCESS for answer in answers)


def test_workers_out_of_descriptors_serve_their_clients_and_say_so_once(
        starved_gateway: GatewayProcess) -> None:
    gateway = starved_gateway
    clients = [gateway.client() for _ in range(4)]  # (spread over both workers)
    try:
        [created] = response(clients[0].send(request(create_l4()))).batch_items
        token = created.response_payload.unique_identifier
        assert all(served(client, token) for client in clients)
        # TCP connections that never start TLS: more than both workers may hold.
        holders = []
        try:
            for n in range(3 * NOFILE):
                sock = socket.socket()
                sock.bind((f"127.0.0.{2 + n // 90}", 0))
                sock.connect(("127.0.0.1", gateway.port))
                holders.append(sock)
            time.sleep(2)
            assert all(served(client, token) for client in clients)
            log = gateway.log.read_text()
            assert log.count("cannot take the connections handed to it") in (1, 2), log[-3000:]
            assert "Too many open files" in log
        finally:
            for sock in holders:
                sock.close()
        time.sleep(1)
        with gateway.client() as newcomer:
            newcomer.timeout = 10
            assert served(newcomer, token)
        assert all(served(client, token) for client in clients)
    finally:
        for client in clients:
            client.close()
