"""The ID Placeholder at a real kcm-core, directly and through a real kcm-gateway, at KMIP 1.4
and 2.1 (KMIP 1.4 §4, 2.1 §6, "ID Placeholder Prior to and Resulting from a Batch
Operation"): an operation that makes or finds an object sets it; every other one uses it and
leaves it unchanged, so an item naming another object does not redirect the later items that
mean the placeholder. Derive Key never uses it for a base object. A refused L4 attempt names
what it asked for and why in its audit record, its answer unchanged."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kcm.conformance.client import KmipClient
from kcm.kmip.attributes import Attribute, AttributeReference, CryptographicParameters
from kcm.kmip.enums import (
    CryptographicUsageMask,
    DerivationMethod,
    HashingAlgorithm,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
    UniqueIdentifier,
)
from kcm.kmip.messages import RequestBatchItem, ResponseBatchItem
from kcm.kmip.payloads import (
    AddAttributeRequest,
    CheckRequest,
    CreateRequest,
    DeleteAttributeRequest,
    DestroyRequest,
    GetAttributeListRequest,
    ModifyAttributeRequest,
    RevocationReason,
    RevokeRequest,
    SetAttributeRequest,
)
from kcm.kmip.payloads.asymmetric import DerivationParameters, DeriveKeyRequest
from kcm.kmip.tags import Tag
from kcm.pki import CertKeyPaths, issue_certificate, load_ca, write_certificate
from kcm.testing.requests import (
    CONTINUE,
    activate,
    aes256,
    create_l4,
    create_managed,
    encrypt,
    get,
    get_attributes,
    item,
    request,
    response,
)
from kcm.ttlv import Item, ItemType
from tests.e2e_support import (
    CoreProcess,
    GatewayProcess,
    audit_rows,
    deploy,
    last_seq,
    wait_until,
)

VERSIONS = [(1, 4), (2, 1)]
PLANES = ["core", "gateway"]
#: Readable parametrize ids for VERSIONS.
by_version = pytest.mark.parametrize("version", VERSIONS, ids=["1.4", "2.1"])


@pytest.fixture(scope="module")
def planes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """A kcm-core and a kcm-gateway linked to it, shared by the module's tests."""
    root = tmp_path_factory.mktemp("hi-placeholder")
    core = deploy(root / "core", f"sqlite:///{root / 'core' / 'kcm.db'}")
    core.start()
    gateway = GatewayProcess(root / "gateway", core)
    try:
        gateway.start()
        gateway.wait_linked()
        yield {"core": core, "gateway": gateway}
    finally:
        gateway.stop()
        core.stop()


def send(planes: dict[str, object], plane: str, *items: RequestBatchItem,
         version: tuple[int, int]) -> list[ResponseBatchItem]:
    """One request of ``items`` (Continue) to ``plane``, as the application demo/app."""
    server = planes[plane]
    assert isinstance(server, CoreProcess | GatewayProcess)
    with server.client("app") as client:
        return response(client.send(request(*items, version=version,
                                            continuation=CONTINUE))).batch_items


def created(planes: dict[str, object], plane: str, make: RequestBatchItem,
            version: tuple[int, int]) -> str:
    [answer] = send(planes, plane, make, version=version)
    assert answer.result_status == ResultStatus.SUCCESS, answer.result_message
    return answer.response_payload.unique_identifier


def uid_of(answer: ResponseBatchItem) -> str:
    assert answer.result_status == ResultStatus.SUCCESS, answer.result_message
    return answer.response_payload.unique_identifier


# Operations that leave the placeholder unchanged ------------------------------------------

def _description(value: str) -> Attribute:
    return Attribute.of(Tag.DESCRIPTION, value, ItemType.TEXT_STRING)


def _revoke(uid: str) -> RequestBatchItem:
    return item(Operation.REVOKE, RevokeRequest(unique_identifier=uid, revocation_reason=(
        RevocationReason(code=RevocationReasonCode.CESSATION_OF_OPERATION))))


def _add(uid: str) -> RequestBatchItem:
    return item(Operation.ADD_ATTRIBUTE,
                AddAttributeRequest(unique_identifier=uid, attribute=_description("d")))


