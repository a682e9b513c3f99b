"""Query, Discover Versions and Interop (KMIP 1.4 §4.25, §4.26; 2.1 §6.1.37, §6.1.13,
§6.1.25): what the server says about itself. None of them touches a managed object, so
any authenticated principal may ask.
"""

from __future__ import annotations

from kcm.core import server_info
from kcm.core.context import OperationContext
from kcm.core.operations._objects_common import OBJECT_TYPE_OF_TAG
from kcm.core.server_info import ServerInfo
from kcm.kmip.enums import InteropFunction, Operation, QueryFunction
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


def query(ctx: OperationContext, request: QueryRequest) -> QueryResponse:
    """Answer every Query Function asked (KMIP 1.4 §4.25, 2.1 §6.1.37), truthfully: what
    KCM has nothing to claim for is an empty list of its kind. The answer is written for
    KMIP 2.1; what the request's version does not define (a 1.2 operation at 1.0, the 1.4
    capabilities at 1.3, a 2.x function at 1.x) is dropped where every answer is fitted to
    its version (:mod:`kcm.kernel.version_fit`)."""
    # The table lists this module's handlers, so it is read when asked, not at import.
    from kcm.core.operations import HANDLERS

    functions = {int(f) for f in request.query_functions}
    info = ctx.server_info
    version = ctx.version
    response = QueryResponse()
    if QueryFunction.QUERY_OPERATIONS in functions:
        response.operations = [Operation(op) for op in sorted(HANDLERS)]
    if QueryFunction.QUERY_OBJECTS in functions:
        response.object_types = sorted(set(OBJECT_TYPE_OF_TAG.values()))
    if QueryFunction.QUERY_SERVER_INFORMATION in functions:
        response.vendor_identification = info.vendor_identification
        response.server_information = _server_information(info, version)
    # Query Application Namespaces and Attestation Types: KCM supports none (empty lists).
    if functions & {QueryFunction.QUERY_EXTENSION_LIST, QueryFunction.QUERY_EXTENSION_MAP}:
        response.extension_information = _extensions(
            with_map=QueryFunction.QUERY_EXTENSION_MAP in functions)
    if QueryFunction.QUERY_RNGS in functions:
        response.rng_parameters = [_struct(Tag.RNG_PARAMETERS, [
            _enum(Tag.RNG_ALGORITHM, server_info.RNG_ALGORITHM)])]
    if QueryFunction.QUERY_PROFILES in functions:
        response.profile_information = [
            _struct(Tag.PROFILE_INFORMATION, [_enum(Tag.PROFILE_NAME, profile)])
            for profile in server_info.claimed_profiles(version)]
    # Query Validations: KCM claims no validation (FIPS 140, Common Criteria): empty list.
    if QueryFunction.QUERY_CAPABILITIES in functions:
        response.capability_information = [_capabilities()]
    # Query Client Registration Methods: clients are registered outside KMIP (certificates
    # of the deployment's PKI), by none of the enumeration's methods: empty list.
    if QueryFunction.QUERY_DEFAULTS_INFORMATION in functions:
        response.defaults_information = _defaults()
    if QueryFunction.QUERY_STORAGE_PROTECTION_MASKS in functions:
        response.protection_storage_masks = [_struct(Tag.PROTECTION_STORAGE_MASKS, [
            Item(Tag.PROTECTION_STORAGE_MASK, ItemType.INTEGER, mask)
            for mask in server_info.PROTECTION_STORAGE_MASKS])]
    return response


def _struct(tag: int, children: list[Item]) -> Item:
    return Item(tag, ItemType.STRUCTURE, children)


def _enum(tag: int, value: int) -> Item:
    return Item(tag, ItemType.ENUMERATION, int(value))


def _defaults() -> Item:
    """Defaults Information: for each object type a Create or Create Key Pair makes, the
    attributes the server sets when the client does not (KMIP 2.1 §6.1.37, "Object
    Defaults")."""
    attributes = [Item(tag, item_type, value)
                  for tag, (item_type, value) in server_info.DEFAULT_ATTRIBUTES.items()]
    return _struct(Tag.DEFAULTS_INFORMATION, [
        _struct(Tag.OBJECT_DEFAULTS, [_enum(Tag.OBJECT_TYPE, object_type),
                                      _struct(Tag.ATTRIBUTES, attributes)])
        for object_type in server_info.CREATED_OBJECT_TYPES])


def _capabilities() -> Item:
    """Capability Information (KMIP 1.3 §2.1.25, 1.4 adds the batch capabilities)."""
    flags = [Item(tag, ItemType.BOOLEAN, value)
             for tag, value in server_info.CAPABILITY_FLAGS.items()]
    modes = [_enum(tag, value) for tag, value in server_info.CAPABILITY_MODES.items()]
    return _struct(Tag.CAPABILITY_INFORMATION, flags + modes)


def _extensions(*, with_map: bool) -> list[Item]:
    """Extension Information for each extension tag KCM writes: its name (Extension List),
    with its tag and item type (Extension Map)."""
    found = []
    for tag, (name, item_type) in server_info.EXTENSION_TAGS.items():
        children = [Item(Tag.EXTENSION_NAME, ItemType.TEXT_STRING, name)]
        if with_map:
            children += [Item(Tag.EXTENSION_TAG, ItemType.INTEGER, tag),
                         Item(Tag.EXTENSION_TYPE, ItemType.INTEGER, item_type.value)]
        found.append(_struct(Tag.EXTENSION_INFORMATION, children))
    return found


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
    identifier = _kept(request.interop_identifier, INTEROP_IDENTIFIER_LIMIT)
    ctx.audit_detail["interop"] = f"{function} {identifier}"
    return InteropResponse()


#: How much of a client's Log message the audit record keeps.
LOG_MESSAGE_LIMIT = 1024
#: How much of a client's Interop Identifier the audit record keeps (the OASIS test
#: cases' are a few dozen characters).
INTEROP_IDENTIFIER_LIMIT = 256


def log_message(ctx: OperationContext, request: LogRequest) -> LogResponse:
    """Log (KMIP 2.1 §6.1.29): the client's message goes into this request's audit record
    (and so into the structured log), truncated to :data:`LOG_MESSAGE_LIMIT` characters."""
    ctx.audit_detail["log_message"] = _kept(request.log_message, LOG_MESSAGE_LIMIT)
    return LogResponse()


def _kept(text: str, limit: int) -> str:
    """What the audit record keeps of a client's ``text``: its first ``limit`` characters
    (the audit log is kept until an operator archives it, and each request may send a
    megabyte)."""
    return text[:limit]


def _server_information(info: ServerInfo, version: Version) -> Item:
    """Server Information: in 2.x its own fields (KMIP 2.1 "Server Information"); in 1.x,
    where its contents are vendor-defined (KMIP 1.4 §4.25), the same facts under KCM's
    extension tags (:data:`kcm.core.server_info.EXTENSION_TAGS`)."""
    if version >= (2, 0):
        fields = ((Tag.SERVER_NAME, info.server_name), (Tag.SERVER_VERSION, info.server_version),
                  (Tag.PRODUCT_NAME, info.product_name))
    else:
        fields = ((server_info.EXTENSION_PRODUCT_NAME, info.product_name),
                  (server_info.EXTENSION_SERVER_VERSION, info.server_version))
    return _struct(Tag.SERVER_INFORMATION,
                   [Item(tag, ItemType.TEXT_STRING, value) for tag, value in fields])
