"""Client certificates OpenSSL verifies and ``cryptography`` will not read (a DER-invalid
explicit default: BasicConstraints cA=FALSE written out, an extension's critical=FALSE
written out; a URI SAN that is not UTF-8; real CAs have issued such encodings; a subject
whose TeletexString it does not decode, with no SPIFFE ID) get the
documented refusal at kcm-core's KMIP and link listeners and at kcm-gateway's KMIP
listener: Permission Denied on the first request (the link: closed), a warning naming the
certificate, and no "Unhandled Error". Before, the identity step raised: the connection was
dropped with no answer and every attempt logged a traceback."""

from __future__ import annotations

import base64
import datetime as dt
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from kcm.kmip.enums import Operation, ResultReason, ResultStatus
from kcm.kmip.payloads import RngRetrieveRequest
from kcm.pki import load_ca
from kcm.testing.processes import CoreProcess, GatewayProcess, deploy, running
from kcm.testing.requests import item, request, response

APP = "spiffe://kcm.test/tenant/demo/service/app"


def _tlv(tag: int, body: bytes) -> bytes:
    size = len(body)
    head = bytes([size]) if size < 0x80 else (
        bytes([0x80 | ((size.bit_length() + 7) // 8)]) + size.to_bytes((size.bit_length() + 7) // 8,
                                                                        "big"))
    return bytes([tag]) + head + body


def _parts(body: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i < len(body):
        tag, size, j = body[i], body[i + 1], i + 2
        if size & 0x80:
            count = size & 0x7F
            size, j = int.from_bytes(body[j:j + count], "big"), j + count
        out.append((tag, body[j:j + size]))
        i = j + size
    return out


def _certificate(ca, label: str, *, uris: tuple[str, ...] = (APP,),
                 extra: tuple[x509.ExtensionType, ...] = (),
                 basic_constraints: bool = True
                 ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, label)]))
               .issuer_name(ca.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False))
    if basic_constraints:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
    if uris:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(u) for u in uris]), False)
    for extension in extra:
        builder = builder.add_extension(extension, False)
    return builder.sign(ca.key, hashes.SHA256()), key


def _explicit_critical_false(certificate: x509.Certificate, ca) -> bytes:
    """``certificate`` with its Subject Key Identifier's critical=FALSE written out, signed
    again by ``ca``: DER as OpenSSL reads it, which cryptography refuses to load."""
    (tbs, signature_algorithm, _) = _parts(_parts(certificate.public_bytes(
        serialization.Encoding.DER))[0][1])
    fields = []
    for tag, body in _parts(tbs[1]):
        if tag == 0xA3:
            extensions = []
            for _, extension in _parts(_parts(body)[0][1]):
                parts = _parts(extension)
                if parts[0][1] == bytes.fromhex("551d0e"):
                    extension = (_tlv(0x06, parts[0][1]) + _tlv(0x01, b"\x00")
                                 + _tlv(parts[1][0], parts[1][1]))
                extensions.append(_tlv(0x30, extension))
            body = _tlv(0x30, b"".join(extensions))
        fields.append(_tlv(tag, body))
    new_tbs = _tlv(0x30, b"".join(fields))
    signature = ca.key.sign(new_tbs, ec.ECDSA(hashes.SHA256()))
    der = _tlv(0x30, new_tbs + _tlv(signature_algorithm[0], signature_algorithm[1])
               + _tlv(0x03, b"\x00" + signature))
    return (b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der)
            + b"-----END CERTIFICATE-----\n")


def _subject_replaced(certificate: x509.Certificate, ca, old: bytes, new: bytes) -> bytes:
    """``certificate`` with ``old`` bytes of its TBS (as many as ``new``) replaced by
    ``new``, signed again by ``ca``: here a subject OpenSSL reads and cryptography will
    not (a TeletexString of bytes it does not decode, as Latin-1 appliances write)."""
    (tbs, signature_algorithm, _) = _parts(_parts(certificate.public_bytes(
        serialization.Encoding.DER))[0][1])
    body = tbs[1]
    assert body.count(old) == 1 and len(old) == len(new)
    new_tbs = _tlv(0x30, body.replace(old, new))
    signature = ca.key.sign(new_tbs, ec.ECDSA(hashes.SHA256()))
    der = _tlv(0x30, new_tbs + _tlv(signature_algorithm[0], signature_algorithm[1])
               + _tlv(0x03, b"\x00" + signature))
    return (b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der)
            + b"-----END CERTIFICATE-----\n")


