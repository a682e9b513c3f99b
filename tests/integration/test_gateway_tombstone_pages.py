"""A restarted gateway learns every tombstone of a service key, in pages (link version 9),
real processes: 1,001 L4 tokens revoked under demo/app's version (more than one SERVICE_KEYS
carries), the gateway restarted; the version comes without its tombstones, is paged in, and
its L4 Encrypts are then served at the gateway (the core writes no audit record for them;
the gauge of overflowed versions goes back to 0), a revoked token refused there. And the
same when the core refuses the version's first page once (a link between the two
processes answers it as the core refuses a caller): the gateway asks again after its
back-off, and then serves the version (it was left to the core until a restart)."""

from __future__ import annotations

import select
import socket
import ssl
import struct
import threading
from pathlib import Path
from types import SimpleNamespace

from kcm.kmip.enums import Operation, ResultReason, RevocationReasonCode
from kcm.kmip.messages import RequestBatchItem
from kcm.kmip.payloads.lifecycle import RevocationReason, RevokeRequest
from kcm.link.frames import (
    MAX_SENT_TOMBSTONES,
    Frame,
    FrameType,
    encode_frame,
    peek_frame_head,
)
from kcm.testing.processes import free_port, scrape
from tests.e2e_support import (
    CoreProcess,
    GatewayProcess,
    audit_rows,
    last_seq,
    refusals,
    send_v21,
    succeeded_v21,
    wait_until,
)
from tests.gateway_support import create_l4, encrypt, get, item

BATCH = 50  # items per request (within max_batch_items)
REVOKED = MAX_SENT_TOMBSTONES + 1


def revoke(uid: str) -> RequestBatchItem:
    return item(Operation.REVOKE, RevokeRequest(
        unique_identifier=uid,
        revocation_reason=RevocationReason(code=RevocationReasonCode.CESSATION_OF_OPERATION)))


def metric(gateway: GatewayProcess, name: str) -> bytes:
    _, body = scrape(gateway.metrics_port)
    [line] = [line for line in body.splitlines() if line.startswith(name.encode() + b" ")]
    return line.split()[1]


class RefusingLink(threading.Thread):
    """Between a real gateway and a real core (TLS on both sides, with the development
    PKI's core and gateway certificates): every frame passes, both ways, except the first
    ``refuse`` FETCH_TOMBSTONES once armed, which it answers itself as the core refuses a
    caller it no longer accepts (Permission Denied). One thread per link, reading either
    side as it becomes readable."""

    def __init__(self, core: CoreProcess) -> None:
        super().__init__(daemon=True)
        self.core = core
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.refuse = 0
        self.refused = 0
        self._server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server.load_cert_chain(core.pki.core.cert, core.pki.core.key)
        self._client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._client.check_hostname = False
        self._client.load_verify_locations(core.pki.ca.cert)
        self._client.load_cert_chain(core.pki.gateway.cert, core.pki.gateway.key)
        self._stopped = False

    def run(self) -> None:
        while not self._stopped:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._link, args=(raw,), daemon=True).start()

    def stop(self) -> None:
        self._stopped = True
        self.listener.close()

    def _link(self, raw: socket.socket) -> None:
        try:
            gateway = self._server.wrap_socket(raw, server_side=True)
            core = self._client.wrap_socket(socket.create_connection(
                ("127.0.0.1", self.core.link_port), timeout=10))
        except OSError:
            raw.close()
            return
        pending = b""
        try:
            while not self._stopped:
                readable, _, _ = select.select([gateway, core], [], [], 0.2)
                for side in readable:
                    data = side.recv(65536)
                    while side.pending():
                        data += side.recv(side.pending())
                    if not data:
                        return
                    if side is core:
                        gateway.sendall(data)
                        continue
                    pending += data
                    while len(pending) >= 8:
                        size = 8 + struct.unpack(">I", pending[4:8])[0]
                        if len(pending) < size:
                            break
                        frame, pending = pending[:size], pending[size:]
                        kind, stream = peek_frame_head(frame[:40])
                        if kind is FrameType.FETCH_TOMBSTONES and self.refused < self.refuse:
                            self.refused += 1
                            gateway.sendall(encode_frame(Frame(
                                FrameType.TOMBSTONES, stream_id=stream,
                                error="the asserted caller identity is not accepted",
                                result_reason=int(ResultReason.PERMISSION_DENIED))))
                        else:
                            core.sendall(frame)
        except OSError:
            return
        finally:
            gateway.close()
            core.close()


