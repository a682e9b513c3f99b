"""Query, Discover Versions and Interop through kcm-core's request handler, in process."""

from __future__ import annotations

from pathlib import Path

import pytest
from kmip.core.exceptions import StreamNotEmptyError

import kcm
from kcm.conformance.runner import run_case
from kcm.core.operations import HANDLERS
from kcm.core.server_info import EXTENSION_PRODUCT_NAME, EXTENSION_SERVER_VERSION
from kcm.kernel.versions import SUPPORTED_VERSIONS
from kcm.kmip.enums import (
    InteropFunction,
    ObjectType,
    Operation,
    ProfileName,
    QueryFunction,
    ResultStatus,
)
from kcm.kmip.messages import (
    ProtocolVersion,
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    ResponseBatchItem,
    decode_response,
    encode_request,
)
from kcm.kmip.payloads import DiscoverVersionsRequest, InteropRequest, QueryRequest
from kcm.kmip.tags import Tag
from kcm.ttlv import decode, encode
from tests.core_support import CoreHarness, service_principal
from tests.pykmip_bugs import KnownPyKmipBug, known_pykmip_bug

VECTORS = Path("/work/shared/kmip-vectors")
ALL_QUERIES = [QueryFunction.QUERY_OPERATIONS, QueryFunction.QUERY_OBJECTS,
               QueryFunction.QUERY_SERVER_INFORMATION,
               QueryFunction.QUERY_APPLICATION_NAMESPACES]


def request_bytes(op: Operation, payload: object, version=(2, 1)) -> bytes:
    header = RequestHeader(protocol_version=ProtocolVersion.of(version), batch_count=1)
    message = RequestMessage(header, [RequestBatchItem(operation=op, request_payload=payload)])
    return encode(encode_request(message))


def one(core: CoreHarness, op: Operation, payload: object, version=(2, 1),
        principal=None) -> ResponseBatchItem:
    answer = core.client(principal).send(request_bytes(op, payload, version))
    response = decode_response(decode(answer))
    assert response.header.version == version
    item = response.batch_items[0]
    assert item.result_status == ResultStatus.SUCCESS, (item.result_reason, item.result_message)
    return item


def versions(item: ResponseBatchItem) -> list[tuple[int, int]]:
    return [v.as_tuple() for v in item.response_payload.protocol_versions]


# Query ------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", [(1, 0), (1, 4), (2, 0), (2, 1)])
def test_query_lists_registered_operations_and_stored_objects(core: CoreHarness,
                                                              version) -> None:
    answer = one(core, Operation.QUERY, QueryRequest(query_functions=ALL_QUERIES),
                 version).response_payload
    operations = set(answer.operations)
    assert operations <= set(HANDLERS)
    assert {Operation.QUERY, Operation.CHECK, Operation.CREATE, Operation.GET} <= operations
    assert (Operation.INTEROP in operations) == (version >= (2, 0))
    # Operations a version does not define are not listed in it (Discover Versions is
    # KMIP 1.1, Encrypt 1.2).
    assert (Operation.DISCOVER_VERSIONS in operations) == (version >= (1, 1))
    assert (Operation.ENCRYPT in operations) == (version >= (1, 2))
    assert {ObjectType.SYMMETRIC_KEY, ObjectType.PUBLIC_KEY, ObjectType.PRIVATE_KEY,
            ObjectType.CERTIFICATE, ObjectType.SPLIT_KEY, ObjectType.SECRET_DATA,
            ObjectType.OPAQUE_OBJECT} <= set(answer.object_types)
    assert (ObjectType.PGP_KEY in answer.object_types) == (version >= (1, 2))
    assert answer.vendor_identification == "KCM"
    info = {child.tag: child.value for child in answer.server_information.value}
    if version >= (2, 0):
        assert info[Tag.SERVER_NAME] == "kcm-core"
        assert info[Tag.PRODUCT_NAME] == "KCM"
        assert info[Tag.SERVER_VERSION] == kcm.__version__
    else:  # vendor-defined in 1.x: KCM's extension tags
        assert info == {EXTENSION_PRODUCT_NAME: "KCM", EXTENSION_SERVER_VERSION: kcm.__version__}
    assert answer.application_namespaces == []


