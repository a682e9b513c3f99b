"""Every refusal a client can provoke, at kcm-core and through kcm-gateway, read by PyKMIP's
own decoder (issue 8): each answer decodes, fails with a Result Reason of its version, and
says why in short printable ASCII that never repeats a client's input whole. Another
tenant's object, L4 token or L3 answers what an unknown one answers (Item Not Found in 1.x,
Object Not Found in 2.x), word for word, on both planes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kmip.core import utils
from kmip.core.messages import messages

from kcm.conformance.client import KmipClient, KmipClientError
from kcm.kernel.batch import CRITICAL_EXTENSION
from kcm.kernel.missing import object_not_found
from kcm.kernel.result_messages import MAX_LENGTH
from kcm.kmip.attributes import Attribute, AttributeReference, CryptographicParameters
from kcm.kmip.enums import (
    BlockCipherMode,
    CryptographicAlgorithm,
    KeyFormatType,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
)
from kcm.kmip.messages import ProtocolVersion, RequestHeader, RequestMessage, encode_request
from kcm.kmip.payloads import (
    CreateRequest,
    DecryptRequest,
    DestroyRequest,
    GetAttributesRequest,
    GetRequest,
    RevocationReason,
    RevokeRequest,
)
from kcm.kmip.tags import Tag
from kcm.kmip_protocol import IDENTITY_REFUSED
from kcm.l4 import token as l4_token
from kcm.pki import CertKeyPaths, issue_certificate, load_ca, write_certificate
from kcm.testing.processes import CoreProcess, GatewayProcess, deploy, running
from kcm.testing.requests import (
    create_l4,
    create_managed,
    encrypt,
    get,
    item,
    odd_request,
    query,
    request,
    response,
    with_critical_extension,
    with_header,
)
from kcm.ttlv import Item, ItemType, encode

VERSIONS = [(1, 0), (1, 2), (1, 4), (2, 0)]
PLANES = ["core", "gateway"]

#: A client identifier no answer may repeat whole: long, and not ASCII.
HOSTILE_ID = "l4.1." + "A" * 3000 + "\u2026\u00ff\U0001f511"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[dict[str, CoreProcess | GatewayProcess]]:
    root = tmp_path_factory.mktemp("refusals")
    core = deploy(root / "core", f"sqlite:///{root / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(root / "gateway", core)
    with running(core, gateway):
        yield {"core": core, "gateway": gateway}


@pytest.fixture(scope="module")
def keys(deployment) -> dict[str, str]:
    """The demo tenant's objects: a managed key (Pre-Active) and an L4 token, and its L3."""
    core = deployment["core"]
    with core.client("app") as client:
        managed = response(client.send(request(create_managed()))).batch_items[0]
        l4 = response(client.send(request(create_l4()))).batch_items[0]
    token = l4.response_payload.unique_identifier
    with core.client("app") as client:
        revoked = response(client.send(request(create_l4()))).batch_items[0]
        revoked_token = revoked.response_payload.unique_identifier
        answer = response(client.send(request(item(Operation.REVOKE, RevokeRequest(
            unique_identifier=revoked_token, revocation_reason=RevocationReason(
                code=RevocationReasonCode.CESSATION_OF_OPERATION))))))
        assert answer.batch_items[0].result_status == ResultStatus.SUCCESS
    return {"managed": managed.response_payload.unique_identifier, "token": token,
            "l3": l4_token.parse(token).l3_uid, "revoked token": revoked_token}


def _limited(wire_items, version: tuple[int, int], limit: int) -> bytes:
    """A request of ``wire_items`` whose header asks a Maximum Response Size of ``limit``."""
    header = RequestHeader(protocol_version=ProtocolVersion.of(version),
                           maximum_response_size=limit, batch_count=len(wire_items))
    return encode(encode_request(RequestMessage(header, list(wire_items))))


def read_with_pykmip(wire: bytes) -> list[tuple[int, int, str]]:
    """(status, reason, message) of each batch item, as PyKMIP's decoder reads them."""
    decoded = messages.ResponseMessage()
    decoded.read(utils.BytearrayStream(wire))
    return [(i.result_status.value.value,
             None if i.result_reason is None else i.result_reason.value.value,
             None if i.result_message is None else i.result_message.value)
            for i in decoded.batch_items]


