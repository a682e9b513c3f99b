"""What a server may record of the requests the KMIP protocol (and the core's link) refuses
whole, what a refused certificate's log line says, what an audit record names of a refused
object, and the audit records of an access policy change: units over StringTransport, iosim
and plain values."""

from __future__ import annotations

import datetime as dt
import json

from OpenSSL import crypto
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent

from kcm.core.context import REQUESTED_LENGTH, requested_label
from kcm.core.service import (
    MAX_AUDITED_MAPPINGS,
    SET_ACCESS_POLICY_OPERATION,
    access_policy_records,
)
from kcm.identity import Principal, Role, SubjectMap
from kcm.kmip_protocol import (
    IDENTITY_REFUSED,
    RESULT_REASON_INVALID_MESSAGE,
    RESULT_REASON_PERMISSION_DENIED,
    ConnectionLimits,
    KmipServerFactory,
    Refusal,
    describe_certificate,
)
from kcm.pki import issue_certificate, new_ca
from kcm.ttlv import Item, ItemType, encode
from kcm.ttlv.types import structure
from tests.unit.test_link_session import LEGACY, FakeHandler, World, results

#: A principal of no tenant (not counted against ``max_connections_per_tenant``).
PRINCIPAL = Principal(Role.OPERATOR, "kcm.test", name="ops",
                      uri="spiffe://kcm.test/operator/ops")
NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def message(n: int) -> bytes:
    return encode(structure(0x420078, Item(0x420020, ItemType.INTEGER, n)))


class RecordingHandler:
    """A handler that records refusals (as kcm-core's audits them), answering them at once or
    when told."""

    def __init__(self, *, defer: bool = False, explode: bool = False) -> None:
        self.refusals: list[Refusal] = []
        self.deferreds: list[Deferred[bytes]] = []
        self.seen: list[bytes] = []
        self.defer = defer
        self.explode = explode

    def handle_request(self, wire: bytes, connection: object) -> bytes:
        self.seen.append(wire)
        return wire

    def failure_response(self, reason: int, message: str) -> bytes:
        return f"FAIL {reason} {message}".encode()

    def refuse(self, refusal: Refusal) -> bytes | Deferred[bytes]:
        self.refusals.append(refusal)
        if self.explode:
            raise RuntimeError("the audit log is gone")
        if self.defer:
            d: Deferred[bytes] = Deferred()
            self.deferreds.append(d)
            return d
        return f"RECORDED {refusal.reason}".encode()


class CertifiedTransport(StringTransport):
    """A StringTransport whose peer presented ``cert`` (as a TLS transport says)."""

    def __init__(self, cert: object | None) -> None:
        super().__init__()
        self._cert = cert

    def getPeerCertificate(self) -> object | None:
        return None if self._cert is None else crypto.X509.from_cryptography(self._cert)


def connect(handler, *, principal=PRINCIPAL, limits=None, transport=None):
    factory = KmipServerFactory(handler, limits or ConnectionLimits(), lambda t: principal,
                                Clock())
    protocol = factory.buildProtocol(None)
    transport = transport or StringTransport()
    protocol.makeConnection(transport)
    protocol.handshakeCompleted()
    return protocol, transport


def oversized() -> bytes:
    return encode(structure(0x420078, Item(0x420020, ItemType.BYTE_STRING, bytes(100))))


def intruder_certificate(*uris: str):
    ca = new_ca(now=NOW)
    return issue_certificate(ca, "intruder", now=NOW, uris=uris or (
        "spiffe://elsewhere.test/tenant/demo/service/app",)).cert


# The KMIP protocol hands its refusals to the handler ---------------------------------------

def test_an_oversized_request_is_refused_by_the_handler_that_records_it() -> None:
    handler = RecordingHandler()
    protocol, transport = connect(handler, limits=ConnectionLimits(max_message_size=64))
    protocol.dataReceived(oversized()[:8])
    assert transport.value() == f"RECORDED {RESULT_REASON_INVALID_MESSAGE}".encode()
    assert transport.disconnecting and handler.seen == []
    [refusal] = handler.refusals
    assert refusal.principal is PRINCIPAL and refusal.claimed is None
    assert refusal.peer.startswith("192.168.1.1:")
    assert refusal.message.startswith("request too large: declared message size")


def test_a_refusal_recorded_later_is_answered_then_and_nothing_is_read_meanwhile() -> None:
    handler = RecordingHandler(defer=True)
    protocol, transport = connect(handler, limits=ConnectionLimits(max_message_size=64))
    protocol.dataReceived(oversized()[:8])
    protocol.dataReceived(message(1))
    assert transport.value() == b"" and not transport.disconnecting
    assert len(handler.refusals) == 1 and handler.seen == []
    handler.deferreds[0].callback(b"LATER")
    assert transport.value() == b"LATER" and transport.disconnecting