#: Every Query Function, 1.0 to 2.1.
EVERY_QUERY = list(QueryFunction)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_query_answers_every_function_of_its_version(core: CoreHarness, version) -> None:
    answer = one(core, Operation.QUERY, QueryRequest(query_functions=EVERY_QUERY),
                 version).response_payload
    names = [child.tag for child in answer.extension_information[0].value] \
        if answer.extension_information else []
    # Extension List/Map: KMIP 1.1 on, with tags and types (the Map) asked too.
    assert bool(names) == (version >= (1, 1))
    if names:
        assert names == [Tag.EXTENSION_NAME, Tag.EXTENSION_TAG, Tag.EXTENSION_TYPE]
    assert answer.attestation_types == []
    has_13 = version >= (1, 3)
    assert len(answer.rng_parameters) == int(has_13)
    assert bool(answer.profile_information) == has_13
    assert answer.validation_information == []
    assert len(answer.capability_information) == int(has_13)
    if has_13:
        capabilities = {c.tag for c in answer.capability_information[0].value}
        assert Tag.STREAMING_CAPABILITY in capabilities
        assert (Tag.BATCH_UNDO_CAPABILITY in capabilities) == (version >= (1, 4))
    assert answer.client_registration_methods == []
    assert (answer.defaults_information is not None) == (version >= (2, 0))
    assert len(answer.protection_storage_masks) == int(version >= (2, 0))


@pytest.mark.parametrize(("version", "profiles"), [
    ((1, 3), {ProfileName.SYMMETRIC_KEY_LIFECYCLE_SERVER_KMIP_V1_3,
              ProfileName.BASIC_CRYPTOGRAPHIC_SERVER_KMIP_V1_3,
              ProfileName.ADVANCED_CRYPTOGRAPHIC_SERVER_KMIP_V1_3,
              ProfileName.RNG_CRYPTOGRAPHIC_SERVER_KMIP_V1_3}),
    ((1, 4), {ProfileName.SYMMETRIC_KEY_LIFECYCLE_SERVER_KMIP_V1_4,
              ProfileName.BASIC_CRYPTOGRAPHIC_SERVER_KMIP_V1_4,
              ProfileName.ADVANCED_CRYPTOGRAPHIC_SERVER_KMIP_V1_4,
              ProfileName.RNG_CRYPTOGRAPHIC_SERVER_KMIP_V1_4}),
    ((2, 1), {ProfileName.BASELINE_SERVER, ProfileName.SYMMETRIC_KEY_LIFECYCLE_SERVER,
              ProfileName.BASIC_CRYPTOGRAPHIC_SERVER, ProfileName.ADVANCED_CRYPTOGRAPHIC_SERVER,
              ProfileName.RNG_CRYPTOGRAPHIC_SERVER}),
])
def test_query_profiles_names_the_claimed_profiles_in_the_versions_words(
        core: CoreHarness, version, profiles) -> None:
    answer = one(core, Operation.QUERY, QueryRequest(
        query_functions=[QueryFunction.QUERY_PROFILES]), version).response_payload
    assert {info.value[0].value for info in answer.profile_information} == profiles


def test_query_answers_only_what_was_asked(core: CoreHarness) -> None:
    answer = one(core, Operation.QUERY, QueryRequest(
        query_functions=[QueryFunction.QUERY_OBJECTS, QueryFunction.QUERY_RNGS]
    )).response_payload
    assert answer.operations == [] and answer.vendor_identification is None
    assert answer.object_types


def test_query_needs_no_tenant_objects(core: CoreHarness) -> None:
    # Any tenant may ask; nothing in the answer depends on its objects.
    mine = one(core, Operation.QUERY, QueryRequest(query_functions=ALL_QUERIES))
    theirs = one(core, Operation.QUERY, QueryRequest(query_functions=ALL_QUERIES),
                 principal=service_principal("other"))
    assert mine.response_payload.operations == theirs.response_payload.operations


