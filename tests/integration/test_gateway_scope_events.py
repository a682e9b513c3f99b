"""What a scoped gateway is sent (link version 6), end to end: a real `twistd kcm-core` whose
policy scopes gateway gw1 to tenant demo and gw2 to tenant other, a real `twistd
kcm-gateway` for each (gw2 with a certificate of its own), and a raw link with gw1's
credential, as a thief of it would read the stream:

* other's rotation, its L4 tombstone and a policy reload reach gateway B (gw2) as always;
* gw1's stream carries every sequence number, other's events redacted (their number alone),
  and a policy document of demo's applications: no frame names tenant other, its service
  keys, its tokens or its clients' subjects, and neither does gateway A's log;
* gateway A's L4 operations go on across the redacted events and across a relink (a reload
  that changes gw1's scope closes its link; gateway A links again and drops its keys, VIEW).
"""

from __future__ import annotations

import datetime as dt
import signal
import socket
import ssl
import struct
import threading
from pathlib import Path

import sqlalchemy

from kcm.core.store.schema import LEVEL_SERVICE_KEY, ManagedObject, OutboxEvent
from kcm.kernel.missing import identifier_label
from kcm.kmip.enums import Operation, ResultReason
from kcm.kmip.payloads.lifecycle import DestroyRequest
from kcm.l4 import token as l4_token
from kcm.link.frames import Frame, FrameType, decode_frame, encode_frame
from kcm.pki import CertKeyPaths, issue_certificate, load_ca, write_certificate
from kcm.testing.processes import start_together
from tests.e2e_support import (
    CoreProcess,
    GatewayProcess,
    decrypt_sealed,
    deploy,
    succeeded_v21,
    wait_until,
)
from tests.gateway_support import create_l4, encrypt, item

TD = "spiffe://kcm.test"
SUBJECTS = (
    '[subjects]\n'
    '"CN=legacy-client,O=KCM Dev" = "tenant/demo/service/legacy"\n'
    '"CN=other-client,O=KCM Dev" = "tenant/other/service/app"\n'
    '"CN=other-admin,O=KCM Dev" = "tenant/other/admin/olga"\n'
    '"CN=ops-person,O=KCM Dev" = "operator/ops"\n')


def scopes(gw1_admins: bool = False) -> str:
    return (f'[gateways."gateway/gw1"]\ntenants = ["demo"]\nadmins = '
            f'{"true" if gw1_admins else "false"}\n'
            '[gateways."gateway/gw2"]\ntenants = ["other"]\n')


class LinkTap(threading.Thread):
    """A gateway's end of the link, read on a thread of its own (PINGs answered): every byte
    and every frame the core sends, until it closes the link or sends GOAWAY."""

    def __init__(self, core: CoreProcess) -> None:
        super().__init__(daemon=True)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.load_verify_locations(core.pki.ca.cert)
        context.load_cert_chain(core.pki.gateway.cert, core.pki.gateway.key)  # gw1's
        raw = socket.create_connection(("127.0.0.1", core.link_port), timeout=10)
        self.tls = context.wrap_socket(raw)
        self.wire = b""
        self.frames: list[Frame] = []
        self.tls.sendall(encode_frame(Frame(FrameType.HELLO, link_version=1,
                                            peer_name="tap", sequence=-1)))

    def run(self) -> None:
        buffer = b""
        try:
            while True:
                chunk = self.tls.recv(65536)
                if not chunk:
                    return
                self.wire += chunk
                buffer += chunk
                while len(buffer) >= 8:
                    (length,) = struct.unpack(">I", buffer[4:8])
                    if len(buffer) < 8 + length:
                        break
                    frame = decode_frame(buffer[:8 + length], max_size=1 << 22)
                    buffer = buffer[8 + length:]
                    self.frames.append(frame)
                    if frame.type is FrameType.GOAWAY:
                        return  # as a gateway does: it links again
                    if frame.type is FrameType.PING:
                        self.tls.sendall(encode_frame(Frame(FrameType.PONG,
                                                            stream_id=frame.stream_id)))
        except OSError:
            return

    def events(self) -> dict[int, Frame]:
        return {f.sequence: f for f in list(self.frames) if f.type is FrameType.EVENT}


