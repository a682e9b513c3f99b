"""cyphera-kmip 0.0.1a1, a second KMIP client nobody here wrote, against real processes:
every operation its ``KmipClient`` offers, against kcm-core directly and through a
kcm-gateway in front of it (docs/conformance.md, "A second client: cyphera-kmip").

The client speaks KMIP 1.4 over mutual TLS (its ``set_credentials`` stores a username and
password it never sends). What KMIP says an operation does is asserted where the client sends
a well-formed request; where it does not, the test asserts the refusal KCM answers (Result
Reason and Result Message, read from the bytes, since the client cannot read them: defect 1
below), that the same connection then still serves, and names the client's defect:

1. its tag table has Result Reason 0x420080 and Result Message 0x420081 (Revocation Message
   and Revocation Reason): every failure reaches the caller as reason 0, "KMIP operation
   failed (status=1)";
2. Data is 0x420033 (Destroy Date), IV/Counter/Nonce 0x420047, Signature Data 0x42004F,
   MAC Data 0x420051 (KMIP: 0x4200C2, 0x42003D, 0x4200C3, 0x4200C6): no Encrypt, Decrypt,
   Sign, Signature Verify or MAC it sends is well-formed;
3. Revocation Reason is 0x420082, its code 0x420083 (KMIP: 0x420081, 0x420082);
4. Delete Attribute sends an Attribute structure (KMIP 1.4: Attribute Name, Attribute Index);
5. Create Key Pair sends a Template-Attribute (KMIP 1.4: Common, Private Key and Public Key
   Template-Attribute);
6. Derive Key puts Derivation Method inside Derivation Parameters and sends no Object Type;
7. Query sends no Query Function (required, KMIP 1.4 §4.25);
8. Register without a name sends no Template-Attribute (required in 1.4);
9. ``get_attributes`` reads the answer as a Get's and returns no attribute.

Obtain Lease, Archive, Recover and Poll are operations KCM does not offer: Operation Not
Supported. Through the gateway, an L4 (made with the client's own encoder: its ``create``
takes no attributes beyond algorithm, length and name) is created and read at the gateway;
everything else is forwarded to the core, as the gateway's request counter shows.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from cyphera_kmip import (
    Algorithm,
    KmipClient,
    KmipError,
    ObjectType,
    Tag,
    encode_enum,
    encode_integer,
    encode_structure,
    encode_text_string,
)
from cyphera_kmip import Operation as CypheraOperation
from cyphera_kmip.operations import parse_create_payload, parse_response
from prometheus_client.parser import text_string_to_metric_families

from kcm.kmip.attributes import VENDOR_TAG
from kcm.kmip.enums import ResultReason, ResultStatus, State
from kcm.kmip.messages import ResponseBatchItem
from kcm.kmip.tags import Tag as KcmTag
from kcm.testing.processes import CoreProcess, GatewayProcess, deploy, free_port, running, scrape
from kcm.testing.requests import response

PLANES = ["core", "gateway"]
#: What the client makes of every failure (defect 1: it reads Result Reason and Result Message
#: under the wrong tags).
MISREAD = "KMIP operation failed (status=1)"


# Deployment and client -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[dict[str, CoreProcess | GatewayProcess]]:
    root = tmp_path_factory.mktemp("cyphera")
    core = deploy(root / "core", f"sqlite:///{root / 'core' / 'kcm.db'}")
    gateway = GatewayProcess(root / "gateway", core, metrics_port=free_port())
    with running(core, gateway):
        yield {"core": core, "gateway": gateway}


class RecordingClient(KmipClient):
    """cyphera-kmip's client, keeping the last request and answer it exchanged."""

    sent: bytes = b""
    received: bytes = b""

    def _send(self, request: bytes) -> bytes:
        self.sent = request
        self.received = super()._send(request)
        return self.received

    def answer(self) -> ResponseBatchItem:
        """The last answer's one batch item, as KCM's decoder reads it."""
        [item] = response(self.received).batch_items
        return item