def _read_with_pykmip(core: CoreHarness, version, functions) -> object:
    from kmip.core import enums, utils
    from kmip.core.messages import messages

    wire = core.client().send(request_bytes(
        Operation.QUERY, QueryRequest(query_functions=functions), version))
    response = messages.ResponseMessage()
    response.read(utils.BytearrayStream(wire),
                  kmip_version=enums.KMIPVersion[f"KMIP_{version[0]}_{version[1]}"])
    return response.batch_items[0].response_payload


#: Query Functions whose KMIP 2.0 answer PyKMIP 0.11 cannot read: its own bugs, listed with
#: their byte-level reasons in docs/conformance.md. Each is expected as PyKMIP's exception
#: of exactly this class with this text (tests/pykmip_bugs.py), nothing broader.
PYKMIP_CANNOT_READ = {
    QueryFunction.QUERY_DEFAULTS_INFORMATION: (
        ValueError, "Unrecognized attribute type: Tags.EXTRACTABLE",
        "PyKMIP's attribute factory has no Extractable (tag 0x420122, a KMIP 1.4 and 2.0 "
        "attribute), so it cannot read the Object Defaults KCM reports"),
    QueryFunction.QUERY_STORAGE_PROTECTION_MASKS: (
        StreamNotEmptyError, "Invalid length used to read Base, bytes remaining: 24",
        "PyKMIP reads bare Protection Storage Mask integers (0x42015E) where KMIP 2.0 answers "
        "a Protection Storage Masks structure (0x42015F): 24 bytes left unread"),
}


@pytest.mark.parametrize("version", [v for v in SUPPORTED_VERSIONS if v <= (2, 0)])
def test_query_answer_reads_with_pykmip(core: CoreHarness, version) -> None:
    """Every function's answer, read by PyKMIP's decoder (it speaks KMIP 1.0-2.0), but
    those PyKMIP cannot read (below)."""
    functions = [f for f in EVERY_QUERY if f not in PYKMIP_CANNOT_READ]
    payload = _read_with_pykmip(core, version, functions)
    assert Operation.QUERY in {op.value for op in payload.operations}
    assert payload.vendor_identification == "KCM"


@pytest.mark.parametrize(("function", "kind", "message"), [
    pytest.param(function, kind, message, marks=pytest.mark.xfail(
        strict=True, raises=KnownPyKmipBug, reason=f"{why} ({kind.__name__}: {message})"),
        id=str(int(function)))
    for function, (kind, message, why) in PYKMIP_CANNOT_READ.items()])
def test_query_answers_pykmip_cannot_read(core: CoreHarness, function, kind, message) -> None:
    with known_pykmip_bug(kind, message):
        payload = _read_with_pykmip(core, (2, 0), [function])
    assert payload is not None


# Discover Versions ---------------------------------------------------------------------------
@pytest.mark.parametrize("version", [(1, 1), (1, 4), (2, 1)])
def test_discover_versions_empty_list_gives_all_newest_first(core: CoreHarness,
                                                             version) -> None:
    item = one(core, Operation.DISCOVER_VERSIONS, DiscoverVersionsRequest(), version)
    assert versions(item) == list(SUPPORTED_VERSIONS)
    assert versions(item) == sorted(versions(item), reverse=True)


def test_discover_versions_intersects_in_our_order(core: CoreHarness) -> None:
    asked = [ProtocolVersion.of(v) for v in ((1, 0), (9, 31), (2, 1), (1, 2))]
    item = one(core, Operation.DISCOVER_VERSIONS,
               DiscoverVersionsRequest(protocol_versions=asked), (1, 1))
    assert versions(item) == [(2, 1), (1, 2), (1, 0)]
    # KMIP 1.1 test case 16.1: a version we do not speak gives an empty answer.
    item = one(core, Operation.DISCOVER_VERSIONS, DiscoverVersionsRequest(
        protocol_versions=[ProtocolVersion.of((9, 31))]), (1, 1))
    assert versions(item) == []