def test_a_refused_certificate_is_recorded_and_logged_with_its_names() -> None:
    handler = RecordingHandler()
    cert = intruder_certificate()
    with capturedLogs() as events:
        protocol, transport = connect(handler, principal=None,
                                      transport=CertifiedTransport(cert))
    [warning] = [e for e in events if e["log_level"] == LogLevel.warn]
    text = formatEvent(warning)
    assert "CN=intruder" in text
    assert "spiffe://elsewhere.test/tenant/demo/service/app" in text
    assert f"serial {cert.serial_number:x}" in text
    protocol.dataReceived(message(1) + message(2))
    assert transport.value() == f"RECORDED {RESULT_REASON_PERMISSION_DENIED}".encode()
    [refusal] = handler.refusals
    assert refusal.principal is None and refusal.message == IDENTITY_REFUSED
    assert refusal.claimed == describe_certificate(cert)
    assert handler.seen == [] and transport.disconnecting


def test_a_handler_that_fails_to_record_still_answers_the_refusal() -> None:
    handler = RecordingHandler(explode=True)
    protocol, transport = connect(handler, limits=ConnectionLimits(max_message_size=64))
    with capturedLogs() as events:
        protocol.dataReceived(oversized()[:8])
    assert transport.value().startswith(f"FAIL {RESULT_REASON_INVALID_MESSAGE} ".encode())
    assert any(e.get("log_failure") is not None for e in events)


def test_a_certificates_description_is_short_ascii_whatever_it_holds() -> None:
    cert = intruder_certificate(*(f"spiffe://x.test/tenant/t{i}/service/\x07{'s' * 300}"
                                  for i in range(9)))
    text = describe_certificate(cert)
    assert text.isascii() and text.isprintable() and len(text) < 700
    assert "5 more" in text and "\x07" not in text
    assert describe_certificate(None) == "no certificate"


# The core's link hands a refused asserted caller to the handler ---------------------------

class RefusingLinkHandler(FakeHandler):
    def __init__(self) -> None:
        super().__init__()
        self.refusals: list[Refusal] = []

    def refuse(self, refusal: Refusal) -> bytes:
        self.refusals.append(refusal)
        return b"RECORDED"


def test_a_caller_the_core_does_not_accept_is_refused_by_the_handler_that_records_it(
        ) -> None:
    world = World(handler=RefusingLinkHandler())
    world.connect()
    world.factory.set_subject_map(SubjectMap.from_mapping({}))
    refused = results([world.client.forward(b"one", LEGACY, "h:1\n")])
    world.flush()
    assert refused == [b"RECORDED"] and world.handler.calls == []
    [refusal] = world.handler.refusals
    assert refusal.principal is None and refusal.reason == RESULT_REASON_PERMISSION_DENIED
    assert refusal.gateway is not None and refusal.gateway.name == "gw1"
    assert refusal.peer == "h:1?" and "CN=legacy-client" in (refusal.claimed or "")


# What an audit record names of a refused object -------------------------------------------

def test_the_identifier_a_refused_item_asked_for_is_bounded_ascii() -> None:
    uid = "0b9c6a5e-6f4c-4bd5-9d0c-9d9d5c1c2a77"
    assert requested_label(uid) == uid
    assert requested_label("l3-" + uid) == "l3-" + uid
    long = "x\n" * 100
    assert requested_label(long) == "x?" * (REQUESTED_LENGTH // 2) + "..."
    token = "l4.AAAA" + "B" * 200  # a token carries its sealed key: its short label only
    assert requested_label(token) == token[:16] + "..."


# The audit records of an access policy change ---------------------------------------------

def document(mapping: dict[str, str]) -> str:
    return SubjectMap.from_mapping(mapping).document()


def test_an_access_policy_change_is_audited_per_tenant_it_touches() -> None:
    before = document({"CN=a,O=X": "tenant/demo/service/app",
                       "CN=b,O=X": "tenant/other/admin/b",
                       "CN=ops,O=X": "operator/ops"})
    after = document({"CN=a,O=X": "tenant/demo/admin/a",
                      "CN=b,O=X": "tenant/other/admin/b",
                      "CN=c,O=X": "tenant/other/service/app"})
    records = access_policy_records(before, after, correlation_id="c1")
    assert [(r.tenant, r.operation, r.principal, r.source) for r in records] == [
        (None, SET_ACCESS_POLICY_OPERATION, "kcm-core", "sighup"),
        ("demo", SET_ACCESS_POLICY_OPERATION, "kcm-core", "sighup"),
        ("other", SET_ACCESS_POLICY_OPERATION, "kcm-core", "sighup")]
    operators, demo, other = (r.detail for r in records)
    assert operators == {"added": [], "removed": ["CN=ops,O=X -> operator/ops"], "mappings": 3}
    assert demo == {"added": ["CN=a,O=X -> tenant/demo/admin/a"],
                    "removed": ["CN=a,O=X -> tenant/demo/service/app"], "mappings": 3}
    assert other == {"added": ["CN=c,O=X -> tenant/other/service/app"], "removed": [],
                     "mappings": 3}
    assert access_policy_records(after, after, correlation_id="c2") == []


def test_an_access_policy_record_names_a_bounded_number_of_mappings() -> None:
    many = {f"CN=n{i},O={'X' * 400}": "tenant/demo/service/app" for i in range(120)}
    [record] = access_policy_records(document({}), document(many), correlation_id="c")
    detail = dict(record.detail or {})
    assert len(detail["added"]) == MAX_AUDITED_MAPPINGS and detail["added_count"] == 120
    assert all(len(m) <= 303 for m in detail["added"])
    assert len(json.dumps(detail)) < 20_000
