"""A gateway's scope (the core's policy file, ``[gateways]``) enforced by a real `twistd
kcm-core` on a raw link with the development PKI's gateway certificate (gw1), as a stolen
credential would use it:

* unscoped (no entry: the default), the gateway acts for any tenant, as before scopes;
* a SIGHUP that scopes it to tenant demo without admins closes its link (GOAWAY: what it
  was sent was its view under the old scope), and on its next link to the running core
  demo's fetches and forwarded requests are served; another tenant's fetch, request and
  usage counts, and a demo administrator, are refused (as an unaccepted caller, audited
  with the gateway) or dropped (logged).
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import struct
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from kcm.core.store.schema import AuditLog, L3Usage
from kcm.kmip.enums import ResultReason, ResultStatus
from kcm.link.frames import Frame, FrameType, decode_frame, encode_frame
from kcm.testing.processes import GatewayProcess, free_port, scrape
from kcm.testing.requests import create_managed, query, request, response
from tests.e2e_support import CoreProcess, deploy, wait_until

TD = "spiffe://kcm.test"
GW1 = f"{TD}/gateway/gw1"
NOT_ACCEPTED = "the asserted caller identity is not accepted"


class RawLink:
    """A gateway's end of the link, frame by frame (answers the core's PINGs)."""

    def __init__(self, core: CoreProcess) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(core.pki.ca.cert)
        context.load_cert_chain(core.pki.gateway.cert, core.pki.gateway.key)
        raw = socket.create_connection(("127.0.0.1", core.link_port), timeout=10)
        self.tls = context.wrap_socket(raw)
        self.stream = 0
        self.buffer = b""
        self.send(Frame(FrameType.HELLO, link_version=1, peer_name="scope-test", sequence=-1))
        self.until(FrameType.WELCOME)

    def send(self, frame: Frame) -> None:
        self.tls.sendall(encode_frame(frame))

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.tls.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the core")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def until(self, kind: FrameType, stream: int | None = None) -> Frame:
        while True:
            head = self._read(8)
            (length,) = struct.unpack(">I", head[4:])
            frame = decode_frame(head + self._read(length), max_size=1 << 22)
            if frame.type is kind and (stream is None or frame.stream_id == stream):
                return frame
            if frame.type is FrameType.GOAWAY:
                raise ConnectionError(f"GOAWAY {frame.error}")
            if frame.type is FrameType.PING:
                self.send(Frame(FrameType.PONG, stream_id=frame.stream_id))

    def fetch(self, who: str, tenant: str, service: str = "app") -> Frame:
        self.stream += 1
        self.send(Frame(FrameType.FETCH_SERVICE_KEY, stream_id=self.stream,
                        caller_identity=f"{TD}/{who}", tenant=tenant, service=service))
        return self.until(FrameType.SERVICE_KEYS, self.stream)

    def kmip(self, who: str, message: bytes) -> Any:
        self.stream += 1
        self.send(Frame(FrameType.REQUEST, stream_id=self.stream,
                        caller_identity=f"{TD}/{who}", caller_source="10.0.0.9:999",
                        message=message))
        [item] = response(self.until(FrameType.RESPONSE, self.stream).message).batch_items
        return item


def _refused(item: Any) -> bool:
    return (item.result_status is ResultStatus.OPERATION_FAILED
            and item.result_reason is ResultReason.PERMISSION_DENIED
            and item.result_message == NOT_ACCEPTED)


def _fetch_refused(frame: Frame) -> bool:
    return (frame.error == NOT_ACCEPTED and not frame.service_keys
            and frame.result_reason == int(ResultReason.PERMISSION_DENIED))


def _reload(core: CoreProcess, policy: str, count: int) -> None:
    (core.root / "policy.toml").write_text(policy)
    before = core.log.read_text().count("gateway scopes")
    core.process.send_signal(signal.SIGHUP)
    wait_until(lambda: core.log.read_text().count("gateway scopes") > before,
               "the core to reload its gateway scopes")
    assert f"{count} gateway scopes" in core.log.read_text()


def relinked(core: CoreProcess, link: RawLink) -> RawLink:
    """The next link, once the core has closed ``link`` for its scope's change."""
    with pytest.raises(ConnectionError, match="scope changed"):
        link.until(FrameType.SERVICE_KEYS)
    return RawLink(core)