def _aes_with(length: int) -> CreateRequest:
    return CreateRequest(object_type=ObjectType.SYMMETRIC_KEY, attributes=[
        Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
        Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, length)])


#: name -> (who sends it, the request at a version, given the demo tenant's keys).
Refusal = tuple[str, Callable[[tuple[int, int], dict[str, str]], bytes]]
REFUSALS: dict[str, Refusal] = {
    "unknown object": ("app", lambda v, k: request(get(str(os.urandom(8).hex())), version=v)),
    "hostile identifier": ("app", lambda v, k: request(get(HOSTILE_ID), version=v)),
    "malformed L4 token": ("app", lambda v, k: request(get("l4.1.AAAA\u2026"), version=v)),
    "another tenant's object": ("other_app", lambda v, k: request(get(k["managed"]),
                                                                  version=v)),
    "another tenant's L4 token": ("other_app", lambda v, k: request(get(k["token"]),
                                                                    version=v)),
    "another tenant's L3": ("other_app", lambda v, k: request(
        encrypt(k["l3"]) if v >= (1, 2) else create_l4(via_link=k["l3"]), version=v)),
    "attributes of a hostile identifier": ("app", lambda v, k: request(item(
        Operation.GET_ATTRIBUTES, GetAttributesRequest(
            unique_identifier="\u00e9" * 500,
            attribute_references=[AttributeReference(Tag.STATE)])), version=v)),
    "key format the key is not in": ("app", lambda v, k: request(item(
        Operation.GET, GetRequest(unique_identifier=k["managed"],
                                  key_format_type=KeyFormatType.PKCS_8)), version=v)),
    "a Pre-Active key used": ("app", lambda v, k: request(encrypt(k["managed"]), version=v)),
    "an undecryptable record": ("app", lambda v, k: request(item(
        Operation.DECRYPT, DecryptRequest(
            unique_identifier=k["token"], data=b"x" * 40, iv_counter_nonce=b"\0" * 12,
            cryptographic_parameters=CryptographicParameters(
                block_cipher_mode=BlockCipherMode.GCM))), version=v)),
    "a key length that is not AES's": ("app", lambda v, k: request(item(
        Operation.CREATE, _aes_with(100)), version=v)),
    "destroy of an unknown object": ("app", lambda v, k: request(item(
        Operation.DESTROY, DestroyRequest(unique_identifier="\u00e9" * 999)), version=v)),
    "a Batch Count that is not the batch": ("app", lambda v, k: odd_request(
        get(k["managed"]), version=v, batch_count=7)),
    "a revoked L4 token": ("app", lambda v, k: request(get(k["revoked token"]), version=v)),
    "an answer over the Maximum Response Size": ("app", lambda v, k: _limited(
        [get(k["token"])], v, 64)),
    "a Unique Identifier of the wrong type": ("app", lambda v, k: request(item(
        Operation.GET, Item(Tag.REQUEST_PAYLOAD, ItemType.STRUCTURE, [
            Item(Tag.UNIQUE_IDENTIFIER, ItemType.BYTE_STRING, b"\xff" * 300)])), version=v)),
    # Encrypt is KMIP 1.2; from 1.2 on, Re-key Key Pair, which KCM does not offer. (PyKMIP
    # reads only answers to operations it implements itself: Log, 2.1's Ping, Get Usage
    # Allocation it cannot decode.)
    # A critical Message Extension, on an L4 Get (the gateway's own) and on a Query.
    "a critical Message Extension": ("app", lambda v, k: request(
        with_critical_extension(get(k["token"])), version=v)),
    "a critical Message Extension on a Query": ("app", lambda v, k: request(
        with_critical_extension(query()), version=v)),
    "an undefined Batch Error Continuation Option": ("app", lambda v, k: with_header(
        get(k["token"]), v, batch_error_continuation_option=9)),
    # 1.x defines a Boolean, 2.x an Enumeration.
    "an Asynchronous Indicator of the wrong type": ("app", lambda v, k: with_header(
        get(k["token"]), v, asynchronous_indicator=2 if v < (2, 0) else True)),
    # Mandatory: refused in 2.x; in 1.x an Enumeration is the wrong type.
    "asynchronous processing required": ("app", lambda v, k: with_header(
        get(k["token"]), v, asynchronous_indicator=1)),
    "an operation of a later version, or not offered": ("app", lambda v, k: request(
        encrypt(k["managed"]) if v < (1, 2)
        else item(Operation.RE_KEY_KEY_PAIR, Item(Tag.REQUEST_PAYLOAD, ItemType.STRUCTURE, [])),
        version=v)),
    # The same with a payload it cannot read and a critical Message Extension: the
    # operation is judged first (it was Invalid Field: a payload the version never reads).
    "an operation of a later version, unreadable, with a critical extension": (
        "app", lambda v, k: request(with_critical_extension(item(
            Operation.ENCRYPT if v < (1, 2) else Operation.RE_KEY_KEY_PAIR,
            Item(Tag.REQUEST_PAYLOAD, ItemType.STRUCTURE, [
                Item(Tag.UNIQUE_IDENTIFIER, ItemType.INTEGER, 5)]))), version=v)),
}


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"{v[0]}.{v[1]}")
@pytest.mark.parametrize("plane", PLANES)
def test_every_refusal_reads_with_pykmip_in_short_ascii(deployment, keys, plane: str,
                                                        version: tuple[int, int]) -> None:
    process = deployment[plane]
    answers = {}
    for name, (who, build) in REFUSALS.items():
        with process.client(who) as client:
            wire = client.send(build(version, keys))
        [(status, reason, message)] = read_with_pykmip(wire)
        assert status == ResultStatus.OPERATION_FAILED, (name, response(wire))
        assert message.isascii() and message.isprintable() and len(message) <= MAX_LENGTH, \
            (name, message)
        assert "A" * 40 not in message, name  # a client's identifier is never echoed whole
        answers[name] = (reason, message)
    missing = ResultReason.OBJECT_NOT_FOUND if version >= (2, 0) else ResultReason.ITEM_NOT_FOUND
    # Another tenant's object, token or L3 is a missing one, word for word.
    assert answers["another tenant's object"] == (
        missing, object_not_found(keys["managed"]).message)
    assert answers["another tenant's L4 token"] == (missing, object_not_found(keys["l3"]).message)
    assert answers["another tenant's L3"] == (missing, object_not_found(keys["l3"]).message)
    assert answers["hostile identifier"] == (missing, object_not_found(HOSTILE_ID).message)
    assert answers["an answer over the Maximum Response Size"][0] \
        == ResultReason.RESPONSE_TOO_LARGE
    v2 = version >= (2, 0)
    for name in ("a critical Message Extension", "a critical Message Extension on a Query"):
        assert answers[name][0] == (ResultReason.UNKNOWN_MESSAGE_EXTENSION if v2
                                    else ResultReason.FEATURE_NOT_SUPPORTED), name
        assert answers[name][1] == CRITICAL_EXTENSION
    assert answers["an undefined Batch Error Continuation Option"] == (
        ResultReason.UNKNOWN_ENUMERATION if v2 else ResultReason.INVALID_FIELD,
        "Batch Error Continuation Option 0x00000009 is not defined")
    assert answers["an Asynchronous Indicator of the wrong type"] == (
        ResultReason.INVALID_FIELD,
        f"Asynchronous Indicator must be {'Enumeration' if v2 else 'Boolean'} in KMIP "
        f"{version[0]}.{version[1]}, not {'Boolean' if v2 else 'Enumeration'}")
    assert answers["asynchronous processing required"][0] == (
        ResultReason.FEATURE_NOT_SUPPORTED if v2 else ResultReason.INVALID_FIELD)
    refused = answers["an operation of a later version, or not offered"]
    assert refused[0] == ResultReason.OPERATION_NOT_SUPPORTED
    if version < (1, 2):
        assert refused[1] == "Encrypt is an operation of KMIP 1.2 and later, not of KMIP 1.0"
        assert answers["an operation of a later version, unreadable, with a critical "
                       "extension"] == refused


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"{v[0]}.{v[1]}")
def test_core_and_gateway_refuse_alike(deployment, keys, version: tuple[int, int]) -> None:
    """The same refusals, word for word, whichever plane answers (the gateway's own L4
    engine or the core behind it)."""
    seen = {}
    for plane in PLANES:
        for name, (who, build) in REFUSALS.items():
            if name in ("unknown object",):
                continue  # a fresh random identifier each time
            with deployment[plane].client(who) as client:
                seen[plane, name] = read_with_pykmip(client.send(build(version, keys)))
    for name in REFUSALS:
        if name != "unknown object":
            assert seen["core", name] == seen["gateway", name], name