@pytest.fixture(scope="module")
def planes(tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[CoreProcess, GatewayProcess, dict[str, tuple[Path, Path]]]]:
    root = tmp_path_factory.mktemp("unreadable")
    core = deploy(root / "core", f"sqlite:///{root / 'core' / 'kcm.db'}")
    ca = load_ca(core.pki.ca)
    not_utf8 = APP.encode() + b"\xff"
    general_name = b"\x86" + bytes([len(not_utf8)]) + not_utf8
    made = {
        "basic-constraints-false-written-out": _certificate(
            ca, "bc-false", basic_constraints=False, extra=(x509.UnrecognizedExtension(
                ExtensionOID.BASIC_CONSTRAINTS, bytes.fromhex("3003010100")),)),
        "uri-san-not-utf8": _certificate(ca, "bad-san", uris=(), extra=(
            x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
                                       b"\x30" + bytes([len(general_name)]) + general_name),)),
        "critical-false-written-out": _certificate(ca, "crit-false"),
        "subject-teletex-undecodable": _certificate(ca, "QQQQ", uris=()),
    }
    files = {}
    for label, (certificate, key) in made.items():
        pem = (_explicit_critical_false(certificate, ca) if label.startswith("critical")
               else _subject_replaced(certificate, ca, b"\x0c\x04QQQQ",
                                      b"\x14\x04\xff\xfe\xff\xfe")
               if label.startswith("subject")
               else certificate.public_bytes(serialization.Encoding.PEM))
        (root / f"{label}.pem").write_bytes(pem)
        (root / f"{label}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        files[label] = (root / f"{label}.pem", root / f"{label}.key")
    with running(core, GatewayProcess(root / "gateway", core)) as (core, gateway):
        yield core, gateway, files


def _ask(port: int, ca: Path, cert: Path, key: Path) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(ca))
    context.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        answer = b""
        try:  # (the link closes the connection at once: the send may meet its end too)
            tls.sendall(request(item(Operation.RNG_RETRIEVE, RngRetrieveRequest(data_length=8))))
            while len(answer) < 8 or len(answer) < 8 + int.from_bytes(answer[4:8], "big"):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                answer += chunk
        except (ssl.SSLError, OSError):
            pass
    if not answer:
        return "closed"
    [batch_item] = response(answer).batch_items
    assert batch_item.result_status == ResultStatus.OPERATION_FAILED
    return ResultReason(batch_item.result_reason).name


@pytest.mark.parametrize("case", ["basic-constraints-false-written-out", "uri-san-not-utf8",
                                  "critical-false-written-out", "subject-teletex-undecodable"])
@pytest.mark.parametrize("plane", ["core", "gateway", "core-link"])
def test_a_certificate_openssl_verifies_and_cryptography_will_not_read_is_refused(
        planes: tuple, case: str, plane: str) -> None:
    core, gateway, files = planes
    cert, key = files[case]
    assert subprocess.run(["openssl", "verify", "-purpose", "sslclient", "-CAfile",
                           str(core.pki.ca.cert), str(cert)],
                          capture_output=True).returncode == 0  # a certificate of the CA
    log = gateway.log if plane == "gateway" else core.log
    before = log.read_text()
    port = {"core": core.port, "gateway": gateway.port, "core-link": core.link_port}[plane]
    outcome = _ask(port, core.pki.ca.cert, cert, key)
    logged = log.read_text()[len(before):]
    assert "Unhandled Error" not in logged and "Traceback" not in logged, logged[-2000:]
    if plane == "core-link":
        assert outcome == "closed"  # (no gateway identity: the link takes nothing from it)
    else:
        assert outcome == "PERMISSION_DENIED", outcome
        # Refused as naming nobody (the line is written at most once every 10 s: this
        # refusal's, or an earlier case's in the same process, its count to follow).
        assert "no acceptable identity" in log.read_text(), logged[-2000:]
