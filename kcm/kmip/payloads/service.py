"""Payloads of the server-level operations: Locate, Query, Discover Versions, Interop
(KMIP 1.4 §4.9, §4.25, §4.26; 2.1 §6.1.27, §6.1.37, §6.1.13, §6.1.25)."""

from __future__ import annotations

from kcm.kmip.attributes import Attribute, AttributeList
from kcm.kmip.enums import (
    AttestationType,
    ClientRegistrationMethod,
    InteropFunction,
    ObjectGroupMember,
    ObjectType,
    Operation,
    QueryFunction,
)
from kcm.kmip.fields import Struct, fld, kmip_struct
from kcm.kmip.payloads._common import RAW, UID
from kcm.kmip.protocol_version import ProtocolVersion
from kcm.kmip.tags import Tag
from kcm.ttlv.types import Item, ItemType

_REQ = Tag.REQUEST_PAYLOAD
_RESP = Tag.RESPONSE_PAYLOAD
_INT = ItemType.INTEGER


@kmip_struct(_REQ)
class LocateRequest(Struct):
    """Locate: objects matching every given attribute (1.x Attribute*, 2.x Attributes)."""

    maximum_items: int | None = fld(Tag.MAXIMUM_ITEMS, _INT)
    offset_items: int | None = fld(Tag.OFFSET_ITEMS, _INT)
    storage_status_mask: int | None = fld(Tag.STORAGE_STATUS_MASK, _INT)
    object_group_member: ObjectGroupMember | int | None = fld(Tag.OBJECT_GROUP_MEMBER,
                                                              ObjectGroupMember)
    attributes: list[Attribute] | None = fld((Tag.ATTRIBUTE, Tag.ATTRIBUTES), AttributeList())


@kmip_struct(_RESP)
class LocateResponse(Struct):
    """Locate response: how many matched, and the identifiers returned."""

    located_items: int | None = fld(Tag.LOCATED_ITEMS, _INT)
    unique_identifiers: list[str] = fld(Tag.UNIQUE_IDENTIFIER, UID, repeated=True)


@kmip_struct(_REQ)
class QueryRequest(Struct):
    """Query: which kinds of server information are wanted; at least one (KMIP 1.4 §4.25,
    2.1 §6.1.37: Query Function is required)."""

    query_functions: list[QueryFunction | int] = fld(Tag.QUERY_FUNCTION, QueryFunction,
                                                     required=True, repeated=True)


@kmip_struct(_RESP)
class QueryResponse(Struct):
    """Query response. The rarer structured parts stay raw Items."""

    operations: list[Operation | int] = fld(Tag.OPERATION, Operation, repeated=True)
    object_types: list[ObjectType | int] = fld(Tag.OBJECT_TYPE, ObjectType, repeated=True)
    vendor_identification: str | None = fld(Tag.VENDOR_IDENTIFICATION, ItemType.TEXT_STRING)
    server_information: Item | None = fld(Tag.SERVER_INFORMATION, RAW)
    application_namespaces: list[str] = fld(Tag.APPLICATION_NAMESPACE, ItemType.TEXT_STRING,
                                            repeated=True)
    extension_information: list[Item] = fld(Tag.EXTENSION_INFORMATION, RAW, repeated=True)
    attestation_types: list[AttestationType | int] = fld(Tag.ATTESTATION_TYPE, AttestationType,
                                                         repeated=True)
    rng_parameters: list[Item] = fld(Tag.RNG_PARAMETERS, RAW, repeated=True)
    profile_information: list[Item] = fld(Tag.PROFILE_INFORMATION, RAW, repeated=True)
    validation_information: list[Item] = fld(Tag.VALIDATION_INFORMATION, RAW, repeated=True)
    capability_information: list[Item] = fld(Tag.CAPABILITY_INFORMATION, RAW, repeated=True)
    client_registration_methods: list[ClientRegistrationMethod | int] = fld(
        Tag.CLIENT_REGISTRATION_METHOD, ClientRegistrationMethod, repeated=True)
    defaults_information: Item | None = fld(Tag.DEFAULTS_INFORMATION, RAW)
    protection_storage_masks: list[Item] = fld(Tag.PROTECTION_STORAGE_MASKS, RAW, repeated=True)


@kmip_struct(_REQ)
class DiscoverVersionsRequest(Struct):
    """Discover Versions: the versions the client supports, preferred first."""

    protocol_versions: list[ProtocolVersion] = fld(Tag.PROTOCOL_VERSION, ProtocolVersion,
                                                   repeated=True)


@kmip_struct(_RESP)
class DiscoverVersionsResponse(Struct):
    """Discover Versions response: the versions the server supports, preferred first."""

    protocol_versions: list[ProtocolVersion] = fld(Tag.PROTOCOL_VERSION, ProtocolVersion,
                                                   repeated=True)


@kmip_struct(_REQ)
class InteropRequest(Struct):
    """Interop (2.x): begin/end/reset a named interoperability test case."""

    interop_function: InteropFunction | int = fld(Tag.INTEROP_FUNCTION, InteropFunction,
                                                  required=True)
    interop_identifier: str = fld(Tag.INTEROP_IDENTIFIER, ItemType.TEXT_STRING, required=True)


@kmip_struct(_RESP)
class InteropResponse(Struct):
    """Interop response (empty)."""


@kmip_struct(_REQ)
class LogRequest(Struct):
    """Log (2.x): a message the client wants in the server's log."""

    log_message: str = fld(Tag.LOG_MESSAGE, ItemType.TEXT_STRING, required=True)


@kmip_struct(_RESP)
class LogResponse(Struct):
    """Log response (empty)."""
