"""The TLS policy settings reach a real `twistd kcm-core`: an appliance that offers only a
KMIP profile's CBC suite is refused by the default configuration and served, KMIP and all,
once ``[core.tls] profile = "kmip-compat"`` is set."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from kcm.kmip.enums import Operation, ResultStatus
from kcm.kmip.messages import (
    ProtocolVersion,
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    decode_response,
    encode_request,
)
from kcm.kmip.payloads import RngRetrieveRequest
from kcm.ttlv import decode, encode
from tests.e2e_support import CoreProcess, deploy

#: TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256: a suite of the KMIP profiles that KCM's default
#: leaves out (the development PKI's certificates are ECDSA).
OLD_APPLIANCE_SUITE = "ECDHE-ECDSA-AES128-SHA256"


def _appliance(core: CoreProcess) -> tuple[str, bytes]:
    """Connect offering only the old suite over TLS 1.2, ask for 8 random bytes over KMIP
    1.2; (the cipher negotiated, the answer's bytes)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(core.pki.ca.cert)
    context.load_cert_chain(core.pki.app.cert, core.pki.app.key)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(OLD_APPLIANCE_SUITE)
    header = RequestHeader(protocol_version=ProtocolVersion.of((1, 2)), batch_count=1)
    request = encode(encode_request(RequestMessage(header, [RequestBatchItem(
        operation=Operation.RNG_RETRIEVE, request_payload=RngRetrieveRequest(data_length=8))])))
    with (socket.create_connection(("127.0.0.1", core.port), timeout=10) as raw,
          context.wrap_socket(raw, server_hostname="localhost") as tls):
        tls.sendall(request)
        answer = b""
        while len(answer) < 8 or len(answer) < 8 + int.from_bytes(answer[4:8], "big"):
            chunk = tls.recv(65536)
            if not chunk:
                break
            answer += chunk
        return tls.cipher()[0], answer


def _with_tls_settings(core: CoreProcess, settings: str) -> None:
    text = core.config.read_text()
    core.config.write_text(text.replace("[core.tls]\n", f"[core.tls]\n{settings}\n", 1))


def test_an_old_appliance_needs_kmip_compat(tmp_path: Path) -> None:
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.start()
    try:
        with pytest.raises(ssl.SSLError):
            _appliance(core)
    finally:
        core.stop()
    _with_tls_settings(core, 'profile = "kmip-compat"')
    core.start()
    try:
        cipher, answer = _appliance(core)
        assert cipher == OLD_APPLIANCE_SUITE
        [item] = decode_response(decode(answer)).batch_items
        assert item.result_status == ResultStatus.SUCCESS
        assert len(item.response_payload.data) == 8
    finally:
        core.stop()