# Interop ----------------------------------------------------------------------------------
@pytest.mark.parametrize("function", list(InteropFunction))
def test_interop_is_accepted_as_a_no_op(core: CoreHarness, function) -> None:
    item = one(core, Operation.INTEROP, InteropRequest(interop_function=function,
                                                       interop_identifier="BL-M-1-21"))
    assert item.response_payload is not None
    assert item.response_payload.to_item().value == []


# OASIS cases -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["BL-M-2-21", "BL-M-3-21"])
def test_oasis_baseline_cases_with_check(core: CoreHarness, name: str) -> None:
    path = VECTORS / "oasis-kmip-profiles-v2.1-os" / "mandatory" / f"{name}.xml"
    result = run_case(path, core.client())
    assert result.passed, result.line()


@pytest.mark.parametrize("name", ["TC-Q-S2C-2-14"])
def test_oasis_discover_versions_case(core: CoreHarness, name: str) -> None:
    # The expected list is a 1.x-only server's; ours is longer, so only the shape is checked.
    path = VECTORS / "oasis-kmip-testcases-v1.4-cnprd01" / f"{name}.xml"
    assert path.exists(), f"{name} is not among the vectors (../shared/kmip-vectors)"
    result = run_case(path, core.client())
    if not result.passed:
        assert result.failure is not None
        assert all("ProtocolVersion" in f for f in result.failure.findings), result.line()


@pytest.mark.parametrize(("version", "object_tag"), [
    ((1, 2), Tag.TEMPLATE), ((1, 2), Tag.PGP_KEY), ((2, 0), Tag.CERTIFICATE_REQUEST)])
def test_every_object_type_query_lists_is_registered_and_got_back(
        core: CoreHarness, version, object_tag) -> None:
    """Query Objects lists what Register stores and Get returns, the rarer kinds too."""
    from kcm.core.operations._objects_common import OBJECT_TYPE_OF_TAG
    from kcm.kmip.payloads import GetRequest, RegisterRequest
    from kcm.ttlv import Item, ItemType

    inner = {
        Tag.TEMPLATE: [Item(Tag.ATTRIBUTE, ItemType.STRUCTURE, [
            Item(Tag.ATTRIBUTE_NAME, ItemType.TEXT_STRING, "Object Group"),
            Item(Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING, "g")])],
        Tag.PGP_KEY: [Item(Tag.PGP_KEY_VERSION, ItemType.INTEGER, 4),
                      Item(Tag.KEY_BLOCK, ItemType.STRUCTURE, [
                          Item(Tag.KEY_FORMAT_TYPE, ItemType.ENUMERATION, 2),
                          Item(Tag.KEY_VALUE, ItemType.STRUCTURE, [
                              Item(Tag.KEY_MATERIAL, ItemType.BYTE_STRING, b"pgp")])])],
        Tag.CERTIFICATE_REQUEST: [
            Item(Tag.CERTIFICATE_REQUEST_TYPE, ItemType.ENUMERATION, 2),
            Item(Tag.CERTIFICATE_REQUEST_VALUE, ItemType.BYTE_STRING, b"csr")],
    }[object_tag]
    object_type = OBJECT_TYPE_OF_TAG[object_tag]
    listed = one(core, Operation.QUERY, QueryRequest(
        query_functions=[QueryFunction.QUERY_OBJECTS]), version).response_payload
    assert object_type in listed.object_types
    registered = one(core, Operation.REGISTER, RegisterRequest(
        object_type=object_type, attributes=[],
        object=Item(object_tag, ItemType.STRUCTURE, inner)), version)
    got = one(core, Operation.GET, GetRequest(
        unique_identifier=registered.response_payload.unique_identifier), version)
    assert got.response_payload.object_type == object_type