def second_gateway(core: CoreProcess, root: Path) -> GatewayProcess:
    """A gateway with a certificate of its own, gw2 (the PKI's is gw1's), prewarmed for
    other/app."""
    now = dt.datetime.now(dt.UTC)
    issued = issue_certificate(load_ca(core.pki.ca), "kcm-gateway gw2", now=now,
                               uris=[f"{TD}/gateway/gw2"], dns_names=["localhost"],
                               ip_addresses=["127.0.0.1"], server=True, client=True)
    root.mkdir(parents=True)
    pair = CertKeyPaths(root / "gw2.pem", root / "gw2.key")
    write_certificate(pair, issued.cert, issued.key)
    gateway = GatewayProcess(root, core, prewarm=("other/app",))
    gateway.write_config()
    config = gateway.config.read_text()
    config = config.replace(f'cert = "{core.pki.gateway.cert}"', f'cert = "{pair.cert}"')
    config = config.replace(f'key = "{core.pki.gateway.key}"', f'key = "{pair.key}"')
    gateway.config.write_text(config)
    return gateway


def reload(core: CoreProcess, policy: str, wait_for: str) -> None:
    (core.root / "policy.toml").write_text(policy)
    before = core.log.read_text().count(wait_for)
    core.process.send_signal(signal.SIGHUP)
    wait_until(lambda: core.log.read_text().count(wait_for) > before, "the policy reload")