def revoke_past_an_answer(gateway: GatewayProcess) -> tuple[list[str], str]:
    """Create L4s and revoke more than one answer's tombstones: (revoked, a live one)."""
    with gateway.client("app") as app:
        tokens: list[str] = []
        while len(tokens) < REVOKED + 1:
            tokens += [created.unique_identifier
                       for created in succeeded_v21(app, *[create_l4()] * BATCH)]
        revoked, live = tokens[:REVOKED], tokens[REVOKED]
        for at in range(0, REVOKED, BATCH):
            succeeded_v21(app, *[revoke(token) for token in revoked[at:at + BATCH]])
    return revoked, live


def served_here(core: CoreProcess, gateway: GatewayProcess, revoked: list[str],
                live: str) -> None:
    before = last_seq(core)
    with gateway.client("app") as app:
        for _ in range(4):
            succeeded_v21(app, *[encrypt(live, b"a customer record")] * BATCH)
        assert refusals(send_v21(app, encrypt(revoked[0]), get(revoked[-1]),
                                 encrypt(revoked[REVOKED // 2]))) == [
            ResultReason.OBJECT_NOT_FOUND] * 3
    # Served at the gateway: no record of them at the core (a forwarded L4 request
    # is audited there, one record each).
    operations = [row["operation"] for row in audit_rows(core, before)]
    assert not {"ENCRYPT", "GET"} & set(operations), operations


def test_a_version_whose_first_page_the_core_refused_is_paged_in_after_the_back_off(
        core_process: CoreProcess, tmp_path: Path) -> None:
    link = RefusingLink(core_process)
    link.start()
    gateway = GatewayProcess(tmp_path / "gateway", core_process, metrics_port=free_port(),
                             cores=[SimpleNamespace(link_port=link.port, host="127.0.0.1")])
    try:
        gateway.start()
        gateway.wait_linked()
        revoked, live = revoke_past_an_answer(gateway)
        gateway.stop()
        link.refuse = 1
        gateway.start()  # (a restart: it learns the tombstones from the core alone)
        gateway.wait_linked()
        wait_until(lambda: "L4 tombstones came in" in gateway.log.read_text(),
                   "the gateway to page the version's tombstones in after a refusal",
                   timeout=20)
        log = gateway.log.read_text()
        assert link.refused == 1
        assert "the core refused the L4 tombstones of service key" in log
        assert "asking again in 1 s" in log
        assert metric(gateway, "kcm_gateway_l3_tombstones_overflowed") == b"0.0"
        assert metric(gateway, "kcm_gateway_l3_tombstones_paging") == b"0.0"
        served_here(core_process, gateway, revoked, live)
    finally:
        gateway.stop()
        link.stop()


def test_a_restarted_gateway_pages_in_1001_tombstones_and_serves_their_version_again(
        core_process: CoreProcess, tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path / "gateway", core_process, metrics_port=free_port())
    gateway.start()
    try:
        gateway.wait_linked()
        with gateway.client("app") as app:
            tokens: list[str] = []
            while len(tokens) < REVOKED + 1:
                tokens += [created.unique_identifier
                           for created in succeeded_v21(app, *[create_l4()] * BATCH)]
            revoked, live = tokens[:REVOKED], tokens[REVOKED]
            for at in range(0, REVOKED, BATCH):
                succeeded_v21(app, *[revoke(token) for token in revoked[at:at + BATCH]])

        gateway.stop()
        gateway.start()  # (a restart: it learns the tombstones from the core alone)
        gateway.wait_linked()
        wait_until(lambda: "L4 tombstones came in" in gateway.log.read_text(),
                   "the gateway to page the version's tombstones in", timeout=20)
        assert "without its L4 tombstones" in gateway.log.read_text()
        assert metric(gateway, "kcm_gateway_l3_tombstones_overflowed") == b"0.0"
        assert float(metric(gateway, "kcm_gateway_l4_tombstones")) == REVOKED

        served_here(core_process, gateway, revoked, live)
    finally:
        gateway.stop()