@pytest.mark.parametrize("plane", PLANES)
@pytest.mark.parametrize("uris", [[], ["spiffe://elsewhere.test/tenant/demo/service/app"]],
                         ids=["no SAN, unmapped subject", "another trust domain"])
def test_a_refused_identity_is_answered_permission_denied(deployment, plane: str,
                                                          uris: list[str],
                                                          tmp_path: Path) -> None:
    """A certificate of the deployment's CA that names nobody the server serves: the first
    request is answered Permission Denied, saying why in short ASCII, then the connection
    closes (issue 13); before, the client saw only the connection close."""
    core = deployment["core"]
    now = dt.datetime.now(dt.UTC)
    issued = issue_certificate(load_ca(core.pki.ca), "nobody", now=now, uris=uris)
    stranger = CertKeyPaths(tmp_path / "nobody.pem", tmp_path / "nobody.key")
    write_certificate(stranger, issued.cert, issued.key)
    client = KmipClient("127.0.0.1", deployment[plane].port, cert=stranger.cert,
                        key=stranger.key, ca=core.pki.ca.cert)
    with client:
        answer = client.send(request(query()))
        assert read_with_pykmip(answer) == [
            (ResultStatus.OPERATION_FAILED, ResultReason.PERMISSION_DENIED, IDENTITY_REFUSED)]
        with pytest.raises(KmipClientError):
            client.send(request(query()))
    assert IDENTITY_REFUSED.isascii() and len(IDENTITY_REFUSED) <= MAX_LENGTH
    assert "refused connection from 127.0.0.1" in deployment[plane].log.read_text()