def test_a_scoped_gateway_never_hears_of_another_tenant_and_keeps_serving_its_own(
        tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    (core.root / "policy.toml").write_text(SUBJECTS + scopes())
    core.start()
    engine = sqlalchemy.create_engine(core.database)
    a = GatewayProcess(tmp_path / "gateway-a", core)
    b = second_gateway(core, tmp_path / "gateway-b")
    tap: LinkTap | None = None
    try:
        start_together([a, b])
        a.wait_linked()
        b.wait_linked()
        tap = LinkTap(core)
        tap.start()
        with a.client("app") as client:  # demo's application, through gateway A
            [created] = succeeded_v21(client, create_l4())
            token = created.unique_identifier
            [sealed] = succeeded_v21(client, encrypt(token, b"demo record"))

        # Tenant other: a rotation, an L4 destroyed (its tombstone), a policy reload.
        core.kcm("core", "service", "rotate", "other", "app")
        with engine.connect() as c:
            other_l3s = set(c.execute(sqlalchemy.select(ManagedObject.uid).where(
                ManagedObject.tenant == "other",
                ManagedObject.level == LEVEL_SERVICE_KEY)).scalars())
            newest = c.execute(sqlalchemy.select(ManagedObject.uid).where(
                ManagedObject.tenant == "other", ManagedObject.level == LEVEL_SERVICE_KEY
            ).order_by(ManagedObject.key_version.desc())).scalars().first()
        assert len(other_l3s) == 2
        # Gateway B has the new version in its cache: its next L4 is sealed under it.
        wait_until(lambda: "l3.rotated for tenant other" in b.log.read_text(),
                   "gateway B to apply other's rotation")
        with b.client("other_app") as client:

            def sealed_under_newest() -> bool:
                [made] = succeeded_v21(client, create_l4())
                return l4_token.parse(made.unique_identifier).l3_uid == newest

            wait_until(sealed_under_newest, "gateway B to seal under other's new version")
            [doomed] = succeeded_v21(client, create_l4())
            other_token = doomed.unique_identifier
            succeeded_v21(client, item(Operation.DESTROY,
                                       DestroyRequest(unique_identifier=other_token)))
        wait_until(lambda: "l4.tombstone for tenant other" in b.log.read_text(),
                   "gateway B to apply other's tombstone")
        reload(core, SUBJECTS.replace("olga", "oscar") + scopes(), "policy event")
        with engine.connect() as c:
            head = c.execute(sqlalchemy.select(sqlalchemy.func.max(OutboxEvent.seq))).scalar()
        wait_until(lambda: head in tap.events(), "the tap to read every event")
        wait_until(lambda: f"applied event {head}: policy" in a.log.read_text(),
                   "gateway A to apply the policy event")

        # gw1's stream: gapless, other's events redacted, demo's policy only.
        events = tap.events()
        assert sorted(events) == list(range(min(events), head + 1))
        kinds = {seq: (e.kind, e.tenant) for seq, e in events.items()}
        assert ("redacted", None) in kinds.values()
        assert not {tenant for _, tenant in kinds.values()} - {"demo", None}
        welcome = next(f for f in tap.frames if f.type is FrameType.WELCOME)
        policies = [welcome.policy] + [e.payload["policy"] for e in events.values()
                                       if e.kind == "policy"]
        assert len(policies) == 2
        assert all(p == '{"CN=legacy-client,O=KCM Dev":"tenant/demo/service/legacy"}'
                   for p in policies)
        secrets = [b"other", b"olga", b"oscar", b"ops", other_token.encode(),
                   *(uid.encode() for uid in other_l3s)]
        assert [s for s in secrets if s in tap.wire] == []
        # Gateway A applied demo's events and skipped the rest without a word.
        log_a = a.log.read_text()
        for said in ("tenant other", "redacted", "olga", "oscar", other_token, *other_l3s):
            assert said not in log_a, said

        # Gateway A serves demo's L4 operations across the redacted events...
        with a.client("app") as client:
            [opened] = succeeded_v21(client, decrypt_sealed(token, sealed))
            assert opened.data == b"demo record"
            succeeded_v21(client, create_l4())
        # ... and across a relink: a reload that changes gw1's scope closes its links.
        links = a.links()
        reload(core, SUBJECTS.replace("olga", "oscar") + scopes(gw1_admins=True),
               "gateway scopes")
        tap.join(timeout=30)
        assert not tap.is_alive(), core.log.read_text()[-3000:]
        assert any(f.type is FrameType.GOAWAY and "scope changed" in (f.error or "")
                   for f in tap.frames)
        a.wait_linked(more_than=links)
        wait_until(lambda: "under another scope" in a.log.read_text(),
                   "gateway A to drop the keys held under its old scope")
        with a.client("app") as client:
            [opened] = succeeded_v21(client, decrypt_sealed(token, sealed))
            assert opened.data == b"demo record"
            succeeded_v21(client, create_l4())
        assert "tenant other" not in a.log.read_text()
    finally:
        if tap is not None:
            tap.tls.close()
        engine.dispose()
        for process in (a, b, core):
            process.stop()


def test_a_scoped_gateway_fetching_another_tenants_key_by_id_learns_nothing_of_it(
        tmp_path: Path) -> None:
    """gw1 (scoped to demo) asserts demo's application and fetches other's L3 by its
    identifier (which any of other's L4 tokens carries in the clear): refused as a missing
    identifier is, the refusal naming neither other nor its service (no existence oracle)."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    (core.root / "policy.toml").write_text(SUBJECTS + scopes())
    core.start()
    engine = sqlalchemy.create_engine(core.database)
    tap: LinkTap | None = None
    try:
        with engine.connect() as c:
            other_l3 = c.execute(sqlalchemy.select(ManagedObject.uid).where(
                ManagedObject.tenant == "other",
                ManagedObject.level == LEVEL_SERVICE_KEY)).scalars().first()
        missing_l3 = "l3-00000000-0000-4000-8000-000000000000"
        tap = LinkTap(core)
        tap.start()
        wait_until(lambda: any(f.type is FrameType.WELCOME for f in tap.frames), "WELCOME")
        for stream, uid in ((1, other_l3), (3, missing_l3)):
            tap.tls.sendall(encode_frame(Frame(
                FrameType.FETCH_SERVICE_KEY, stream_id=stream,
                caller_identity=f"{TD}/tenant/demo/service/app",
                tenant="", service="", unique_identifier=uid)))

        def answers() -> dict[int, Frame]:
            return {f.stream_id: f for f in list(tap.frames)
                    if f.type is FrameType.SERVICE_KEYS}

        wait_until(lambda: len(answers()) == 2, "both fetches to be answered")
        other, missing = answers()[1], answers()[3]
        said = [(f.result_reason, f.tenant, f.service, f.service_keys) for f in (other, missing)]
        assert said[0] == said[1] == (int(ResultReason.OBJECT_NOT_FOUND), None, None, [])
        assert other.error == f"no object {identifier_label(other_l3)}"
        assert missing.error == f"no object {identifier_label(missing_l3)}"
        assert b"other" not in tap.wire
    finally:
        if tap is not None:
            tap.tls.close()
        engine.dispose()
        core.stop()
