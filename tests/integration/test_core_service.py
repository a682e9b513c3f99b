"""Query, Discover Versions and Interop through kcm-core's request handler, in process."""

from __future__ import annotations

from pathlib import Path

import pytest

from kcm.conformance.runner import run_case
from kcm.core.operations import HANDLERS
from kcm.kernel.versions import SUPPORTED_VERSIONS
from kcm.kmip.enums import (
    InteropFunction,
    ObjectType,
    Operation,
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
    assert {Operation.QUERY, Operation.DISCOVER_VERSIONS, Operation.ENCRYPT,
            Operation.DECRYPT, Operation.CHECK, Operation.CREATE} <= operations
    assert (Operation.INTEROP in operations) == (version >= (2, 0))
    assert ObjectType.SYMMETRIC_KEY in answer.object_types
    assert answer.vendor_identification == "KCM"
    info = {child.tag: child.value for child in answer.server_information.value}
    if version >= (2, 0):
        assert info[Tag.SERVER_NAME] == "kcm-core"
    else:
        assert info == {}  # vendor-defined in 1.x; empty as in the OASIS 1.4 cases
    assert answer.application_namespaces == []


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


def test_query_answer_reads_with_pykmip(core: CoreHarness) -> None:
    from kmip.core import utils
    from kmip.core.messages import messages

    wire = core.client().send(request_bytes(
        Operation.QUERY, QueryRequest(query_functions=ALL_QUERIES), (1, 2)))
    response = messages.ResponseMessage()
    response.read(utils.BytearrayStream(wire))
    payload = response.batch_items[0].response_payload
    assert {op.value for op in payload.operations} >= {Operation.QUERY, Operation.ENCRYPT}
    assert payload.vendor_identification == "KCM"


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
    if not path.exists():
        pytest.skip(f"{name} is not among the vectors")
    result = run_case(path, core.client())
    if not result.passed:
        assert result.failure is not None
        assert all("ProtocolVersion" in f for f in result.failure.findings), result.line()