def _answered(wire: bytes) -> list[tuple]:
    """What each batch item of an answer says (its time stamp and correlation value apart)."""
    return [(i.operation, i.result_status, i.result_reason, i.result_message)
            for i in response(wire).batch_items]


def test_header_and_extension_refusals_alike_in_2_1_on_the_fast_path_s_operations(
        deployment, keys) -> None:
    """KMIP 2.1 (which PyKMIP does not read): what the gateway's fast path answers (Get,
    Encrypt, Create of an L4) with a critical Message Extension or a header it cannot honour
    is refused, by the gateway as by the core."""
    v21 = (2, 1)
    token = keys["token"]
    builds = [lambda: get(token), lambda: encrypt(token), create_l4]
    expected = [
        (lambda b: request(with_critical_extension(b()), version=v21),
         ResultReason.UNKNOWN_MESSAGE_EXTENSION),
        (lambda b: with_header(b(), v21, batch_error_continuation_option=9),
         ResultReason.UNKNOWN_ENUMERATION),
        (lambda b: with_header(b(), v21, asynchronous_indicator=True),
         ResultReason.INVALID_FIELD),
        (lambda b: with_header(b(), v21, asynchronous_indicator=1),
         ResultReason.FEATURE_NOT_SUPPORTED),
    ]
    for build in builds:
        for make, reason in expected:
            wire = make(build)
            seen = {}
            for plane in PLANES:
                with deployment[plane].client("app") as client:
                    seen[plane] = _answered(client.send(wire))
            assert seen["core"] == seen["gateway"], response(wire)
            [(_, status, answered_reason, _)] = seen["core"]
            assert (status, answered_reason) == (ResultStatus.OPERATION_FAILED, reason)
    # Optional and Prohibited are honoured: answered synchronously, as always.
    for indicator in (2, 3):
        for plane in PLANES:
            with deployment[plane].client("app") as client:
                [(_, status, _, _)] = _answered(client.send(with_header(
                    get(token), v21, asynchronous_indicator=indicator)))
            assert status == ResultStatus.SUCCESS, (plane, indicator)


