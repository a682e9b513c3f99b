"""Typed request and response payloads of the modelled operations, and their registry.

``PAYLOADS[(operation, is_request)]`` is the model class of a payload; operations not
in it keep their payload as a raw :class:`Item`.
"""

from __future__ import annotations

from kcm.kmip.enums import Operation
from kcm.kmip.fields import Struct
from kcm.kmip.payloads.asymmetric import (
    CreateKeyPairRequest,
    CreateKeyPairResponse,
    DerivationParameters,
    DeriveKeyRequest,
    DeriveKeyResponse,
    SignatureVerifyRequest,
    SignatureVerifyResponse,
    SignRequest,
    SignResponse,
)
from kcm.kmip.payloads.attribute_ops import (
    AddAttributeRequest,
    AddAttributeResponse,
    AdjustAttributeRequest,
    AttributeEchoResponse,
    DeleteAttributeRequest,
    DeleteAttributeResponse,
    GetAttributeListRequest,
    GetAttributeListResponse,
    GetAttributesRequest,
    GetAttributesResponse,
    ModifyAttributeRequest,
    ModifyAttributeResponse,
    SetAttributeRequest,
)
from kcm.kmip.payloads.crypto import (
    DecryptRequest,
    DecryptResponse,
    EncryptRequest,
    EncryptResponse,
)
from kcm.kmip.payloads.lifecycle import (
    ActivateRequest,
    CheckRequest,
    CheckResponse,
    CreateRequest,
    CreateResponse,
    DestroyRequest,
    GetRequest,
    GetResponse,
    RegisterRequest,
    RegisterResponse,
    ReKeyRequest,
    ReKeyResponse,
    RevocationReason,
    RevokeRequest,
    UniqueIdentifierPayload,
    UniqueIdentifierResponse,
)
from kcm.kmip.payloads.mac_hash_rng import (
    HashRequest,
    HashResponse,
    MacRequest,
    MacResponse,
    MacVerifyRequest,
    MacVerifyResponse,
    RngRetrieveRequest,
    RngRetrieveResponse,
    RngSeedRequest,
    RngSeedResponse,
)
from kcm.kmip.payloads.service import (
    DiscoverVersionsRequest,
    DiscoverVersionsResponse,
    InteropRequest,
    InteropResponse,
    LocateRequest,
    LocateResponse,
    LogRequest,
    LogResponse,
    QueryRequest,
    QueryResponse,
)

__all__ = [
    "PAYLOADS", "ActivateRequest", "AddAttributeRequest", "AddAttributeResponse",
    "AdjustAttributeRequest", "AttributeEchoResponse", "CheckRequest", "CheckResponse",
    "CreateRequest", "CreateResponse", "DecryptRequest", "DecryptResponse",
    "DeleteAttributeRequest", "DeleteAttributeResponse", "DestroyRequest",
    "DiscoverVersionsRequest", "DiscoverVersionsResponse", "EncryptRequest", "EncryptResponse",
    "GetAttributeListRequest", "GetAttributeListResponse", "GetAttributesRequest",
    "GetAttributesResponse", "GetRequest", "GetResponse", "InteropRequest", "InteropResponse",
    "LocateRequest", "LocateResponse", "LogRequest", "LogResponse", "ModifyAttributeRequest",
    "ModifyAttributeResponse",
    "QueryRequest", "QueryResponse", "ReKeyRequest", "ReKeyResponse", "RegisterRequest",
    "RegisterResponse", "RevocationReason", "RevokeRequest", "SetAttributeRequest",
    "UniqueIdentifierPayload", "UniqueIdentifierResponse",
    "CreateKeyPairRequest", "CreateKeyPairResponse", "DerivationParameters", "DeriveKeyRequest",
    "DeriveKeyResponse", "SignRequest", "SignResponse", "SignatureVerifyRequest",
    "SignatureVerifyResponse", "HashRequest", "HashResponse", "MacRequest", "MacResponse",
    "MacVerifyRequest", "MacVerifyResponse", "RngRetrieveRequest", "RngRetrieveResponse",
    "RngSeedRequest", "RngSeedResponse",
]

_ID = UniqueIdentifierResponse