@pytest.fixture(params=PLANES)
def plane(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def client(plane: str, deployment) -> Iterator[RecordingClient]:
    process = deployment[plane]
    pki = process.pki
    opened = RecordingClient("127.0.0.1", str(pki.app.cert), str(pki.app.key),
                             port=process.port, ca_cert=str(pki.ca.cert))
    try:
        yield opened
    finally:
        opened.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{os.urandom(4).hex()}"


def refused(client: RecordingClient, call: Callable[[], Any], reason: ResultReason,
            message: str) -> None:
    """``call`` fails; KCM answered ``reason`` and ``message`` (short ASCII), the client read
    neither (defect 1), and the same connection still serves."""
    with pytest.raises(KmipError) as failure:
        call()
    assert (failure.value.result_reason, str(failure.value)) == (0, MISREAD)
    item = client.answer()
    assert item.result_status == ResultStatus.OPERATION_FAILED
    assert (item.result_reason, item.result_message) == (reason, message)
    assert message.isascii() and len(message) <= 240
    assert client.discover_versions()["versions"][0] == {"major": 2, "minor": 1}


def attributes(client: RecordingClient, uid: str) -> dict[str, list[Any]]:
    """The object's attributes, by name, from the bytes of a Get Attributes the client sent
    (its own reading of the answer holds none: defect 9)."""
    got = client.get_attributes(uid)
    assert got["key_material"] is None and got["object_type"] is None
    item = client.answer()
    assert item.result_status == ResultStatus.SUCCESS
    found: dict[str, list[Any]] = {}
    for attribute in item.response_payload.attributes:
        name = (f"{attribute.vendor_identification}-{attribute.name}"
                if attribute.tag == VENDOR_TAG else KcmTag(attribute.tag).name)
        found.setdefault(name, []).append(attribute.value.value)
    return found


@contextmanager
def paths(deployment, plane: str, expected: dict[str, str]) -> Iterator[None]:
    """Through the gateway, each operation named in ``expected`` (``kcm_gateway_requests_total``'s
    operation label) took the path given (``local`` or ``forwarded``), and no other path."""
    if plane != "gateway":
        yield
        return
    port = deployment["gateway"].metrics_port
    before = _requests(port)
    yield
    after = _requests(port)
    moved = {key for key in after if after[key] != before.get(key, 0.0)}
    for operation, path in expected.items():
        taken = {dict(key)["path"] for key in moved if dict(key)["operation"] == operation}
        assert taken == {path}, (operation, taken)


def _requests(port: int) -> dict[tuple, float]:
    status, body = scrape(port)
    assert status == 200
    return {tuple(sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(body.decode())
            for sample in family.samples if sample.name == "kcm_gateway_requests_total"}


def aes(client: RecordingClient, name: str) -> str:
    created = client.create(name, "AES", 256)
    assert created["object_type"] == ObjectType.SymmetricKey
    return created["unique_identifier"]


# The server itself ---------------------------------------------------------------------------
def test_connects_by_certificate_and_sends_no_credential(client: RecordingClient) -> None:
    """Its ``set_credentials`` is never sent: the request has no Authentication (0x42000C);
    KCM authenticates the client by its certificate."""
    client.set_credentials("someone", "secret")
    assert client.discover_versions()["versions"]
    assert b"\x42\x00\x0c\x01" not in client.sent
    assert client.answer().result_status == ResultStatus.SUCCESS


def test_pinning_the_servers_certificate(client: RecordingClient, deployment,
                                         plane: str) -> None:
    client.discover_versions()
    der = client._sock.getpeercert(binary_form=True)
    pki = deployment[plane].pki
    pinned = RecordingClient("127.0.0.1", str(pki.app.cert), str(pki.app.key),
                             port=deployment[plane].port, ca_cert=str(pki.ca.cert))
    pinned.set_server_cert_fingerprint(hashlib.sha256(der).hexdigest())
    try:
        assert pinned.discover_versions()["versions"]
    finally:
        pinned.close()


def test_discover_versions(client: RecordingClient, deployment, plane: str) -> None:
    with paths(deployment, plane, {"DISCOVER_VERSIONS": "forwarded"}):
        offered = client.discover_versions()["versions"]
    assert [(v["major"], v["minor"]) for v in offered] == [
        (2, 1), (2, 0), (1, 4), (1, 3), (1, 2), (1, 1), (1, 0)]


def test_query_without_a_query_function_is_invalid_message(client: RecordingClient) -> None:
    """Defect 7. KCM answered it Success with an empty payload until this test: the client
    then reported a server of no operations and no object types."""
    refused(client, client.query, ResultReason.INVALID_MESSAGE,
            "Request Payload is missing the required field Query Function")


@pytest.mark.parametrize("call", ["obtain_lease", "archive", "recover", "poll"])
def test_operations_kcm_does_not_offer(client: RecordingClient, call: str) -> None:
    uid = aes(client, unique("cy-none"))
    method = getattr(client, call)
    operation = {"obtain_lease": "OBTAIN_LEASE"}.get(call, call.upper())
    refused(client, (lambda: method()) if call == "poll" else (lambda: method(uid)),
            ResultReason.OPERATION_NOT_SUPPORTED, f"operation {operation} is not supported")


# Objects -------------------------------------------------------------------------------------
def test_create_get_locate(client: RecordingClient, deployment, plane: str) -> None:
    name = unique("cy-create")
    with paths(deployment, plane, {"CREATE": "forwarded", "GET": "forwarded",
                                   "LOCATE": "forwarded"}):
        uid = aes(client, name)
        got = client.get(uid)
        located = client.locate(name)
    assert got["unique_identifier"] == uid and got["object_type"] == ObjectType.SymmetricKey
    assert len(got["key_material"]) == 32
    assert located == [uid]
    assert client.fetch_key(name) == got["key_material"]
    assert client.locate(unique("cy-nothing")) == []
    found = attributes(client, uid)
    assert found["CRYPTOGRAPHIC_ALGORITHM"] == [Algorithm.AES]
    assert found["CRYPTOGRAPHIC_LENGTH"] == [256]
    assert found["STATE"] == [State.PRE_ACTIVE]


def test_register_and_get_it_back(client: RecordingClient) -> None:
    material = os.urandom(32)
    name = unique("cy-register")
    uid = client.register(ObjectType.SymmetricKey, material, name, Algorithm.AES, 256)[
        "unique_identifier"]
    assert client.get(uid)["key_material"] == material
    assert client.locate(name) == [uid]
    # Defect 8: without a name it sends no Template-Attribute.
    refused(client, lambda: client.register(ObjectType.SymmetricKey, material, "",
                                            Algorithm.AES, 256),
            ResultReason.INVALID_MESSAGE,
            "Request Payload is missing the required field Template-Attribute")


def _l4_create_request() -> bytes:
    """An L4 Create (x-kcm-level = L4), written with the client's own encoder."""
    def attribute(name: str, value: bytes) -> bytes:
        return encode_structure(Tag.Attribute, [encode_text_string(Tag.AttributeName, name),
                                                value])
    payload = encode_structure(Tag.RequestPayload, [
        encode_enum(Tag.ObjectType, ObjectType.SymmetricKey),
        encode_structure(Tag.TemplateAttribute, [
            attribute("Cryptographic Algorithm", encode_enum(Tag.AttributeValue, Algorithm.AES)),
            attribute("Cryptographic Length", encode_integer(Tag.AttributeValue, 256)),
            attribute("x-kcm-level", encode_text_string(Tag.AttributeValue, "L4"))])])
    header = encode_structure(Tag.RequestHeader, [
        encode_structure(Tag.ProtocolVersion, [encode_integer(Tag.ProtocolVersionMajor, 1),
                                               encode_integer(Tag.ProtocolVersionMinor, 4)]),
        encode_integer(Tag.BatchCount, 1)])
    return encode_structure(Tag.RequestMessage, [header, encode_structure(Tag.BatchItem, [
        encode_enum(Tag.Operation, CypheraOperation.Create), payload])])


def test_l4_create_and_get_stay_at_the_gateway(client: RecordingClient, deployment,
                                               plane: str) -> None:
    with paths(deployment, plane, {"CREATE": "local", "GET": "local", "ENCRYPT": "local"}):
        created = parse_create_payload(parse_response(client._send(_l4_create_request()))[
            "payload"])
        token = created["unique_identifier"]
        got = client.get(token)
        refused(client, lambda: client.encrypt(token, b"a record"),
                ResultReason.INVALID_FIELD, "unexpected field Destroy Date in Request Payload")
    assert token.startswith("l4.")
    assert got["unique_identifier"] == token and len(got["key_material"]) == 32


# Attributes ----------------------------------------------------------------------------------
def test_attribute_list_add_modify_delete(client: RecordingClient, deployment,
                                          plane: str) -> None:
    uid = aes(client, unique("cy-attributes"))
    with paths(deployment, plane, {"GET_ATTRIBUTE_LIST": "forwarded",
                                   "ADD_ATTRIBUTE": "forwarded",
                                   "MODIFY_ATTRIBUTE": "forwarded"}):
        names = client.get_attribute_list(uid)
        client.add_attribute(uid, "x-note", "one")
        client.modify_attribute(uid, "x-note", "two")
    assert {"Unique Identifier", "State", "Cryptographic Algorithm", "Name"} <= set(names)
    assert attributes(client, uid)["x-note"] == ["two"]
    # Defect 4: an Attribute structure, not KMIP 1.4's Attribute Name and Attribute Index.
    refused(client, lambda: client.delete_attribute(uid, "x-note"),
            ResultReason.INVALID_FIELD, "unexpected field Attribute in Request Payload")
    assert attributes(client, uid)["x-note"] == ["two"]


# Lifecycle -----------------------------------------------------------------------------------
def test_activate_check_rekey(client: RecordingClient, deployment, plane: str) -> None:
    name = unique("cy-rekey")
    uid = aes(client, name)
    with paths(deployment, plane, {"ACTIVATE": "forwarded", "CHECK": "forwarded",
                                   "RE_KEY": "forwarded"}):
        client.activate(uid)
        checked = client.check(uid)
        new_uid = client.re_key(uid)["unique_identifier"]
    assert checked == {"unique_identifier": uid}
    assert attributes(client, uid)["STATE"] == [State.ACTIVE]
    assert new_uid != uid and len(client.get(new_uid)["key_material"]) == 32
    assert client.locate(name) == [new_uid]  # the name moves to the replacement (1.4 §4.4)


def test_revoke_is_malformed(client: RecordingClient) -> None:
    """Defect 3: Revocation Reason and its code one tag off."""
    uid = aes(client, unique("cy-revoke"))
    client.activate(uid)
    refused(client, lambda: client.revoke(uid, 5), ResultReason.INVALID_FIELD,
            "unexpected field Revocation Reason Code in Request Payload")
    assert attributes(client, uid)["STATE"] == [State.ACTIVE]


def test_destroy(client: RecordingClient, deployment, plane: str) -> None:
    uid = aes(client, unique("cy-destroy"))
    with paths(deployment, plane, {"DESTROY": "forwarded"}):
        client.destroy(uid)
    refused(client, lambda: client.get(uid), ResultReason.ITEM_NOT_FOUND,
            f"object '{uid}' was destroyed; its key material is gone")
    active = aes(client, unique("cy-destroy"))
    client.activate(active)
    refused(client, lambda: client.destroy(active), ResultReason.PERMISSION_DENIED,
            "cannot destroy an Active object; revoke it first")
    assert len(client.get(active)["key_material"]) == 32


# Requests the client writes wrongly ----------------------------------------------------------
def test_cryptography_is_malformed(client: RecordingClient) -> None:
    """Defect 2: Data under Destroy Date's tag, so Encrypt, Decrypt, Sign, Signature Verify
    and MAC are each refused before the key is used."""
    uid = aes(client, unique("cy-crypto"))
    client.activate(uid)
    destroy_date = "unexpected field Destroy Date in Request Payload"
    for call in (lambda: client.encrypt(uid, b"a record"),
                 lambda: client.decrypt(uid, b"0123456789abcdef", b"n" * 16),
                 lambda: client.sign(uid, b"message"),
                 lambda: client.signature_verify(uid, b"message", b"signature"),
                 lambda: client.mac(uid, b"message")):
        refused(client, call, ResultReason.INVALID_FIELD, destroy_date)


def test_create_key_pair_is_malformed(client: RecordingClient) -> None:
    """Defect 5."""
    refused(client, lambda: client.create_key_pair(unique("cy-pair"), Algorithm.RSA, 2048),
            ResultReason.INVALID_FIELD, "unexpected field Template-Attribute in Request Payload")


def test_derive_key_is_malformed(client: RecordingClient) -> None:
    """Defect 6."""
    uid = aes(client, unique("cy-derive"))
    client.activate(uid)
    refused(client, lambda: client.derive_key(uid, b"derivation data", unique("cy-derived"),
                                               128),
            ResultReason.INVALID_FIELD,
            "unexpected field Derivation Method in Derivation Parameters")


def test_the_module_names_every_method_of_the_client() -> None:
    """Every public method of the client is driven above (a new one fails this test)."""
    driven = {"locate", "get", "create", "activate", "destroy", "create_key_pair", "register",
              "re_key", "derive_key", "check", "get_attributes", "get_attribute_list",
              "add_attribute", "modify_attribute", "delete_attribute", "obtain_lease",
              "revoke", "archive", "recover", "query", "poll", "discover_versions", "encrypt",
              "decrypt", "sign", "signature_verify", "mac", "fetch_key", "set_credentials",
              "set_server_cert_fingerprint", "close"}
    offered = {name for name in vars(KmipClient) if not name.startswith("_")}
    assert offered - {"MAX_RESPONSE_SIZE"} == driven