#: For each operation, the items that name another managed key Y explicitly (the operation
#: last, after what it needs).
ON_ANOTHER_KEY: dict[str, Callable[[str], list[RequestBatchItem]]] = {
    "get": lambda y: [get(y)],
    "get_attributes": lambda y: [get_attributes(y, Tag.STATE)],
    "get_attribute_list": lambda y: [
        item(Operation.GET_ATTRIBUTE_LIST, GetAttributeListRequest(unique_identifier=y))],
    "add_attribute": lambda y: [_add(y)],
    "modify_attribute": lambda y: [_add(y), item(Operation.MODIFY_ATTRIBUTE, (
        ModifyAttributeRequest(unique_identifier=y, attribute=_description("e"))))],
    "delete_attribute": lambda y: [_add(y), item(Operation.DELETE_ATTRIBUTE, (
        DeleteAttributeRequest(unique_identifier=y,
                               attribute_reference=AttributeReference(Tag.DESCRIPTION))))],
    "set_attribute": lambda y: [item(Operation.SET_ATTRIBUTE, (
        SetAttributeRequest(unique_identifier=y, attribute=_description("s"))))],
    "activate": lambda y: [activate(y)],
    "revoke": lambda y: [activate(y), _revoke(y)],
    "destroy": lambda y: [item(Operation.DESTROY, DestroyRequest(unique_identifier=y))],
    "check": lambda y: [item(Operation.CHECK, CheckRequest(unique_identifier=y))],
    "encrypt": lambda y: [activate(y), encrypt(y)],
}


@pytest.mark.parametrize("plane", PLANES)
@pytest.mark.parametrize(("operation", "version"), [
    (operation, version) for operation in sorted(ON_ANOTHER_KEY) for version in VERSIONS
    if not (operation == "set_attribute" and version < (2, 0))],  # Set Attribute is 2.x
    ids=lambda value: ".".join(map(str, value)) if isinstance(value, tuple) else value)
def test_an_operation_on_another_key_leaves_the_placeholder(
        planes: dict[str, object], plane: str, version: tuple[int, int],
        operation: str) -> None:
    other = created(planes, plane, create_managed(), version)
    between = ON_ANOTHER_KEY[operation](other)
    answers = send(planes, plane, create_managed(b"A"), *between, get(None, b"P"),
                   version=version)
    assert [a.result_status for a in answers[1:-1]] == [ResultStatus.SUCCESS] * len(between), \
        [a.result_message for a in answers]
    assert uid_of(answers[-1]) == uid_of(answers[0])


def _tombstone(operation: str) -> Callable[[str], RequestBatchItem]:
    if operation == "revoke":
        return _revoke
    return lambda uid: item(Operation.DESTROY, DestroyRequest(unique_identifier=uid))


@by_version
@pytest.mark.parametrize("plane", PLANES)
@pytest.mark.parametrize("operation", ["get", "encrypt", "revoke", "destroy"])
def test_an_l4_operation_on_another_token_leaves_the_placeholder(
        planes: dict[str, object], plane: str, version: tuple[int, int],
        operation: str) -> None:
    """An L4 Create sets the placeholder, at the gateway (a local run) as at the core; a Get,
    Encrypt, Revoke or Destroy of another token leaves it: the Encrypt without an identifier
    uses the new token."""
    other = created(planes, plane, create_l4(), version)
    named = {"get": get, "encrypt": encrypt}.get(operation) or _tombstone(operation)
    answers = send(planes, plane, create_l4(b"A"), named(other), encrypt(None, b"x", b"P"),
                   version=version)
    assert answers[1].result_status == ResultStatus.SUCCESS, answers[1].result_message
    assert uid_of(answers[-1]) == uid_of(answers[0])


@by_version
@pytest.mark.parametrize("plane", PLANES)
def test_a_get_of_a_token_after_a_managed_create_leaves_the_core_s_placeholder(
        planes: dict[str, object], plane: str, version: tuple[int, int]) -> None:
    """A request of both planes: the gateway sends it whole to the core, which answers the
    Get without an identifier with the managed key, not the token the L4 Get named."""
    token = created(planes, plane, create_l4(), version)
    answers = send(planes, plane, create_managed(b"A"), get(token, b"T"), get(None, b"P"),
                   version=version)
    assert uid_of(answers[1]) == token
    assert uid_of(answers[-1]) == uid_of(answers[0])


# Derive Key ------------------------------------------------------------------------------

def _derivable(batch_id: bytes | None = None) -> RequestBatchItem:
    mask = Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, int(CryptographicUsageMask.DERIVE_KEY))
    return item(Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                                attributes=aes256([mask])), batch_id)


def _derive(bases: list[str | Item], batch_id: bytes | None = None) -> RequestBatchItem:
    return item(Operation.DERIVE_KEY, DeriveKeyRequest(
        object_type=ObjectType.SYMMETRIC_KEY, unique_identifiers=bases,
        derivation_method=DerivationMethod.HASH,
        derivation_parameters=DerivationParameters(cryptographic_parameters=(
            CryptographicParameters(hashing_algorithm=HashingAlgorithm.SHA_256))),
        attributes=aes256()), batch_id)