def test_a_scoped_gateway_acts_only_for_its_tenants_and_sighup_narrows_a_running_core(
        tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.start()
    engine = sqlalchemy.create_engine(core.database)
    try:
        assert "no gateway is scoped" in core.log.read_text()
        link = RawLink(core)
        # Unscoped (the default): any tenant, its administrators too, as before scopes.
        other_keys = link.fetch("tenant/other/service/app", "other")
        assert other_keys.error is None and other_keys.service_keys
        other_l3 = other_keys.service_keys[0].uid
        assert link.kmip("tenant/other/admin/mallory", request(query())).result_status \
            is ResultStatus.SUCCESS

        _reload(core, '[gateways."gateway/gw1"]\ntenants = ["demo"]\nadmins = false\n', 1)
        link = relinked(core, link)
        # Its tenant: served.
        demo_keys = link.fetch("tenant/demo/service/app", "demo")
        assert demo_keys.error is None and demo_keys.service_keys
        demo_l3 = demo_keys.service_keys[0].uid
        created = link.kmip("tenant/demo/service/app", request(create_managed()))
        assert created.result_status is ResultStatus.SUCCESS
        # Another tenant's: refused as an unaccepted caller.
        assert _fetch_refused(link.fetch("tenant/other/service/app", "other"))
        assert _fetch_refused(link.fetch("tenant/demo/service/app", "other"))  # its tenant
        assert _refused(link.kmip("tenant/other/service/app", request(create_managed())))
        assert _refused(link.kmip("tenant/other/service/made-up", request(query())))
        # A tenant administrator, admins = false: refused; and never an operator.
        assert _refused(link.kmip("tenant/demo/admin/mallory", request(query())))
        assert _refused(link.kmip("operator/ops", request(query())))
        # Usage of another tenant's L3: not counted (logged); its own is.
        link.send(Frame(FrameType.USAGE_REPORT, usage=[(demo_l3, 7), (other_l3, 9)]))
        wait_until(lambda: "outside its scope" in core.log.read_text(),
                   "the core to drop the out-of-scope usage")

        def uses() -> dict[str, int]:
            with engine.connect() as c:
                return dict(c.execute(sqlalchemy.select(L3Usage.uid, L3Usage.uses)).all())

        wait_until(lambda: uses().get(demo_l3) == 7, "the in-scope usage to be counted")
        assert other_l3 not in uses()
        # The refusals are audited with the gateway named (coalesced, written soon after).

        def refusals() -> list[Any]:
            with engine.connect() as c:
                return list(c.execute(sqlalchemy.select(AuditLog).where(
                    AuditLog.gateway == GW1, AuditLog.result_reason == "PERMISSION_DENIED")))

        claimed = {f"{TD}/{who}" for who in (
            "tenant/other/service/app", "tenant/other/service/made-up",
            "tenant/demo/admin/mallory", "operator/ops")} | {
            f"{TD}/tenant/demo/service/app, for tenant other"}
        wait_until(lambda: {json.loads(row.detail)["claimed"] for row in refusals()} == claimed,
                   "the refusals' audit records")
        assert all(row.principal == "unidentified" and row.result_status == "OPERATION_FAILED"
                   for row in refusals())

        # Admins allowed again by the next reload: served on the next link.
        _reload(core, '[gateways."gateway/gw1"]\ntenants = ["demo"]\nadmins = true\n', 1)
        link = relinked(core, link)
        assert link.kmip("tenant/demo/admin/mallory", request(query())).result_status \
            is ResultStatus.SUCCESS
        assert _refused(link.kmip("tenant/other/admin/mallory", request(query())))
    finally:
        engine.dispose()
        core.stop()


def test_a_gateway_scoped_to_no_tenant_answers_readyz_503(tmp_path: Path) -> None:
    """A real kcm-gateway whose core's scope of it is of no tenant (``tenants = []``): its
    /readyz says so (503) while linked, and 200 again once a SIGHUP gives it a tenant."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.start()
    gateway = GatewayProcess(tmp_path / "gateway", core, metrics_port=free_port())
    try:
        gateway.start()
        gateway.wait_linked()
        port = gateway.metrics_port
        assert _ready(port) == (200, {"ready": True, "linked": True})
        _reload(core, '[gateways."gateway/gw1"]\ntenants = []\nadmins = true\n', 1)
        # The core ends the link on the new scope: the gateway is unlinked (503, "unreachable")
        # until it links again, then 503 for its scope.
        unscoped = (503, {"ready": False, "linked": True,
                          "reason": "the core's gateway scope lets this gateway serve "
                                    "no tenant"})
        wait_until(lambda: _ready(port) == unscoped, "the gateway to relink under no tenant",
                   timeout=30)
        _reload(core, '[gateways."gateway/gw1"]\ntenants = ["demo"]\n', 1)
        wait_until(lambda: _ready(port) == (200, {"ready": True, "linked": True}),
                   "the gateway to relink under tenant demo", timeout=30)
    finally:
        gateway.stop()
        core.stop()


def _ready(port: int) -> tuple[int, dict[str, Any]]:
    status, body = scrape(port, "/readyz")
    return status, json.loads(body)
