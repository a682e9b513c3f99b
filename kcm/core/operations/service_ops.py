"""Query, Discover Versions and Interop (KMIP 1.4 §4.25, §4.26; 2.1 §6.1.37, §6.1.13,
§6.1.25): what the server says about itself. None of them touches a managed object, so
any authenticated principal may ask.
"""

from __future__ import annotations

from kcm.core.context import OperationContext
from kcm.kmip import registry
from kcm.kmip.enums import InteropFunction, ObjectType, Operation, QueryFunction
from kcm.kmip.labels import enum_label
from kcm.kmip.payloads import (
    DiscoverVersionsRequest,
    DiscoverVersionsResponse,
    InteropRequest,
    InteropResponse,
    LogRequest,
    LogResponse,
    QueryRequest,
    QueryResponse,
)
from kcm.kmip.protocol_version import ProtocolVersion
from kcm.kmip.tags import Tag
from kcm.kmip.versions import Version
from kcm.ttlv import Item, ItemType

#: The object types the core stores: generated or registered Symmetric Keys, and registered
#: Secret Data and Opaque Objects (the kinds :mod:`kcm.kmip.objects` models).
STORED_OBJECT_TYPES: tuple[ObjectType, ...] = (
    ObjectType.SYMMETRIC_KEY, ObjectType.SECRET_DATA, ObjectType.OPAQUE_OBJECT,
)


def query(ctx: OperationContext, request: QueryRequest) -> QueryResponse:
    """Answer the Query Functions we can; the others are left out of the answer, which
    the spec allows (a server returns what it supports of what was asked)."""
    # The table lists this module's handlers, so it is read when asked, not at import.
    from kcm.core.operations import HANDLERS

    functions = {int(f) for f in request.query_functions}
    info = ctx.server_info
    response = QueryResponse()
    if QueryFunction.QUERY_OPERATIONS in functions:
        response.operations = [Operation(op) for op in sorted(HANDLERS)
                               if _known(Tag.OPERATION, op, ctx.version)]
    if QueryFunction.QUERY_OBJECTS in functions:
        response.object_types = [t for t in STORED_OBJECT_TYPES
                                 if _known(Tag.OBJECT_TYPE, t, ctx.version)]
    if QueryFunction.QUERY_SERVER_INFORMATION in functions:
        response.vendor_identification = info.vendor_identification
        response.server_information = _server_information(ctx)
    # Query Application Namespaces: we support none, so the list is empty.
    return response


def discover_versions(ctx: OperationContext,
                      request: DiscoverVersionsRequest) -> DiscoverVersionsResponse:
    """The versions we speak that the client listed (all of ours if it listed none), in
    our order of preference, newest first (KMIP 1.4 §4.26)."""
    ours = ctx.server_info.versions
    asked = {v.as_tuple() for v in request.protocol_versions}
    chosen = [v for v in ours if v in asked] if asked else list(ours)
    return DiscoverVersionsResponse(protocol_versions=[ProtocolVersion.of(v) for v in chosen])


def interop(ctx: OperationContext, request: InteropRequest) -> InteropResponse:
    """Begin, End or Reset of an interoperability test: accepted and recorded, no effect.
    KMIP 2.1 §6.1.25 makes the server side of it optional; the OASIS 2.x profile test
    cases open and close with it."""
    function = enum_label(InteropFunction, request.interop_function)
    ctx.audit_detail["interop"] = f"{function} {request.interop_identifier}"
    return InteropResponse()


#: How much of a client's Log message the audit record keeps.
LOG_MESSAGE_LIMIT = 1024


def log_message(ctx: OperationContext, request: LogRequest) -> LogResponse:
    """Log (KMIP 2.1 §6.1.29): the client's message goes into this request's audit record
    (and so into the structured log), truncated to :data:`LOG_MESSAGE_LIMIT` characters."""
    ctx.audit_detail["log_message"] = request.log_message[:LOG_MESSAGE_LIMIT]
    return LogResponse()


def _server_information(ctx: OperationContext) -> Item:
    """Server Information: its 2.x fields (KMIP 2.1 "Server Information" structure); in 1.x
    the structure is vendor-defined and we leave it empty, as the OASIS 1.4 cases show."""
    info = ctx.server_info
    fields = (
        (Tag.SERVER_NAME, info.server_name),
        (Tag.SERVER_VERSION, info.server_version),
        (Tag.PRODUCT_NAME, info.vendor_identification),
    )
    children = [Item(tag, ItemType.TEXT_STRING, value) for tag, value in fields
                if ctx.version >= (2, 0) and registry.tag_name(tag, ctx.version) is not None]
    return Item(Tag.SERVER_INFORMATION, ItemType.STRUCTURE, children)


def _known(tag: int, value: int, version: Version) -> bool:
    """Does ``version`` define this enumeration value (Interop is 2.x only, say)?"""
    return registry.enum_name(tag, int(value), version) is not None