@by_version
@pytest.mark.parametrize("plane", PLANES)
def test_derive_key_does_not_take_its_base_from_the_placeholder(
        planes: dict[str, object], plane: str, version: tuple[int, int]) -> None:
    answers = send(planes, plane, _derivable(b"1"), activate(None, b"2"), _derive([], b"3"),
                   get(None, b"4"), version=version)
    base = uid_of(answers[0])
    assert uid_of(answers[1]) == base
    refused = answers[2]
    assert (refused.result_status, refused.result_reason) == (
        ResultStatus.OPERATION_FAILED, ResultReason.MISSING_DATA)
    assert "ID Placeholder" in refused.result_message
    # A failed item sets none: the placeholder is still the base's.
    assert uid_of(answers[3]) == base


@pytest.mark.parametrize("plane", PLANES)
def test_derive_key_refuses_the_2x_placeholder_reference(
        planes: dict[str, object], plane: str) -> None:
    reference = Item(Tag.UNIQUE_IDENTIFIER, ItemType.ENUMERATION,
                     int(UniqueIdentifier.ID_PLACEHOLDER))
    answers = send(planes, plane, _derivable(b"1"), _derive([reference], b"2"),
                   version=(2, 1))
    uid_of(answers[0])
    assert (answers[1].result_status, answers[1].result_reason) == (
        ResultStatus.OPERATION_FAILED, ResultReason.INVALID_FIELD)


@by_version
@pytest.mark.parametrize("plane", PLANES)
def test_derive_key_naming_its_base_sets_the_placeholder_to_the_new_key(
        planes: dict[str, object], plane: str, version: tuple[int, int]) -> None:
    base = created(planes, plane, _derivable(), version)
    answers = send(planes, plane, _derive([base], b"1"), get(None, b"2"), version=version)
    derived = uid_of(answers[0])
    assert derived != base and uid_of(answers[1]) == derived


# Refused L4 attempts in the audit log ------------------------------------------------------

def _client_as(core: CoreProcess, name: str, spiffe_path: str) -> KmipClient:
    """A client whose certificate (of the deployment's CA) carries ``spiffe_path``."""
    issued = issue_certificate(load_ca(core.pki.ca), name, now=dt.datetime.now(dt.UTC),
                               uris=[f"spiffe://{spiffe_path}"])
    paths = CertKeyPaths(Path(core.root) / f"{name}.pem", Path(core.root) / f"{name}.key")
    write_certificate(paths, issued.cert, issued.key)
    return KmipClient("127.0.0.1", core.port, cert=paths.cert, key=paths.key,
                      ca=core.pki.ca.cert)


def _answer(client: KmipClient, batch_item: RequestBatchItem,
            version: tuple[int, int]) -> tuple[int, int | None, str | None]:
    [answer] = response(client.send(request(batch_item, version=version))).batch_items
    return answer.result_status, answer.result_reason, answer.result_message


def _records(core: CoreProcess, after: int, operation: str) -> list[dict]:
    """The audit records of ``operation`` after ``after`` (not the gateway's key fetches,
    which it makes when it will)."""
    return [row for row in audit_rows(core, after) if row["operation"] == operation]


def test_a_refused_l4_create_of_an_unprovisioned_service_is_audited_as_denied(
        planes: dict[str, object]) -> None:
    """The answer is the one a service without a service key gets (Object Not Found; 1.x Item
    Not Found), and the audit record says why."""
    core = planes["core"]
    assert isinstance(core, CoreProcess)
    mark = last_seq(core)
    with _client_as(core, "hi-ghost", "kcm.test/tenant/demo/service/hi-ghost") as ghost:
        answers = {version: _answer(ghost, create_l4(), version) for version in VERSIONS}
    expected = "service demo/hi-ghost has no service key"
    assert answers == {
        (1, 4): (ResultStatus.OPERATION_FAILED, ResultReason.ITEM_NOT_FOUND, expected),
        (2, 1): (ResultStatus.OPERATION_FAILED, ResultReason.OBJECT_NOT_FOUND, expected)}
    wait_until(lambda: len(_records(core, mark, "CREATE")) >= 2,
               "the audit records of the refusals")
    assert [r["detail"] for r in _records(core, mark, "CREATE")] == [
        {"denied": "service demo/hi-ghost is not provisioned"}] * 2


def test_a_refused_l4_get_names_the_token_asked_for_and_why(planes: dict[str, object]) -> None:
    core = planes["core"]
    assert isinstance(core, CoreProcess)
    token = created(planes, "core", create_l4(), (2, 1))
    mark = last_seq(core)
    with core.client("other_app") as other:
        foreign = _answer(other, get(token), (2, 1))
    assert foreign[:2] == (ResultStatus.OPERATION_FAILED, ResultReason.OBJECT_NOT_FOUND)
    wait_until(lambda: _records(core, mark, "GET"), "the audit record of the refusal")
    [row] = _records(core, mark, "GET")
    assert row["detail"]["denied"] == "another tenant's key"
    assert row["detail"]["requested"] == token[:16] + "..."