def _tls(process: CoreProcess | GatewayProcess) -> ssl.SSLSocket:
    pki = process.pki
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(pki.ca.cert))
    context.load_cert_chain(certfile=str(pki.app.cert), keyfile=str(pki.app.key))
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", process.port)),
                               server_hostname="127.0.0.1")
    sock.settimeout(15)
    return sock


def _read_until_closed(sock: ssl.SSLSocket) -> tuple[list[bytes], bool]:
    """The whole messages the server sent, and whether it closed the connection."""
    received = bytearray()
    closed = False
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except (OSError, ssl.SSLError):
            closed = True
            break
        if not chunk:
            closed = True
            break
        received += chunk
    messages = []
    while len(received) >= 8:
        total = 8 + int.from_bytes(received[4:8], "big")
        if len(received) < total:
            break
        messages.append(bytes(received[:total]))
        del received[:total]
    return messages, closed


@pytest.mark.parametrize("plane", PLANES)
@pytest.mark.parametrize("bad", ["oversized", "unreadable"])
def test_requests_before_an_unusable_header_in_the_same_write_are_answered_first(
        deployment, keys, plane: str, bad: str) -> None:
    """Whole requests, then in the same write a header declaring 4 MiB (over the maximum
    message size) or 8 zero bytes: each request is answered, in order, then the refusal
    (Invalid Message, request too large) or the close. Before, the requests were dropped
    and the refusal, answered in KMIP 1.0, was the only answer the client read."""
    header = (bytes.fromhex("4200780100400000") if bad == "oversized" else bytes(8))
    first, second = request(get(keys["token"])), request(query(), version=(2, 1))
    with contextlib.closing(_tls(deployment[plane])) as sock:
        sock.sendall(first + second + header)
        messages, closed = _read_until_closed(sock)
    assert closed
    assert [len(response(m).batch_items) for m in messages[:2]] == [1, 1]
    answered_get, answered_query = (response(m).batch_items[0] for m in messages[:2])
    assert (answered_get.operation, answered_get.result_status) == (Operation.GET,
                                                                    ResultStatus.SUCCESS)
    assert (answered_query.operation, answered_query.result_status) == (Operation.QUERY,
                                                                        ResultStatus.SUCCESS)
    if bad == "oversized":
        [refusal] = messages[2:]
        [refused] = response(refusal).batch_items
        assert refused.result_reason == ResultReason.INVALID_MESSAGE
        assert refused.result_message.startswith("request too large")
    else:
        assert messages[2:] == []


def _v11_message_extension_cases() -> dict[bool, bytes]:
    """The requests of the KMIP 1.1 test cases 7.1 and 7.2 (a Create carrying an unknown
    vendor's Message Extension), by their Criticality Indicator."""
    from kcm.ttlv import decode
    from tests.vectors import iter_v11_hex_messages

    cases = {}
    for _, wire in iter_v11_hex_messages():
        if not wire.startswith(bytes.fromhex("42007801")) or b"\x42\x00\x51\x01" not in wire:
            continue
        [extension] = [child for child in decode(wire).value[1].value
                       if child.tag == Tag.MESSAGE_EXTENSION]
        [critical] = [child.value for child in extension.value
                      if child.tag == Tag.CRITICALITY_INDICATOR]
        cases[critical] = wire
    assert set(cases) == {False, True}
    return cases


@pytest.mark.parametrize("plane", PLANES)
def test_the_kmip_1_1_message_extension_test_cases(deployment, plane: str) -> None:
    """KMIP 1.1 test cases 7.1 and 7.2: an unrecognised Message Extension is ignored when it
    is not critical, and fails its Create with Feature Not Supported when it is."""
    cases = _v11_message_extension_cases()
    with deployment[plane].client("app") as client:
        [(status, reason, _)] = read_with_pykmip(client.send(cases[True]))
        assert (status, reason) == (ResultStatus.OPERATION_FAILED,
                                    ResultReason.FEATURE_NOT_SUPPORTED)
        [(status, _, _)] = read_with_pykmip(client.send(cases[False]))
        assert status == ResultStatus.SUCCESS