#: (operation, is_request) -> payload model class.
PAYLOADS: dict[tuple[Operation, bool], type[Struct]] = {
    (Operation.CREATE, True): CreateRequest, (Operation.CREATE, False): CreateResponse,
    (Operation.REGISTER, True): RegisterRequest, (Operation.REGISTER, False): RegisterResponse,
    (Operation.RE_KEY, True): ReKeyRequest, (Operation.RE_KEY, False): ReKeyResponse,
    (Operation.LOCATE, True): LocateRequest, (Operation.LOCATE, False): LocateResponse,
    (Operation.GET, True): GetRequest, (Operation.GET, False): GetResponse,
    (Operation.GET_ATTRIBUTES, True): GetAttributesRequest,
    (Operation.GET_ATTRIBUTES, False): GetAttributesResponse,
    (Operation.GET_ATTRIBUTE_LIST, True): GetAttributeListRequest,
    (Operation.GET_ATTRIBUTE_LIST, False): GetAttributeListResponse,
    (Operation.ADD_ATTRIBUTE, True): AddAttributeRequest,
    (Operation.ADD_ATTRIBUTE, False): AddAttributeResponse,
    (Operation.MODIFY_ATTRIBUTE, True): ModifyAttributeRequest,
    (Operation.MODIFY_ATTRIBUTE, False): ModifyAttributeResponse,
    (Operation.DELETE_ATTRIBUTE, True): DeleteAttributeRequest,
    (Operation.DELETE_ATTRIBUTE, False): DeleteAttributeResponse,
    (Operation.SET_ATTRIBUTE, True): SetAttributeRequest, (Operation.SET_ATTRIBUTE, False): _ID,
    (Operation.ADJUST_ATTRIBUTE, True): AdjustAttributeRequest,
    (Operation.ADJUST_ATTRIBUTE, False): _ID,
    (Operation.ACTIVATE, True): ActivateRequest, (Operation.ACTIVATE, False): _ID,
    (Operation.REVOKE, True): RevokeRequest, (Operation.REVOKE, False): _ID,
    (Operation.DESTROY, True): DestroyRequest, (Operation.DESTROY, False): _ID,
    (Operation.CHECK, True): CheckRequest, (Operation.CHECK, False): CheckResponse,
    (Operation.QUERY, True): QueryRequest, (Operation.QUERY, False): QueryResponse,
    (Operation.DISCOVER_VERSIONS, True): DiscoverVersionsRequest,
    (Operation.DISCOVER_VERSIONS, False): DiscoverVersionsResponse,
    (Operation.ENCRYPT, True): EncryptRequest, (Operation.ENCRYPT, False): EncryptResponse,
    (Operation.DECRYPT, True): DecryptRequest, (Operation.DECRYPT, False): DecryptResponse,
    (Operation.INTEROP, True): InteropRequest, (Operation.INTEROP, False): InteropResponse,
    (Operation.LOG, True): LogRequest, (Operation.LOG, False): LogResponse,
    (Operation.CREATE_KEY_PAIR, True): CreateKeyPairRequest,
    (Operation.CREATE_KEY_PAIR, False): CreateKeyPairResponse,
    (Operation.SIGN, True): SignRequest, (Operation.SIGN, False): SignResponse,
    (Operation.SIGNATURE_VERIFY, True): SignatureVerifyRequest,
    (Operation.SIGNATURE_VERIFY, False): SignatureVerifyResponse,
    (Operation.DERIVE_KEY, True): DeriveKeyRequest,
    (Operation.DERIVE_KEY, False): DeriveKeyResponse,
    (Operation.MAC, True): MacRequest, (Operation.MAC, False): MacResponse,
    (Operation.MAC_VERIFY, True): MacVerifyRequest,
    (Operation.MAC_VERIFY, False): MacVerifyResponse,
    (Operation.HASH, True): HashRequest, (Operation.HASH, False): HashResponse,
    (Operation.RNG_RETRIEVE, True): RngRetrieveRequest,
    (Operation.RNG_RETRIEVE, False): RngRetrieveResponse,
    (Operation.RNG_SEED, True): RngSeedRequest, (Operation.RNG_SEED, False): RngSeedResponse,
}
